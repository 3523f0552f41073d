/*
 * smtp_client - the outbound ESMTP protocol state machine: server bytes in,
 *               commands, per-recipient results and events out, no I/O
 *
 * SYNOPSIS
 *   void   smtp_client_init(struct smtp_client *c,
 *                           const struct smtp_client_limits *lim);
 *   size_t smtp_client_feed(struct smtp_client *c, const char *buf,
 *                           size_t len, enum smtp_client_event *ev);
 *   enum smtp_client_event smtp_client_send(struct smtp_client *c,
 *                           struct smtp_client_msg *m);
 *   void   smtp_client_quit(struct smtp_client *c);
 *   void   smtp_client_timeout(struct smtp_client *c);
 *   void   smtp_client_eof(struct smtp_client *c);
 *   struct smtp_client_out smtp_client_out_take(struct smtp_client *c);
 *   void   smtp_client_out_free(struct smtp_client_out *o);
 *   enum smtp_client_phase smtp_client_phase(const struct smtp_client *c);
 *   void   smtp_client_fini(struct smtp_client *c);
 * DESCRIPTION
 *   RFC 5321 client side with PIPELINING (2920), SIZE (1870), 8BITMIME
 *   (6152) and ENHANCEDSTATUSCODES (2034, 3463). STARTTLS and CHUNKING
 *   are noted in c->ext when offered and not used.
 *
 *   The driver (delivery.c) owns the socket and the timers. After the
 *   connect it calls smtp_client_feed() with whatever the server sent; the
 *   machine consumes complete and partial replies, appends commands to its
 *   output (smtp_client_out_take()), and returns how many bytes it
 *   consumed. It stops early and reports an event when the driver must act:
 *     SMTP_CLIENT_EV_READY         greeting and EHLO (or HELO) are done and
 *                                  no message was given yet: send one with
 *                                  smtp_client_send(), or smtp_client_quit().
 *     SMTP_CLIENT_EV_MESSAGE_DONE  every recipient of the message has its
 *                                  result; the machine is READY for the next
 *                                  message (or sent QUIT if asked to).
 *     SMTP_CLIENT_EV_CLOSED        the connection is over: write what is in
 *                                  the output, then close the socket. A
 *                                  message given and not reported done has
 *                                  its results filled; c->close_reason says
 *                                  why the connection ended.
 *     SMTP_CLIENT_EV_FLUSH         the output holds over SMTP_CLIENT_OUT_HIGH
 *                                  command bytes: write them before feeding
 *                                  the rest.
 *   The driver keeps unconsumed bytes and feeds them again after acting
 *   (after MESSAGE_DONE, before it sends the next message, so a reply the
 *   server sent ahead of any command is caught as one). After every call
 *   it takes the output and writes all of it in order; the iovec count
 *   may exceed IOV_MAX (one piece per stuffed dot or repaired line end).
 *
 *   smtp_client_send() starts a transaction: MAIL FROM (with SIZE=n when
 *   SIZE is offered and BODY=8BITMIME whenever 8BITMIME is offered, which
 *   is always correct to say), one RCPT TO per recipient, DATA, then on 354
 *   the body, dot-stuffed, with every line ending in CRLF (a bare LF or a
 *   bare CR in the body becomes CRLF, and a last line without one gets
 *   it), and the final ".". With PIPELINING, MAIL, the RCPTs and DATA go in
 *   one group and the replies are matched in order; without it, one
 *   command at a time. The body is not copied: the output's iovecs point
 *   into m->body, with small constant pieces (the stuffing dots, CRLFs, the
 *   terminator) between. It may be called before READY (the message waits
 *   for the handshake, and a refused greeting becomes its result). It
 *   returns SMTP_CLIENT_EV_MESSAGE_DONE when the message is decided without
 *   a word to the server: the message is over the server's SIZE (552
 *   5.3.4), or its sender or every recipient is not a valid path (501);
 *   otherwise SMTP_CLIENT_EV_NONE.
 *
 *   Results (one per recipient, in m->results): a RCPT reply of 4xx or 5xx
 *   decides that recipient (DEFERRED, FAILED); an accepted recipient gets
 *   the outcome of the reply to the final dot (2xx DELIVERED, 4xx
 *   DEFERRED, 5xx FAILED), or of the reply to DATA when DATA is refused. A
 *   refused MAIL decides every recipient. When no recipient was accepted
 *   the body is not sent (after a pipelined DATA that the server accepts
 *   anyway, a lone "." ends the empty message, as RFC 2920 3.1 says). Each
 *   result is written exactly once per message.
 *
 *   Connection reuse: between messages the machine sends RSET only when
 *   the server may still hold a transaction of ours (MAIL was accepted and
 *   no final reply came: every RCPT refused, or DATA refused); with
 *   PIPELINING the RSET leads the next group. smtp_client_quit() sends QUIT
 *   now when READY, or as soon as the handshake or the message in progress
 *   is over; any reply to QUIT, or the server closing, ends it.
 *
 *   A 421 reply at any point ends the connection: the pending recipients
 *   get it (DEFERRED). So do a 4xx greeting, EHLO or HELO (5xx: FAILED;
 *   result.phase tells the driver so it may rather try the next MX). A
 *   5xx to EHLO falls back to HELO. smtp_client_timeout() (the phase's
 *   timer fired), smtp_client_eof() (the server closed) and a protocol
 *   error (a reply that is garbage, too long, or not expected) defer the
 *   pending recipients with a synthesized 421 4.4.2 or 4.4.0 and close.
 *
 *   smtp_client_phase() names the reply being waited for, so the driver
 *   picks the RFC 5321 4.5.3.2 timeout: GREETING 5 min, MAIL 5 min, RCPT
 *   5 min, DATA 2 min (for the 354), BODY 10 min (for the reply to the
 *   final dot; while the driver is still writing the body, each write
 *   gets the 3 min data block timeout), and its own for EHLO, RSET, QUIT
 *   and IDLE (READY, between messages). With PIPELINING the phase moves
 *   on as each reply of the group arrives.
 * OWNERSHIP
 *   The caller owns struct smtp_client and the limits. A message given to
 *   smtp_client_send(), with its sender, recipients and results, must stay
 *   valid until MESSAGE_DONE or CLOSED reports it; its body must stay valid
 *   and unchanged until the output that points into it has been written or
 *   dropped. The output (command bytes and the iovec array) is malloc'd;
 *   smtp_client_out_take() hands it over and smtp_client_out_free()
 *   releases it. Nothing else is allocated.
 * THREADS
 *   Shard-local, no shared state.
 * SECURITY
 *   Every byte fed in is the server's. The reply parser keeps no line: it
 *   reads a reply as it arrives and keeps only its code, the first
 *   SMTP_CLIENT_HEAD_MAX bytes of the current line and SMTP_CLIENT_TEXT_MAX
 *   bytes of text (control and non-ASCII bytes become '?', so the text is
 *   safe in logs and DSNs). Limits: SMTP_CLIENT_LINE_MAX bytes per line,
 *   SMTP_CLIENT_LINES_MAX lines and lim->reply_max bytes per reply; beyond
 *   them, a code that is not three digits from 2xx to 5xx, a bad separator
 *   or a continuation line with another code is a protocol error, and so
 *   is a reply nobody asked for (except a 421). Addresses given to
 *   smtp_client_send() with control bytes or longer than SMTP_CLIENT_PATH_MAX
 *   are refused, so no command can be injected.
 * SEE ALSO
 *   smtp_server.h (the inbound machine), delivery.c (the driver)
 */
#ifndef RINGMAIL_SMTP_CLIENT_H
#define RINGMAIL_SMTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define SMTP_CLIENT_OUT_HIGH (16 * 1024)
#define SMTP_CLIENT_LINE_MAX 4096      /* reply line, CRLF included */
#define SMTP_CLIENT_LINES_MAX 128      /* lines in one reply */
#define SMTP_CLIENT_REPLY_MAX (64 * 1024) /* default lim->reply_max */
#define SMTP_CLIENT_HEAD_MAX 64        /* line bytes kept for parsing */
#define SMTP_CLIENT_TEXT_MAX 512       /* reply text kept per result */
#define SMTP_CLIENT_ENHANCED_MAX 16    /* "5.999.999" and NUL */
#define SMTP_CLIENT_PATH_MAX 254       /* address without <> (RFC 5321) */

/* Extensions (c->ext, lim->ext_off). */
#define SMTP_CLIENT_EXT_PIPELINING  0x01u
#define SMTP_CLIENT_EXT_SIZE        0x02u
#define SMTP_CLIENT_EXT_8BITMIME    0x04u
#define SMTP_CLIENT_EXT_ENHANCED    0x08u  /* ENHANCEDSTATUSCODES */
#define SMTP_CLIENT_EXT_STARTTLS    0x10u  /* noted, not used yet */
#define SMTP_CLIENT_EXT_CHUNKING    0x20u  /* noted, not used */

enum smtp_client_state {
    SMTP_CLIENT_STATE_GREETING,  /* waiting for the 220 */
    SMTP_CLIENT_STATE_EHLO,      /* EHLO sent */
    SMTP_CLIENT_STATE_HELO,      /* HELO sent after EHLO was refused */
    SMTP_CLIENT_STATE_READY,     /* between messages */
    SMTP_CLIENT_STATE_RSET,      /* RSET sent before the next MAIL */
    SMTP_CLIENT_STATE_MAIL,      /* waiting for the reply to MAIL */
    SMTP_CLIENT_STATE_RCPT,      /* waiting for a reply to RCPT */
    SMTP_CLIENT_STATE_DATA,      /* waiting for the 354 */
    SMTP_CLIENT_STATE_BODY,      /* body and dot sent, waiting for a reply */
    SMTP_CLIENT_STATE_QUIT,      /* QUIT sent */
    SMTP_CLIENT_STATE_CLOSED,    /* over: input is ignored */
};

/* What the driver's timer is waiting for (RFC 5321 4.5.3.2). */
enum smtp_client_phase {
    SMTP_CLIENT_PHASE_GREETING,
    SMTP_CLIENT_PHASE_EHLO,      /* EHLO or HELO */
    SMTP_CLIENT_PHASE_IDLE,      /* READY: the driver's idle timer */
    SMTP_CLIENT_PHASE_RSET,
    SMTP_CLIENT_PHASE_MAIL,
    SMTP_CLIENT_PHASE_RCPT,
    SMTP_CLIENT_PHASE_DATA,
    SMTP_CLIENT_PHASE_BODY,
    SMTP_CLIENT_PHASE_QUIT,
    SMTP_CLIENT_PHASE_CLOSED,    /* no timer */
};

enum smtp_client_event {
    SMTP_CLIENT_EV_NONE,
    SMTP_CLIENT_EV_READY,
    SMTP_CLIENT_EV_MESSAGE_DONE,
    SMTP_CLIENT_EV_CLOSED,
    SMTP_CLIENT_EV_FLUSH,
};

enum smtp_client_outcome {
    SMTP_CLIENT_PENDING,         /* not decided yet (zero: the initial) */
    SMTP_CLIENT_DELIVERED,       /* 2xx to the final dot */
    SMTP_CLIENT_DEFERRED,        /* 4xx, or a synthesized temporary failure */
    SMTP_CLIENT_FAILED,          /* 5xx */
};

struct smtp_client_result {
    enum smtp_client_outcome outcome;
    enum smtp_client_phase phase;  /* the command whose reply decided it */
    unsigned code;                 /* 250, 450, 552, ... */
    char enhanced[SMTP_CLIENT_ENHANCED_MAX]; /* "5.1.1", or "" if none */
    char text[SMTP_CLIENT_TEXT_MAX];   /* lines joined by ' ', safe bytes */
    uint8_t synthesized;           /* made up here, not said by the server */
    uint8_t rcpt_accepted;         /* its RCPT got 2xx */
};

struct smtp_client_msg {
    const char *sender;            /* without <>; "" for the null path */
    const char *const *rcpts;      /* without <> */
    unsigned rcpt_count;           /* > 0; all go in one group */
    const struct iovec *body;      /* CRLF lines, not dot-stuffed */
    unsigned body_iov_count;
    uint64_t body_bytes;           /* sum of body[].iov_len */
    struct smtp_client_result *results; /* rcpt_count, filled here */
};

struct smtp_client_limits {
    const char *helo_name;         /* our name in EHLO and HELO */
    size_t reply_max;              /* bytes per reply; 0: REPLY_MAX */
    unsigned ext_off;              /* SMTP_CLIENT_EXT_* never used */
};

/*
 * The output: iov[0..iov_count) is what to write, in order. Entries point
 * into buf (the commands), into the message body, or at constants.
 */
struct smtp_client_out {
    struct iovec *iov;             /* malloc'd; NULL when empty */
    unsigned iov_count;
    unsigned iov_cap;
    char *buf;                     /* malloc'd command bytes */
    size_t buf_len;
    size_t buf_cap;
    uint64_t bytes;                /* sum of iov[].iov_len */
};

struct smtp_client_stats {
    uint64_t replies;
    uint64_t messages;             /* messages whose results are filled */
    uint64_t rcpts_delivered;
    uint64_t rcpts_deferred;
    uint64_t rcpts_failed;
    uint64_t protocol_errors;
};

/* The reply being parsed; see SECURITY above. */
struct smtp_client_reply {
    unsigned state;                /* parser state, RP_* in the .c */
    unsigned code;                 /* of the first line */
    unsigned line_code;
    unsigned digits;
    unsigned lines;                /* complete lines so far */
    size_t line_bytes;
    size_t bytes;
    int last;                      /* this line ends the reply */
    int cr;                        /* a CR waits: stripped if LF follows */
    int head_done;                 /* head of this line parsed */
    size_t head_len;
    size_t text_len;
    const char *error;             /* why the reply is a protocol error */
    char head[SMTP_CLIENT_HEAD_MAX];
    char enhanced[SMTP_CLIENT_ENHANCED_MAX];
    char text[SMTP_CLIENT_TEXT_MAX];
};

struct smtp_client {
    const struct smtp_client_limits *lim;
    enum smtp_client_state state;
    unsigned ext;                  /* SMTP_CLIENT_EXT_* offered and allowed */
    uint64_t size_max;             /* SIZE n; 0 when none declared */
    int dirty;                     /* the server may hold our transaction */
    int quit_wanted;

    /* The message in progress (or waiting for the handshake). */
    struct smtp_client_msg *msg;
    int msg_started;
    unsigned rcpt_cur;             /* whose RCPT reply comes next */
    unsigned rcpt_accepted;        /* RCPTs answered 2xx */

    struct smtp_client_reply rp;
    struct smtp_client_result close_reason;
    struct smtp_client_out out;
    struct smtp_client_stats stats;
};

void smtp_client_init(struct smtp_client *c,
                      const struct smtp_client_limits *lim);
size_t smtp_client_feed(struct smtp_client *c, const char *buf, size_t len,
                        enum smtp_client_event *ev);
enum smtp_client_event smtp_client_send(struct smtp_client *c,
                                        struct smtp_client_msg *m);
void smtp_client_quit(struct smtp_client *c);
void smtp_client_timeout(struct smtp_client *c);
void smtp_client_eof(struct smtp_client *c);
struct smtp_client_out smtp_client_out_take(struct smtp_client *c);
void smtp_client_out_free(struct smtp_client_out *o);
enum smtp_client_phase smtp_client_phase(const struct smtp_client *c);
void smtp_client_fini(struct smtp_client *c);

const char *smtp_client_state_name(enum smtp_client_state st);
const char *smtp_client_phase_name(enum smtp_client_phase ph);
const char *smtp_client_outcome_name(enum smtp_client_outcome o);

#endif
