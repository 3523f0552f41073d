/*
 * delivery_log - see delivery_log.h
 *
 * Two buffers: records are formatted into dl->fill; delivery_log_flush()
 * hands it to the ring as dl->inflight and formatting goes on in the
 * other. A write completion only retires its buffer; the next write
 * starts from the next before-wait hook, which runs right after the reap
 * pass, so no turn is lost and completions never submit.
 *
 * A record reserves its worst case before formatting (every byte of
 * every string escaped as \u00XX: six bytes), so the formatter writes
 * without bounds checks and a record is either whole or absent.
 */
#include "delivery_log.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* The fixed part of a line: names, numbers, punctuation (about 200). */
#define DELIVERY_LOG_LINE_FIXED 320
/* Escaping turns one byte into at most six ("\u00XX"). */
#define DELIVERY_LOG_ESC_MAX 6
#define DELIVERY_LOG_REC_MAX \
    (DELIVERY_LOG_LINE_FIXED + \
     DELIVERY_LOG_ESC_MAX * (DELIVERY_LOG_TEXT_MAX + \
                             6 * DELIVERY_LOG_FIELD_MAX))

_Static_assert(DELIVERY_LOG_REC_MAX <= DELIVERY_LOG_BUF_MIN,
               "a record must fit an empty buffer");

static op_done_fn delivery_log_submit_done, delivery_log_reopen_done,
    delivery_log_reopen_close_done;


/* delivery_log_open - open path for appending; shard start, synchronous */
int
delivery_log_open(struct delivery_log *dl, struct loop *lp, const char *path,
                  unsigned shard_id)
{
    int fd, i;

    ASSERT(path != NULL);
    memset(dl, 0, sizeof *dl);
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return -errno;
    dl->lp = lp;
    dl->path = xstrdup(path);
    dl->shard_id = shard_id;
    dl->fd = fd;
    dl->buf_max = DELIVERY_LOG_BUF_MAX;
    for (i = 0; i < 2; i++) {
        dl->bufs[i].data = xmalloc(DELIVERY_LOG_BUF_MIN);
        dl->bufs[i].cap = DELIVERY_LOG_BUF_MIN;
    }
    dl->fill = &dl->bufs[0];
    dl->write_op.done = delivery_log_submit_done;
    dl->open_op.done = delivery_log_reopen_done;
    dl->close_op.done = delivery_log_reopen_close_done;
    return 0;
}


const char *
delivery_log_outcome_name(enum delivery_log_outcome o)
{
    switch (o) {
    case DELIVERY_LOG_DELIVERED:
        return "delivered";
    case DELIVERY_LOG_DEFERRED:
        return "deferred";
    case DELIVERY_LOG_BOUNCED:
        return "bounced";
    case DELIVERY_LOG_EXPIRED:
        return "expired";
    }
    return "unknown";
}


/* delivery_log_text_len - bytes of s to log: at most max, whole chars */
static size_t
delivery_log_text_len(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    int back;

    if (n <= max)
        return n;
    /* s[max] is the first byte left out: if it continues a character,
       leave out that character's first bytes too (at most 3). */
    n = max;
    for (back = 0; back < 3 && n > 0 &&
                   ((unsigned char)s[n] & 0xc0) == 0x80; back++)
        n--;
    return n;
}


/*
 * delivery_log_utf8_len - length of the valid UTF-8 character at s (at
 * most n bytes), 0 when it is not one (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF).
 */
static size_t
delivery_log_utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xbf;
    size_t len, i;

    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4;
    else
        return 0;
    if (len > n)
        return 0;
    /* The second byte's range is narrower after these leads. */
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (i = 2; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    }
    return len;
}


/* delivery_log_put_hex - "\u00XX" for one byte */
static char *
delivery_log_put_hex(char *p, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";

    memcpy(p, "\\u00", 4);
    p[4] = hex[c >> 4];
    p[5] = hex[c & 0xf];
    return p + 6;
}


/* delivery_log_put_str - "name":"escaped s", at most max bytes of s */
static char *
delivery_log_put_str(char *p, const char *name, const char *s, size_t max)
{
    static const char short_esc[0x20] = {
        ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't',
    };
    const unsigned char *u, *end;
    size_t n;

    p = stpcpy(p, name);
    *p++ = '"';
    if (s == NULL)
        s = "";
    n = delivery_log_text_len(s, max);
    u = (const unsigned char *)s;
    end = u + n;
    while (u < end) {
        unsigned char c = *u;
        size_t k;

        if (c >= 0x20 && c < 0x7f) {
            if (c == '"' || c == '\\')
                *p++ = '\\';
            *p++ = (char)c;
            u++;
            continue;
        }
        if (c >= 0x80 && (k = delivery_log_utf8_len(u, (size_t)(end - u)))) {
            memcpy(p, u, k);
            p += k;
            u += k;
            continue;
        }
        if (c < 0x20 && short_esc[c] != 0) {
            *p++ = '\\';
            *p++ = short_esc[c];
        } else {
            p = delivery_log_put_hex(p, c);
        }
        u++;
    }
    *p++ = '"';
    return p;
}


/* delivery_log_put_u64 - decimal digits of v */
static char *
delivery_log_put_u64(char *p, uint64_t v)
{
    char tmp[20];
    int n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        *p++ = tmp[--n];
    return p;
}


/* delivery_log_put_ms - milliseconds as seconds: "12.345" */
static char *
delivery_log_put_ms(char *p, uint64_t ms)
{
    unsigned frac = (unsigned)(ms % 1000);

    p = delivery_log_put_u64(p, ms / 1000);
    *p++ = '.';
    *p++ = (char)('0' + frac / 100);
    *p++ = (char)('0' + frac / 10 % 10);
    *p++ = (char)('0' + frac % 10);
    return p;
}


/* delivery_log_format - the line for r at p; returns its end */
static char *
delivery_log_format(const struct delivery_log *dl, char *p,
                    const struct delivery_log_rec *r)
{
    uint64_t ts_ms = (uint64_t)r->ts_ms;

    if (r->ts_ms <= 0) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    }
    p = stpcpy(p, "{\"ts\":");
    p = delivery_log_put_ms(p, ts_ms);
    p = delivery_log_put_str(p, ",\"id\":", r->id, DELIVERY_LOG_FIELD_MAX);
    p = stpcpy(p, ",\"shard\":");
    p = delivery_log_put_u64(p, dl->shard_id);
    p = delivery_log_put_str(p, ",\"sender\":", r->sender,
                             DELIVERY_LOG_FIELD_MAX);
    p = delivery_log_put_str(p, ",\"rcpt\":", r->rcpt,
                             DELIVERY_LOG_FIELD_MAX);
    p = stpcpy(p, ",\"outcome\":\"");
    p = stpcpy(p, delivery_log_outcome_name(r->outcome));
    p = stpcpy(p, "\",\"code\":");
    if (r->code < 0) {
        *p++ = '-';
        p = delivery_log_put_u64(p, (uint64_t)-(int64_t)r->code);
    } else {
        p = delivery_log_put_u64(p, (uint64_t)r->code);
    }
    p = delivery_log_put_str(p, ",\"enhanced\":", r->enhanced,
                             DELIVERY_LOG_FIELD_MAX);
    p = delivery_log_put_str(p, ",\"response\":", r->response,
                             DELIVERY_LOG_TEXT_MAX);
    p = delivery_log_put_str(p, ",\"host\":", r->host,
                             DELIVERY_LOG_FIELD_MAX);
    p = delivery_log_put_str(p, ",\"ip\":", r->ip, DELIVERY_LOG_FIELD_MAX);
    p = stpcpy(p, ",\"attempt\":");
    p = delivery_log_put_u64(p, r->attempt);
    p = stpcpy(p, ",\"queue_seconds\":");
    p = delivery_log_put_ms(p, r->queue_ms);
    p = stpcpy(p, "}\n");
    return p;
}


/* delivery_log_rec_max - worst-case bytes of r's line */
static size_t
delivery_log_rec_max(const struct delivery_log_rec *r)
{
    const char *f[6] = { r->id, r->sender, r->rcpt, r->enhanced, r->host,
                         r->ip };
    size_t n = DELIVERY_LOG_LINE_FIXED, i;

    for (i = 0; i < ARRAY_SIZE(f); i++) {
        if (f[i] != NULL)
            n += DELIVERY_LOG_ESC_MAX * strnlen(f[i], DELIVERY_LOG_FIELD_MAX);
    }
    if (r->response != NULL)
        n += DELIVERY_LOG_ESC_MAX * strnlen(r->response,
                                            DELIVERY_LOG_TEXT_MAX);
    ASSERT(n <= DELIVERY_LOG_REC_MAX);
    return n;
}


/* delivery_log_submit - write the filling buffer; the other one fills */
static void
delivery_log_submit(struct delivery_log *dl)
{
    struct delivery_log_buf *b = dl->fill;

    ASSERT(dl->inflight == NULL);
    ASSERT(!dl->opening);
    ASSERT(b->len > 0);
    dl->inflight = b;
    dl->inflight_off = 0;
    dl->fill = b == &dl->bufs[0] ? &dl->bufs[1] : &dl->bufs[0];
    ASSERT(dl->fill->len == 0);
    dl->writes++;
    /* Offset -1: the file position, which O_APPEND puts at the end. */
    io_uring_prep_write(loop_sqe(dl->lp, &dl->write_op), dl->fd, b->data,
                        (unsigned)b->len, (uint64_t)-1);
}


/* delivery_log_room - can the filling buffer take need more bytes? */
static int
delivery_log_room(struct delivery_log *dl, size_t need)
{
    struct delivery_log_buf *b = dl->fill;
    size_t cap = b->cap;

    if (b->len + need <= b->cap)
        return 1;
    while (cap < b->len + need && cap < dl->buf_max)
        cap *= 2;
    cap = MIN(cap, dl->buf_max);
    if (b->len + need > cap)
        return 0;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
    return 1;
}


/* delivery_log_record - format r into the filling buffer, or drop it */
void
delivery_log_record(struct delivery_log *dl, const struct delivery_log_rec *r)
{
    size_t need = delivery_log_rec_max(r);
    struct delivery_log_buf *b;
    char *end;

    ASSERT(dl->fd >= 0);
    ASSERT(dl->buf_max >= DELIVERY_LOG_REC_MAX);
    if (!delivery_log_room(dl, need)) {
        /* A turn that filled the buffer on its own: write it now rather
           than drop, if nothing else is on its way to the disk. */
        if (dl->inflight == NULL && !dl->opening && dl->fill->len > 0)
            delivery_log_submit(dl);
        if (!delivery_log_room(dl, need)) {
            dl->dropped++;
            if (!dl->drop_logged) {
                dl->drop_logged = 1;
                log_panic("delivery_log", "shard %u: %s: %zu bytes "
                          "buffered while the disk is busy; dropping "
                          "records (counted, logged once)", dl->shard_id,
                          dl->path, dl->fill->len);
            }
            return;
        }
    }
    b = dl->fill;
    end = delivery_log_format(dl, b->data + b->len, r);
    ASSERT((size_t)(end - (b->data + b->len)) <= need);
    b->len = (size_t)(end - b->data);
    ASSERT(b->data[b->len - 1] == '\n');
    dl->records++;
}


/* delivery_log_submit_done - a write finished: retire, continue, or lose */
static void
delivery_log_submit_done(struct op *op, int res, uint32_t cqe_flags)
{
    struct delivery_log *dl = container_of(op, struct delivery_log,
                                           write_op);
    struct delivery_log_buf *b = dl->inflight;
    size_t left;

    ASSERT(b != NULL);
    left = b->len - dl->inflight_off;
    if (res == -EINTR || res == -EAGAIN) {
        io_uring_prep_write(loop_sqe(dl->lp, &dl->write_op), dl->fd,
                            b->data + dl->inflight_off, (unsigned)left,
                            (uint64_t)-1);
        return;
    }
    if (res == 0)
        res = -EIO;              /* no progress: do not spin on it */
    if (res < 0) {
        const char *p = b->data + dl->inflight_off;
        uint64_t lines = 0;

        while ((p = memchr(p, '\n', (size_t)(b->data + b->len - p)))) {
            lines++;
            p++;
        }
        dl->lost += lines;
        dl->write_errors++;
        if (dl->error_logged != -res) {
            dl->error_logged = -res;
            log_panic("delivery_log", "shard %u: write %s: %s; %llu "
                      "records lost", dl->shard_id, dl->path,
                      strerror(-res), (unsigned long long)lines);
        }
    } else {
        dl->bytes_written += (uint64_t)res;
        if ((size_t)res < left) {
            /* Short write (disk full, a signal): finish it. */
            dl->inflight_off += (size_t)res;
            io_uring_prep_write(loop_sqe(dl->lp, &dl->write_op), dl->fd,
                                b->data + dl->inflight_off,
                                (unsigned)(left - (size_t)res),
                                (uint64_t)-1);
            return;
        }
        dl->error_logged = 0;
    }
    b->len = 0;
    dl->inflight = NULL;
    dl->inflight_off = 0;
}


/* delivery_log_flush - before-wait hook: reopen, or write what is buffered */
void
delivery_log_flush(struct delivery_log *dl)
{
    if (dl->inflight != NULL || dl->opening)
        return;
    if (dl->reopen_wanted && !dl->closing) {
        /* Clear first: a reopen asked for during this one runs again. */
        dl->reopen_wanted = 0;
        dl->opening = 1;
        io_uring_prep_openat(loop_sqe(dl->lp, &dl->open_op), AT_FDCWD,
                             dl->path,
                             O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        return;
    }
    if (dl->fill->len > 0)
        delivery_log_submit(dl);
}


/* delivery_log_reopen_done - the reopened file replaces the old one */
static void
delivery_log_reopen_done(struct op *op, int res, uint32_t cqe_flags)
{
    struct delivery_log *dl = container_of(op, struct delivery_log, open_op);

    ASSERT(dl->opening);
    dl->opening = 0;
    if (res < 0) {
        log_panic("delivery_log", "shard %u: reopen %s: %s; still writing "
                  "to the old file", dl->shard_id, dl->path,
                  strerror(-res));
        return;
    }
    dl->closing = 1;
    io_uring_prep_close(loop_sqe(dl->lp, &dl->close_op), dl->fd);
    dl->fd = res;
    dl->reopens++;
}


static void
delivery_log_reopen_close_done(struct op *op, int res, uint32_t cqe_flags)
{
    struct delivery_log *dl = container_of(op, struct delivery_log,
                                           close_op);

    /* The old file is complete on this side; a close error is moot. */
    dl->closing = 0;
}


/* delivery_log_reopen - reopen the path at the next flush (logrotate) */
void
delivery_log_reopen(struct delivery_log *dl)
{
    dl->reopen_wanted = 1;
}


/* delivery_log_idle - nothing buffered, nothing in flight */
int
delivery_log_idle(const struct delivery_log *dl)
{
    return dl->inflight == NULL && !dl->opening && !dl->closing &&
           dl->fill->len == 0;
}


/* delivery_log_close - write the rest synchronously and free everything */
void
delivery_log_close(struct delivery_log *dl)
{
    struct delivery_log_buf *b = dl->fill;
    size_t off = 0;
    int i;

    ASSERT(dl->inflight == NULL);
    ASSERT(!dl->opening);
    ASSERT(!dl->closing);
    /* Teardown: the shard serves nothing any more, so it may block. */
    while (off < b->len) {
        ssize_t n = write(dl->fd, b->data + off, b->len - off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            log_panic("delivery_log", "shard %u: write %s at close: %s",
                      dl->shard_id, dl->path,
                      n < 0 ? strerror(errno) : "no progress");
            break;
        }
        off += (size_t)n;
        dl->bytes_written += (uint64_t)n;
    }
    close(dl->fd);
    dl->fd = -1;
    for (i = 0; i < 2; i++) {
        free(dl->bufs[i].data);
        dl->bufs[i].data = NULL;
        dl->bufs[i].len = 0;
    }
    free(dl->path);
    dl->path = NULL;
}
