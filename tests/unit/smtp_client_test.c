/*
 * smtp_client_test - the outbound protocol machine, replies in, commands out
 *
 * A fake server is a script of canned replies fed through
 * smtp_client_feed(); a small driver (driver_next()) sends the queued
 * messages on READY and MESSAGE_DONE, as delivery.c will (though before
 * feeding what is left over, so one script holds the replies to several
 * messages; a real server cannot answer ahead). Each case checks
 * the exact bytes the client wrote and the per-recipient results. Where
 * it matters, the same script is also fed one byte at a time and must give
 * exactly the same bytes and results.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtp_client.h"
#include "util.h"

#define TRCPT_MAX 8
#define TMSG_MAX 4
#define TIOV_MAX 8

struct tmsg {
    struct smtp_client_msg m;
    const char *rcpts[TRCPT_MAX];
    struct smtp_client_result res[TRCPT_MAX];
    struct iovec iov[TIOV_MAX];
};

struct harness {
    struct smtp_client_limits lim;
    struct smtp_client c;
    char sent[256 * 1024];       /* everything the client wrote */
    size_t sent_len;
    char *pending;               /* server bytes not consumed yet */
    size_t pending_len;
    struct tmsg msgs[TMSG_MAX];
    unsigned msg_count;          /* queued by the test */
    unsigned msg_next;           /* next one the driver sends */
    int quit_at_end;             /* the driver quits when all are sent */
    unsigned ready, done, closed, flushes;
};

static struct harness H;


static void
harness_init(void)
{
    free(H.pending);
    memset(&H, 0, sizeof H);
    H.lim.helo_name = "client.test";
    smtp_client_init(&H.c, &H.lim);
}


/* harness_fini - free what the harness holds; results stay readable */
static void
harness_fini(void)
{
    smtp_client_fini(&H.c);
    free(H.pending);
    H.pending = NULL;
    H.pending_len = 0;
}


/* take - write the client's output "on the wire" (H.sent) */
static void
take(void)
{
    struct smtp_client_out o = smtp_client_out_take(&H.c);
    uint64_t bytes = 0;
    unsigned i;

    for (i = 0; i < o.iov_count; i++) {
        assert_non_null(o.iov[i].iov_base);
        assert_true(o.iov[i].iov_len > 0);
        assert_true(H.sent_len + o.iov[i].iov_len < sizeof H.sent);
        memcpy(H.sent + H.sent_len, o.iov[i].iov_base, o.iov[i].iov_len);
        H.sent_len += o.iov[i].iov_len;
        bytes += o.iov[i].iov_len;
    }
    assert_int_equal(bytes, o.bytes);
    H.sent[H.sent_len] = '\0';
    smtp_client_out_free(&o);
}


/* sent_reset - forget what was written so far */
static void
sent_reset(void)
{
    take();
    H.sent_len = 0;
    H.sent[0] = '\0';
}


/* msg_make - queue message k: body in one iovec, recipients up to NULL */
static struct tmsg *
msg_make(unsigned k, const char *sender, const char *body, ...)
{
    struct tmsg *t = &H.msgs[k];
    va_list ap;
    const char *r;

    assert_true(k < TMSG_MAX);
    memset(t, 0, sizeof *t);
    va_start(ap, body);
    while ((r = va_arg(ap, const char *)) != NULL) {
        assert_true(t->m.rcpt_count < TRCPT_MAX);
        t->rcpts[t->m.rcpt_count++] = r;
    }
    va_end(ap);
    t->iov[0].iov_base = (void *)body;
    t->iov[0].iov_len = strlen(body);
    t->m.sender = sender;
    t->m.rcpts = t->rcpts;
    t->m.body = t->iov;
    t->m.body_iov_count = 1;
    t->m.body_bytes = strlen(body);
    t->m.results = t->res;
    if (k + 1 > H.msg_count)
        H.msg_count = k + 1;
    return t;
}


/* msg_pieces - give message k a body made of several iovecs */
static void
msg_pieces(unsigned k, const char *const *pieces, unsigned n)
{
    struct tmsg *t = &H.msgs[k];
    unsigned i;

    assert_true(n <= TIOV_MAX);
    t->m.body_bytes = 0;
    for (i = 0; i < n; i++) {
        t->iov[i].iov_base = (void *)pieces[i];
        t->iov[i].iov_len = strlen(pieces[i]);
        t->m.body_bytes += strlen(pieces[i]);
    }
    t->m.body_iov_count = n;
}


/* driver_next - what delivery.c does on READY and MESSAGE_DONE */
static void
driver_next(void)
{
    while (H.msg_next < H.msg_count) {
        enum smtp_client_event ev;

        ev = smtp_client_send(&H.c, &H.msgs[H.msg_next++].m);
        if (ev != SMTP_CLIENT_EV_MESSAGE_DONE)
            return;
        H.done++;
    }
    if (H.quit_at_end)
        smtp_client_quit(&H.c);
}


/* server_n - the server sends data, read by the client step bytes a time */
static void
server_n(const char *data, size_t len, size_t step)
{
    size_t off = 0;

    while (off < len || H.pending_len > 0) {
        size_t n = MIN(step, len - off), used;
        enum smtp_client_event ev;

        H.pending = realloc(H.pending, H.pending_len + n + 1);
        memcpy(H.pending + H.pending_len, data + off, n);
        H.pending_len += n;
        off += n;
        used = smtp_client_feed(&H.c, H.pending, H.pending_len, &ev);
        assert_true(used <= H.pending_len);
        memmove(H.pending, H.pending + used, H.pending_len - used);
        H.pending_len -= used;
        switch (ev) {
        case SMTP_CLIENT_EV_READY:
            H.ready++;
            driver_next();
            break;
        case SMTP_CLIENT_EV_MESSAGE_DONE:
            H.done++;
            driver_next();
            break;
        case SMTP_CLIENT_EV_CLOSED:
            H.closed++;
            H.pending_len = 0;
            break;
        case SMTP_CLIENT_EV_FLUSH:
            H.flushes++;
            break;
        case SMTP_CLIENT_EV_NONE:
            break;
        }
        take();
        if (H.closed)
            break;
        if (used == 0 && n == 0 && ev == SMTP_CLIENT_EV_NONE)
            break;
    }
}


static void
server(const char *data)
{
    server_n(data, strlen(data), strlen(data) + 1);
}


/* check_result - one recipient's result */
static void
check_result(unsigned k, unsigned i, enum smtp_client_outcome outcome,
             unsigned code, const char *enhanced)
{
    const struct smtp_client_result *r = &H.msgs[k].res[i];

    assert_string_equal(smtp_client_outcome_name(r->outcome),
                        smtp_client_outcome_name(outcome));
    assert_int_equal(r->code, code);
    assert_string_equal(r->enhanced, enhanced);
}


#define GREETING "220 mx.test ESMTP\r\n"
#define EHLO_PIPE "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n" \
                  "250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
#define EHLO_PLAIN "250-mx.test\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n" \
                   "250 ENHANCEDSTATUSCODES\r\n"
#define BODY "Subject: hi\r\n\r\n.hidden\r\n..two\r\nend\r\n"
#define BODY_WIRE "Subject: hi\r\n\r\n..hidden\r\n...two\r\nend\r\n.\r\n"
#define MAIL_A "MAIL FROM:<a@b.test> SIZE=36 BODY=8BITMIME\r\n"


/* session_ready - greeting and EHLO done with the given EHLO reply */
static void
session_ready(const char *ehlo)
{
    server(GREETING);
    assert_string_equal(H.sent, "EHLO client.test\r\n");
    sent_reset();
    server(ehlo);
}


static void
test_plain_message(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "c@d.test", NULL);
    H.quit_at_end = 1;
    assert_string_equal(smtp_client_phase_name(smtp_client_phase(&H.c)),
                        "greeting");
    server(GREETING EHLO_PLAIN);
    assert_int_equal(H.ready, 1);
    assert_true(H.c.ext & SMTP_CLIENT_EXT_SIZE);
    assert_true(H.c.ext & SMTP_CLIENT_EXT_8BITMIME);
    assert_true(H.c.ext & SMTP_CLIENT_EXT_ENHANCED);
    assert_false(H.c.ext & SMTP_CLIENT_EXT_PIPELINING);
    assert_int_equal(H.c.size_max, 1000000);
    server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with .\r\n"
           "250 2.0.0 Ok: queued as X1\r\n221 2.0.0 Bye\r\n");
    assert_string_equal(H.sent,
                        "EHLO client.test\r\n"
                        MAIL_A
                        "RCPT TO:<c@d.test>\r\n"
                        "DATA\r\n"
                        BODY_WIRE
                        "QUIT\r\n");
    assert_int_equal(H.done, 1);
    assert_int_equal(H.closed, 1);
    check_result(0, 0, SMTP_CLIENT_DELIVERED, 250, "2.0.0");
    assert_string_equal(H.msgs[0].res[0].text, "Ok: queued as X1");
    assert_int_equal(H.msgs[0].res[0].phase, SMTP_CLIENT_PHASE_BODY);
    assert_true(H.msgs[0].res[0].rcpt_accepted);
    assert_false(H.msgs[0].res[0].synthesized);
    assert_int_equal(H.c.close_reason.code, 221);
    assert_int_equal(H.c.stats.messages, 1);
    assert_int_equal(H.c.stats.rcpts_delivered, 1);
    assert_int_equal(H.c.stats.replies, 7);
    harness_fini();
}


static void
test_pipelining_batch(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "r1@d.test", "r2@d.test", "r3@d.test",
             NULL);
    session_ready(EHLO_PIPE);
    /* One group: MAIL, every RCPT, DATA, before any reply. */
    assert_string_equal(H.sent,
                        MAIL_A
                        "RCPT TO:<r1@d.test>\r\n"
                        "RCPT TO:<r2@d.test>\r\n"
                        "RCPT TO:<r3@d.test>\r\n"
                        "DATA\r\n");
    sent_reset();
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_MAIL);
    server("250 2.1.0 Ok\r\n");
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_RCPT);
    server("250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n");
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_RCPT);
    assert_int_equal(H.sent_len, 0);
    server("250 2.1.5 Ok\r\n");
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_DATA);
    server("354 go ahead\r\n");
    assert_string_equal(H.sent, BODY_WIRE);
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_BODY);
    server("250 2.0.0 Ok\r\n");
    assert_int_equal(H.done, 1);
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_IDLE);
    check_result(0, 0, SMTP_CLIENT_DELIVERED, 250, "2.0.0");
    check_result(0, 1, SMTP_CLIENT_DELIVERED, 250, "2.0.0");
    check_result(0, 2, SMTP_CLIENT_DELIVERED, 250, "2.0.0");
    harness_fini();
}


static void
test_no_pipelining_one_at_a_time(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "r1@d.test", "r2@d.test", NULL);
    session_ready(EHLO_PLAIN);
    /* No RCPT before the reply to MAIL. */
    assert_string_equal(H.sent, MAIL_A);
    sent_reset();
    server("250 2.1.0 Ok\r\n");
    assert_string_equal(H.sent, "RCPT TO:<r1@d.test>\r\n");
    sent_reset();
    server("250 2.1.5 Ok\r\n");
    assert_string_equal(H.sent, "RCPT TO:<r2@d.test>\r\n");
    sent_reset();
    server("250 2.1.5 Ok\r\n");
    assert_string_equal(H.sent, "DATA\r\n");
    sent_reset();
    server("354 go\r\n");
    assert_string_equal(H.sent, BODY_WIRE);
    server("250 Ok\r\n");
    assert_int_equal(H.done, 1);
    /* No enhanced code in the reply: none in the result. */
    check_result(0, 1, SMTP_CLIENT_DELIVERED, 250, "");
    harness_fini();
}


static void
test_helo_fallback(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", "x\r\n", "c@d.test", NULL);
    server(GREETING "502 5.5.2 Error: command not recognized\r\n");
    assert_string_equal(H.sent, "EHLO client.test\r\nHELO client.test\r\n");
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_EHLO);
    sent_reset();
    server("250 mx.test\r\n");
    assert_int_equal(H.ready, 1);
    assert_int_equal(H.c.ext, 0);
    /* No extension: no SIZE, no BODY. */
    assert_string_equal(H.sent, "MAIL FROM:<a@b.test>\r\n");
    harness_fini();
}


static void
test_mixed_rcpt_results(void **state)
{
    const struct smtp_client_result *r;

    harness_init();
    msg_make(0, "a@b.test", BODY, "ok@d.test", "busy@d.test", "no@d.test",
             NULL);
    session_ready(EHLO_PIPE);
    server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
           "450 4.2.1 <busy@d.test>: try later\r\n"
           "550 5.1.1 <no@d.test>: Recipient address rejected\r\n"
           "354 go\r\n250 2.0.0 Ok: queued\r\n");
    assert_int_equal(H.done, 1);
    check_result(0, 0, SMTP_CLIENT_DELIVERED, 250, "2.0.0");
    check_result(0, 1, SMTP_CLIENT_DEFERRED, 450, "4.2.1");
    check_result(0, 2, SMTP_CLIENT_FAILED, 550, "5.1.1");
    r = H.msgs[0].res;
    assert_true(r[0].rcpt_accepted);
    assert_false(r[1].rcpt_accepted);
    assert_int_equal(r[1].phase, SMTP_CLIENT_PHASE_RCPT);
    assert_string_equal(r[1].text, "<busy@d.test>: try later");
    assert_string_equal(r[2].text,
                        "<no@d.test>: Recipient address rejected");
    assert_int_equal(H.c.stats.rcpts_delivered, 1);
    assert_int_equal(H.c.stats.rcpts_deferred, 1);
    assert_int_equal(H.c.stats.rcpts_failed, 1);
    harness_fini();
}


static void
test_all_rcpts_refused_pipelined(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", "y@d.test", NULL);
    msg_make(1, "a@b.test", BODY, "z@d.test", NULL);
    session_ready(EHLO_PIPE);
    sent_reset();
    server("250 2.1.0 Ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n"
           "554 5.5.1 Error: no valid recipients\r\n");
    assert_int_equal(H.done, 1);
    check_result(0, 0, SMTP_CLIENT_FAILED, 550, "5.1.1");
    check_result(0, 1, SMTP_CLIENT_FAILED, 550, "5.1.1");
    /* No body; the next group starts with RSET. */
    assert_string_equal(H.sent,
                        "RSET\r\n"
                        MAIL_A
                        "RCPT TO:<z@d.test>\r\n"
                        "DATA\r\n");
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_RSET);
    sent_reset();
    server("250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"
           "250 2.0.0 Ok\r\n");
    assert_string_equal(H.sent, BODY_WIRE);
    assert_int_equal(H.done, 2);
    check_result(1, 0, SMTP_CLIENT_DELIVERED, 250, "2.0.0");
    harness_fini();
}


static void
test_all_rcpts_refused_one_at_a_time(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", "y@d.test", NULL);
    msg_make(1, "a@b.test", BODY, "z@d.test", NULL);
    session_ready(EHLO_PLAIN);
    sent_reset();
    server("250 2.1.0 Ok\r\n550 5.1.1 no\r\n450 4.2.0 later\r\n");
    assert_int_equal(H.done, 1);
    check_result(0, 0, SMTP_CLIENT_FAILED, 550, "5.1.1");
    check_result(0, 1, SMTP_CLIENT_DEFERRED, 450, "4.2.0");
    /* Neither DATA nor body; RSET alone, then MAIL after its reply. */
    assert_string_equal(H.sent,
                        "RCPT TO:<x@d.test>\r\n"
                        "RCPT TO:<y@d.test>\r\n"
                        "RSET\r\n");
    sent_reset();
    server("250 2.0.0 Ok\r\n");
    assert_string_equal(H.sent, MAIL_A);
    harness_fini();
}


static void
test_data_accepted_without_rcpt(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    session_ready(EHLO_PIPE);
    sent_reset();
    /* A server that takes DATA anyway gets an empty message (RFC 2920). */
    server("250 2.1.0 Ok\r\n550 5.1.1 no\r\n354 go\r\n");
    assert_string_equal(H.sent, ".\r\n");
    assert_int_equal(H.done, 0);
    server("554 5.5.1 no valid recipients\r\n");
    assert_int_equal(H.done, 1);
    check_result(0, 0, SMTP_CLIENT_FAILED, 550, "5.1.1");
    assert_int_equal(H.c.dirty, 0);
    harness_fini();
}


static void
test_final_dot_552(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", "y@d.test", NULL);
    session_ready(EHLO_PIPE);
    server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no\r\n354 go\r\n"
           "552 5.3.4 Error: message too big\r\n");
    assert_int_equal(H.done, 1);
    check_result(0, 0, SMTP_CLIENT_FAILED, 552, "5.3.4");
    assert_int_equal(H.msgs[0].res[0].phase, SMTP_CLIENT_PHASE_BODY);
    check_result(0, 1, SMTP_CLIENT_FAILED, 550, "5.1.1");
    assert_int_equal(H.c.dirty, 0);
    harness_fini();
}


static void
test_data_refused(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    session_ready(EHLO_PIPE);
    sent_reset();
    server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n451 4.3.0 try later\r\n");
    assert_int_equal(H.done, 1);
    assert_int_equal(H.sent_len, 0);
    check_result(0, 0, SMTP_CLIENT_DEFERRED, 451, "4.3.0");
    assert_int_equal(H.msgs[0].res[0].phase, SMTP_CLIENT_PHASE_DATA);
    assert_int_equal(H.c.dirty, 1);
    harness_fini();
}


static void
test_size_exceeded(void **state)
{
    enum smtp_client_event ev;

    harness_init();
    session_ready("250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n");
    assert_int_equal(H.c.size_max, 10);
    sent_reset();
    msg_make(0, "a@b.test", BODY, "x@d.test", "y@d.test", NULL);
    ev = smtp_client_send(&H.c, &H.msgs[0].m);
    assert_int_equal(ev, SMTP_CLIENT_EV_MESSAGE_DONE);
    take();
    assert_int_equal(H.sent_len, 0);
    check_result(0, 0, SMTP_CLIENT_FAILED, 552, "5.3.4");
    check_result(0, 1, SMTP_CLIENT_FAILED, 552, "5.3.4");
    assert_true(H.msgs[0].res[0].synthesized);
    assert_int_equal(H.msgs[0].res[0].phase, SMTP_CLIENT_PHASE_MAIL);
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_IDLE);
    harness_fini();

    /* The same, with the message given before the handshake. */
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    driver_next();
    server(GREETING "250-mx.test\r\n250 SIZE 10\r\n");
    assert_int_equal(H.done, 1);
    assert_int_equal(H.ready, 0);
    assert_string_equal(H.sent, "EHLO client.test\r\n");
    check_result(0, 0, SMTP_CLIENT_FAILED, 552, "5.3.4");
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_IDLE);
    harness_fini();
}


static void
test_421_mid_transaction(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", "y@d.test", "z@d.test",
             NULL);
    session_ready(EHLO_PIPE);
    sent_reset();
    server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no\r\n"
           "421 4.3.2 Service shutting down\r\n");
    assert_int_equal(H.closed, 1);
    assert_int_equal(H.done, 0);
    check_result(0, 0, SMTP_CLIENT_DEFERRED, 421, "4.3.2");
    check_result(0, 1, SMTP_CLIENT_FAILED, 550, "5.1.1");
    check_result(0, 2, SMTP_CLIENT_DEFERRED, 421, "4.3.2");
    assert_true(H.msgs[0].res[0].rcpt_accepted);
    assert_false(H.msgs[0].res[0].synthesized);
    assert_int_equal(H.c.close_reason.code, 421);
    assert_int_equal(H.c.stats.messages, 1);
    assert_int_equal(H.sent_len, 0);         /* no QUIT after a 421 */
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_CLOSED);
    harness_fini();
}


static void
test_greeting_refused(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    driver_next();
    server("554-5.7.1 mx.test no SMTP service here\r\n"
           "554 5.7.1 go away\r\n");
    assert_int_equal(H.closed, 1);
    assert_string_equal(H.sent, "QUIT\r\n");
    check_result(0, 0, SMTP_CLIENT_FAILED, 554, "5.7.1");
    assert_int_equal(H.msgs[0].res[0].phase, SMTP_CLIENT_PHASE_GREETING);
    assert_string_equal(H.msgs[0].res[0].text,
                        "mx.test no SMTP service here go away");
    harness_fini();

    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    driver_next();
    server("450 4.7.1 busy\r\n");
    assert_int_equal(H.closed, 1);
    check_result(0, 0, SMTP_CLIENT_DEFERRED, 450, "4.7.1");
    harness_fini();
}


static void
test_mail_refused(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", "y@d.test", NULL);
    msg_make(1, "a@b.test", BODY, "z@d.test", NULL);
    session_ready(EHLO_PLAIN);
    sent_reset();
    server("451 4.3.0 later\r\n");
    assert_int_equal(H.done, 1);
    check_result(0, 0, SMTP_CLIENT_DEFERRED, 451, "4.3.0");
    check_result(0, 1, SMTP_CLIENT_DEFERRED, 451, "4.3.0");
    assert_int_equal(H.msgs[0].res[0].phase, SMTP_CLIENT_PHASE_MAIL);
    /* No transaction was open: no RSET. */
    assert_string_equal(H.sent, MAIL_A);
    harness_fini();

    /* Pipelined: the rest of the group's replies are matched and dropped. */
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", "y@d.test", NULL);
    session_ready(EHLO_PIPE);
    sent_reset();
    server("553 5.1.8 bad sender\r\n503 5.5.1 need MAIL\r\n"
           "503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n");
    assert_int_equal(H.done, 1);
    assert_int_equal(H.closed, 0);
    check_result(0, 0, SMTP_CLIENT_FAILED, 553, "5.1.8");
    check_result(0, 1, SMTP_CLIENT_FAILED, 553, "5.1.8");
    assert_int_equal(H.sent_len, 0);
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_IDLE);
    harness_fini();
}


/* split_script - a dialogue with multi-line replies, for splitting */
static const char split_script[] =
    "220-mx.test ESMTP\r\n220-second line\r\n220 third\r\n"
    "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n"
    "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
    "250 2.1.0 Ok\r\n"
    "250 2.1.5 Ok\r\n"
    "450-4.2.1 first line\r\n450-4.2.1 second line\r\n450 4.2.1 third\r\n"
    "550-5.1.1 unknown\r\n550 5.1.1 user\r\n"
    "354 go\r\n"
    "250-2.0.0 queued\r\n250 2.0.0 as X\r\n"
    "250 2.0.0 Ok\r\n"                        /* the second MAIL */
    "250 2.1.5 Ok\r\n"
    "354 go\r\n"
    "451 4.3.0 later\r\n"
    "221 2.0.0 Bye\r\n";

/* split_run - run split_script read step bytes a time; summary in out */
static void
split_run(size_t step, char *out, size_t out_max)
{
    size_t off;
    unsigned k, i;

    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", "y@d.test", "z@d.test",
             NULL);
    msg_make(1, "a@b.test", "second\r\n", "w@d.test", NULL);
    H.quit_at_end = 1;
    server_n(split_script, strlen(split_script), step);
    assert_int_equal(H.closed, 1);
    off = (size_t)snprintf(out, out_max, "%s|%u %u %u|", H.sent, H.ready,
                           H.done, H.closed);
    for (k = 0; k < 2; k++) {
        for (i = 0; i < H.msgs[k].m.rcpt_count; i++) {
            const struct smtp_client_result *r = &H.msgs[k].res[i];

            off += (size_t)snprintf(out + off, out_max - off,
                                    "%s %u %s %s|",
                                    smtp_client_outcome_name(r->outcome),
                                    r->code, r->enhanced, r->text);
            assert_true(off < out_max);
        }
    }
    harness_fini();
}


static void
test_split_every_byte(void **state)
{
    static char whole[8192], split[8192];
    size_t step;

    split_run(sizeof split_script, whole, sizeof whole);
    /* The second message reuses the connection; the first had a reply. */
    assert_non_null(strstr(whole, "|1 2 1|"));
    assert_non_null(strstr(whole, "delivered 250 2.0.0 queued as X|"
                                  "deferred 450 4.2.1 first line second "
                                  "line third|failed 550 5.1.1 unknown "
                                  "user|deferred 451 4.3.0 later|"));
    for (step = 1; step <= 17; step++) {
        split_run(step, split, sizeof split);
        assert_string_equal(split, whole);
    }
}


/* protocol_error_case - reply in the RCPT phase must close, deferring */
static void
protocol_error_case(const char *reply, size_t len, const char *why)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", "y@d.test", NULL);
    session_ready(EHLO_PIPE);
    sent_reset();
    server("250 2.1.0 Ok\r\n550 5.1.1 no\r\n");
    server_n(reply, len, len + 1);
    assert_int_equal(H.closed, 1);
    assert_int_equal(H.c.stats.protocol_errors, 1);
    check_result(0, 0, SMTP_CLIENT_FAILED, 550, "5.1.1");
    check_result(0, 1, SMTP_CLIENT_DEFERRED, 421, "4.4.0");
    assert_true(H.msgs[0].res[1].synthesized);
    assert_non_null(strstr(H.msgs[0].res[1].text, why));
    assert_non_null(strstr(H.msgs[0].res[1].text, "(phase rcpt)"));
    assert_int_equal(H.sent_len, 0);
    harness_fini();
}


static void
test_reply_line_too_long(void **state)
{
    size_t n = SMTP_CLIENT_LINE_MAX + 10;
    char *line = malloc(n);

    memset(line, 'x', n);
    memcpy(line, "250 ", 4);
    protocol_error_case(line, n, "reply line too long");
    /* At the limit it is fine. */
    memcpy(line + SMTP_CLIENT_LINE_MAX - 2, "\r\n", 2);
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    session_ready(EHLO_PIPE);
    server_n(line, SMTP_CLIENT_LINE_MAX, SMTP_CLIENT_LINE_MAX);
    assert_int_equal(H.closed, 0);
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_RCPT);
    assert_int_equal(strlen(H.c.rp.text), 0);   /* reset after the reply */
    harness_fini();
    free(line);
}


static void
test_reply_too_many_lines(void **state)
{
    char buf[(SMTP_CLIENT_LINES_MAX + 1) * 8 + 1];
    size_t off = 0;
    unsigned i;

    for (i = 0; i < SMTP_CLIENT_LINES_MAX; i++)
        off += (size_t)sprintf(buf + off, "250-ab\r\n");
    off += (size_t)sprintf(buf + off, "250 ab\r\n");
    protocol_error_case(buf, off, "too many lines");
}


static void
test_reply_too_long(void **state)
{
    char buf[SMTP_CLIENT_REPLY_MAX / 1000 * 1010 + 1024];
    size_t off = 0;

    while (off < SMTP_CLIENT_REPLY_MAX)
        off += (size_t)sprintf(buf + off, "250-%0994d\r\n", 0);
    off += (size_t)sprintf(buf + off, "250 end\r\n");
    protocol_error_case(buf, off, "reply too long");
}


static void
test_reply_garbage_code(void **state)
{
    protocol_error_case("abc\r\n", 5, "bad reply code");
    protocol_error_case("2x0 Ok\r\n", 8, "bad reply code");
    protocol_error_case("150 Ok\r\n", 8, "bad reply code");
    protocol_error_case("650 Ok\r\n", 8, "bad reply code");
    protocol_error_case("25\r\n", 4, "bad reply code");
    protocol_error_case("\r\n", 2, "bad reply code");
    protocol_error_case("250x\r\n", 6, "bad separator");
    protocol_error_case("250\rx\r\n", 7, "bad separator");
    protocol_error_case("354 go\r\n", 8, "unexpected reply to RCPT");
}


static void
test_reply_continuation_mismatch(void **state)
{
    protocol_error_case("250-Ok\r\n251 Ok\r\n", 16,
                        "continuation line with another code");
}


static void
test_unexpected_reply(void **state)
{
    harness_init();
    session_ready(EHLO_PIPE);
    assert_int_equal(H.ready, 1);
    server("250 2.0.0 nobody asked\r\n");
    assert_int_equal(H.closed, 1);
    assert_int_equal(H.c.stats.protocol_errors, 1);
    assert_non_null(strstr(H.c.close_reason.text, "reply without a command"));
    harness_fini();

    /* An idle 421 is the server's right: no protocol error. */
    harness_init();
    session_ready(EHLO_PIPE);
    server("421 4.4.2 mx.test Error: timeout exceeded\r\n");
    assert_int_equal(H.closed, 1);
    assert_int_equal(H.c.stats.protocol_errors, 0);
    assert_int_equal(H.c.close_reason.code, 421);
    harness_fini();
}


static void
test_connection_reuse(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    msg_make(1, "a@b.test", BODY, "y@d.test", NULL);
    msg_make(2, "", BODY, "z@d.test", NULL);
    H.quit_at_end = 1;
    session_ready(EHLO_PIPE);
    server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n250 2.0.0 Ok 1\r\n"
           "250 2.1.0 Ok\r\n550 5.1.1 no\r\n554 5.5.1 no recipients\r\n"
           "250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"
           "250 2.0.0 Ok 3\r\n221 2.0.0 Bye\r\n");
    assert_string_equal(H.sent,
                        MAIL_A "RCPT TO:<x@d.test>\r\nDATA\r\n"
                        BODY_WIRE
                        MAIL_A "RCPT TO:<y@d.test>\r\nDATA\r\n"
                        "RSET\r\n"
                        "MAIL FROM:<> SIZE=36 BODY=8BITMIME\r\n"
                        "RCPT TO:<z@d.test>\r\nDATA\r\n"
                        BODY_WIRE
                        "QUIT\r\n");
    assert_int_equal(H.done, 3);
    assert_int_equal(H.closed, 1);
    check_result(0, 0, SMTP_CLIENT_DELIVERED, 250, "2.0.0");
    check_result(1, 0, SMTP_CLIENT_FAILED, 550, "5.1.1");
    check_result(2, 0, SMTP_CLIENT_DELIVERED, 250, "2.0.0");
    assert_string_equal(H.msgs[2].res[0].text, "Ok 3");
    assert_int_equal(H.c.stats.messages, 3);
    assert_int_equal(H.c.stats.rcpts_delivered, 2);
    assert_int_equal(H.c.stats.rcpts_failed, 1);
    harness_fini();
}


static void
test_eof(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", "y@d.test", NULL);
    session_ready(EHLO_PIPE);
    server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no\r\n354 go\r\n"
           "250 2.0.0 partial rep");
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_BODY);
    smtp_client_eof(&H.c);
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_CLOSED);
    check_result(0, 0, SMTP_CLIENT_DEFERRED, 421, "4.4.2");
    assert_string_equal(H.msgs[0].res[0].text,
                        "connection lost (phase body)");
    assert_true(H.msgs[0].res[0].synthesized);
    check_result(0, 1, SMTP_CLIENT_FAILED, 550, "5.1.1");
    assert_int_equal(H.c.stats.messages, 1);
    smtp_client_eof(&H.c);                    /* twice is harmless */
    harness_fini();

    /* After QUIT, a close without 221 is normal. */
    harness_init();
    session_ready(EHLO_PIPE);
    smtp_client_quit(&H.c);
    take();
    assert_non_null(strstr(H.sent, "QUIT\r\n"));
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_QUIT);
    smtp_client_eof(&H.c);
    assert_int_equal(H.c.close_reason.code, 221);
    harness_fini();
}


static void
test_timeout(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", "y@d.test", NULL);
    session_ready(EHLO_PLAIN);
    server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_RCPT);
    smtp_client_timeout(&H.c);
    check_result(0, 0, SMTP_CLIENT_DEFERRED, 421, "4.4.2");
    check_result(0, 1, SMTP_CLIENT_DEFERRED, 421, "4.4.2");
    assert_true(H.msgs[0].res[0].rcpt_accepted);
    assert_string_equal(H.msgs[0].res[1].text,
                        "timeout waiting for the server (phase rcpt)");
    assert_int_equal(H.msgs[0].res[1].phase, SMTP_CLIENT_PHASE_RCPT);
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_CLOSED);
    /* Input after the end is dropped. */
    server("250 2.0.0 late\r\n");
    assert_int_equal(H.closed, 1);
    harness_fini();

    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    driver_next();
    smtp_client_timeout(&H.c);
    check_result(0, 0, SMTP_CLIENT_DEFERRED, 421, "4.4.2");
    assert_int_equal(H.msgs[0].res[0].phase, SMTP_CLIENT_PHASE_GREETING);
    harness_fini();
}


/* body_wire - what goes on the wire for a body given as pieces */
static const char *
body_wire(const char *const *pieces, unsigned n)
{
    harness_init();
    msg_make(0, "a@b.test", "", "x@d.test", NULL);
    msg_pieces(0, pieces, n);
    session_ready(EHLO_PIPE);
    server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
    sent_reset();
    server("354 go\r\n");
    harness_fini();
    return H.sent;
}


static void
test_body_dot_stuffing(void **state)
{
    const char *b[] = { ".\r\n..\r\n.x\r\nx.\r\n.\r\n" };

    assert_string_equal(body_wire(b, 1),
                        "..\r\n...\r\n..x\r\nx.\r\n..\r\n.\r\n");
}


static void
test_body_final_crlf_added(void **state)
{
    const char *b[] = { "line\r\nlast" };
    const char *dot[] = { "line\r\n." };

    assert_string_equal(body_wire(b, 1), "line\r\nlast\r\n.\r\n");
    assert_string_equal(body_wire(dot, 1), "line\r\n..\r\n.\r\n");
}


static void
test_body_bare_lf(void **state)
{
    const char *b[] = { "a\nb\r\n\n.c\n" };

    assert_string_equal(body_wire(b, 1), "a\r\nb\r\n\r\n..c\r\n.\r\n");
}


static void
test_body_bare_cr(void **state)
{
    const char *b[] = { "a\rb\r\n\r.\r\nc\r" };

    /* "\r.\r\n" would end the message at a lax server: it is stuffed. */
    assert_string_equal(body_wire(b, 1),
                        "a\r\nb\r\n\r\n..\r\nc\r\n.\r\n");
}


static void
test_body_iov_boundaries(void **state)
{
    const char *b[] = { "a\r", "\n", ".b\r", "\n.", "", "c\r", "x\n" };
    const char *e[] = { "", "" };

    assert_string_equal(body_wire(b, 7), "a\r\n..b\r\n..c\r\nx\r\n.\r\n");
    assert_string_equal(body_wire(e, 2), ".\r\n");
    assert_string_equal(body_wire(NULL, 0), ".\r\n");
}


static void
test_body_zero_copy(void **state)
{
    static const char body[] = "Subject: x\r\n\r\nline one\r\nline two\r\n";
    struct smtp_client_out o;

    harness_init();
    msg_make(0, "a@b.test", body, "x@d.test", NULL);
    session_ready(EHLO_PIPE);
    sent_reset();
    {
        enum smtp_client_event ev;
        static const char in[] = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n";

        assert_int_equal(smtp_client_feed(&H.c, in, strlen(in), &ev),
                         strlen(in));
        assert_int_equal(ev, SMTP_CLIENT_EV_NONE);
    }
    o = smtp_client_out_take(&H.c);
    assert_int_equal(o.iov_count, 2);
    assert_ptr_equal(o.iov[0].iov_base, body);
    assert_int_equal(o.iov[0].iov_len, strlen(body));
    assert_memory_equal(o.iov[1].iov_base, ".\r\n", 3);
    assert_null(o.buf);
    smtp_client_out_free(&o);
    harness_fini();
}


static void
test_enhanced_and_text(void **state)
{
    const struct smtp_client_result *r;
    char big[2000];

    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", "y@d.test", "z@d.test",
             NULL);
    session_ready(EHLO_PIPE);
    memset(big, 'y', sizeof big);
    memcpy(big, "550 5.7.1 ", 10);
    memcpy(big + sizeof big - 2, "\r\n", 2);
    server("250 Ok\r\n"
           "550-5.1.1 The email account that you tried to reach\r\n"
           "550-5.1.1 does not exist.\x01\xff\r\n"
           "550 5.1.1 https://support.example/ x\r\n"
           "450 4.2.0\r\n");
    server_n(big, sizeof big, sizeof big);
    server("354 go\r\n250 2.0.0 a\rb\r\r\n");
    r = H.msgs[0].res;
    check_result(0, 0, SMTP_CLIENT_FAILED, 550, "5.1.1");
    assert_string_equal(r[0].text, "The email account that you tried to "
                                   "reach does not exist.?? "
                                   "https://support.example/ x");
    check_result(0, 1, SMTP_CLIENT_DEFERRED, 450, "4.2.0");
    assert_string_equal(r[1].text, "");
    check_result(0, 2, SMTP_CLIENT_FAILED, 550, "5.7.1");
    assert_int_equal(strlen(r[2].text), SMTP_CLIENT_TEXT_MAX - 1);
    /* No one accepted: a lone dot, and its reply changes nothing. */
    assert_int_equal(H.done, 1);
    assert_string_equal(H.msgs[0].res[2].text + 500, "yyyyyyyyyyy");

    /* A bare CR in reply text shows as '?'; CR CR LF keeps one. */
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    session_ready(EHLO_PIPE);
    server("250 Ok\r\n250 Ok\r\n354 go\r\n250 2.0.0 a\rb\r\r\n");
    assert_string_equal(H.msgs[0].res[0].text, "a?b?");
    harness_fini();

    /* A code of another class, or one too long, stays in the text. */
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", "y@d.test", NULL);
    session_ready(EHLO_PIPE);
    server("250 Ok\r\n550 4.1.1 odd\r\n550 5.1.1234 long\r\n");
    check_result(0, 0, SMTP_CLIENT_FAILED, 550, "");
    assert_string_equal(H.msgs[0].res[0].text, "4.1.1 odd");
    check_result(0, 1, SMTP_CLIENT_FAILED, 550, "");
    harness_fini();
}


static void
test_bad_addresses(void **state)
{
    enum smtp_client_event ev;

    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test\r\nRSET", "y@d.test", "", NULL);
    session_ready(EHLO_PIPE);
    assert_string_equal(H.sent, MAIL_A "RCPT TO:<y@d.test>\r\nDATA\r\n");
    check_result(0, 0, SMTP_CLIENT_FAILED, 501, "5.1.3");
    check_result(0, 2, SMTP_CLIENT_FAILED, 501, "5.1.3");
    assert_true(H.msgs[0].res[0].synthesized);
    server("250 Ok\r\n250 Ok\r\n354 go\r\n250 2.0.0 Ok\r\n");
    check_result(0, 1, SMTP_CLIENT_DELIVERED, 250, "2.0.0");
    assert_int_equal(H.done, 1);
    harness_fini();

    harness_init();
    session_ready(EHLO_PIPE);
    sent_reset();
    msg_make(0, "a@b.test\n", BODY, "x@d.test", NULL);
    ev = smtp_client_send(&H.c, &H.msgs[0].m);
    assert_int_equal(ev, SMTP_CLIENT_EV_MESSAGE_DONE);
    take();
    assert_int_equal(H.sent_len, 0);
    check_result(0, 0, SMTP_CLIENT_FAILED, 501, "5.1.7");

    /* Every recipient bad: decided at once, even before the greeting. */
    msg_make(1, "a@b.test", BODY, "x\ty@d.test", NULL);
    ev = smtp_client_send(&H.c, &H.msgs[1].m);
    assert_int_equal(ev, SMTP_CLIENT_EV_MESSAGE_DONE);
    check_result(1, 0, SMTP_CLIENT_FAILED, 501, "5.1.3");
    harness_fini();

    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test\n", NULL);
    assert_int_equal(smtp_client_send(&H.c, &H.msgs[0].m),
                     SMTP_CLIENT_EV_MESSAGE_DONE);
    H.msg_next = 1;                         /* the driver is done with it */
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_GREETING);
    server(GREETING EHLO_PIPE);
    assert_int_equal(H.ready, 1);
    assert_int_equal(H.c.stats.messages, 1);
    harness_fini();
}


static void
test_quit_while_busy(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    session_ready(EHLO_PIPE);
    smtp_client_quit(&H.c);                 /* after this message */
    sent_reset();
    server("250 Ok\r\n250 Ok\r\n354 go\r\n250 2.0.0 Ok\r\n");
    assert_int_equal(H.done, 1);
    assert_string_equal(H.sent, BODY_WIRE "QUIT\r\n");
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_QUIT);
    server("221 2.0.0 Bye\r\n");
    assert_int_equal(H.closed, 1);
    harness_fini();

    /* Before the handshake: QUIT waits for it, no READY. */
    harness_init();
    smtp_client_quit(&H.c);
    server(GREETING EHLO_PIPE);
    assert_int_equal(H.ready, 0);
    assert_string_equal(H.sent, "EHLO client.test\r\nQUIT\r\n");
    harness_fini();
}


static void
test_flush(void **state)
{
    static struct smtp_client_result res[600];
    static const char *rcpts[600];
    static char names[600][32];
    struct smtp_client_msg m;
    unsigned i;

    harness_init();
    for (i = 0; i < 600; i++) {
        snprintf(names[i], sizeof names[i], "rcpt%03u@example.test", i);
        rcpts[i] = names[i];
    }
    memset(&m, 0, sizeof m);
    m.sender = "a@b.test";
    m.rcpts = rcpts;
    m.rcpt_count = 600;
    m.results = res;
    assert_int_equal(smtp_client_send(&H.c, &m), SMTP_CLIENT_EV_NONE);
    /* The group is over the high-water mark before the MAIL reply. */
    server(GREETING EHLO_PIPE "250 2.1.0 Ok\r\n");
    assert_int_equal(H.flushes, 1);
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_RCPT);
    assert_non_null(strstr(H.sent, "RCPT TO:<rcpt599@example.test>\r\n"
                                   "DATA\r\n"));
    smtp_client_eof(&H.c);
    for (i = 0; i < 600; i++)
        assert_int_equal(res[i].outcome, SMTP_CLIENT_DEFERRED);
    harness_fini();
}


static void
test_ext_off(void **state)
{
    harness_init();
    H.lim.ext_off = SMTP_CLIENT_EXT_PIPELINING | SMTP_CLIENT_EXT_8BITMIME;
    msg_make(0, "a@b.test", BODY, "x@d.test", "y@d.test", NULL);
    session_ready(EHLO_PIPE);
    assert_string_equal(H.sent, "MAIL FROM:<a@b.test> SIZE=36\r\n");
    harness_fini();
}


static void
test_ehlo_refused(void **state)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    driver_next();
    server(GREETING "454 4.7.0 not now\r\n");
    assert_string_equal(H.sent, "EHLO client.test\r\nQUIT\r\n");
    assert_int_equal(H.closed, 1);
    check_result(0, 0, SMTP_CLIENT_DEFERRED, 454, "4.7.0");
    assert_int_equal(H.msgs[0].res[0].phase, SMTP_CLIENT_PHASE_EHLO);
    harness_fini();

    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    driver_next();
    server(GREETING "500 no EHLO\r\n550 5.7.1 go away\r\n");
    assert_string_equal(H.sent, "EHLO client.test\r\nHELO client.test\r\n"
                                "QUIT\r\n");
    check_result(0, 0, SMTP_CLIENT_FAILED, 550, "5.7.1");
    harness_fini();
}


static void
test_rset_refused(void **state)
{
    const struct smtp_client_result *r;

    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    msg_make(1, "a@b.test", BODY, "y@d.test", NULL);
    session_ready(EHLO_PLAIN);
    server("250 Ok\r\n550 5.1.1 no\r\n");
    sent_reset();
    assert_int_equal(smtp_client_phase(&H.c), SMTP_CLIENT_PHASE_RSET);
    server("502 5.5.1 no RSET for you\r\n");
    assert_string_equal(H.sent, "QUIT\r\n");
    assert_int_equal(H.closed, 1);
    /* Not about the message: deferred whatever the code. */
    r = &H.msgs[1].res[0];
    check_result(1, 0, SMTP_CLIENT_DEFERRED, 421, "4.5.0");
    assert_true(r->synthesized);
    assert_string_equal(r->text, "RSET refused: 502 no RSET for you");
    harness_fini();
}


/* odd_code_case - after before, reply is a protocol error */
static void
odd_code_case(const char *before, const char *reply, const char *why)
{
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    driver_next();
    server(before);
    server(reply);
    assert_int_equal(H.closed, 1);
    assert_int_equal(H.c.stats.protocol_errors, 1);
    assert_non_null(strstr(H.c.close_reason.text, why));
    check_result(0, 0, SMTP_CLIENT_DEFERRED, 421, "4.4.0");
    harness_fini();
}


static void
test_unexpected_codes(void **state)
{
    odd_code_case("", "354 hi\r\n", "unexpected reply to the greeting");
    odd_code_case(GREETING, "354 hi\r\n", "unexpected reply to EHLO");
    odd_code_case(GREETING "500 no\r\n", "354 hi\r\n",
                  "unexpected reply to HELO");
    odd_code_case(GREETING EHLO_PIPE, "354 hi\r\n",
                  "unexpected reply to MAIL");
    odd_code_case(GREETING EHLO_PIPE "250 Ok\r\n250 Ok\r\n", "250 Ok\r\n",
                  "unexpected reply to DATA");
    odd_code_case(GREETING EHLO_PIPE "250 Ok\r\n250 Ok\r\n354 go\r\n",
                  "354 again\r\n", "unexpected reply to the end of data");
}


static void
test_bare_lf_replies(void **state)
{
    /* Lines ending in a bare LF, or a code alone, are read leniently. */
    harness_init();
    msg_make(0, "a@b.test", BODY, "x@d.test", NULL);
    driver_next();
    server("220 mx.test\n250-mx.test\n250 PIPELINING\n250\n250\r\n354\n"
           "250 2.0.0 Ok\n");
    assert_int_equal(H.done, 1);
    check_result(0, 0, SMTP_CLIENT_DELIVERED, 250, "2.0.0");
    assert_string_equal(H.msgs[0].res[0].text, "Ok");
    harness_fini();
}


static void
test_names(void **state)
{
    unsigned i;

    for (i = 0; i <= SMTP_CLIENT_STATE_CLOSED; i++)
        assert_string_not_equal(smtp_client_state_name(i), "?");
    for (i = 0; i <= SMTP_CLIENT_PHASE_CLOSED; i++)
        assert_string_not_equal(smtp_client_phase_name(i), "?");
    for (i = 0; i <= SMTP_CLIENT_FAILED; i++)
        assert_string_not_equal(smtp_client_outcome_name(i), "?");
    assert_string_equal(smtp_client_state_name(99), "?");
    assert_string_equal(smtp_client_phase_name(99), "?");
    assert_string_equal(smtp_client_outcome_name(99), "?");
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_message),
        cmocka_unit_test(test_pipelining_batch),
        cmocka_unit_test(test_no_pipelining_one_at_a_time),
        cmocka_unit_test(test_helo_fallback),
        cmocka_unit_test(test_mixed_rcpt_results),
        cmocka_unit_test(test_all_rcpts_refused_pipelined),
        cmocka_unit_test(test_all_rcpts_refused_one_at_a_time),
        cmocka_unit_test(test_data_accepted_without_rcpt),
        cmocka_unit_test(test_final_dot_552),
        cmocka_unit_test(test_data_refused),
        cmocka_unit_test(test_size_exceeded),
        cmocka_unit_test(test_421_mid_transaction),
        cmocka_unit_test(test_greeting_refused),
        cmocka_unit_test(test_mail_refused),
        cmocka_unit_test(test_split_every_byte),
        cmocka_unit_test(test_reply_line_too_long),
        cmocka_unit_test(test_reply_too_many_lines),
        cmocka_unit_test(test_reply_too_long),
        cmocka_unit_test(test_reply_garbage_code),
        cmocka_unit_test(test_reply_continuation_mismatch),
        cmocka_unit_test(test_unexpected_reply),
        cmocka_unit_test(test_connection_reuse),
        cmocka_unit_test(test_eof),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_body_dot_stuffing),
        cmocka_unit_test(test_body_final_crlf_added),
        cmocka_unit_test(test_body_bare_lf),
        cmocka_unit_test(test_body_bare_cr),
        cmocka_unit_test(test_body_iov_boundaries),
        cmocka_unit_test(test_body_zero_copy),
        cmocka_unit_test(test_enhanced_and_text),
        cmocka_unit_test(test_bad_addresses),
        cmocka_unit_test(test_quit_while_busy),
        cmocka_unit_test(test_flush),
        cmocka_unit_test(test_ext_off),
        cmocka_unit_test(test_ehlo_refused),
        cmocka_unit_test(test_rset_refused),
        cmocka_unit_test(test_unexpected_codes),
        cmocka_unit_test(test_bare_lf_replies),
        cmocka_unit_test(test_names),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
