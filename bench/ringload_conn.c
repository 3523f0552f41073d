/*
 * ringload_conn - one ringload connection: socket, SMTP client dialogue,
 *                 timeouts and reconnection, all on the shared ring
 *
 * DESCRIPTION
 *   A conn owns one fixed file slot. Connecting submits a linked pair:
 *   socket_direct into the slot, then connect on it; a multishot recv
 *   with provided buffers reads every reply. Closing cancels what is in
 *   flight on the slot (close alone would not stop a multishot recv,
 *   PLATFORM.md pitfall 5) and, once nothing is, closes the slot and
 *   either reconnects, backs off, or finishes.
 *
 *   Replies are parsed minimally: the three digits, the continuation
 *   dash, and in an EHLO reply whether a line says PIPELINING. The
 *   replies a conn awaits are a small FIFO of kinds (expect[]), so the
 *   same code serves the lock-step dialogue and the pipelined one (MAIL,
 *   RCPTs and DATA in one write, RFC 2920; the last message of a
 *   connection also pipelines QUIT behind its dot).
 *
 *   Sends come from stable memory only: the shared envelope, the conn's
 *   header copy and the shared padding. A new transaction patches the
 *   header copy only after the previous message's final reply, which the
 *   server cannot send before it has read the whole message, so a buffer
 *   is never changed under a send. For the same reason at most one send
 *   is in flight; one more may wait in next_iov.
 *
 *   Every phase has a deadline (-phase-timeout): conns that wait on the
 *   peer sit on rl->deadline, ordered by deadline because every touch
 *   appends at the tail with the same delay; ringload_conn_tick() expires
 *   the heads. Back-offs work the same way on rl->backoff.
 * OWNERSHIP
 *   struct ringload_conn lives in rl->conns for the whole run. c->inflight
 *   counts ops in flight plus the hold of the running handler; only
 *   conn_put() acts on it reaching zero, so a handler never sees its conn
 *   recycled under it.
 * SECURITY
 *   Replies are untrusted: lines are copied up to RINGLOAD_LINE_MAX bytes
 *   and the rest skipped; a reply nobody asked for, or one that is not
 *   three digits, closes the connection.
 * SEE ALSO
 *   ringload.h, ringload.c
 */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "ringload.h"
#include "util.h"

/* include/uapi/linux/io_uring.h (6.7+): the socket command's operations */
#define RINGLOAD_SOCKET_URING_OP_SETSOCKOPT 3

enum conn_expect {
    CONN_EXPECT_GREETING,
    CONN_EXPECT_EHLO,
    CONN_EXPECT_HELO,
    CONN_EXPECT_MAIL,
    CONN_EXPECT_RCPT,
    CONN_EXPECT_DATA,
    CONN_EXPECT_DOT,
    CONN_EXPECT_DOT_ABORT,       /* the dot ending an unwanted DATA */
    CONN_EXPECT_RSET,
    CONN_EXPECT_QUIT,
};

static const char conn_rset[] = "RSET\r\n";
static const char conn_quit_cmd[] = "QUIT\r\n";
static const char conn_dot[] = ".\r\n";

static void conn_close(struct ringload_conn *c);
static void conn_connect(struct ringload_conn *c);
static void conn_next(struct ringload_conn *c);


/* ringload_conn_state_name - a conn state for reports */
const char *
ringload_conn_state_name(enum ringload_conn_state st)
{
    static const char *const names[] = {
        [RINGLOAD_CONN_IDLE] = "idle",
        [RINGLOAD_CONN_CONNECTING] = "connecting",
        [RINGLOAD_CONN_GREETING] = "greeting",
        [RINGLOAD_CONN_EHLO] = "ehlo",
        [RINGLOAD_CONN_READY] = "ready",
        [RINGLOAD_CONN_RATEWAIT] = "ratewait",
        [RINGLOAD_CONN_TXN] = "txn",
        [RINGLOAD_CONN_QUIT] = "quit",
        [RINGLOAD_CONN_CLOSING] = "closing",
        [RINGLOAD_CONN_BACKOFF] = "backoff",
        [RINGLOAD_CONN_DONE] = "done",
    };

    return (unsigned)st < ARRAY_SIZE(names) ? names[st] : "?";
}


/* --- lists --------------------------------------------------------------- */

/* conn_list_remove - take c off whatever list it is on */
static void
conn_list_remove(struct ringload_conn *c)
{
    struct ringload_list *l = c->list;

    if (l == NULL)
        return;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    l->count--;
    c->list = NULL;
    c->prev = c->next = NULL;
}


/* conn_list_append - put c at the tail of l (leaving its old list) */
static void
conn_list_append(struct ringload_list *l, struct ringload_conn *c)
{
    conn_list_remove(c);
    c->list = l;
    c->prev = l->tail;
    c->next = NULL;
    if (l->tail != NULL)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    l->count++;
}


/* conn_touch - the peer did something: the phase deadline starts again */
static void
conn_touch(struct ringload_conn *c)
{
    struct ringload *rl = c->rl;

    c->deadline_ms = rl->now_ms + rl->o.phase_timeout_ms;
    if (c->list != &rl->deadline || rl->deadline.tail != c)
        conn_list_append(&rl->deadline, c);
}


/* --- life cycle ---------------------------------------------------------- */

/* conn_done - this conn has nothing more to do in this run */
static void
conn_done(struct ringload_conn *c)
{
    struct ringload *rl = c->rl;

    ASSERT(c->state != RINGLOAD_CONN_DONE);
    ASSERT(c->inflight == 0);
    conn_list_remove(c);
    if (c->claim) {
        c->claim = 0;
        ringload_unclaim(rl);
    }
    c->state = RINGLOAD_CONN_DONE;
    ASSERT(rl->active > 0);
    rl->active--;
}


/*
 * conn_closed - nothing is in flight any more: free the slot, then
 * reconnect, back off or finish.
 */
static void
conn_closed(struct ringload_conn *c)
{
    struct ringload *rl = c->rl;
    struct io_uring_sqe *sqe;

    ASSERT(c->inflight == 0);
    ASSERT(!c->recv_armed);
    ASSERT(!c->send_busy);
    ASSERT(!c->connecting);
    /*
     * No CQE on success. close_direct completes inline when issued, and
     * SQEs are issued in order, so a socket_direct into the same slot
     * submitted after it cannot be closed by it.
     */
    sqe = loop_sqe(&rl->loop, NULL);
    io_uring_prep_close_direct(sqe, c->slot);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    c->closing = 0;

    if (rl->aborting) {
        conn_done(c);
        return;
    }
    /* A connection that got answers was not a failed one, 421 or not. */
    if (c->answered_on_conn > 0)
        c->failures = 0;
    if (c->close_failed && c->answered_on_conn == 0) {
        if (++c->failures > rl->o.retries) {
            rl->st.gave_up++;
            conn_done(c);
            return;
        }
        c->state = RINGLOAD_CONN_BACKOFF;
        c->deadline_ms = rl->now_ms + rl->o.retry_delay_ms;
        conn_list_append(&rl->backoff, c);
        return;
    }
    conn_connect(c);
}


/* conn_hold - one more op in flight, or a handler holding c */
static inline void
conn_hold(struct ringload_conn *c)
{
    c->inflight++;
}


/* conn_put - drop one op or handler hold; a closing conn ends at zero */
static void
conn_put(struct ringload_conn *c)
{
    ASSERT(c->inflight > 0);
    if (--c->inflight == 0 && c->closing)
        conn_closed(c);
}


/* conn_cancel_done - the cancel of a closing conn completed */
static void
conn_cancel_done(struct op *op, int res, uint32_t flags)
{
    conn_put(container_of(op, struct ringload_conn, cancel_op));
}


/*
 * conn_close - end the connection: a transaction in progress counts as
 * an error; everything in flight on the slot is cancelled.
 */
static void
conn_close(struct ringload_conn *c)
{
    struct ringload *rl = c->rl;

    if (c->closing)
        return;
    if (c->txn_active)
        ringload_txn_done(rl, c, c->txn_fail);
    c->closing = 1;
    c->state = RINGLOAD_CONN_CLOSING;
    conn_list_remove(c);
    if (c->recv_armed || c->send_busy || c->connecting) {
        struct io_uring_sqe *sqe = loop_sqe(&rl->loop, &c->cancel_op);

        io_uring_prep_cancel_fd(sqe, (int)c->slot,
                                IORING_ASYNC_CANCEL_ALL |
                                IORING_ASYNC_CANCEL_FD_FIXED);
        conn_hold(c);
    }
    /* When nothing was in flight, this is where the close finishes. */
    conn_hold(c);
    conn_put(c);
}


/* conn_fail - close and count it as a failed connection (back-off) */
static void
conn_fail(struct ringload_conn *c)
{
    c->close_failed = 1;
    conn_close(c);
}


/* --- sending ------------------------------------------------------------- */

/* conn_send_submit - submit c->iov (one send in flight per conn) */
static void
conn_send_submit(struct ringload_conn *c)
{
    struct io_uring_sqe *sqe = loop_sqe(&c->rl->loop, &c->send_op);

    /* WAITALL: the kernel finishes a short send itself (stream socket). */
    if (c->iov[1].iov_len == 0) {
        io_uring_prep_send(sqe, (int)c->slot, c->iov[0].iov_base,
                           c->iov[0].iov_len, MSG_NOSIGNAL | MSG_WAITALL);
    } else {
        c->msg.msg_iov = c->iov;
        c->msg.msg_iovlen = 2;
        io_uring_prep_sendmsg(sqe, (int)c->slot, &c->msg,
                              MSG_NOSIGNAL | MSG_WAITALL);
    }
    sqe->flags |= IOSQE_FIXED_FILE;
    c->send_busy = 1;
    conn_hold(c);
}


/* conn_send - send a (+ b); both must stay untouched until it completes */
static void
conn_send(struct ringload_conn *c, const void *a, size_t alen,
          const void *b, size_t blen)
{
    struct iovec *iov = c->send_busy ? c->next_iov : c->iov;

    if (c->send_busy && c->next_queued) {
        /*
         * The dialogue never has three writes outstanding unless the
         * server answers what it has not read yet. The caller goes on
         * with its reply; conn_line() closes the conn after it.
         */
        c->send_overflow = 1;
        return;
    }
    iov[0].iov_base = (void *)(uintptr_t)a;
    iov[0].iov_len = alen;
    iov[1].iov_base = (void *)(uintptr_t)b;
    iov[1].iov_len = blen;
    if (c->send_busy)
        c->next_queued = 1;
    else
        conn_send_submit(c);
}


/* conn_send_done - resume a short send, or start the queued one */
static void
conn_send_done(struct op *op, int res, uint32_t flags)
{
    struct ringload_conn *c = container_of(op, struct ringload_conn,
                                           send_op);
    size_t n = res > 0 ? (size_t)res : 0;

    c->send_busy = 0;
    if (c->closing) {
        conn_put(c);
        return;
    }
    if (res <= 0) {
        c->rl->st.closed_by_peer++;
        conn_fail(c);
        conn_put(c);
        return;
    }
    /* Only an interrupted WAITALL send comes back short. */
    if (n < c->iov[0].iov_len) {
        c->iov[0].iov_base = (char *)c->iov[0].iov_base + n;
        c->iov[0].iov_len -= n;
    } else {
        n -= c->iov[0].iov_len;
        ASSERT(n <= c->iov[1].iov_len);
        c->iov[0].iov_base = (char *)c->iov[1].iov_base + n;
        c->iov[0].iov_len = c->iov[1].iov_len - n;
        c->iov[1].iov_len = 0;
    }
    if (c->iov[0].iov_len > 0) {
        conn_send_submit(c);
    } else if (c->next_queued) {
        c->next_queued = 0;
        memcpy(c->iov, c->next_iov, sizeof c->iov);
        conn_send_submit(c);
    }
    conn_put(c);
}


/* --- the dialogue -------------------------------------------------------- */

/* conn_expect - await one more reply of this kind */
static void
conn_expect(struct ringload_conn *c, enum conn_expect kind)
{
    ASSERT(c->expect_len < RINGLOAD_EXPECT_MAX);
    c->expect[(c->expect_head + c->expect_len) % RINGLOAD_EXPECT_MAX] =
        (uint8_t)kind;
    c->expect_len++;
}


/* conn_expect_pop - the kind of the oldest awaited reply */
static enum conn_expect
conn_expect_pop(struct ringload_conn *c)
{
    enum conn_expect kind = c->expect[c->expect_head];

    ASSERT(c->expect_len > 0);
    c->expect_head = (c->expect_head + 1) % RINGLOAD_EXPECT_MAX;
    c->expect_len--;
    return kind;
}


/* conn_send_cmd - send envelope command i (MAIL, RCPT..., DATA) */
static void
conn_send_cmd(struct ringload_conn *c, unsigned i)
{
    const struct ringload_msg *m = &c->rl->msg;

    conn_send(c, m->envelope + m->cmd_off[i],
              m->cmd_off[i + 1] - m->cmd_off[i], NULL, 0);
}


/* conn_quit - send QUIT; the claim, if any, goes back */
static void
conn_quit(struct ringload_conn *c)
{
    if (c->claim) {
        c->claim = 0;
        ringload_unclaim(c->rl);
    }
    conn_send(c, conn_quit_cmd, sizeof conn_quit_cmd - 1, NULL, 0);
    conn_expect(c, CONN_EXPECT_QUIT);
    c->state = RINGLOAD_CONN_QUIT;
}


/* conn_txn_start - a new message: patch its token, send the envelope */
static void
conn_txn_start(struct ringload_conn *c)
{
    struct ringload *rl = c->rl;
    const struct ringload_msg *m = &rl->msg;
    unsigned i;

    ASSERT(c->claim);
    ASSERT(!c->txn_active);
    ASSERT(c->expect_len == 0);
    c->claim = 0;                /* the claim becomes this transaction */
    c->seq = ++rl->next_seq;
    rl->st.started++;
    ringload_msg_patch(m, c->head, c->seq);
    c->txn_active = 1;
    c->rcpt_next = 0;
    c->rcpt_ok = 0;
    c->rcpt_fail = 0;
    c->txn_fail = 0;
    c->msgs_on_conn++;
    c->state = RINGLOAD_CONN_TXN;
    if (c->pipelining) {
        conn_send(c, m->envelope, m->cmd_off[m->rcpts + 2], NULL, 0);
        conn_expect(c, CONN_EXPECT_MAIL);
        for (i = 0; i < m->rcpts; i++)
            conn_expect(c, CONN_EXPECT_RCPT);
        conn_expect(c, CONN_EXPECT_DATA);
    } else {
        conn_send_cmd(c, 0);
        conn_expect(c, CONN_EXPECT_MAIL);
    }
}


/* conn_next - between transactions: start one, wait for a token, or QUIT */
static void
conn_next(struct ringload_conn *c)
{
    struct ringload *rl = c->rl;

    ASSERT(!c->txn_active);
    c->state = RINGLOAD_CONN_READY;
    if (rl->stopping ||
        (rl->o.per_conn != 0 && c->msgs_on_conn >= rl->o.per_conn)) {
        conn_quit(c);
        return;
    }
    if (!c->claim) {
        if (!ringload_claim(rl)) {
            conn_quit(c);
            return;
        }
        c->claim = 1;
    }
    if (!ringload_rate_take(rl)) {
        c->state = RINGLOAD_CONN_RATEWAIT;
        conn_list_append(&rl->ratewait, c);
        return;
    }
    conn_txn_start(c);
}


/* conn_txn_abandon - the transaction failed before its data: RSET */
static void
conn_txn_abandon(struct ringload_conn *c)
{
    ringload_txn_done(c->rl, c, c->txn_fail);
    conn_send(c, conn_rset, sizeof conn_rset - 1, NULL, 0);
    conn_expect(c, CONN_EXPECT_RSET);
}


/* conn_data_go - 354: send the message, or a lone dot if it is doomed */
static void
conn_data_go(struct ringload_conn *c)
{
    struct ringload *rl = c->rl;
    const struct ringload_msg *m = &rl->msg;
    int last;

    if (c->txn_fail) {
        /* RFC 2920: DATA accepted without recipients ends with a dot. */
        conn_send(c, conn_dot, sizeof conn_dot - 1, NULL, 0);
        conn_expect(c, CONN_EXPECT_DOT_ABORT);
        return;
    }
    last = c->pipelining && rl->o.per_conn != 0 &&
           c->msgs_on_conn >= rl->o.per_conn;
    conn_send(c, c->head, m->head_len, m->tail,
              last ? m->tail_quit_len : m->tail_len);
    conn_expect(c, CONN_EXPECT_DOT);
    if (last)
        conn_expect(c, CONN_EXPECT_QUIT);
    rl->st.sent++;
    c->dot_us = now_us();
}


/* conn_quit_deferred - QUIT answered, reap pass over: close */
static void
conn_quit_deferred(struct op *op, int res, uint32_t flags)
{
    struct ringload_conn *c = container_of(op, struct ringload_conn,
                                           defer_op);

    if (!c->closing)
        conn_close(c);
    conn_put(c);
}


/* conn_reply - one complete reply with this code */
static void
conn_reply(struct ringload_conn *c, int code)
{
    struct ringload *rl = c->rl;
    const struct ringload_msg *m = &rl->msg;
    int cls = code / 100;
    enum conn_expect kind;

    rl->st.replies[cls >= 1 && cls <= 5 ? cls : 0]++;
    if (c->expect_len == 0) {
        if (code == 421)
            rl->st.closed_421++;
        else
            rl->st.protocol_errors++;
        conn_fail(c);
        return;
    }
    kind = conn_expect_pop(c);
    if (code == 421 && kind != CONN_EXPECT_QUIT) {
        /* The server is closing: the transaction counts as a 4xx. */
        rl->st.closed_421++;
        if (c->txn_active)
            ringload_txn_done(rl, c, code);
        conn_fail(c);
        return;
    }

    switch (kind) {
    case CONN_EXPECT_GREETING:
        if (cls != 2) {
            rl->st.refused++;
            conn_fail(c);
            break;
        }
        conn_send(c, m->ehlo, m->ehlo_len, NULL, 0);
        conn_expect(c, CONN_EXPECT_EHLO);
        c->state = RINGLOAD_CONN_EHLO;
        break;
    case CONN_EXPECT_EHLO:
        if (cls == 5) {
            conn_send(c, m->helo, m->helo_len, NULL, 0);
            conn_expect(c, CONN_EXPECT_HELO);
        } else if (cls != 2) {
            rl->st.refused++;
            conn_fail(c);
        } else {
            c->pipelining = rl->o.pipelining && c->ehlo_pipelining;
            rl->st.pipelined_conns += c->pipelining;
            conn_next(c);
        }
        break;
    case CONN_EXPECT_HELO:
        if (cls != 2) {
            rl->st.refused++;
            conn_fail(c);
        } else {
            conn_next(c);
        }
        break;
    case CONN_EXPECT_MAIL:
        if (cls != 2) {
            c->txn_fail = code;
            if (!c->pipelining)
                conn_txn_abandon(c);
        } else if (!c->pipelining) {
            conn_send_cmd(c, 1);
            conn_expect(c, CONN_EXPECT_RCPT);
        }
        break;
    case CONN_EXPECT_RCPT:
        if (cls == 2)
            c->rcpt_ok++;
        else
            c->rcpt_fail = code;
        if (c->pipelining)
            break;
        if (++c->rcpt_next < m->rcpts) {
            conn_send_cmd(c, 1 + c->rcpt_next);
            conn_expect(c, CONN_EXPECT_RCPT);
        } else if (c->rcpt_ok > 0) {
            conn_send_cmd(c, 1 + m->rcpts);
            conn_expect(c, CONN_EXPECT_DATA);
        } else {
            c->txn_fail = c->rcpt_fail;
            conn_txn_abandon(c);
        }
        break;
    case CONN_EXPECT_DATA:
        if (c->txn_fail == 0 && c->rcpt_ok == 0)
            c->txn_fail = c->rcpt_fail;
        if (code == 354) {
            conn_data_go(c);
        } else {
            if (c->txn_fail == 0)
                c->txn_fail = code;
            conn_txn_abandon(c);
        }
        break;
    case CONN_EXPECT_DOT:
        {
            uint64_t us = now_us() - c->dot_us;

            ringhist_add(&rl->hist, us);
            ringhist_add(&rl->hist_tick, us);
        }
        /* After the dot the server's transaction is over, whatever code. */
        ringload_txn_done(rl, c, code);
        if (c->expect_len > 0)
            c->state = RINGLOAD_CONN_QUIT;   /* QUIT went with the dot */
        else
            conn_next(c);
        break;
    case CONN_EXPECT_DOT_ABORT:
        ringload_txn_done(rl, c, c->txn_fail);
        conn_next(c);
        break;
    case CONN_EXPECT_RSET:
        if (cls != 2) {
            rl->st.protocol_errors++;
            conn_fail(c);
        } else {
            conn_next(c);
        }
        break;
    case CONN_EXPECT_QUIT:
        /*
         * Close after this reap pass: the server's FIN is usually in the
         * same batch, and closing after it leaves no TIME_WAIT here and
         * needs no cancel.
         */
        c->got_quit_reply = 1;
        c->defer_op.done = conn_quit_deferred;
        conn_hold(c);
        loop_defer(&rl->loop, &c->defer_op);
        break;
    }
}


/* conn_pipelining_line - does this EHLO line announce PIPELINING? */
static int
conn_pipelining_line(const char *l, unsigned n)
{
    static const char kw[] = "PIPELINING";
    unsigned kl = sizeof kw - 1;

    if (n < 4 + kl || strncasecmp(l + 4, kw, kl) != 0)
        return 0;
    return n == 4 + kl || l[4 + kl] == '\r' || l[4 + kl] == '\n' ||
           l[4 + kl] == ' ';
}


/* conn_line - one reply line (possibly cut at RINGLOAD_LINE_MAX) */
static void
conn_line(struct ringload_conn *c)
{
    const char *l = c->line;
    unsigned n = c->line_len;
    int code;

    if (n < 3 || l[0] < '1' || l[0] > '5' || l[1] < '0' || l[1] > '9' ||
        l[2] < '0' || l[2] > '9') {
        c->rl->st.protocol_errors++;
        conn_fail(c);
        return;
    }
    code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
    if (c->expect_len > 0 &&
        c->expect[c->expect_head] == CONN_EXPECT_EHLO &&
        conn_pipelining_line(l, n)) {
        c->ehlo_pipelining = 1;
    }
    if (n > 3 && l[3] == '-')
        return;                  /* continuation: only the last one counts */
    conn_touch(c);
    conn_reply(c, code);
    if (c->send_overflow && !c->closing) {
        c->rl->st.protocol_errors++;
        conn_fail(c);
    }
}


/* conn_input - split received bytes into reply lines */
static void
conn_input(struct ringload_conn *c, const char *p, size_t n)
{
    /* Each turn consumes at least one byte: at most n turns. */
    while (n > 0 && !c->closing) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl != NULL ? (size_t)(nl - p) + 1 : n;
        size_t room = RINGLOAD_LINE_MAX - c->line_len;
        size_t copy = MIN(take, room);

        memcpy(c->line + c->line_len, p, copy);
        c->line_len += (unsigned)copy;
        p += take;
        n -= take;
        if (nl == NULL)
            break;
        conn_line(c);
        c->line_len = 0;
    }
}


/* conn_eof - the server closed its side */
static void
conn_eof(struct ringload_conn *c)
{
    if (c->state == RINGLOAD_CONN_QUIT && !c->txn_active) {
        conn_close(c);
        return;
    }
    c->rl->st.closed_by_peer++;
    conn_fail(c);
}


/* --- receiving ----------------------------------------------------------- */

static void conn_recv_done(struct op *op, int res, uint32_t flags);


/* conn_recv_arm - multishot recv on the slot into provided buffers */
static void
conn_recv_arm(struct ringload_conn *c)
{
    struct io_uring_sqe *sqe;

    ASSERT(!c->recv_armed);
    sqe = loop_sqe(&c->rl->loop, &c->recv_op);
    io_uring_prep_recv_multishot(sqe, (int)c->slot, NULL, 0, 0);
    sqe->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
    sqe->buf_group = RINGLOAD_BGID;
    c->recv_armed = 1;
    conn_hold(c);
}


/* conn_recv_done - replies, EOF, or the end of the multishot */
static void
conn_recv_done(struct op *op, int res, uint32_t flags)
{
    struct ringload_conn *c = container_of(op, struct ringload_conn,
                                           recv_op);
    struct ringload *rl = c->rl;

    conn_hold(c);
    if (!(flags & IORING_CQE_F_MORE)) {
        c->recv_armed = 0;
        c->inflight--;           /* the multishot is over; we still hold */
    }
    if (res > 0) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;

        ASSERT(flags & IORING_CQE_F_BUFFER);
        if (!c->closing)
            conn_input(c, ringbufs_data(&rl->bufs, bid), (size_t)res);
        ringbufs_return(&rl->bufs, bid);
    } else if (res == 0) {
        if (!c->closing)
            conn_eof(c);
    } else if (res != -ENOBUFS && res != -ECANCELED) {
        if (!c->closing) {
            rl->st.closed_by_peer++;
            conn_fail(c);
        }
    }
    /* Re-arm whenever the multishot ended without the socket ending. */
    if (!c->closing && !c->recv_armed)
        conn_recv_arm(c);
    conn_put(c);
}


/* --- connecting ---------------------------------------------------------- */

/* conn_connect_done - connected (or not): await the greeting */
static void
conn_connect_done(struct op *op, int res, uint32_t flags)
{
    struct ringload_conn *c = container_of(op, struct ringload_conn,
                                           connect_op);
    struct ringload *rl = c->rl;

    c->connecting = 0;
    if (c->closing) {
        conn_put(c);
        return;
    }
    if (res < 0) {
        rl->st.connect_errors++;
        conn_fail(c);
        conn_put(c);
        return;
    }
    rl->st.connects++;
    c->state = RINGLOAD_CONN_GREETING;
    conn_expect(c, CONN_EXPECT_GREETING);
    conn_recv_arm(c);
    conn_touch(c);
    conn_put(c);
}


/*
 * conn_prep_linger0 - SO_LINGER {1, 0} on the new socket, as smtp-source
 * does: closing sends a RST, so neither side keeps TIME_WAIT and the FIN
 * exchange is not paid for. The slot has no fd for setsockopt(2), so this
 * is io_uring's socket command (kernel 6.7), filled by hand: liburing 2.3
 * knows neither the opcode's layout nor SOCKET_URING_OP_SETSOCKOPT. A
 * hard link lets the connect go ahead if the kernel refuses it;
 * rl->linger_op counts such failures (successes post no CQE).
 */
static void
conn_prep_linger0(struct ringload *rl, struct ringload_conn *c)
{
    static const struct linger linger0 = { .l_onoff = 1, .l_linger = 0 };
    struct io_uring_sqe *sqe = loop_sqe(&rl->loop, &rl->linger_op);

    io_uring_prep_rw(IORING_OP_URING_CMD, sqe, (int)c->slot, NULL, 0, 0);
    sqe->cmd_op = RINGLOAD_SOCKET_URING_OP_SETSOCKOPT;
    /* addr holds level (low half) and optname (high half) */
    sqe->addr = (uint64_t)SOL_SOCKET | ((uint64_t)SO_LINGER << 32);
    sqe->addr3 = (uint64_t)(uintptr_t)&linger0;       /* optval */
    sqe->file_index = sizeof linger0;                 /* optlen */
    sqe->flags |= IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK |
                  IOSQE_CQE_SKIP_SUCCESS;
}


/* conn_connect - claim a message and open a connection for it */
static void
conn_connect(struct ringload_conn *c)
{
    struct ringload *rl = c->rl;
    struct io_uring_sqe *sqe;

    ASSERT(c->inflight == 0);
    ASSERT(!c->closing);
    if (rl->stopping || rl->aborting) {
        conn_done(c);
        return;
    }
    if (!c->claim) {
        if (!ringload_claim(rl)) {
            conn_done(c);
            return;
        }
        c->claim = 1;
    }
    c->expect_head = c->expect_len = 0;
    c->line_len = 0;
    c->msgs_on_conn = c->answered_on_conn = 0;
    c->pipelining = c->ehlo_pipelining = 0;
    c->close_failed = 0;
    c->got_quit_reply = 0;
    c->next_queued = 0;
    c->send_overflow = 0;
    c->txn_active = 0;
    c->state = RINGLOAD_CONN_CONNECTING;

    /* The chain must go in one submission for the links to hold. */
    if (io_uring_sq_space_left(&rl->loop.ring) < 3)
        io_uring_submit(&rl->loop.ring);
    sqe = loop_sqe(&rl->loop, NULL);
    io_uring_prep_socket_direct(sqe, rl->o.addr.ss_family, SOCK_STREAM, 0,
                                c->slot, 0);
    sqe->flags |= IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS;
    if (!rl->o.graceful_close)
        conn_prep_linger0(rl, c);
    sqe = loop_sqe(&rl->loop, &c->connect_op);
    io_uring_prep_connect(sqe, (int)c->slot,
                          (const struct sockaddr *)&rl->o.addr,
                          rl->o.addrlen);
    sqe->flags |= IOSQE_FIXED_FILE;
    c->connecting = 1;
    conn_hold(c);
    conn_touch(c);
}


/* --- the run's side ------------------------------------------------------ */

/* ringload_conn_init - set up conn c on file slot slot */
void
ringload_conn_init(struct ringload *rl, struct ringload_conn *c,
                   unsigned slot)
{
    memset(c, 0, sizeof *c);
    c->rl = rl;
    c->slot = slot;
    c->state = RINGLOAD_CONN_IDLE;
    c->connect_op.done = conn_connect_done;
    c->recv_op.done = conn_recv_done;
    c->send_op.done = conn_send_done;
    c->cancel_op.done = conn_cancel_done;
    c->head = xmalloc(rl->msg.head_len);
    memcpy(c->head, rl->msg.head, rl->msg.head_len);
}


/* ringload_conn_start - first connection of conn c */
void
ringload_conn_start(struct ringload_conn *c)
{
    ASSERT(c->state == RINGLOAD_CONN_IDLE);
    conn_connect(c);
}


/* ringload_conn_resume - a rate token is there: carry on (or QUIT) */
void
ringload_conn_resume(struct ringload_conn *c)
{
    ASSERT(c->state == RINGLOAD_CONN_RATEWAIT);
    conn_touch(c);
    conn_next(c);
    if (c->send_overflow && !c->closing) {
        c->rl->st.protocol_errors++;
        conn_fail(c);
    }
}


/* ringload_conn_abort - --timeout: end this conn now */
void
ringload_conn_abort(struct ringload_conn *c)
{
    switch (c->state) {
    case RINGLOAD_CONN_DONE:
    case RINGLOAD_CONN_CLOSING:
        break;
    case RINGLOAD_CONN_IDLE:
    case RINGLOAD_CONN_BACKOFF:
        conn_done(c);
        break;
    default:
        conn_fail(c);
        break;
    }
}


/* ringload_conn_tick - expire phase deadlines, end back-offs */
void
ringload_conn_tick(struct ringload *rl)
{
    struct ringload_conn *c;
    unsigned n;

    /* Expired conns leave the list; reconnects go to its tail, later. */
    while ((c = rl->deadline.head) != NULL &&
           c->deadline_ms <= rl->now_ms) {
        rl->st.timeouts++;
        conn_fail(c);
    }
    n = rl->backoff.count;
    while ((c = rl->backoff.head) != NULL && n-- > 0 &&
           (c->deadline_ms <= rl->now_ms || rl->stopping)) {
        conn_list_remove(c);
        conn_connect(c);
    }
}
