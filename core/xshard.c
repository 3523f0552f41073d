/*
 * xshard - see xshard.h
 */
#include "xshard.h"

#include <errno.h>
#include <string.h>

#include "util.h"


void
xshard_box_init(struct xshard_box *box)
{
    ck_ring_init(&box->ring, XSHARD_BOX_SIZE);
}


/* xshard_sender_init - the small ring a non-shard thread posts wakeups from */
int
xshard_sender_init(struct xshard_sender *tx)
{
    return io_uring_queue_init(8, &tx->ring, 0);
}


void
xshard_sender_fini(struct xshard_sender *tx)
{
    io_uring_queue_exit(&tx->ring);
}


/*
 * xshard_send_remote - enqueue msg in box and wake the shard owning
 * target_ring_fd. Returns -EAGAIN when the box is full.
 */
int
xshard_send_remote(struct xshard_sender *tx, struct xshard_box *box,
                   int target_ring_fd, uint64_t wake_user_data,
                   struct xshard_msg *msg)
{
    struct io_uring_sqe *sqe;
    struct io_uring_cqe *cqe;
    int rc;

    ck_pr_store_int(&msg->handled, 0);
    if (!ck_ring_enqueue_spsc(&box->ring, box->buf, msg))
        return -EAGAIN;
    sqe = io_uring_get_sqe(&tx->ring);
    ASSERT(sqe != NULL);
    io_uring_prep_msg_ring(sqe, target_ring_fd, 0, wake_user_data, 0);
    io_uring_sqe_set_data64(sqe, 0);
    rc = io_uring_submit_and_wait(&tx->ring, 1);
    if (rc < 0)
        return rc;
    /* Reap our own completion of the MSG_RING so the CQ never fills. */
    while (io_uring_peek_cqe(&tx->ring, &cqe) == 0) {
        rc = cqe->res;
        io_uring_cqe_seen(&tx->ring, cqe);
    }
    return rc < 0 ? rc : 0;
}


/* xshard_recv - the next message for this shard, or NULL */
struct xshard_msg *
xshard_recv(struct xshard_box *box)
{
    void *p;

    if (!ck_ring_dequeue_spsc(&box->ring, box->buf, &p))
        return NULL;
    return p;
}
