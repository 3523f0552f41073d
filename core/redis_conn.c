/*
 * redis_conn - one Redis connection of a datasource: connect, pipelined
 *              send, recv and parse, deadlines, fail and reconnect
 *
 * DESCRIPTION
 *   I/O is the ring's: IORING_OP_CONNECT with a linked timeout, one
 *   IORING_OP_RECV at a time into the connection's buffer, one
 *   IORING_OP_SEND at a time from a frozen buffer while new commands go
 *   to the other one (PLATFORM.md pitfall 6). A flush is deferred to the
 *   end of the turn (loop_defer), so the commands of one turn share one
 *   send.
 *
 *   Deadlines: commands on one connection are queued in order with the
 *   same timeout, so their deadlines only grow; one absolute io_uring
 *   timeout per connection, set for the oldest unanswered command, is
 *   enough. The same timer waits out the reconnect backoff while the
 *   connection is down. The state machine is drawn in redis.h.
 * THREADS
 *   Shard-local.
 */
#include "redis_int.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

static const char *const conn_state_names[] = {
    [REDIS_CONN_DOWN] = "down",
    [REDIS_CONN_CONNECTING] = "connecting",
    [REDIS_CONN_READY] = "ready",
    [REDIS_CONN_CLOSING] = "closing",
};

const char *
redis_conn_state_name(enum redis_conn_state s)
{
    return s < ARRAY_SIZE(conn_state_names) ? conn_state_names[s] : "?";
}


/* conn_append - add bytes to the buffer that is not being sent */
static int
conn_append(struct redis_conn *rc, const char *p, size_t len)
{
    unsigned b = rc->wpend;

    if (rc->wlen[b] + len > REDIS_WBUF_MAX)
        return -ENOBUFS;
    if (rc->wlen[b] + len > rc->wcap[b]) {
        size_t cap = rc->wcap[b] ? rc->wcap[b] : 4096;

        while (cap < rc->wlen[b] + len)
            cap *= 2;
        rc->wbuf[b] = xrealloc(rc->wbuf[b], cap);
        rc->wcap[b] = cap;
    }
    memcpy(rc->wbuf[b] + rc->wlen[b], p, len);
    rc->wlen[b] += len;
    return 0;
}


static void
conn_flush_soon(struct redis_conn *rc)
{
    if (!rc->flush_queued) {
        rc->flush_queued = 1;
        loop_defer(rc->rd->lp, &rc->flush_op);
    }
}


/* conn_enqueue - format argv onto rc and queue q for its reply */
int
redis_conn_enqueue(struct redis_conn *rc, struct redis_req *q, int argc,
             const char **argv, const size_t *argvlen, uint64_t deadline_ms)
{
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    int rc_append;

    if (len < 0)
        return -ENOMEM;
    rc_append = conn_append(rc, cmd, (size_t)len);
    free(cmd);
    if (rc_append < 0)
        return rc_append;
    q->next = NULL;
    q->deadline_ms = deadline_ms;
    *rc->tail = q;
    rc->tail = &q->next;
    if (rc->live == NULL)
        rc->live = q;
    rc->inflight++;
    if (!rc->timer_armed)
        redis_conn_timer_at(rc, q->deadline_ms);
    if (rc->state == REDIS_CONN_READY)
        conn_flush_soon(rc);
    return 0;
}


static void
conn_enqueue_internal(struct redis_conn *rc, enum redis_req_kind kind,
                      int argc, const char **argv)
{
    struct redis_req *q = redis_req_new(rc->rd);

    q->kind = kind;
    /* The handshake's clock starts with the connect. */
    if (redis_conn_enqueue(rc, q, argc, argv, NULL, now_ms() +
                     rc->rd->c->connect_timeout_ms +
                     rc->rd->c->timeout_ms) < 0)
        panic("redis: cannot queue a handshake command");
}


static void
conn_send(struct redis_conn *rc)
{
    unsigned b = rc->wpend ^ 1;
    struct io_uring_sqe *sqe;

    ASSERT(!rc->send_busy);
    ASSERT(rc->woff < rc->wlen[b]);
    sqe = loop_sqe(rc->rd->lp, &rc->send_op);
    io_uring_prep_send(sqe, rc->fd, rc->wbuf[b] + rc->woff,
                       rc->wlen[b] - rc->woff, MSG_NOSIGNAL);
    rc->send_busy = 1;
}


/* conn_flush - send what is pending unless a send is in flight */
static void
conn_flush(struct redis_conn *rc)
{
    unsigned b = rc->wpend;

    if (rc->state != REDIS_CONN_READY || rc->send_busy || rc->wlen[b] == 0)
        return;
    /* Freeze the pending buffer for the send; append to the other. */
    rc->wpend ^= 1;
    rc->wlen[rc->wpend] = 0;
    rc->woff = 0;
    rc->rd->stats.batches++;
    conn_send(rc);
}


static void
flush_done(struct op *op, int res, uint32_t flags)
{
    struct redis_conn *rc = container_of(op, struct redis_conn, flush_op);

    rc->flush_queued = 0;
    conn_flush(rc);
}


static void
send_done(struct op *op, int res, uint32_t flags)
{
    struct redis_conn *rc = container_of(op, struct redis_conn, send_op);
    unsigned b = rc->wpend ^ 1;
    char why[128];

    rc->send_busy = 0;
    if (rc->state != REDIS_CONN_READY) {
        redis_conn_fail(rc, "closing");
        return;
    }
    if (res < 0) {
        snprintf(why, sizeof why, "send: %s", strerror(-res));
        redis_conn_fail(rc, why);
        return;
    }
    rc->woff += (size_t)res;
    if (rc->woff < rc->wlen[b]) {
        conn_send(rc);
        return;
    }
    rc->wlen[b] = 0;
    rc->woff = 0;
    conn_flush(rc);
}


static void
recv_arm(struct redis_conn *rc)
{
    struct io_uring_sqe *sqe;

    ASSERT(!rc->recv_busy);
    sqe = loop_sqe(rc->rd->lp, &rc->recv_op);
    io_uring_prep_recv(sqe, rc->fd, rc->rbuf, sizeof rc->rbuf, 0);
    rc->recv_busy = 1;
}


/* conn_reply - the reply to the oldest command of rc */
static void
conn_reply(struct redis_conn *rc, redisReply *reply)
{
    struct redis *rd = rc->rd;
    struct redis_req *q = rc->head;

    rc->head = q->next;
    if (rc->head == NULL)
        rc->tail = &rc->head;
    if (rc->live == q)
        rc->live = q->next;
    rc->inflight--;
    rc->answered = 1;
    rc->backoff_ms = 0;
    rd->failures = 0;
    rd->stats.replies++;
    switch (q->kind) {
    case REDIS_REQ_USER:
        if (q->done != NULL) {
            redis_done_fn *done = q->done;
            void *arg = q->arg;

            redis_req_free(rd, q);
            done(arg, 0, reply, NULL);
            return;
        }
        freeReplyObject(reply);  /* it came after its deadline */
        break;
    case REDIS_REQ_HANDSHAKE:
    case REDIS_REQ_PROBE:
        if (reply->type == REDIS_REPLY_ERROR) {
            char why[256];

            snprintf(why, sizeof why, "%s refused: %.*s",
                     q->kind == REDIS_REQ_PROBE ? "PING" : "AUTH/SELECT",
                     (int)MIN(reply->len, 160), reply->str);
            freeReplyObject(reply);
            redis_req_free(rd, q);
            redis_conn_fail(rc, why);
            return;
        }
        freeReplyObject(reply);
        if (q->kind == REDIS_REQ_PROBE &&
            rd->breaker == REDIS_BREAKER_HALF_OPEN) {
            redis_req_free(rd, q);
            redis_breaker_close(rd);
            return;
        }
        break;
    }
    redis_req_free(rd, q);
}


static void
recv_done(struct op *op, int res, uint32_t flags)
{
    struct redis_conn *rc = container_of(op, struct redis_conn, recv_op);
    char why[160];
    void *reply;

    rc->recv_busy = 0;
    if (rc->state != REDIS_CONN_READY) {
        redis_conn_fail(rc, "closing");
        return;
    }
    if (res <= 0) {
        if (res == 0)
            snprintf(why, sizeof why, "connection closed by Redis");
        else
            snprintf(why, sizeof why, "recv: %s", strerror(-res));
        redis_conn_fail(rc, why);
        return;
    }
    if (redisReaderFeed(rc->reader, rc->rbuf, (size_t)res) != REDIS_OK) {
        redis_conn_fail(rc, "reader: out of memory");
        return;
    }
    for (;;) {
        reply = NULL;
        if (redisReaderGetReply(rc->reader, &reply) != REDIS_OK) {
            snprintf(why, sizeof why, "protocol error: %s",
                     rc->reader->errstr);
            redis_conn_fail(rc, why);
            return;
        }
        if (reply == NULL)
            break;
        if (rc->head == NULL) {
            freeReplyObject(reply);
            redis_conn_fail(rc, "protocol error: a reply nobody asked for");
            return;
        }
        conn_reply(rc, reply);
        /* A callback or a handshake failure may have closed rc. */
        if (rc->state != REDIS_CONN_READY)
            return;
    }
    recv_arm(rc);
}


static void
connect_done(struct op *op, int res, uint32_t flags)
{
    struct redis_conn *rc = container_of(op, struct redis_conn, connect_op);
    char why[160];

    rc->connect_busy = 0;
    if (rc->state != REDIS_CONN_CONNECTING) {
        redis_conn_fail(rc, "closing");
        return;
    }
    if (res < 0) {
        rc->rd->stats.connect_failures++;
        snprintf(why, sizeof why, "connect to %s: %s",
                 rc->rd->c->uris[rc->uri].text,
                 res == -ECANCELED ? "timed out" : strerror(-res));
        /* Several uris: the next connect tries the next one. */
        rc->uri = (rc->uri + 1) % (unsigned)rc->rd->c->uri_count;
        redis_conn_fail(rc, why);
        return;
    }
    rc->state = REDIS_CONN_READY;
    recv_arm(rc);
    conn_flush(rc);
}


/* conn_connect - a socket, the handshake queued, IORING_OP_CONNECT */
void
redis_conn_connect(struct redis_conn *rc)
{
    struct redis *rd = rc->rd;
    const struct conf_redis_uri *u = &rd->c->uris[rc->uri];
    const char *password = rd->c->password != NULL ? rd->c->password
                                                   : u->password;
    struct io_uring_sqe *sqe;
    char dbtext[16];
    int fd, one = 1;

    ASSERT(rc->state == REDIS_CONN_DOWN);
    ASSERT(rc->head == NULL);
    rc->reconnect_at_ms = REDIS_NEVER;
    rd->stats.connects++;
    fd = socket(u->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
                SOCK_CLOEXEC, 0);
    if (fd < 0) {
        char why[128];

        snprintf(why, sizeof why, "socket: %s", strerror(errno));
        rc->state = REDIS_CONN_CONNECTING;
        redis_conn_fail(rc, why);
        return;
    }
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    rc->fd = fd;
    rc->state = REDIS_CONN_CONNECTING;
    rc->answered = 0;
    rc->reader = redisReaderCreate();
    rc->wlen[0] = rc->wlen[1] = 0;
    rc->woff = 0;
    rc->wpend = 0;
    /* The handshake goes first on the wire, before any queued command. */
    if (password != NULL) {
        const char *argv[] = { "AUTH", password };

        conn_enqueue_internal(rc, REDIS_REQ_HANDSHAKE, 2, argv);
    }
    if (u->db != 0) {
        const char *argv[] = { "SELECT", dbtext };

        snprintf(dbtext, sizeof dbtext, "%u", u->db);
        conn_enqueue_internal(rc, REDIS_REQ_HANDSHAKE, 2, argv);
    }
    if (rc->probe) {
        const char *argv[] = { "PING" };

        conn_enqueue_internal(rc, REDIS_REQ_PROBE, 1, argv);
    }
    rc->connect_ts.tv_sec = rd->c->connect_timeout_ms / 1000;
    rc->connect_ts.tv_nsec =
        (long long)(rd->c->connect_timeout_ms % 1000) * 1000000;
    /* The connect and its linked timeout must be in one submission. */
    if (io_uring_sq_space_left(&rd->lp->ring) < 2)
        (void)io_uring_submit(&rd->lp->ring);
    sqe = loop_sqe(rd->lp, &rc->connect_op);
    io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&u->addr,
                          u->addr_len);
    sqe->flags |= IOSQE_IO_LINK;
    sqe = loop_sqe(rd->lp, NULL);
    io_uring_prep_link_timeout(sqe, &rc->connect_ts, 0);
    rc->connect_busy = 1;
}


/* conn_down - every op of a closing connection has completed */
static void
conn_down(struct redis_conn *rc)
{
    struct redis *rd = rc->rd;

    ASSERT(rc->state == REDIS_CONN_CLOSING);
    if (rc->fd >= 0)
        close(rc->fd);
    rc->fd = -1;
    if (rc->reader != NULL)
        redisReaderFree(rc->reader);
    rc->reader = NULL;
    rc->state = REDIS_CONN_DOWN;
    if (rd->breaker == REDIS_BREAKER_HALF_OPEN && rc->probe) {
        /* The probe failed: redis_breaker_open() already rescheduled it. */
        rc->probe = 0;
    }
    if (rd->breaker == REDIS_BREAKER_CLOSED) {
        rc->backoff_ms = rc->backoff_ms == 0
                             ? rd->c->reconnect_min_ms
                             : MIN(rc->backoff_ms * 2,
                                   rd->c->reconnect_max_ms);
        rc->reconnect_at_ms = now_ms() + rc->backoff_ms;
    }
    if (rc->reconnect_at_ms != REDIS_NEVER)
        redis_conn_timer_at(rc, rc->reconnect_at_ms);
}


/*
 * conn_fail - rc is lost (or closing): fail every command in flight at
 * once, shut the socket so the recv and send end, and go DOWN when the
 * last op has completed. Called again from each op's completion.
 */
void
redis_conn_fail(struct redis_conn *rc, const char *why)
{
    struct redis *rd = rc->rd;
    struct redis_req *q, *next;
    int was_up = rc->state == REDIS_CONN_CONNECTING ||
                 rc->state == REDIS_CONN_READY;

    if (rc->state == REDIS_CONN_DOWN)
        return;
    if (was_up) {
        int answered = rc->answered;

        rc->state = REDIS_CONN_CLOSING;
        if (rc->fd >= 0)
            (void)shutdown(rc->fd, SHUT_RDWR);
        q = rc->head;
        rc->head = NULL;
        rc->tail = &rc->head;
        rc->live = NULL;
        rc->inflight = 0;
        if (strcmp(why, "circuit open") != 0) {
            if (rd->breaker == REDIS_BREAKER_CLOSED &&
                (answered || rd->failures == 0))
                log_panic("redis", "shard %u: datasource %s: connection "
                          "%u: %s", rd->shard_id, rd->c->name, rc->idx,
                          why);
            if (rd->breaker == REDIS_BREAKER_HALF_OPEN && rc->probe)
                redis_breaker_open(rd, why);
            else
                redis_failure(rd, why);
        }
        /* Callbacks last: they may queue commands on other connections. */
        for (; q != NULL; q = next) {
            next = q->next;
            if (q->kind == REDIS_REQ_USER && q->done != NULL) {
                redis_done_fn *done = q->done;
                void *arg = q->arg;

                rd->stats.conn_lost++;
                redis_req_free(rd, q);
                done(arg, -ECONNRESET, NULL, "Redis connection lost");
                continue;
            }
            redis_req_free(rd, q);
        }
    }
    if (rc->state == REDIS_CONN_CLOSING && !rc->send_busy &&
        !rc->recv_busy && !rc->connect_busy)
        conn_down(rc);
}


static void
timer_done(struct op *op, int res, uint32_t flags)
{
    struct redis_conn *rc = container_of(op, struct redis_conn, timer_op);
    struct redis *rd = rc->rd;
    uint64_t now = now_ms();

    rc->timer_armed = 0;
    if (rc->state == REDIS_CONN_DOWN) {
        if (rc->reconnect_at_ms == REDIS_NEVER)
            return;
        if (now < rc->reconnect_at_ms) {
            redis_conn_timer_at(rc, rc->reconnect_at_ms);
            return;
        }
        if (rd->breaker == REDIS_BREAKER_OPEN) {
            if (rc != &rd->conns[0])
                return;
            rd->breaker = REDIS_BREAKER_HALF_OPEN;
            rc->probe = 1;
        } else if (rd->breaker == REDIS_BREAKER_HALF_OPEN) {
            return;
        }
        redis_conn_connect(rc);
        return;
    }
    if (rc->state == REDIS_CONN_CLOSING)
        return;
    /* Deadlines: answer every command past its own, oldest first. */
    while (rc->live != NULL && rc->live->deadline_ms <= now) {
        struct redis_req *q = rc->live;

        rc->live = q->next;
        if (q->kind != REDIS_REQ_USER) {
            redis_conn_fail(rc, "handshake timed out");
            return;
        }
        if (q->done != NULL) {
            redis_done_fn *done = q->done;

            q->done = NULL;      /* its reply will be dropped */
            rd->stats.timeouts++;
            done(q->arg, -ETIMEDOUT, NULL, "Redis timed out");
            if (rc->state != REDIS_CONN_READY &&
                rc->state != REDIS_CONN_CONNECTING)
                return;
            redis_failure(rd, "command timed out");
            if (rc->state != REDIS_CONN_READY &&
                rc->state != REDIS_CONN_CONNECTING)
                return;
        }
    }
    if (rc->live != NULL)
        redis_conn_timer_at(rc, rc->live->deadline_ms);
}


/* conn_timer_at - make rc's timer fire at at_ms at the latest */
void
redis_conn_timer_at(struct redis_conn *rc, uint64_t at_ms)
{
    struct io_uring_sqe *sqe;

    if (rc->timer_armed && rc->timer_at_ms <= at_ms)
        return;
    rc->timer_at_ms = at_ms;
    rc->timer_ts.tv_sec = (long long)(at_ms / 1000);
    rc->timer_ts.tv_nsec = (long long)(at_ms % 1000) * 1000000;
    if (rc->timer_armed) {
        /* An earlier time (a backoff under a command's deadline). */
        sqe = loop_sqe(rc->rd->lp, NULL);
        io_uring_prep_timeout_update(sqe, &rc->timer_ts,
                                     (uint64_t)(uintptr_t)&rc->timer_op,
                                     IORING_TIMEOUT_ABS);
        return;
    }
    sqe = loop_sqe(rc->rd->lp, &rc->timer_op);
    io_uring_prep_timeout(sqe, &rc->timer_ts, 0, IORING_TIMEOUT_ABS);
    rc->timer_armed = 1;
}


/* redis_conn_init - a DOWN connection of rd, its ops' callbacks set */
void
redis_conn_init(struct redis_conn *rc, struct redis *rd, unsigned idx)
{
    memset(rc, 0, sizeof *rc);
    rc->rd = rd;
    rc->idx = idx;
    rc->fd = -1;
    rc->state = REDIS_CONN_DOWN;
    rc->tail = &rc->head;
    rc->reconnect_at_ms = REDIS_NEVER;
    rc->connect_op.done = connect_done;
    rc->send_op.done = send_done;
    rc->recv_op.done = recv_done;
    rc->timer_op.done = timer_done;
    rc->flush_op.done = flush_done;
}


/* redis_conn_free - after the ring is gone: no op can complete any more */
void
redis_conn_free(struct redis_conn *rc)
{
    struct redis_req *q;

    while ((q = rc->head) != NULL) {
        rc->head = q->next;
        free(q);
    }
    if (rc->fd >= 0)
        close(rc->fd);
    if (rc->reader != NULL)
        redisReaderFree(rc->reader);
    free(rc->wbuf[0]);
    free(rc->wbuf[1]);
}
