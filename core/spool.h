/*
 * spool - durable per-shard message log (segments, group commit, recovery)
 *
 * SYNOPSIS
 *   int  spool_open(struct spool *sp, struct loop *lp, const char *shard_dir,
 *                   unsigned shard_id, uint64_t segment_bytes,
 *                   spool_recovered_fn *cb, void *cb_arg);
 *   void spool_next_id(struct spool *sp, char id[SPOOL_ID_MAX]);
 *   void spool_commit(struct spool *sp, struct spool_msg *m);
 *   void spool_mark(struct spool *sp, struct spool_mark *mk);
 *   void spool_release(struct spool *sp, uint64_t seg_seq);
 *   void spool_flush(struct spool *sp);
 *   int  spool_failed(const struct spool *sp);
 *   int  spool_idle(const struct spool *sp);
 *   void spool_hurry(struct spool *sp);
 *   void spool_close(struct spool *sp);
 *   int  spool_scan(const char *shard_dir, spool_recovered_fn *cb, void *arg,
 *                   struct spool_scan_stats *st);
 * DESCRIPTION
 *   Each shard owns one directory (Spool_Base/<shard>/) holding segment
 *   files seg-<16 hex digits>.log: append-only, preallocated, made of typed,
 *   checksummed records (spool_rec.h). A message is committed when its MSG
 *   record and the END record that follows it are durable.
 *
 *   spool_open() runs recovery synchronously (at startup, before the shard
 *   serves): it scans every segment, calls cb once per committed message
 *   still live, drops a torn record at the tail of a segment (it never got
 *   its 250), moves a corrupt record in the middle aside to corrupt/ with a
 *   paniclog line, and then opens a fresh segment for appending (old
 *   segments are never appended to again). A message is live until DONE
 *   records (in any segment) cover all its recipients; f->rcpt_done tells
 *   which ones a partly delivered message still has to go to.
 *
 *   spool_commit() queues m for the next group commit; m->done(m, res) runs
 *   exactly once: res 0 when the message is durable, or -errno (-EIO,
 *   -ENOSPC, ...) when it is not and never will be (failed data is never
 *   rewritten). spool_flush() is the loop's before-wait hook: it copies
 *   every queued message into one batch buffer, pads it to whole 4 KiB
 *   blocks (spool_rec.h) and submits it as one O_DIRECT write with
 *   RWF_DSYNC: durable when it completes, since the kernel flushes the
 *   device cache after it. One batch is in flight at a time; messages
 *   queued meanwhile go in the next batch, so under load one durable write
 *   covers many messages. Segments are opened O_DIRECT and zeroed when
 *   they are made, so a commit overwrites written blocks: that needs no
 *   metadata update and runs without an io-wq thread. The spool never
 *   reads the segment it appends to (cached pages would push its O_DIRECT
 *   writes to io-wq).
 *
 *   When the file system refuses O_DIRECT (opening, or writing the first
 *   segment, fails with EINVAL) the spool says so once in the paniclog and
 *   commits the same padded batches as buffered writes, each linked to an
 *   fdatasync, into segments that are preallocated but not zeroed.
 *
 *   The next segment is made on the ring while the current one still has
 *   room: open, fallocate, zero it with O_DIRECT writes (about 40 ms for
 *   64 MiB), write the SEGHDR block, fsync it and the directory.
 *   spool_open() makes its first segment the same way on a private ring.
 *
 *   After a write, fdatasync or segment creation error the spool is
 *   failed: the batch's messages and everything queued get that -errno
 *   (-ENOSPC: answer 452 4.3.1; anything else: 451 4.3.0), later commits
 *   fail the same way at the next flush, spool_failed() is true (the
 *   listener answers new sessions 421 4.3.2), and a probe every second
 *   tries a fresh segment; when one is written and synced, the spool works
 *   again. spool_failed() returns that -errno, 0 when working.
 *
 *   spool_mark() queues DONE records for a committed message (one per
 *   recipient index in mk->rcpts, or one for all of them when mk->rcpts is
 *   NULL) for the same group commit as messages: they go in the next
 *   batch, with the messages queued meanwhile, in the same RWF_DSYNC
 *   write. mk->done(mk, res) runs exactly once, as m->done does: 0 when
 *   the marks are durable (recovery will not report those recipients
 *   again), -errno when they are not and never will be; the caller may
 *   mark again later (a failed spool refuses until its probe succeeds).
 *   With mk->attempt > 0 the same call records a deferral instead: one
 *   DEFER record with the attempt count, the last reply, one recipient
 *   of the deferred group and when its next attempt is due; recovery
 *   hands back the newest per recipient index in spool_found (defers).
 *   A deferral never costs a durable write of its own: it waits for a
 *   write that goes anyway, or SPOOL_LAZY_MS, or spool_hurry(). A crash
 *   in between loses only that count.
 *
 *   spool_release() says a message of segment seg_seq (m->seg_seq once
 *   committed, f->segment_seq when recovered) is done for good: all its
 *   recipients are durably marked. The spool counts committed, unreleased
 *   messages per segment (recovery counts the live ones it reports) and
 *   deletes segments (unlinkat on the ring) whose count is zero, oldest
 *   first, never the current one. Oldest first matters: a segment also
 *   holds DONE records for messages of older segments, so it may only go
 *   once every older one has gone. XXX: one long-lived message holds back
 *   every later segment; copying such messages forward (compaction) is
 *   still to come.
 *
 *   spool_flush() copies queued messages into the next batch buffer even
 *   while a batch is on the disk, so that batch goes out the moment the
 *   previous one completes; a message larger than 1 GiB fails with -EFBIG.
 *
 *   spool_idle() is true when nothing is queued and no write or segment
 *   operation is in flight. spool_hurry() says the shard is stopping: a
 *   next segment being zeroed ahead of need (one write at a time, so as
 *   not to delay commits) is finished at full speed instead. The caller
 *   runs the loop until spool_idle() and calls
 *   spool_close(), which cancels the probe timer (running loop turns until
 *   its completion arrives) and closes everything synchronously.
 *
 *   spool_scan() reads a shard directory without a loop (for tools and
 *   tests): it reports each committed live message and counts torn and
 *   corrupt records, changing nothing on disk (spool_open() also moves
 *   corrupt records aside and deletes segments holding nothing but their
 *   header). It drops the cached pages of the segments it read, so a
 *   running daemon's commits to its live one stay off io-wq.
 * OWNERSHIP
 *   struct spool_msg and everything it points at belong to the caller (the
 *   session's transaction arena) and must stay valid until m->done runs.
 *   So do struct spool_mark, its id and its rcpts array.
 *   The batch buffers are the spool's, reused from batch to batch.
 * THREADS
 *   Shard-local. spool_scan() is for tools, any thread.
 * ERRORS
 *   Disk errors come back as -errno, are logged once, and never stop the
 *   process.
 * SEE ALSO
 *   spool_rec.h (record format), loop.h
 */
#ifndef RINGMAIL_SPOOL_H
#define RINGMAIL_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "hist.h"
#include "loop.h"

#define SPOOL_ID_MAX 40

struct spool_msg;
typedef void spool_commit_fn(struct spool_msg *m, int res);

/* One message to commit, described by the caller (the SMTP session). */
struct spool_msg {
    const char *id;              /* from spool_next_id() */
    int64_t received_unix;       /* seconds */
    const char *sender;          /* reverse path without <>, "" for <> */
    const char *const *rcpts;    /* forward paths without <> */
    unsigned rcpt_count;
    const char *peer;            /* client address, for the record */
    const char *binding;         /* policy's msg:binding(), or NULL */
    const char *routing_domain;  /* policy's msg:routing_domain(), or NULL */
    unsigned priority;           /* 1..100 (100 first); 0: default, 50 */
    const struct iovec *body;    /* the message data, unstuffed, CRLF lines */
    unsigned body_iov_count;
    uint64_t body_bytes;
    spool_commit_fn *done;
    /* set by the spool: the segment holding it (valid in done(m, 0)) */
    uint64_t seg_seq;
    /* spool private */
    struct spool_msg *next;
    uint64_t queued_us;          /* spool_commit() time: '.'-to-250 latency */
};

struct spool_mark;
typedef void spool_mark_fn(struct spool_mark *mk, int res);

/*
 * Recipients of a committed message to mark done, described by delivery;
 * or, when attempt > 0, a deferral to record (one DEFER record: rcpts is
 * not used, and the last_* strings may be NULL).
 */
struct spool_mark {
    const char *id;              /* the message's id */
    const uint32_t *rcpts;       /* recipient indices; NULL: all of them */
    unsigned rcpt_count;         /* entries of rcpts (> 0 when not NULL) */
    unsigned attempt;            /* > 0: a DEFER with the attempts made */
    unsigned last_code;          /* DEFER: the reply that deferred it */
    const char *last_enhanced, *last_text, *last_host;
    uint32_t defer_rcpt;         /* DEFER: a recipient of the deferred
                                  * group (one destination) */
    uint64_t due_unix_ms;        /* DEFER: next attempt due, wall clock */
    spool_mark_fn *done;
    /* spool private */
    struct spool_mark *next;
};

/* A committed, still live message as found by recovery or spool_scan(). */
struct spool_found {
    const char *id;
    int64_t received_unix;
    const char *sender;
    const char *const *rcpts;
    unsigned rcpt_count;
    const char *peer;
    const char *binding;         /* "" when policy chose none */
    const char *routing_domain;  /* "" when policy chose none */
    unsigned priority;           /* 0: default */
    const char *body;            /* valid only during the callback */
    uint64_t body_bytes;
    const char *segment;         /* file name */
    uint64_t segment_seq;        /* for spool_release() */
    uint64_t offset;             /* of the MSG record */
    unsigned shard_id;           /* from the segment header */
    const unsigned char *rcpt_done;  /* [rcpt_count], 1 = a DONE covers
                                        it; NULL when none does */
    const struct spool_defer *defers;   /* the newest DEFER per rcpt */
    unsigned defer_count;        /*   index; valid during the callback */
};

/* What recovery found of a deferral (a DEFER record). */
struct spool_defer {
    uint32_t rcpt;               /* a recipient of the deferred group */
    unsigned attempts;
    unsigned last_code;          /* 0 and "" strings when unreadable */
    uint64_t due_unix_ms;
    const char *last_enhanced, *last_text, *last_host;
};

typedef void spool_recovered_fn(void *arg, const struct spool_found *f);

struct spool_scan_stats {
    uint64_t segments;
    uint64_t messages;           /* committed (MSG + END) */
    uint64_t torn;               /* dropped at a segment's tail */
    uint64_t corrupt;            /* moved aside */
    uint64_t bytes;              /* body bytes of the live messages */
    uint64_t live;               /* reported: committed, not all DONE */
};

struct spool_batch;
struct spool_prep;

/* A segment and its committed messages not yet released. */
struct spool_live {
    uint64_t seq;
    uint64_t live;
};

struct spool {
    struct loop *lp;
    char *dir;
    unsigned shard_id;
    uint64_t segment_bytes;
    int dir_fd;
    int seg_fd;
    uint64_t seg_seq;
    uint64_t seg_off;            /* next append offset in the segment */
    uint64_t id_nonce;           /* per process start: ids unique on restart */
    uint64_t id_counter;
    struct spool_msg *queue_head, **queue_tail;
    struct spool_mark *mark_head, **mark_tail;
    struct spool_mark *lazy_head, **lazy_tail;    /* DEFERs: see flush */
    uint64_t lazy_since_us;      /* when the oldest of them was queued */
    struct spool_batch *inflight;     /* NULL when no batch is in flight */
    struct spool_batch *batches[2];
    int failed;                  /* -errno of the failure, 0 when working */
    struct op probe_op;
    struct __kernel_timespec probe_ts;
    int probe_armed;
    int closing;
    int hurry;                   /* spool_hurry(): stopping */
    int direct;                  /* O_DIRECT + RWF_DSYNC; 0: fallback */
    /* spool private, beyond the fields above */
    uint64_t seg_bytes;          /* preallocated size of the segment */
    uint32_t seg_salt;           /* its header crc seed (spool_rec.h) */
    uint64_t seg_seq_max;        /* highest segment seq seen or used */
    uint64_t rand_state;         /* salts */
    struct spool_batch *fill;    /* the batch being encoded, not in flight */
    struct spool_prep *prep;     /* the next segment, made on the ring */
    unsigned aux_pending;        /* closes and unlinks in flight */
    struct spool_live *live;     /* every segment on disk, oldest first */
    size_t live_count, live_cap;
    /* statistics */
    uint64_t commits;
    uint64_t marks;              /* spool_mark() calls made durable */
    uint64_t batches_done;
    uint64_t fdatasyncs;         /* durable syncs: RWF_DSYNC writes, or
                                    fdatasyncs in the fallback */
    uint64_t bytes_written;      /* padding included */
    uint64_t segments_reclaimed; /* deleted once all their mail was done */
    struct hist commit_hist;     /* batch submitted to durable */
    struct hist dot_to_250_hist; /* spool_commit() to durable, per message */
    struct spool_scan_stats recovered;
};

/* Tests only: spools opened while it is set act as if O_DIRECT failed. */
extern int spool_force_buffered;

int spool_open(struct spool *sp, struct loop *lp, const char *shard_dir,
               unsigned shard_id, uint64_t segment_bytes,
               spool_recovered_fn *cb, void *cb_arg);
void spool_next_id(struct spool *sp, char id[SPOOL_ID_MAX]);
void spool_commit(struct spool *sp, struct spool_msg *m);
void spool_mark(struct spool *sp, struct spool_mark *mk);
void spool_release(struct spool *sp, uint64_t seg_seq);
void spool_flush(struct spool *sp);
int spool_failed(const struct spool *sp);
int spool_idle(const struct spool *sp);
void spool_hurry(struct spool *sp);
void spool_close(struct spool *sp);
int spool_scan(const char *shard_dir, spool_recovered_fn *cb, void *arg,
               struct spool_scan_stats *st);

#endif
