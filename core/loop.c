/*
 * loop - see loop.h
 */
#include "loop.h"

#include <errno.h>
#include <string.h>

#include "util.h"


/* loop_init - create the ring in the calling (shard) thread */
int
loop_init(struct loop *lp, unsigned sq_entries, unsigned cq_entries)
{
    struct io_uring_params p;
    int rc;

    memset(lp, 0, sizeof *lp);
    memset(&p, 0, sizeof p);
    /*
     * A big CQ: multishot accept and recv end silently when the CQ fills
     * (PLATFORM.md pitfall 4: 128 entries dropped accepts, 4096 never did).
     */
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
              IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
    p.cq_entries = cq_entries;
    rc = io_uring_queue_init_params(sq_entries, &lp->ring, &p);
    if (rc < 0)
        return rc;
    lp->defer_tail = &lp->defer_head;
    return 0;
}


void
loop_fini(struct loop *lp)
{
    io_uring_queue_exit(&lp->ring);
}


/* loop_sqe - a zeroed SQE tagged with op; submits first when the SQ is full */
struct io_uring_sqe *
loop_sqe(struct loop *lp, struct op *op)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&lp->ring);

    while (sqe == NULL) {
        int rc = io_uring_submit(&lp->ring);

        if (rc < 0 && rc != -EBUSY && rc != -EINTR)
            panic("io_uring_submit: %s", strerror(-rc));
        sqe = io_uring_get_sqe(&lp->ring);
    }
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data(sqe, op);
    return sqe;
}


/* loop_defer - run op->done(op, 0, 0) after this turn's reap pass */
void
loop_defer(struct loop *lp, struct op *op)
{
    op->defer_next = NULL;
    *lp->defer_tail = op;
    lp->defer_tail = &op->defer_next;
}


void
loop_before_wait(struct loop *lp, loop_hook_fn *fn, void *arg)
{
    ASSERT(lp->hook_count < LOOP_HOOKS_MAX);
    lp->hooks[lp->hook_count].fn = fn;
    lp->hooks[lp->hook_count].arg = arg;
    lp->hook_count++;
}


static void
loop_run_deferred(struct loop *lp)
{
    while (lp->defer_head != NULL) {
        struct op *op = lp->defer_head;

        lp->defer_head = op->defer_next;
        if (lp->defer_head == NULL)
            lp->defer_tail = &lp->defer_head;
        op->done(op, 0, 0);
    }
}


/* loop_reap - dispatch every ready CQE; returns how many */
static unsigned
loop_reap(struct loop *lp)
{
    struct io_uring_cqe *cqes[64];
    unsigned n, i, total = 0;

    do {
        n = io_uring_peek_batch_cqe(&lp->ring, cqes, ARRAY_SIZE(cqes));
        for (i = 0; i < n; i++) {
            struct op *op = io_uring_cqe_get_data(cqes[i]);
            int res = cqes[i]->res;
            uint32_t flags = cqes[i]->flags;

            /* Mark seen first: done() may submit and the CQ must have room. */
            io_uring_cqe_seen(&lp->ring, cqes[i]);
            if (op != NULL)
                op->done(op, res, flags);
        }
        total += n;
    } while (n == ARRAY_SIZE(cqes));
    lp->cqes += total;
    return total;
}


/* loop_stop - the owner is done: no turn waits any more */
void
loop_stop(struct loop *lp)
{
    lp->stopped = 1;
}


/* loop_run_once - one turn: hooks, submit and wait, reap, deferred */
void
loop_run_once(struct loop *lp, unsigned timeout_ms)
{
    struct __kernel_timespec ts;
    struct io_uring_cqe *cqe = NULL;
    unsigned i, wait_nr;
    int rc;

    loop_run_deferred(lp);
    for (i = 0; i < lp->hook_count; i++)
        lp->hooks[i].fn(lp, lp->hooks[i].arg);
    loop_run_deferred(lp);
    if (lp->stopped) {
        /* Finish what is in flight (teardown) without sleeping. */
        rc = io_uring_submit_and_get_events(&lp->ring);
        if (rc < 0 && rc != -EINTR && rc != -EBUSY)
            panic("io_uring_submit_and_get_events: %s", strerror(-rc));
        loop_reap(lp);
        loop_run_deferred(lp);
        return;
    }

    if (lp->last_reaped >= LOOP_BATCH && timeout_ms > 0) {
        ts.tv_sec = 0;
        ts.tv_nsec = LOOP_BATCH_US * 1000;
        wait_nr = LOOP_BATCH;
    } else {
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = (long long)(timeout_ms % 1000) * 1000000;
        wait_nr = 1;
    }
    rc = io_uring_submit_and_wait_timeout(&lp->ring, &cqe, wait_nr, &ts,
                                          NULL);
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY)
        panic("io_uring_submit_and_wait_timeout: %s", strerror(-rc));
    lp->turns++;
    lp->last_reaped = loop_reap(lp);
    loop_run_deferred(lp);
}
