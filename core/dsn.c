/*
 * dsn - see dsn.h
 *
 * dsn_build() works in two steps. First it copies the part of the
 * original it returns into a scratch buffer (dsn_copy_orig), which tells
 * whether that part is 8-bit and whether it was cut short: both must be
 * known before the text that comes ahead of it is written. Then it writes
 * the whole message (dsn_compose) around a fresh boundary and counts that
 * boundary in the result: one in Content-Type, four delimiters. Any
 * other occurrence (in the original, or in remote text) and it composes
 * again with the next one.
 *
 * Every line ringmail writes goes through dsn_put_folded() or is a
 * constant shorter than 78 bytes, so no line exceeds 998 bytes.
 */
#include "dsn.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/random.h>
#include <time.h>

#include "util.h"

/* RFC 5322 2.1.1: lines SHOULD stay within 78 and MUST within 998. */
#define DSN_LINE_SOFT 76
#define DSN_LINE_HARD 998
/* A new boundary per attempt; a collision twice in a row is already
   beyond belief, so running out means a broken random source. */
#define DSN_BOUNDARY_TRIES 8

struct dsn_buf {
    char *p;
    size_t len;
    size_t cap;
};


/* dsn_reserve - room for n more bytes (grows by doubling; aborts on OOM) */
static void
dsn_reserve(struct dsn_buf *b, size_t n)
{
    size_t cap = b->cap ? b->cap : 4096;

    if (b->len + n <= b->cap)
        return;
    while (cap < b->len + n)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}


static void
dsn_put(struct dsn_buf *b, const char *s, size_t n)
{
    dsn_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}


static void
dsn_puts(struct dsn_buf *b, const char *s)
{
    dsn_put(b, s, strlen(s));
}


/* dsn_putf - printf for short lines ringmail composes itself */
static void __attribute__((format(printf, 2, 3)))
dsn_putf(struct dsn_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    dsn_reserve(b, 256);
    va_start(ap, fmt);
    n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    ASSERT(n >= 0);
    if ((size_t)n >= b->cap - b->len) {
        dsn_reserve(b, (size_t)n + 1);
        va_start(ap, fmt);
        n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}


/* dsn_rand - splitmix64: deterministic from a seed, good enough for ids */
static uint64_t
dsn_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}


/* dsn_date - RFC 5322 date-time in UTC; not strftime, which is localized */
static void
dsn_date(char out[40], int64_t unix_s)
{
    static const char days[7][4] = {
        "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat",
    };
    static const char months[12][4] = {
        "Jan", "Feb", "Mar", "Apr", "May", "Jun",
        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    };
    time_t t = (time_t)unix_s;
    struct tm tm;
    unsigned year;

    if (gmtime_r(&t, &tm) == NULL || tm.tm_year < -1900 ||
        tm.tm_year > 9999 - 1900)
        memset(&tm, 0, sizeof tm);
    year = (unsigned)(tm.tm_year + 1900);
    /* Fields are in range here; the casts keep the widths provable. */
    snprintf(out, 40, "%.3s, %02u %.3s %04u %02u:%02u:%02u +0000",
             days[(unsigned)tm.tm_wday % 7], (unsigned)tm.tm_mday % 32,
             months[(unsigned)tm.tm_mon % 12], year % 10000,
             (unsigned)tm.tm_hour % 24, (unsigned)tm.tm_min % 60,
             (unsigned)tm.tm_sec % 61);
}


/*
 * dsn_clean_text - remote text made safe for a header field: each run of
 * whitespace or control bytes (CR, LF, TAB, NUL, ...) becomes one space,
 * bytes >= 0x80 become '?', no space at either end, at most max bytes.
 * Returns its length; dst holds max + 1 bytes.
 */
static size_t
dsn_clean_text(char *dst, size_t max, const char *src)
{
    size_t n = 0;
    int space = 0;

    dst[0] = '\0';
    if (src == NULL)
        return 0;
    for (; *src != '\0' && n < max; src++) {
        unsigned char c = (unsigned char)*src;

        if (c <= ' ' || c == 0x7f) {
            space = n > 0;
            continue;
        }
        if (space) {
            dst[n++] = ' ';
            space = 0;
            if (n == max)
                break;
        }
        dst[n++] = c >= 0x80 ? '?' : (char)c;
    }
    dst[n] = '\0';
    return n;
}


/*
 * dsn_clean_addr - an address or host name for a field: control bytes
 * become '?', spaces (a quoted local part) and 8-bit bytes (SMTPUTF8)
 * stay; at most DSN_ADDR_MAX. Returns its length; *eightbit is set when
 * a byte >= 0x80 was kept.
 */
static size_t
dsn_clean_addr(char dst[DSN_ADDR_MAX + 1], const char *src, int *eightbit)
{
    size_t n = 0;

    if (src == NULL)
        src = "";
    for (; *src != '\0' && n < DSN_ADDR_MAX; src++) {
        unsigned char c = (unsigned char)*src;

        if (c >= 0x80)
            *eightbit = 1;
        dst[n++] = c < ' ' || c == 0x7f ? '?' : (char)c;
    }
    dst[n] = '\0';
    return n;
}


/*
 * dsn_has_8bit - does s hold a byte >= 0x80?
 */
static int
dsn_has_8bit(const char *s)
{
    for (; s != NULL && *s != '\0'; s++) {
        if ((unsigned char)*s >= 0x80)
            return 1;
    }
    return 0;
}


/*
 * dsn_put_folded - write text s without control bytes starting at
 * column col, breaking lines at spaces before
 * DSN_LINE_SOFT and inside a word that cannot fit DSN_LINE_HARD; each new
 * line starts with indent. In a header field indent " " is the folding
 * white space: unfolding gives back s, except for a word broken by force,
 * which gains a space. Ends the line.
 */
static void
dsn_put_folded(struct dsn_buf *b, size_t col, const char *s, size_t n,
               const char *indent)
{
    size_t ind = strlen(indent);
    size_t i = 0;

    ASSERT(ind < DSN_LINE_SOFT);
    while (i < n) {
        size_t w = i, wlen;

        while (w < n && s[w] != ' ')
            w++;
        wlen = w - i;
        if (i > 0) {
            /* Fold only before a word, never after the indent alone:
               RFC 5322 forbids a line of nothing but white space. */
            if (col + 1 + wlen > DSN_LINE_SOFT && col > ind && wlen > 0) {
                dsn_put(b, "\r\n", 2);
                dsn_puts(b, indent);
                col = ind;
            } else {
                dsn_put(b, " ", 1);
                col++;
            }
        }
        /* A space goes on a line only while it is short (above). */
        ASSERT(col < DSN_LINE_HARD);
        while (col + wlen > DSN_LINE_HARD) {
            size_t k = DSN_LINE_HARD - col;

            dsn_put(b, s + i, k);
            dsn_put(b, "\r\n", 2);
            dsn_puts(b, indent);
            col = ind;
            i += k;
            wlen -= k;
        }
        dsn_put(b, s + i, wlen);
        col += wlen;
        i = w + 1;
    }
    dsn_put(b, "\r\n", 2);
}


/* dsn_put_field - "Name: value" folded; value is cleaned text */
static void
dsn_put_field(struct dsn_buf *b, const char *name, const char *value)
{
    size_t col = strlen(name) + 2;

    dsn_puts(b, name);
    dsn_put(b, ": ", 2);
    dsn_put_folded(b, col, value, strlen(value), " ");
}


/* dsn_put_date_field - "Name: <RFC 5322 date>" */
static void
dsn_put_date_field(struct dsn_buf *b, const char *name, int64_t unix_s)
{
    char date[40];

    dsn_date(date, unix_s);
    dsn_putf(b, "%s: %s\r\n", name, date);
}


/* dsn_status_ok - "class.subject.detail" as RFC 3463 writes it */
static int
dsn_status_ok(const char *s)
{
    int i, digits;

    if (s == NULL || (s[0] != '2' && s[0] != '4' && s[0] != '5') ||
        s[1] != '.')
        return 0;
    s += 2;
    for (i = 0; i < 2; i++) {
        for (digits = 0; *s >= '0' && *s <= '9'; s++)
            digits++;
        if (digits < 1 || digits > 3)
            return 0;
        if (i == 0 && *s++ != '.')
            return 0;
    }
    return *s == '\0';
}


/* dsn_diag_type_len - length of a leading "atom;" type, 0 if there is none */
static size_t
dsn_diag_type_len(const char *s)
{
    size_t n = 0;

    while ((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') ||
           (s[n] >= '0' && s[n] <= '9') || s[n] == '-')
        n++;
    if (n == 0 || n > 32)
        return 0;
    while (s[n] == ' ')
        n++;
    return s[n] == ';' ? n + 1 : 0;
}


/*
 * dsn_copy_line - one line of the original into b with CRLF: NUL becomes
 * '?', and a line over DSN_LINE_HARD is broken (with a space after the
 * break in the header, so the break is a fold). Returns 1 if 8-bit.
 */
static int
dsn_copy_line(struct dsn_buf *b, const char *s, size_t n, int in_header)
{
    int eightbit = 0;
    size_t col = 0, i;

    dsn_reserve(b, n + 2 + 3 * (n / (DSN_LINE_HARD - 1) + 1));
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (col == DSN_LINE_HARD) {
            b->p[b->len++] = '\r';
            b->p[b->len++] = '\n';
            col = 0;
            if (in_header) {
                b->p[b->len++] = ' ';
                col = 1;
            }
        }
        if (c >= 0x80)
            eightbit = 1;
        b->p[b->len++] = c == '\0' ? '?' : (char)c;
        col++;
    }
    b->p[b->len++] = '\r';
    b->p[b->len++] = '\n';
    return eightbit;
}


/*
 * dsn_copy_orig - the returned part of the original into b: its header
 * (up to the blank line, or all of it when there is none) or, when full,
 * the whole message; whole lines only, at most max bytes.
 */
static void
dsn_copy_orig(struct dsn_buf *b, const char *orig, size_t n, int full,
              size_t max, int *eightbit, int *truncated)
{
    size_t pos = 0;
    int in_header = 1;

    while (pos < n) {
        size_t e = pos, next, cost;

        while (e < n && orig[e] != '\r' && orig[e] != '\n')
            e++;
        /* CRLF, or a bare CR or LF (not from our SMTP server, which
           refuses them, but a spool file is input too). */
        next = e;
        if (next < n && orig[next] == '\r')
            next++;
        if (next < n && orig[next] == '\n')
            next++;
        if (e == pos && in_header) {
            if (!full)
                break;
            in_header = 0;
        }
        cost = (e - pos) + 2 + 3 * ((e - pos) / (DSN_LINE_HARD - 1) + 1);
        if (b->len + cost > max) {
            *truncated = 1;
            break;
        }
        if (dsn_copy_line(b, orig + pos, e - pos, in_header))
            *eightbit = 1;
        pos = next;
    }
}


/* dsn_count - occurrences of needle in the n bytes at s */
static unsigned
dsn_count(const char *s, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    unsigned count = 0;
    const char *p = s, *end = s + n;

    while ((size_t)(end - p) >= k &&
           (p = memmem(p, (size_t)(end - p), needle, k)) != NULL) {
        count++;
        p += k;
    }
    return count;
}


/* Cleaned strings shared by the steps of one dsn_build(). */
struct dsn_ctx {
    const struct dsn_msg *m;
    char host[DSN_ADDR_MAX + 1];
    char from[DSN_ADDR_MAX + 16];
    char sender[DSN_ADDR_MAX + 1];
    char queue_id[DSN_ADDR_MAX + 1];
    char envid[DSN_ADDR_MAX + 1];
    int any_failed;
    int sender_eightbit;         /* an 8-bit To: (needs SMTPUTF8) */
    int rcpt_eightbit;           /* an 8-bit address in parts 1 and 2 */
    int orig_eightbit;
    int truncated;
    size_t orig_max;
    const struct dsn_buf *orig;  /* the copy to return */
    uint64_t rand;
    char boundary[48];
};


/* dsn_part_start - delimiter and the part's header fields */
static void
dsn_part_start(struct dsn_buf *b, const struct dsn_ctx *c, const char *type,
               const char *description, int eightbit)
{
    dsn_putf(b, "\r\n--%s\r\n", c->boundary);
    dsn_putf(b, "Content-Type: %s\r\n", type);
    if (description != NULL)
        dsn_putf(b, "Content-Description: %s\r\n", description);
    if (eightbit)
        dsn_puts(b, "Content-Transfer-Encoding: 8bit\r\n");
    dsn_put(b, "\r\n", 2);
}


/* dsn_put_headers - the DSN's own header */
static void
dsn_put_headers(struct dsn_buf *b, const struct dsn_ctx *c)
{
    const struct dsn_msg *m = c->m;
    int64_t now = m->now_unix ? m->now_unix : (int64_t)time(NULL);
    char line[DSN_ADDR_MAX + 64];

    snprintf(line, sizeof line, "Mail Delivery System <%s>", c->from);
    dsn_put_field(b, "From", line);
    snprintf(line, sizeof line, "<%s>", c->sender);
    dsn_put_field(b, "To", line);
    dsn_put_field(b, "Subject", c->any_failed
                  ? "Undelivered Mail Returned to Sender"
                  : "Delayed Mail (still being retried)");
    dsn_put_date_field(b, "Date", now);
    snprintf(line, sizeof line, "<%lld.%016llx@%s>", (long long)now,
             (unsigned long long)c->rand, c->host);
    dsn_put_field(b, "Message-ID", line);
    dsn_puts(b, "MIME-Version: 1.0\r\n");
    dsn_puts(b, "Auto-Submitted: auto-replied\r\n");
    dsn_puts(b, "Content-Type: multipart/report; "
             "report-type=delivery-status;\r\n");
    dsn_putf(b, "\tboundary=\"%s\"\r\n", c->boundary);
    dsn_put(b, "\r\n", 2);
    dsn_puts(b, "This is a MIME-encapsulated message.\r\n");
}


/* dsn_put_explanation - part 1: text/plain for the human sender */
static void
dsn_put_explanation(struct dsn_buf *b, const struct dsn_ctx *c)
{
    const struct dsn_msg *m = c->m;
    char diag[DSN_DIAG_MAX + 1], addr[DSN_ADDR_MAX + 1];
    char mta[DSN_ADDR_MAX + 1], text[DSN_DIAG_MAX + 2 * DSN_ADDR_MAX + 64];
    char date[40];
    unsigned i;
    int dummy = 0;

    dsn_part_start(b, c, c->rcpt_eightbit ? "text/plain; charset=utf-8"
                                          : "text/plain; charset=us-ascii",
                   "Notification", c->rcpt_eightbit);
    dsn_putf(b, "This is the mail system at host %s.\r\n\r\n", c->host);
    if (c->any_failed) {
        dsn_puts(b, "I'm sorry to have to inform you that your message "
                 "could not\r\nbe delivered to one or more recipients. "
                 "It is attached below.\r\n\r\n");
    } else {
        dsn_puts(b, "This is a warning only: your message has not been "
                 "delivered yet\r\nto the recipients below. The mail "
                 "system keeps trying; you do not\r\nneed to send it "
                 "again.\r\n\r\n");
    }
    dsn_putf(b, "For further assistance, please send mail to %s.\r\n\r\n",
             c->from);
    if (c->truncated) {
        dsn_putf(b, "The returned copy of your message was cut short to "
                 "%zu bytes.\r\n\r\n", c->orig->len);
    }
    dsn_puts(b, "                   The mail system\r\n");
    for (i = 0; i < m->rcpt_count; i++) {
        const struct dsn_rcpt *r = &m->rcpts[i];
        size_t n = dsn_clean_text(diag, DSN_DIAG_MAX, r->diagnostic);
        size_t skip = dsn_diag_type_len(diag);

        /* The human reads the reply, not its "smtp;" type. */
        while (skip < n && diag[skip] == ' ')
            skip++;
        dsn_clean_addr(addr, r->addr, &dummy);
        dsn_clean_text(mta, DSN_ADDR_MAX, r->remote_mta);
        dsn_put(b, "\r\n", 2);
        snprintf(text, sizeof text, "<%s>: %s", addr,
                 r->action == DSN_ACTION_DELAYED ? "delayed, still trying"
                                                 : "delivery failed");
        dsn_put_folded(b, 0, text, strlen(text), "    ");
        if (r->action == DSN_ACTION_DELAYED && r->retry_until_unix != 0) {
            dsn_date(date, r->retry_until_unix);
            dsn_putf(b, "    until %s\r\n", date);
        }
        if (skip < n) {
            if (mta[0] != '\0')
                snprintf(text, sizeof text, "host %s said: %s", mta,
                         diag + skip);
            else
                snprintf(text, sizeof text, "%s", diag + skip);
            dsn_puts(b, "    ");
            dsn_put_folded(b, 4, text, strlen(text), "    ");
        }
    }
}


/* dsn_put_status - part 2: message/delivery-status (RFC 3464) */
static void
dsn_put_status(struct dsn_buf *b, const struct dsn_ctx *c)
{
    const struct dsn_msg *m = c->m;
    char diag[DSN_DIAG_MAX + 1], addr[DSN_ADDR_MAX + 1];
    char text[DSN_DIAG_MAX + DSN_ADDR_MAX + 16];
    unsigned i;

    dsn_part_start(b, c, "message/delivery-status", "Delivery report",
                   c->rcpt_eightbit);
    snprintf(text, sizeof text, "dns; %s", c->host);
    dsn_put_field(b, "Reporting-MTA", text);
    if (c->envid[0] != '\0')
        dsn_put_field(b, "Original-Envelope-Id", c->envid);
    dsn_put_field(b, "X-Ringmail-Queue-ID", c->queue_id);
    if (m->arrival_unix != 0)
        dsn_put_date_field(b, "Arrival-Date", m->arrival_unix);
    for (i = 0; i < m->rcpt_count; i++) {
        const struct dsn_rcpt *r = &m->rcpts[i];
        int delayed = r->action == DSN_ACTION_DELAYED, eightbit = 0;
        size_t n;

        dsn_put(b, "\r\n", 2);
        dsn_clean_addr(addr, r->addr, &eightbit);
        /* RFC 6533: an address with 8-bit bytes is of type utf-8. */
        snprintf(text, sizeof text, "%s; %s",
                 eightbit ? "utf-8" : "rfc822", addr);
        dsn_put_field(b, "Final-Recipient", text);
        if (r->orcpt != NULL && r->orcpt[0] != '\0') {
            dsn_clean_addr(addr, r->orcpt, &eightbit);
            dsn_put_field(b, "Original-Recipient", addr);
        }
        dsn_put_field(b, "Action", dsn_action_name(r->action));
        dsn_put_field(b, "Status", dsn_status_ok(r->status)
                      ? r->status : delayed ? "4.0.0" : "5.0.0");
        if (dsn_clean_text(addr, DSN_ADDR_MAX, r->remote_mta) > 0) {
            snprintf(text, sizeof text, "dns; %s", addr);
            dsn_put_field(b, "Remote-MTA", text);
        }
        n = dsn_clean_text(diag, DSN_DIAG_MAX, r->diagnostic);
        if (n > 0) {
            /* Diagnostic-Code is "type; text": make one up when the
               caller passed a bare reply. */
            snprintf(text, sizeof text, "%s%s",
                     dsn_diag_type_len(diag) ? "" : "smtp; ", diag);
            dsn_put_field(b, "Diagnostic-Code", text);
        }
        if (r->last_attempt_unix != 0)
            dsn_put_date_field(b, "Last-Attempt-Date", r->last_attempt_unix);
        if (delayed && r->retry_until_unix != 0)
            dsn_put_date_field(b, "Will-Retry-Until", r->retry_until_unix);
    }
}


/* dsn_compose - the whole DSN with boundary c->boundary */
static void
dsn_compose(struct dsn_buf *b, const struct dsn_ctx *c)
{
    b->len = 0;
    dsn_put_headers(b, c);
    dsn_put_explanation(b, c);
    dsn_put_status(b, c);
    if (c->m->return_full) {
        dsn_part_start(b, c, "message/rfc822", "Undelivered Message",
                       c->orig_eightbit);
    } else {
        dsn_part_start(b, c, "text/rfc822-headers",
                       "Undelivered Message Headers", c->orig_eightbit);
    }
    dsn_put(b, c->orig->p, c->orig->len);
    dsn_putf(b, "\r\n--%s--\r\n", c->boundary);
}


/* dsn_build - the complete DSN for m into a (see dsn.h) */
int
dsn_build(struct arena *a, const struct dsn_msg *m, struct dsn_out *out)
{
    struct dsn_ctx *c;
    struct dsn_buf orig = { 0 }, b = { 0 };
    const char *s;
    unsigned i, try;
    int dummy = 0;

    ASSERT(m->hostname != NULL);
    ASSERT(m->queue_id != NULL);
    ASSERT(m->orig != NULL || m->orig_bytes == 0);
    memset(out, 0, sizeof *out);
    /* Never bounce a bounce: <> gets no DSN (RFC 5321 4.5.5). */
    if (m->sender == NULL || m->sender[0] == '\0')
        return -EINVAL;
    if (strlen(m->sender) > DSN_ADDR_MAX)
        return -EINVAL;
    for (s = m->sender; *s != '\0'; s++) {
        if ((unsigned char)*s < ' ' || *s == 0x7f)
            return -EINVAL;
    }
    if (m->rcpt_count == 0 || m->rcpts == NULL)
        return -EINVAL;

    c = xcalloc(1, sizeof *c);
    c->m = m;
    dsn_clean_addr(c->host, m->hostname, &dummy);
    if (m->postmaster != NULL && m->postmaster[0] != '\0')
        dsn_clean_addr(c->from, m->postmaster, &dummy);
    else
        snprintf(c->from, sizeof c->from, "MAILER-DAEMON@%s", c->host);
    /* Checked above: no control byte, so it goes into To: as it is. */
    snprintf(c->sender, sizeof c->sender, "%s", m->sender);
    c->sender_eightbit = dsn_has_8bit(m->sender);
    dsn_clean_addr(c->queue_id, m->queue_id, &dummy);
    dsn_clean_addr(c->envid, m->envid, &dummy);
    for (i = 0; i < m->rcpt_count; i++) {
        ASSERT(m->rcpts[i].addr != NULL);
        if (m->rcpts[i].action == DSN_ACTION_FAILED)
            c->any_failed = 1;
        if (dsn_has_8bit(m->rcpts[i].addr) || dsn_has_8bit(m->rcpts[i].orcpt))
            c->rcpt_eightbit = 1;
    }

    c->orig_max = m->return_full ? (m->full_max_bytes ? m->full_max_bytes
                                    : DSN_FULL_MAX_DEFAULT)
                                 : DSN_HEADERS_MAX;
    dsn_reserve(&orig, 1);
    dsn_copy_orig(&orig, m->orig, m->orig_bytes, m->return_full,
                  c->orig_max, &c->orig_eightbit, &c->truncated);
    c->orig = &orig;

    c->rand = m->seed;
    if (c->rand == 0 && getrandom(&c->rand, sizeof c->rand, 0) !=
                            (ssize_t)sizeof c->rand)
        c->rand = now_us() ^ ((uint64_t)(uintptr_t)c << 16);
    for (try = 0; try < DSN_BOUNDARY_TRIES; try++) {
        /* "=_" cannot occur in base64 or quoted-printable text. */
        snprintf(c->boundary, sizeof c->boundary, "=_ringmail_%016llx%016llx",
                 (unsigned long long)dsn_rand(&c->rand),
                 (unsigned long long)dsn_rand(&c->rand));
        dsn_compose(&b, c);
        /* Content-Type, three part delimiters and the close delimiter. */
        if (dsn_count(b.p, b.len, c->boundary) == 5)
            break;
    }
    if (try == DSN_BOUNDARY_TRIES)
        panic("dsn: no unique boundary in %u tries", try);

    out->text = b.p;
    out->bytes = b.len;
    out->eightbit = c->sender_eightbit || c->rcpt_eightbit ||
                    c->orig_eightbit;
    out->truncated = c->truncated;
    memcpy(out->boundary, c->boundary, sizeof out->boundary);
    arena_cleanup_add(a, free, b.p);
    free(orig.p);
    free(c);
    return 0;
}


const char *
dsn_action_name(enum dsn_action action)
{
    switch (action) {
    case DSN_ACTION_FAILED:
        return "failed";
    case DSN_ACTION_DELAYED:
        return "delayed";
    }
    return "unknown";
}
