/*
 * delivery_conn - see delivery_conn.h
 *
 * Lifetime: c->inflight counts the operations whose completion is still to
 * come (connect, recv, send, cancel) and the DNS lookup; every entry point
 * (a completion, a call from delivery.c or the tick) holds one more for
 * its own duration (conn_enter/conn_leave). A closing connection ends in
 * conn_leave() once nothing is held: then it either connects to the next
 * hop (same struct, fresh socket and machine) or is freed.
 *
 * Rd's counters follow the state (conn_set_state): conns_unready while
 * resolving, connecting or greeting, conns_ready after EHLO.
 */
#include "delivery_conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "route.h"
#include "util.h"

/* Output taken from the machine, written in order. */
struct dlv_out {
    struct dlv_out *next;
    struct smtp_client_out o;
    unsigned iov_off;            /* first iovec not completely written */
    struct dlv_msg *msg;         /* reference: iovecs may point into it */
};

static void conn_feed_pending(struct dlv_conn *c);
static void conn_event(struct dlv_conn *c, enum smtp_client_event ev);
static void conn_connect(struct dlv_conn *c);
static void conn_end(struct dlv_conn *c);


/* conn_enter - hold c for the duration of a call from outside */
static void
conn_enter(struct dlv_conn *c)
{
    c->inflight++;
}


/* conn_leave - drop a hold or a finished op; the last one ends c */
static void
conn_leave(struct dlv_conn *c)
{
    ASSERT(c->inflight > 0);
    if (--c->inflight == 0 && c->state == DLV_CONN_CLOSING)
        conn_end(c);
}


/* conn_class - 0: not counted, 1: unready, 2: ready */
static int
conn_class(enum dlv_conn_state st)
{
    switch (st) {
    case DLV_CONN_RESOLVING:
    case DLV_CONN_CONNECTING:
    case DLV_CONN_GREETING:
        return 1;
    case DLV_CONN_BUSY:
    case DLV_CONN_IDLE:
    case DLV_CONN_QUIT:
        return 2;
    case DLV_CONN_CLOSING:
        return 0;
    }
    return 0;
}


/* conn_set_state - move c to st, keeping rd's counters and idle list */
static void
conn_set_state(struct dlv_conn *c, enum dlv_conn_state st)
{
    struct route_dest *rd = c->rd;
    int from = conn_class(c->state), to = conn_class(st);

    if (c->state == DLV_CONN_IDLE) {
        if (c->idle_prev != NULL)
            c->idle_prev->idle_next = c->idle_next;
        else
            rd->idle = c->idle_next;
        if (c->idle_next != NULL)
            c->idle_next->idle_prev = c->idle_prev;
        c->idle_prev = c->idle_next = NULL;
    }
    if (from == 1)
        rd->conns_unready--;
    else if (from == 2)
        rd->conns_ready--;
    if (to == 1)
        rd->conns_unready++;
    else if (to == 2)
        rd->conns_ready++;
    if (st == DLV_CONN_IDLE) {
        c->idle_prev = NULL;
        c->idle_next = rd->idle;
        if (rd->idle != NULL)
            rd->idle->idle_prev = c;
        rd->idle = c;
    }
    c->state = st;
}


/* conn_timeout_ms - how long the current wait may last */
static uint64_t
conn_timeout_ms(const struct dlv_conn *c)
{
    if (c->state == DLV_CONN_CONNECTING)
        return DLV_CONN_CONNECT_MS;
    if (c->state == DLV_CONN_RESOLVING)
        return UINT64_MAX / 2;   /* the resolver has its own */
    if (c->send_busy)
        return DLV_CONN_WRITE_MS;
    switch (smtp_client_phase(&c->smtp)) {
    case SMTP_CLIENT_PHASE_GREETING:
    case SMTP_CLIENT_PHASE_EHLO:
    case SMTP_CLIENT_PHASE_MAIL:
    case SMTP_CLIENT_PHASE_RCPT:
        return 5 * 60 * 1000;
    case SMTP_CLIENT_PHASE_IDLE:
        return DLV_CONN_IDLE_MS;
    case SMTP_CLIENT_PHASE_RSET:
    case SMTP_CLIENT_PHASE_DATA:
        return 2 * 60 * 1000;
    case SMTP_CLIENT_PHASE_BODY:
        return 10 * 60 * 1000;
    case SMTP_CLIENT_PHASE_QUIT:
    case SMTP_CLIENT_PHASE_CLOSED:
        return DLV_CONN_QUIT_MS;
    }
    return DLV_CONN_QUIT_MS;
}


/* conn_touch - activity: the current wait starts now */
static void
conn_touch(struct dlv_conn *c)
{
    c->deadline_ms = now_ms() + conn_timeout_ms(c);
}


/* conn_result - a made-up result for failures without a server reply */
static void
conn_result(struct smtp_client_result *r, enum smtp_client_outcome o,
            unsigned code, const char *enhanced, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void
conn_result(struct smtp_client_result *r, enum smtp_client_outcome o,
            unsigned code, const char *enhanced, const char *fmt, ...)
{
    va_list ap;

    memset(r, 0, sizeof *r);
    r->outcome = o;
    r->code = code;
    r->synthesized = 1;
    snprintf(r->enhanced, sizeof r->enhanced, "%s", enhanced);
    va_start(ap, fmt);
    vsnprintf(r->text, sizeof r->text, fmt, ap);
    va_end(ap);
}


/* --- closing ------------------------------------------------------------- */

/* conn_close - stop everything; conn_leave() ends c once nothing is held */
static void
conn_close(struct dlv_conn *c)
{
    struct io_uring_sqe *sqe;

    if (c->state == DLV_CONN_CLOSING)
        return;
    conn_set_state(c, DLV_CONN_CLOSING);
    if (c->fd >= 0 && (c->connecting || c->recv_armed || c->send_busy)) {
        /* close(2) would cancel none of them (PLATFORM.md pitfall 5). */
        sqe = loop_sqe(c->dl->env.lp, &c->cancel_op);
        io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
        c->inflight++;
    }
}


/* conn_route_failed - no hop worked: the ready items get c->fail */
static void
conn_route_failed(struct dlv_conn *c)
{
    struct route_dest *rd = c->rd;

    c->dl->env.stats->connect_failures++;
    /* Another connection got through: the destination works. */
    if (rd->conns_ready > 0 || c->dl->draining)
        return;
    /* Down for a while: items arriving meanwhile are deferred undialled. */
    rd->down_until_ms = now_ms() + MIN((uint64_t)rd->dom->retry_interval_ms,
                                       ROUTE_DOWN_MAX_MS);
    rd->down_result = c->fail;
    snprintf(rd->down_host, sizeof rd->down_host, "%s", c->host);
    snprintf(rd->down_ip, sizeof rd->down_ip, "%s", c->ip);
    delivery_fail_ready(c->dl, rd, &c->fail, c->host, c->ip);
}


/* conn_out_drop - forget the output not written yet (none in flight) */
static void
conn_out_drop(struct dlv_conn *c)
{
    struct dlv_out *o, *next;

    ASSERT(!c->send_busy);
    for (o = c->out_head; o != NULL; o = next) {
        next = o->next;
        smtp_client_out_free(&o->o);
        if (o->msg != NULL)
            delivery_msg_unref(c->dl, o->msg);
        free(o);
    }
    c->out_head = c->out_tail = NULL;
}


/* conn_io_reset - forget the socket's I/O: output, input, machine */
static void
conn_io_reset(struct dlv_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    conn_out_drop(c);
    free(c->pending);
    c->pending = NULL;
    c->pending_len = c->pending_cap = 0;
    smtp_client_fini(&c->smtp);
    memset(&c->smtp, 0, sizeof c->smtp);
    c->flush_wait = 0;
    c->want_close = 0;
}


/* conn_hop_next - the next address to try; 0 when none is left */
static int
conn_hop_next(struct dlv_conn *c)
{
    struct route_dest *rd = c->rd;
    const struct dns_host *h;
    const struct dns_addr *a;
    const void *bin;

    if (c->res == NULL) {
        /* A literal Gateway: one address. */
        if (c->literal_used || !route_literal(rd, &c->addr, &c->addr_len))
            return 0;
        c->literal_used = 1;
        snprintf(c->host, sizeof c->host, "%s", rd->gw->host);
    } else {
        for (;;) {
            if (c->host_i >= c->res->host_count)
                return 0;
            h = &c->res->hosts[c->host_i];
            if (c->addr_i < h->addr_count)
                break;
            c->host_i++;
            c->addr_i = 0;
        }
        a = &h->addrs[c->addr_i++];
        memset(&c->addr, 0, sizeof c->addr);
        if (a->family == AF_INET6) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&c->addr;

            s6->sin6_family = AF_INET6;
            s6->sin6_port = htons((uint16_t)rd->port);
            s6->sin6_addr = a->u.v6;
            c->addr_len = sizeof *s6;
        } else {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&c->addr;

            s4->sin_family = AF_INET;
            s4->sin_port = htons((uint16_t)rd->port);
            s4->sin_addr = a->u.v4;
            c->addr_len = sizeof *s4;
        }
        snprintf(c->host, sizeof c->host, "%s", h->name);
    }
    if (c->addr.ss_family == AF_INET6)
        bin = &((struct sockaddr_in6 *)&c->addr)->sin6_addr;
    else
        bin = &((struct sockaddr_in *)&c->addr)->sin_addr;
    inet_ntop(c->addr.ss_family, bin, c->ip, sizeof c->ip);
    c->tried++;
    return 1;
}


/* conn_end - nothing is held any more: next hop, or free */
static void
conn_end(struct dlv_conn *c)
{
    struct delivery *dl = c->dl;
    struct route_dest *rd = c->rd;

    ASSERT(c->state == DLV_CONN_CLOSING);
    ASSERT(c->inflight == 0);
    conn_io_reset(c);
    if (c->item != NULL) {
        /* Dropped at stop: the spool keeps its recipients for later. */
        ASSERT(dl->draining);
        if (c->data_sent)
            dl->env.stats->abandoned += c->item->rcpt_count;
        c->item = NULL;
    }
    free(c->rcpt_ptrs);
    free(c->results);
    c->rcpt_ptrs = NULL;
    c->results = NULL;
    if (c->next_hop && !dl->draining) {
        c->next_hop = 0;
        if (conn_hop_next(c)) {
            conn_connect(c);
            return;
        }
        conn_route_failed(c);
    }
    if (c->res != NULL)
        dns_result_free(c->res);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        dl->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    ASSERT(dl->conn_count > 0);
    dl->conn_count--;
    ASSERT(rd->conns > 0);
    rd->conns--;
    free(c);
    /* A connection slot is free. */
    dl->kick = 1;
}


/* conn_cancel_done - the cancel of every op on the fd completed */
static void
conn_cancel_done(struct op *op, int res, uint32_t flags)
{
    conn_leave(container_of(op, struct dlv_conn, cancel_op));
}


/* --- output -------------------------------------------------------------- */

static void conn_send_done(struct op *op, int res, uint32_t flags);


/* conn_send_kick - write the head of the output unless a write is out */
static void
conn_send_kick(struct dlv_conn *c)
{
    struct dlv_out *o = c->out_head;
    struct io_uring_sqe *sqe;
    unsigned n;

    if (c->send_busy || o == NULL || c->state == DLV_CONN_CLOSING)
        return;
    ASSERT(o->iov_off < o->o.iov_count);
    n = MIN(o->o.iov_count - o->iov_off, (unsigned)IOV_MAX);
    memset(&c->send_msg, 0, sizeof c->send_msg);
    c->send_msg.msg_iov = o->o.iov + o->iov_off;
    c->send_msg.msg_iovlen = n;
    sqe = loop_sqe(c->dl->env.lp, &c->send_op);
    io_uring_prep_sendmsg(sqe, c->fd, &c->send_msg, MSG_NOSIGNAL);
    c->send_busy = 1;
    c->inflight++;
}


/* conn_take_out - queue what the machine wrote; start writing it */
static void
conn_take_out(struct dlv_conn *c)
{
    struct dlv_out *o;

    if (c->smtp.out.iov_count == 0)
        return;
    o = xcalloc(1, sizeof *o);
    o->o = smtp_client_out_take(&c->smtp);
    if (c->item != NULL) {
        /* The body is referenced, not copied: keep its message alive. */
        o->msg = c->item->msg;
        delivery_msg_ref(o->msg);
        if (smtp_client_phase(&c->smtp) == SMTP_CLIENT_PHASE_BODY)
            c->data_sent = 1;
    }
    if (c->out_tail != NULL)
        c->out_tail->next = o;
    else
        c->out_head = o;
    c->out_tail = o;
    conn_send_kick(c);
}


/* conn_send_done - a write finished: advance, write more, or resume input */
static void
conn_send_done(struct op *op, int res, uint32_t flags)
{
    struct dlv_conn *c = container_of(op, struct dlv_conn, send_op);
    struct dlv_out *o = c->out_head;
    size_t left;

    conn_enter(c);
    c->send_busy = 0;
    c->inflight--;
    if (c->state == DLV_CONN_CLOSING)
        goto out;
    if (res <= 0) {
        /* The server went away: the machine decides what it means. */
        conn_out_drop(c);
        smtp_client_eof(&c->smtp);
        conn_out_drop(c);
        conn_take_out(c);
        conn_event(c, SMTP_CLIENT_EV_CLOSED);
        goto out;
    }
    left = (size_t)res;
    while (left > 0) {
        struct iovec *v = &o->o.iov[o->iov_off];

        ASSERT(o->iov_off < o->o.iov_count);
        if (left >= v->iov_len) {
            left -= v->iov_len;
            o->iov_off++;
        } else {
            v->iov_base = (char *)v->iov_base + left;
            v->iov_len -= left;
            left = 0;
        }
    }
    if (o->iov_off == o->o.iov_count) {
        c->out_head = o->next;
        if (c->out_head == NULL)
            c->out_tail = NULL;
        smtp_client_out_free(&o->o);
        if (o->msg != NULL)
            delivery_msg_unref(c->dl, o->msg);
        free(o);
    }
    conn_touch(c);
    if (c->out_head != NULL) {
        conn_send_kick(c);
    } else if (c->want_close) {
        conn_close(c);
    } else if (c->flush_wait) {
        c->flush_wait = 0;
        conn_feed_pending(c);
    }
out:
    conn_leave(c);
}


/* --- messages ------------------------------------------------------------ */

/* conn_message_done - the machine decided every recipient of the item */
static void
conn_message_done(struct dlv_conn *c)
{
    struct dlv_item *it = c->item;

    ASSERT(it != NULL);
    c->item = NULL;
    delivery_item_done(c->dl, it, c->results, c->host, c->ip);
    free(c->rcpt_ptrs);
    free(c->results);
    c->rcpt_ptrs = NULL;
    c->results = NULL;
}


/* conn_quit - no more messages on c */
static void
conn_quit(struct dlv_conn *c)
{
    smtp_client_quit(&c->smtp);
    conn_set_state(c, DLV_CONN_QUIT);
    conn_take_out(c);
    conn_touch(c);
}


/* conn_send - start it on c; returns the machine's event */
static enum smtp_client_event
conn_send(struct dlv_conn *c, struct dlv_item *it)
{
    struct dlv_msg *m = it->msg;
    enum smtp_client_event ev;
    unsigned k;

    ASSERT(c->item == NULL);
    conn_set_state(c, DLV_CONN_BUSY);
    c->item = it;
    c->messages++;
    c->data_sent = 0;
    c->rcpt_ptrs = xmalloc(it->rcpt_count * sizeof *c->rcpt_ptrs);
    c->results = xcalloc(it->rcpt_count, sizeof *c->results);
    for (k = 0; k < it->rcpt_count; k++)
        c->rcpt_ptrs[k] = m->rcpts[it->rcpt_idx[k]];
    c->body_iov.iov_base = (void *)m->body;
    c->body_iov.iov_len = (size_t)m->body_bytes;
    memset(&c->cmsg, 0, sizeof c->cmsg);
    c->cmsg.sender = m->sender;
    c->cmsg.rcpts = c->rcpt_ptrs;
    c->cmsg.rcpt_count = it->rcpt_count;
    c->cmsg.body = &c->body_iov;
    c->cmsg.body_iov_count = 1;
    c->cmsg.body_bytes = m->body_bytes;
    c->cmsg.results = c->results;
    ev = smtp_client_send(&c->smtp, &c->cmsg);
    conn_take_out(c);
    conn_touch(c);
    return ev;
}


/* conn_next - READY: the destination's next item, or wait, or QUIT */
static void
conn_next(struct dlv_conn *c)
{
    struct delivery *dl = c->dl;
    struct dlv_item *it;

    for (;;) {
        if (dl->draining || c->messages >= DLV_CONN_MESSAGES_MAX) {
            conn_quit(c);
            return;
        }
        it = delivery_pop(dl, c->rd);
        if (it == NULL) {
            conn_set_state(c, DLV_CONN_IDLE);
            conn_touch(c);
            return;
        }
        /* Decided without a word to the server: take the next one. */
        if (conn_send(c, it) != SMTP_CLIENT_EV_MESSAGE_DONE)
            return;
        conn_message_done(c);
    }
}


/* --- input --------------------------------------------------------------- */

/* conn_closed - the machine ended the connection */
static void
conn_closed(struct dlv_conn *c)
{
    if (c->item != NULL) {
        /* The machine filled the results of the message in progress. */
        conn_message_done(c);
    } else if (c->state == DLV_CONN_GREETING) {
        /* Refused greeting or EHLO, or lost before READY: next hop. */
        c->fail = c->smtp.close_reason;
        if (c->fail.outcome != SMTP_CLIENT_DEFERRED) {
            /* XXX: a 5xx greeting defers too, as a dead host would. */
            c->fail.outcome = SMTP_CLIENT_DEFERRED;
        }
        c->next_hop = 1;
    }
    if (c->out_head != NULL) {
        c->want_close = 1;
        conn_touch(c);
    } else {
        conn_close(c);
    }
}


/* conn_event - act on what the machine reported */
static void
conn_event(struct dlv_conn *c, enum smtp_client_event ev)
{
    switch (ev) {
    case SMTP_CLIENT_EV_NONE:
        break;
    case SMTP_CLIENT_EV_READY:
        ASSERT(c->state == DLV_CONN_GREETING);
        conn_next(c);
        break;
    case SMTP_CLIENT_EV_MESSAGE_DONE:
        conn_message_done(c);
        conn_next(c);
        break;
    case SMTP_CLIENT_EV_CLOSED:
        conn_closed(c);
        break;
    case SMTP_CLIENT_EV_FLUSH:
        /* The output was taken: hold input until it is written. */
        c->flush_wait = 1;
        break;
    }
}


/* conn_feed - run the machine over buf; returns the bytes it took */
static size_t
conn_feed(struct dlv_conn *c, const char *buf, size_t len)
{
    enum smtp_client_event ev;
    size_t used = 0;

    while (c->state != DLV_CONN_CLOSING && !c->want_close &&
           !c->flush_wait) {
        used += smtp_client_feed(&c->smtp, buf + used, len - used, &ev);
        /* Before acting: output may point into the item's body. */
        conn_take_out(c);
        if (ev == SMTP_CLIENT_EV_NONE)
            break;
        conn_event(c, ev);
    }
    if (c->state != DLV_CONN_CLOSING)
        conn_touch(c);
    return used;
}


/* pending_append - keep input the machine has not taken yet */
static int
pending_append(struct dlv_conn *c, const char *data, size_t len)
{
    if (len == 0)
        return 0;
    if (c->pending_len + len > DLV_CONN_PENDING_MAX)
        return -1;
    if (c->pending_len + len > c->pending_cap) {
        size_t cap = c->pending_cap ? c->pending_cap : 1024;

        while (cap < c->pending_len + len)
            cap *= 2;
        c->pending = xrealloc(c->pending, cap);
        c->pending_cap = cap;
    }
    memcpy(c->pending + c->pending_len, data, len);
    c->pending_len += len;
    return 0;
}


/* conn_feed_pending - feed what was kept */
static void
conn_feed_pending(struct dlv_conn *c)
{
    size_t used;

    if (c->pending_len == 0)
        return;
    used = conn_feed(c, c->pending, c->pending_len);
    if (used >= c->pending_len) {
        free(c->pending);
        c->pending = NULL;
        c->pending_len = c->pending_cap = 0;
    } else if (used > 0) {
        memmove(c->pending, c->pending + used, c->pending_len - used);
        c->pending_len -= used;
    }
}


/* conn_input - bytes from the server */
static void
conn_input(struct dlv_conn *c, const char *data, size_t len)
{
    size_t used = 0;

    if (c->pending_len == 0 && !c->flush_wait)
        used = conn_feed(c, data, len);
    if (c->state == DLV_CONN_CLOSING || c->want_close)
        return;
    if (pending_append(c, data + used, len - used) < 0) {
        /* A server sending without bound while we cannot write. */
        smtp_client_timeout(&c->smtp);
        conn_take_out(c);
        conn_event(c, SMTP_CLIENT_EV_CLOSED);
        return;
    }
    if (!c->flush_wait && used == 0)
        conn_feed_pending(c);
}


static void conn_recv_done(struct op *op, int res, uint32_t flags);


/* conn_recv_arm - one recv into c->rbuf */
static void
conn_recv_arm(struct dlv_conn *c)
{
    struct io_uring_sqe *sqe;

    ASSERT(!c->recv_armed);
    sqe = loop_sqe(c->dl->env.lp, &c->recv_op);
    io_uring_prep_recv(sqe, c->fd, c->rbuf, sizeof c->rbuf, 0);
    c->recv_armed = 1;
    c->inflight++;
}


/* conn_recv_done - the server sent something, closed, or failed */
static void
conn_recv_done(struct op *op, int res, uint32_t flags)
{
    struct dlv_conn *c = container_of(op, struct dlv_conn, recv_op);

    conn_enter(c);
    c->recv_armed = 0;
    c->inflight--;
    if (c->state == DLV_CONN_CLOSING)
        goto out;
    if (res > 0) {
        conn_input(c, c->rbuf, (size_t)res);
    } else if (res != -ECANCELED && res != -EINTR && res != -EAGAIN) {
        smtp_client_eof(&c->smtp);
        conn_take_out(c);
        conn_event(c, SMTP_CLIENT_EV_CLOSED);
    }
    if (c->state != DLV_CONN_CLOSING && !c->recv_armed && !c->want_close)
        conn_recv_arm(c);
out:
    conn_leave(c);
}


/* --- connecting ---------------------------------------------------------- */

/* conn_connect_done - connected, or this hop failed */
static void
conn_connect_done(struct op *op, int res, uint32_t flags)
{
    struct dlv_conn *c = container_of(op, struct dlv_conn, connect_op);

    conn_enter(c);
    c->connecting = 0;
    c->inflight--;
    if (c->state == DLV_CONN_CLOSING)
        goto out;
    if (res < 0) {
        conn_result(&c->fail, SMTP_CLIENT_DEFERRED, 421, "4.4.1",
                    "connect to %s[%s]:%u: %s", c->host, c->ip, c->rd->port,
                    res == -ECANCELED ? "timed out" : strerror(-res));
        c->next_hop = 1;
        conn_close(c);
        goto out;
    }
    conn_set_state(c, DLV_CONN_GREETING);
    smtp_client_init(&c->smtp, &c->lim);
    conn_touch(c);
    conn_recv_arm(c);
out:
    conn_leave(c);
}


/* conn_connect - a socket to c->addr and IORING_OP_CONNECT */
static void
conn_connect(struct dlv_conn *c)
{
    const struct conf_binding *b = c->rd->binding;
    struct io_uring_sqe *sqe;
    int fd;

    conn_set_state(c, DLV_CONN_CONNECTING);
    c->dl->env.stats->connections++;
    /* Non-blocking: socket(2) and bind(2) return at once. */
    fd = socket(c->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                0);
    if (fd >= 0 && b->bind_address_len > 0 &&
        b->bind_address.ss_family == c->addr.ss_family &&
        bind(fd, (const struct sockaddr *)&b->bind_address,
             b->bind_address_len) < 0) {
        int err = errno;

        close(fd);
        fd = -1;
        errno = err;
    }
    if (fd < 0) {
        /* The environment, not the peer: logged, then like a failed hop. */
        log_panic("delivery", "shard %u: outbound socket to %s: %s",
                  c->dl->env.shard_id, c->ip, strerror(errno));
        conn_result(&c->fail, SMTP_CLIENT_DEFERRED, 451, "4.3.0",
                    "cannot make a socket: %s", strerror(errno));
        c->next_hop = 1;
        conn_set_state(c, DLV_CONN_CLOSING);
        conn_enter(c);
        conn_leave(c);
        return;
    }
    c->fd = fd;
    c->connecting = 1;
    c->inflight++;
    conn_touch(c);
    sqe = loop_sqe(c->dl->env.lp, &c->connect_op);
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)&c->addr, c->addr_len);
}


/* conn_resolved - the next hops are known, or the lookup failed */
static void
conn_resolved(struct dns_req *req)
{
    struct dlv_conn *c = container_of(req, struct dlv_conn, req);
    struct route_dest *rd = c->rd;

    conn_enter(c);
    ASSERT(c->inflight >= 2);
    c->inflight--;               /* the lookup's hold */
    if (req->status == DNS_OK) {
        c->res = req->result;
        req->result = NULL;
    }
    if (c->state == DLV_CONN_CLOSING)
        goto out;
    snprintf(c->host, sizeof c->host, "%s",
             rd->gw != NULL ? rd->gw->host : rd->domain);
    c->ip[0] = '\0';
    if (req->status == DNS_TEMPFAIL) {
        conn_result(&c->fail, SMTP_CLIENT_DEFERRED, 451, "4.4.3",
                    "lookup of %s failed: %s", c->host, req->why);
    } else if (req->status != DNS_OK) {
        conn_result(&c->fail, SMTP_CLIENT_FAILED, 550,
                    dns_status_code(req->status), "lookup of %s: %s",
                    c->host, req->why);
    } else if (conn_hop_next(c)) {
        conn_connect(c);
        goto out;
    } else {
        conn_result(&c->fail, SMTP_CLIENT_DEFERRED, 451, "4.4.4",
                    "no address for %s", c->host);
    }
    /* A lookup failure is the destination's, not a hop's. */
    c->next_hop = 0;
    conn_route_failed(c);
    conn_close(c);
out:
    conn_leave(c);
}


/* dlv_conn_start - a new connection to rd */
void
dlv_conn_start(struct delivery *dl, struct route_dest *rd)
{
    struct dlv_conn *c = xcalloc(1, sizeof *c);

    c->dl = dl;
    c->rd = rd;
    c->fd = -1;
    c->state = DLV_CONN_CLOSING;     /* counted from the first move */
    c->lim.helo_name = rd->binding->ehlo_hostname;
    c->connect_op.done = conn_connect_done;
    c->recv_op.done = conn_recv_done;
    c->send_op.done = conn_send_done;
    c->cancel_op.done = conn_cancel_done;
    c->next = dl->conns;
    if (dl->conns != NULL)
        dl->conns->prev = c;
    dl->conns = c;
    dl->conn_count++;
    rd->conns++;
    conn_enter(c);
    conn_set_state(c, DLV_CONN_RESOLVING);
    if (route_literal(rd, &c->addr, &c->addr_len)) {
        if (conn_hop_next(c))
            conn_connect(c);
        else
            conn_close(c);
    } else if (rd->gw == NULL && rd->domain[0] == '\0') {
        snprintf(c->host, sizeof c->host, "%s", "(none)");
        conn_result(&c->fail, SMTP_CLIENT_FAILED, 550, "5.1.2",
                    "recipient address without a domain");
        conn_route_failed(c);
        conn_close(c);
    } else if (!dl->dns_ok) {
        snprintf(c->host, sizeof c->host, "%s", rd->domain);
        conn_result(&c->fail, SMTP_CLIENT_DEFERRED, 451, "4.4.3",
                    "no resolver");
        conn_route_failed(c);
        conn_close(c);
    } else {
        c->inflight++;           /* held by the lookup */
        route_resolve(dl, rd, &c->req, conn_resolved);
    }
    conn_leave(c);
}


/* --- from delivery.c ----------------------------------------------------- */

/* dlv_conn_wake - an idle connection: rd has a ready item for it */
void
dlv_conn_wake(struct dlv_conn *c)
{
    ASSERT(c->state == DLV_CONN_IDLE);
    conn_enter(c);
    conn_next(c);
    conn_leave(c);
}


/* dlv_conn_drain - the shard drains: finish the message, start no other */
void
dlv_conn_drain(struct dlv_conn *c)
{
    conn_enter(c);
    switch (c->state) {
    case DLV_CONN_RESOLVING:
    case DLV_CONN_CONNECTING:
    case DLV_CONN_GREETING:
        conn_close(c);
        break;
    case DLV_CONN_IDLE:
        conn_quit(c);
        break;
    default:
        /* BUSY QUITs after its message (conn_next). */
        break;
    }
    conn_leave(c);
}


/* dlv_conn_abort - close now, whatever is in flight */
void
dlv_conn_abort(struct dlv_conn *c)
{
    conn_enter(c);
    conn_close(c);
    conn_leave(c);
}


/* conn_expire - c's wait is over */
static void
conn_expire(struct dlv_conn *c)
{
    struct io_uring_sqe *sqe;

    switch (c->state) {
    case DLV_CONN_RESOLVING:
    case DLV_CONN_CLOSING:
        break;
    case DLV_CONN_CONNECTING:
        /* Its completion (-ECANCELED) moves on to the next hop. */
        c->deadline_ms = UINT64_MAX;
        sqe = loop_sqe(c->dl->env.lp, NULL);
        io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)&c->connect_op, 0);
        break;
    case DLV_CONN_IDLE:
        conn_quit(c);
        break;
    default:
        if (c->want_close) {
            conn_close(c);
            break;
        }
        smtp_client_timeout(&c->smtp);
        conn_take_out(c);
        conn_event(c, SMTP_CLIENT_EV_CLOSED);
        break;
    }
}


/*
 * dlv_conn_timeouts - the shard tick: connections whose wait is over.
 * XXX: a scan of every connection; a shard has hundreds, not millions.
 */
void
dlv_conn_timeouts(struct delivery *dl, uint64_t now)
{
    struct dlv_conn *c = dl->conns, *next;

    while (c != NULL) {
        /* Handling c may end c, never another connection. */
        next = c->next;
        if (now >= c->deadline_ms) {
            conn_enter(c);
            conn_expire(c);
            conn_leave(c);
        }
        c = next;
    }
}
