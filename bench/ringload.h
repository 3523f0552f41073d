/*
 * ringload - the load generator's shared state (ringload.c runs it,
 *            ringload_conn.c drives the connections, ringload_msg.c
 *            renders the messages)
 *
 * SYNOPSIS
 *   int  ringload_claim(struct ringload *rl);
 *   void ringload_unclaim(struct ringload *rl);
 *   int  ringload_rate_take(struct ringload *rl);
 *   void ringload_txn_done(struct ringload *rl, struct ringload_conn *c,
 *                          int code);
 *
 *   void ringload_conn_init(struct ringload *rl, struct ringload_conn *c,
 *                           unsigned slot);
 *   void ringload_conn_start(struct ringload_conn *c);
 *   void ringload_conn_resume(struct ringload_conn *c);
 *   void ringload_conn_tick(struct ringload *rl);
 *   void ringload_conn_abort(struct ringload_conn *c);
 *   const char *ringload_conn_state_name(enum ringload_conn_state st);
 *
 *   int  ringload_msg_init(struct ringload_msg *m, const char *run_id,
 *                          const char *from, const char *to,
 *                          unsigned rcpts, size_t size, const char *helo);
 *   void ringload_msg_patch(const struct ringload_msg *m, char *head,
 *                           uint32_t seq);
 *   void ringload_msg_fini(struct ringload_msg *m);
 * DESCRIPTION
 *   One process, one thread, one io_uring. Every connection ("conn") is a
 *   fixed slot in the ring's file table, so sockets are created, used and
 *   closed without ever entering the process's fd table.
 *
 *   A message is "claimed" (ringload_claim) before a connection is opened
 *   for it, so that the run never opens a connection it has no message
 *   for; the claim turns into a transaction when MAIL is sent, or is
 *   released (ringload_unclaim) if the connection fails first. -m bounds
 *   the claims; -D and --timeout stop them.
 *
 *   ringload_rate_take() takes one token from the -r bucket (always 1
 *   without -r). A conn that finds it empty waits on rl->ratewait; the
 *   main loop resumes it (ringload_conn_resume) when tokens accrue.
 *
 *   ringload_txn_done() counts the outcome of one transaction: code is
 *   the reply that decided it (2xx accepted, 4xx, 5xx), or 0 when it ended
 *   without one (timeout, reset, EOF, protocol error).
 *
 *   ringload_conn_tick() (once per loop turn) expires conns whose phase
 *   timed out and reconnects those whose back-off ended.
 * OWNERSHIP
 *   struct ringload and the conn array live for the whole run (startup
 *   malloc). Nothing is allocated per message or per connection.
 * THREADS
 *   Single-threaded: the ring is SINGLE_ISSUER|DEFER_TASKRUN (core loop).
 * SEE ALSO
 *   ringsink.c, ringhist.h, core/loop.h
 */
#ifndef RINGMAIL_RINGLOAD_H
#define RINGMAIL_RINGLOAD_H

#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "loop.h"
#include "ringbufs.h"
#include "ringhist.h"

#define RINGLOAD_SESSIONS_MAX 10000   /* file-table slots; NOFILE is 20000 */
#define RINGLOAD_RCPTS_MAX 100
#define RINGLOAD_SIZE_MAX (256u << 20) /* one shared padding buffer */
#define RINGLOAD_SEQ_DIGITS 10        /* a token's number, zero-padded */
#define RINGLOAD_RUN_ID_MAX 64
#define RINGLOAD_TOKEN_MAX (RINGLOAD_RUN_ID_MAX + 1 + RINGLOAD_SEQ_DIGITS)
/* replies awaited at once: MAIL, RCPTs, DATA, dot, QUIT */
#define RINGLOAD_EXPECT_MAX (RINGLOAD_RCPTS_MAX + 4)
/* a reply line is kept up to here: the code and "PIPELINING" fit */
#define RINGLOAD_LINE_MAX 64
#define RINGLOAD_BGID 7

struct ringload_opts {
    int argc;                     /* the command line, for the JSON */
    char **argv;
    const char *target;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    unsigned sessions;
    uint64_t messages;            /* 0: unbounded (with -D) */
    unsigned duration_s;          /* 0: none */
    unsigned timeout_s;           /* hard cap on the whole run */
    size_t size;
    unsigned per_conn;            /* 0: unlimited reuse */
    int pipelining;
    unsigned rate;                /* messages/s, 0: unlimited */
    const char *from;
    const char *to;
    unsigned rcpts;
    const char *helo;
    char run_id[RINGLOAD_RUN_ID_MAX + 1];
    const char *json_path;
    const char *tokens_path;
    int cpu;                      /* -1: not pinned */
    unsigned phase_timeout_ms;
    unsigned retries;
    unsigned retry_delay_ms;
    int graceful_close;           /* FIN instead of smtp-source's RST */
    int quiet;
};

/* Replies are classed by first digit; class 0 is "no reply". */
struct ringload_stats {
    uint64_t started;             /* MAIL sent */
    uint64_t sent;                /* message body and dot sent */
    uint64_t ok;                  /* outcomes: 2xx after the dot */
    uint64_t tempfail;            /* 4xx anywhere in the transaction */
    uint64_t permfail;            /* 5xx anywhere in the transaction */
    uint64_t error;               /* no reply: timeout, reset, EOF */
    uint64_t replies[6];          /* every reply, by class (0: odd code) */
    uint64_t connects;            /* connections established */
    uint64_t connect_errors;
    uint64_t refused;             /* greeting or EHLO/HELO not 2xx */
    uint64_t closed_421;
    uint64_t closed_by_peer;      /* EOF or reset before QUIT's reply */
    uint64_t timeouts;
    uint64_t protocol_errors;
    uint64_t gave_up;             /* conns out of retries */
    uint64_t pipelined_conns;
    uint64_t linger_errors;       /* SO_LINGER refused: FIN closes */
};

struct ringload_msg {
    char *envelope;               /* MAIL, RCPT..., DATA: contiguous */
    size_t cmd_off[RINGLOAD_RCPTS_MAX + 3];  /* command i: [off i, off i+1) */
    unsigned rcpts;
    char *ehlo;
    size_t ehlo_len;
    char *helo;
    size_t helo_len;
    char *head;                   /* header block template, blank line */
    size_t head_len;
    size_t seq_off[2];            /* the seq digits: token, Message-ID */
    size_t token_off;             /* "<run-id>-<seq>" inside head */
    size_t token_len;
    char *tail;                   /* padding, ".\r\n", "QUIT\r\n" */
    size_t tail_len;              /* up to and with the dot line */
    size_t tail_quit_len;         /* the same plus QUIT */
    size_t size;                  /* message bytes before the dot line */
};

enum ringload_conn_state {
    RINGLOAD_CONN_IDLE,
    RINGLOAD_CONN_CONNECTING,
    RINGLOAD_CONN_GREETING,
    RINGLOAD_CONN_EHLO,
    RINGLOAD_CONN_READY,          /* between transactions */
    RINGLOAD_CONN_RATEWAIT,       /* READY, waiting for a -r token */
    RINGLOAD_CONN_TXN,
    RINGLOAD_CONN_QUIT,
    RINGLOAD_CONN_CLOSING,
    RINGLOAD_CONN_BACKOFF,
    RINGLOAD_CONN_DONE,
};

struct ringload_conn;

struct ringload_list {
    struct ringload_conn *head;
    struct ringload_conn *tail;
    unsigned count;
};

struct ringload_conn {
    struct ringload *rl;
    unsigned slot;                /* fixed file index */
    enum ringload_conn_state state;
    unsigned inflight;            /* ops in flight plus handler holds */

    struct op connect_op;
    struct op recv_op;
    struct op send_op;
    struct op cancel_op;
    struct op defer_op;
    unsigned recv_armed : 1;
    unsigned send_busy : 1;
    unsigned connecting : 1;
    unsigned closing : 1;
    unsigned close_failed : 1;    /* the connection ended in a failure */
    unsigned pipelining : 1;      /* offered and wanted */
    unsigned ehlo_pipelining : 1; /* seen in this EHLO reply */
    unsigned claim : 1;           /* holds one claimed message */
    unsigned txn_active : 1;
    unsigned got_quit_reply : 1;

    /* the transaction */
    uint32_t seq;
    unsigned rcpt_next;
    unsigned rcpt_ok;
    int rcpt_fail;                /* last RCPT failure code */
    int txn_fail;                 /* first reply that sank the txn */
    uint64_t dot_us;
    unsigned msgs_on_conn;
    unsigned answered_on_conn;    /* txns that ended on a reply, not 421 */
    unsigned failures;            /* consecutive failed connections */

    /* replies awaited, oldest first (a ring of RINGLOAD_EXPECT_MAX) */
    uint8_t expect[RINGLOAD_EXPECT_MAX];
    unsigned expect_head;
    unsigned expect_len;
    char line[RINGLOAD_LINE_MAX];
    unsigned line_len;

    /* sending: one send in flight; one more may queue behind it */
    struct msghdr msg;
    struct iovec iov[2];
    struct iovec next_iov[2];
    unsigned next_queued : 1;
    unsigned send_overflow : 1;   /* a third send was asked for: close */

    char *head;                   /* this conn's copy of msg.head */

    uint64_t deadline_ms;         /* deadline or back-off end */
    struct ringload_list *list;
    struct ringload_conn *prev;
    struct ringload_conn *next;
};

struct ringload {
    struct ringload_opts o;
    struct loop loop;
    struct ringbufs bufs;
    struct ringload_msg msg;
    struct ringload_conn *conns;
    struct op linger_op;          /* only failures complete */

    struct ringload_list deadline;   /* connected: ordered by deadline */
    struct ringload_list backoff;    /* waiting to reconnect */
    struct ringload_list ratewait;   /* waiting for a rate token */

    uint64_t now_ms;              /* refreshed once per loop turn */
    uint64_t start_us;
    uint64_t end_us;
    uint64_t claimed;             /* started + claims held by conns */
    uint32_t next_seq;
    unsigned active;              /* conns not DONE */
    int stopping;                 /* -D reached: no new transactions */
    int aborting;                 /* --timeout reached */
    const char *end_reason;

    double rate_tokens;
    uint64_t rate_us;

    struct ringload_stats st;
    struct ringhist hist;         /* whole run */
    struct ringhist hist_tick;    /* since the last progress line */
    FILE *tokens_fp;
};

int ringload_claim(struct ringload *rl);
void ringload_unclaim(struct ringload *rl);
int ringload_rate_take(struct ringload *rl);
void ringload_txn_done(struct ringload *rl, struct ringload_conn *c,
                       int code);

void ringload_conn_init(struct ringload *rl, struct ringload_conn *c,
                        unsigned slot);
void ringload_conn_start(struct ringload_conn *c);
void ringload_conn_resume(struct ringload_conn *c);
void ringload_conn_tick(struct ringload *rl);
void ringload_conn_abort(struct ringload_conn *c);
const char *ringload_conn_state_name(enum ringload_conn_state st);

int ringload_msg_init(struct ringload_msg *m, const char *run_id,
                      const char *from, const char *to, unsigned rcpts,
                      size_t size, const char *helo);
void ringload_msg_patch(const struct ringload_msg *m, char *head,
                        uint32_t seq);
void ringload_msg_fini(struct ringload_msg *m);

#endif
