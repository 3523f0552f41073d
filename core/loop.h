/*
 * loop - one shard's io_uring: submit, reap, dispatch, before-wait hooks
 *
 * SYNOPSIS
 *   int  loop_init(struct loop *lp, unsigned sq_entries, unsigned cq_entries);
 *   struct io_uring_sqe *loop_sqe(struct loop *lp, struct op *op);
 *   void loop_run_once(struct loop *lp, unsigned timeout_ms);
void loop_stop(struct loop *lp);
 *   void loop_defer(struct loop *lp, struct op *op);
 *   void loop_before_wait(struct loop *lp, loop_hook_fn *fn, void *arg);
 *   void loop_stop(struct loop *lp);
 *   void loop_fini(struct loop *lp);
 * DESCRIPTION
 *   Every in-flight operation is a struct op embedded in its owner; the SQE's
 *   user_data points at it and its done() callback receives the CQE's res
 *   and flags. A multishot operation gets done() once per CQE.
 *
 *   loop_sqe() returns a zeroed SQE already tagged with op; when the SQ is
 *   full it submits what is queued first, so it never fails.
 *
 *   loop_run_once() runs one turn: the before-wait hooks (group commit
 *   flushes), submit, wait for at least one completion (or timeout_ms),
 *   reap every CQE and call each op's done(), run deferred ops.
 *   Completions never run from inside a submission. Under load (the last
 *   turn reaped LOOP_BATCH or more CQEs) a turn waits for LOOP_BATCH
 *   completions or LOOP_BATCH_US, whichever comes first: with
 *   DEFER_TASKRUN the kernel then wakes the shard once per batch instead of
 *   once per packet, and each wakeup is paid by whoever completed our work
 *   (on loopback, the clients' CPUs).
 *
 *   loop_stop() (from a hook or a completion) makes the current and every
 *   later loop_run_once() return without sleeping (they still submit and
 *   reap, so a teardown can finish what is in flight): the owner is done.
 *
 *   loop_defer() queues op->done(op, 0, 0) to run in the current turn after
 *   the reap pass: the way to finish work "later" without recursion.
 * OWNERSHIP
 *   The ring belongs to the shard thread that called loop_init().
 * THREADS
 *   Shard-local: the ring is SINGLE_ISSUER|DEFER_TASKRUN, created in the shard
 *   thread. Other threads wake it with io_uring msg_ring (see xshard.h).
 */
#ifndef RINGMAIL_LOOP_H
#define RINGMAIL_LOOP_H

#include <liburing.h>
#include <stdint.h>

struct op;

/* op_done_fn - completion of one CQE of op: res is cqe->res */
typedef void op_done_fn(struct op *op, int res, uint32_t cqe_flags);

struct op {
    op_done_fn *done;
    struct op *defer_next;       /* loop_defer() list */
};

struct loop;
typedef void loop_hook_fn(struct loop *lp, void *arg);

#define LOOP_HOOKS_MAX 8
#define LOOP_BATCH     8         /* completions a busy turn waits for */
#define LOOP_BATCH_US  200       /* ... but never longer than this */

struct loop {
    struct io_uring ring;
    struct op *defer_head;
    struct op **defer_tail;
    struct {
        loop_hook_fn *fn;
        void *arg;
    } hooks[LOOP_HOOKS_MAX];
    unsigned hook_count;
    int stopped;                 /* loop_stop(): turns return at once */
    unsigned last_reaped;        /* CQEs of the previous turn */
    uint64_t turns;
    uint64_t cqes;
};

int loop_init(struct loop *lp, unsigned sq_entries, unsigned cq_entries);
void loop_fini(struct loop *lp);
struct io_uring_sqe *loop_sqe(struct loop *lp, struct op *op);
void loop_defer(struct loop *lp, struct op *op);
void loop_before_wait(struct loop *lp, loop_hook_fn *fn, void *arg);
void loop_run_once(struct loop *lp, unsigned timeout_ms);
void loop_stop(struct loop *lp);

#endif
