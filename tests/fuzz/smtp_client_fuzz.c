/*
 * smtp_client_fuzz - libFuzzer target for the outbound protocol machine
 *
 * The input is a server's byte stream. Its first byte picks the read size
 * (1..64 bytes) so that the fuzzer explores every split of replies across
 * reads; the second picks how the driver behaves: whether the first
 * message is given before the greeting, how many messages (of 3
 * recipients each) go over the connection, whether PIPELINING is turned
 * off, which body is sent, whether the driver QUITs at the end, and how
 * the connection ends when the input does (the server closes, or a timer
 * fires).
 *
 * The machine must never crash, never consume more than it was given,
 * fill every result of a message exactly once (the statistics count each
 * filling; results never change after the message is reported), report
 * every message it was given, and produce output that adds up.
 *
 * Built with clang -fsanitize=fuzzer (see tests/fuzz/meson.build); in
 * the ordinary build replay.c runs the corpus through the same function
 * as a test.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_client.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MSGS 3
#define FUZZ_RCPTS 3

/* Bodies with the shapes that need care on the wire. */
static const char *const fuzz_bodies[] = {
    "Subject: x\r\n\r\nbody\r\n",
    ".\r\n..\r\n.x\r\n",
    "bare\nlf\n.dot\nno end",
    "cr\r.\r\nx\r",
};

struct fuzz {
    struct smtp_client c;
    struct smtp_client_msg m[FUZZ_MSGS];
    struct smtp_client_result res[FUZZ_MSGS][FUZZ_RCPTS];
    struct smtp_client_result snap[FUZZ_MSGS][FUZZ_RCPTS];
    struct iovec iov[FUZZ_MSGS][2];
    int reported[FUZZ_MSGS];
    unsigned count;              /* messages this run */
    unsigned next;               /* next to give */
    unsigned given;
    int quit;
};

static const char *const fuzz_rcpts[FUZZ_RCPTS] = {
    "a@fuzz.test", "b@fuzz.test", "c@fuzz.test",
};


/* fuzz_done - message k is reported: every result filled; keep a copy */
static void
fuzz_done(struct fuzz *f, unsigned k)
{
    unsigned i;

    ASSERT(k < f->given);
    ASSERT(!f->reported[k]);
    f->reported[k] = 1;
    for (i = 0; i < FUZZ_RCPTS; i++) {
        ASSERT(f->res[k][i].outcome != SMTP_CLIENT_PENDING);
        ASSERT(f->res[k][i].text[SMTP_CLIENT_TEXT_MAX - 1] == '\0');
    }
    memcpy(f->snap[k], f->res[k], sizeof f->snap[k]);
}


/* fuzz_in_flight - the message given and not reported, or -1 */
static int
fuzz_in_flight(const struct fuzz *f)
{
    unsigned k;

    for (k = 0; k < f->given; k++) {
        if (!f->reported[k])
            return (int)k;
    }
    return -1;
}


/* fuzz_next - the driver's move on READY and MESSAGE_DONE */
static void
fuzz_next(struct fuzz *f)
{
    while (f->next < f->count) {
        unsigned k = f->next++;

        f->given++;
        if (smtp_client_send(&f->c, &f->m[k]) !=
            SMTP_CLIENT_EV_MESSAGE_DONE)
            return;
        fuzz_done(f, k);
    }
    if (f->quit)
        smtp_client_quit(&f->c);
}


/* fuzz_take - drain the output, checking that it adds up */
static void
fuzz_take(struct fuzz *f)
{
    struct smtp_client_out o = smtp_client_out_take(&f->c);
    uint64_t bytes = 0;
    unsigned i;

    for (i = 0; i < o.iov_count; i++) {
        ASSERT(o.iov[i].iov_base != NULL);
        ASSERT(o.iov[i].iov_len > 0);
        bytes += o.iov[i].iov_len;
    }
    ASSERT(bytes == o.bytes);
    smtp_client_out_free(&o);
}


/* LLVMFuzzerTestOneInput - one connection: the input is the server */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct fuzz fz;
    struct fuzz *f = &fz;
    struct smtp_client_limits lim;
    const char *in;
    char *pending = NULL;
    size_t off = 0, pending_len = 0, len;
    uint64_t filled;
    unsigned step, flags, k;
    int closed = 0;

    if (size < 2)
        return 0;
    step = 1 + data[0] % 64;
    flags = data[1];
    in = (const char *)data + 2;
    len = size - 2;

    memset(f, 0, sizeof *f);
    memset(&lim, 0, sizeof lim);
    lim.helo_name = "fuzz.test";
    lim.reply_max = 8192;
    if (flags & 0x04)
        lim.ext_off = SMTP_CLIENT_EXT_PIPELINING;
    f->count = 1 + (flags >> 3) % FUZZ_MSGS;
    f->quit = (flags & 0x40) != 0;
    for (k = 0; k < FUZZ_MSGS; k++) {
        const char *body = fuzz_bodies[(k + (flags >> 4)) % 4];
        size_t half = strlen(body) / 2;

        /* Two iovecs, so a CR or a dot may sit on the boundary. */
        f->iov[k][0].iov_base = (void *)body;
        f->iov[k][0].iov_len = half;
        f->iov[k][1].iov_base = (void *)(body + half);
        f->iov[k][1].iov_len = strlen(body) - half;
        f->m[k].sender = k == 1 ? "" : "sender@fuzz.test";
        f->m[k].rcpts = fuzz_rcpts;
        f->m[k].rcpt_count = FUZZ_RCPTS;
        f->m[k].body = f->iov[k];
        f->m[k].body_iov_count = 2;
        f->m[k].body_bytes = strlen(body);
        f->m[k].results = f->res[k];
    }
    smtp_client_init(&f->c, &lim);
    if (flags & 0x01)
        fuzz_next(f);                  /* before the greeting */

    while (off < len || pending_len > 0) {
        size_t n = MIN((size_t)step, len - off), used;
        enum smtp_client_event ev;
        int k_open = fuzz_in_flight(f);

        pending = xrealloc(pending, pending_len + n + 1);
        memcpy(pending + pending_len, in + off, n);
        pending_len += n;
        off += n;
        used = smtp_client_feed(&f->c, pending, pending_len, &ev);
        ASSERT(used <= pending_len);
        ASSERT(strcmp(smtp_client_phase_name(smtp_client_phase(&f->c)),
                      "?") != 0);
        memmove(pending, pending + used, pending_len - used);
        pending_len -= used;
        if (ev == SMTP_CLIENT_EV_MESSAGE_DONE) {
            ASSERT(k_open >= 0);
            fuzz_done(f, (unsigned)k_open);
            fuzz_next(f);
        } else if (ev == SMTP_CLIENT_EV_READY) {
            ASSERT(k_open < 0);
            fuzz_next(f);
        } else if (ev == SMTP_CLIENT_EV_CLOSED) {
            ASSERT(f->c.state == SMTP_CLIENT_STATE_CLOSED);
            if (k_open >= 0)
                fuzz_done(f, (unsigned)k_open);
            closed = 1;
        } else if (ev == SMTP_CLIENT_EV_NONE) {
            /* Without an event, everything given is consumed. */
            ASSERT(pending_len == 0);
        }
        fuzz_take(f);
        if (closed)
            break;
        if (used == 0 && n == 0 && ev == SMTP_CLIENT_EV_NONE)
            break;
    }
    if (!closed) {
        int k_open = fuzz_in_flight(f);

        if (flags & 0x02)
            smtp_client_timeout(&f->c);
        else
            smtp_client_eof(&f->c);
        ASSERT(f->c.state == SMTP_CLIENT_STATE_CLOSED);
        if (k_open >= 0)
            fuzz_done(f, (unsigned)k_open);
        fuzz_take(f);
    }

    /* Every message given was reported, every result filled once. */
    ASSERT(fuzz_in_flight(f) < 0);
    ASSERT(f->c.stats.messages == f->given);
    filled = f->c.stats.rcpts_delivered + f->c.stats.rcpts_deferred +
             f->c.stats.rcpts_failed;
    ASSERT(filled == (uint64_t)f->given * FUZZ_RCPTS);
    for (k = 0; k < f->given; k++)
        ASSERT(memcmp(f->snap[k], f->res[k], sizeof f->snap[k]) == 0);
    free(pending);
    smtp_client_fini(&f->c);
    return 0;
}
