/*
 * dsn_test - the bounce message: structure, refusals, hostile remote text,
 * long lines, big and odd originals, 8-bit, boundary collisions, and one
 * DSN read back by Python's email parser (skipped without python3).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "arena.h"
#include "dsn.h"

#define SEED 0x1234abcdULL
#define NOW 1700000000          /* Tue, 14 Nov 2023 22:13:20 +0000 */

static const char orig_msg[] =
    "Received: from client.example.org\r\n"
    "From: Alice <alice@example.org>\r\n"
    "To: bob@example.net\r\n"
    "Subject: hello\r\n"
    "Message-ID: <m1@example.org>\r\n"
    "\r\n"
    "Hi Bob,\r\n"
    "this is the body.\r\n";

struct fixture {
    struct arena_pool pool;
    struct arena *a;
    struct dsn_rcpt rcpts[3];
    struct dsn_msg m;
    struct dsn_out out;
};

/* The parts of a built DSN, found by its boundary. */
struct parts {
    const char *head;            /* the DSN's own header */
    size_t head_len;
    unsigned count;
    const char *part[4];         /* each: its header, blank line, content */
    size_t part_len[4];
};


static int
setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);

    arena_pool_init(&f->pool, 16384, 4);
    f->a = arena_create(&f->pool);
    f->rcpts[0] = (struct dsn_rcpt){
        .addr = "bob@example.net",
        .action = DSN_ACTION_FAILED,
        .status = "5.1.1",
        .diagnostic = "smtp; 550 5.1.1 <bob@example.net>: user unknown",
        .remote_mta = "mx.example.net",
        .last_attempt_unix = NOW - 10,
    };
    f->rcpts[1] = (struct dsn_rcpt){
        .addr = "carol@example.net",
        .orcpt = "rfc822;Carol@example.net",
        .action = DSN_ACTION_FAILED,
        .status = "5.4.7",
        .diagnostic = "smtp; 554 5.4.7 message expired",
        .last_attempt_unix = NOW - 20,
    };
    f->rcpts[2] = (struct dsn_rcpt){
        .addr = "dave@example.com",
        .action = DSN_ACTION_DELAYED,
        .status = "4.4.1",
        .diagnostic = "smtp; 421 4.4.1 try later",
        .remote_mta = "mx.example.com",
        .last_attempt_unix = NOW - 30,
        .retry_until_unix = NOW + 86400,
    };
    f->m = (struct dsn_msg){
        .hostname = "mta.test",
        .queue_id = "00000001-0000-000a",
        .sender = "alice@example.org",
        .arrival_unix = NOW - 3600,
        .now_unix = NOW,
        .orig = orig_msg,
        .orig_bytes = sizeof orig_msg - 1,
        .rcpts = f->rcpts,
        .rcpt_count = 3,
        .seed = SEED,
    };
    *state = f;
    return 0;
}


static int
teardown(void **state)
{
    struct fixture *f = *state;

    arena_destroy(f->a);         /* frees out.text through its cleanup */
    arena_pool_fini(&f->pool);
    free(f);
    return 0;
}


/* count - occurrences of needle in [s, s + n) */
static unsigned
count(const char *s, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    unsigned c = 0;
    const char *p = s;

    while ((p = memmem(p, (size_t)(s + n - p), needle, k)) != NULL) {
        c++;
        p += k;
    }
    return c;
}


/* check_lines - every line ends in CRLF, no bare CR or LF, <= 998 bytes */
static void
check_lines(const char *s, size_t n)
{
    size_t i, col = 0;

    assert_true(n >= 2);
    assert_memory_equal(s + n - 2, "\r\n", 2);
    for (i = 0; i < n; i++) {
        if (s[i] == '\r') {
            assert_true(i + 1 < n);
            assert_int_equal(s[i + 1], '\n');
            i++;
            col = 0;
            continue;
        }
        assert_int_not_equal(s[i], '\n');
        col++;
        assert_true(col <= 998);
    }
}


/* split - cut out at its boundary: exactly at part starts, then the end */
static void
split(const struct dsn_out *out, struct parts *p)
{
    char delim[64], close[64];
    const char *s = out->text, *end = out->text + out->bytes, *q;

    memset(p, 0, sizeof *p);
    snprintf(delim, sizeof delim, "\r\n--%s\r\n", out->boundary);
    snprintf(close, sizeof close, "\r\n--%s--\r\n", out->boundary);
    /* Once in Content-Type, three delimiters, one close: nowhere else. */
    assert_int_equal(count(s, out->bytes, out->boundary), 5);
    assert_int_equal(count(s, out->bytes, delim), 3);
    assert_int_equal(count(s, out->bytes, close), 1);
    /* The close delimiter ends the message. */
    assert_memory_equal(end - strlen(close), close, strlen(close));

    q = strstr(s, "\r\n\r\n");
    assert_non_null(q);
    p->head = s;
    p->head_len = (size_t)(q - s) + 2;
    q = memmem(s, out->bytes, delim, strlen(delim));
    while (q != NULL) {
        const char *start = q + strlen(delim), *next;

        next = memmem(start, (size_t)(end - start), delim, strlen(delim));
        if (next == NULL)
            next = end - strlen(close);
        assert_true(p->count < 4);
        p->part[p->count] = start;
        p->part_len[p->count] = (size_t)(next - start);
        p->count++;
        q = next < end - strlen(close) ? next : NULL;
    }
}


/* part_content - a part's content after its header and blank line */
static const char *
part_content(const struct parts *p, unsigned i, size_t *len)
{
    const char *q = memmem(p->part[i], p->part_len[i], "\r\n\r\n", 4);

    assert_non_null(q);
    *len = p->part_len[i] - (size_t)(q + 4 - p->part[i]);
    return q + 4;
}


/* has_line - does [s, s + n) hold the line "line" (CRLF-delimited)? */
static int
has_line(const char *s, size_t n, const char *line)
{
    size_t k = strlen(line);
    const char *p = s;

    while ((p = memmem(p, (size_t)(s + n - p), line, k)) != NULL) {
        if ((p == s || p[-1] == '\n') && p + k + 2 <= s + n &&
            p[k] == '\r' && p[k + 1] == '\n')
            return 1;
        p += k;
    }
    return 0;
}


/* unfold_field - the value of the first field "name:" in s, unfolded */
static char *
unfold_field(const char *s, size_t n, const char *name, char *dst,
             size_t cap)
{
    char key[64];
    const char *p, *end = s + n;
    size_t d = 0;

    snprintf(key, sizeof key, "%s: ", name);
    for (p = s; (p = memmem(p, (size_t)(end - p), key, strlen(key))) != NULL;
         p++) {
        if (p == s || p[-1] == '\n')
            break;
    }
    if (p == NULL)
        return NULL;
    p += strlen(key);
    while (p < end && d + 1 < cap) {
        if (p[0] == '\r' && p + 2 < end && (p[2] == ' ' || p[2] == '\t')) {
            p += 2;              /* a fold: keep the white space */
            continue;
        }
        if (p[0] == '\r')
            break;
        dst[d++] = *p++;
    }
    dst[d] = '\0';
    return dst;
}


static void
test_structure(void **state)
{
    struct fixture *f = *state;
    struct parts p;
    const char *c;
    size_t n;
    char v[256], expect[128];

    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    check_lines(f->out.text, f->out.bytes);
    split(&f->out, &p);
    assert_int_equal(p.count, 3);
    assert_false(f->out.eightbit);
    assert_false(f->out.truncated);

    assert_true(has_line(p.head, p.head_len,
                         "From: Mail Delivery System "
                         "<MAILER-DAEMON@mta.test>"));
    assert_true(has_line(p.head, p.head_len, "To: <alice@example.org>"));
    assert_true(has_line(p.head, p.head_len,
                         "Subject: Undelivered Mail Returned to Sender"));
    assert_true(has_line(p.head, p.head_len,
                         "Date: Tue, 14 Nov 2023 22:13:20 +0000"));
    assert_true(has_line(p.head, p.head_len, "MIME-Version: 1.0"));
    assert_true(has_line(p.head, p.head_len,
                         "Auto-Submitted: auto-replied"));
    assert_non_null(unfold_field(p.head, p.head_len, "Message-ID",
                                 v, sizeof v));
    assert_int_equal(v[0], '<');
    assert_non_null(strstr(v, "@mta.test>"));
    assert_non_null(unfold_field(p.head, p.head_len, "Content-Type",
                                 v, sizeof v));
    snprintf(expect, sizeof expect, "multipart/report; "
             "report-type=delivery-status;\tboundary=\"%s\"",
             f->out.boundary);
    assert_string_equal(v, expect);

    /* Part 1: the explanation names every recipient and reply. */
    assert_non_null(memmem(p.part[0], p.part_len[0],
                           "Content-Type: text/plain; charset=us-ascii",
                           41));
    c = part_content(&p, 0, &n);
    assert_true(count(c, n, "<bob@example.net>: delivery failed") == 1);
    assert_true(count(c, n, "host mx.example.net said: 550 5.1.1") == 1);
    assert_true(count(c, n, "<carol@example.net>: delivery failed") == 1);
    assert_true(count(c, n, "<dave@example.com>: delayed, still trying\r\n"
                      "    until Wed, 15 Nov 2023 22:13:20 +0000\r\n"
                      "    host mx.example.com said: 421 4.4.1") == 1);
    /* No remote host: the reply alone. */
    assert_true(count(c, n, "\r\n    554 5.4.7 message expired\r\n") == 1);

    /* Part 2: per-message fields, blank line, one block per recipient. */
    assert_true(has_line(p.part[1], p.part_len[1],
                         "Content-Type: message/delivery-status"));
    c = part_content(&p, 1, &n);
    assert_true(has_line(c, n, "Reporting-MTA: dns; mta.test"));
    assert_true(has_line(c, n, "X-Ringmail-Queue-ID: 00000001-0000-000a"));
    assert_true(has_line(c, n, "Arrival-Date: Tue, 14 Nov 2023 21:13:20 "
                         "+0000"));
    assert_int_equal(count(c, n, "\r\n\r\n"), 3);
    assert_int_equal(count(c, n, "Final-Recipient: rfc822; "), 3);
    assert_true(has_line(c, n, "Final-Recipient: rfc822; bob@example.net"));
    assert_true(has_line(c, n, "Original-Recipient: rfc822;Carol@"
                         "example.net"));
    assert_int_equal(count(c, n, "Action: failed\r\n"), 2);
    assert_int_equal(count(c, n, "Action: delayed\r\n"), 1);
    assert_true(has_line(c, n, "Status: 5.1.1"));
    assert_true(has_line(c, n, "Status: 5.4.7"));
    assert_true(has_line(c, n, "Status: 4.4.1"));
    assert_true(has_line(c, n, "Remote-MTA: dns; mx.example.net"));
    assert_true(has_line(c, n, "Diagnostic-Code: smtp; 554 5.4.7 message "
                         "expired"));
    assert_int_equal(count(c, n, "Last-Attempt-Date: "), 3);
    assert_int_equal(count(c, n, "Will-Retry-Until: "), 1);

    /* Part 3: the original header only, exactly. */
    assert_true(has_line(p.part[2], p.part_len[2],
                         "Content-Type: text/rfc822-headers"));
    assert_null(memmem(p.part[2], p.part_len[2], "Content-Transfer", 16));
    c = part_content(&p, 2, &n);
    assert_int_equal(n, strstr(orig_msg, "\r\n\r\n") + 2 - orig_msg);
    assert_memory_equal(c, orig_msg, n);
}


static void
test_delayed_only(void **state)
{
    struct fixture *f = *state;
    struct parts p;

    f->m.rcpts = &f->rcpts[2];
    f->m.rcpt_count = 1;
    f->m.postmaster = "postmaster@mta.test";
    f->m.envid = "QQ314159";
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    check_lines(f->out.text, f->out.bytes);
    split(&f->out, &p);
    assert_int_equal(p.count, 3);
    assert_true(has_line(p.head, p.head_len,
                         "Subject: Delayed Mail (still being retried)"));
    assert_true(has_line(p.head, p.head_len,
                         "From: Mail Delivery System "
                         "<postmaster@mta.test>"));
    assert_true(has_line(p.part[1], p.part_len[1],
                         "Original-Envelope-Id: QQ314159"));
    assert_true(has_line(p.part[1], p.part_len[1],
                         "Will-Retry-Until: Wed, 15 Nov 2023 22:13:20 "
                         "+0000"));
}


static void
test_refusals(void **state)
{
    struct fixture *f = *state;

    /* Never bounce a bounce. */
    f->m.sender = "";
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), -EINVAL);
    assert_null(f->out.text);
    f->m.sender = NULL;
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), -EINVAL);
    /* A sender that would break To: open. */
    f->m.sender = "a@b\r\nBcc: x@y";
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), -EINVAL);
    f->m.sender = "alice@example.org";
    f->m.rcpt_count = 0;
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), -EINVAL);
    f->m.rcpt_count = 3;
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
}


static void
test_injection_neutralized(void **state)
{
    struct fixture *f = *state;
    struct parts p;
    char v[512];
    const char *c;
    size_t n;

    f->rcpts[0].diagnostic = "smtp; 550 nope\r\nBcc: victim@example.com\r\n"
                             "\r\nFrom: evil\x01\x1b[31m\xff\tend\n";
    f->rcpts[0].remote_mta = "mx.evil\r\nX-Injected: 1";
    f->rcpts[0].addr = "bob@example.net\r\nX-Also: 1";
    f->rcpts[0].status = "5.1.1\r\nX-Status: 1";
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    check_lines(f->out.text, f->out.bytes);
    split(&f->out, &p);
    assert_int_equal(p.count, 3);
    c = part_content(&p, 1, &n);
    /* Still one block per recipient: no blank line came in. */
    assert_int_equal(count(c, n, "\r\n\r\n"), 3);
    assert_int_equal(count(f->out.text, f->out.bytes, "\nBcc:"), 0);
    assert_int_equal(count(f->out.text, f->out.bytes, "\nFrom: evil"), 0);
    assert_int_equal(count(f->out.text, f->out.bytes, "\nX-"), 1);
    assert_int_equal(count(f->out.text, f->out.bytes, "\x1b"), 0);
    assert_int_equal(count(f->out.text, f->out.bytes, "\xff"), 0);
    assert_non_null(unfold_field(c, n, "Diagnostic-Code", v,
                                 sizeof v));
    assert_string_equal(v, "smtp; 550 nope Bcc: victim@example.com From: "
                           "evil [31m? end");
    assert_true(has_line(c, n, "Remote-MTA: dns; mx.evil X-Injected: 1"));
    assert_true(has_line(c, n, "Final-Recipient: rfc822; "
                         "bob@example.net??X-Also: 1"));
    /* A bad status is replaced, not copied. */
    assert_true(has_line(c, n, "Status: 5.0.0"));
    assert_false(f->out.eightbit);
}


static void
test_long_diagnostic(void **state)
{
    struct fixture *f = *state;
    static char diag[6000], v[8192];
    struct parts p;
    const char *c;
    size_t n, i;

    /* Words, then one word far longer than a line. */
    strcpy(diag, "smtp; 550");
    for (i = 0; i < 100; i++)
        strcat(diag, " blah-blah");
    n = strlen(diag);
    strcat(diag, " ");
    memset(diag + n + 1, 'x', 1500);
    diag[n + 1 + 1500] = '\0';
    f->rcpts[0].diagnostic = diag;
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    check_lines(f->out.text, f->out.bytes);
    split(&f->out, &p);
    c = part_content(&p, 1, &n);
    assert_non_null(unfold_field(c, n, "Diagnostic-Code", v,
                                 sizeof v));
    /* Folding at spaces gives the words back unchanged ... */
    assert_memory_equal(v, diag, strlen(diag) - 1500);
    /* ... and the text is capped. */
    assert_true(strlen(v) <= DSN_DIAG_MAX + 1);
    /* Folded lines stay short where there are spaces to fold at. */
    assert_true(has_line(c, n, " blah-blah blah-blah blah-blah blah-blah "
                         "blah-blah blah-blah blah-blah"));
}


static void
test_full_truncated(void **state)
{
    struct fixture *f = *state;
    size_t body = 2u << 20, n, i;
    char *big = malloc(body + 200);
    struct parts p;
    const char *c;

    n = (size_t)sprintf(big, "From: a@example.org\r\nSubject: big\r\n\r\n");
    for (i = 0; n + 64 < body; i++)
        n += (size_t)sprintf(big + n, "line %08zu of a very long body "
                             "..........................\r\n", i);
    f->m.orig = big;
    f->m.orig_bytes = n;
    f->m.return_full = 1;
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    check_lines(f->out.text, f->out.bytes);
    assert_true(f->out.truncated);
    assert_true(f->out.bytes < DSN_FULL_MAX_DEFAULT + 8192);
    split(&f->out, &p);
    assert_int_equal(p.count, 3);
    assert_true(has_line(p.part[2], p.part_len[2],
                         "Content-Type: message/rfc822"));
    c = part_content(&p, 2, &n);
    assert_true(n <= DSN_FULL_MAX_DEFAULT);
    assert_true(n > DSN_FULL_MAX_DEFAULT - 100);
    /* Whole lines, header and body both there. */
    assert_memory_equal(c, big, n);
    assert_memory_equal(c + n - 2, "\r\n", 2);
    for (i = n - 2; i > 0 && c[i - 1] != '\n'; i--)
        ;
    assert_memory_equal(c + i, "line ", 5);
    assert_non_null(memmem(p.part[0], p.part_len[0], "cut short", 9));

    /* A smaller cap is obeyed too. */
    f->m.full_max_bytes = 1000;
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    split(&f->out, &p);
    part_content(&p, 2, &n);
    assert_true(n <= 1000 && n > 900);
    free(big);
}


static void
test_full_small_untruncated(void **state)
{
    struct fixture *f = *state;
    struct parts p;
    const char *c;
    size_t n;

    f->m.return_full = 1;
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    assert_false(f->out.truncated);
    split(&f->out, &p);
    c = part_content(&p, 2, &n);
    assert_int_equal(n, sizeof orig_msg - 1);
    assert_memory_equal(c, orig_msg, n);
}


static void
test_original_without_body(void **state)
{
    struct fixture *f = *state;
    static const char hdr_only[] = "Subject: x\r\nFrom: y@example.org";
    static const char odd[] = "Subject: a\nX: b\0c\rY: d\r\n\r\nbody\r\n";
    static const char empty_hdr[] = "\r\nbody only\r\n";
    struct parts p;
    const char *c;
    size_t n;
    int full;

    for (full = 0; full <= 1; full++) {
        /* No blank line, no final CRLF: all of it is header. */
        f->m.return_full = full;
        f->m.orig = hdr_only;
        f->m.orig_bytes = sizeof hdr_only - 1;
        assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
        check_lines(f->out.text, f->out.bytes);
        split(&f->out, &p);
        c = part_content(&p, 2, &n);
        assert_int_equal(n, sizeof hdr_only + 1);
        assert_memory_equal(c, "Subject: x\r\nFrom: y@example.org\r\n", n);
    }

    /* Bare LF and CR become CRLF, NUL becomes '?'. */
    f->m.return_full = 0;
    f->m.orig = odd;
    f->m.orig_bytes = sizeof odd - 1;
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    check_lines(f->out.text, f->out.bytes);
    split(&f->out, &p);
    c = part_content(&p, 2, &n);
    assert_int_equal(n, strlen("Subject: a\r\nX: b?c\r\nY: d\r\n"));
    assert_memory_equal(c, "Subject: a\r\nX: b?c\r\nY: d\r\n", n);

    /* No header at all: an empty headers part. */
    f->m.orig = empty_hdr;
    f->m.orig_bytes = sizeof empty_hdr - 1;
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    split(&f->out, &p);
    c = part_content(&p, 2, &n);
    assert_int_equal(n, 0);

    f->m.orig = NULL;
    f->m.orig_bytes = 0;
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    split(&f->out, &p);
    assert_int_equal(p.count, 3);
}


static void
test_long_original_header_line(void **state)
{
    struct fixture *f = *state;
    static char orig[4096];
    struct parts p;
    const char *c;
    size_t n;

    strcpy(orig, "X-Long: ");
    memset(orig + 8, 'z', 3000);
    strcpy(orig + 3008, "\r\nSubject: s\r\n\r\nbody\r\n");
    f->m.orig = orig;
    f->m.orig_bytes = strlen(orig);
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    check_lines(f->out.text, f->out.bytes);
    split(&f->out, &p);
    c = part_content(&p, 2, &n);
    /* Broken into folds: the continuation lines start with a space. */
    assert_int_equal(count(c, n, "\r\n "), 3);
    assert_true(has_line(c, n, "Subject: s"));
}


static void
test_8bit_original(void **state)
{
    struct fixture *f = *state;
    static const char orig[] = "Subject: caf\xc3\xa9\r\n\r\nbody\r\n";
    struct parts p;
    const char *c;
    size_t n;

    f->m.orig = orig;
    f->m.orig_bytes = sizeof orig - 1;
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    check_lines(f->out.text, f->out.bytes);
    assert_true(f->out.eightbit);
    split(&f->out, &p);
    assert_true(has_line(p.part[2], p.part_len[2],
                         "Content-Transfer-Encoding: 8bit"));
    /* The other parts stay 7-bit. */
    assert_null(memmem(p.part[0], p.part_len[0], "8bit", 4));
    assert_null(memmem(p.part[1], p.part_len[1], "8bit", 4));
    c = part_content(&p, 2, &n);
    assert_memory_equal(c, "Subject: caf\xc3\xa9\r\n", n);

    /* An 8-bit recipient makes parts 1 and 2 8-bit, typed utf-8. */
    f->m.orig = orig_msg;
    f->m.orig_bytes = sizeof orig_msg - 1;
    f->rcpts[0].addr = "j\xc3\xb6rg@example.net";
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    assert_true(f->out.eightbit);
    split(&f->out, &p);
    assert_true(has_line(p.part[0], p.part_len[0],
                         "Content-Transfer-Encoding: 8bit"));
    assert_true(has_line(p.part[1], p.part_len[1],
                         "Content-Transfer-Encoding: 8bit"));
    assert_null(memmem(p.part[2], p.part_len[2], "8bit", 4));
    c = part_content(&p, 1, &n);
    assert_true(has_line(c, n, "Final-Recipient: utf-8; "
                         "j\xc3\xb6rg@example.net"));
}


static void
test_boundary_collision(void **state)
{
    struct fixture *f = *state;
    static char orig[512];
    char first[48];
    struct parts p;

    /* The boundary the seed gives first, planted in the original. */
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    memcpy(first, f->out.boundary, sizeof first);
    snprintf(orig, sizeof orig, "Subject: x\r\nX-Evil: y\r\n\r\n--%s\r\n"
             "Content-Type: text/plain\r\n\r\nforged\r\n--%s--\r\n",
             first, first);
    f->m.orig = orig;
    f->m.orig_bytes = strlen(orig);
    f->m.return_full = 1;
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    assert_string_not_equal(f->out.boundary, first);
    split(&f->out, &p);          /* checks the count of the new one */
    assert_int_equal(p.count, 3);
    /* The forged delimiters are still in the returned message. */
    assert_int_equal(count(f->out.text, f->out.bytes, first), 2);
}


static void
test_random_seed(void **state)
{
    struct fixture *f = *state;
    char first[48];

    f->m.seed = 0;
    f->m.now_unix = 0;
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    memcpy(first, f->out.boundary, sizeof first);
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    assert_string_not_equal(f->out.boundary, first);
    assert_string_equal(dsn_action_name(DSN_ACTION_FAILED), "failed");
    assert_string_equal(dsn_action_name(DSN_ACTION_DELAYED), "delayed");
}


/* Python's email package reads the DSN as a 3-part report. */
static const char python_check[] =
    "import email, email.policy, sys\n"
    "m = email.message_from_binary_file(open(sys.argv[1], 'rb'),\n"
    "                                   policy=email.policy.default)\n"
    "assert not m.defects, m.defects\n"
    "assert m.get_content_type() == 'multipart/report'\n"
    "assert m.get_param('report-type') == 'delivery-status'\n"
    "assert m['Auto-Submitted'] == 'auto-replied'\n"
    "parts = m.get_payload()\n"
    "assert len(parts) == 3, len(parts)\n"
    "assert parts[0].get_content_type() == 'text/plain'\n"
    "assert parts[1].get_content_type() == 'message/delivery-status'\n"
    "assert parts[2].get_content_type() == sys.argv[2]\n"
    "for p in parts:\n"
    "    assert not p.defects, p.defects\n"
    "blocks = parts[1].get_payload()\n"
    "assert len(blocks) == 4, len(blocks)\n"
    "assert blocks[0]['Reporting-MTA'] == 'dns; mta.test'\n"
    "assert [b['Action'] for b in blocks[1:]] == "
    "['failed', 'failed', 'delayed']\n"
    "assert blocks[1]['Final-Recipient'] == 'rfc822; bob@example.net'\n"
    "assert blocks[1]['Diagnostic-Code'].startswith('smtp; 550 5.1.1')\n"
    "assert m['To'].addresses[0].addr_spec == 'alice@example.org'\n"
    "if sys.argv[2] == 'message/rfc822':\n"
    "    inner = parts[2].get_payload()[0]\n"
    "    assert inner['Subject'] == 'hello'\n"
    "    assert 'this is the body.' in inner.get_content()\n"
    "else:\n"
    "    assert 'Subject: hello' in parts[2].get_payload()\n";


/* python_check_dsn - run python_check on the DSN in f->out */
static int
python_check_dsn(struct fixture *f, const char *part3_type)
{
    char dir[] = "/tmp/dsn_test.XXXXXX", path[64], script[64], cmd[256];
    FILE *fp;
    int rc;

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/dsn.eml", dir);
    snprintf(script, sizeof script, "%s/check.py", dir);
    fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(f->out.text, 1, f->out.bytes, fp), f->out.bytes);
    fclose(fp);
    fp = fopen(script, "w");
    assert_non_null(fp);
    fputs(python_check, fp);
    fclose(fp);
    snprintf(cmd, sizeof cmd, "python3 %s %s %s", script, path, part3_type);
    rc = system(cmd);
    unlink(path);
    unlink(script);
    rmdir(dir);
    return rc;
}


static void
test_python_email_parser(void **state)
{
    struct fixture *f = *state;

    if (system("python3 -c 'import email' >/dev/null 2>&1") != 0)
        skip();
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    assert_int_equal(python_check_dsn(f, "text/rfc822-headers"), 0);
    f->m.return_full = 1;
    assert_int_equal(dsn_build(f->a, &f->m, &f->out), 0);
    assert_int_equal(python_check_dsn(f, "message/rfc822"), 0);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_structure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delayed_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_injection_neutralized, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_long_diagnostic, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_full_truncated, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_full_small_untruncated, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_original_without_body, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_long_original_header_line,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_8bit_original, setup, teardown),
        cmocka_unit_test_setup_teardown(test_boundary_collision, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_random_seed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_python_email_parser, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
