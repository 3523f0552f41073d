/*
 * shard_ctl - requests from the control thread that a shard carries out
 *             on its own queue (inspection and operator actions)
 *
 * SYNOPSIS
 *   int  shard_ctl_call_remote(struct shard *sh, struct xshard_sender *tx,
 *                              struct shard_ctl_req *req,
 *                              enum xshard_kind kind, unsigned timeout_ms);
 *   void shard_ctl_box_done(struct op *op, int res, uint32_t flags);
 * DESCRIPTION
 *   A shard's queue is the shard's alone, so the control thread never
 *   reads or changes it: it fills a struct shard_ctl_req (the argument:
 *   a domain or a message id), posts it into the shard's ctl_box (a
 *   mailbox of its own: the control thread is its only producer, as the
 *   main thread is of the other one) and waits, polling msg.handled, up
 *   to timeout_ms. The shard runs the request in its loop (delivery_ctl.h),
 *   writes the results into req and marks it handled.
 *
 *   shard_ctl_call_remote() returns 0 when the shard answered (the
 *   outcome is req->res), -ESRCH when the shard is not running (starting
 *   or finished: its ring may be gone), -EBUSY when an earlier request to
 *   it was never answered (it still belongs to the shard), -ETIMEDOUT
 *   when it did not answer in time (the request then stays the shard's
 *   until it is handled: the caller must not reuse it before).
 * OWNERSHIP
 *   The request and its rows belong to the control thread; the shard
 *   writes into them between dequeuing and marking handled.
 * THREADS
 *   shard_ctl_call_remote() from the control thread only (the one
 *   producer of every ctl_box); shard_ctl_box_done() in the shard.
 */
#ifndef RINGMAIL_SHARD_CTL_H
#define RINGMAIL_SHARD_CTL_H

#include <stdint.h>

#include "shard.h"

#define SHARD_CTL_ROWS_MAX 1000
#define SHARD_CTL_TEXT_MAX 200

/* One line of an answer: a domain, a message or a recipient. */
struct shard_ctl_row {
    char key[330];               /* domain, message id, or recipient */
    char state[12];              /* ready, deferred, inflight, done, ... */
    uint64_t ready;              /* showqueue: items by state */
    uint64_t deferred;
    uint64_t inflight;
    uint64_t conns;              /* open outbound connections */
    unsigned attempt;            /* attempts made */
    int64_t due_s;               /* seconds until the next attempt */
    unsigned last_code;          /* last deferral: code and text */
    char last_text[SHARD_CTL_TEXT_MAX];
};

struct shard_ctl_req {
    struct xshard_msg msg;       /* msg.arg points back here */
    char arg[330];               /* domain or message id; "" for none */
    int busy;                    /* posted and not yet handled */
    /* results */
    int res;                     /* 0, or -ENOENT: no such domain/message */
    uint64_t count;              /* items changed, or rows available */
    char sender[330];            /* message show */
    int64_t received_unix;
    uint64_t body_bytes;
    unsigned rcpt_count;
    struct shard_ctl_row *rows;  /* [row_max], the control thread's */
    unsigned row_count;
    unsigned row_max;
    int truncated;               /* more rows than row_max */
};

int shard_ctl_call_remote(struct shard *sh, struct xshard_sender *tx,
                          struct shard_ctl_req *req, enum xshard_kind kind,
                          unsigned timeout_ms);

#endif
