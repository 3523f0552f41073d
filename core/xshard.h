/*
 * xshard - mailboxes between the main thread and the shards (ck_ring SPSC
 *          plus an io_uring msg_ring wakeup)
 *
 * SYNOPSIS
 *   void xshard_box_init(struct xshard_box *box);
 *   int  xshard_sender_init(struct xshard_sender *tx);
 *   int  xshard_send_remote(struct xshard_sender *tx, struct xshard_box *box,
 *                           int target_ring_fd, uint64_t wake_user_data,
 *                           struct xshard_msg *msg);
 *   struct xshard_msg *xshard_recv(struct xshard_box *box);
 *   void xshard_sender_fini(struct xshard_sender *tx);
 * DESCRIPTION
 *   A box is a single-producer single-consumer ck_ring of message pointers:
 *   the main thread produces, one shard consumes. After enqueueing, the
 *   sender posts a CQE into the shard's ring with IORING_OP_MSG_RING whose
 *   user_data is the shard's mailbox op, so a shard blocked in its ring
 *   wakes up and drains the box. No locks, no eventfd.
 *
 *   The main thread has no shard ring of its own, so it keeps a small
 *   io_uring (struct xshard_sender) just to post these wakeups.
 * OWNERSHIP
 *   Messages are owned by the sender; the receiver marks msg->handled (a
 *   ck_pr store) when it is done with one, and never frees it. Control
 *   messages are preallocated in struct shard, one per kind.
 * THREADS
 *   xshard_send_remote() from the one producer thread only; xshard_recv()
 *   from the owning shard only.
 */
#ifndef RINGMAIL_XSHARD_H
#define RINGMAIL_XSHARD_H

#include <ck_ring.h>
#include <liburing.h>
#include <stdint.h>

#include "xshard_msg.h"

#define XSHARD_BOX_SIZE 64       /* holds 63 messages (ck_ring keeps one free) */

struct xshard_msg {
    enum xshard_kind kind;
    void *arg;
    int handled;                 /* set by the receiver with ck_pr_store_int */
};

struct xshard_box {
    ck_ring_t ring;
    ck_ring_buffer_t buf[XSHARD_BOX_SIZE];
};

struct xshard_sender {
    struct io_uring ring;
};

void xshard_box_init(struct xshard_box *box);
int xshard_sender_init(struct xshard_sender *tx);
void xshard_sender_fini(struct xshard_sender *tx);
int xshard_send_remote(struct xshard_sender *tx, struct xshard_box *box,
                       int target_ring_fd, uint64_t wake_user_data,
                       struct xshard_msg *msg);
struct xshard_msg *xshard_recv(struct xshard_box *box);

#endif
