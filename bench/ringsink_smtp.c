/*
 * ringsink_smtp - the sink's ESMTP machine: commands, replies, DATA scan
 *
 * DESCRIPTION
 *   A resumable machine fed raw input (see ringsink.h for the calls). It
 *   speaks EHLO (PIPELINING, 8BITMIME, SIZE, ENHANCEDSTATUSCODES), HELO,
 *   MAIL, RCPT, DATA, RSET, NOOP and QUIT, and answers anything else
 *   with 502. It is lenient where a test tool can be (MAIL before HELO
 *   is fine, bare LF ends lines) and strict where a client bug should
 *   show (nested MAIL, RCPT before MAIL, DATA without a recipient).
 *
 *   Every command is checked for reply room first: 2 * RINGSINK_REPLY_MAX
 *   bytes, so that the reply to the end of a DATA it opens fits too.
 * SECURITY
 *   Input is untrusted. A command line is kept up to RINGSINK_LINE_MAX
 *   bytes, a header line the same, a body line only its first 3 bytes;
 *   nothing grows with the input.
 * SEE ALSO
 *   ringsink.h, RFC 5321, RFC 2920
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "ringsink.h"
#include "util.h"


/* ringsink_smtp_state_name - a machine state for reports */
const char *
ringsink_smtp_state_name(enum ringsink_smtp_state st)
{
    static const char *const names[] = {
        [RINGSINK_SMTP_CMD] = "cmd",
        [RINGSINK_SMTP_DATA] = "data",
        [RINGSINK_SMTP_VERDICT] = "verdict",
        [RINGSINK_SMTP_CLOSED] = "closed",
    };

    return (unsigned)st < ARRAY_SIZE(names) ? names[st] : "?";
}


/* ringsink_smtp_init - a new connection: command state, no buffer yet */
void
ringsink_smtp_init(struct ringsink_smtp *m,
                   const struct ringsink_smtp_conf *conf,
                   struct ringsink_counts *counts)
{
    memset(m, 0, sizeof *m);
    m->conf = conf;
    m->counts = counts;
    m->state = RINGSINK_SMTP_CMD;
}


/* ringsink_smtp_out - replies go to buf from now on (it starts empty) */
void
ringsink_smtp_out(struct ringsink_smtp *m, char *buf, size_t cap)
{
    ASSERT(cap >= 2 * RINGSINK_REPLY_MAX);
    m->out = buf;
    m->out_len = 0;
    m->out_cap = cap;
}


/* smtp_reply - append one reply; the room was checked by the caller */
static void __attribute__((format(printf, 2, 3)))
smtp_reply(struct ringsink_smtp *m, const char *fmt, ...)
{
    va_list ap;
    int n;

    ASSERT(m->out_cap - m->out_len >= RINGSINK_REPLY_MAX);
    va_start(ap, fmt);
    n = vsnprintf(m->out + m->out_len, RINGSINK_REPLY_MAX, fmt, ap);
    va_end(ap);
    ASSERT(n > 0);
    ASSERT(n < RINGSINK_REPLY_MAX);
    m->out_len += (size_t)n;
}


/* ringsink_smtp_greet - the 220 greeting */
void
ringsink_smtp_greet(struct ringsink_smtp *m)
{
    smtp_reply(m, "220 %s ESMTP ringsink\r\n", m->conf->hostname);
}


/* smtp_txn_reset - forget the transaction (RSET, HELO, end of data) */
static void
smtp_txn_reset(struct ringsink_smtp *m)
{
    m->has_mail = 0;
    m->rcpt_count = 0;
    m->rcpt_ok = 0;
}


/* smtp_arg - the text after "VERB " and the given prefix, or NULL */
static const char *
smtp_arg(const char *line, const char *prefix)
{
    size_t n = strlen(prefix);
    const char *p = line + 4;

    while (*p == ' ')
        p++;
    if (strncasecmp(p, prefix, n) != 0)
        return NULL;
    p += n;
    while (*p == ' ')
        p++;
    return p;
}


/* smtp_rcpt - RCPT TO:<addr> */
static void
smtp_rcpt(struct ringsink_smtp *m, const char *line)
{
    const struct ringsink_smtp_conf *conf = m->conf;
    const char *addr = smtp_arg(line, "TO:");
    char rcpt[RINGSINK_LINE_MAX];
    size_t n;

    if (!m->has_mail) {
        smtp_reply(m, "503 5.5.1 Error: need MAIL command\r\n");
        return;
    }
    if (addr == NULL) {
        smtp_reply(m, "501 5.5.4 Syntax: RCPT TO:<address>\r\n");
        return;
    }
    if (m->rcpt_count >= conf->rcpt_max) {
        smtp_reply(m, "452 4.5.3 Error: too many recipients\r\n");
        return;
    }
    m->rcpt_count++;
    if (*addr == '<') {
        addr++;
        n = strcspn(addr, ">");
    } else {
        n = strcspn(addr, " ");
    }
    memcpy(rcpt, addr, n);
    rcpt[n] = '\0';
    if (conf->tempfail_rcpt != NULL && strstr(rcpt, conf->tempfail_rcpt)) {
        m->counts->rcpt_tempfailed++;
        smtp_reply(m, "451 4.2.0 Recipient temporarily unavailable\r\n");
    } else if (conf->reject_rcpt != NULL &&
               strstr(rcpt, conf->reject_rcpt)) {
        m->counts->rcpt_rejected++;
        smtp_reply(m, "550 5.1.1 Recipient address rejected: "
                      "User unknown\r\n");
    } else {
        m->counts->rcpt_accepted++;
        m->rcpt_ok++;
        smtp_reply(m, "250 2.1.5 Ok\r\n");
    }
}


/* smtp_data_start - DATA accepted: scan the header first */
static void
smtp_data_start(struct ringsink_smtp *m)
{
    m->state = RINGSINK_SMTP_DATA;
    m->in_header = 1;
    m->bol = 1;
    m->start_len = 0;
    m->line_len = 0;
    m->line_total = 0;
    m->size = 0;
    m->token_len = 0;
    m->token[0] = '\0';
    m->token_is_ringload = 0;
    smtp_reply(m, "354 End data with <CR><LF>.<CR><LF>\r\n");
}


/* smtp_command - one complete command line (CRLF stripped), *ev set */
static void
smtp_command(struct ringsink_smtp *m, enum ringsink_smtp_event *ev)
{
    const struct ringsink_smtp_conf *conf = m->conf;
    const char *l = m->line;
    char verb[5];
    size_t i;

    m->counts->commands++;
    if (m->line_long) {
        m->line_long = 0;
        m->counts->bad_commands++;
        smtp_reply(m, "500 5.5.0 Error: line too long\r\n");
        return;
    }
    for (i = 0; i < 4 && l[i] != '\0'; i++)
        verb[i] = (char)(l[i] & ~0x20);      /* ASCII upper case */
    verb[i] = '\0';
    if (i < 4 || (l[4] != '\0' && l[4] != ' ')) {
        m->counts->bad_commands++;
        smtp_reply(m, "502 5.5.2 Error: command not recognized\r\n");
        return;
    }
    if (strcmp(verb, "QUIT") == 0) {
        smtp_reply(m, "221 2.0.0 Bye\r\n");
        m->state = RINGSINK_SMTP_CLOSED;
        *ev = RINGSINK_SMTP_EV_CLOSE;
        return;
    }
    if (conf->reply_421_after != 0 && m->messages >= conf->reply_421_after) {
        m->counts->closed_421++;
        smtp_reply(m, "421 4.7.0 %s Error: closing after %u messages\r\n",
                   conf->hostname, m->messages);
        m->state = RINGSINK_SMTP_CLOSED;
        *ev = RINGSINK_SMTP_EV_CLOSE;
        return;
    }
    if (strcmp(verb, "EHLO") == 0) {
        smtp_txn_reset(m);
        smtp_reply(m, "250-%s\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                      "250-SIZE %llu\r\n250 ENHANCEDSTATUSCODES\r\n",
                   conf->hostname, (unsigned long long)conf->max_size);
    } else if (strcmp(verb, "HELO") == 0) {
        smtp_txn_reset(m);
        smtp_reply(m, "250 %s\r\n", conf->hostname);
    } else if (strcmp(verb, "MAIL") == 0) {
        if (m->has_mail) {
            smtp_reply(m, "503 5.5.1 Error: nested MAIL command\r\n");
        } else if (smtp_arg(l, "FROM:") == NULL) {
            smtp_reply(m, "501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
        } else {
            smtp_txn_reset(m);
            m->has_mail = 1;
            smtp_reply(m, "250 2.1.0 Ok\r\n");
        }
    } else if (strcmp(verb, "RCPT") == 0) {
        smtp_rcpt(m, l);
    } else if (strcmp(verb, "DATA") == 0) {
        if (!m->has_mail)
            smtp_reply(m, "503 5.5.1 Error: need MAIL command\r\n");
        else if (m->rcpt_ok == 0)
            smtp_reply(m, "554 5.5.1 Error: no valid recipients\r\n");
        else
            smtp_data_start(m);
    } else if (strcmp(verb, "RSET") == 0) {
        smtp_txn_reset(m);
        smtp_reply(m, "250 2.0.0 Ok\r\n");
    } else if (strcmp(verb, "NOOP") == 0) {
        smtp_reply(m, "250 2.0.0 Ok\r\n");
    } else {
        m->counts->bad_commands++;
        smtp_reply(m, "502 5.5.2 Error: command not recognized\r\n");
    }
}


/* smtp_line_take - add input up to a newline to m->line; 1 when complete */
static int
smtp_line_take(struct ringsink_smtp *m, const char *p, size_t n,
               size_t *used)
{
    const char *nl = memchr(p, '\n', n);
    size_t take = nl != NULL ? (size_t)(nl - p) + 1 : n;
    size_t room = RINGSINK_LINE_MAX - 1 - m->line_len;
    size_t copy = MIN(take, room);

    memcpy(m->line + m->line_len, p, copy);
    m->line_len += (unsigned)copy;
    m->line_total += take;
    *used = take;
    return nl != NULL;
}


/* smtp_line_chomp - NUL-terminate m->line without its CR LF */
static void
smtp_line_chomp(struct ringsink_smtp *m)
{
    unsigned n = m->line_len;

    if (n > 0 && m->line[n - 1] == '\n')
        n--;
    if (n > 0 && m->line[n - 1] == '\r')
        n--;
    m->line[n] = '\0';
}


/* smtp_header_value - trimmed value of "Name:" in line, or NULL */
static const char *
smtp_header_value(const char *line, const char *name, size_t *len)
{
    size_t n = strlen(name);
    const char *v, *e;

    if (strncasecmp(line, name, n) != 0)
        return NULL;
    v = line + n;
    while (*v == ' ' || *v == '\t')
        v++;
    e = v + strlen(v);
    while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    *len = (size_t)(e - v);
    return v;
}


/* smtp_header_line - one header line: keep the token it may carry */
static void
smtp_header_line(struct ringsink_smtp *m, const char *line)
{
    const char *v;
    size_t n;

    if ((v = smtp_header_value(line, "X-Ringload-Token:", &n)) != NULL) {
        m->token_is_ringload = 1;
    } else if (!m->token_is_ringload &&
               (v = smtp_header_value(line, "Message-ID:", &n)) != NULL) {
        if (n >= 2 && v[0] == '<' && v[n - 1] == '>') {
            v++;
            n -= 2;
        }
    } else {
        return;
    }
    n = MIN(n, RINGSINK_TOKEN_MAX);
    memcpy(m->token, v, n);
    m->token[n] = '\0';
    m->token_len = (unsigned)n;
}


/* smtp_data - scan message data; 1 when its end line was taken */
static int
smtp_data(struct ringsink_smtp *m, const char *p, size_t n, size_t *used)
{
    size_t i = 0;

    /* Each turn consumes at least one byte or leaves: at most n turns. */
    while (i < n) {
        if (m->in_header) {
            size_t take, total;
            const char *l;

            if (!smtp_line_take(m, p + i, n - i, &take)) {
                i += take;
                break;
            }
            i += take;
            smtp_line_chomp(m);
            l = m->line;
            total = m->line_total;
            m->line_len = 0;
            m->line_total = 0;
            if (l[0] == '.' && l[1] == '\0' && total <= 3) {
                *used = i;               /* the end, before any body */
                return 1;
            }
            if (l[0] == '.') {           /* unstuff */
                l++;
                total--;
            }
            m->size += total;
            if (l[0] == '\0')
                m->in_header = 0;        /* the blank line: body next */
            else
                smtp_header_line(m, l);
            m->bol = 1;
            m->start_len = 0;
            continue;
        }
        if (m->bol) {
            /* Only a line's first 3 bytes can make it the end line. */
            while (i < n && m->start_len < 3) {
                char ch = p[i++];

                m->start[m->start_len++] = ch;
                if (ch == '\n')
                    break;
            }
            if (m->start[m->start_len - 1] == '\n') {
                if ((m->start_len == 3 &&
                     memcmp(m->start, ".\r\n", 3) == 0) ||
                    (m->start_len == 2 && memcmp(m->start, ".\n", 2) == 0)) {
                    *used = i;
                    return 1;
                }
                m->size += m->start_len - (m->start[0] == '.');
                m->start_len = 0;
                continue;
            }
            if (m->start_len < 3)
                break;                   /* the input ended mid-start */
            m->size += 3 - (m->start[0] == '.');
            m->start_len = 0;
            m->bol = 0;
            continue;
        }
        {
            const char *nl = memchr(p + i, '\n', n - i);

            if (nl == NULL) {
                m->size += n - i;
                i = n;
                break;
            }
            m->size += (size_t)(nl - (p + i)) + 1;
            i = (size_t)(nl - p) + 1;
            m->bol = 1;
        }
    }
    *used = i;
    return 0;
}


/* ringsink_smtp_feed - run the machine over data; see ringsink.h */
size_t
ringsink_smtp_feed(struct ringsink_smtp *m, const char *data, size_t len,
                   enum ringsink_smtp_event *ev)
{
    size_t used = 0;

    *ev = RINGSINK_SMTP_EV_NONE;
    /* Each turn consumes input or returns: at most len + 1 turns. */
    while (used < len) {
        size_t take;

        if (m->state == RINGSINK_SMTP_DATA) {
            if (smtp_data(m, data + used, len - used, &take)) {
                used += take;
                m->counts->messages++;
                m->counts->bytes += m->size;
                m->state = RINGSINK_SMTP_VERDICT;
                *ev = RINGSINK_SMTP_EV_MESSAGE;
                break;
            }
            used += take;
            continue;
        }
        if (m->state != RINGSINK_SMTP_CMD)
            break;
        if (m->out_cap - m->out_len < 2 * RINGSINK_REPLY_MAX) {
            *ev = RINGSINK_SMTP_EV_FULL;
            break;
        }
        if (!smtp_line_take(m, data + used, len - used, &take)) {
            used += take;
            if (m->line_len >= RINGSINK_LINE_MAX - 1)
                m->line_long = 1;
            break;
        }
        used += take;
        if (m->line_total > RINGSINK_LINE_MAX - 1)
            m->line_long = 1;
        smtp_line_chomp(m);
        smtp_command(m, ev);
        m->line_len = 0;
        m->line_total = 0;
        if (*ev != RINGSINK_SMTP_EV_NONE)
            break;
    }
    return used;
}


/* ringsink_smtp_message_done - answer the message that ended; CMD again */
void
ringsink_smtp_message_done(struct ringsink_smtp *m, const char *reply)
{
    ASSERT(m->state == RINGSINK_SMTP_VERDICT);
    smtp_reply(m, "%s\r\n", reply);
    m->messages++;
    smtp_txn_reset(m);
    m->state = RINGSINK_SMTP_CMD;
}
