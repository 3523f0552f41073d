/*
 * control_test - the operations side's pure parts: Control_Listener,
 *                Metrics_Listener, Run_Directory and User in conf.h;
 *                hist.h buckets; stats.h publish and read; outbuf.h JSON
 *                strings; the metrics HTTP request parser.
 *
 * The console and metrics end to end (a running daemon, ringctl, HTTP)
 * are tests/smtp/test_control.py.
 */
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "conf.h"
#include "control.h"
#include "hist.h"
#include "outbuf.h"
#include "shard.h"
#include "stats.h"

#define LISTENER "ESMTP_Listener { Listen \"127.0.0.1:2525\" { } }\n"

static char test_dir[PATH_MAX];
static char test_path[PATH_MAX + 64];
static struct conf_errors test_errs;


static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}


static int
setup(void **state)
{
    char tmpl[] = "/tmp/control_test.XXXXXX";

    (void)state;
    if (mkdtemp(tmpl) == NULL || realpath(tmpl, test_dir) == NULL)
        return -1;
    memset(&test_errs, 0, sizeof test_errs);
    return 0;
}


static int
teardown(void **state)
{
    (void)state;
    conf_errors_fini(&test_errs);
    return nftw(test_dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}


static struct conf *
load(const char *text)
{
    FILE *fp;

    snprintf(test_path, sizeof test_path, "%s/ringmail.conf", test_dir);
    fp = fopen(test_path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
    return conf_load(test_path, &test_errs);
}


static void
ops_defaults(void **state)
{
    struct conf *c = load("Spool_Base = \"var/spool\"\n" LISTENER);
    char want[PATH_MAX + 32];

    (void)state;
    assert_non_null(c);
    assert_int_equal(c->control_listen_count, 0);
    assert_int_equal(c->metrics_listen_count, 0);
    assert_null(c->user);
    snprintf(want, sizeof want, "%s/var", test_dir);
    assert_string_equal(c->run_directory, want);
    conf_free(c);
}


static void
ops_listeners(void **state)
{
    struct conf *c = load(
        "Spool_Base = \"spool\"\n"
        "Run_Directory = \"run\"\n"
        "User = \"nobody\"\n"
        "Control_Listener {\n"
        "  Listen \"ctl.sock\" { }\n"
        "  Listen \"/tmp/abs.sock\" { }\n"
        "}\n"
        "Metrics_Listener { Listen \"127.0.0.1:9025\" { } "
        "Listen \"[::1]:0\" { } }\n" LISTENER);
    char want[PATH_MAX + 32];

    (void)state;
    if (c == NULL)
        conf_errors_print(&test_errs, stderr);
    assert_non_null(c);
    assert_string_equal(c->user, "nobody");
    assert_int_equal(c->control_listen_count, 2);
    snprintf(want, sizeof want, "%s/run/ctl.sock", test_dir);
    assert_string_equal(c->control_listens[0].path, want);
    assert_string_equal(c->control_listens[1].path, "/tmp/abs.sock");
    assert_int_equal(c->control_listens[0].line, 5);
    assert_int_equal(c->metrics_listen_count, 2);
    assert_string_equal(c->metrics_listens[0].text, "127.0.0.1:9025");
    assert_int_equal(c->metrics_listens[1].addr.ss_family, AF_INET6);
    conf_free(c);
}


static void
ops_errors(void **state)
{
    char text[600];
    struct conf *c;

    (void)state;
    c = load("Metrics_Listener { Listen \"localhost:9025\" { } }\n"
             "Control_Listener \"x\" { }\n"
             "Control_Listener { Listen \"\" { } }\n"
             "Control_Listener { Relay_Hosts = ( ) }\n"
             "User = \"\"\n" LISTENER);
    assert_null(c);
    assert_int_equal(test_errs.count, 5);
    assert_non_null(strstr(test_errs.v[0].message,
                           "bad Metrics_Listener Listen address"));
    assert_non_null(strstr(test_errs.v[1].message, "takes no name"));
    assert_non_null(strstr(test_errs.v[2].message, "needs a socket path"));
    assert_non_null(strstr(test_errs.v[3].message, "not allowed"));
    assert_non_null(strstr(test_errs.v[4].message, "'User'"));
    conf_errors_fini(&test_errs);
    memset(text, 'a', 200);
    text[200] = '\0';
    {
        char conf_text[1000];

        snprintf(conf_text, sizeof conf_text,
                 "Control_Listener { Listen \"%s\" { } }\n" LISTENER, text);
        c = load(conf_text);
    }
    assert_null(c);
    assert_int_equal(test_errs.count, 1);
    assert_non_null(strstr(test_errs.v[0].message, "too long"));
    conf_errors_fini(&test_errs);
    c = load("User = \"no-such-user-here\"\n" LISTENER);
    assert_null(c);
    assert_int_equal(test_errs.count, 1);
    assert_string_equal(test_errs.v[0].message,
                        "User 'no-such-user-here': no such user on this "
                        "machine");
    assert_int_equal(test_errs.v[0].line, 1);
}


static void
hist_buckets(void **state)
{
    struct hist h, sum;

    (void)state;
    memset(&h, 0, sizeof h);
    memset(&sum, 0, sizeof sum);
    hist_record_us(&h, 0);
    hist_record_us(&h, 100);             /* inclusive bound */
    hist_record_us(&h, 101);
    hist_record_us(&h, 3600000001ull);   /* +Inf only */
    assert_int_equal(h.count, 4);
    assert_int_equal(h.bucket[0], 2);
    assert_int_equal(h.bucket[1], 1);
    assert_int_equal(h.bucket[HIST_BUCKETS - 1], 0);
    assert_int_equal(h.sum_us, 3600000202ull);
    stats_hist_add(&sum, &h);
    stats_hist_add(&sum, &h);
    assert_int_equal(sum.count, 8);
    assert_int_equal(sum.bucket[0], 4);
}


static void
stats_round_trip(void **state)
{
    struct shard *sh = calloc(1, sizeof *sh);
    struct stats_snap s;

    (void)state;
    assert_non_null(sh);
    sh->state = SHARD_STATE_DRAINING;
    sh->sessions_active = 7;
    sh->stats.messages_received = 42;
    sh->stats.dlv.dup_window = 3;
    sh->stats.dlv.dup_window_max = 9;
    sh->dlv.q.deferred = 5;
    sh->spool.live_count = 2;
    sh->spool.segment_bytes = 1 << 20;
    sh->spool.failed = -28;
    hist_record_us(&sh->spool.commit_hist, 150);
    stats_publish(&sh->pub, sh);
    stats_read(&sh->pub, &s);
    assert_int_equal(s.state, SHARD_STATE_DRAINING);
    assert_int_equal(s.sessions, 7);
    assert_int_equal(s.messages_received, 42);
    assert_int_equal(s.dup_window, 3);
    assert_int_equal(s.dup_window_max, 9);
    assert_int_equal(s.queue_deferred, 5);
    assert_int_equal(s.spool_bytes, 2 << 20);
    assert_int_equal(s.spool_failed, 28);
    assert_int_equal(s.commit.count, 1);
    assert_int_equal(s.commit.bucket[1], 1);
    free(sh);
}


static void
outbuf_json(void **state)
{
    struct outbuf o = { 0 };

    (void)state;
    outbuf_json_str(&o, "a\"b\\c\nd\te\x01" "f\xc3\xa9");
    assert_string_equal(o.p, "\"a\\\"b\\\\c\\nd\\te\\u0001f\xc3\xa9\"");
    outbuf_reset(&o);
    assert_int_equal(o.len, 0);
    outbuf_printf(&o, "%d-%s", 12, "x");
    assert_string_equal(o.p, "12-x");
    outbuf_fini(&o);
}


/* http - the status line control_http_answer() gives req */
static void
http_status(const char *req, const char *want)
{
    struct control ctl;
    struct outbuf o = { 0 };
    char buf[CONTROL_HTTP_MAX];

    memset(&ctl, 0, sizeof ctl);
    snprintf(buf, sizeof buf, "%s", req);
    control_http_answer(&ctl, buf, strlen(buf), &o);
    if (strncmp(o.p, want, strlen(want)) != 0)
        fprintf(stderr, "%s -> %s\n", req, o.p);
    assert_int_equal(strncmp(o.p, want, strlen(want)), 0);
    outbuf_fini(&o);
}


static void
http_parser(void **state)
{
    (void)state;
    http_status("GET /ready HTTP/1.0\r\n\r\n", "HTTP/1.0 503 ");
    http_status("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
                "HTTP/1.0 200 ");
    http_status("GET /other HTTP/1.0\r\n\r\n", "HTTP/1.0 404 ");
    http_status("POST /metrics HTTP/1.0\r\n\r\n", "HTTP/1.0 405 ");
    http_status("GET /metrics\r\n\r\n", "HTTP/1.0 400 ");
    http_status("GET /metrics FTP/1.0\r\n\r\n", "HTTP/1.0 400 ");
    http_status("GET  /metrics HTTP/1.0 x\r\n\r\n", "HTTP/1.0 400 ");
    http_status("no line end", "HTTP/1.0 400 ");
    http_status("", "HTTP/1.0 400 ");
}


int
main(void)
{
    const struct CMUnitTest cases[] = {
#define CASE(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
        CASE(ops_defaults),
        CASE(ops_listeners),
        CASE(ops_errors),
        cmocka_unit_test(hist_buckets),
        cmocka_unit_test(stats_round_trip),
        cmocka_unit_test(outbuf_json),
        cmocka_unit_test(http_parser),
#undef CASE
    };

    return cmocka_run_group_tests(cases, NULL, NULL);
}
