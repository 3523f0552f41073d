/*
 * ringload_msg - ringload's pre-rendered SMTP text: commands, the header
 *                block with a token slot, the shared padded body
 *
 * DESCRIPTION
 *   Everything a transaction sends is rendered once at startup. Per
 *   message only the token's number changes: ringload_msg_patch()
 *   overwrites RINGLOAD_SEQ_DIGITS digits in a conn's copy of the header
 *   block (twice: X-Ringload-Token and Message-ID). The body padding, the
 *   dot line and an optional pipelined QUIT are one shared read-only
 *   buffer that every conn sends from, so a message costs no copy.
 *
 *   The message (header block plus padding, before the dot line) is
 *   exactly size bytes when size exceeds the header block by 2 or more;
 *   otherwise it is the header block alone. Padding lines are at most 78
 *   bytes with CRLF and never start with a dot, so nothing needs stuffing.
 *
 *   Recipient 0 is the -t address; recipient i > 0 is local+i@domain.
 * OWNERSHIP
 *   Every buffer is malloc'd here and freed by ringload_msg_fini().
 * ERRORS
 *   -EINVAL when an address or the HELO name holds CR, LF or '<' '>'.
 * SEE ALSO
 *   ringload.h
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ringload.h"
#include "util.h"

#define RINGLOAD_MSG_LINE_MAX 76      /* padding characters per line */

struct msg_buf {
    char *p;
    size_t len;
    size_t cap;
};


/* msg_buf_printf - append formatted text, growing the buffer */
static void __attribute__((format(printf, 2, 3)))
msg_buf_printf(struct msg_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    ASSERT(n >= 0);
    if (b->len + (size_t)n + 1 > b->cap) {
        b->cap = MAX(b->cap * 2, b->len + (size_t)n + 1);
        b->p = xrealloc(b->p, b->cap);
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}


/* msg_text_ok - no line breaks nor brackets: the text goes into commands */
static int
msg_text_ok(const char *s)
{
    return strpbrk(s, "\r\n<>") == NULL;
}


/* msg_rcpt - recipient i into b: the -t address, then local+i@domain */
static void
msg_rcpt(struct msg_buf *b, const char *to, unsigned i)
{
    const char *at = strrchr(to, '@');

    if (i == 0)
        msg_buf_printf(b, "%s", to);
    else if (at == NULL)
        msg_buf_printf(b, "%s+%u", to, i);
    else
        msg_buf_printf(b, "%.*s+%u%s", (int)(at - to), to, i, at);
}


/* msg_render_tail - padding to pad bytes, then the dot line and QUIT */
static void
msg_render_tail(struct ringload_msg *m, size_t pad)
{
    static const char dot_quit[] = ".\r\nQUIT\r\n";
    size_t left, n, k = 0;
    char *p;

    if (pad == 1)
        pad = 0;                 /* no line is one byte long */
    m->tail = xmalloc(pad + sizeof dot_quit);
    p = m->tail;
    left = pad;
    /* Each turn writes at least the CRLF: at most pad / 2 turns. */
    while (left >= 2) {
        n = MIN(RINGLOAD_MSG_LINE_MAX, left - 2);
        if (left - (n + 2) == 1)
            n--;                 /* never leave a single byte behind */
        for (size_t j = 0; j < n; j++)
            *p++ = (char)('a' + (k++ % 26));
        *p++ = '\r';
        *p++ = '\n';
        left -= n + 2;
    }
    ASSERT(left == 0);
    memcpy(p, dot_quit, sizeof dot_quit - 1);
    m->tail_len = pad + 3;
    m->tail_quit_len = pad + sizeof dot_quit - 1;
    m->size = m->head_len + pad;
}


/* ringload_msg_init - render commands, header template and padding */
int
ringload_msg_init(struct ringload_msg *m, const char *run_id,
                  const char *from, const char *to, unsigned rcpts,
                  size_t size, const char *helo)
{
    struct msg_buf b = { 0 };
    char date[64];
    time_t t = time(NULL);
    struct tm tm;
    unsigned i;

    memset(m, 0, sizeof *m);
    ASSERT(rcpts >= 1);
    ASSERT(rcpts <= RINGLOAD_RCPTS_MAX);
    if (!msg_text_ok(from) || !msg_text_ok(to) || !msg_text_ok(helo) ||
        strpbrk(helo, " \t") != NULL || helo[0] == '\0') {
        return -EINVAL;
    }
    m->rcpts = rcpts;

    m->cmd_off[0] = 0;
    msg_buf_printf(&b, "MAIL FROM:<%s>\r\n", from);
    for (i = 0; i < rcpts; i++) {
        m->cmd_off[i + 1] = b.len;
        msg_buf_printf(&b, "RCPT TO:<");
        msg_rcpt(&b, to, i);
        msg_buf_printf(&b, ">\r\n");
    }
    m->cmd_off[rcpts + 1] = b.len;
    msg_buf_printf(&b, "DATA\r\n");
    m->cmd_off[rcpts + 2] = b.len;
    m->envelope = b.p;

    memset(&b, 0, sizeof b);
    msg_buf_printf(&b, "EHLO %s\r\n", helo);
    m->ehlo = b.p;
    m->ehlo_len = b.len;
    memset(&b, 0, sizeof b);
    msg_buf_printf(&b, "HELO %s\r\n", helo);
    m->helo = b.p;
    m->helo_len = b.len;

    /* The Date is the run's start: one render, no clock per message. */
    localtime_r(&t, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z", &tm);
    memset(&b, 0, sizeof b);
    msg_buf_printf(&b, "Date: %s\r\nFrom: <%s>\r\nTo: <", date, from);
    msg_rcpt(&b, to, 0);
    msg_buf_printf(&b, ">\r\nSubject: ringload %s\r\nMessage-ID: <%s-",
                   run_id, run_id);
    m->seq_off[1] = b.len;
    msg_buf_printf(&b, "%0*u@ringload.invalid>\r\nX-Ringload-Token: ",
                   RINGLOAD_SEQ_DIGITS, 0u);
    m->token_off = b.len;
    msg_buf_printf(&b, "%s-", run_id);
    m->seq_off[0] = b.len;
    msg_buf_printf(&b, "%0*u", RINGLOAD_SEQ_DIGITS, 0u);
    m->token_len = b.len - m->token_off;
    msg_buf_printf(&b, "\r\n\r\n");
    m->head = b.p;
    m->head_len = b.len;

    msg_render_tail(m, size > m->head_len ? size - m->head_len : 0);
    return 0;
}


/* ringload_msg_patch - write seq into both token slots of head */
void
ringload_msg_patch(const struct ringload_msg *m, char *head, uint32_t seq)
{
    char digits[RINGLOAD_SEQ_DIGITS];
    int i;

    for (i = RINGLOAD_SEQ_DIGITS - 1; i >= 0; i--) {
        digits[i] = (char)('0' + seq % 10);
        seq /= 10;
    }
    memcpy(head + m->seq_off[0], digits, RINGLOAD_SEQ_DIGITS);
    memcpy(head + m->seq_off[1], digits, RINGLOAD_SEQ_DIGITS);
}


/* ringload_msg_fini - free the rendered text */
void
ringload_msg_fini(struct ringload_msg *m)
{
    free(m->envelope);
    free(m->ehlo);
    free(m->helo);
    free(m->head);
    free(m->tail);
    memset(m, 0, sizeof *m);
}
