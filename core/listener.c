/*
 * listener - a shard's listening sockets: multishot accept, admission limits
 *
 * SYNOPSIS
 *   void listener_arm(struct shard_listen *l);
 *   int  listener_admit(const struct conf *c, const struct sockaddr *sa);
 *   void listener_release(const struct sockaddr *sa);
 * DESCRIPTION
 *   Each shard has its own SO_REUSEPORT socket per Listen address (created
 *   by the main thread), so the kernel spreads connections over shards.
 *   listener_arm() starts a multishot accept on it; every accepted fd starts
 *   a session. A completion without IORING_CQE_F_MORE means the multishot
 *   ended (full CQ, errors): it is armed again at once, or at the next
 *   tick after an error such as EMFILE, so a shortage of fds cannot spin.
 *
 *   listener_admit() counts a new connection against Max_Connections and
 *   Max_Connections_Per_IP and says whether it may proceed; the session
 *   answers 421 when not. listener_release() undoes it when the session
 *   ends.
 * THREADS
 *   The counters are process-wide, shared by all shards, and updated with
 *   ck_pr atomics once per connection and once per close: no lock.
 *   XXX: per-IP counts live in a fixed table of 65,536 buckets indexed by
 *   a hash of the address, so two addresses that collide share one limit.
 *   That errs on the side of refusing, is exact in practice for the few
 *   hundred peers an MTA sees, and needs no cross-shard table.
 */
#include <ck_pr.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "listener.h"
#include "log.h"
#include "shard.h"
#include "util.h"

#define PER_IP_BUCKETS 65536

static unsigned conn_total;
static unsigned conn_per_ip[PER_IP_BUCKETS];


static uint32_t
addr_bucket(const struct sockaddr *sa)
{
    const uint8_t *p;
    size_t n, i;
    uint32_t h = 2166136261u;    /* FNV-1a */

    if (sa->sa_family == AF_INET6) {
        p = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
        n = 16;
    } else {
        p = (const uint8_t *)
            &((const struct sockaddr_in *)(const void *)sa)->sin_addr;
        n = 4;
    }
    for (i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h % PER_IP_BUCKETS;
}


/* listener_admit - count a connection; 0 if within limits, else -EBUSY */
int
listener_admit(const struct conf *c, const struct sockaddr *sa)
{
    uint32_t b = addr_bucket(sa);
    unsigned total = ck_pr_faa_uint(&conn_total, 1) + 1;
    unsigned per_ip = ck_pr_faa_uint(&conn_per_ip[b], 1) + 1;

    if (total > c->max_connections)
        return -EBUSY;
    if (c->max_connections_per_ip != 0 && per_ip > c->max_connections_per_ip)
        return -EBUSY;
    return 0;
}


/* listener_release - the session admitted (or refused) for sa has ended */
void
listener_release(const struct sockaddr *sa)
{
    ck_pr_dec_uint(&conn_total);
    ck_pr_dec_uint(&conn_per_ip[addr_bucket(sa)]);
}


static void
listener_accept_done(struct op *op, int res, uint32_t flags)
{
    struct shard_listen *l = container_of(op, struct shard_listen, accept_op);
    struct shard *sh = l->sh;

    if (!(flags & IORING_CQE_F_MORE))
        l->armed = 0;
    if (res >= 0) {
        session_start(sh, l, res);
    } else if (res != -ECANCELED) {
        static __thread uint64_t logged_ms;
        uint64_t now = now_ms();

        /* Environment trouble (EMFILE...): say it once a minute at most. */
        if (now - logged_ms > 60000) {
            log_panic("listener", "shard %u: accept on %s: %s", sh->id,
                      l->listen->text, strerror(-res));
            logged_ms = now;
        }
        return;                  /* re-armed by the next tick */
    }
    if (!l->armed && sh->state <= SHARD_STATE_DRAINING)
        listener_arm(l);
}


/* listener_arm - start (again) the multishot accept on l */
void
listener_arm(struct shard_listen *l)
{
    struct io_uring_sqe *sqe;

    ASSERT(!l->armed);
    l->accept_op.done = listener_accept_done;
    sqe = loop_sqe(&l->sh->loop, &l->accept_op);
    io_uring_prep_multishot_accept(sqe, l->fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, &l->accept_op);
    l->armed = 1;
}
