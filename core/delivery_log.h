/*
 * delivery_log - one JSON line per delivery attempt outcome, per shard
 *
 * SYNOPSIS
 *   int  delivery_log_open(struct delivery_log *dl, struct loop *lp,
 *                          const char *path, unsigned shard_id);
 *   void delivery_log_record(struct delivery_log *dl,
 *                            const struct delivery_log_rec *r);
 *   void delivery_log_flush(struct delivery_log *dl);
 *   void delivery_log_reopen(struct delivery_log *dl);
 *   int  delivery_log_idle(const struct delivery_log *dl);
 *   void delivery_log_close(struct delivery_log *dl);
 *   const char *delivery_log_outcome_name(enum delivery_log_outcome o);
 * DESCRIPTION
 *   Each shard has its own struct delivery_log on the same file (the
 *   Delivery_Log option). A line is one JSON object, fields in this
 *   order (INTERFACE.md, "Logs"):
 *
 *     {"ts":1700000000.123,"id":"...","shard":0,"sender":"...",
 *      "rcpt":"...","outcome":"delivered","code":250,"enhanced":"2.0.0",
 *      "response":"...","host":"...","ip":"...","attempt":1,
 *      "queue_seconds":12.345}
 *
 *   ts is wall-clock unix seconds with milliseconds; outcome is
 *   delivered, deferred, bounced or expired; code is the SMTP reply code
 *   (0 when there was none, e.g. no connection); enhanced is "x.y.z" or
 *   ""; absent strings are "". Strings are JSON-escaped: '"' and '\' get
 *   a backslash, \b \f \n \r \t their short escapes, other control bytes
 *   and DEL \u00XX; valid UTF-8 is copied as it is; each byte of an
 *   invalid UTF-8 sequence becomes \u00XX (XX >= 80). Valid UTF-8 is
 *   never escaped, so a \u0080..\u00ff in a line always stands for one
 *   raw byte the remote sent. Text longer than DELIVERY_LOG_TEXT_MAX
 *   (response) or DELIVERY_LOG_FIELD_MAX (others) is cut at a character
 *   boundary.
 *
 *   delivery_log_open() opens path (O_WRONLY|O_APPEND|O_CREAT, 0640)
 *   synchronously: it runs at shard start.
 *
 *   delivery_log_record() formats r into the filling buffer: no system
 *   call, no allocation but the buffer's rare doubling up to its cap.
 *
 *   delivery_log_flush() is for the shard's before-wait hook: when no
 *   write is in flight and the filling buffer holds lines, it becomes the
 *   write buffer (one write on the ring, the whole buffer) and the other
 *   buffer fills meanwhile. So a busy shard issues about one write per
 *   loop turn, like a group commit, but without fsync: the delivery log is
 *   diagnostic; the durable truth is the spool's done-marks.
 *
 *   Bounded: the filling buffer holds at most buf_max bytes
 *   (DELIVERY_LOG_BUF_MAX; tests lower it after open). When a record
 *   does not fit and no write is in flight, the buffer is written at once
 *   and the record goes into the other one; when a write is in flight,
 *   the record is dropped and counted in dl->dropped (the first drop also
 *   gets a paniclog line). The shard never waits for the disk and the
 *   buffers never grow without bound.
 *
 *   delivery_log_reopen() asks for the path to be opened again at the
 *   next flush that finds no write in flight (logrotate moved the file:
 *   SIGUSR1 reaches each shard as a message). The open and the close of
 *   the old descriptor run on the ring; lines keep filling meanwhile. If
 *   the open fails, the old descriptor stays in use and the paniclog says
 *   so.
 *
 *   delivery_log_idle() is true when nothing is buffered and nothing is in
 *   flight. delivery_log_close() wants no operation in flight (run the
 *   loop until idle, or at least until nothing is in flight); it writes
 *   whatever is still buffered with plain write(2), since the shard
 *   serves nothing any more, and frees everything.
 *
 *   Several shards append to the same file. Each write holds whole lines
 *   only, and on Linux an O_APPEND write to a regular file takes the
 *   inode lock for its whole length, so lines from different shards
 *   never interleave. XXX: that holds for local file systems (ext4, xfs)
 *   and complete writes; a short write (disk full) is finished by a
 *   second write that another shard's lines may precede.
 * OWNERSHIP
 *   The record's strings are copied during delivery_log_record(); the
 *   caller keeps them. The buffers and the path copy belong to dl.
 * THREADS
 *   Shard-local: one struct delivery_log per shard, driven by its loop.
 * ERRORS
 *   delivery_log_open() returns -errno. Write errors are counted, logged
 *   once per distinct errno in the paniclog, and lose that buffer's lines:
 *   delivery never waits on its log.
 * SECURITY
 *   response, host and the addresses come from remote peers: escaped as
 *   above and capped, so a peer can neither break a line nor the JSON.
 * SEE ALSO
 *   INTERFACE.md "Logs", loop.h, log.h (the paniclog)
 */
#ifndef RINGMAIL_DELIVERY_LOG_H
#define RINGMAIL_DELIVERY_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "loop.h"

/* The filling buffer's cap: beyond it, records are dropped (see above). */
#define DELIVERY_LOG_BUF_MAX ((size_t)4 << 20)
/* Its first size; it doubles up to the cap when a turn needs more. */
#define DELIVERY_LOG_BUF_MIN ((size_t)64 << 10)
/* Bytes kept of the remote response; a multi-line reply fits. */
#define DELIVERY_LOG_TEXT_MAX 2048
/* Bytes kept of every other string (paths are at most 256 in SMTP). */
#define DELIVERY_LOG_FIELD_MAX 512

enum delivery_log_outcome {
    DELIVERY_LOG_DELIVERED,
    DELIVERY_LOG_DEFERRED,
    DELIVERY_LOG_BOUNCED,
    DELIVERY_LOG_EXPIRED,
};

/* One attempt's outcome for one recipient. NULL strings log as "". */
struct delivery_log_rec {
    int64_t ts_ms;               /* unix ms (CLOCK_REALTIME); 0: now */
    const char *id;              /* queue id */
    const char *sender;          /* envelope sender, "" for <> */
    const char *rcpt;
    enum delivery_log_outcome outcome;
    int code;                    /* SMTP reply code, 0: none */
    const char *enhanced;        /* "5.1.1" */
    const char *response;        /* remote reply text, as received */
    const char *host;            /* remote host name */
    const char *ip;              /* remote address */
    unsigned attempt;            /* 1 for the first */
    uint64_t queue_ms;           /* since the message was received */
};

struct delivery_log_buf {
    char *data;
    size_t len;
    size_t cap;
};

struct delivery_log {
    struct loop *lp;
    char *path;
    unsigned shard_id;
    int fd;
    size_t buf_max;              /* DELIVERY_LOG_BUF_MAX */
    struct delivery_log_buf bufs[2];
    struct delivery_log_buf *fill;       /* records go here */
    struct delivery_log_buf *inflight;   /* being written, or NULL */
    size_t inflight_off;         /* bytes of it written (short writes) */
    struct op write_op;
    struct op open_op;
    struct op close_op;
    int reopen_wanted;
    int opening;                 /* reopen's openat in flight */
    int closing;                 /* the old fd's close in flight */
    int drop_logged;
    int error_logged;            /* the last errno logged, 0: none */
    /* statistics */
    uint64_t records;            /* formatted into a buffer */
    uint64_t dropped;            /* refused: buffer full */
    uint64_t lost;               /* formatted, then lost to a write error */
    uint64_t writes;
    uint64_t bytes_written;
    uint64_t write_errors;
    uint64_t reopens;
};

int delivery_log_open(struct delivery_log *dl, struct loop *lp,
                      const char *path, unsigned shard_id);
void delivery_log_record(struct delivery_log *dl,
                         const struct delivery_log_rec *r);
void delivery_log_flush(struct delivery_log *dl);
void delivery_log_reopen(struct delivery_log *dl);
int delivery_log_idle(const struct delivery_log *dl);
void delivery_log_close(struct delivery_log *dl);
const char *delivery_log_outcome_name(enum delivery_log_outcome o);

#endif
