/*
 * dsn - delivery status notifications: the bounce message (RFC 3464)
 *
 * SYNOPSIS
 *   int  dsn_build(struct arena *a, const struct dsn_msg *m,
 *                  struct dsn_out *out);
 *   const char *dsn_action_name(enum dsn_action action);
 * DESCRIPTION
 *   dsn_build() writes the complete RFC 5322 text of one DSN reporting
 *   m->rcpts of the original message m->orig to its envelope sender: a
 *   multipart/report; report-type=delivery-status (RFC 6522) of three
 *   parts: a text/plain explanation naming each recipient and the remote
 *   reply; a message/delivery-status (RFC 3464) with the per-message
 *   fields (Reporting-MTA, Original-Envelope-Id when the sender gave one,
 *   X-Ringmail-Queue-ID, Arrival-Date) and one block per recipient
 *   (Final-Recipient, Original-Recipient, Action, Status, Remote-MTA,
 *   Diagnostic-Code, Last-Attempt-Date, Will-Retry-Until); and the
 *   original message: text/rfc822-headers (its header only, RET=HDRS, the
 *   default, so bounces stay small) or, with m->return_full (RET=FULL),
 *   message/rfc822 capped at m->full_max_bytes (DSN_FULL_MAX_DEFAULT),
 *   cut at a line end, with a note in part 1 saying so.
 *
 *   The headers are From: the postmaster address (m->postmaster, else
 *   MAILER-DAEMON@hostname), To: <sender>, Subject: "Undelivered Mail
 *   Returned to Sender" when any recipient failed, "Delayed Mail (still
 *   being retried)" when all are delayed, Date (UTC), Message-ID
 *   <time.random@hostname>, MIME-Version, Auto-Submitted: auto-replied
 *   (RFC 3834) and the Content-Type with a boundary made of random hex
 *   that dsn_build() checks: it must occur nowhere but where it belongs,
 *   or the message is built again with a new one.
 *
 *   RFC 3461 is the caller's side: it picks the recipients whose NOTIFY
 *   asks for this report, passes ENVID as m->envid, ORCPT as
 *   rcpt->orcpt and RET=FULL as m->return_full. The DSN itself must go
 *   out with the null reverse path MAIL FROM:<>; that is the caller's job
 *   too. dsn_build() refuses to report to the null sender: never bounce a
 *   bounce.
 *
 *   The original's lines are copied with CRLF endings (a bare CR or LF
 *   becomes CRLF), NUL bytes become '?', and a line longer than 998
 *   bytes is broken (in the header with a space after the break, making
 *   it a fold). Bytes >= 0x80 are kept and out->eightbit says so: the
 *   part that holds them says Content-Transfer-Encoding: 8bit and the
 *   caller sends the DSN with BODY=8BITMIME. 8-bit addresses (SMTPUTF8)
 *   are kept too: in parts 1 and 2 the same way (Final-Recipient then
 *   has type utf-8, RFC 6533), in To: raw, which needs SMTPUTF8 to go
 *   out. Everything else ringmail writes is US-ASCII.
 *
 *   dsn_action_name() is "failed" or "delayed".
 * OWNERSHIP
 *   out->text is one malloc'd block freed by a cleanup of arena a (the
 *   transaction arena of the DSN): valid until a's next reset or destroy.
 *   Everything m points at is the caller's and only read during the call.
 * THREADS
 *   Pure: any thread; no I/O but getrandom(2) for the boundary when
 *   m->seed is 0.
 * ERRORS
 *   -EINVAL: the sender is "" (<>), is longer than DSN_ADDR_MAX or
 *   holds a control byte (it cannot be written into To: safely), or
 *   there is no recipient.
 *   Allocation failure aborts, as arena_alloc() does.
 * SECURITY
 *   The original message, the remote replies (diagnostic), the remote
 *   host name and the addresses are untrusted. Remote text loses its CR,
 *   LF and other control bytes (each run of them becomes one space) and
 *   bytes >= 0x80 (each becomes '?'), is capped at DSN_DIAG_MAX bytes and
 *   folded at spaces, with a forced break in a word too long for a line,
 *   so a remote server can neither inject a field or header nor exceed
 *   998-byte lines. The original is only copied into the last part, whose
 *   boundary it cannot contain (checked), capped at DSN_HEADERS_MAX bytes
 *   of header or m->full_max_bytes of message.
 * SEE ALSO
 *   RFC 3461, RFC 3464, RFC 3834, RFC 5322, RFC 6522
 */
#ifndef RINGMAIL_DSN_H
#define RINGMAIL_DSN_H

#include <stddef.h>
#include <stdint.h>

#include "arena.h"

/* RET=FULL returns at most this much of the original (RET=HDRS: header). */
#define DSN_FULL_MAX_DEFAULT ((size_t)256 << 10)
/* The original header copied into text/rfc822-headers, at most. */
#define DSN_HEADERS_MAX ((size_t)64 << 10)
/* Remote text kept per recipient (a multi-line reply fits easily). */
#define DSN_DIAG_MAX 2048
/* Addresses and host names kept per field (RFC 5321 paths are 256). */
#define DSN_ADDR_MAX 512

enum dsn_action {
    DSN_ACTION_FAILED,
    DSN_ACTION_DELAYED,
};

/* One recipient to report. */
struct dsn_rcpt {
    const char *addr;            /* forward path without <> */
    const char *orcpt;           /* ORCPT "rfc822;a@b", or NULL */
    enum dsn_action action;
    const char *status;          /* enhanced code "5.1.1"; NULL or bad:
                                    5.0.0 (failed) or 4.0.0 (delayed) */
    const char *diagnostic;      /* "smtp; 550 5.1.1 user unknown" or a
                                    made-up one; NULL when there is none */
    const char *remote_mta;      /* host name (written "dns; host"), NULL */
    int64_t last_attempt_unix;   /* 0: never tried */
    int64_t retry_until_unix;    /* delayed: expiry, 0: not said */
};

/* The DSN to build: who reports what about which message. */
struct dsn_msg {
    const char *hostname;        /* Reporting-MTA, Message-ID domain */
    const char *postmaster;      /* From address, NULL: MAILER-DAEMON@host */
    const char *queue_id;        /* ringmail's id of the original */
    const char *envid;           /* RFC 3461 ENVID (xtext as given), NULL */
    const char *sender;          /* original envelope sender, "" for <> */
    int64_t arrival_unix;
    int64_t now_unix;            /* Date:; 0: time(NULL) */
    const char *orig;            /* the original: header, blank line, body */
    size_t orig_bytes;
    const struct dsn_rcpt *rcpts;
    unsigned rcpt_count;
    int return_full;             /* RET=FULL: message/rfc822 */
    size_t full_max_bytes;       /* 0: DSN_FULL_MAX_DEFAULT */
    uint64_t seed;               /* boundary and Message-ID randomness;
                                    0: getrandom(2). Tests fix it. */
};

struct dsn_out {
    char *text;                  /* the whole message, CRLF lines, not
                                    NUL-terminated; in arena a */
    size_t bytes;
    int eightbit;                /* holds bytes >= 0x80: send 8BITMIME */
    int truncated;               /* the original was cut short */
    char boundary[48];           /* the MIME boundary used (for tests) */
};

int dsn_build(struct arena *a, const struct dsn_msg *m, struct dsn_out *out);
const char *dsn_action_name(enum dsn_action action);

#endif
