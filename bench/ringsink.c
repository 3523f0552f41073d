/*
 * ringsink - io_uring SMTP sink that records the tokens it accepts
 *            (issue 7, benchmark harness)
 *
 * SYNOPSIS
 *   ringsink [options] [HOST:PORT]      (ringsink --help for the options)
 * DESCRIPTION
 *   Listens on HOST:PORT (default 127.0.0.1:0; port 0 lets the kernel
 *   choose) and prints "ringsink listening on ADDR:PORT" as its first
 *   stdout line. It speaks enough ESMTP for load tests (ringsink_smtp.c)
 *   and accepts and discards every message, except where told to
 *   misbehave: recipients matching a pattern get 451 or 550, a
 *   deterministic share of messages (by token hash) get 451 or 554 after
 *   their data, replies to the final dot can be delayed by --latency ms
 *   (an io_uring timeout per message, so other sessions go on), and a
 *   connection can be cut with 421 after N messages.
 *
 *   Each accepted message is recorded (ringsink_record.c): its token
 *   (X-Ringload-Token, or else Message-ID) goes into a set that counts
 *   duplicates, and with --record FILE into a line of that file. Counts
 *   go to stderr on SIGUSR1 and at exit; --json FILE gets them at exit.
 *   SIGTERM and SIGINT end the process with status 0 after flushing.
 *
 *   Sockets: one multishot accept on the listener, one multishot recv per
 *   connection into provided buffers (ringbufs.h), whose bytes the
 *   protocol machine reads in place; input it cannot take yet (pipelined
 *   commands behind a delayed reply, or a full reply buffer) is copied to
 *   the connection's backlog, at most RINGSINK_BACKLOG_MAX bytes before
 *   the recv is paused. Replies collect in one of two buffers while the
 *   other is being sent, so each batch of pipelined commands costs one
 *   send.
 * OWNERSHIP
 *   Connections come from a free list and go back to it: nothing is
 *   allocated per connection or per message once the pool is warm.
 * THREADS
 *   One; the ring is SINGLE_ISSUER|DEFER_TASKRUN (core/loop.c).
 * SECURITY
 *   Everything read is untrusted; limits are in ringsink.h, and
 *   --max-sessions caps connections (beyond it: 421 and close).
 * SEE ALSO
 *   ringsink.h, ringload.c
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"
#include "ringaddr.h"
#include "ringbufs.h"
#include "ringsink.h"
#include "util.h"

#define RINGSINK_OUT_CAP 2048          /* each of a conn's reply buffers */
#define RINGSINK_BACKLOG_MAX (64 * 1024)
#define RINGSINK_SESSIONS_MAX 19000    /* RLIMIT_NOFILE is 20000 here */
#define RINGSINK_RCPT_MAX 1000
#define RINGSINK_BGID 9
#define RINGSINK_BUF_COUNT 2048
#define RINGSINK_BUF_SIZE 8192
#define RINGSINK_TICK_MS 250
/*
 * Under load a turn waits for RINGSINK_BATCH completions, or at most
 * RINGSINK_BATCH_US: with DEFER_TASKRUN the kernel wakes us only when that
 * many are due, and a wakeup is paid for by whoever completes our work,
 * i.e. the clients' CPUs (an idle sink woken for every packet made
 * smtp-source 5-10% slower than against the busier smtp-sink).
 */
#define RINGSINK_BATCH 8
#define RINGSINK_BATCH_US 200
#define RINGSINK_ACCEPT_RETRY_MS 100

enum ringsink_verdict {
    RINGSINK_VERDICT_ACCEPT,
    RINGSINK_VERDICT_TEMPFAIL,
    RINGSINK_VERDICT_REJECT,
    RINGSINK_VERDICT_TOO_BIG,
};

struct ringsink_opts {
    const char *listen;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    const char *record_path;
    const char *json_path;
    struct ringsink_smtp_conf smtp;
    double tempfail_share;
    double reject_share;
    unsigned latency_ms;
    unsigned max_sessions;
    unsigned progress_ms;        /* 0: no progress lines */
    int cpu;
};

struct ringsink;

struct ringsink_conn {
    struct ringsink *rs;
    int fd;
    unsigned inflight;           /* ops in flight plus handler holds */
    struct op recv_op;
    struct op send_op;
    struct op cancel_op;         /* closing */
    struct op pause_op;          /* stopping the recv for flow control */
    struct op timer_op;          /* --latency */
    unsigned recv_armed : 1;
    unsigned send_busy : 1;
    unsigned timer_busy : 1;
    unsigned paused : 1;
    unsigned closing : 1;
    unsigned want_close : 1;     /* close once the replies are out */
    unsigned peer_eof : 1;
    unsigned peer_known : 1;
    unsigned shut : 1;           /* the sending batch is the last one */
    enum ringsink_verdict verdict;
    struct __kernel_timespec ts;

    struct ringsink_smtp smtp;
    char *out[2];                /* RINGSINK_OUT_CAP each */
    unsigned fill;               /* out[fill] collects replies */
    size_t send_len;             /* out[!fill] is being sent */
    size_t send_off;

    char *backlog;               /* input not taken yet */
    size_t backlog_len;
    size_t backlog_off;
    size_t backlog_cap;

    char peer[RINGADDR_TEXT_MAX];
    struct ringsink_conn *next_free;
    struct ringsink_conn *next_all;
};

struct ringsink {
    struct ringsink_opts o;
    struct loop loop;
    struct ringbufs bufs;
    int lfd;
    char listen_text[RINGADDR_TEXT_MAX];
    struct op accept_op;
    unsigned accept_armed : 1;
    uint64_t accept_retry_ms;    /* re-arm after an error, not at once */
    struct ringsink_conn *free_list;
    struct ringsink_conn *all;
    unsigned active;
    struct ringsink_counts counts;
    struct ringsink_record record;
    FILE *record_fp;
    uint64_t start_us;
};

static volatile sig_atomic_t ringsink_stop;
static volatile sig_atomic_t ringsink_report_wanted;

static void conn_run(struct ringsink_conn *c);


/* --- life cycle ---------------------------------------------------------- */

/* conn_free - nothing in flight: close the socket, back to the pool */
static void
conn_free(struct ringsink_conn *c)
{
    struct ringsink *rs = c->rs;
    struct io_uring_sqe *sqe;

    ASSERT(c->inflight == 0);
    ASSERT(!c->recv_armed);
    ASSERT(!c->send_busy);
    ASSERT(!c->timer_busy);
    sqe = loop_sqe(&rs->loop, NULL);
    io_uring_prep_close(sqe, c->fd);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    c->fd = -1;
    c->closing = 0;
    c->next_free = rs->free_list;
    rs->free_list = c;
    ASSERT(rs->active > 0);
    rs->active--;
}


/* conn_hold - one more op in flight, or a handler holding c */
static inline void
conn_hold(struct ringsink_conn *c)
{
    c->inflight++;
}


/* conn_put - drop one op or handler hold; a closing conn ends at zero */
static void
conn_put(struct ringsink_conn *c)
{
    ASSERT(c->inflight > 0);
    if (--c->inflight == 0 && c->closing)
        conn_free(c);
}


/* conn_cancel_done - the cancel of a closing conn completed */
static void
conn_cancel_done(struct op *op, int res, uint32_t flags)
{
    conn_put(container_of(op, struct ringsink_conn, cancel_op));
}


/* conn_pause_done - a recv or timer cancel completed */
static void
conn_pause_done(struct op *op, int res, uint32_t flags)
{
    conn_put(container_of(op, struct ringsink_conn, pause_op));
}


/* conn_close - cancel what is in flight (close(2) would not stop it) */
static void
conn_close(struct ringsink_conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    if (c->recv_armed || c->send_busy || c->timer_busy) {
        struct io_uring_sqe *sqe = loop_sqe(&c->rs->loop, &c->cancel_op);

        io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
        conn_hold(c);
        if (c->timer_busy) {
            /* A timeout has no fd: cancel it by its user_data. */
            sqe = loop_sqe(&c->rs->loop, &c->pause_op);
            io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)&c->timer_op,
                                   0);
            conn_hold(c);
        }
    }
    conn_hold(c);
    conn_put(c);
}


/* --- sending ------------------------------------------------------------- */

/* conn_send_submit - send the rest of the sending buffer */
static void
conn_send_submit(struct ringsink_conn *c)
{
    struct io_uring_sqe *sqe = loop_sqe(&c->rs->loop, &c->send_op);

    io_uring_prep_send(sqe, c->fd, c->out[!c->fill] + c->send_off,
                       c->send_len - c->send_off, MSG_NOSIGNAL);
    c->send_busy = 1;
    conn_hold(c);
}


/* conn_flush - send the collected replies unless a send is in flight */
static void
conn_flush(struct ringsink_conn *c)
{
    if (c->send_busy || c->smtp.out_len == 0 || c->closing)
        return;
    c->send_len = c->smtp.out_len;
    c->send_off = 0;
    c->fill = !c->fill;
    ringsink_smtp_out(&c->smtp, c->out[c->fill], RINGSINK_OUT_CAP);
    c->shut = c->want_close;
    conn_send_submit(c);
}


/* conn_send_done - finish a short send, or carry on with the input */
static void
conn_send_done(struct op *op, int res, uint32_t flags)
{
    struct ringsink_conn *c = container_of(op, struct ringsink_conn,
                                           send_op);

    c->send_busy = 0;
    if (!c->closing) {
        if (res <= 0) {
            conn_close(c);
        } else {
            c->send_off += (size_t)res;
            if (c->send_off < c->send_len) {
                conn_send_submit(c);
            } else {
                /*
                 * The last reply (221, 421) is out: FIN now, as smtp-sink
                 * closes right after writing; it also ends our recv, so
                 * the close needs no cancel. A plain shutdown(2): it does
                 * not block, and IORING_OP_SHUTDOWN would run in an io-wq
                 * worker that looks the fd up late, when the number may
                 * already belong to the next connection.
                 */
                if (c->shut)
                    shutdown(c->fd, SHUT_RDWR);
                conn_run(c);
            }
        }
    }
    conn_put(c);
}


/* --- the protocol -------------------------------------------------------- */

/* conn_peer - "ip:port" of the client, looked up once and only if needed */
static const char *
conn_peer(struct ringsink_conn *c)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    if (!c->peer_known) {
        if (getpeername(c->fd, (struct sockaddr *)&ss, &len) == 0)
            ringaddr_format((struct sockaddr *)&ss, c->peer, sizeof c->peer);
        else
            snprintf(c->peer, sizeof c->peer, "?");
        c->peer_known = 1;
    }
    return c->peer;
}


/* conn_answer - reply to the message whose data ended; record it */
static void
conn_answer(struct ringsink_conn *c)
{
    struct ringsink *rs = c->rs;
    struct ringsink_smtp *m = &c->smtp;
    const char *reply;

    switch (c->verdict) {
    case RINGSINK_VERDICT_ACCEPT:
        rs->counts.accepted++;
        ringsink_record_add(&rs->record, m->token, m->token_len,
                            rs->record_fp != NULL ? conn_peer(c) : "-",
                            m->rcpt_ok, m->size);
        reply = "250 2.0.0 Ok: queued";
        break;
    case RINGSINK_VERDICT_TEMPFAIL:
        rs->counts.tempfailed++;
        reply = "451 4.3.0 Error: tempfail share";
        break;
    case RINGSINK_VERDICT_REJECT:
        rs->counts.rejected++;
        reply = "554 5.7.1 Error: reject share";
        break;
    default:
        rs->counts.too_big++;
        reply = "552 5.3.4 Error: message too big";
        break;
    }
    ringsink_smtp_message_done(m, reply);
}


/* conn_timer_done - --latency is over: answer the message, carry on */
static void
conn_timer_done(struct op *op, int res, uint32_t flags)
{
    struct ringsink_conn *c = container_of(op, struct ringsink_conn,
                                           timer_op);

    c->timer_busy = 0;
    if (!c->closing) {
        conn_answer(c);
        conn_run(c);
    }
    conn_put(c);
}


/* conn_message - a message's data ended: decide now, answer now or later */
static void
conn_message(struct ringsink_conn *c)
{
    struct ringsink *rs = c->rs;
    const struct ringsink_smtp *m = &c->smtp;
    double u = ringsink_token_share(m->token, m->token_len);

    if (rs->o.smtp.max_size != 0 && m->size > rs->o.smtp.max_size)
        c->verdict = RINGSINK_VERDICT_TOO_BIG;
    else if (u < rs->o.tempfail_share)
        c->verdict = RINGSINK_VERDICT_TEMPFAIL;
    else if (u < rs->o.tempfail_share + rs->o.reject_share)
        c->verdict = RINGSINK_VERDICT_REJECT;
    else
        c->verdict = RINGSINK_VERDICT_ACCEPT;
    if (rs->o.latency_ms == 0) {
        conn_answer(c);
        return;
    }
    c->ts.tv_sec = rs->o.latency_ms / 1000;
    c->ts.tv_nsec = (long long)(rs->o.latency_ms % 1000) * 1000000;
    io_uring_prep_timeout(loop_sqe(&rs->loop, &c->timer_op), &c->ts, 0, 0);
    c->timer_busy = 1;
    conn_hold(c);
}


/* conn_feed - run the machine over input; returns the bytes it took */
static size_t
conn_feed(struct ringsink_conn *c, const char *p, size_t n)
{
    size_t used = 0;

    /* Each turn takes input, or meets an event that stops or frees room. */
    while (used < n && !c->want_close) {
        enum ringsink_smtp_event ev;

        if (c->smtp.state != RINGSINK_SMTP_CMD &&
            c->smtp.state != RINGSINK_SMTP_DATA)
            break;               /* waiting for a delayed answer */
        used += ringsink_smtp_feed(&c->smtp, p + used, n - used, &ev);
        if (ev == RINGSINK_SMTP_EV_MESSAGE) {
            conn_message(c);
        } else if (ev == RINGSINK_SMTP_EV_CLOSE) {
            c->want_close = 1;
        } else if (ev == RINGSINK_SMTP_EV_FULL) {
            if (c->send_busy)
                break;           /* send_done runs us again */
            conn_flush(c);
        }
    }
    return used;
}


/* conn_backlog_add - keep input the machine could not take yet */
static void
conn_backlog_add(struct ringsink_conn *c, const char *p, size_t n)
{
    size_t live = c->backlog_len - c->backlog_off;

    if (n == 0)
        return;
    if (c->backlog_off > 0) {
        memmove(c->backlog, c->backlog + c->backlog_off, live);
        c->backlog_off = 0;
        c->backlog_len = live;
    }
    if (live + n > c->backlog_cap) {
        size_t cap = c->backlog_cap ? c->backlog_cap : 1024;

        while (cap < live + n)
            cap *= 2;
        c->backlog = xrealloc(c->backlog, cap);
        c->backlog_cap = cap;
    }
    memcpy(c->backlog + c->backlog_len, p, n);
    c->backlog_len += n;
}


static void conn_recv_arm(struct ringsink_conn *c);


/*
 * conn_run - feed the backlog, send replies, close when told or when the
 * peer is gone and everything is answered, pause or resume the recv.
 */
static void
conn_run(struct ringsink_conn *c)
{
    size_t live;

    if (c->closing)
        return;
    if (c->backlog_off < c->backlog_len) {
        c->backlog_off += conn_feed(c, c->backlog + c->backlog_off,
                                    c->backlog_len - c->backlog_off);
        if (c->backlog_off == c->backlog_len)
            c->backlog_off = c->backlog_len = 0;
    }
    conn_flush(c);
    live = c->backlog_len - c->backlog_off;
    if ((c->want_close || (c->peer_eof && live == 0)) && !c->send_busy &&
        c->smtp.out_len == 0 && !c->timer_busy) {
        conn_close(c);
        return;
    }
    if (live > RINGSINK_BACKLOG_MAX && c->recv_armed && !c->paused) {
        struct io_uring_sqe *sqe = loop_sqe(&c->rs->loop, &c->pause_op);

        c->paused = 1;
        io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)&c->recv_op, 0);
        conn_hold(c);
    } else if (c->paused && live < RINGSINK_BACKLOG_MAX / 2) {
        c->paused = 0;
        if (!c->recv_armed && !c->peer_eof)
            conn_recv_arm(c);
    }
}


/* conn_input - received bytes: straight to the machine when nothing waits */
static void
conn_input(struct ringsink_conn *c, const char *p, size_t n)
{
    if (c->backlog_off == c->backlog_len) {
        size_t used = conn_feed(c, p, n);

        if (!c->want_close)
            conn_backlog_add(c, p + used, n - used);
    } else {
        conn_backlog_add(c, p, n);
    }
    conn_run(c);
}


/* --- receiving ----------------------------------------------------------- */

/* conn_recv_done - input, EOF, or the end of the multishot */
static void
conn_recv_done(struct op *op, int res, uint32_t flags)
{
    struct ringsink_conn *c = container_of(op, struct ringsink_conn,
                                           recv_op);
    struct ringsink *rs = c->rs;

    conn_hold(c);
    if (!(flags & IORING_CQE_F_MORE)) {
        c->recv_armed = 0;
        c->inflight--;           /* the multishot is over; we still hold */
    }
    if (res > 0) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;

        ASSERT(flags & IORING_CQE_F_BUFFER);
        if (!c->closing)
            conn_input(c, ringbufs_data(&rs->bufs, bid), (size_t)res);
        ringbufs_return(&rs->bufs, bid);
    } else if (res == 0) {
        /* The peer is done sending: answer what it sent, then close. */
        c->peer_eof = 1;
        conn_run(c);
    } else if (res != -ENOBUFS && res != -ECANCELED) {
        conn_close(c);
    }
    if (!c->closing && !c->recv_armed && !c->paused && !c->peer_eof)
        conn_recv_arm(c);
    conn_put(c);
}


/* conn_recv_arm - multishot recv into the provided buffers */
static void
conn_recv_arm(struct ringsink_conn *c)
{
    struct io_uring_sqe *sqe;

    ASSERT(!c->recv_armed);
    sqe = loop_sqe(&c->rs->loop, &c->recv_op);
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = RINGSINK_BGID;
    c->recv_armed = 1;
    conn_hold(c);
}


/* --- accepting ----------------------------------------------------------- */

/* conn_get - a connection from the pool, or a new one */
static struct ringsink_conn *
conn_get(struct ringsink *rs)
{
    struct ringsink_conn *c = rs->free_list;

    if (c != NULL) {
        rs->free_list = c->next_free;
        return c;
    }
    c = xcalloc(1, sizeof *c);
    c->rs = rs;
    c->out[0] = xmalloc(RINGSINK_OUT_CAP);
    c->out[1] = xmalloc(RINGSINK_OUT_CAP);
    c->recv_op.done = conn_recv_done;
    c->send_op.done = conn_send_done;
    c->cancel_op.done = conn_cancel_done;
    c->pause_op.done = conn_pause_done;
    c->timer_op.done = conn_timer_done;
    c->next_all = rs->all;
    rs->all = c;
    return c;
}


/* conn_start - a new connection: greet it, arm its recv */
static void
conn_start(struct ringsink *rs, int fd)
{
    static const char busy[] = "421 4.7.0 ringsink Error: too many "
                               "sessions\r\n";
    struct ringsink_conn *c;

    rs->counts.sessions++;
    if (rs->active >= rs->o.max_sessions) {
        /* XXX: blocking write and close; refusals are rare and a fresh
         * socket's buffer takes 40 bytes without waiting. */
        rs->counts.sessions_refused++;
        if (write(fd, busy, sizeof busy - 1) < 0) {
            /* the client is gone already: nothing to tell it */
        }
        close(fd);
        return;
    }
    c = conn_get(rs);
    c->fd = fd;
    c->inflight = 0;
    c->recv_armed = c->send_busy = c->timer_busy = c->paused = 0;
    c->closing = c->want_close = c->peer_eof = c->peer_known = 0;
    c->shut = 0;
    c->fill = 0;
    c->send_len = c->send_off = 0;
    c->backlog_len = c->backlog_off = 0;
    rs->active++;
    ringsink_smtp_init(&c->smtp, &rs->o.smtp, &rs->counts);
    ringsink_smtp_out(&c->smtp, c->out[0], RINGSINK_OUT_CAP);
    ringsink_smtp_greet(&c->smtp);
    conn_hold(c);
    conn_recv_arm(c);
    conn_flush(c);
    conn_put(c);
}


static void ringsink_accept_arm(struct ringsink *rs);


/* ringsink_accept_done - a new connection, or the multishot ended */
static void
ringsink_accept_done(struct op *op, int res, uint32_t flags)
{
    struct ringsink *rs = container_of(op, struct ringsink, accept_op);

    if (!(flags & IORING_CQE_F_MORE))
        rs->accept_armed = 0;
    if (res >= 0)
        conn_start(rs, res);
    if (!rs->accept_armed) {
        /* After an error (EMFILE...) wait a little instead of spinning. */
        if (res < 0)
            rs->accept_retry_ms = now_ms() + RINGSINK_ACCEPT_RETRY_MS;
        else
            ringsink_accept_arm(rs);
    }
}


/* ringsink_accept_arm - multishot accept on the listener */
static void
ringsink_accept_arm(struct ringsink *rs)
{
    struct io_uring_sqe *sqe = loop_sqe(&rs->loop, &rs->accept_op);

    io_uring_prep_multishot_accept(sqe, rs->lfd, NULL, NULL, SOCK_CLOEXEC);
    rs->accept_armed = 1;
    rs->accept_retry_ms = 0;
}


/* --- options and reports ------------------------------------------------- */

/* ringsink_usage - the --help text */
static void
ringsink_usage(FILE *fp)
{
    fprintf(fp,
"usage: ringsink [options] [HOST:PORT]\n"
"\n"
"io_uring SMTP sink. Listens on HOST:PORT (default 127.0.0.1:0: the kernel\n"
"picks the port); the first stdout line is \"ringsink listening on ADDR\".\n"
"Accepted messages are discarded; their tokens (X-Ringload-Token, or else\n"
"Message-ID) are counted, duplicates noticed, and optionally recorded.\n"
"\n"
"  --record FILE          append \"token peer rcpts size\" per accepted\n"
"                         message (flushed each second and at exit)\n"
"  --json FILE            write the counts as JSON at exit\n"
"  --tempfail-rcpt STR    recipients containing STR get 451 4.2.0\n"
"  --reject-rcpt STR      recipients containing STR get 550 5.1.1\n"
"  --tempfail-share P     fraction P (0..1) of messages get 451 after data\n"
"  --reject-share P       fraction P of messages get 554 after data\n"
"                         (both chosen by token hash: runs repeat)\n"
"  --latency MS           delay each reply to a final dot by MS ms\n"
"  --max-sessions N       concurrent sessions (default 10000, max %u);\n"
"                         beyond: 421 and close\n"
"  --reply-421-after N    after N messages on a connection, answer the\n"
"                         next command with 421 and close\n"
"  --max-size BYTES       advertised SIZE; bigger messages get 552\n"
"                         (default 0: no limit)\n"
"  --hostname NAME        name in the greeting and EHLO (default ringsink)\n"
"  --progress MS          print the counts line (\"progress\") every MS ms\n"
"  -c, --cpu N            pin to CPU N\n"
"  -h, --help             this text\n"
"\n"
"SIGUSR1 prints the counts to stderr; SIGTERM/SIGINT print them, flush the\n"
"record and the JSON, and exit 0. A counts line carries CLOCK_MONOTONIC\n"
"(\"at S\") and the transactions in flight: between DATA and the reply to\n"
"their dot.\n", RINGSINK_SESSIONS_MAX);
}


/* ringsink_share - parse a fraction in [0, 1] */
static int
ringsink_share(const char *name, const char *s, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0.0 && v <= 1.0)) {
        fprintf(stderr, "ringsink: %s: expected 0..1, got '%s'\n", name, s);
        return -1;
    }
    *out = v;
    return 0;
}


/* ringsink_number - parse an unsigned value in [lo, hi] */
static int
ringsink_number(const char *name, const char *s, unsigned long long lo,
                unsigned long long hi, unsigned long long *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < lo ||
        v > hi) {
        fprintf(stderr, "ringsink: %s: expected %llu..%llu, got '%s'\n",
                name, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}


/* ringsink_options - fill o from argv; 0, or 2 for a usage error */
static int
ringsink_options(struct ringsink_opts *o, int argc, char **argv)
{
    enum {
        OPT_RECORD = 256, OPT_JSON, OPT_TF_RCPT, OPT_RJ_RCPT, OPT_TF_SHARE,
        OPT_RJ_SHARE, OPT_LATENCY, OPT_MAX_SESSIONS, OPT_421, OPT_MAX_SIZE,
        OPT_HOSTNAME, OPT_PROGRESS,
    };
    static const struct option longopts[] = {
        { "record", required_argument, NULL, OPT_RECORD },
        { "json", required_argument, NULL, OPT_JSON },
        { "tempfail-rcpt", required_argument, NULL, OPT_TF_RCPT },
        { "reject-rcpt", required_argument, NULL, OPT_RJ_RCPT },
        { "tempfail-share", required_argument, NULL, OPT_TF_SHARE },
        { "reject-share", required_argument, NULL, OPT_RJ_SHARE },
        { "latency", required_argument, NULL, OPT_LATENCY },
        { "max-sessions", required_argument, NULL, OPT_MAX_SESSIONS },
        { "reply-421-after", required_argument, NULL, OPT_421 },
        { "max-size", required_argument, NULL, OPT_MAX_SIZE },
        { "hostname", required_argument, NULL, OPT_HOSTNAME },
        { "progress", required_argument, NULL, OPT_PROGRESS },
        { "cpu", required_argument, NULL, 'c' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    unsigned long long v;
    int ch;

    memset(o, 0, sizeof *o);
    o->listen = "127.0.0.1:0";
    o->max_sessions = 10000;
    o->cpu = -1;
    o->smtp.hostname = "ringsink";
    o->smtp.rcpt_max = RINGSINK_RCPT_MAX;
    while ((ch = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
        switch (ch) {
        case OPT_RECORD:
            o->record_path = optarg;
            break;
        case OPT_JSON:
            o->json_path = optarg;
            break;
        case OPT_TF_RCPT:
            o->smtp.tempfail_rcpt = optarg;
            break;
        case OPT_RJ_RCPT:
            o->smtp.reject_rcpt = optarg;
            break;
        case OPT_TF_SHARE:
            if (ringsink_share("--tempfail-share", optarg,
                               &o->tempfail_share) < 0)
                return 2;
            break;
        case OPT_RJ_SHARE:
            if (ringsink_share("--reject-share", optarg,
                               &o->reject_share) < 0)
                return 2;
            break;
        case OPT_LATENCY:
            if (ringsink_number("--latency", optarg, 0, 3600000, &v) < 0)
                return 2;
            o->latency_ms = (unsigned)v;
            break;
        case OPT_MAX_SESSIONS:
            if (ringsink_number("--max-sessions", optarg, 1,
                                RINGSINK_SESSIONS_MAX, &v) < 0)
                return 2;
            o->max_sessions = (unsigned)v;
            break;
        case OPT_421:
            if (ringsink_number("--reply-421-after", optarg, 1, UINT32_MAX,
                                &v) < 0)
                return 2;
            o->smtp.reply_421_after = (unsigned)v;
            break;
        case OPT_MAX_SIZE:
            if (ringsink_number("--max-size", optarg, 0, UINT64_MAX,
                                &v) < 0)
                return 2;
            o->smtp.max_size = v;
            break;
        case OPT_HOSTNAME:
            if (optarg[0] == '\0' || strlen(optarg) > 64 ||
                strpbrk(optarg, " \t\r\n") != NULL) {
                fprintf(stderr, "ringsink: --hostname: 1..64 characters, "
                        "no spaces\n");
                return 2;
            }
            o->smtp.hostname = optarg;
            break;
        case OPT_PROGRESS:
            if (ringsink_number("--progress", optarg, 10, 3600000, &v) < 0)
                return 2;
            o->progress_ms = (unsigned)v;
            break;
        case 'c':
            if (ringsink_number("-c", optarg, 0, CPU_SETSIZE - 1, &v) < 0)
                return 2;
            o->cpu = (int)v;
            break;
        case 'h':
            ringsink_usage(stdout);
            exit(0);
        default:
            ringsink_usage(stderr);
            return 2;
        }
    }
    if (optind < argc - 1) {
        ringsink_usage(stderr);
        return 2;
    }
    if (optind == argc - 1)
        o->listen = argv[optind];
    if (o->tempfail_share + o->reject_share > 1.0) {
        fprintf(stderr, "ringsink: the shares add up to more than 1\n");
        return 2;
    }
    if (ringaddr_parse(o->listen, &o->addr, &o->addrlen) < 0) {
        fprintf(stderr, "ringsink: bad address '%s' (HOST:PORT)\n",
                o->listen);
        return 2;
    }
    return 0;
}


/*
 * ringsink_in_flight - transactions between DATA and the reply to their dot,
 * now: *in_data are still receiving their data, *awaiting have ended it
 * and wait for their reply (--latency). A walk over the connections: called
 * once per report, never per message.
 */
static void
ringsink_in_flight(const struct ringsink *rs, unsigned *in_data,
                   unsigned *awaiting)
{
    const struct ringsink_conn *c;

    *in_data = *awaiting = 0;
    for (c = rs->all; c != NULL; c = c->next_all) {
        if (c->fd < 0)
            continue;
        if (c->smtp.state == RINGSINK_SMTP_DATA)
            (*in_data)++;
        else if (c->smtp.state == RINGSINK_SMTP_VERDICT)
            (*awaiting)++;
    }
}


/*
 * ringsink_report - the counts, one line on stderr. "at" is
 * CLOCK_MONOTONIC in seconds, so that a script can place the line on its
 * own clock (Python's time.monotonic() reads the same clock).
 */
static void
ringsink_report(const struct ringsink *rs, const char *why)
{
    const struct ringsink_counts *k = &rs->counts;
    const struct ringsink_record *r = &rs->record;
    unsigned in_data, awaiting;

    ringsink_in_flight(rs, &in_data, &awaiting);
    fprintf(stderr, "ringsink: %s: at %.6f sessions %llu (active %u, "
            "refused %llu), messages %llu: accepted %llu tempfailed %llu "
            "rejected %llu too-big %llu; rcpts accepted %llu tempfailed "
            "%llu rejected %llu; 421 %llu; tokens unique %zu duplicate %llu "
            "untokened %llu; bytes %llu; in flight %u (in data %u, awaiting "
            "reply %u)\n", why, (double)now_us() / 1e6,
            (unsigned long long)k->sessions, rs->active,
            (unsigned long long)k->sessions_refused,
            (unsigned long long)k->messages,
            (unsigned long long)k->accepted,
            (unsigned long long)k->tempfailed,
            (unsigned long long)k->rejected,
            (unsigned long long)k->too_big,
            (unsigned long long)k->rcpt_accepted,
            (unsigned long long)k->rcpt_tempfailed,
            (unsigned long long)k->rcpt_rejected,
            (unsigned long long)k->closed_421, r->unique,
            (unsigned long long)r->duplicates,
            (unsigned long long)r->untokened,
            (unsigned long long)k->bytes, in_data + awaiting, in_data,
            awaiting);
    fflush(stderr);
}


/* ringsink_json_str - s as a JSON string */
static void
ringsink_json_str(FILE *fp, const char *s)
{
    putc('"', fp);
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;

        if (ch == '"' || ch == '\\')
            fprintf(fp, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            fprintf(fp, "\\u%04x", ch);
        else
            putc(ch, fp);
    }
    putc('"', fp);
}


/* ringsink_json - the counts as one JSON object in path */
static int
ringsink_json(const struct ringsink *rs, const char *path)
{
    const struct ringsink_counts *k = &rs->counts;
    const struct ringsink_record *r = &rs->record;
    FILE *fp = fopen(path, "w");
    unsigned i;

    if (fp == NULL)
        return -errno;
    fprintf(fp, "{\n  \"tool\": \"ringsink\",\n  \"listen\": ");
    ringsink_json_str(fp, rs->listen_text);
    fprintf(fp, ",\n  \"elapsed_s\": %.3f,\n",
            (double)(now_us() - rs->start_us) / 1e6);
    fprintf(fp, "  \"options\": {\"tempfail_share\": %g, \"reject_share\": "
            "%g, \"latency_ms\": %u, \"max_sessions\": %u, "
            "\"reply_421_after\": %u, \"max_size\": %llu},\n",
            rs->o.tempfail_share, rs->o.reject_share, rs->o.latency_ms,
            rs->o.max_sessions, rs->o.smtp.reply_421_after,
            (unsigned long long)rs->o.smtp.max_size);
    fprintf(fp, "  \"sessions\": %llu,\n  \"sessions_refused\": %llu,\n"
            "  \"messages\": %llu,\n  \"accepted\": %llu,\n"
            "  \"tempfailed\": %llu,\n  \"rejected\": %llu,\n"
            "  \"too_big\": %llu,\n  \"rcpt_accepted\": %llu,\n"
            "  \"rcpt_tempfailed\": %llu,\n  \"rcpt_rejected\": %llu,\n"
            "  \"closed_421\": %llu,\n  \"bad_commands\": %llu,\n"
            "  \"bytes\": %llu,\n",
            (unsigned long long)k->sessions,
            (unsigned long long)k->sessions_refused,
            (unsigned long long)k->messages,
            (unsigned long long)k->accepted,
            (unsigned long long)k->tempfailed,
            (unsigned long long)k->rejected,
            (unsigned long long)k->too_big,
            (unsigned long long)k->rcpt_accepted,
            (unsigned long long)k->rcpt_tempfailed,
            (unsigned long long)k->rcpt_rejected,
            (unsigned long long)k->closed_421,
            (unsigned long long)k->bad_commands,
            (unsigned long long)k->bytes);
    fprintf(fp, "  \"unique_tokens\": %zu,\n  \"duplicate_tokens\": %llu,\n"
            "  \"untokened\": %llu,\n  \"duplicates\": [", r->unique,
            (unsigned long long)r->duplicates,
            (unsigned long long)r->untokened);
    for (i = 0; i < r->dups_listed; i++) {
        if (i > 0)
            fprintf(fp, ", ");
        ringsink_json_str(fp, r->dups[i]);
    }
    fprintf(fp, "]\n}\n");
    if (fclose(fp) != 0)
        return -errno;
    return 0;
}


/* --- the run ------------------------------------------------------------- */

/* ringsink_signal - SIGUSR1: report; SIGTERM/SIGINT: stop */
static void
ringsink_signal(int sig)
{
    if (sig == SIGUSR1)
        ringsink_report_wanted = 1;
    else
        ringsink_stop = 1;
}


/* ringsink_listen - the listening socket; its address in listen_text */
static int
ringsink_listen(struct ringsink *rs)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int one = 1;
    int fd = socket(rs->o.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* 4096: the machine's somaxconn (PLATFORM.md 9). */
    if (bind(fd, (struct sockaddr *)&rs->o.addr, rs->o.addrlen) < 0 ||
        listen(fd, 4096) < 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
        int rc = -errno;

        close(fd);
        return rc;
    }
    ringaddr_format((struct sockaddr *)&ss, rs->listen_text,
                    sizeof rs->listen_text);
    rs->lfd = fd;
    return 0;
}


/* ringsink_setup - pin, listen, ring, buffers, record file */
static int
ringsink_setup(struct ringsink *rs)
{
    int rc;

    if (rs->o.cpu >= 0) {
        cpu_set_t set;

        CPU_ZERO(&set);
        CPU_SET(rs->o.cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) {
            fprintf(stderr, "ringsink: cpu %d: %s\n", rs->o.cpu,
                    strerror(errno));
            return -1;
        }
    }
    rc = ringsink_listen(rs);
    if (rc < 0) {
        fprintf(stderr, "ringsink: listen on %s: %s\n", rs->o.listen,
                strerror(-rc));
        return -1;
    }
    /* A big CQ: multishot accept and recv end when the CQ fills. */
    rc = loop_init(&rs->loop, 512, 16384);
    if (rc < 0) {
        fprintf(stderr, "ringsink: io_uring: %s\n", strerror(-rc));
        return -1;
    }
    rc = ringbufs_init(&rs->bufs, &rs->loop.ring, RINGSINK_BGID,
                       RINGSINK_BUF_COUNT, RINGSINK_BUF_SIZE);
    if (rc < 0) {
        fprintf(stderr, "ringsink: buffer ring: %s\n", strerror(-rc));
        return -1;
    }
    if (rs->o.record_path != NULL) {
        rs->record_fp = fopen(rs->o.record_path, "a");
        if (rs->record_fp == NULL) {
            fprintf(stderr, "ringsink: %s: %s\n", rs->o.record_path,
                    strerror(errno));
            return -1;
        }
        setvbuf(rs->record_fp, NULL, _IOFBF, 1 << 20);
    }
    ringsink_record_init(&rs->record, rs->record_fp);
    rs->accept_op.done = ringsink_accept_done;
    return 0;
}


/*
 * ringsink_turn - one loop turn; waits for a batch of completions while
 * the previous turn brought a full one (see RINGSINK_BATCH), otherwise
 * for the first completion or the tick. *batch says which, for next time.
 */
static void
ringsink_turn(struct ringsink *rs, int *batch)
{
    uint64_t cqes = rs->loop.cqes;

    if (*batch) {
        struct __kernel_timespec ts = { 0, RINGSINK_BATCH_US * 1000 };
        struct io_uring_cqe *cqe;
        int rc = io_uring_submit_and_wait_timeout(&rs->loop.ring, &cqe,
                                                  RINGSINK_BATCH, &ts, NULL);

        if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY)
            panic("io_uring_submit_and_wait_timeout: %s", strerror(-rc));
        /* The completions are due now: this turn reaps without waiting. */
        loop_run_once(&rs->loop, 0);
    } else {
        loop_run_once(&rs->loop, RINGSINK_TICK_MS);
    }
    *batch = rs->loop.cqes - cqes >= RINGSINK_BATCH;
}


/* ringsink_cleanup - free what the run allocated (for leak checkers) */
static void
ringsink_cleanup(struct ringsink *rs)
{
    struct ringsink_conn *c = rs->all, *next;

    /* The ring goes first: nothing in flight may outlive a buffer. */
    ringbufs_fini(&rs->bufs);
    loop_fini(&rs->loop);
    while (c != NULL) {
        next = c->next_all;
        if (c->fd >= 0)
            close(c->fd);
        free(c->out[0]);
        free(c->out[1]);
        free(c->backlog);
        free(c);
        c = next;
    }
    close(rs->lfd);
    ringsink_record_fini(&rs->record);
}


/* main - options, setup, the loop, the final report */
int
main(int argc, char **argv)
{
    static struct ringsink rs;
    struct sigaction sa;
    uint64_t next_flush, next_progress;
    int batch = 0;
    int rc;

    rc = ringsink_options(&rs.o, argc, argv);
    if (rc != 0)
        return rc;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = ringsink_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (ringsink_setup(&rs) < 0)
        return 1;
    printf("ringsink listening on %s\n", rs.listen_text);
    fflush(stdout);

    rs.start_us = now_us();
    next_flush = now_ms() + 1000;
    next_progress = now_ms() + rs.o.progress_ms;
    ringsink_accept_arm(&rs);
    while (!ringsink_stop) {
        uint64_t now;

        ringsink_turn(&rs, &batch);
        now = now_ms();
        if (ringsink_report_wanted) {
            ringsink_report_wanted = 0;
            ringsink_report(&rs, "SIGUSR1");
        }
        if (rs.o.progress_ms != 0 && now >= next_progress) {
            ringsink_report(&rs, "progress");
            next_progress = now + rs.o.progress_ms;
        }
        if (rs.record_fp != NULL && now >= next_flush) {
            fflush(rs.record_fp);
            next_flush = now + 1000;
        }
        if (!rs.accept_armed && rs.accept_retry_ms != 0 &&
            now >= rs.accept_retry_ms)
            ringsink_accept_arm(&rs);
    }

    rc = 0;
    if (rs.record_fp != NULL && fclose(rs.record_fp) != 0) {
        fprintf(stderr, "ringsink: %s: %s\n", rs.o.record_path,
                strerror(errno));
        rc = 1;
    }
    rs.record_fp = NULL;
    ringsink_report(&rs, "exit");
    if (rs.o.json_path != NULL) {
        int jrc = ringsink_json(&rs, rs.o.json_path);

        if (jrc < 0) {
            fprintf(stderr, "ringsink: %s: %s\n", rs.o.json_path,
                    strerror(-jrc));
            rc = 1;
        }
    }
    ringsink_cleanup(&rs);
    return rc;
}
