/*
 * outbuf - a growable text buffer for console and metrics answers
 *
 * SYNOPSIS
 *   void outbuf_printf(struct outbuf *o, const char *fmt, ...);
 *   void outbuf_puts(struct outbuf *o, const char *s);
 *   void outbuf_json_str(struct outbuf *o, const char *s);
 *   void outbuf_reset(struct outbuf *o);
 *   void outbuf_fini(struct outbuf *o);
 * DESCRIPTION
 *   Appends text, growing with xrealloc (answers are bounded by the
 *   callers: rows per shard, lines of paniclog). outbuf_json_str() writes
 *   s as a JSON string: quoted, with ", \ and control bytes escaped, and
 *   bytes >= 0x80 passed through (ringmail's strings are UTF-8 or ASCII).
 *   A zeroed struct outbuf is an empty buffer; o->p is always
 *   NUL-terminated once anything was written.
 * THREADS
 *   Owned by one thread (the control thread).
 */
#ifndef RINGMAIL_OUTBUF_H
#define RINGMAIL_OUTBUF_H

#include <stddef.h>

struct outbuf {
    char *p;
    size_t len;
    size_t cap;
};

void outbuf_printf(struct outbuf *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void outbuf_puts(struct outbuf *o, const char *s);
void outbuf_json_str(struct outbuf *o, const char *s);
void outbuf_reset(struct outbuf *o);
void outbuf_fini(struct outbuf *o);

#endif
