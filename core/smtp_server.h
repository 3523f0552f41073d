/*
 * smtp_server - the inbound ESMTP protocol state machine: bytes in, replies
 *               and events out, no I/O inside
 *
 * SYNOPSIS
 *   void   smtp_server_init(struct smtp_server *s, const struct smtp_limits *lim,
 *                           struct arena *session, int relay_ok,
 *                           const char *peer_ip);
 *   void   smtp_server_greet(struct smtp_server *s);
 *   void   smtp_server_refuse(struct smtp_server *s, const char *reply);
 *   size_t smtp_server_feed(struct smtp_server *s, const char *buf, size_t len,
 *                           enum smtp_event *ev);
 *   void   smtp_server_commit_done(struct smtp_server *s, int res);
 *   void   smtp_server_timeout(struct smtp_server *s);
 *   void   smtp_server_shutdown(struct smtp_server *s);
 *   void   smtp_server_fini(struct smtp_server *s);
 * DESCRIPTION
 *   RFC 5321 with PIPELINING (2920), SIZE (1870), 8BITMIME and
 *   ENHANCEDSTATUSCODES (2034, 3463). Commands: EHLO HELO MAIL RCPT DATA
 *   RSET NOOP QUIT VRFY HELP.
 *
 *   The driver (session.c) owns the socket. It calls smtp_server_feed()
 *   with whatever bytes arrived; the machine consumes what it can, appends
 *   replies to s->out, and returns how many bytes it consumed. It stops
 *   early and reports an event when the driver must act:
 *     SMTP_EV_MESSAGE  a message is complete (s->sender, s->rcpts,
 *                      s->body): commit it, then call
 *                      smtp_server_commit_done(); until then the machine
 *                      consumes nothing (pipelined input waits).
 *     SMTP_EV_CLOSE    send what is in s->out, then close the connection.
 *     SMTP_EV_FLUSH    s->out is over SMTP_OUT_HIGH bytes: send it before
 *                      feeding the rest (a client pipelining without reading
 *                      replies cannot make us buffer without bound).
 *     SMTP_EV_POLICY   a command in s->policy_mask passed its syntax
 *                      checks: s->pend_cmd and s->pend_arg say which and
 *                      what; run policy, then smtp_server_policy_done()
 *                      with the verdict; until then nothing is consumed.
 *   A complete message (SMTP_EV_MESSAGE) may also be refused by policy
 *   instead of committed: smtp_server_message_refused().
 *   The driver keeps unconsumed bytes and feeds them again later.
 *
 *   Lines end in CRLF. A bare LF or bare CR in a command is refused (500),
 *   and a message containing one is refused after its end (550 5.6.0), so
 *   no variant of "\n.\r\n", "\r\n.\n", "\n.\n", "\r.\r\n" ends a DATA
 *   phase early or starts a smuggled transaction: only CRLF.CRLF ends DATA.
 *   Dot-stuffing is undone exactly. A Received: header is prepended.
 * OWNERSHIP
 *   Session state (HELO name) lives in the session arena. Each transaction
 *   gets its own arena, created at MAIL and reset when the transaction
 *   ends (commit reply, RSET, EHLO, refused DATA): sender, recipients and
 *   body chunks live there. s->out is malloc'd when a reply is written and
 *   taken by the driver with smtp_out_take().
 * THREADS
 *   Shard-local, no shared state.
 * SECURITY
 *   Every byte here is the peer's. Limits: command line lim->line_max
 *   bytes (longer lines are discarded as they arrive, never buffered),
 *   message lim->message_max bytes (the rest is discarded), lim->rcpt_max
 *   recipients, paths 256 bytes, SMTP_ERRORS_MAX protocol errors before
 *   disconnection, SMTP_OUT_HIGH bytes of unsent replies. NUL bytes in a
 *   command line get the line refused.
 * SEE ALSO
 *   session.c (the driver), spool.h
 */
#ifndef RINGMAIL_SMTP_SERVER_H
#define RINGMAIL_SMTP_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "arena.h"

#define SMTP_OUT_HIGH (16 * 1024)
#define SMTP_ERRORS_MAX 20
#define SMTP_PATH_MAX 256
#define SMTP_ID_MAX 40

enum smtp_state {
    SMTP_STATE_INIT,             /* greeted, no HELO/EHLO yet */
    SMTP_STATE_READY,            /* HELO/EHLO done, no transaction */
    SMTP_STATE_MAIL,             /* MAIL accepted, no recipient yet */
    SMTP_STATE_RCPT,             /* at least one recipient accepted */
    SMTP_STATE_DATA,             /* reading the message */
    SMTP_STATE_COMMIT,           /* message complete, waiting for the spool */
    SMTP_STATE_POLICY,           /* a command waits for policy's verdict */
    SMTP_STATE_CLOSED,           /* QUIT or fatal error: input ignored */
};

enum smtp_event {
    SMTP_EV_NONE,
    SMTP_EV_MESSAGE,
    SMTP_EV_CLOSE,
    SMTP_EV_FLUSH,
    SMTP_EV_POLICY,
};

/* Commands that stop for policy when their bit is in s->policy_mask. */
enum smtp_policy_cmd {
    SMTP_POLICY_EHLO = 1u << 0,  /* EHLO and HELO */
    SMTP_POLICY_MAIL = 1u << 1,
    SMTP_POLICY_RCPT = 1u << 2,
    SMTP_POLICY_DATA = 1u << 3,  /* the DATA command, before 354 */
};

/* Policy's answer to a command that stopped (smtp_server_policy_done). */
struct smtp_verdict {
    int code;                    /* 0: carry on as usual */
    const char *text;            /* the whole reply line when code != 0 */
    int close;                   /* close after the reply */
    const char *rewrite;         /* MAIL/RCPT: use this address instead */
};

typedef void smtp_id_fn(void *arg, char id[SMTP_ID_MAX]);

struct smtp_limits {
    const char *hostname;
    uint64_t message_max;        /* bytes of DATA after unstuffing */
    unsigned rcpt_max;
    size_t line_max;             /* command line, CRLF included */
    smtp_id_fn *new_id;          /* message ids, called at DATA */
    void *new_id_arg;
};

struct smtp_out {
    char *buf;                   /* malloc'd; NULL when empty */
    size_t len;
    size_t cap;
};

struct smtp_server_stats {
    uint64_t commands;
    uint64_t errors;             /* 5xx/4xx replies to peer mistakes */
    uint64_t messages;           /* committed */
    uint64_t rejected;           /* refused after DATA */
};

struct smtp_server {
    const struct smtp_limits *lim;
    struct arena *session;
    struct arena *txn;           /* NULL until the first MAIL */
    enum smtp_state state;
    int relay_ok;
    int esmtp;
    int draining;                /* close after the current transaction */
    unsigned policy_mask;        /* SMTP_POLICY_*: commands that stop */
    unsigned txn_seq;            /* MAIL commands accepted: a new number
                                  * is a new transaction */
    enum smtp_policy_cmd pend_cmd;   /* SMTP_STATE_POLICY: which one */
    enum smtp_state pend_state;  /* the state to go back to */
    char *pend_arg;              /* its argument (HELO name, address) */
    int pend_esmtp;
    unsigned error_count;
    const char *peer_ip;
    char *helo;

    /* the transaction */
    char *sender;                /* without <>; "" for the null path */
    char **rcpts;
    unsigned rcpt_count;
    unsigned rcpt_cap;
    char id[SMTP_ID_MAX];

    /* DATA: body chunks in the transaction arena */
    struct iovec *body;
    unsigned body_count;
    unsigned body_cap;
    uint64_t body_bytes;
    char *chunk;                 /* current chunk being filled */
    size_t chunk_len;
    size_t chunk_cap;
    unsigned data_state;
    int data_too_big;
    int data_bare_eol;

    /* partial command line carried between feeds (session arena) */
    char *line;
    size_t line_len;
    int line_overflow;

    struct smtp_out out;
    struct smtp_server_stats stats;
};

void smtp_server_init(struct smtp_server *s, const struct smtp_limits *lim,
                      struct arena *session, int relay_ok,
                      const char *peer_ip);
void smtp_server_greet(struct smtp_server *s);
void smtp_server_refuse(struct smtp_server *s, const char *reply);
size_t smtp_server_feed(struct smtp_server *s, const char *buf, size_t len,
                        enum smtp_event *ev);
void smtp_server_commit_done(struct smtp_server *s, int res);
void smtp_server_policy_done(struct smtp_server *s,
                             const struct smtp_verdict *v);
void smtp_server_message_refused(struct smtp_server *s, const char *text,
                                 int close);
void smtp_server_timeout(struct smtp_server *s);
void smtp_server_shutdown(struct smtp_server *s);
void smtp_server_fini(struct smtp_server *s);
const char *smtp_state_name(enum smtp_state st);

/* smtp_out_take - hand the pending replies to the caller, who frees them */
static inline struct smtp_out
smtp_out_take(struct smtp_server *s)
{
    struct smtp_out o = s->out;

    s->out.buf = NULL;
    s->out.len = 0;
    s->out.cap = 0;
    return o;
}

#endif
