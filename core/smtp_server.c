/*
 * smtp_server - see smtp_server.h
 *
 * The command table at the bottom maps verbs to handlers. Each handler sees
 * one complete command line (CRLF stripped, NUL-free, within line_max) and
 * writes exactly one reply. DATA bodies go through data_feed(), a byte
 * machine that undoes dot-stuffing and refuses bare CR and bare LF.
 */
#include "smtp_server.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util.h"

/* Body chunks start small (most mail is a few KiB) and double up to this. */
#define BODY_CHUNK_MIN  4096
#define BODY_CHUNK_MAX  (1024 * 1024)

/* data_feed() states: where we are within a DATA line. */
enum {
    DATA_BOL,                    /* at the start of a line */
    DATA_MID,                    /* inside a line */
    DATA_CR,                     /* saw CR inside a line */
    DATA_DOT,                    /* saw "." at the start of a line */
    DATA_DOT_CR,                 /* saw ".\r" at the start of a line */
};

static const char *const smtp_state_names[] = {
    [SMTP_STATE_INIT] = "init",
    [SMTP_STATE_READY] = "ready",
    [SMTP_STATE_MAIL] = "mail",
    [SMTP_STATE_RCPT] = "rcpt",
    [SMTP_STATE_DATA] = "data",
    [SMTP_STATE_COMMIT] = "commit",
    [SMTP_STATE_POLICY] = "policy",
    [SMTP_STATE_CLOSED] = "closed",
};


const char *
smtp_state_name(enum smtp_state st)
{
    if ((unsigned)st >= ARRAY_SIZE(smtp_state_names))
        return "?";
    return smtp_state_names[st];
}


/* out_append - add bytes to the pending replies */
static void
out_append(struct smtp_server *s, const char *p, size_t n)
{
    struct smtp_out *o = &s->out;

    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap : 512;

        while (cap < o->len + n)
            cap *= 2;
        o->buf = xrealloc(o->buf, cap);
        o->cap = cap;
    }
    memcpy(o->buf + o->len, p, n);
    o->len += n;
}


/* reply - write one reply line; the format carries code and text */
static void
reply(struct smtp_server *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
reply(struct smtp_server *s, const char *fmt, ...)
{
    char line[600];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof line - 2, fmt, ap);
    va_end(ap);
    ASSERT(n >= 3);
    if ((size_t)n > sizeof line - 3)
        n = (int)sizeof line - 3;
    line[n++] = '\r';
    line[n++] = '\n';
    out_append(s, line, (size_t)n);
}


/* reply_error - a reply to a peer mistake: counted, and too many end it */
static void
reply_error(struct smtp_server *s, const char *text)
{
    s->stats.errors++;
    if (++s->error_count >= SMTP_ERRORS_MAX) {
        reply(s, "421 4.7.0 %s Error: too many errors", s->lim->hostname);
        s->state = SMTP_STATE_CLOSED;
        return;
    }
    reply(s, "%s", text);
}


void
smtp_server_init(struct smtp_server *s, const struct smtp_limits *lim,
                 struct arena *session, int relay_ok, const char *peer_ip)
{
    memset(s, 0, sizeof *s);
    s->lim = lim;
    s->session = session;
    s->relay_ok = relay_ok;
    s->peer_ip = peer_ip;
    s->state = SMTP_STATE_INIT;
}


void
smtp_server_greet(struct smtp_server *s)
{
    reply(s, "220 %s ESMTP ringmail", s->lim->hostname);
}


/* smtp_server_refuse - answer reply (a full "421 ..." line) and close */
void
smtp_server_refuse(struct smtp_server *s, const char *text)
{
    reply(s, "%s", text);
    s->state = SMTP_STATE_CLOSED;
}


static void
txn_arena_destroy(void *arg)
{
    arena_destroy(arg);
}


/* txn_reset - forget the transaction; its arena keeps its first chunk */
static void
txn_reset(struct smtp_server *s)
{
    if (s->txn != NULL)
        arena_reset(s->txn);
    s->sender = NULL;
    s->rcpts = NULL;
    s->rcpt_count = 0;
    s->rcpt_cap = 0;
    s->id[0] = '\0';
    s->body = NULL;
    s->body_count = 0;
    s->body_cap = 0;
    s->body_bytes = 0;
    s->chunk = NULL;
    s->chunk_len = 0;
    s->chunk_cap = 0;
    s->data_too_big = 0;
    s->data_bare_eol = 0;
}


static struct arena *
txn_arena(struct smtp_server *s)
{
    if (s->txn == NULL) {
        /* Allocated from the session's pool; dies with the session. */
        s->txn = arena_create(arena_pool_of(s->session));
        arena_cleanup_add(s->session, txn_arena_destroy, s->txn);
    }
    return s->txn;
}


/* after_txn - back to READY, or close when the daemon is draining */
static void
after_txn(struct smtp_server *s)
{
    txn_reset(s);
    s->state = SMTP_STATE_READY;
    if (s->draining) {
        reply(s, "421 4.3.2 %s Service shutting down", s->lim->hostname);
        s->state = SMTP_STATE_CLOSED;
    }
}


/*
 * policy_stop - the command passed its checks and policy wants to see it:
 * remember it and wait for smtp_server_policy_done(). 1 when stopped.
 */
static int
policy_stop(struct smtp_server *s, enum smtp_policy_cmd cmd, char *arg)
{
    if (!(s->policy_mask & cmd))
        return 0;
    s->pend_cmd = cmd;
    s->pend_arg = arg;
    s->pend_state = s->state;
    s->state = SMTP_STATE_POLICY;
    return 1;
}


/* --- addresses ----------------------------------------------------------- */

/*
 * parse_path - parse "<path>" at *pp; returns the address without brackets
 * (in the transaction arena), "" for "<>", or NULL on a syntax error.
 * Source routes (<@a,@b:user@dom>) are dropped as RFC 5321 4.1.1.3 allows.
 * Quoted local parts may hold '>' and spaces.
 */
static char *
parse_path(struct smtp_server *s, const char **pp, int need_domain)
{
    const char *p = *pp, *start, *at = NULL;
    int quoted = 0;
    size_t n;

    while (*p == ' ')
        p++;
    if (*p != '<')
        return NULL;
    p++;
    if (*p == '@') {
        const char *colon = strchr(p, ':');

        if (colon == NULL)
            return NULL;
        p = colon + 1;
    }
    start = p;
    for (; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;

        if (quoted) {
            if (c == '\\' && p[1] != '\0')
                p++;
            else if (c == '"')
                quoted = 0;
            continue;
        }
        if (c == '"')
            quoted = 1;
        else if (c == '>')
            break;
        else if (c == '@')
            at = p;
        else if (c <= ' ' || c == 0x7f || c == '<' || c == '(' ||
                 c == ')' || c == ',' || c == ';' || c == '\\')
            return NULL;
    }
    if (*p != '>' || quoted)
        return NULL;
    n = (size_t)(p - start);
    *pp = p + 1;
    if (n == 0)
        return need_domain ? NULL : arena_strdup(txn_arena(s), "");
    if (n >= SMTP_PATH_MAX || at == NULL || at == start || at + 1 == p)
        return NULL;
    /* Domain: letters, digits, '-', '.', or an address literal [..]. */
    for (const char *d = at + 1; d < p; d++) {
        unsigned char c = (unsigned char)*d;

        if (!(isalnum(c) || c == '-' || c == '.' || c == '[' || c == ']' ||
              c == ':' || c == '_'))
            return NULL;
    }
    return arena_strndup(txn_arena(s), start, n);
}


/* --- commands ----------------------------------------------------------- */

/* match_kw - case-insensitive "FROM:" at p; returns what follows or NULL */
static const char *
match_kw(const char *p, const char *kw)
{
    size_t n = strlen(kw);

    if (strncasecmp(p, kw, n) != 0)
        return NULL;
    return p + n;
}


static int
valid_helo(const char *arg)
{
    size_t n = strlen(arg);

    if (n == 0 || n > 255)
        return 0;
    for (; *arg != '\0'; arg++) {
        unsigned char c = (unsigned char)*arg;

        if (c <= ' ' || c >= 0x7f)
            return 0;
    }
    return 1;
}


static void helo_accept(struct smtp_server *s, char *name, int esmtp);


static void
cmd_helo_common(struct smtp_server *s, const char *arg, int esmtp)
{
    while (*arg == ' ')
        arg++;
    if (!valid_helo(arg)) {
        reply_error(s, esmtp ? "501 5.5.4 Syntax: EHLO hostname"
                             : "501 5.5.4 Syntax: HELO hostname");
        return;
    }
    s->pend_esmtp = esmtp;
    if (policy_stop(s, SMTP_POLICY_EHLO, arena_strdup(s->session, arg)))
        return;
    helo_accept(s, arena_strdup(s->session, arg), esmtp);
}


/* helo_accept - EHLO/HELO passed: new name, no transaction, 250 */
static void
helo_accept(struct smtp_server *s, char *name, int esmtp)
{
    if (s->state == SMTP_STATE_MAIL || s->state == SMTP_STATE_RCPT)
        txn_reset(s);
    /* The name may change once or twice per session; that is bounded. */
    s->helo = name;
    s->esmtp = esmtp;
    s->state = SMTP_STATE_READY;
    if (!esmtp) {
        reply(s, "250 %s", s->lim->hostname);
        return;
    }
    reply(s, "250-%s\r\n"
             "250-PIPELINING\r\n"
             "250-SIZE %llu\r\n"
             "250-8BITMIME\r\n"
             "250 ENHANCEDSTATUSCODES",
          s->lim->hostname, (unsigned long long)s->lim->message_max);
}


static void
cmd_ehlo(struct smtp_server *s, const char *arg)
{
    cmd_helo_common(s, arg, 1);
}


static void
cmd_helo(struct smtp_server *s, const char *arg)
{
    cmd_helo_common(s, arg, 0);
}


/* mail_params - MAIL parameters: SIZE=n, BODY=7BIT|8BITMIME */
static int
mail_params(struct smtp_server *s, const char *p)
{
    while (*p != '\0') {
        const char *end;
        size_t n;

        while (*p == ' ')
            p++;
        if (*p == '\0')
            break;
        end = strchr(p, ' ');
        n = end ? (size_t)(end - p) : strlen(p);
        if (n > 5 && strncasecmp(p, "SIZE=", 5) == 0) {
            unsigned long long size = 0;
            size_t i;

            /* At most 19 digits: no overflow of unsigned long long. */
            for (i = 5; i < n; i++) {
                if (!isdigit((unsigned char)p[i]) || n > 5 + 19) {
                    reply_error(s, "501 5.5.4 Bad SIZE parameter");
                    return -1;
                }
                size = size * 10 + (unsigned)(p[i] - '0');
            }
            if (size > s->lim->message_max) {
                reply_error(s, "552 5.3.4 Message size exceeds fixed "
                               "maximum message size");
                return -1;
            }
        } else if ((n == strlen("BODY=7BIT") &&
                    strncasecmp(p, "BODY=7BIT", n) == 0) ||
                   (n == strlen("BODY=8BITMIME") &&
                    strncasecmp(p, "BODY=8BITMIME", n) == 0)) {
            /* nothing to do: we carry 8-bit data as it is */
        } else {
            reply_error(s, "555 5.5.4 Unsupported MAIL parameter");
            return -1;
        }
        p += n;
    }
    return 0;
}


static void
cmd_mail(struct smtp_server *s, const char *arg)
{
    const char *p;
    char *sender;

    if (s->state == SMTP_STATE_INIT) {
        reply_error(s, "503 5.5.1 Error: send HELO/EHLO first");
        return;
    }
    if (s->state != SMTP_STATE_READY) {
        reply_error(s, "503 5.5.1 Error: nested MAIL command");
        return;
    }
    p = match_kw(arg, " FROM:");
    if (p == NULL) {
        reply_error(s, "501 5.5.4 Syntax: MAIL FROM:<address>");
        return;
    }
    sender = parse_path(s, &p, 0);
    if (sender == NULL) {
        txn_reset(s);
        reply_error(s, "501 5.1.7 Bad sender address syntax");
        return;
    }
    if (*p != '\0' && *p != ' ') {
        txn_reset(s);
        reply_error(s, "501 5.1.7 Bad sender address syntax");
        return;
    }
    if (mail_params(s, p) < 0) {
        txn_reset(s);
        return;
    }
    if (policy_stop(s, SMTP_POLICY_MAIL, sender))
        return;
    s->sender = sender;
    s->txn_seq++;
    s->state = SMTP_STATE_MAIL;
    reply(s, "250 2.1.0 Ok");
}


static void rcpt_accept(struct smtp_server *s, char *rcpt);


static void
cmd_rcpt(struct smtp_server *s, const char *arg)
{
    const char *p;
    char *rcpt;

    if (s->state != SMTP_STATE_MAIL && s->state != SMTP_STATE_RCPT) {
        reply_error(s, "503 5.5.1 Error: need MAIL command");
        return;
    }
    p = match_kw(arg, " TO:");
    if (p == NULL) {
        reply_error(s, "501 5.5.4 Syntax: RCPT TO:<address>");
        return;
    }
    rcpt = parse_path(s, &p, 1);
    if (rcpt == NULL || (*p != '\0' && *p != ' ')) {
        reply_error(s, "501 5.1.3 Bad recipient address syntax");
        return;
    }
    while (*p == ' ')
        p++;
    if (*p != '\0') {
        reply_error(s, "555 5.5.4 Unsupported RCPT parameter");
        return;
    }
    if (!s->relay_ok) {
        reply_error(s, "550 5.7.1 Relaying denied");
        return;
    }
    if (s->rcpt_count >= s->lim->rcpt_max) {
        reply(s, "452 4.5.3 Error: too many recipients");
        return;
    }
    if (policy_stop(s, SMTP_POLICY_RCPT, rcpt))
        return;
    rcpt_accept(s, rcpt);
}


/* rcpt_accept - one more recipient, 250 */
static void
rcpt_accept(struct smtp_server *s, char *rcpt)
{
    if (s->rcpt_count == s->rcpt_cap) {
        unsigned cap = s->rcpt_cap ? s->rcpt_cap * 2 : 8;
        char **v = arena_alloc(s->txn, cap * sizeof *v);

        if (s->rcpt_count > 0)
            memcpy(v, s->rcpts, s->rcpt_count * sizeof *v);
        s->rcpts = v;
        s->rcpt_cap = cap;
    }
    s->rcpts[s->rcpt_count++] = rcpt;
    s->state = SMTP_STATE_RCPT;
    reply(s, "250 2.1.5 Ok");
}


/* body_append - copy n body bytes into the transaction's chunks */
static void
body_append(struct smtp_server *s, const char *p, size_t n)
{
    while (n > 0) {
        size_t room, take;

        if (s->chunk_len == s->chunk_cap) {
            size_t cap = s->chunk_cap ? MIN(s->chunk_cap * 2, BODY_CHUNK_MAX)
                                      : BODY_CHUNK_MIN;

            if (s->body_count == s->body_cap) {
                unsigned bcap = s->body_cap ? s->body_cap * 2 : 8;
                struct iovec *v = arena_alloc(s->txn, bcap * sizeof *v);

                if (s->body_count > 0)
                    memcpy(v, s->body, s->body_count * sizeof *v);
                s->body = v;
                s->body_cap = bcap;
            }
            s->chunk = arena_alloc(s->txn, cap);
            s->chunk_cap = cap;
            s->chunk_len = 0;
            s->body[s->body_count].iov_base = s->chunk;
            s->body[s->body_count].iov_len = 0;
            s->body_count++;
        }
        room = s->chunk_cap - s->chunk_len;
        take = MIN(room, n);
        memcpy(s->chunk + s->chunk_len, p, take);
        s->chunk_len += take;
        s->body[s->body_count - 1].iov_len = s->chunk_len;
        p += take;
        n -= take;
    }
}


/* body_add - account n bytes of message and keep them while within limit */
static inline void
body_add(struct smtp_server *s, const char *p, size_t n)
{
    if (n == 0)
        return;
    s->body_bytes += n;
    if (s->body_bytes > s->lim->message_max) {
        /* Keep nothing more: the message will be refused. */
        s->data_too_big = 1;
        return;
    }
    if (!s->data_too_big && !s->data_bare_eol)
        body_append(s, p, n);
}


/* received_header - the first lines of every message we accept */
static void
received_header(struct smtp_server *s)
{
    char date[64], hdr[1024];
    struct tm tm;
    time_t now = time(NULL);
    int n;

    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    if (s->rcpt_count == 1) {
        n = snprintf(hdr, sizeof hdr,
                     "Received: from %s (%s)\r\n"
                     "\tby %s (ringmail) with %s id %s\r\n"
                     "\tfor <%s>; %s\r\n",
                     s->helo, s->peer_ip, s->lim->hostname,
                     s->esmtp ? "ESMTP" : "SMTP", s->id, s->rcpts[0], date);
    } else {
        n = snprintf(hdr, sizeof hdr,
                     "Received: from %s (%s)\r\n"
                     "\tby %s (ringmail) with %s id %s;\r\n\t%s\r\n",
                     s->helo, s->peer_ip, s->lim->hostname,
                     s->esmtp ? "ESMTP" : "SMTP", s->id, date);
    }
    ASSERT(n > 0 && (size_t)n < sizeof hdr);
    body_append(s, hdr, (size_t)n);
    /* The header does not count against the client's SIZE. */
}


static void data_accept(struct smtp_server *s);


static void
cmd_data(struct smtp_server *s, const char *arg)
{
    if (*arg != '\0') {
        reply_error(s, "501 5.5.4 Syntax: DATA");
        return;
    }
    if (s->state == SMTP_STATE_MAIL) {
        reply_error(s, "554 5.5.1 Error: no valid recipients");
        return;
    }
    if (s->state != SMTP_STATE_RCPT) {
        reply_error(s, "503 5.5.1 Error: need RCPT command");
        return;
    }
    if (policy_stop(s, SMTP_POLICY_DATA, NULL))
        return;
    data_accept(s);
}


/* data_accept - DATA passed: a message id, the Received: header, 354 */
static void
data_accept(struct smtp_server *s)
{
    s->lim->new_id(s->lim->new_id_arg, s->id);
    received_header(s);
    s->data_state = DATA_BOL;
    s->state = SMTP_STATE_DATA;
    reply(s, "354 End data with <CR><LF>.<CR><LF>");
}


static void
cmd_rset(struct smtp_server *s, const char *arg)
{
    if (*arg != '\0') {
        reply_error(s, "501 5.5.4 Syntax: RSET");
        return;
    }
    if (s->state == SMTP_STATE_MAIL || s->state == SMTP_STATE_RCPT) {
        txn_reset(s);
        s->state = SMTP_STATE_READY;
    }
    reply(s, "250 2.0.0 Ok");
}


static void
cmd_noop(struct smtp_server *s, const char *arg)
{
    reply(s, "250 2.0.0 Ok");
}


static void
cmd_quit(struct smtp_server *s, const char *arg)
{
    reply(s, "221 2.0.0 Bye");
    s->state = SMTP_STATE_CLOSED;
}


static void
cmd_vrfy(struct smtp_server *s, const char *arg)
{
    reply(s, "252 2.5.0 Cannot VRFY user, but will accept message");
}


static void
cmd_help(struct smtp_server *s, const char *arg)
{
    reply(s, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT "
             "VRFY HELP");
}


typedef void smtp_cmd_fn(struct smtp_server *s, const char *arg);

static const struct smtp_cmd {
    const char *verb;
    size_t len;
    smtp_cmd_fn *fn;
} smtp_cmds[] = {
    { "MAIL", 4, cmd_mail },
    { "RCPT", 4, cmd_rcpt },
    { "DATA", 4, cmd_data },
    { "EHLO", 4, cmd_ehlo },
    { "HELO", 4, cmd_helo },
    { "RSET", 4, cmd_rset },
    { "NOOP", 4, cmd_noop },
    { "QUIT", 4, cmd_quit },
    { "VRFY", 4, cmd_vrfy },
    { "HELP", 4, cmd_help },
};


/* command - dispatch one line (CRLF removed, NUL-free) */
static void
command(struct smtp_server *s, char *line, size_t len)
{
    size_t i;

    s->stats.commands++;
    for (i = 0; i < ARRAY_SIZE(smtp_cmds); i++) {
        const struct smtp_cmd *c = &smtp_cmds[i];

        if (len >= c->len && strncasecmp(line, c->verb, c->len) == 0 &&
            (line[c->len] == ' ' || line[c->len] == '\0')) {
            const char *arg = line + c->len;

            /* MAIL and RCPT parse their own " FROM:" / " TO:". */
            if (c->fn != cmd_mail && c->fn != cmd_rcpt) {
                while (*arg == ' ')
                    arg++;
            }
            c->fn(s, arg);
            if (s->state == SMTP_STATE_POLICY)
                return;
            if (s->draining && (s->state == SMTP_STATE_INIT ||
                                s->state == SMTP_STATE_READY)) {
                reply(s, "421 4.3.2 %s Service shutting down",
                      s->lim->hostname);
                s->state = SMTP_STATE_CLOSED;
            }
            return;
        }
    }
    reply_error(s, "500 5.5.2 Error: command not recognized");
}


/*
 * command_line - handle one complete line of len bytes ending in '\n';
 * checks the line ending and NUL bytes before dispatching.
 */
static void
command_line(struct smtp_server *s, char *line, size_t len)
{
    ASSERT(len >= 1 && line[len - 1] == '\n');
    if (len < 2 || line[len - 2] != '\r') {
        reply_error(s, "500 5.5.2 Error: bare LF received; "
                       "lines must end in CRLF");
        return;
    }
    len -= 2;
    if (memchr(line, '\r', len) != NULL) {
        reply_error(s, "500 5.5.2 Error: bare CR received; "
                       "lines must end in CRLF");
        return;
    }
    if (memchr(line, '\0', len) != NULL) {
        reply_error(s, "500 5.5.2 Error: NUL character in command");
        return;
    }
    line[len] = '\0';
    command(s, line, len);
}


/* data_end - the final "." arrived: refuse, or ask for a commit */
static enum smtp_event
data_end(struct smtp_server *s)
{
    if (s->data_too_big) {
        s->stats.rejected++;
        reply(s, "552 5.3.4 Error: message too big");
        after_txn(s);
        return SMTP_EV_NONE;
    }
    if (s->data_bare_eol) {
        s->stats.rejected++;
        reply(s, "550 5.6.0 Error: bare CR or LF in message; "
                 "lines must end in CRLF");
        after_txn(s);
        return SMTP_EV_NONE;
    }
    s->state = SMTP_STATE_COMMIT;
    return SMTP_EV_MESSAGE;
}


/*
 * data_feed - consume body bytes until CRLF.CRLF; returns bytes used and
 * sets *done when the end of data was seen. Runs of ordinary bytes are
 * copied at once; only CR, LF and a dot at the start of a line need care.
 */
static size_t
data_feed(struct smtp_server *s, const char *buf, size_t len, int *done)
{
    const char *p = buf, *end = buf + len, *run = buf;

    *done = 0;
    while (p < end) {
        char c = *p;

        switch (s->data_state) {
        case DATA_MID:
            /* Fast path: skip to the next CR or LF. */
            while (p < end && *p != '\r' && *p != '\n')
                p++;
            if (p == end)
                break;
            if (*p == '\n')
                s->data_bare_eol = 1;
            else
                s->data_state = DATA_CR;
            p++;
            break;
        case DATA_CR:
            if (c == '\n') {
                s->data_state = DATA_BOL;
                p++;
            } else {
                s->data_bare_eol = 1;     /* bare CR: reprocess c */
                s->data_state = DATA_MID;
            }
            break;
        case DATA_BOL:
            if (c == '.') {
                body_add(s, run, (size_t)(p - run));
                s->data_state = DATA_DOT;
                p++;
                run = p;                  /* the dot itself is dropped */
            } else {
                s->data_state = DATA_MID;
            }
            break;
        case DATA_DOT:
            if (c == '\r') {
                s->data_state = DATA_DOT_CR;
                p++;
            } else {
                /* Dot-stuffed line: ".." or ".x" keeps what follows. */
                s->data_state = DATA_MID;
            }
            break;
        case DATA_DOT_CR:
            if (c == '\n') {
                /* End of data; nothing since the dot belongs to the body. */
                *done = 1;
                return (size_t)(p + 1 - buf);
            }
            /* ".\r" then something else: a bare CR after a dot. */
            s->data_bare_eol = 1;
            body_add(s, "\r", 1);
            run = p;
            s->data_state = DATA_MID;
            break;
        default:
            panic("bad data state %u", s->data_state);
        }
    }
    if (s->data_state == DATA_DOT_CR) {
        /* Hold back the "\r" of ".\r": the next byte decides. */
        body_add(s, run, (size_t)(end - run) - 1);
    } else {
        body_add(s, run, (size_t)(end - run));
    }
    return len;
}


/*
 * line_feed - consume command bytes: complete lines are dispatched, a
 * partial line is kept in s->line (at most line_max bytes; a longer line
 * is discarded up to its end and answered 500 5.5.2).
 */
static size_t
line_feed(struct smtp_server *s, const char *buf, size_t len)
{
    const char *nl = memchr(buf, '\n', len);
    size_t take = nl ? (size_t)(nl - buf) + 1 : len;

    if (s->line_overflow) {
        if (nl != NULL) {
            s->line_overflow = 0;
            reply_error(s, "500 5.5.2 Error: line too long");
        }
        return take;
    }
    if (s->line_len + take > s->lim->line_max) {
        s->line_len = 0;
        if (nl != NULL)
            reply_error(s, "500 5.5.2 Error: line too long");
        else
            s->line_overflow = 1;
        return take;
    }
    if (s->line_len == 0 && nl != NULL) {
        /* Common case: a whole line in the buffer. Copy to terminate it. */
        char tmp[take + 1];

        memcpy(tmp, buf, take);
        command_line(s, tmp, take);
        return take;
    }
    if (s->line == NULL)
        s->line = arena_alloc(s->session, s->lim->line_max + 1);
    memcpy(s->line + s->line_len, buf, take);
    s->line_len += take;
    if (nl != NULL) {
        size_t n = s->line_len;

        s->line_len = 0;
        command_line(s, s->line, n);
    }
    return take;
}


/* smtp_server_feed - consume input until it is used up or an event */
size_t
smtp_server_feed(struct smtp_server *s, const char *buf, size_t len,
                 enum smtp_event *ev)
{
    size_t used = 0;

    *ev = SMTP_EV_NONE;
    while (used < len) {
        if (s->state == SMTP_STATE_CLOSED) {
            /* Discard what follows QUIT or a fatal error. */
            used = len;
            break;
        }
        if (s->state == SMTP_STATE_COMMIT || s->state == SMTP_STATE_POLICY)
            return used;
        if (s->out.len > SMTP_OUT_HIGH) {
            *ev = SMTP_EV_FLUSH;
            return used;
        }
        if (s->state == SMTP_STATE_DATA) {
            int done;

            used += data_feed(s, buf + used, len - used, &done);
            if (done) {
                *ev = data_end(s);
                if (*ev != SMTP_EV_NONE)
                    return used;
            }
            continue;
        }
        used += line_feed(s, buf + used, len - used);
        if (s->state == SMTP_STATE_POLICY) {
            *ev = SMTP_EV_POLICY;
            return used;
        }
    }
    if (s->state == SMTP_STATE_CLOSED)
        *ev = SMTP_EV_CLOSE;
    return used;
}


/* smtp_server_commit_done - the spool answered for the message: reply */
void
smtp_server_commit_done(struct smtp_server *s, int res)
{
    ASSERT(s->state == SMTP_STATE_COMMIT);
    if (res == 0) {
        s->stats.messages++;
        reply(s, "250 2.0.0 Ok: queued as %s", s->id);
    } else if (res == -ENOSPC || res == -EDQUOT) {
        reply(s, "452 4.3.1 Insufficient system storage");
    } else {
        reply(s, "451 4.3.0 Error: queue file write error");
    }
    after_txn(s);
}


/*
 * smtp_server_policy_done - policy answered for the stopped command: its
 * reply, or what the command does when accepted.
 */
void
smtp_server_policy_done(struct smtp_server *s, const struct smtp_verdict *v)
{
    ASSERT(s->state == SMTP_STATE_POLICY);
    s->state = s->pend_state;
    if (v->code >= 400) {
        if (s->pend_cmd == SMTP_POLICY_MAIL)
            txn_reset(s);
        reply(s, "%s", v->text);
        if (v->close)
            s->state = SMTP_STATE_CLOSED;
        return;
    }
    switch (s->pend_cmd) {
    case SMTP_POLICY_EHLO:
        helo_accept(s, s->pend_arg, s->pend_esmtp);
        break;
    case SMTP_POLICY_MAIL:
        s->sender = v->rewrite != NULL ? arena_strdup(txn_arena(s),
                                                      v->rewrite)
                                       : s->pend_arg;
        s->txn_seq++;
        s->state = SMTP_STATE_MAIL;
        reply(s, "250 2.1.0 Ok");
        break;
    case SMTP_POLICY_RCPT:
        rcpt_accept(s, v->rewrite != NULL ? arena_strdup(txn_arena(s),
                                                         v->rewrite)
                                          : s->pend_arg);
        break;
    case SMTP_POLICY_DATA:
        data_accept(s);
        break;
    }
    if (v->close) {
        s->state = SMTP_STATE_CLOSED;
    } else if (s->draining && (s->state == SMTP_STATE_INIT ||
                               s->state == SMTP_STATE_READY)) {
        reply(s, "421 4.3.2 %s Service shutting down", s->lim->hostname);
        s->state = SMTP_STATE_CLOSED;
    }
}


/* smtp_server_message_refused - policy refused the complete message */
void
smtp_server_message_refused(struct smtp_server *s, const char *text,
                            int close)
{
    ASSERT(s->state == SMTP_STATE_COMMIT);
    s->stats.rejected++;
    reply(s, "%s", text);
    after_txn(s);
    if (close)
        s->state = SMTP_STATE_CLOSED;
}


/* smtp_server_timeout - the peer was silent too long */
void
smtp_server_timeout(struct smtp_server *s)
{
    if (s->state == SMTP_STATE_CLOSED)
        return;
    reply(s, "421 4.4.2 %s Error: timeout exceeded", s->lim->hostname);
    s->state = SMTP_STATE_CLOSED;
}


/*
 * smtp_server_shutdown - the daemon stops: a session between transactions
 * is told 421 now; one inside a transaction finishes it first (after_txn).
 */
void
smtp_server_shutdown(struct smtp_server *s)
{
    s->draining = 1;
    if (s->state == SMTP_STATE_INIT || s->state == SMTP_STATE_READY) {
        reply(s, "421 4.3.2 %s Service shutting down", s->lim->hostname);
        s->state = SMTP_STATE_CLOSED;
    }
}


void
smtp_server_fini(struct smtp_server *s)
{
    free(s->out.buf);
    s->out.buf = NULL;
    s->out.len = s->out.cap = 0;
}
