/*
 * ringsink - the sink's shared types: ringsink.c (sockets, ring, options,
 *            reports), ringsink_smtp.c (the protocol machine) and
 *            ringsink_record.c (accepted messages: record file, tokens)
 *
 * SYNOPSIS
 *   void   ringsink_smtp_init(struct ringsink_smtp *m,
 *                             const struct ringsink_smtp_conf *conf,
 *                             struct ringsink_counts *counts);
 *   void   ringsink_smtp_out(struct ringsink_smtp *m, char *buf,
 *                            size_t cap);
 *   void   ringsink_smtp_greet(struct ringsink_smtp *m);
 *   size_t ringsink_smtp_feed(struct ringsink_smtp *m, const char *data,
 *                             size_t len, enum ringsink_smtp_event *ev);
 *   void   ringsink_smtp_message_done(struct ringsink_smtp *m,
 *                                     const char *reply);
 *   const char *ringsink_smtp_state_name(enum ringsink_smtp_state st);
 *
 *   void   ringsink_record_init(struct ringsink_record *r, FILE *fp);
 *   int    ringsink_record_add(struct ringsink_record *r, const char *token,
 *                              size_t len, const char *peer,
 *                              unsigned rcpts, uint64_t size);
 *   uint64_t ringsink_token_hash(const char *token, size_t len);
 *   double ringsink_token_share(const char *token, size_t len);
 *   void   ringsink_record_fini(struct ringsink_record *r);
 * DESCRIPTION
 *   ringsink_smtp_feed() runs the ESMTP machine over input: it returns
 *   how many bytes it took and stops early on an event: EV_MESSAGE (the
 *   end of a message's data: the caller decides, then calls
 *   ringsink_smtp_message_done() with the reply, possibly later, and the
 *   machine takes no input until then), EV_CLOSE (QUIT answered, or a
 *   421: send what is out, then close), EV_FULL (the reply buffer is
 *   nearly full: send it, give a fresh one with ringsink_smtp_out(),
 *   feed the rest). Replies are appended to the buffer set by
 *   ringsink_smtp_out(); the machine never allocates.
 *
 *   Input may be split anywhere and pipelined: partial command lines are
 *   kept in the machine (up to RINGSINK_LINE_MAX bytes, then "500 line too
 *   long"); DATA is scanned for its end line, dot-unstuffed for the size
 *   and the header, whose X-Ringload-Token (or else Message-ID) becomes
 *   m->token.
 *
 *   ringsink_record_add() remembers an accepted message's token (a hash
 *   set) and appends "token peer rcpts size" to the record file: it
 *   returns 1 for a new token, 0 for a duplicate (the first
 *   RINGSINK_DUPS_LISTED duplicates are kept for the report). An empty
 *   token is written as "-" and not counted in the set.
 *
 *   ringsink_token_hash() is FNV-1a 64. ringsink_token_share() maps a
 *   token to [0, 1): fmix64(FNV-1a) >> 11, divided by 2^53 (fmix64 is
 *   MurmurHash3's finalizer). The shares (--tempfail-share P1,
 *   --reject-share P2) answer 451 below P1 and 554 below P1 + P2, so a
 *   run is repeatable and a test can predict it.
 * OWNERSHIP
 *   struct ringsink_smtp is embedded in its connection; the reply buffer
 *   belongs to the caller. The record owns its table and strings (malloc,
 *   grown by doubling: amortised, not per message); the FILE is the
 *   caller's.
 * THREADS
 *   One.
 * SECURITY
 *   All input is untrusted; limits: RINGSINK_LINE_MAX per line,
 *   RINGSINK_TOKEN_MAX per token, conf->rcpt_max per message,
 *   conf->max_size per message (when set).
 */
#ifndef RINGMAIL_RINGSINK_H
#define RINGMAIL_RINGSINK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define RINGSINK_LINE_MAX 1024      /* a command or header line kept */
#define RINGSINK_TOKEN_MAX 128
#define RINGSINK_REPLY_MAX 256      /* the longest reply the machine writes */
#define RINGSINK_DUPS_LISTED 10

struct ringsink_smtp_conf {
    const char *hostname;
    const char *tempfail_rcpt;      /* substring: 451 4.2.0 */
    const char *reject_rcpt;        /* substring: 550 5.1.1 */
    uint64_t max_size;              /* 0: none */
    unsigned rcpt_max;
    unsigned reply_421_after;       /* 0: never */
};

/* Counters shared by every connection (one thread). */
struct ringsink_counts {
    uint64_t sessions;
    uint64_t sessions_refused;
    uint64_t commands;
    uint64_t messages;              /* ends of data seen */
    uint64_t accepted;
    uint64_t tempfailed;
    uint64_t rejected;
    uint64_t too_big;
    uint64_t rcpt_accepted;
    uint64_t rcpt_tempfailed;
    uint64_t rcpt_rejected;
    uint64_t closed_421;
    uint64_t bad_commands;
    uint64_t bytes;                 /* message bytes, unstuffed */
};

enum ringsink_smtp_state {
    RINGSINK_SMTP_CMD,
    RINGSINK_SMTP_DATA,
    RINGSINK_SMTP_VERDICT,          /* data ended; waiting for the caller */
    RINGSINK_SMTP_CLOSED,
};

enum ringsink_smtp_event {
    RINGSINK_SMTP_EV_NONE,
    RINGSINK_SMTP_EV_MESSAGE,
    RINGSINK_SMTP_EV_CLOSE,
    RINGSINK_SMTP_EV_FULL,
};

struct ringsink_smtp {
    const struct ringsink_smtp_conf *conf;
    struct ringsink_counts *counts;
    enum ringsink_smtp_state state;
    unsigned has_mail : 1;
    unsigned in_header : 1;
    unsigned bol : 1;               /* body: at the start of a line */
    unsigned line_long : 1;         /* the command line overflowed */
    unsigned token_is_ringload : 1; /* m->token is X-Ringload-Token */
    unsigned rcpt_count;
    unsigned rcpt_ok;
    unsigned messages;              /* answered on this connection */
    uint64_t size;

    char line[RINGSINK_LINE_MAX];
    unsigned line_len;              /* bytes kept */
    size_t line_total;              /* bytes seen in this line */
    char start[3];                  /* the start of a body line */
    unsigned start_len;

    char token[RINGSINK_TOKEN_MAX + 1];
    unsigned token_len;

    char *out;
    size_t out_len;
    size_t out_cap;
};

struct ringsink_token_slot {
    uint64_t hash;                  /* 0: empty */
    size_t off;
    uint32_t len;
};

struct ringsink_record {
    FILE *fp;                       /* NULL: count only */
    struct ringsink_token_slot *tab;
    size_t tab_cap;                 /* a power of two */
    size_t unique;
    char *strs;
    size_t strs_len;
    size_t strs_cap;
    uint64_t duplicates;
    uint64_t untokened;
    char dups[RINGSINK_DUPS_LISTED][RINGSINK_TOKEN_MAX + 1];
    unsigned dups_listed;
};

void ringsink_smtp_init(struct ringsink_smtp *m,
                        const struct ringsink_smtp_conf *conf,
                        struct ringsink_counts *counts);
void ringsink_smtp_out(struct ringsink_smtp *m, char *buf, size_t cap);
void ringsink_smtp_greet(struct ringsink_smtp *m);
size_t ringsink_smtp_feed(struct ringsink_smtp *m, const char *data,
                          size_t len, enum ringsink_smtp_event *ev);
void ringsink_smtp_message_done(struct ringsink_smtp *m, const char *reply);
const char *ringsink_smtp_state_name(enum ringsink_smtp_state st);

void ringsink_record_init(struct ringsink_record *r, FILE *fp);
int ringsink_record_add(struct ringsink_record *r, const char *token,
                        size_t len, const char *peer, unsigned rcpts,
                        uint64_t size);
uint64_t ringsink_token_hash(const char *token, size_t len);
double ringsink_token_share(const char *token, size_t len);
void ringsink_record_fini(struct ringsink_record *r);

#endif
