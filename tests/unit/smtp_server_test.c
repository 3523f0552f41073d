/*
 * smtp_server_test - the inbound protocol machine, bytes in, replies out
 *
 * Each case scripts a dialogue through smtp_server_feed() and checks the
 * replies (codes and enhanced codes) and the message bodies that would be
 * committed. Where it matters, the same dialogue is also fed one byte at a
 * time and must give exactly the same result.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "arena.h"
#include "smtp_server.h"
#include "util.h"

struct harness {
    struct arena_pool pool;
    struct arena *session;
    struct smtp_limits lim;
    struct smtp_server s;
    char replies[256 * 1024];
    size_t replies_len;
    char bodies[8][64 * 1024];
    size_t body_len[8];
    char senders[8][300];
    unsigned rcpts[8];
    unsigned messages;
    int commit_res;              /* what the fake spool answers */
    int closed;
    unsigned flushes;
    unsigned ids;
};

static struct harness H;


static void
test_new_id(void *arg, char id[SMTP_ID_MAX])
{
    struct harness *h = arg;

    snprintf(id, SMTP_ID_MAX, "TESTID%u", ++h->ids);
}


static void
harness_init(int relay_ok, uint64_t message_max, unsigned rcpt_max)
{
    memset(&H, 0, sizeof H);
    arena_pool_init(&H.pool, 4096, 16);
    H.session = arena_create(&H.pool);
    H.lim.hostname = "mx.test";
    H.lim.message_max = message_max;
    H.lim.rcpt_max = rcpt_max;
    H.lim.line_max = 512;
    H.lim.new_id = test_new_id;
    H.lim.new_id_arg = &H;
    smtp_server_init(&H.s, &H.lim, H.session, relay_ok, "127.0.0.1");
}


static void
harness_fini(void)
{
    smtp_server_fini(&H.s);
    arena_destroy(H.session);
    arena_pool_fini(&H.pool);
}


static void
take_replies(void)
{
    struct smtp_out o = smtp_out_take(&H.s);

    assert_true(H.replies_len + o.len < sizeof H.replies);
    if (o.len > 0)
        memcpy(H.replies + H.replies_len, o.buf, o.len);
    H.replies_len += o.len;
    H.replies[H.replies_len] = '\0';
    free(o.buf);
}


/* record_message - what the session would hand the spool */
static void
record_message(void)
{
    unsigned m = H.messages++;
    size_t off = 0;
    unsigned i;

    assert_true(m < 8);
    for (i = 0; i < H.s.body_count; i++) {
        assert_true(off + H.s.body[i].iov_len < sizeof H.bodies[m]);
        memcpy(H.bodies[m] + off, H.s.body[i].iov_base, H.s.body[i].iov_len);
        off += H.s.body[i].iov_len;
    }
    H.bodies[m][off] = '\0';
    H.body_len[m] = off;
    snprintf(H.senders[m], sizeof H.senders[m], "%s", H.s.sender);
    H.rcpts[m] = H.s.rcpt_count;
}


/* feed_n - feed data in pieces of step bytes, acting on every event */
static void
feed_n(const char *data, size_t len, size_t step)
{
    size_t off = 0;
    char *pending = NULL;
    size_t pending_len = 0;

    while (off < len || pending_len > 0) {
        size_t n = MIN(step, len - off);
        enum smtp_event ev;
        size_t used;

        /* The driver keeps what was not consumed and feeds it again. */
        pending = realloc(pending, pending_len + n + 1);
        memcpy(pending + pending_len, data + off, n);
        pending_len += n;
        off += n;
        used = smtp_server_feed(&H.s, pending, pending_len, &ev);
        memmove(pending, pending + used, pending_len - used);
        pending_len -= used;
        if (ev == SMTP_EV_MESSAGE) {
            record_message();
            smtp_server_commit_done(&H.s, H.commit_res);
        } else if (ev == SMTP_EV_CLOSE) {
            H.closed = 1;
            pending_len = 0;
        } else if (ev == SMTP_EV_FLUSH) {
            H.flushes++;
        }
        take_replies();
        if (H.closed)
            break;
        if (used == 0 && n == 0 && ev == SMTP_EV_NONE)
            break;
    }
    free(pending);
}


static void
feed(const char *data)
{
    feed_n(data, strlen(data), strlen(data));
}


/* reply_count - how many replies start with code (at a line start) */
static unsigned
reply_count(const char *code)
{
    unsigned n = 0;
    const char *p = H.replies;
    size_t cl = strlen(code);

    while (*p != '\0') {
        if (strncmp(p, code, cl) == 0)
            n++;
        p = strstr(p, "\r\n");
        if (p == NULL)
            break;
        p += 2;
    }
    return n;
}


/* after_received - message m without the Received: header we prepend */
static const char *
after_received(unsigned m)
{
    const char *p = H.bodies[m];

    assert_true(strncmp(p, "Received: ", 10) == 0);
    for (;;) {
        p = strstr(p, "\r\n");
        assert_non_null(p);
        p += 2;
        if (*p != '\t')
            return p;
    }
}


static int
has_reply(const char *prefix)
{
    return reply_count(prefix) > 0;
}


#define EHLO "EHLO client.test\r\n"
#define ENVELOPE "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"


static void
test_greet_and_ehlo(void **state)
{
    harness_init(1, 1000000, 100);
    smtp_server_greet(&H.s);
    feed(EHLO);
    assert_true(has_reply("220 mx.test ESMTP"));
    assert_true(has_reply("250-mx.test"));
    assert_true(has_reply("250-PIPELINING"));
    assert_true(has_reply("250-SIZE 1000000"));
    assert_true(has_reply("250-8BITMIME"));
    assert_true(has_reply("250 ENHANCEDSTATUSCODES"));
    harness_fini();
}


static void
test_simple_message(void **state)
{
    harness_init(1, 1000000, 100);
    feed(EHLO ENVELOPE "DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    assert_true(has_reply("250 2.1.0"));
    assert_true(has_reply("250 2.1.5"));
    assert_true(has_reply("354 "));
    assert_true(has_reply("250 2.0.0 Ok: queued as TESTID1"));
    assert_true(has_reply("221 2.0.0"));
    assert_int_equal(H.messages, 1);
    assert_string_equal(H.senders[0], "a@b.test");
    assert_int_equal(H.rcpts[0], 1);
    assert_true(strncmp(H.bodies[0], "Received: from client.test (127.0.0.1)"
                        "\r\n\tby mx.test (ringmail) with ESMTP id TESTID1"
                        "\r\n\tfor <c@d.test>; ", 100) == 0);
    assert_non_null(strstr(H.bodies[0], "\r\nSubject: hi\r\n\r\nbody\r\n"));
    assert_int_equal(strlen(strstr(H.bodies[0], "Subject")),
                     strlen("Subject: hi\r\n\r\nbody\r\n"));
    assert_true(H.closed);
    harness_fini();
}


static void
test_byte_at_a_time_same_result(void **state)
{
    const char *dialogue =
        EHLO ENVELOPE "RCPT TO:<e@f.test>\r\nDATA\r\n"
        "..leading dot\r\n..\r\n...\r\nx.\r\n.\r\n"
        "MAIL FROM:<>\r\nRCPT TO:<g@h.test>\r\nDATA\r\n.\r\nQUIT\r\n";
    static char replies1[sizeof H.replies];
    char body1[4096], body2[1024];

    harness_init(1, 1000000, 100);
    feed(dialogue);
    assert_int_equal(H.messages, 2);
    snprintf(replies1, sizeof replies1, "%s", H.replies);
    snprintf(body1, sizeof body1, "%s", after_received(0));
    snprintf(body2, sizeof body2, "%s", H.senders[1]);
    /* The unstuffed body: ".leading dot", ".", "..", "x." */
    assert_string_equal(body1, ".leading dot\r\n.\r\n..\r\nx.\r\n");
    assert_string_equal(body2, "");
    harness_fini();

    harness_init(1, 1000000, 100);
    feed_n(dialogue, strlen(dialogue), 1);
    assert_int_equal(H.messages, 2);
    assert_string_equal(H.replies, replies1);
    assert_string_equal(after_received(0),
                        ".leading dot\r\n.\r\n..\r\nx.\r\n");
    harness_fini();
}


static void
test_pipelining(void **state)
{
    harness_init(1, 1000000, 100);
    feed(EHLO);
    H.replies_len = 0;
    feed("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<x>\r\n"
         "DATA\r\nhello\r\n.\r\nRSET\r\nNOOP\r\n");
    assert_string_equal(H.replies,
                        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                        "501 5.1.3 Bad recipient address syntax\r\n"
                        "354 End data with <CR><LF>.<CR><LF>\r\n"
                        "250 2.0.0 Ok: queued as TESTID1\r\n"
                        "250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n");
    harness_fini();
}


static void
test_out_of_sequence(void **state)
{
    harness_init(1, 1000000, 100);
    feed("MAIL FROM:<a@b.test>\r\n");
    assert_true(has_reply("503 5.5.1"));
    feed(EHLO "RCPT TO:<c@d.test>\r\n");
    assert_int_equal(reply_count("503 5.5.1"), 2);
    feed("DATA\r\n");
    assert_int_equal(reply_count("503 5.5.1"), 3);
    feed("MAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\n");
    assert_int_equal(reply_count("503 5.5.1"), 4);
    feed("DATA\r\n");            /* MAIL but no recipient */
    assert_true(has_reply("554 5.5.1"));
    assert_int_equal(H.messages, 0);
    harness_fini();
}


static void
test_syntax_and_unknown(void **state)
{
    harness_init(1, 1000000, 100);
    feed("EHLO\r\n");
    assert_true(has_reply("501 5.5.4"));
    feed(EHLO "FOO bar\r\n");
    assert_true(has_reply("500 5.5.2"));
    feed("MAIL FROM:a@b.test\r\n");
    assert_true(has_reply("501 5.1.7"));
    feed("MAIL FROM:<a@b.test> FROB=1\r\n");
    assert_true(has_reply("555 5.5.4"));
    feed("MAIL FROM:<a@b.test> BODY=8BITMIME SIZE=100\r\n");
    assert_true(has_reply("250 2.1.0"));
    feed("RCPT TO:<c@d.test> NOTIFY=NEVER\r\n");
    assert_int_equal(reply_count("555 5.5.4"), 2);
    feed("RCPT TO:<@relay.test:c@d.test>\r\n");
    assert_true(has_reply("250 2.1.5"));
    feed("VRFY x\r\nHELP\r\nNOOP\r\n");
    assert_true(has_reply("252 2.5.0"));
    assert_true(has_reply("214 2.0.0"));
    harness_fini();
}


static void
test_size_limits(void **state)
{
    char big[3000];

    harness_init(1, 1024, 100);
    feed(EHLO "MAIL FROM:<a@b.test> SIZE=5000\r\n");
    assert_true(has_reply("552 5.3.4"));
    memset(big, 'x', sizeof big - 3);
    memcpy(big + sizeof big - 3, "\r\n", 3);
    feed(ENVELOPE "DATA\r\n");
    feed(big);
    feed(".\r\n");
    assert_int_equal(reply_count("552 5.3.4"), 2);
    assert_int_equal(H.messages, 0);
    /* The session goes on: a small message is accepted afterwards. */
    feed(ENVELOPE "DATA\r\nsmall\r\n.\r\n");
    assert_int_equal(H.messages, 1);
    harness_fini();
}


static void
test_too_many_recipients(void **state)
{
    harness_init(1, 1000000, 2);
    feed(EHLO "MAIL FROM:<a@b.test>\r\nRCPT TO:<1@d.test>\r\n"
         "RCPT TO:<2@d.test>\r\nRCPT TO:<3@d.test>\r\nDATA\r\n.\r\n");
    assert_true(has_reply("452 4.5.3"));
    assert_int_equal(H.messages, 1);
    assert_int_equal(H.rcpts[0], 2);
    harness_fini();
}


static void
test_relay_denied(void **state)
{
    harness_init(0, 1000000, 100);
    feed(EHLO ENVELOPE "DATA\r\n");
    assert_true(has_reply("550 5.7.1"));
    assert_true(has_reply("554 5.5.1"));
    assert_int_equal(H.messages, 0);
    harness_fini();
}


static void
test_long_line_not_buffered(void **state)
{
    char chunk[1024];
    int i;

    harness_init(1, 1000000, 100);
    feed(EHLO);
    memset(chunk, 'A', sizeof chunk);
    /* 10 MB without a newline: nothing beyond line_max is kept. */
    for (i = 0; i < 10 * 1024; i++) {
        enum smtp_event ev;
        size_t used = smtp_server_feed(&H.s, chunk, sizeof chunk, &ev);

        assert_int_equal(used, sizeof chunk);
        assert_true(H.s.line_len <= H.lim.line_max);
    }
    feed("\r\nNOOP\r\n");
    assert_true(has_reply("500 5.5.2"));
    assert_true(has_reply("250 2.0.0"));
    harness_fini();
}


static void
test_bare_lf_cr_in_commands(void **state)
{
    harness_init(1, 1000000, 100);
    feed(EHLO "NOOP\n");
    assert_true(has_reply("500 5.5.2 Error: bare LF"));
    feed("NO\rOP\r\n");
    assert_true(has_reply("500 5.5.2 Error: bare CR"));
    feed_n("NO\0OP\r\n", 7, 7);
    assert_true(has_reply("500 5.5.2 Error: NUL"));
    feed_n("MAIL FROM:<a\0b@c.test>\r\n", 24, 24);
    assert_int_equal(reply_count("500 5.5.2 Error: NUL"), 2);
    harness_fini();
}


/*
 * Each smuggling variant hides "end of data + a second transaction" behind
 * line endings other than CRLF. Only the real CRLF.CRLF ends DATA; the one
 * message is refused; no second transaction exists.
 */
static void
test_smuggling_variants(void **state)
{
    static const char *const fakes[] = {
        "\n.\r\n", "\r\n.\n", "\n.\n", "\r.\r\n", "\r\n.\r", "\r.\r",
        "\n.\r", "\r\n.\r\r\n",
    };
    size_t i;

    for (i = 0; i < ARRAY_SIZE(fakes); i++) {
        char dialogue[512];

        snprintf(dialogue, sizeof dialogue,
                 EHLO ENVELOPE "DATA\r\nhello%s"
                 "MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\n"
                 "DATA\r\nsmuggled\r\n.\r\nQUIT\r\n", fakes[i]);
        harness_init(1, 1000000, 100);
        feed(dialogue);
        assert_int_equal(H.messages, 0);
        assert_int_equal(reply_count("354 "), 1);
        assert_int_equal(reply_count("550 5.6.0"), 1);
        assert_int_equal(reply_count("250 2.1.0"), 1);
        assert_true(H.closed);
        harness_fini();

        harness_init(1, 1000000, 100);
        feed_n(dialogue, strlen(dialogue), 1);
        assert_int_equal(H.messages, 0);
        assert_int_equal(reply_count("550 5.6.0"), 1);
        harness_fini();
    }
}


static void
test_commit_failures(void **state)
{
    harness_init(1, 1000000, 100);
    H.commit_res = -EIO;
    feed(EHLO ENVELOPE "DATA\r\nx\r\n.\r\n");
    assert_true(has_reply("451 4.3.0"));
    H.commit_res = -ENOSPC;
    feed(ENVELOPE "DATA\r\nx\r\n.\r\n");
    assert_true(has_reply("452 4.3.1"));
    H.commit_res = 0;
    feed(ENVELOPE "DATA\r\nx\r\n.\r\n");
    assert_true(has_reply("250 2.0.0 Ok: queued"));
    harness_fini();
}


static void
test_commit_waits(void **state)
{
    const char *in = EHLO ENVELOPE "DATA\r\nx\r\n.\r\nNOOP\r\n";
    enum smtp_event ev;
    size_t used;

    harness_init(1, 1000000, 100);
    used = smtp_server_feed(&H.s, in, strlen(in), &ev);
    assert_int_equal(ev, SMTP_EV_MESSAGE);
    assert_int_equal(H.s.state, SMTP_STATE_COMMIT);
    /* Nothing after the final dot is consumed before the answer. */
    assert_string_equal(in + used, "NOOP\r\n");
    assert_int_equal(smtp_server_feed(&H.s, in + used, 6, &ev), 0);
    take_replies();
    assert_false(has_reply("250 2.0.0"));
    smtp_server_commit_done(&H.s, 0);
    used += smtp_server_feed(&H.s, in + used, 6, &ev);
    assert_int_equal(used, strlen(in));
    take_replies();
    assert_int_equal(reply_count("250 2.0.0"), 2);
    harness_fini();
}


static void
test_timeout_and_shutdown(void **state)
{
    harness_init(1, 1000000, 100);
    feed(EHLO);
    smtp_server_timeout(&H.s);
    take_replies();
    assert_true(has_reply("421 4.4.2"));
    assert_int_equal(H.s.state, SMTP_STATE_CLOSED);
    harness_fini();

    /* Between transactions: 421 at once. */
    harness_init(1, 1000000, 100);
    feed(EHLO);
    smtp_server_shutdown(&H.s);
    take_replies();
    assert_true(has_reply("421 4.3.2"));
    harness_fini();

    /* Inside one: it finishes, gets its 250, then 421. */
    harness_init(1, 1000000, 100);
    feed(EHLO "MAIL FROM:<a@b.test>\r\n");
    smtp_server_shutdown(&H.s);
    take_replies();
    assert_false(has_reply("421"));
    feed("RCPT TO:<c@d.test>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n");
    assert_true(has_reply("250 2.0.0 Ok: queued"));
    assert_true(has_reply("421 4.3.2"));
    assert_false(has_reply("250 2.0.0 Ok\r\n"));
    assert_true(H.closed);
    harness_fini();
}


static void
test_too_many_errors(void **state)
{
    int i;

    harness_init(1, 1000000, 100);
    for (i = 0; i < SMTP_ERRORS_MAX; i++)
        feed("BOGUS\r\n");
    assert_true(has_reply("421 4.7.0"));
    assert_true(H.closed);
    harness_fini();
}


static void
test_flush_backpressure(void **state)
{
    size_t n = 4000, i;
    char *in = malloc(n * 6 + 1);

    for (i = 0; i < n; i++)
        memcpy(in + i * 6, "NOOP\r\n", 6);
    in[n * 6] = '\0';
    harness_init(1, 1000000, 100);
    feed(in);
    assert_true(H.flushes > 0);
    assert_int_equal(reply_count("250 2.0.0"), n);
    free(in);
    harness_fini();
}


static void
test_helo_and_rset(void **state)
{
    harness_init(1, 1000000, 100);
    feed("HELO old.test\r\n" ENVELOPE "RSET\r\nDATA\r\n");
    assert_true(has_reply("250 mx.test"));
    assert_true(has_reply("503 5.5.1"));     /* RSET dropped the envelope */
    feed(ENVELOPE "DATA\r\nx\r\n.\r\n");
    assert_int_equal(H.messages, 1);
    assert_non_null(strstr(H.bodies[0], "with SMTP id"));
    harness_fini();
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greet_and_ehlo),
        cmocka_unit_test(test_simple_message),
        cmocka_unit_test(test_byte_at_a_time_same_result),
        cmocka_unit_test(test_pipelining),
        cmocka_unit_test(test_out_of_sequence),
        cmocka_unit_test(test_syntax_and_unknown),
        cmocka_unit_test(test_size_limits),
        cmocka_unit_test(test_too_many_recipients),
        cmocka_unit_test(test_relay_denied),
        cmocka_unit_test(test_long_line_not_buffered),
        cmocka_unit_test(test_bare_lf_cr_in_commands),
        cmocka_unit_test(test_smuggling_variants),
        cmocka_unit_test(test_commit_failures),
        cmocka_unit_test(test_commit_waits),
        cmocka_unit_test(test_timeout_and_shutdown),
        cmocka_unit_test(test_too_many_errors),
        cmocka_unit_test(test_flush_backpressure),
        cmocka_unit_test(test_helo_and_rset),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
