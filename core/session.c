/*
 * session - one inbound SMTP connection: socket I/O on the shard's ring
 *           around the pure protocol machine (smtp_server.h)
 *
 * SYNOPSIS
 *   void session_start(struct shard *sh, struct shard_listen *l, int fd);
 *   void session_shutdown(struct session *s);
 *   void session_timeouts(struct shard *sh, uint64_t now);
 *   void session_abort_all(struct shard *sh);
 * DESCRIPTION
 *   session_start() takes an accepted socket: it creates the session arena
 *   (the struct session lives in it), admits or refuses the peer (limits,
 *   a failed spool, a draining shard: 421), sends the greeting and arms a
 *   multishot recv with the shard's provided buffers.
 *
 *   Input is fed to the protocol machine straight from the provided
 *   buffer, which goes back to the kernel at once; bytes the machine does
 *   not take yet (pipelined commands behind a message being committed) are
 *   copied to s->pending, at most SESSION_PENDING_MAX bytes: beyond that
 *   the recv is cancelled until the backlog drains, so a client cannot make
 *   us buffer without bound.
 *
 *   A complete message goes to the spool; its 250 is written only in the
 *   commit's completion, which also hands a copy to delivery. Replies are
 *   sent with one send per batch of replies (s->out is taken whole); a new
 *   send starts when the last one completed, so a buffer is never touched
 *   while the kernel reads it.
 *
 *   A session is freed when it is closing and has nothing in flight (recv,
 *   send, cancel, commit): s->inflight counts them, and every entry point
 *   (each completion, each call from the shard) holds one more count for
 *   its own duration, so a handler never touches a freed session: only
 *   session_leave() frees.
 *
 *   session_timeouts() (shard tick) closes sessions idle for longer than
 *   Idle_Timeout (commands) or Data_Timeout (inside DATA) with 421 4.4.2.
 *   Sessions are kept in per-phase lists ordered by last activity, so the
 *   check only looks at the expired heads.
 * OWNERSHIP
 *   struct session and the protocol state: session arena. s->pending and
 *   the reply buffers: malloc, owned by the session, freed when empty, so
 *   an idle session holds one arena chunk and nothing else.
 * THREADS
 *   Shard-local.
 * SECURITY
 *   Everything read here is untrusted; limits are in smtp_server.h and
 *   SESSION_PENDING_MAX here.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "listener.h"
#include "policy.h"
#include "log.h"
#include "shard.h"
#include "util.h"

#define SESSION_PENDING_MAX (64 * 1024)

struct session {
    struct shard *sh;
    struct arena *arena;
    int fd;
    struct sockaddr_storage peer;
    char peer_ip[INET6_ADDRSTRLEN];
    struct smtp_server smtp;

    struct op recv_op;
    struct op send_op;
    struct op cancel_op;         /* pausing the recv */
    struct op close_op;          /* cancelling everything on close */
    struct smtp_out sending;     /* in flight; untouchable until send_done */
    size_t sent;

    char *pending;               /* unconsumed input, malloc */
    size_t pending_len;
    size_t pending_cap;

    struct spool_msg msg;

    /* Lua policy (NULL without a scriptlet): the phases still to run for
     * the current command or message, and what they see */
    struct policy_sess *ps;
    struct policy_txn ptxn;
    enum policy_phase pol_phases[POLICY_PHASE_COUNT + 1];
    unsigned pol_count;
    unsigned pol_idx;
    unsigned pol_rcpt;           /* each_rcpt: the recipient it is at */
    int pol_cmd;                 /* SMTP_POLICY_* being judged; 0: the
                                  * message; -1: the connection */
    unsigned pol_txn_seq;        /* the transaction policy's message
                                  * state belongs to (smtp.txn_seq) */

    unsigned inflight;
    unsigned recv_armed : 1;
    unsigned recv_paused : 1;
    unsigned send_busy : 1;
    unsigned commit_busy : 1;
    unsigned policy_busy : 1;    /* a callout yielded: input waits */
    unsigned want_close : 1;     /* close once the replies are sent */
    unsigned peer_eof : 1;       /* the client half-closed: finish, close */
    unsigned flush_wait : 1;     /* input held back until replies are sent */
    unsigned closing : 1;
    unsigned admitted : 1;
    unsigned counted_active : 1;

    uint64_t active_ms;
    struct session_list *list;
    struct session *prev, *next;
};

static void session_run(struct session *s, const char *data, size_t len);
static void session_commit(struct session *s);
static void session_greet(struct session *s);
static void session_close(struct session *s);
static void session_free(struct session *s);


/* session_enter - hold s for the duration of a call from outside */
static inline void
session_enter(struct session *s)
{
    s->inflight++;
}


/* session_leave - drop one hold (or one finished op); frees when last */
static void
session_leave(struct session *s)
{
    ASSERT(s->inflight > 0);
    if (--s->inflight == 0 && s->closing)
        session_free(s);
}


/* --- activity lists ------------------------------------------------------ */

static void
list_remove(struct session *s)
{
    struct session_list *l = s->list;

    if (l == NULL)
        return;
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        l->head = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    else
        l->tail = s->prev;
    l->count--;
    s->list = NULL;
    s->prev = s->next = NULL;
}


static void
list_append(struct session_list *l, struct session *s)
{
    ASSERT(s->list == NULL);
    s->list = l;
    s->prev = l->tail;
    s->next = NULL;
    if (l->tail != NULL)
        l->tail->next = s;
    else
        l->head = s;
    l->tail = s;
    l->count++;
}


/* session_touch - record activity; file s under the list of its phase */
static void
session_touch(struct session *s)
{
    struct shard *sh = s->sh;
    struct session_list *l;

    if (s->closing)
        return;
    switch (s->smtp.state) {
    case SMTP_STATE_DATA:
        l = &sh->data_list;
        break;
    case SMTP_STATE_COMMIT:
        /* Waiting for policy (data phases) is waiting for a script, not
         * for the spool: Idle_Timeout and the drain budget apply. */
        l = s->policy_busy ? &sh->idle_list : &sh->wait_list;
        break;
    default:
        l = &sh->idle_list;
        break;
    }
    list_remove(s);
    s->active_ms = now_ms();
    list_append(l, s);
}


/* --- sending ------------------------------------------------------------- */

static void session_flush(struct session *s);


static void
session_send_submit(struct session *s)
{
    struct io_uring_sqe *sqe = loop_sqe(&s->sh->loop, &s->send_op);

    io_uring_prep_send(sqe, s->fd, s->sending.buf + s->sent,
                       s->sending.len - s->sent, MSG_NOSIGNAL);
    s->send_busy = 1;
    s->inflight++;
}


static void
session_send_done(struct op *op, int res, uint32_t flags)
{
    struct session *s = container_of(op, struct session, send_op);

    s->send_busy = 0;
    if (res > 0) {
        s->sent += (size_t)res;
        if (s->sent < s->sending.len && !s->closing) {
            session_send_submit(s);
            session_leave(s);
            return;
        }
    }
    free(s->sending.buf);
    memset(&s->sending, 0, sizeof s->sending);
    s->sent = 0;
    if (res <= 0) {
        /* The peer went away or reset: nothing more to say to it. */
        session_close(s);
    } else if (!s->closing) {
        /* More replies, or input held back by SMTP_EV_FLUSH. */
        session_run(s, NULL, 0);
    }
    session_leave(s);
}


/* session_flush - send the pending replies unless a send is in flight */
static void
session_flush(struct session *s)
{
    if (s->send_busy || s->smtp.out.len == 0)
        return;
    s->sending = smtp_out_take(&s->smtp);
    s->sent = 0;
    session_send_submit(s);
}


/* --- receiving ----------------------------------------------------------- */

static void session_recv_done(struct op *op, int res, uint32_t flags);


static void
session_recv_arm(struct session *s)
{
    struct io_uring_sqe *sqe;

    ASSERT(!s->recv_armed);
    s->recv_op.done = session_recv_done;
    sqe = loop_sqe(&s->sh->loop, &s->recv_op);
    io_uring_prep_recv_multishot(sqe, s->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = SHARD_BUF_GROUP;
    s->recv_armed = 1;
    s->inflight++;
}


static void
session_cancel_finish(struct session *s)
{
    session_leave(s);
}


static void
session_cancel_done(struct op *op, int res, uint32_t flags)
{
    session_cancel_finish(container_of(op, struct session, cancel_op));
}


static void
session_close_cancel_done(struct op *op, int res, uint32_t flags)
{
    session_cancel_finish(container_of(op, struct session, close_op));
}


/* session_recv_cancel - stop the multishot recv (close() would not) */
static void
session_recv_cancel(struct session *s)
{
    struct io_uring_sqe *sqe;

    s->cancel_op.done = session_cancel_done;
    sqe = loop_sqe(&s->sh->loop, &s->cancel_op);
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)&s->recv_op, 0);
    s->inflight++;
}


static void
pending_append(struct session *s, const char *data, size_t len)
{
    if (len == 0)
        return;
    if (s->pending_len + len > s->pending_cap) {
        size_t cap = s->pending_cap ? s->pending_cap : 1024;

        while (cap < s->pending_len + len)
            cap *= 2;
        s->pending = xrealloc(s->pending, cap);
        s->pending_cap = cap;
    }
    memcpy(s->pending + s->pending_len, data, len);
    s->pending_len += len;
}


static void
session_recv_done(struct op *op, int res, uint32_t flags)
{
    struct session *s = container_of(op, struct session, recv_op);
    struct shard *sh = s->sh;

    session_enter(s);
    if (!(flags & IORING_CQE_F_MORE)) {
        s->recv_armed = 0;
        s->inflight--;           /* the multishot op is over */
    }
    if (res > 0) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;

        ASSERT(flags & IORING_CQE_F_BUFFER);
        sh->stats.recv_bytes += (uint64_t)res;
        if (!s->closing)
            session_run(s, sh->br_mem + (size_t)bid * sh->br_size,
                        (size_t)res);
        shard_buf_return(sh, bid);
    } else if (res == 0 && !s->closing) {
        /*
         * The client half-closed: it may still read. Answer what it sent
         * (a commit in flight, pipelined commands), then close; an
         * unfinished command or message is dropped (session_run).
         */
        s->peer_eof = 1;
        session_run(s, NULL, 0);
    } else if (res < 0 && res != -ENOBUFS && res != -ECANCELED) {
        /* A socket error: a transaction in progress is dropped. */
        session_close(s);
    }
    /* Re-arm whenever the multishot ended (ENOBUFS, full CQ, ...). */
    if (!s->closing && !s->recv_armed && !s->recv_paused && !s->peer_eof)
        session_recv_arm(s);
    session_leave(s);
}


/* --- the protocol -------------------------------------------------------- */

static void
session_commit_done(struct spool_msg *m, int res)
{
    struct session *s = container_of(m, struct session, msg);
    struct shard *sh = s->sh;

    ASSERT(s->commit_busy);
    s->commit_busy = 0;
    if (res == 0) {
        sh->stats.messages_received++;
        /* Copied: the transaction arena is reset once the 250 is out. */
        delivery_accepted(&sh->dlv, m);
    } else {
        sh->stats.commit_failures++;
    }
    /* The commit copied what policy changed: the next message starts
     * clean (headers, VCTX_MESS, binding, priority). */
    policy_txn_begin(s->ps);
    /* If the peer left before its answer, the message is kept all the same. */
    if (!s->closing) {
        smtp_server_commit_done(&s->smtp, res);
        session_run(s, NULL, 0);
    }
    session_leave(s);
}


static void
session_commit(struct session *s)
{
    struct spool_msg *m = &s->msg;
    uint64_t bytes = 0;
    unsigned i;

    ASSERT(s->smtp.state == SMTP_STATE_COMMIT);
    for (i = 0; i < s->smtp.body_count; i++)
        bytes += s->smtp.body[i].iov_len;
    memset(m, 0, sizeof *m);
    m->id = s->smtp.id;
    m->received_unix = time(NULL);
    m->sender = s->smtp.sender;
    m->rcpts = (const char *const *)s->smtp.rcpts;
    m->rcpt_count = s->smtp.rcpt_count;
    m->peer = s->peer_ip;
    m->body = s->smtp.body;
    m->body_iov_count = s->smtp.body_count;
    m->body_bytes = bytes;
    if (s->ps != NULL) {
        struct policy_msg_out po;

        if (policy_msg_out(s->ps, &po)) {
            if (po.sender != NULL)
                m->sender = po.sender;
            if (po.rcpts != NULL)
                m->rcpts = (const char *const *)po.rcpts;
            if (po.body != NULL) {
                m->body = po.body;
                m->body_iov_count = po.body_count;
                m->body_bytes = po.body_bytes;
            }
            m->binding = po.binding;
            m->routing_domain = po.routing_domain;
            m->priority = po.priority;
        }
    }
    m->done = session_commit_done;
    s->commit_busy = 1;
    s->inflight++;
    spool_commit(&s->sh->spool, m);
}


/* --- policy ------------------------------------------------------------- */

static void session_policy_step(struct session *s);


static void
policy_txn_fill(struct session *s)
{
    struct policy_txn *t = &s->ptxn;
    struct smtp_server *m = &s->smtp;

    t->id = m->id[0] != '\0' ? m->id : NULL;
    t->helo = m->helo;
    t->sender = m->sender;
    t->rcpts = m->rcpts;
    t->rcpt_count = m->rcpt_count;
    t->rcpt = NULL;
    t->str = NULL;
    t->body = NULL;
    t->body_count = 0;
    t->body_bytes = 0;
}


/*
 * session_policy_keys - the core-set context keys, whatever callouts the
 * modules have: ehlo_string and ehlo_domain (VCTX_CONN), mailfrom_string
 * (VCTX_MESS). The command being judged sets its own (pend_arg).
 */
static void
session_policy_keys(struct session *s)
{
    const struct smtp_server *m = &s->smtp;

    if (m->helo != NULL) {
        policy_ctx_conn_set(s->ps, "ehlo_string", m->helo);
        policy_ctx_conn_set(s->ps, "ehlo_domain", m->helo);
    }
    if (m->sender != NULL)
        policy_ctx_mess_set(s->ps, "mailfrom_string", m->sender);
}


static void
policy_phase_add(struct session *s, enum policy_phase ph)
{
    if (policy_wants(s->ps, ph))
        s->pol_phases[s->pol_count++] = ph;
}


/* policy_ends_phases - a refusal, a disconnect or a discard: the phases
 * after it do not run (whether it came at once or after a wait) */
static int
policy_ends_phases(const struct policy_result *res)
{
    return res->code >= 400 || res->disconnect || res->discard;
}


/* session_policy_apply - every phase ran (or one said no): act on it */
static void
session_policy_apply(struct session *s)
{
    const struct policy_result *res = policy_result(s->ps);
    struct smtp_verdict v = { 0 };

    v.code = res->code;
    v.text = res->text;
    v.close = res->disconnect;
    if (s->pol_cmd < 0) {
        /* the connection */
        if (res->code >= 400 || res->disconnect)
            smtp_server_refuse(&s->smtp, res->code ? res->text
                               : "421 4.7.0 Connection closed by policy");
        else
            session_greet(s);
        if (s->smtp.state == SMTP_STATE_CLOSED)
            s->want_close = 1;
        return;
    }
    if (s->pol_cmd > 0) {
        smtp_server_policy_done(&s->smtp, &v);
        return;
    }
    /* the message */
    if (res->code >= 400 || res->disconnect) {
        s->sh->stats.messages_rejected++;
        smtp_server_message_refused(&s->smtp, res->code ? res->text
                                    : "550 5.7.1 Rejected by policy",
                                    res->disconnect);
        policy_txn_begin(s->ps);     /* the next message starts clean */
    } else if (res->discard) {
        s->sh->stats.messages_discarded++;
        smtp_server_commit_done(&s->smtp, 0);
        policy_txn_begin(s->ps);
    } else {
        session_commit(s);           /* policy_txn_begin() at its end */
    }
}


static void
session_policy_done(struct policy_sess *ps, void *arg)
{
    struct session *s = arg;
    const struct policy_result *res;

    ASSERT(s->policy_busy);
    s->policy_busy = 0;
    if (s->closing) {
        session_leave(s);
        return;
    }
    /* A phase that waited can refuse too: no later phase may run and
     * overwrite its result (as the synchronous path stops in
     * session_policy_step). */
    res = policy_result(ps);
    if (policy_ends_phases(res))
        s->pol_idx = s->pol_count;
    session_policy_step(s);
    if (!s->policy_busy && !s->closing)
        session_run(s, NULL, 0);
    session_leave(s);
}


/* session_policy_step - run the phases left; stop on a refusal */
static void
session_policy_step(struct session *s)
{
    while (s->pol_idx < s->pol_count) {
        enum policy_phase ph = s->pol_phases[s->pol_idx];
        const struct policy_result *res;

        if (ph == POLICY_DATA_SPOOL_EACH_RCPT) {
            if (s->pol_rcpt >= s->smtp.rcpt_count) {
                s->pol_idx++;
                continue;
            }
            s->ptxn.rcpt = s->smtp.rcpts[s->pol_rcpt++];
        } else {
            s->pol_idx++;
        }
        if (policy_run(s->ps, ph, &s->ptxn, session_policy_done, s)) {
            s->policy_busy = 1;
            s->inflight++;
            return;
        }
        res = policy_result(s->ps);
        if (policy_ends_phases(res)) {
            s->pol_idx = s->pol_count;
            break;
        }
    }
    session_policy_apply(s);
}


/*
 * session_policy_txn - a transaction policy has not seen yet (MAIL without
 * a mailfrom callout, or after RSET): its per-message state starts empty.
 */
static void
session_policy_txn(struct session *s)
{
    if (s->smtp.txn_seq != s->pol_txn_seq) {
        policy_txn_begin(s->ps);
        s->pol_txn_seq = s->smtp.txn_seq;
    }
}


static void
policy_start(struct session *s, int cmd)
{
    s->pol_cmd = cmd;
    s->pol_idx = 0;
    s->pol_rcpt = 0;
    session_policy_step(s);
}


/* the command the machine stopped on */
static void
session_policy_command(struct session *s)
{
    struct smtp_server *m = &s->smtp;
    struct policy_sess *ps = s->ps;

    if (m->pend_cmd != SMTP_POLICY_MAIL)
        session_policy_txn(s);
    policy_txn_fill(s);
    s->ptxn.str = m->pend_arg;
    s->pol_count = 0;
    session_policy_keys(s);
    switch (m->pend_cmd) {
    case SMTP_POLICY_EHLO:
        policy_ctx_conn_set(ps, "ehlo_string", m->pend_arg);
        policy_ctx_conn_set(ps, "ehlo_domain", m->pend_arg);
        policy_phase_add(s, POLICY_EHLO);
        break;
    case SMTP_POLICY_MAIL:
        policy_txn_begin(ps);
        /* This MAIL, once accepted, is the transaction it belongs to. */
        s->pol_txn_seq = m->txn_seq + 1;
        s->ptxn.sender = m->pend_arg;
        policy_ctx_mess_set(ps, "mailfrom_string", m->pend_arg);
        policy_phase_add(s, POLICY_MAILFROM);
        break;
    case SMTP_POLICY_RCPT:
        s->ptxn.rcpt = m->pend_arg;
        policy_ctx_mess_set(ps, "rcptto_string", m->pend_arg);
        policy_phase_add(s, POLICY_RCPTTO);
        break;
    case SMTP_POLICY_DATA:
        policy_phase_add(s, POLICY_RCPTTO_LIST);
        policy_phase_add(s, POLICY_RCPTTO_LIST_FINAL);
        break;
    }
    policy_start(s, (int)m->pend_cmd);
}


/* session_message - a complete message: policy's data phases, then commit */
static void
session_message(struct session *s)
{
    uint64_t bytes = 0;
    unsigned i;

    if (s->ps == NULL) {
        session_commit(s);
        return;
    }
    session_policy_txn(s);
    policy_txn_fill(s);
    for (i = 0; i < s->smtp.body_count; i++)
        bytes += s->smtp.body[i].iov_len;
    s->ptxn.body = s->smtp.body;
    s->ptxn.body_count = s->smtp.body_count;
    s->ptxn.body_bytes = bytes;
    s->pol_count = 0;
    policy_phase_add(s, POLICY_DATA);
    policy_phase_add(s, POLICY_DATA_SPOOL);
    policy_phase_add(s, POLICY_DATA_SPOOL_EACH_RCPT);
    policy_phase_add(s, POLICY_SET_BINDING);
    policy_phase_add(s, POLICY_HOOK_ROUTING);
    if (s->pol_count == 0) {
        session_commit(s);
        return;
    }
    session_policy_keys(s);
    policy_start(s, 0);
}


/* session_feed - run the machine over data; returns bytes it consumed */
static size_t
session_feed(struct session *s, const char *data, size_t len)
{
    size_t used = 0;

    s->flush_wait = 0;
    while (used < len && !s->want_close && !s->commit_busy &&
           !s->policy_busy) {
        enum smtp_event ev;
        uint64_t rejected = s->smtp.stats.rejected;

        used += smtp_server_feed(&s->smtp, data + used, len - used, &ev);
        s->sh->stats.messages_rejected += s->smtp.stats.rejected - rejected;
        if (ev == SMTP_EV_MESSAGE) {
            session_message(s);
        } else if (ev == SMTP_EV_POLICY) {
            session_policy_command(s);
        } else if (ev == SMTP_EV_CLOSE) {
            s->want_close = 1;
        } else if (ev == SMTP_EV_FLUSH) {
            s->flush_wait = 1;
            break;
        } else if (used < len) {
            ASSERT(s->smtp.state == SMTP_STATE_COMMIT ||
                   s->smtp.state == SMTP_STATE_POLICY);
            break;
        }
    }
    /* A commit answer or a drain can close the session without input. */
    if (s->smtp.state == SMTP_STATE_CLOSED)
        s->want_close = 1;
    return used;
}


/*
 * session_run - feed new input (or only what is pending, when data is
 * NULL), keep what was not consumed, send replies, close when told.
 */
static void
session_run(struct session *s, const char *data, size_t len)
{
    size_t used;

    if (s->pending_len > 0 || (data == NULL && s->pending_len == 0)) {
        pending_append(s, data, len);
        used = session_feed(s, s->pending, s->pending_len);
        if (used == s->pending_len) {
            free(s->pending);
            s->pending = NULL;
            s->pending_len = s->pending_cap = 0;
        } else if (used > 0) {
            memmove(s->pending, s->pending + used, s->pending_len - used);
            s->pending_len -= used;
        }
    } else {
        used = session_feed(s, data, len);
        pending_append(s, data + used, len - used);
    }
    /*
     * After the client's EOF, once nothing can make progress (no commit
     * to answer, no input held back for replies), what is left is an
     * unfinished command or message: drop it and close.
     */
    if (s->peer_eof && !s->commit_busy && !s->flush_wait && !s->policy_busy)
        s->want_close = 1;
    if (s->want_close) {
        /* QUIT or a fatal error: whatever else the client sent is moot. */
        free(s->pending);
        s->pending = NULL;
        s->pending_len = s->pending_cap = 0;
    }

    if (s->pending_len > SESSION_PENDING_MAX && s->recv_armed &&
        !s->recv_paused) {
        s->recv_paused = 1;
        session_recv_cancel(s);
    } else if (s->recv_paused && s->pending_len < SESSION_PENDING_MAX / 2) {
        s->recv_paused = 0;
        if (!s->recv_armed && !s->want_close && !s->peer_eof)
            session_recv_arm(s);
    }

    session_flush(s);
    if (s->want_close && !s->send_busy && s->smtp.out.len == 0)
        session_close(s);
    else
        session_touch(s);
}


/* --- life and death ------------------------------------------------------ */

static void
session_free(struct session *s)
{
    struct shard *sh = s->sh;

    ASSERT(s->inflight == 0);
    list_remove(s);
    close(s->fd);
    if (s->admitted)
        listener_release((struct sockaddr *)&s->peer);
    sh->sessions--;
    if (s->counted_active)
        sh->sessions_active--;
    policy_sess_close(s->ps);
    smtp_server_fini(&s->smtp);
    free(s->pending);
    free(s->sending.buf);
    arena_destroy(s->arena);     /* s itself lives there: last */
}


/*
 * session_close - stop everything; session_leave() frees the session once
 * nothing is in flight.
 */
static void
session_close(struct session *s)
{
    if (!s->closing) {
        s->closing = 1;
        list_remove(s);
        policy_cancel(s->ps);
        if (s->recv_armed || s->send_busy) {
            /* Both the multishot recv and a send stuck on a peer that
             * does not read: close(2) alone would cancel neither. */
            struct io_uring_sqe *sqe;

            s->close_op.done = session_close_cancel_done;
            sqe = loop_sqe(&s->sh->loop, &s->close_op);
            io_uring_prep_cancel_fd(sqe, s->fd, IORING_ASYNC_CANCEL_ALL);
            s->inflight++;
        }
    }
}


static void
session_greet(struct session *s)
{
    smtp_server_greet(&s->smtp);
}


/* session_connect - policy's connect phase, then the greeting */
static void
session_connect(struct session *s)
{
    struct shard *sh = s->sh;
    struct policy_conn pc = { 0 };
    unsigned mask = 0;

    pc.peer_ip = s->peer_ip;
    pc.peer_port = s->peer.ss_family == AF_INET6
                       ? ntohs(((struct sockaddr_in6 *)&s->peer)->sin6_port)
                       : ntohs(((struct sockaddr_in *)&s->peer)->sin_port);
    pc.hostname = sh->conf->hostname;
    pc.fd = s->fd;               /* accept.local_ip: asked when read */
    s->ps = policy_sess_open(sh->policy, &sh->pool, s->arena, &pc);
    if (s->ps == NULL) {
        session_greet(s);
        return;
    }
    if (policy_wants(s->ps, POLICY_EHLO))
        mask |= SMTP_POLICY_EHLO;
    if (policy_wants(s->ps, POLICY_MAILFROM))
        mask |= SMTP_POLICY_MAIL;
    if (policy_wants(s->ps, POLICY_RCPTTO))
        mask |= SMTP_POLICY_RCPT;
    if (policy_wants(s->ps, POLICY_RCPTTO_LIST) ||
        policy_wants(s->ps, POLICY_RCPTTO_LIST_FINAL))
        mask |= SMTP_POLICY_DATA;
    s->smtp.policy_mask = mask;
    s->pol_count = 0;
    policy_txn_fill(s);
    policy_phase_add(s, POLICY_CONNECT);
    policy_start(s, -1);
}


/* session_start - a new connection on l */
void
session_start(struct shard *sh, struct shard_listen *l, int fd)
{
    struct arena *a = arena_create(&sh->pool);
    struct session *s = arena_zalloc(a, sizeof *s);
    socklen_t alen = sizeof s->peer;
    const void *addr;
    int relay_ok;

    s->sh = sh;
    s->arena = a;
    s->fd = fd;
    s->send_op.done = session_send_done;
    sh->sessions++;
    sh->stats.sessions_accepted++;
    session_enter(s);
    if (getpeername(fd, (struct sockaddr *)&s->peer, &alen) < 0) {
        s->closing = 1;
        session_leave(s);
        return;
    }
    if (s->peer.ss_family == AF_INET6)
        addr = &((struct sockaddr_in6 *)&s->peer)->sin6_addr;
    else
        addr = &((struct sockaddr_in *)&s->peer)->sin_addr;
    inet_ntop(s->peer.ss_family, addr, s->peer_ip, sizeof s->peer_ip);
    relay_ok = conf_cidr_match(l->conf->relay_hosts,
                               l->conf->relay_host_count,
                               (struct sockaddr *)&s->peer);
    smtp_server_init(&s->smtp, &sh->limits, a, relay_ok, s->peer_ip);

    /* Counted even when refused: listener_release() undoes it. */
    s->admitted = 1;
    if (listener_admit(sh->conf, (struct sockaddr *)&s->peer) < 0) {
        smtp_server_refuse(&s->smtp, "421 4.7.0 Error: too many "
                                     "connections");
    } else if (sh->state != SHARD_STATE_RUNNING) {
        smtp_server_refuse(&s->smtp, "421 4.3.2 Service shutting down");
    } else if (spool_failed(&sh->spool)) {
        smtp_server_refuse(&s->smtp, "421 4.3.2 Service temporarily "
                                     "unavailable: spool failure");
    } else {
        s->counted_active = 1;
        sh->sessions_active++;
        session_recv_arm(s);
        session_connect(s);
    }
    if (s->smtp.state == SMTP_STATE_CLOSED) {
        sh->stats.sessions_refused++;
        s->want_close = 1;
    }
    session_run(s, NULL, 0);
    session_leave(s);
}


/* session_shutdown - the shard drains: finish the transaction, then 421 */
void
session_shutdown(struct session *s)
{
    if (s->closing)
        return;
    session_enter(s);
    smtp_server_shutdown(&s->smtp);
    if (s->smtp.state == SMTP_STATE_CLOSED)
        s->want_close = 1;
    if (!s->commit_busy)
        session_run(s, NULL, 0);
    session_leave(s);
}


/* session_expire - a timeout or a spent drain budget: 421 and close now */
static void
session_expire(struct session *s)
{
    session_enter(s);
    smtp_server_timeout(&s->smtp);
    session_flush(s);
    session_close(s);
    session_leave(s);
}


void
session_timeouts(struct shard *sh, uint64_t now)
{
    const struct conf *c = sh->conf;

    while (sh->idle_list.head != NULL &&
           sh->idle_list.head->active_ms + c->idle_timeout_ms <= now) {
        sh->stats.sessions_timed_out++;
        session_expire(sh->idle_list.head);
    }
    while (sh->data_list.head != NULL &&
           sh->data_list.head->active_ms + c->data_timeout_ms <= now) {
        sh->stats.sessions_timed_out++;
        session_expire(sh->data_list.head);
    }
}


/* session_drain_all - tell every open session the shard is draining */
void
session_drain_all(struct shard *sh)
{
    struct session_list *lists[] = {
        &sh->idle_list, &sh->data_list, &sh->wait_list,
    };
    size_t i;

    for (i = 0; i < ARRAY_SIZE(lists); i++) {
        struct session *s = lists[i]->head, *next;

        /* session_shutdown may move s to another list's tail: walk safely */
        unsigned n = lists[i]->count;

        while (s != NULL && n-- > 0) {
            next = s->next;
            session_shutdown(s);
            s = next;
        }
    }
}


/*
 * session_abort_all - the drain budget is spent: close every session that
 * is not waiting for a commit (those close when their answer is written).
 */
void
session_abort_all(struct shard *sh)
{
    while (sh->idle_list.head != NULL)
        session_expire(sh->idle_list.head);
    while (sh->data_list.head != NULL)
        session_expire(sh->data_list.head);
}
