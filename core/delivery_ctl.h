/*
 * delivery_ctl - operator inspection and actions on a shard's delivery
 *                queue: showqueue, message details, flush, retry, fail
 *
 * SYNOPSIS
 *   void delivery_ctl_run(struct delivery *dl, enum xshard_kind kind,
 *                         struct shard_ctl_req *req);
 * DESCRIPTION
 *   Runs one control request (shard_ctl.h) against this shard's queue and
 *   writes the results into req:
 *
 *   XS_CONTROL_QUEUE_SHOW     with req->arg "": one row per destination
 *                             with items (ready, deferred, in flight,
 *                             open connections); with a domain: one row
 *                             per item of that domain (message id, state,
 *                             attempts, seconds until due, last reply).
 *   XS_CONTROL_MESSAGE_SHOW   the message req->arg: sender, arrival,
 *                             size, and one row per recipient (done,
 *                             ready, deferred, inflight, or pending: a
 *                             done-mark or bounce on its way to the disk).
 *   XS_CONTROL_DOMAIN_FLUSH   every deferred item of the domain is made
 *                             ready now and the destination is no longer
 *                             considered down; count = items moved.
 *   XS_CONTROL_MESSAGE_RETRY  the same for the items of one message.
 *   XS_CONTROL_DOMAIN_FAIL    every ready or deferred item of the domain
 *   XS_CONTROL_MESSAGE_FAIL   (or of the message) fails now as if the
 *                             destination had answered 5xx: a bounced line
 *                             in the delivery log, a DSN to the sender,
 *                             the recipients marked done; count = items.
 *   Items in flight (a connection is sending them) are never touched:
 *   their reply decides them; they are reported as inflight.
 *   req->res is -ENOENT when the message or domain has nothing queued
 *   on this shard.
 * THREADS
 *   Shard-local: called from the shard's loop only (shard_ctl.c).
 * SEE ALSO
 *   delivery.h, shard_ctl.h, control.h
 */
#ifndef RINGMAIL_DELIVERY_CTL_H
#define RINGMAIL_DELIVERY_CTL_H

#include "delivery.h"
#include "shard_ctl.h"

void delivery_ctl_run(struct delivery *dl, enum xshard_kind kind,
                      struct shard_ctl_req *req);

#endif
