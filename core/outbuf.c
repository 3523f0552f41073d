/*
 * outbuf - see outbuf.h
 */
#include "outbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"


/* outbuf_room - room for n more bytes and the NUL */
static void
outbuf_room(struct outbuf *o, size_t n)
{
    size_t cap = o->cap ? o->cap : 256;

    if (o->len + n + 1 <= o->cap)
        return;
    while (cap < o->len + n + 1)
        cap *= 2;
    o->p = xrealloc(o->p, cap);
    o->cap = cap;
}


void
outbuf_printf(struct outbuf *o, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    ASSERT(n >= 0);
    outbuf_room(o, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(o->p + o->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    o->len += (size_t)n;
}


void
outbuf_puts(struct outbuf *o, const char *s)
{
    size_t n = strlen(s);

    outbuf_room(o, n);
    memcpy(o->p + o->len, s, n + 1);
    o->len += n;
}


/* outbuf_json_str - s as a quoted, escaped JSON string */
void
outbuf_json_str(struct outbuf *o, const char *s)
{
    const unsigned char *p;

    outbuf_puts(o, "\"");
    for (p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\')
            outbuf_printf(o, "\\%c", *p);
        else if (*p == '\n')
            outbuf_puts(o, "\\n");
        else if (*p == '\t')
            outbuf_puts(o, "\\t");
        else if (*p < 0x20 || *p == 0x7f)
            outbuf_printf(o, "\\u%04x", *p);
        else
            outbuf_printf(o, "%c", *p);
    }
    outbuf_puts(o, "\"");
}


void
outbuf_reset(struct outbuf *o)
{
    o->len = 0;
    if (o->p != NULL)
        o->p[0] = '\0';
}


void
outbuf_fini(struct outbuf *o)
{
    free(o->p);
    o->p = NULL;
    o->len = o->cap = 0;
}
