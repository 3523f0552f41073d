/*
 * shard_ctl - see shard_ctl.h
 */
#include "shard_ctl.h"

#include <ck_pr.h>
#include <errno.h>
#include <time.h>

#include "delivery_ctl.h"
#include "util.h"


/* shard_ctl_box_done - the control thread posted requests: run them all */
void
shard_ctl_box_done(struct op *op, int res, uint32_t flags)
{
    struct shard *sh = container_of(op, struct shard, ctl_box_op);
    struct xshard_msg *m;

    while ((m = xshard_recv(&sh->ctl_box)) != NULL) {
        struct shard_ctl_req *req = m->arg;

        ASSERT(req != NULL);
        ASSERT(&req->msg == m);
        /* Stopping: delivery is being torn down (and after DONE this
         * may run from delivery_fini's last loop turns). */
        if (sh->state >= SHARD_STATE_STOPPING)
            req->res = -ESRCH;
        else
            delivery_ctl_run(&sh->dlv, m->kind, req);
        /* The results must be visible before handled is. */
        ck_pr_fence_store();
        ck_pr_store_int(&m->handled, 1);
    }
}


/* shard_ctl_call_remote - post req to sh and wait for its answer */
int
shard_ctl_call_remote(struct shard *sh, struct xshard_sender *tx,
                      struct shard_ctl_req *req, enum xshard_kind kind,
                      unsigned timeout_ms)
{
    struct timespec nap = { 0, 1000000 };
    unsigned waited_ms = 0;
    int st, rc;

    if (req->busy) {
        if (!ck_pr_load_int(&req->msg.handled))
            return -EBUSY;
        req->busy = 0;
    }
    st = ck_pr_load_int((int *)&sh->state);
    if (st != SHARD_STATE_RUNNING && st != SHARD_STATE_DRAINING)
        return -ESRCH;
    req->msg.kind = kind;
    req->msg.arg = req;
    req->res = 0;
    req->count = 0;
    req->row_count = 0;
    req->truncated = 0;
    req->sender[0] = '\0';
    req->received_unix = 0;
    req->body_bytes = 0;
    req->rcpt_count = 0;
    rc = xshard_send_remote(tx, &sh->ctl_box, sh->ring_fd,
                            (uint64_t)(uintptr_t)&sh->ctl_box_op, &req->msg);
    if (rc == -EAGAIN)
        return -EBUSY;
    if (rc < 0 && rc != -ENXIO) {
        /* Enqueued, but the wakeup failed: the shard may still see it. */
        req->busy = 1;
        return rc;
    }
    req->busy = 1;
    while (!ck_pr_load_int(&req->msg.handled)) {
        if (waited_ms >= timeout_ms)
            return -ETIMEDOUT;
        nanosleep(&nap, NULL);
        waited_ms++;
    }
    ck_pr_fence_load();
    req->busy = 0;
    return 0;
}
