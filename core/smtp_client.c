/*
 * smtp_client - see smtp_client.h
 *
 * Three parts. The reply parser (reply_parse()) is a byte machine that
 * keeps no line, so a reply split anywhere across feeds parses the same.
 * The transitions (one on_*() per state) see each complete reply in the
 * order the commands were sent; with PIPELINING the state walks MAIL,
 * RCPT (once per recipient sent), DATA as the replies of the group come
 * in. The output copies commands into out.buf and points at the body
 * where it lies (body_emit()).
 */
#include "smtp_client.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "util.h"

/* reply_parse() states: where we are within a reply line. */
enum {
    RP_CODE,                     /* reading the three digits */
    RP_SEP,                      /* after them: ' ', '-' or the line end */
    RP_SEP_CR,                   /* "NNN\r": only LF may follow */
    RP_TEXT,                     /* the text, up to LF */
};

/* reply_parse() results */
enum {
    RP_AGAIN,                    /* all input used, the reply goes on */
    RP_DONE,                     /* a complete reply is in c->rp */
    RP_INVALID,                  /* protocol error, c->rp.error says why */
};

/* Commands are short: a path of at most SMTP_CLIENT_PATH_MAX plus params. */
#define CMD_MAX 512

static const char *const smtp_client_state_names[] = {
    [SMTP_CLIENT_STATE_GREETING] = "greeting",
    [SMTP_CLIENT_STATE_EHLO] = "ehlo",
    [SMTP_CLIENT_STATE_HELO] = "helo",
    [SMTP_CLIENT_STATE_READY] = "ready",
    [SMTP_CLIENT_STATE_RSET] = "rset",
    [SMTP_CLIENT_STATE_MAIL] = "mail",
    [SMTP_CLIENT_STATE_RCPT] = "rcpt",
    [SMTP_CLIENT_STATE_DATA] = "data",
    [SMTP_CLIENT_STATE_BODY] = "body",
    [SMTP_CLIENT_STATE_QUIT] = "quit",
    [SMTP_CLIENT_STATE_CLOSED] = "closed",
};

static const char *const smtp_client_phase_names[] = {
    [SMTP_CLIENT_PHASE_GREETING] = "greeting",
    [SMTP_CLIENT_PHASE_EHLO] = "ehlo",
    [SMTP_CLIENT_PHASE_IDLE] = "idle",
    [SMTP_CLIENT_PHASE_RSET] = "rset",
    [SMTP_CLIENT_PHASE_MAIL] = "mail",
    [SMTP_CLIENT_PHASE_RCPT] = "rcpt",
    [SMTP_CLIENT_PHASE_DATA] = "data",
    [SMTP_CLIENT_PHASE_BODY] = "body",
    [SMTP_CLIENT_PHASE_QUIT] = "quit",
    [SMTP_CLIENT_PHASE_CLOSED] = "closed",
};

static const char *const smtp_client_outcome_names[] = {
    [SMTP_CLIENT_PENDING] = "pending",
    [SMTP_CLIENT_DELIVERED] = "delivered",
    [SMTP_CLIENT_DEFERRED] = "deferred",
    [SMTP_CLIENT_FAILED] = "failed",
};

/* Constant pieces of the body output; iovecs point at them. */
static const char piece_dot[] = ".";
static const char piece_lf[] = "\n";
static const char piece_crlf[] = "\r\n";
static const char piece_end[] = ".\r\n";


/* smtp_client_state_name - a state's name, for logs */
const char *
smtp_client_state_name(enum smtp_client_state st)
{
    if ((unsigned)st >= ARRAY_SIZE(smtp_client_state_names))
        return "?";
    return smtp_client_state_names[st];
}


/* smtp_client_phase_name - a phase's name, for logs and results */
const char *
smtp_client_phase_name(enum smtp_client_phase ph)
{
    if ((unsigned)ph >= ARRAY_SIZE(smtp_client_phase_names))
        return "?";
    return smtp_client_phase_names[ph];
}


/* smtp_client_outcome_name - an outcome's name, for the delivery log */
const char *
smtp_client_outcome_name(enum smtp_client_outcome o)
{
    if ((unsigned)o >= ARRAY_SIZE(smtp_client_outcome_names))
        return "?";
    return smtp_client_outcome_names[o];
}


/* smtp_client_phase - the reply the driver's timer is waiting for */
enum smtp_client_phase
smtp_client_phase(const struct smtp_client *c)
{
    switch (c->state) {
    case SMTP_CLIENT_STATE_GREETING:
        return SMTP_CLIENT_PHASE_GREETING;
    case SMTP_CLIENT_STATE_EHLO:
    case SMTP_CLIENT_STATE_HELO:
        return SMTP_CLIENT_PHASE_EHLO;
    case SMTP_CLIENT_STATE_READY:
        return SMTP_CLIENT_PHASE_IDLE;
    case SMTP_CLIENT_STATE_RSET:
        return SMTP_CLIENT_PHASE_RSET;
    case SMTP_CLIENT_STATE_MAIL:
        return SMTP_CLIENT_PHASE_MAIL;
    case SMTP_CLIENT_STATE_RCPT:
        return SMTP_CLIENT_PHASE_RCPT;
    case SMTP_CLIENT_STATE_DATA:
        return SMTP_CLIENT_PHASE_DATA;
    case SMTP_CLIENT_STATE_BODY:
        return SMTP_CLIENT_PHASE_BODY;
    case SMTP_CLIENT_STATE_QUIT:
        return SMTP_CLIENT_PHASE_QUIT;
    case SMTP_CLIENT_STATE_CLOSED:
        return SMTP_CLIENT_PHASE_CLOSED;
    }
    panic("bad smtp_client state %u", (unsigned)c->state);
}


/* --- output ------------------------------------------------------------ */

/*
 * out_iov - append a piece to the output. A NULL base stands for the next
 * len bytes of out.buf: buf may move while it grows, so those entries get
 * their address in smtp_client_out_take(). Adjacent pieces merge.
 */
static void
out_iov(struct smtp_client *c, const char *base, size_t len)
{
    struct smtp_client_out *o = &c->out;

    if (len == 0)
        return;
    o->bytes += len;
    if (o->iov_count > 0) {
        struct iovec *last = &o->iov[o->iov_count - 1];

        if (base == NULL ? last->iov_base == NULL
                         : (last->iov_base != NULL &&
                            (const char *)last->iov_base + last->iov_len ==
                                base)) {
            last->iov_len += len;
            return;
        }
    }
    if (o->iov_count == o->iov_cap) {
        unsigned cap = o->iov_cap ? o->iov_cap * 2 : 16;

        o->iov = xrealloc(o->iov, cap * sizeof *o->iov);
        o->iov_cap = cap;
    }
    o->iov[o->iov_count].iov_base = (void *)base;
    o->iov[o->iov_count].iov_len = len;
    o->iov_count++;
}


/* out_cmd - copy command bytes into the output */
static void
out_cmd(struct smtp_client *c, const char *p, size_t n)
{
    struct smtp_client_out *o = &c->out;

    if (o->buf_len + n > o->buf_cap) {
        size_t cap = o->buf_cap ? o->buf_cap : 512;

        while (cap < o->buf_len + n)
            cap *= 2;
        o->buf = xrealloc(o->buf, cap);
        o->buf_cap = cap;
    }
    memcpy(o->buf + o->buf_len, p, n);
    o->buf_len += n;
    out_iov(c, NULL, n);
}


/* cmd - write one command line; the format carries verb and arguments */
static void
cmd(struct smtp_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
cmd(struct smtp_client *c, const char *fmt, ...)
{
    char line[CMD_MAX];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof line - 2, fmt, ap);
    va_end(ap);
    /* Paths and the HELO name are checked, so a command always fits. */
    ASSERT(n >= 4);
    ASSERT((size_t)n < sizeof line - 2);
    line[n++] = '\r';
    line[n++] = '\n';
    out_cmd(c, line, (size_t)n);
}


/* smtp_client_out_take - hand the pending output to the caller */
struct smtp_client_out
smtp_client_out_take(struct smtp_client *c)
{
    struct smtp_client_out o = c->out;
    size_t off = 0;
    unsigned i;

    for (i = 0; i < o.iov_count; i++) {
        if (o.iov[i].iov_base == NULL) {
            o.iov[i].iov_base = o.buf + off;
            off += o.iov[i].iov_len;
        }
    }
    ASSERT(off == o.buf_len);
    memset(&c->out, 0, sizeof c->out);
    return o;
}


/* smtp_client_out_free - release output taken with smtp_client_out_take() */
void
smtp_client_out_free(struct smtp_client_out *o)
{
    free(o->iov);
    free(o->buf);
    memset(o, 0, sizeof *o);
}


/*
 * body_emit - the body as it goes on the wire: every line ends in CRLF (a
 * bare LF or bare CR becomes one), a line starting with '.' gets another
 * in front, and ".\r\n" ends it. Clean runs are referenced, not copied;
 * a CR at the end of an iovec is decided by the first byte of the next.
 */
static void
body_emit(struct smtp_client *c, const struct smtp_client_msg *m)
{
    int bol = 1, cr = 0;
    unsigned i;

    for (i = 0; i < m->body_iov_count; i++) {
        const char *p = m->body[i].iov_base;
        const char *end = p + m->body[i].iov_len, *run = p;

        while (p < end) {
            const char *nl, *q;

            if (cr) {
                cr = 0;
                if (*p == '\n') {
                    p++;
                    bol = 1;
                    continue;
                }
                /* Bare CR: end the line after it; *p starts the next. */
                out_iov(c, run, (size_t)(p - run));
                out_iov(c, piece_lf, 1);
                run = p;
                bol = 1;
            }
            if (bol) {
                bol = 0;
                if (*p == '.') {
                    out_iov(c, run, (size_t)(p - run));
                    out_iov(c, piece_dot, 1);
                    run = p;
                }
            }
            /* Inside a line: find its end, a CR or an LF. */
            nl = memchr(p, '\n', (size_t)(end - p));
            q = memchr(p, '\r', (size_t)((nl ? nl : end) - p));
            if (q == NULL)
                q = nl;
            if (q == NULL) {
                p = end;
                break;
            }
            if (*q == '\r') {
                cr = 1;
                p = q + 1;
                continue;
            }
            /* Bare LF: send what came before, then CRLF for it. */
            out_iov(c, run, (size_t)(q - run));
            out_iov(c, piece_crlf, 2);
            p = q + 1;
            run = p;
            bol = 1;
        }
        out_iov(c, run, (size_t)(end - run));
    }
    if (cr)
        out_iov(c, piece_lf, 1);
    else if (!bol)
        out_iov(c, piece_crlf, 2);
    out_iov(c, piece_end, 3);
}


/* --- results ----------------------------------------------------------- */

/* outcome_of - 2xx delivered, 5xx failed, anything else a retry */
static enum smtp_client_outcome
outcome_of(unsigned code)
{
    switch (code / 100) {
    case 2:
        return SMTP_CLIENT_DELIVERED;
    case 5:
        return SMTP_CLIENT_FAILED;
    default:
        return SMTP_CLIENT_DEFERRED;
    }
}


/* text_add - append server text, bounded, control and 8-bit bytes as '?' */
static void
text_add(char *text, size_t *text_len, const char *p, size_t n)
{
    size_t len = *text_len, i;

    for (i = 0; i < n && len < SMTP_CLIENT_TEXT_MAX - 1; i++) {
        unsigned char ch = (unsigned char)p[i];

        text[len++] = (ch < 0x20 || ch >= 0x7f) ? '?' : (char)ch;
    }
    text[len] = '\0';
    *text_len = len;
}


/* result_of_reply - the reply just parsed, as a result */
static void
result_of_reply(const struct smtp_client *c, struct smtp_client_result *r)
{
    memset(r, 0, sizeof *r);
    r->outcome = outcome_of(c->rp.code);
    r->phase = smtp_client_phase(c);
    r->code = c->rp.code;
    memcpy(r->enhanced, c->rp.enhanced, sizeof r->enhanced);
    memcpy(r->text, c->rp.text, sizeof r->text);
}


/* result_synth - a result we make up: timeouts, lost connections, limits */
static void
result_synth(struct smtp_client_result *r, enum smtp_client_phase phase,
             unsigned code, const char *enhanced, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void
result_synth(struct smtp_client_result *r, enum smtp_client_phase phase,
             unsigned code, const char *enhanced, const char *fmt, ...)
{
    va_list ap;

    memset(r, 0, sizeof *r);
    r->outcome = outcome_of(code);
    r->phase = phase;
    r->code = code;
    r->synthesized = 1;
    snprintf(r->enhanced, sizeof r->enhanced, "%s", enhanced);
    va_start(ap, fmt);
    vsnprintf(r->text, sizeof r->text, fmt, ap);
    va_end(ap);
}


/* result_set - decide recipient i; each is decided once per message */
static void
result_set(struct smtp_client *c, unsigned i,
           const struct smtp_client_result *r)
{
    struct smtp_client_result *res = &c->msg->results[i];
    uint8_t accepted = res->rcpt_accepted;

    ASSERT(i < c->msg->rcpt_count);
    ASSERT(res->outcome == SMTP_CLIENT_PENDING);
    ASSERT(r->outcome != SMTP_CLIENT_PENDING);
    *res = *r;
    res->rcpt_accepted = accepted;
    switch (r->outcome) {
    case SMTP_CLIENT_DELIVERED:
        c->stats.rcpts_delivered++;
        break;
    case SMTP_CLIENT_DEFERRED:
        c->stats.rcpts_deferred++;
        break;
    default:
        c->stats.rcpts_failed++;
        break;
    }
}


/* pending_set - every recipient not decided yet gets r */
static void
pending_set(struct smtp_client *c, const struct smtp_client_result *r)
{
    unsigned i;

    if (c->msg == NULL)
        return;
    for (i = 0; i < c->msg->rcpt_count; i++) {
        if (c->msg->results[i].outcome == SMTP_CLIENT_PENDING)
            result_set(c, i, r);
    }
}


/* pending_count - recipients not decided yet */
static unsigned
pending_count(const struct smtp_client *c)
{
    unsigned i, n = 0;

    for (i = 0; i < c->msg->rcpt_count; i++)
        n += c->msg->results[i].outcome == SMTP_CLIENT_PENDING;
    return n;
}


/*
 * path_ok - may this address go between <> in a command? Control bytes
 * would let a broken spool record inject commands; the length is RFC
 * 5321's. Anything else is the server's to judge. XXX: a non-ASCII
 * address goes as it is; SMTPUTF8 (RFC 6531) is not spoken yet.
 */
static int
path_ok(const char *a, int empty_ok)
{
    size_t n;

    for (n = 0; a[n] != '\0'; n++) {
        unsigned char ch = (unsigned char)a[n];

        if (ch < 0x20 || ch == 0x7f || n >= SMTP_CLIENT_PATH_MAX)
            return 0;
    }
    return n > 0 || empty_ok;
}


/* next_rcpt - the first recipient from i on that goes to the server */
static unsigned
next_rcpt(const struct smtp_client *c, unsigned i)
{
    while (i < c->msg->rcpt_count && !path_ok(c->msg->rcpts[i], 0))
        i++;
    return i;
}


/* --- transitions ------------------------------------------------------- */

/* conn_close - the connection is over; why says what ended it */
static enum smtp_client_event
conn_close(struct smtp_client *c, const struct smtp_client_result *why)
{
    c->close_reason = *why;
    if (c->msg != NULL) {
        ASSERT(pending_count(c) == 0);
        c->stats.messages++;
        c->msg = NULL;
    }
    c->state = SMTP_CLIENT_STATE_CLOSED;
    return SMTP_CLIENT_EV_CLOSED;
}


/* fail_close - pending recipients get r, and the connection ends */
static enum smtp_client_event
fail_close(struct smtp_client *c, const struct smtp_client_result *r)
{
    pending_set(c, r);
    return conn_close(c, r);
}


/* quit_close - like fail_close, saying QUIT first (a polite refusal) */
static enum smtp_client_event
quit_close(struct smtp_client *c, const struct smtp_client_result *r)
{
    cmd(c, "QUIT");
    return fail_close(c, r);
}


/* protocol_error - the server said something we cannot follow */
static enum smtp_client_event
protocol_error(struct smtp_client *c, const char *why)
{
    struct smtp_client_result r;

    c->stats.protocol_errors++;
    result_synth(&r, smtp_client_phase(c), 421, "4.4.0",
                 "protocol error: %s (phase %s)", why,
                 smtp_client_phase_name(smtp_client_phase(c)));
    return fail_close(c, &r);
}


/* become_ready - between messages: READY, or QUIT when it was asked for */
static void
become_ready(struct smtp_client *c)
{
    if (c->quit_wanted) {
        cmd(c, "QUIT");
        c->state = SMTP_CLIENT_STATE_QUIT;
        return;
    }
    c->state = SMTP_CLIENT_STATE_READY;
}


/*
 * msg_done - every recipient has its result. A message decided before the
 * handshake ended (bad addresses) leaves the handshake where it is.
 */
static enum smtp_client_event
msg_done(struct smtp_client *c)
{
    ASSERT(c->msg != NULL);
    ASSERT(pending_count(c) == 0);
    c->msg = NULL;
    c->stats.messages++;
    if (c->msg_started || c->state == SMTP_CLIENT_STATE_READY)
        become_ready(c);
    c->msg_started = 0;
    return SMTP_CLIENT_EV_MESSAGE_DONE;
}


/* send_mail - MAIL FROM with the parameters the server offered */
static void
send_mail(struct smtp_client *c)
{
    const struct smtp_client_msg *m = c->msg;
    char size[32] = "";

    if (c->ext & SMTP_CLIENT_EXT_SIZE) {
        snprintf(size, sizeof size, " SIZE=%llu",
                 (unsigned long long)m->body_bytes);
    }
    /*
     * XXX: a body with 8-bit bytes goes as it is to a server without
     * 8BITMIME (as Postfix does by default); RFC 6152 wants it converted
     * to 7 bits or bounced. The spool does not say which bodies are 8-bit.
     */
    cmd(c, "MAIL FROM:<%s>%s%s", m->sender, size,
        (c->ext & SMTP_CLIENT_EXT_8BITMIME) ? " BODY=8BITMIME" : "");
}


/* send_rcpt - RCPT TO for recipient i */
static void
send_rcpt(struct smtp_client *c, unsigned i)
{
    ASSERT(i < c->msg->rcpt_count);
    cmd(c, "RCPT TO:<%s>", c->msg->rcpts[i]);
}


/*
 * txn_start - the message's first commands: the whole group with
 * PIPELINING (RSET if needed, MAIL, every RCPT, DATA), else the first one.
 * A message over the server's declared SIZE is failed without a word.
 */
static enum smtp_client_event
txn_start(struct smtp_client *c)
{
    const struct smtp_client_msg *m = c->msg;
    int pipe = (c->ext & SMTP_CLIENT_EXT_PIPELINING) != 0;
    unsigned i;

    ASSERT(c->state == SMTP_CLIENT_STATE_READY);
    ASSERT(m != NULL);
    ASSERT(!c->msg_started);
    if ((c->ext & SMTP_CLIENT_EXT_SIZE) && c->size_max > 0 &&
        m->body_bytes > c->size_max) {
        struct smtp_client_result r;

        result_synth(&r, SMTP_CLIENT_PHASE_MAIL, 552, "5.3.4",
                     "message size %llu exceeds the server's fixed maximum "
                     "message size of %llu bytes",
                     (unsigned long long)m->body_bytes,
                     (unsigned long long)c->size_max);
        pending_set(c, &r);
        return msg_done(c);
    }
    c->msg_started = 1;
    c->rcpt_accepted = 0;
    c->rcpt_cur = next_rcpt(c, 0);
    ASSERT(c->rcpt_cur < m->rcpt_count);
    if (c->dirty) {
        cmd(c, "RSET");
        c->state = SMTP_CLIENT_STATE_RSET;
        if (!pipe)
            return SMTP_CLIENT_EV_NONE;
    } else {
        c->state = SMTP_CLIENT_STATE_MAIL;
    }
    send_mail(c);
    if (!pipe)
        return SMTP_CLIENT_EV_NONE;
    for (i = c->rcpt_cur; i < m->rcpt_count; i = next_rcpt(c, i + 1))
        send_rcpt(c, i);
    cmd(c, "DATA");
    return SMTP_CLIENT_EV_NONE;
}


/* handshake_done - EHLO or HELO accepted: start the waiting message */
static enum smtp_client_event
handshake_done(struct smtp_client *c)
{
    if (c->msg != NULL) {
        c->state = SMTP_CLIENT_STATE_READY;
        return txn_start(c);
    }
    become_ready(c);
    return c->state == SMTP_CLIENT_STATE_READY ? SMTP_CLIENT_EV_READY
                                               : SMTP_CLIENT_EV_NONE;
}


/* say_hello - forget what the server offered, then send EHLO or HELO */
static enum smtp_client_event
say_hello(struct smtp_client *c, const char *verb, enum smtp_client_state st)
{
    c->ext = 0;
    c->size_max = 0;
    cmd(c, "%s %s", verb, c->lim->helo_name);
    c->state = st;
    return SMTP_CLIENT_EV_NONE;
}


/* on_greeting - 2xx: say EHLO; 4xx, 5xx: give up politely */
static enum smtp_client_event
on_greeting(struct smtp_client *c, struct smtp_client_result *r)
{
    switch (c->rp.code / 100) {
    case 2:
        return say_hello(c, "EHLO", SMTP_CLIENT_STATE_EHLO);
    case 4:
    case 5:
        return quit_close(c, r);
    default:
        return protocol_error(c, "unexpected reply to the greeting");
    }
}


/* on_ehlo - 2xx: extensions noted, go; 5xx: try HELO */
static enum smtp_client_event
on_ehlo(struct smtp_client *c, struct smtp_client_result *r)
{
    switch (c->rp.code / 100) {
    case 2:
        return handshake_done(c);
    case 5:
        /* An old server, or EHLO disabled: say HELO, use no extension. */
        return say_hello(c, "HELO", SMTP_CLIENT_STATE_HELO);
    case 4:
        return quit_close(c, r);
    default:
        return protocol_error(c, "unexpected reply to EHLO");
    }
}


/* on_helo - 2xx: go, without extensions; else give up */
static enum smtp_client_event
on_helo(struct smtp_client *c, struct smtp_client_result *r)
{
    switch (c->rp.code / 100) {
    case 2:
        return handshake_done(c);
    case 4:
    case 5:
        return quit_close(c, r);
    default:
        return protocol_error(c, "unexpected reply to HELO");
    }
}


/* on_rset - the leftover transaction is gone: MAIL */
static enum smtp_client_event
on_rset(struct smtp_client *c, struct smtp_client_result *r)
{
    struct smtp_client_result why;

    switch (c->rp.code / 100) {
    case 2:
        c->dirty = 0;
        c->state = SMTP_CLIENT_STATE_MAIL;
        if (!(c->ext & SMTP_CLIENT_EXT_PIPELINING))
            send_mail(c);
        return SMTP_CLIENT_EV_NONE;
    case 4:
    case 5:
        /* Not about the message: it is deferred, whatever the code. */
        result_synth(&why, SMTP_CLIENT_PHASE_RSET, 421, "4.5.0",
                     "RSET refused: %u %s", r->code, r->text);
        return quit_close(c, &why);
    default:
        return protocol_error(c, "unexpected reply to RSET");
    }
}


/* on_mail - 2xx: recipients next; else all of them fail */
static enum smtp_client_event
on_mail(struct smtp_client *c, struct smtp_client_result *r)
{
    int pipe = (c->ext & SMTP_CLIENT_EXT_PIPELINING) != 0;

    switch (c->rp.code / 100) {
    case 2:
        c->dirty = 1;
        c->state = SMTP_CLIENT_STATE_RCPT;
        if (!pipe)
            send_rcpt(c, c->rcpt_cur);
        return SMTP_CLIENT_EV_NONE;
    case 4:
    case 5:
        pending_set(c, r);
        if (!pipe)
            return msg_done(c);
        /* The replies to the RCPTs and DATA of the group still come. */
        c->state = SMTP_CLIENT_STATE_RCPT;
        return SMTP_CLIENT_EV_NONE;
    default:
        return protocol_error(c, "unexpected reply to MAIL");
    }
}


/* on_rcpt - one recipient's verdict, in the order sent */
static enum smtp_client_event
on_rcpt(struct smtp_client *c, struct smtp_client_result *r)
{
    struct smtp_client_result *res = &c->msg->results[c->rcpt_cur];
    int pipe = (c->ext & SMTP_CLIENT_EXT_PIPELINING) != 0;

    if (c->rp.code / 100 == 3)
        return protocol_error(c, "unexpected reply to RCPT");
    /* Decided already: the MAIL of this group was refused. */
    if (res->outcome == SMTP_CLIENT_PENDING) {
        if (c->rp.code / 100 == 2) {
            /* Kept for the record; the final reply will decide it. */
            *res = *r;
            res->outcome = SMTP_CLIENT_PENDING;
            res->rcpt_accepted = 1;
            c->rcpt_accepted++;
        } else {
            result_set(c, c->rcpt_cur, r);
        }
    }
    c->rcpt_cur = next_rcpt(c, c->rcpt_cur + 1);
    if (c->rcpt_cur < c->msg->rcpt_count) {
        if (!pipe)
            send_rcpt(c, c->rcpt_cur);
        return SMTP_CLIENT_EV_NONE;
    }
    c->state = SMTP_CLIENT_STATE_DATA;
    if (pipe)
        return SMTP_CLIENT_EV_NONE;
    if (pending_count(c) == 0) {
        /* Nobody accepted: no DATA; RSET before the next message. */
        return msg_done(c);
    }
    cmd(c, "DATA");
    return SMTP_CLIENT_EV_NONE;
}


/* on_data - 354: the body; else accepted ones get the reply */
static enum smtp_client_event
on_data(struct smtp_client *c, struct smtp_client_result *r)
{
    switch (c->rp.code / 100) {
    case 3:
        /*
         * With nobody accepted (a pipelined DATA the server took anyway)
         * a lone dot ends an empty message; its reply changes nothing.
         */
        if (pending_count(c) > 0)
            body_emit(c, c->msg);
        else
            out_iov(c, piece_end, 3);
        c->state = SMTP_CLIENT_STATE_BODY;
        return SMTP_CLIENT_EV_NONE;
    case 4:
    case 5:
        pending_set(c, r);
        return msg_done(c);
    default:
        return protocol_error(c, "unexpected reply to DATA");
    }
}


/* on_body - the final reply decides every accepted recipient */
static enum smtp_client_event
on_body(struct smtp_client *c, struct smtp_client_result *r)
{
    if (c->rp.code / 100 == 3)
        return protocol_error(c, "unexpected reply to the end of data");
    pending_set(c, r);
    c->dirty = 0;
    return msg_done(c);
}


/* reply_done - act on a complete reply, matched to the oldest command */
static enum smtp_client_event
reply_done(struct smtp_client *c)
{
    struct smtp_client_result r;

    c->stats.replies++;
    result_of_reply(c, &r);
    if (c->state == SMTP_CLIENT_STATE_QUIT)
        return conn_close(c, &r);
    if (c->rp.code == 421) {
        /* The server is closing the channel, now. */
        return fail_close(c, &r);
    }
    switch (c->state) {
    case SMTP_CLIENT_STATE_GREETING:
        return on_greeting(c, &r);
    case SMTP_CLIENT_STATE_EHLO:
        return on_ehlo(c, &r);
    case SMTP_CLIENT_STATE_HELO:
        return on_helo(c, &r);
    case SMTP_CLIENT_STATE_READY:
        return protocol_error(c, "reply without a command");
    case SMTP_CLIENT_STATE_RSET:
        return on_rset(c, &r);
    case SMTP_CLIENT_STATE_MAIL:
        return on_mail(c, &r);
    case SMTP_CLIENT_STATE_RCPT:
        return on_rcpt(c, &r);
    case SMTP_CLIENT_STATE_DATA:
        return on_data(c, &r);
    case SMTP_CLIENT_STATE_BODY:
        return on_body(c, &r);
    default:
        panic("reply in smtp_client state %s",
              smtp_client_state_name(c->state));
    }
}


/* --- the reply parser -------------------------------------------------- */

/* rp_line_reset - ready for the next line of the same reply */
static void
rp_line_reset(struct smtp_client_reply *rp)
{
    rp->state = RP_CODE;
    rp->line_code = 0;
    rp->digits = 0;
    rp->line_bytes = 0;
    rp->last = 0;
    rp->cr = 0;
    rp->head_done = 0;
    rp->head_len = 0;
}


/* rp_reset - ready for the next reply */
static void
rp_reset(struct smtp_client_reply *rp)
{
    rp_line_reset(rp);
    rp->code = 0;
    rp->lines = 0;
    rp->bytes = 0;
    rp->text_len = 0;
    rp->error = NULL;
    rp->enhanced[0] = '\0';
    rp->text[0] = '\0';
}


/*
 * enhanced_len - length of an RFC 3463 code "k.sss.ddd" at p whose class
 * k matches the reply's, followed by a space or the end; 0 if none.
 */
static size_t
enhanced_len(const char *p, size_t n, unsigned klass)
{
    size_t i = 2, d;
    int part;

    if (n < 5 || p[0] != (char)('0' + klass) || p[1] != '.')
        return 0;
    for (part = 0; part < 2; part++) {
        for (d = 0; i < n && d < 3 && isdigit((unsigned char)p[i]); d++)
            i++;
        if (d == 0)
            return 0;
        if (part == 0) {
            if (i >= n || p[i] != '.')
                return 0;
            i++;
        }
    }
    if (i < n && p[i] != ' ')
        return 0;
    return i;
}


/* ehlo_keyword - note an extension from one line of a 2xx EHLO reply */
static void
ehlo_keyword(struct smtp_client *c, const char *p, size_t n)
{
    static const struct {
        const char *kw;
        unsigned ext;
    } kws[] = {
        { "PIPELINING", SMTP_CLIENT_EXT_PIPELINING },
        { "SIZE", SMTP_CLIENT_EXT_SIZE },
        { "8BITMIME", SMTP_CLIENT_EXT_8BITMIME },
        { "ENHANCEDSTATUSCODES", SMTP_CLIENT_EXT_ENHANCED },
        { "STARTTLS", SMTP_CLIENT_EXT_STARTTLS },
        { "CHUNKING", SMTP_CLIENT_EXT_CHUNKING },
    };
    size_t kl = 0, i;

    while (kl < n && p[kl] != ' ')
        kl++;
    for (i = 0; i < ARRAY_SIZE(kws); i++) {
        if (strlen(kws[i].kw) == kl && strncasecmp(p, kws[i].kw, kl) == 0)
            break;
    }
    if (i == ARRAY_SIZE(kws) || (c->lim->ext_off & kws[i].ext))
        return;
    c->ext |= kws[i].ext;
    if (kws[i].ext == SMTP_CLIENT_EXT_SIZE) {
        uint64_t size = 0;
        size_t j = kl, digits = 0;

        while (j < n && p[j] == ' ')
            j++;
        /* At most 19 digits: no overflow. Anything odd: no limit known. */
        for (; j < n && isdigit((unsigned char)p[j]) && digits < 19; j++) {
            size = size * 10 + (uint64_t)(p[j] - '0');
            digits++;
        }
        c->size_max = (j == n) ? size : 0;
    }
}


/*
 * head_flush - the first bytes of a line are in: note EHLO keywords, take
 * the enhanced code (the first line's is the reply's) and start the text.
 */
static void
head_flush(struct smtp_client *c)
{
    struct smtp_client_reply *rp = &c->rp;
    const char *p = rp->head;
    size_t n = rp->head_len, k;
    unsigned klass = rp->line_code / 100;

    rp->head_done = 1;
    if (c->state == SMTP_CLIENT_STATE_EHLO && klass == 2 && rp->lines > 0)
        ehlo_keyword(c, p, n);
    k = enhanced_len(p, n, klass);
    if (k > 0) {
        if (rp->lines == 0) {
            memcpy(rp->enhanced, p, k);
            rp->enhanced[k] = '\0';
        }
        p += k;
        n -= k;
        while (n > 0 && *p == ' ') {
            p++;
            n--;
        }
    }
    if (rp->text_len > 0 && n > 0)
        text_add(rp->text, &rp->text_len, " ", 1);
    text_add(rp->text, &rp->text_len, p, n);
}


/* line_byte - one byte of a line's text */
static void
line_byte(struct smtp_client *c, char ch)
{
    struct smtp_client_reply *rp = &c->rp;

    if (!rp->head_done) {
        if (rp->head_len < sizeof rp->head) {
            rp->head[rp->head_len++] = ch;
            return;
        }
        head_flush(c);
    }
    text_add(rp->text, &rp->text_len, &ch, 1);
}


/* line_end - a line is complete; returns RP_DONE after the last one */
static int
line_end(struct smtp_client *c)
{
    struct smtp_client_reply *rp = &c->rp;

    if (!rp->head_done)
        head_flush(c);
    if (rp->lines == 0)
        rp->code = rp->line_code;
    rp->lines++;
    if (rp->last)
        return RP_DONE;
    if (rp->lines >= SMTP_CLIENT_LINES_MAX) {
        rp->error = "too many lines in a reply";
        return RP_INVALID;
    }
    rp_line_reset(rp);
    return RP_AGAIN;
}


/*
 * reply_parse - consume reply bytes until a reply is complete (RP_DONE),
 * the input is used up (RP_AGAIN) or the reply is invalid; *used says
 * how many bytes were taken. Lines end in LF; a CR before it is dropped.
 */
static int
reply_parse(struct smtp_client *c, const char *buf, size_t len, size_t *used)
{
    struct smtp_client_reply *rp = &c->rp;
    size_t reply_max = c->lim->reply_max ? c->lim->reply_max
                                         : SMTP_CLIENT_REPLY_MAX;
    size_t i;
    int res;

    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)buf[i];

        *used = i + 1;
        if (++rp->line_bytes > SMTP_CLIENT_LINE_MAX) {
            rp->error = "reply line too long";
            return RP_INVALID;
        }
        if (++rp->bytes > reply_max) {
            rp->error = "reply too long";
            return RP_INVALID;
        }
        switch (rp->state) {
        case RP_CODE:
            if (!isdigit(ch) ||
                (rp->digits == 0 && (ch < '2' || ch > '5'))) {
                rp->error = "bad reply code";
                return RP_INVALID;
            }
            rp->line_code = rp->line_code * 10 + (unsigned)(ch - '0');
            if (++rp->digits < 3)
                break;
            if (rp->lines > 0 && rp->line_code != rp->code) {
                rp->error = "continuation line with another code";
                return RP_INVALID;
            }
            rp->state = RP_SEP;
            break;
        case RP_SEP:
            if (ch == ' ' || ch == '-') {
                rp->last = ch == ' ';
                rp->state = RP_TEXT;
                break;
            }
            if (ch == '\r') {
                rp->state = RP_SEP_CR;
                break;
            }
            if (ch != '\n') {
                rp->error = "bad separator after the reply code";
                return RP_INVALID;
            }
            /* "NNN" alone is a last line without text. */
            rp->last = 1;
            if ((res = line_end(c)) != RP_AGAIN)
                return res;
            break;
        case RP_SEP_CR:
            if (ch != '\n') {
                rp->error = "bad separator after the reply code";
                return RP_INVALID;
            }
            rp->last = 1;
            if ((res = line_end(c)) != RP_AGAIN)
                return res;
            break;
        case RP_TEXT:
            if (ch == '\n') {
                if ((res = line_end(c)) != RP_AGAIN)
                    return res;
                break;
            }
            if (rp->cr) {
                line_byte(c, '\r');        /* a bare CR: text, as '?' */
                rp->cr = 0;
            }
            if (ch == '\r')
                rp->cr = 1;
            else
                line_byte(c, (char)ch);
            break;
        default:
            panic("bad reply parser state %u", rp->state);
        }
    }
    *used = len;
    return RP_AGAIN;
}


/* --- the interface ----------------------------------------------------- */

/* smtp_client_init - a machine waiting for the greeting */
void
smtp_client_init(struct smtp_client *c, const struct smtp_client_limits *lim)
{
    ASSERT(lim->helo_name != NULL);
    /* A domain is at most 255 bytes; then every command fits CMD_MAX. */
    ASSERT(strlen(lim->helo_name) <= 255);
    memset(c, 0, sizeof *c);
    c->lim = lim;
    c->state = SMTP_CLIENT_STATE_GREETING;
    rp_reset(&c->rp);
}


/* smtp_client_feed - consume server bytes until used up or an event */
size_t
smtp_client_feed(struct smtp_client *c, const char *buf, size_t len,
                 enum smtp_client_event *ev)
{
    size_t used = 0;

    *ev = SMTP_CLIENT_EV_NONE;
    while (used < len || c->state == SMTP_CLIENT_STATE_CLOSED) {
        size_t n = 0;
        int res;

        if (c->state == SMTP_CLIENT_STATE_CLOSED) {
            /* Whatever follows the end is dropped with the connection. */
            *ev = SMTP_CLIENT_EV_CLOSED;
            return len;
        }
        if (c->out.buf_len > SMTP_CLIENT_OUT_HIGH) {
            *ev = SMTP_CLIENT_EV_FLUSH;
            return used;
        }
        res = reply_parse(c, buf + used, len - used, &n);
        ASSERT(n <= len - used);
        used += n;
        if (res == RP_AGAIN)
            continue;
        if (res == RP_INVALID) {
            *ev = protocol_error(c, c->rp.error);
            return len;
        }
        *ev = reply_done(c);
        rp_reset(&c->rp);
        if (*ev == SMTP_CLIENT_EV_CLOSED)
            return len;
        if (*ev != SMTP_CLIENT_EV_NONE)
            return used;
    }
    return used;
}


/*
 * smtp_client_send - start message m, or keep it for the end of the
 * handshake; decides at once what needs no server (see the header).
 */
enum smtp_client_event
smtp_client_send(struct smtp_client *c, struct smtp_client_msg *m)
{
    struct smtp_client_result r;
    uint64_t bytes = 0;
    unsigned i;

    ASSERT(c->msg == NULL);
    ASSERT(!c->quit_wanted);
    ASSERT(c->state == SMTP_CLIENT_STATE_GREETING ||
           c->state == SMTP_CLIENT_STATE_EHLO ||
           c->state == SMTP_CLIENT_STATE_HELO ||
           c->state == SMTP_CLIENT_STATE_READY);
    ASSERT(m->sender != NULL);
    ASSERT(m->rcpt_count > 0);
    ASSERT(m->results != NULL);
    for (i = 0; i < m->body_iov_count; i++)
        bytes += m->body[i].iov_len;
    ASSERT(bytes == m->body_bytes);

    memset(m->results, 0, m->rcpt_count * sizeof *m->results);
    c->msg = m;
    c->msg_started = 0;
    if (!path_ok(m->sender, 1)) {
        result_synth(&r, SMTP_CLIENT_PHASE_MAIL, 501, "5.1.7",
                     "bad sender address syntax");
        pending_set(c, &r);
        return msg_done(c);
    }
    for (i = 0; i < m->rcpt_count; i++) {
        if (!path_ok(m->rcpts[i], 0)) {
            result_synth(&r, SMTP_CLIENT_PHASE_RCPT, 501, "5.1.3",
                         "bad recipient address syntax");
            result_set(c, i, &r);
        }
    }
    if (pending_count(c) == 0)
        return msg_done(c);
    if (c->state != SMTP_CLIENT_STATE_READY)
        return SMTP_CLIENT_EV_NONE;
    return txn_start(c);
}


/* smtp_client_quit - say QUIT now if idle, else when the work is done */
void
smtp_client_quit(struct smtp_client *c)
{
    if (c->state == SMTP_CLIENT_STATE_CLOSED ||
        c->state == SMTP_CLIENT_STATE_QUIT)
        return;
    c->quit_wanted = 1;
    if (c->state == SMTP_CLIENT_STATE_READY)
        become_ready(c);
}


/* smtp_client_timeout - the phase's timer fired: defer what is pending */
void
smtp_client_timeout(struct smtp_client *c)
{
    struct smtp_client_result r;

    if (c->state == SMTP_CLIENT_STATE_CLOSED)
        return;
    result_synth(&r, smtp_client_phase(c), 421, "4.4.2",
                 "timeout waiting for the server (phase %s)",
                 smtp_client_phase_name(smtp_client_phase(c)));
    fail_close(c, &r);
}


/* smtp_client_eof - the server closed: defer what is pending */
void
smtp_client_eof(struct smtp_client *c)
{
    struct smtp_client_result r;

    if (c->state == SMTP_CLIENT_STATE_CLOSED)
        return;
    if (c->state == SMTP_CLIENT_STATE_QUIT) {
        /* Closing without the 221 is common and harmless. */
        result_synth(&r, SMTP_CLIENT_PHASE_QUIT, 221, "2.0.0",
                     "connection closed after QUIT");
        conn_close(c, &r);
        return;
    }
    result_synth(&r, smtp_client_phase(c), 421, "4.4.2",
                 "connection lost (phase %s)",
                 smtp_client_phase_name(smtp_client_phase(c)));
    fail_close(c, &r);
}


/* smtp_client_fini - drop output not taken */
void
smtp_client_fini(struct smtp_client *c)
{
    struct smtp_client_out o = smtp_client_out_take(c);

    smtp_client_out_free(&o);
}
