/*
 * conf_test - conf_parse.h and conf.h: syntax, directives, errors
 *
 * Each case writes its configuration into a fresh mkdtemp() directory and
 * loads it with conf_load(), or parses a buffer with conf_parse_buf().
 * Errors are checked as printed, `FILE:LINE: message`, with the exact line.
 * RINGMAIL_SRC (set by meson) locates conf/ringmail.conf and the golden
 * files tests/unit/conf/NAME.conf, whose printed errors (directory
 * stripped) must equal NAME.ref.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "conf.h"
#include "conf_parse.h"

#define LISTENER "ESMTP_Listener { Listen \"127.0.0.1:2525\" { } }\n"

static char test_dir[PATH_MAX];     /* realpath of the mkdtemp() dir */
static char test_path[PATH_MAX + 64]; /* the file the case loads */
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
    char tmpl[] = "/tmp/conf_test.XXXXXX";

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


/* write_conf - write text to test_dir/name, make it test_path */
static const char *
write_conf(const char *name, const char *text)
{
    FILE *fp;

    snprintf(test_path, sizeof test_path, "%s/%s", test_dir, name);
    fp = fopen(test_path, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite(text, 1, strlen(text), fp), strlen(text));
    assert_int_equal(fclose(fp), 0);
    return test_path;
}


/* load_ok - load text, which must have no error */
static struct conf *
load_ok(const char *text)
{
    struct conf *c = conf_load(write_conf("ok.conf", text), &test_errs);

    if (test_errs.count != 0)
        conf_errors_print(&test_errs, stderr);
    assert_int_equal(test_errs.count, 0);
    assert_non_null(c);
    return c;
}


/* printed - every error as conf_errors_print() writes it */
static char *
printed(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);

    assert_non_null(fp);
    conf_errors_print(&test_errs, fp);
    fclose(fp);
    return buf;
}


/* load_errors - load text, which must fail with count errors */
static void
load_errors(const char *text, size_t count)
{
    struct conf *c = conf_load(write_conf("bad.conf", text), &test_errs);

    assert_null(c);
    if (test_errs.count != count)
        conf_errors_print(&test_errs, stderr);
    assert_int_equal(test_errs.count, count);
}


/* expect_error - error i reads exactly `test_path:line: message` */
static void
expect_error(size_t i, int line, const char *message)
{
    char want[PATH_MAX + 640];
    char *all = printed();
    char *p = all;
    size_t n;

    snprintf(want, sizeof want, "%s:%d: %s\n", test_path, line, message);
    for (n = 0; n < i && p != NULL; n++) {
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    assert_non_null(p);
    if (strncmp(p, want, strlen(want)) != 0)
        fprintf(stderr, "want: %sgot:  %s", want, all);
    assert_int_equal(strncmp(p, want, strlen(want)), 0);
    assert_int_equal(test_errs.v[i].line, line);
    free(all);
}


/* one_error - text fails with exactly this one error */
static void
one_error(const char *text, int line, const char *message)
{
    load_errors(text, 1);
    expect_error(0, line, message);
}


/* sa4, sa6 - socket addresses for conf_cidr_match() */
static const struct sockaddr *
sa4(struct sockaddr_in *sin, const char *text)
{
    memset(sin, 0, sizeof *sin);
    sin->sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, text, &sin->sin_addr), 1);
    return (const struct sockaddr *)sin;
}


static const struct sockaddr *
sa6(struct sockaddr_in6 *sin6, const char *text)
{
    memset(sin6, 0, sizeof *sin6);
    sin6->sin6_family = AF_INET6;
    assert_int_equal(inet_pton(AF_INET6, text, &sin6->sin6_addr), 1);
    return (const struct sockaddr *)sin6;
}


static int
relay(const struct conf *c, const char *addr)
{
    const struct conf_esmtp_listener *l = &c->listeners[0];
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;

    if (strchr(addr, ':') != NULL)
        return conf_cidr_match(l->relay_hosts, l->relay_host_count,
                               sa6(&sin6, addr));
    return conf_cidr_match(l->relay_hosts, l->relay_host_count,
                           sa4(&sin, addr));
}


/* --- cases --------------------------------------------------------- */


static void
default_conf_loads(void **state)
{
    const char *src = getenv("RINGMAIL_SRC");
    char path[PATH_MAX], root[PATH_MAX], want[PATH_MAX + 32];
    const struct sockaddr_in *sin;
    struct conf *c;

    (void)state;
    snprintf(path, sizeof path, "%s/conf/ringmail.conf",
             src != NULL ? src : ".");
    if (access(path, R_OK) != 0)
        skip();
    c = conf_load(path, &test_errs);
    conf_errors_print(&test_errs, stderr);
    assert_int_equal(test_errs.count, 0);
    assert_non_null(c);

    assert_non_null(realpath(src != NULL ? src : ".", root));
    snprintf(want, sizeof want, "%s/var/spool", root);
    assert_string_equal(c->spool_base, want);
    snprintf(want, sizeof want, "%s/var/log/paniclog", root);
    assert_string_equal(c->paniclog, want);
    snprintf(want, sizeof want, "%s/var/log/delivery.log", root);
    assert_string_equal(c->delivery_log, want);
    assert_int_equal(c->shards, 0);

    assert_int_equal(c->listener_count, 1);
    assert_int_equal(c->listeners[0].listen_count, 1);
    sin = (const struct sockaddr_in *)&c->listeners[0].listens[0].addr;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(ntohs(sin->sin_port), 2525);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK);
    assert_string_equal(c->listeners[0].listens[0].text, "127.0.0.1:2525");
    assert_int_equal(c->listeners[0].relay_host_count, 2);
    assert_true(relay(c, "127.0.0.1"));
    assert_true(relay(c, "::1"));
    assert_false(relay(c, "192.0.2.1"));

    /* Its outbound examples are commented out: built-in behaviour. */
    assert_int_equal(c->domain_count, 0);
    assert_int_equal(c->binding_count, 1);
    assert_int_equal(conf_binding_default(c)->bind_address_len, 0);
    assert_int_equal(c->nameserver_count, 0);
    assert_null(c->domain_default.gateway.text);
    assert_int_equal(c->domain_default.retry_interval_ms, 1200 * 1000);
    conf_free(c);
}


static void
defaults(void **state)
{
    struct conf *c = load_ok(LISTENER);
    char want[PATH_MAX + 32];

    (void)state;
    snprintf(want, sizeof want, "%s/spool", test_dir);
    assert_string_equal(c->spool_base, want);
    snprintf(want, sizeof want, "%s/log/paniclog", test_dir);
    assert_string_equal(c->paniclog, want);
    snprintf(want, sizeof want, "%s/log/delivery.log", test_dir);
    assert_string_equal(c->delivery_log, want);
    assert_string_equal(c->path, test_path);
    assert_string_equal(c->dir, test_dir);
    assert_true(c->hostname != NULL && c->hostname[0] != '\0');
    assert_int_equal(c->shards, 0);
    assert_int_equal(c->max_message_size, 20 << 20);
    assert_int_equal(c->max_recipients, 100);
    assert_int_equal(c->max_connections, 10000);
    assert_int_equal(c->max_connections_per_ip, 0);
    assert_int_equal(c->idle_timeout_ms, 300000);
    assert_int_equal(c->data_timeout_ms, 180000);
    assert_int_equal(c->shutdown_timeout_ms, 30000);
    assert_int_equal(c->spool_segment_size, 64 << 20);
    /* Relay_Hosts absent: loopback only. */
    assert_int_equal(c->listeners[0].relay_host_count, 2);
    assert_true(relay(c, "127.8.9.10"));
    assert_true(relay(c, "::1"));
    assert_false(relay(c, "10.0.0.1"));
    conf_free(c);
}


static void
options_with_units(void **state)
{
    struct conf *c = load_ok(
        "Spool_Base = /var/spool/ringmail\n"
        "Shards = 4\n"
        "Hostname = \"mx1.example.com\"\n"
        "Paniclog = \"/var/log/ringmail/paniclog\"\n"
        "Delivery_Log = /var/log/ringmail/delivery.log\n"
        "Max_Message_Size = 512K\n"
        "Max_Recipients_Per_Message = 1000\n"
        "Max_Connections = 500\n"
        "Max_Connections_Per_IP = 20\n"
        "Idle_Timeout = 5m\n"
        "Data_Timeout = 1d\n"
        "Shutdown_Timeout = 250ms\n"
        "Spool_Segment_Size = 1G\n"
        LISTENER);

    (void)state;
    assert_string_equal(c->spool_base, "/var/spool/ringmail");
    assert_int_equal(c->shards, 4);
    assert_string_equal(c->hostname, "mx1.example.com");
    assert_string_equal(c->paniclog, "/var/log/ringmail/paniclog");
    assert_string_equal(c->delivery_log, "/var/log/ringmail/delivery.log");
    assert_int_equal(c->max_message_size, 512 * 1024);
    assert_int_equal(c->max_recipients, 1000);
    assert_int_equal(c->max_connections, 500);
    assert_int_equal(c->max_connections_per_ip, 20);
    assert_int_equal(c->idle_timeout_ms, 5 * 60 * 1000);
    assert_int_equal(c->data_timeout_ms, 86400000);
    assert_int_equal(c->shutdown_timeout_ms, 250);
    assert_int_equal(c->spool_segment_size, 1 << 30);
    conf_free(c);

    c = load_ok("Max_Message_Size = 2G\nIdle_Timeout = 1\n"
                "Data_Timeout = 2h\nShutdown_Timeout = 0\n"
                "Spool_Segment_Size = 1048576\n" LISTENER);
    assert_int_equal(c->max_message_size, 2ull << 30);
    assert_int_equal(c->idle_timeout_ms, 1000);
    assert_int_equal(c->data_timeout_ms, 2 * 3600 * 1000);
    assert_int_equal(c->shutdown_timeout_ms, 0);
    assert_int_equal(c->spool_segment_size, 1 << 20);
    conf_free(c);
}


static void
value_parsers(void **state)
{
    uint64_t v;
    int on;

    (void)state;
    assert_int_equal(conf_size_from_str("20M", &v), 0);
    assert_int_equal(v, 20 << 20);
    assert_int_equal(conf_size_from_str("2g", &v), 0);
    assert_int_equal(v, 2ull << 30);
    assert_int_equal(conf_size_from_str("100", &v), 0);
    assert_int_equal(v, 100);
    assert_int_equal(conf_size_from_str("20MB", &v), -EINVAL);
    assert_int_equal(conf_size_from_str("M", &v), -EINVAL);
    assert_int_equal(conf_size_from_str("-1", &v), -EINVAL);
    assert_int_equal(conf_size_from_str("99999999999999999999", &v),
                     -ERANGE);
    assert_int_equal(conf_size_from_str("17179869184G", &v), -ERANGE);
    assert_int_equal(conf_duration_from_str("300", &v), 0);
    assert_int_equal(v, 300000);
    assert_int_equal(conf_duration_from_str("250ms", &v), 0);
    assert_int_equal(v, 250);
    assert_int_equal(conf_duration_from_str("1d", &v), 0);
    assert_int_equal(v, 86400000);
    assert_int_equal(conf_duration_from_str("3h", &v), 0);
    assert_int_equal(v, 3 * 3600000);
    assert_int_equal(conf_duration_from_str("5 m", &v), -EINVAL);
    assert_int_equal(conf_duration_from_str("1w", &v), -EINVAL);
    assert_int_equal(conf_bool_from_str("Yes", &on), 0);
    assert_int_equal(on, 1);
    assert_int_equal(conf_bool_from_str("off", &on), 0);
    assert_int_equal(on, 0);
    assert_int_equal(conf_bool_from_str("0", &on), 0);
    assert_int_equal(on, 0);
    assert_int_equal(conf_bool_from_str("maybe", &on), -EINVAL);
}


static void
shards(void **state)
{
    struct conf *c;

    (void)state;
    c = load_ok("Shards = auto\n" LISTENER);
    assert_int_equal(c->shards, 0);
    conf_free(c);
    c = load_ok("Shards = \"AUTO\"\n" LISTENER);
    assert_int_equal(c->shards, 0);
    conf_free(c);
    c = load_ok("Shards = 256\n" LISTENER);
    assert_int_equal(c->shards, 256);
    conf_free(c);

    one_error(LISTENER "Shards = 0\n", 2,
              "option 'Shards' expects auto or a number from 1 to 256");
    conf_errors_fini(&test_errs);
    one_error(LISTENER "\nShards = 300\n", 3,
              "option 'Shards' expects auto or a number from 1 to 256");
    conf_errors_fini(&test_errs);
    one_error(LISTENER "Shards = ( 4 )\n", 2,
              "option 'Shards' expects auto or a number from 1 to 256");
}


static void
listen_addresses(void **state)
{
    struct conf *c = load_ok(
        "ESMTP_Listener \"inbound\" {\n"
        "  Listen \"[::1]:2525\" { }\n"
        "  Listen *:25 { }\n"
        "  Listen \"127.0.0.1:0\" { }\n"
        "}\n"
        "ESMTP_Listener {\n"
        "  Listen \"[::]:587\" { }\n"
        "}\n");
    const struct conf_esmtp_listener *l;
    const struct sockaddr_in6 *sin6;
    const struct sockaddr_in *sin;

    (void)state;
    assert_int_equal(c->listener_count, 2);
    l = &c->listeners[0];
    assert_string_equal(l->name, "inbound");
    assert_int_equal(l->listen_count, 3);

    sin6 = (const struct sockaddr_in6 *)&l->listens[0].addr;
    assert_int_equal(sin6->sin6_family, AF_INET6);
    assert_int_equal(l->listens[0].addr_len, sizeof *sin6);
    assert_int_equal(ntohs(sin6->sin6_port), 2525);
    assert_memory_equal(&sin6->sin6_addr, &in6addr_loopback,
                        sizeof in6addr_loopback);
    assert_string_equal(l->listens[0].text, "[::1]:2525");
    assert_string_equal(l->listens[0].file, test_path);
    assert_int_equal(l->listens[0].line, 2);

    sin = (const struct sockaddr_in *)&l->listens[1].addr;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(l->listens[1].addr_len, sizeof *sin);
    assert_int_equal(ntohs(sin->sin_port), 25);
    assert_int_equal(sin->sin_addr.s_addr, htonl(INADDR_ANY));

    sin = (const struct sockaddr_in *)&l->listens[2].addr;
    assert_int_equal(ntohs(sin->sin_port), 0);

    l = &c->listeners[1];
    assert_null(l->name);
    assert_int_equal(l->listen_count, 1);
    sin6 = (const struct sockaddr_in6 *)&l->listens[0].addr;
    assert_int_equal(ntohs(sin6->sin6_port), 587);
    conf_free(c);
}


static void
cidr_match(void **state)
{
    struct conf *c = load_ok(
        "ESMTP_Listener {\n"
        "  Listen \"127.0.0.1:2525\" { }\n"
        "  Relay_Hosts = ( \"10.1.2.3/8\" 192.168.1.7\n"
        "                  \"172.16.0.0/20\" \"2001:db8::/32\" )\n"
        "}\n");
    const struct conf_esmtp_listener *l;
    struct sockaddr_un_like { sa_family_t family; } other = { AF_UNIX };

    (void)state;
    l = &c->listeners[0];
    assert_int_equal(l->relay_host_count, 4);
    /* Host bits are masked off when stored. */
    assert_int_equal(l->relay_hosts[0].family, AF_INET);
    assert_int_equal(l->relay_hosts[0].prefix_bits, 8);
    assert_int_equal(l->relay_hosts[0].addr[0], 10);
    assert_int_equal(l->relay_hosts[0].addr[1], 0);
    assert_int_equal(l->relay_hosts[0].addr[3], 0);
    assert_int_equal(l->relay_hosts[1].prefix_bits, 32);

    assert_true(relay(c, "10.200.3.4"));
    assert_false(relay(c, "11.0.0.1"));
    assert_true(relay(c, "192.168.1.7"));
    assert_false(relay(c, "192.168.1.8"));
    assert_true(relay(c, "172.16.15.255"));
    assert_false(relay(c, "172.16.16.0"));
    assert_true(relay(c, "2001:db8:1::1"));
    assert_false(relay(c, "2001:db9::1"));
    assert_false(relay(c, "::1"));
    assert_false(relay(c, "127.0.0.1"));
    /* IPv4-mapped IPv6 counts as IPv4. */
    assert_true(relay(c, "::ffff:10.9.9.9"));
    assert_true(relay(c, "::ffff:192.168.1.7"));
    assert_false(relay(c, "::ffff:192.168.1.8"));
    assert_false(conf_cidr_match(l->relay_hosts, l->relay_host_count,
                                 (const struct sockaddr *)(void *)&other));
    conf_free(c);

    c = load_ok(LISTENER);
    assert_true(relay(c, "::ffff:127.0.0.1"));
    conf_free(c);

    /* An empty list: nobody relays. */
    c = load_ok("ESMTP_Listener { Listen \"127.0.0.1:1\" { }\n"
                "Relay_Hosts = ( ) }\n");
    assert_int_equal(c->listeners[0].relay_host_count, 0);
    assert_false(relay(c, "127.0.0.1"));
    conf_free(c);
}


static void
comments_and_case(void **state)
{
    struct conf *c = load_ok(
        "# a comment\n"
        "SHARDS = 3   # trailing comment\n"
        "spool_base = \"dir#not-a-comment\"\n"
        "#Hostname = \"commented.out\"\n"
        "hostname=mail.example.org\n"
        "max_message_size=1k\n"
        "esmtp_listener{listen \"127.0.0.1:25\"{}relay_hosts=(\"::1\")}\n"
        "Esmtp_Listener\n"
        "{\n"
        "    LISTEN\n"
        "    \"127.0.0.1:26\"\n"
        "    {\n"
        "    }\n"
        "}\r\n");
    char want[PATH_MAX + 32];

    (void)state;
    assert_int_equal(c->shards, 3);
    snprintf(want, sizeof want, "%s/dir#not-a-comment", test_dir);
    assert_string_equal(c->spool_base, want);
    assert_string_equal(c->hostname, "mail.example.org");
    assert_int_equal(c->max_message_size, 1024);
    assert_int_equal(c->listener_count, 2);
    assert_int_equal(c->listeners[0].relay_host_count, 1);
    assert_int_equal(c->listeners[1].listens[0].line, 10);
    conf_free(c);
}


static void
relative_paths(void **state)
{
    struct conf *c;
    char want[PATH_MAX + 32], parent[PATH_MAX], cwd[PATH_MAX];
    char *slash;

    (void)state;
    assert_non_null(getcwd(cwd, sizeof cwd));
    c = load_ok("Spool_Base = \"../var/spool\"\n"
                "Paniclog = \"./log/../paniclog\"\n"
                "Delivery_Log = \"/abs/delivery.log\"\n"
                LISTENER);
    snprintf(parent, sizeof parent, "%s", test_dir);
    slash = strrchr(parent, '/');
    assert_non_null(slash);
    *slash = '\0';
    snprintf(want, sizeof want, "%s/var/spool", parent);
    assert_string_equal(c->spool_base, want);
    /* Only leading ./ and ../ fold into the directory. */
    snprintf(want, sizeof want, "%s/log/../paniclog", test_dir);
    assert_string_equal(c->paniclog, want);
    assert_string_equal(c->delivery_log, "/abs/delivery.log");
    conf_free(c);

    /* Loading through a relative path still gives absolute paths. */
    assert_int_equal(chdir(test_dir), 0);
    write_conf("rel.conf", "Spool_Base = q\n" LISTENER);
    c = conf_load("rel.conf", &test_errs);
    assert_non_null(c);
    snprintf(want, sizeof want, "%s/q", test_dir);
    assert_string_equal(c->spool_base, want);
    assert_string_equal(c->path, "rel.conf");
    assert_int_equal(chdir(cwd), 0);
    conf_free(c);
}


static void
error_unknown_option(void **state)
{
    (void)state;
    one_error(LISTENER "\nFoo = 1\n", 3, "unknown option 'Foo'");
}


static void
error_unknown_scope(void **state)
{
    (void)state;
    one_error(LISTENER "Bar \"x\" {\n  Foo = 1\n}\n", 2,
              "unknown scope 'Bar'");
}


static void
error_misplaced(void **state)
{
    (void)state;
    load_errors("Relay_Hosts = ( \"::1\" )\n"
                "Listen \"127.0.0.1:25\" { }\n"
                "ESMTP_Listener = 1\n"
                "Shards { }\n"
                "ESMTP_Listener { Listen { } Listen \"127.0.0.1:25\" {"
                " Shards = 2 } }\n",
                6);
    expect_error(0, 1, "option 'Relay_Hosts' is not allowed in "
                 "the global scope");
    expect_error(1, 2, "scope 'Listen' is not allowed in the global scope");
    expect_error(2, 3, "'ESMTP_Listener' is a scope, not an option: write "
                 "ESMTP_Listener { ... }");
    expect_error(3, 4, "'Shards' is an option, not a scope: write "
                 "Shards = value");
    expect_error(4, 5, "scope 'Listen' needs a name, as in "
                 "Listen \"127.0.0.1:25\" { }");
    expect_error(5, 5, "option 'Shards' is not allowed in Listen");
}


static void
error_bad_size_suffix(void **state)
{
    (void)state;
    one_error(LISTENER "Max_Message_Size = 20X\n", 2,
              "option 'Max_Message_Size' expects a size from 1K to 2G "
              "(bytes, or a number with K, M or G)");
}


static void
error_out_of_range(void **state)
{
    (void)state;
    load_errors(LISTENER
                "Max_Message_Size = 3G\n"
                "Max_Recipients_Per_Message = 0\n"
                "Idle_Timeout = 250ms\n"
                "Shutdown_Timeout = 2h\n"
                "Spool_Segment_Size = 1023K\n"
                "Max_Connections = 99999999999999999999999\n",
                6);
    expect_error(0, 2, "option 'Max_Message_Size' expects a size from 1K "
                 "to 2G (bytes, or a number with K, M or G)");
    expect_error(1, 3, "option 'Max_Recipients_Per_Message' expects a "
                 "number from 1 to 100000");
    expect_error(2, 4, "option 'Idle_Timeout' expects a duration from 1s "
                 "to 1d (seconds, or a number with ms, s, m, h or d)");
    expect_error(3, 5, "option 'Shutdown_Timeout' expects a duration from "
                 "0s to 1h (seconds, or a number with ms, s, m, h or d)");
    expect_error(4, 6, "option 'Spool_Segment_Size' expects a size from "
                 "1M to 1G (bytes, or a number with K, M or G)");
    expect_error(5, 7, "option 'Max_Connections' expects a number from 1 "
                 "to 1000000");
}


static void
error_unterminated_string(void **state)
{
    (void)state;
    one_error(LISTENER "Hostname = \"mx.example.com\n", 2,
              "unterminated string");
    conf_errors_fini(&test_errs);
    /* The next line still counts. */
    load_errors(LISTENER "Hostname = \"mx\n Shards = 0\n", 2);
    expect_error(0, 2, "unterminated string");
    expect_error(1, 3, "option 'Shards' expects auto or a number from 1 "
                 "to 256");
    conf_errors_fini(&test_errs);
    one_error(LISTENER "Hostname = \"mx", 2, "unterminated string");
}


static void
error_unterminated_scope(void **state)
{
    (void)state;
    one_error("Shards = 2\nESMTP_Listener {\n Listen \"127.0.0.1:25\" {\n"
              "}\n", 2, "unterminated scope 'ESMTP_Listener' "
              "(missing '}')");
    conf_errors_fini(&test_errs);
    one_error(LISTENER "Relay_Hosts = ( \"::1\"\n", 2,
              "unterminated list for 'Relay_Hosts' (missing ')')");
    conf_errors_fini(&test_errs);
    one_error(LISTENER "}\n", 2, "unexpected '}'");
}


static void
error_missing_listener(void **state)
{
    (void)state;
    one_error("Shards = 2\n", 0, "no ESMTP_Listener configured");
    conf_errors_fini(&test_errs);
    one_error("ESMTP_Listener {\n Relay_Hosts = ( \"::1\" )\n}\n", 1,
              "ESMTP_Listener has no Listen scope, as in "
              "Listen \"127.0.0.1:25\" { }");
}


static void
error_duplicate_option(void **state)
{
    (void)state;
    one_error("Shards = 2\n" LISTENER "shards = 3\n", 3,
              "duplicate option 'Shards' (first set on line 1)");
    conf_errors_fini(&test_errs);
    /* The same option in two listeners is not a duplicate. */
    conf_free(load_ok("ESMTP_Listener { Listen \"127.0.0.1:1\" { }\n"
                      "Relay_Hosts = ::1 }\n"
                      "ESMTP_Listener { Listen \"127.0.0.1:2\" { }\n"
                      "Relay_Hosts = ::1 }\n"));
}


static void
error_bad_cidr(void **state)
{
    (void)state;
    load_errors("ESMTP_Listener {\n Listen \"127.0.0.1:25\" { }\n"
                " Relay_Hosts = ( \"10.0.0.0/33\" \"::1\" \"host.example\"\n"
                "   \"::1/129\" \"1.2.3.4/\" \"1.2.3.4/-1\" \"1.2.3\" )\n}\n",
                6);
    expect_error(0, 3, "option 'Relay_Hosts': bad network '10.0.0.0/33' "
                 "(expected an address or ADDRESS/PREFIX)");
    expect_error(1, 3, "option 'Relay_Hosts': bad network 'host.example' "
                 "(expected an address or ADDRESS/PREFIX)");
    expect_error(2, 3, "option 'Relay_Hosts': bad network '::1/129' "
                 "(expected an address or ADDRESS/PREFIX)");
    expect_error(5, 3, "option 'Relay_Hosts': bad network '1.2.3' "
                 "(expected an address or ADDRESS/PREFIX)");
}


static void
error_bad_listen(void **state)
{
    static const char *const bad[] = {
        "localhost:25", "127.0.0.1", "::1:25", "[::1]25", "[::1:25",
        "127.0.0.256:25", ":25", "[]:25", "127.0.0.1:", "127.0.0.1:x",
        "[127.0.0.1]:25",
    };
    char text[256], want[256];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, "ESMTP_Listener {\n"
                 "  Listen \"127.0.0.1:25\" { }\n"
                 "  Listen \"%s\" { }\n}\n", bad[i]);
        snprintf(want, sizeof want, "bad Listen address '%s': expected "
                 "IPV4:PORT, [IPV6]:PORT or *:PORT", bad[i]);
        one_error(text, 3, want);
        conf_errors_fini(&test_errs);
    }
    one_error("ESMTP_Listener {\n  Listen \"127.0.0.1:65536\" { }\n}\n", 2,
              "bad Listen address '127.0.0.1:65536': port must be 0 to "
              "65535");
    conf_errors_fini(&test_errs);
    one_error("ESMTP_Listener {\n  Listen \"[::1]:99999999999999999999999\""
              " { }\n}\n", 2, "bad Listen address "
              "'[::1]:99999999999999999999999': port must be 0 to 65535");
}


static void
error_hostname(void **state)
{
    (void)state;
    one_error(LISTENER "Hostname = \"mx.example.com\\r\\n250 injected\"\n",
              2, "option 'Hostname' expects a host name such as "
              "mail.example.com");
    conf_errors_fini(&test_errs);
    one_error(LISTENER "Hostname = \"\"\n", 2, "option 'Hostname' expects "
              "a host name such as mail.example.com");
}


static void
multiple_errors(void **state)
{
    (void)state;
    load_errors("Shards = 0\n"
                "Frobnicate = yes\n"
                "ESMTP_Listener {\n"
                "  Listen \"127.0.0.1:99999\" { }\n"
                "  Listen \"127.0.0.1:25\" { }\n"
                "}\n",
                3);
    expect_error(0, 1, "option 'Shards' expects auto or a number from 1 "
                 "to 256");
    expect_error(1, 2, "unknown option 'Frobnicate'");
    expect_error(2, 4, "bad Listen address '127.0.0.1:99999': port must "
                 "be 0 to 65535");
    conf_errors_fini(&test_errs);

    /* Syntax and meaning errors together, reported in line order. */
    load_errors(LISTENER
                "Max_Message_Size = 1\n"
                "Hostname = = x\n"
                "Foo \"a\" \"b\" { x = 1 }\n"
                "Shards = 9999\n",
                4);
    expect_error(0, 2, "option 'Max_Message_Size' expects a size from 1K "
                 "to 2G (bytes, or a number with K, M or G)");
    expect_error(1, 3, "expected a value for 'Hostname', got '='");
    expect_error(2, 4, "expected '{' after 'Foo \"a\"', got a string");
    expect_error(3, 5, "option 'Shards' expects auto or a number from 1 "
                 "to 256");
}


static void
error_cap(void **state)
{
    static char text[20 * 1000 + 64];
    size_t i, len = 0;

    (void)state;
    len += (size_t)sprintf(text + len, "%s", LISTENER);
    for (i = 0; i < 1000; i++)
        len += (size_t)sprintf(text + len, "Bad%zu = 1\n", i);
    load_errors(text, CONF_ERRORS_MAX + 1);
    expect_error(0, 2, "unknown option 'Bad0'");
    assert_string_equal(test_errs.v[CONF_ERRORS_MAX].message,
                        "too many errors; not reporting the rest");
}


static void
error_unreadable(void **state)
{
    char path[PATH_MAX + 32];

    (void)state;
    snprintf(path, sizeof path, "%s/missing.conf", test_dir);
    assert_null(conf_load(path, &test_errs));
    assert_int_equal(test_errs.count, 1);
    assert_int_equal(test_errs.v[0].line, 0);
    assert_string_equal(test_errs.v[0].message,
                        "cannot read: No such file or directory");
    conf_errors_fini(&test_errs);
    assert_null(conf_load(test_dir, &test_errs));
    assert_string_equal(test_errs.v[0].message,
                        "cannot read: not a regular file");
}


/* read_all - a whole file, NUL-terminated */
static char *
read_all(const char *path)
{
    FILE *fp = fopen(path, "r");
    char *buf;
    long len;

    assert_non_null(fp);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    len = ftell(fp);
    assert_true(len >= 0);
    rewind(fp);
    buf = malloc((size_t)len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)len, fp), (size_t)len);
    buf[len] = '\0';
    fclose(fp);
    return buf;
}


static void
golden_files(void **state)
{
    const char *src = getenv("RINGMAIL_SRC");
    char dir[PATH_MAX], path[PATH_MAX + 256], ref[PATH_MAX + 256];
    struct dirent *de;
    DIR *d;
    int n = 0;

    (void)state;
    snprintf(dir, sizeof dir, "%s/tests/unit/conf", src != NULL ? src : ".");
    d = opendir(dir);
    if (d == NULL)
        skip();
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        char *got, *want, *p, *q;
        struct conf *c;

        if (len < 6 || strcmp(de->d_name + len - 5, ".conf") != 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        snprintf(ref, sizeof ref, "%s/%.*s.ref", dir, (int)(len - 5),
                 de->d_name);
        c = conf_load(path, &test_errs);
        assert_true((c == NULL) == (test_errs.count != 0));
        conf_free(c);
        got = printed();
        /* Strip "DIR/" from every line. */
        for (p = q = got; *p != '\0';) {
            if ((p == got || p[-1] == '\n') &&
                strncmp(p, dir, strlen(dir)) == 0 && p[strlen(dir)] == '/')
                p += strlen(dir) + 1;
            *q++ = *p++;
        }
        *q = '\0';
        want = read_all(ref);
        if (strcmp(got, want) != 0)
            fprintf(stderr, "%s:\n--- want\n%s--- got\n%s", de->d_name,
                    want, got);
        assert_string_equal(got, want);
        free(got);
        free(want);
        conf_errors_fini(&test_errs);
        n++;
    }
    closedir(d);
    assert_true(n >= 4);
}


/* --- delivery options: Domain, Binding, Nameservers ----------------- */


static unsigned
port_of(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)(const void *)ss)
                     ->sin6_port);
    return ntohs(((const struct sockaddr_in *)(const void *)ss)->sin_port);
}


static void
delivery_defaults(void **state)
{
    struct conf *c = load_ok("Hostname = mx.example.com\n" LISTENER);
    const struct conf_domain *d = &c->domain_default;
    const struct conf_binding *b;
    char want[300];

    (void)state;
    assert_null(d->name);
    assert_int_equal(d->set, 0);
    assert_null(d->gateway.text);
    assert_int_equal(d->outbound_smtp_port, 25);
    assert_int_equal(d->retry_interval_ms, 1200 * 1000);
    assert_int_equal(d->max_retries, 0);
    assert_int_equal(d->message_expiration_ms, 86400 * 1000);
    assert_int_equal(d->max_outbound_connections, 32);
    assert_int_equal(d->outbound_throttle_messages.count, 0);
    assert_int_equal(d->outbound_throttle_messages.period_ms, 0);
    assert_int_equal(d->outbound_throttle_messages.bucket, 0);
    assert_int_equal(c->throttle_bucket_count, 1);
    assert_int_equal(c->nameserver_count, 0);
    assert_null(c->nameservers);
    assert_string_equal(c->mailer_daemon, "MAILER-DAEMON@mx.example.com");
    assert_int_equal(c->domain_count, 0);
    assert_ptr_equal(conf_domain_find(c, "example.com"), d);
    assert_ptr_equal(conf_domain_find(c, NULL), d);

    /* The built-in default binding. */
    assert_int_equal(c->binding_count, 1);
    b = conf_binding_default(c);
    assert_non_null(b);
    assert_ptr_equal(conf_binding_find(c, "default"), b);
    assert_null(conf_binding_find(c, "Default"));
    assert_null(conf_binding_find(c, "other"));
    assert_null(conf_binding_find(c, NULL));
    assert_string_equal(b->name, "default");
    assert_int_equal(b->line, 0);
    assert_int_equal(b->bind_address_len, 0);
    assert_null(b->bind_address_text);
    assert_string_equal(b->ehlo_hostname, "mx.example.com");
    assert_int_equal(b->overrides.set, 0);
    assert_null(conf_binding_gateway(b, d));
    assert_int_equal(conf_binding_max_outbound_connections(b, d), 32);
    assert_ptr_equal(conf_binding_throttle(b, d),
                     &d->outbound_throttle_messages);
    conf_free(c);

    /* Without Hostname, MailerDaemon follows the machine's name. */
    c = load_ok(LISTENER);
    snprintf(want, sizeof want, "MAILER-DAEMON@%s", c->hostname);
    assert_string_equal(c->mailer_daemon, want);
    assert_string_equal(c->binding_default->ehlo_hostname, c->hostname);
    conf_free(c);
}


static void
delivery_options_with_units(void **state)
{
    struct conf *c = load_ok(
        "MailerDaemon = \"bounces@mail.example.com\"\n"
        "Gateway = \"relay.example.com\"\n"
        "Outbound_SMTP_Port = 2525\n"
        "Retry_Interval = 90s\n"
        "Max_Retries = 5\n"
        "Message_Expiration = 3d\n"
        "Max_Outbound_Connections = 100000\n"
        "Outbound_Throttle_Messages = \"100/60\"\n"
        LISTENER);
    const struct conf_domain *d = &c->domain_default;

    (void)state;
    assert_string_equal(c->mailer_daemon, "bounces@mail.example.com");
    assert_string_equal(d->gateway.text, "relay.example.com");
    assert_string_equal(d->gateway.host, "relay.example.com");
    assert_int_equal(d->gateway.port, 25);
    assert_int_equal(d->gateway.addr_len, 0);
    assert_int_equal(d->outbound_smtp_port, 2525);
    assert_int_equal(d->retry_interval_ms, 90 * 1000);
    assert_int_equal(d->max_retries, 5);
    assert_int_equal(d->message_expiration_ms, 3 * 86400 * 1000);
    assert_int_equal(d->max_outbound_connections, 100000);
    assert_int_equal(d->outbound_throttle_messages.count, 100);
    assert_int_equal(d->outbound_throttle_messages.period_ms, 60 * 1000);
    assert_ptr_equal(conf_binding_gateway(c->binding_default, d),
                     &d->gateway);
    conf_free(c);

    /* Bounds, words and other throttle forms. */
    c = load_ok("Retry_Interval = 1\nMessage_Expiration = 1s\n"
                "Max_Retries = NONE\nOutbound_Throttle_Messages = 50\n"
                "Outbound_SMTP_Port = 65535\n" LISTENER);
    d = &c->domain_default;
    assert_int_equal(d->retry_interval_ms, 1000);
    assert_int_equal(d->message_expiration_ms, 1000);
    assert_int_equal(d->max_retries, 0);
    assert_int_equal(d->outbound_throttle_messages.count, 50);
    assert_int_equal(d->outbound_throttle_messages.period_ms, 1000);
    assert_int_equal(d->outbound_smtp_port, 65535);
    conf_free(c);

    c = load_ok("Retry_Interval = 1d\nMessage_Expiration = 30d\n"
                "Max_Retries = 10000\n"
                "Outbound_Throttle_Messages = \"1000000/1m\"\n" LISTENER);
    d = &c->domain_default;
    assert_int_equal(d->retry_interval_ms, 86400 * 1000);
    assert_int_equal(d->message_expiration_ms, 30u * 86400 * 1000);
    assert_int_equal(d->max_retries, 10000);
    assert_int_equal(d->outbound_throttle_messages.count, 1000000);
    assert_int_equal(d->outbound_throttle_messages.period_ms, 60 * 1000);
    conf_free(c);

    /* 0, with or without a period, is no limit. */
    c = load_ok("Outbound_Throttle_Messages = \"0/60\"\n" LISTENER);
    assert_int_equal(c->domain_default.outbound_throttle_messages.count, 0);
    assert_int_equal(
        c->domain_default.outbound_throttle_messages.period_ms, 0);
    conf_free(c);
}


static void
delivery_out_of_range(void **state)
{
    (void)state;
    load_errors(LISTENER
                "Retry_Interval = 999ms\n"
                "Message_Expiration = 31d\n"
                "Max_Retries = 10001\n"
                "Max_Outbound_Connections = 0\n"
                "Outbound_SMTP_Port = 0\n",
                5);
    expect_error(0, 2, "option 'Retry_Interval' expects a duration from 1s "
                 "to 1d (seconds, or a number with ms, s, m, h or d)");
    expect_error(1, 3, "option 'Message_Expiration' expects a duration "
                 "from 1s to 30d (seconds, or a number with ms, s, m, h "
                 "or d)");
    expect_error(2, 4, "option 'Max_Retries' expects auto, none or a "
                 "number from 0 to 10000");
    expect_error(3, 5, "option 'Max_Outbound_Connections' expects a number "
                 "from 1 to 100000");
    expect_error(4, 6, "option 'Outbound_SMTP_Port' expects a number from "
                 "1 to 65535");
}


static void
gateway_forms(void **state)
{
    static const struct {
        const char *text, *host;
        int family;              /* AF_UNSPEC: a name */
        unsigned port;
    } good[] = {
        { "10.0.0.1", "10.0.0.1", AF_INET, 25 },
        { "10.0.0.1:2525", "10.0.0.1", AF_INET, 2525 },
        { "[::1]", "::1", AF_INET6, 25 },
        { "[2001:db8::1]:26", "2001:db8::1", AF_INET6, 26 },
        { "mx.example.com:587", "mx.example.com", AF_UNSPEC, 587 },
        { "Relay-1.Example.COM", "Relay-1.Example.COM", AF_UNSPEC, 25 },
        { "localhost:65535", "localhost", AF_UNSPEC, 65535 },
    };
    char text[256];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof good / sizeof good[0]; i++) {
        struct conf *c;
        const struct conf_gateway *g;

        snprintf(text, sizeof text, "Gateway = \"%s\"\n" LISTENER,
                 good[i].text);
        c = load_ok(text);
        g = &c->domain_default.gateway;
        assert_string_equal(g->text, good[i].text);
        assert_string_equal(g->host, good[i].host);
        assert_int_equal(g->port, good[i].port);
        if (good[i].family == AF_UNSPEC) {
            assert_int_equal(g->addr_len, 0);
        } else {
            assert_int_equal(g->addr.ss_family, good[i].family);
            assert_int_equal(port_of(&g->addr), good[i].port);
        }
        conf_free(c);
    }
}


static void
error_bad_gateway(void **state)
{
    static const char *const bad[] = {
        "", "[::1", "[::1]x", "[]:25", "host:", "host:x", "-bad.example",
        "bad-.example", "a..example", "10.0.0.256", "a b", "[mx.example]",
        "[10.0.0.1]:25", "under_score.example",
    };
    char text[256], want[512];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, LISTENER "\nGateway = \"%s\"\n",
                 bad[i]);
        snprintf(want, sizeof want, "option 'Gateway': bad gateway '%s' "
                 "(expected HOST or HOST:PORT, HOST a host name, an IPv4 "
                 "address or an [IPv6] address)", bad[i]);
        one_error(text, 3, want);
        conf_errors_fini(&test_errs);
    }
    one_error(LISTENER "Gateway = \"2001:db8::1\"\n", 2, "option "
              "'Gateway': bad gateway '2001:db8::1' (an IPv6 address goes "
              "in brackets, as in \"[2001:db8::1]:25\")");
    conf_errors_fini(&test_errs);
    one_error(LISTENER "Gateway = \"mx.example.com:0\"\n", 2, "option "
              "'Gateway': bad port in 'mx.example.com:0' (1 to 65535)");
    conf_errors_fini(&test_errs);
    one_error(LISTENER "Domain \"a.test\" {\n  Gateway = \"[::1]:65536\"\n"
              "}\n", 3, "option 'Gateway': bad port in '[::1]:65536' (1 to "
              "65535)");
    conf_errors_fini(&test_errs);
    one_error(LISTENER "Gateway = ( \"a\" \"b\" )\n", 2, "option "
              "'Gateway': bad gateway '( ... )' (expected HOST or "
              "HOST:PORT, HOST a host name, an IPv4 address or an [IPv6] "
              "address)");
}


static void
error_bad_throttle(void **state)
{
    static const char *const bad[] = {
        "fast", "-1", "10/", "/60", "10/0", "10/500ms", "10/2d", "1000001",
        "10/60/2", "10 / 60", "10/x", "1.5",
    };
    char text[256], want[512];
    size_t i;

    (void)state;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, LISTENER "Binding \"b\" {\n"
                 "  Outbound_Throttle_Messages = \"%s\"\n}\n", bad[i]);
        snprintf(want, sizeof want, "option 'Outbound_Throttle_Messages' "
                 "expects MESSAGES or MESSAGES/SECONDS, as in \"100/60\" "
                 "(MESSAGES from 0 to 1000000, 0 for no limit; SECONDS "
                 "from 1 to 86400)");
        one_error(text, 3, want);
        conf_errors_fini(&test_errs);
    }
}


static void
domain_inheritance(void **state)
{
    struct conf *c = load_ok(
        LISTENER
        "Domain \"a.test\" {\n"           /* 2: before the globals */
        "    Retry_Interval = 1m\n"
        "}\n"
        "Retry_Interval = 5m\n"
        "Gateway = \"relay.example.com:2525\"\n"
        "Max_Outbound_Connections = 7\n"
        "Domain \"C.Test\" {\n"           /* 8 */
        "    Gateway = \"[::1]\"\n"
        "    Max_Retries = 3\n"
        "    Message_Expiration = 2h\n"
        "    Outbound_SMTP_Port = 2526\n"
        "    Max_Outbound_Connections = 2\n"
        "}\n"
        "Domain b-2.test { }\n");       /* 15 */
    const struct conf_domain *a, *b, *cc, *def = NULL;

    (void)state;
    def = &c->domain_default;
    assert_int_equal(c->domain_count, 3);
    a = conf_domain_find(c, "a.test");
    b = conf_domain_find(c, "b.test");
    cc = conf_domain_find(c, "c.TEST");
    assert_ptr_not_equal(a, def);
    assert_ptr_equal(b, def);
    assert_ptr_not_equal(cc, def);
    assert_ptr_equal(conf_domain_find(c, "A.Test"), a);
    assert_ptr_equal(conf_domain_find(c, "a.test."), def);
    assert_ptr_equal(conf_domain_find(c, "x.a.test"), def);
    assert_ptr_equal(conf_domain_find(c, ""), def);

    /* a.test: its own Retry_Interval, everything else global. */
    assert_string_equal(a->name, "a.test");
    assert_int_equal(a->line, 2);
    assert_string_equal(a->file, test_path);
    assert_int_equal(a->set, CONF_OPT_RETRY_INTERVAL);
    assert_int_equal(a->retry_interval_ms, 60 * 1000);
    assert_int_equal(b->retry_interval_ms, 5 * 60 * 1000);
    assert_string_equal(a->gateway.text, "relay.example.com:2525");
    assert_ptr_not_equal(a->gateway.text, def->gateway.text);
    assert_int_equal(a->gateway.port, 2525);
    assert_int_equal(a->max_outbound_connections, 7);
    assert_int_equal(a->max_retries, 0);
    assert_int_equal(a->message_expiration_ms, 86400 * 1000);
    assert_int_equal(a->outbound_smtp_port, 25);

    /* C.Test is stored in lower case. */
    assert_string_equal(cc->name, "c.test");
    assert_int_equal(cc->line, 8);
    assert_int_equal(cc->set, CONF_OPT_GATEWAY | CONF_OPT_MAX_RETRIES |
                     CONF_OPT_MESSAGE_EXPIRATION |
                     CONF_OPT_OUTBOUND_SMTP_PORT |
                     CONF_OPT_MAX_OUTBOUND_CONNECTIONS);
    assert_string_equal(cc->gateway.host, "::1");
    assert_int_equal(cc->gateway.addr.ss_family, AF_INET6);
    assert_int_equal(cc->retry_interval_ms, 5 * 60 * 1000);
    assert_int_equal(cc->max_retries, 3);
    assert_int_equal(cc->message_expiration_ms, 2 * 3600 * 1000);
    assert_int_equal(cc->outbound_smtp_port, 2526);
    assert_int_equal(cc->max_outbound_connections, 2);

    /* A scope that sets nothing is the global values under its name. */
    b = conf_domain_find(c, "B-2.test");
    assert_string_equal(b->name, "b-2.test");
    assert_int_equal(b->set, 0);
    assert_int_equal(b->retry_interval_ms, 5 * 60 * 1000);
    assert_int_equal(b->max_outbound_connections, 7);
    conf_free(c);
}


static void
domain_many(void **state)
{
    static char text[2000 * 64 + 256];
    char name[64];
    size_t i, len = 0;
    struct conf *c;

    (void)state;
    len += (size_t)sprintf(text + len, "%s", LISTENER);
    /* Reverse order, so the lookup depends on the sort. */
    for (i = 2000; i > 0; i--) {
        len += (size_t)sprintf(text + len, "Domain \"d%zu.test\" { "
                               "Max_Retries = %zu }\n", i, i);
    }
    c = load_ok(text);
    assert_int_equal(c->domain_count, 2000);
    for (i = 1; i <= 2000; i++) {
        const struct conf_domain *d;

        snprintf(name, sizeof name, "D%zu.TEST", i);
        d = conf_domain_find(c, name);
        assert_non_null(d->name);
        assert_int_equal(d->max_retries, i);
    }
    assert_ptr_equal(conf_domain_find(c, "d0.test"), &c->domain_default);
    assert_ptr_equal(conf_domain_find(c, "d2001.test"), &c->domain_default);
    conf_free(c);
}


static void
binding_lookup(void **state)
{
    struct conf *c = load_ok(
        "Hostname = mx.example.com\n"
        "Max_Outbound_Connections = 9\n"
        "Gateway = \"relay.example.com\"\n"
        LISTENER
        "Binding \"out1\" {\n"                 /* 5 */
        "    Bind_Address = \"127.0.0.2\"\n"
        "    EHLO_Hostname = \"out1.example.com\"\n"
        "    Gateway = \"[::1]:2526\"\n"
        "    Max_Outbound_Connections = 3\n"
        "}\n"
        "Binding \"Out1\" {\n"                 /* 11 */
        "    Bind_Address = \"[2001:db8::7]\"\n"
        "}\n"
        "Binding \"v6\" { Bind_Address = \"::1\" }\n"
        "Domain \"a.test\" { Max_Outbound_Connections = 4 }\n");
    const struct conf_binding *out1, *Out1, *v6, *def;
    const struct conf_domain *a, *other;
    const struct sockaddr_in *sin;

    (void)state;
    assert_int_equal(c->binding_count, 4);
    out1 = conf_binding_find(c, "out1");
    Out1 = conf_binding_find(c, "Out1");
    v6 = conf_binding_find(c, "v6");
    def = conf_binding_default(c);
    assert_non_null(out1);
    assert_non_null(Out1);
    assert_non_null(v6);
    assert_ptr_not_equal(out1, Out1);
    assert_null(conf_binding_find(c, "OUT1"));
    assert_null(conf_binding_find(c, "out2"));

    assert_string_equal(out1->name, "out1");
    assert_int_equal(out1->line, 5);
    assert_string_equal(out1->file, test_path);
    assert_int_equal(out1->bind_address_len, sizeof *sin);
    sin = (const struct sockaddr_in *)&out1->bind_address;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(ntohs(sin->sin_port), 0);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x7f000002);
    assert_string_equal(out1->bind_address_text, "127.0.0.2");
    assert_string_equal(out1->ehlo_hostname, "out1.example.com");
    assert_int_equal(out1->overrides.set, CONF_OPT_GATEWAY |
                     CONF_OPT_MAX_OUTBOUND_CONNECTIONS);

    assert_int_equal(Out1->bind_address.ss_family, AF_INET6);
    assert_int_equal(port_of(&Out1->bind_address), 0);
    assert_string_equal(Out1->bind_address_text, "2001:db8::7");
    assert_string_equal(Out1->ehlo_hostname, "mx.example.com");
    assert_string_equal(v6->bind_address_text, "::1");

    assert_string_equal(def->name, "default");
    assert_int_equal(def->bind_address_len, 0);
    assert_string_equal(def->ehlo_hostname, "mx.example.com");

    /* Binding beats Domain beats global, option by option. */
    a = conf_domain_find(c, "a.test");
    other = conf_domain_find(c, "other.test");
    assert_int_equal(conf_binding_max_outbound_connections(out1, a), 3);
    assert_int_equal(conf_binding_max_outbound_connections(out1, other), 3);
    assert_int_equal(conf_binding_max_outbound_connections(def, a), 4);
    assert_int_equal(conf_binding_max_outbound_connections(Out1, other), 9);
    assert_int_equal(conf_binding_max_outbound_connections(NULL, a), 4);
    assert_string_equal(conf_binding_gateway(out1, a)->text, "[::1]:2526");
    assert_int_equal(conf_binding_gateway(out1, a)->port, 2526);
    assert_string_equal(conf_binding_gateway(def, a)->text,
                        "relay.example.com");
    assert_string_equal(conf_binding_gateway(v6, other)->text,
                        "relay.example.com");
    conf_free(c);

    /* A declared "default" replaces the built-in one. */
    c = load_ok(LISTENER "Binding default {\n"
                "  EHLO_Hostname = \"out0.example.com\"\n"
                "  Bind_Address = \"127.0.0.3\"\n}\n");
    assert_int_equal(c->binding_count, 1);
    def = conf_binding_default(c);
    assert_ptr_equal(conf_binding_find(c, "default"), def);
    assert_int_equal(def->line, 2);
    assert_string_equal(def->ehlo_hostname, "out0.example.com");
    assert_string_equal(def->bind_address_text, "127.0.0.3");
    conf_free(c);
}


static void
throttle_buckets(void **state)
{
    struct conf *c = load_ok(
        "Outbound_Throttle_Messages = 10\n"
        LISTENER
        "Domain \"a.test\" { Outbound_Throttle_Messages = \"5/2\" }\n"
        "Domain \"b.test\" { Retry_Interval = 1m }\n"
        "Domain \"c.test\" { Outbound_Throttle_Messages = 0 }\n"
        "Binding \"x\" { Outbound_Throttle_Messages = \"3/1h\" }\n"
        "Binding \"y\" { }\n");
    const struct conf_domain *a, *b, *cc, *def;
    const struct conf_binding *x, *y;
    const struct conf_throttle *t;

    (void)state;
    def = &c->domain_default;
    a = conf_domain_find(c, "a.test");
    b = conf_domain_find(c, "b.test");
    cc = conf_domain_find(c, "c.test");
    x = conf_binding_find(c, "x");
    y = conf_binding_find(c, "y");
    assert_int_equal(c->throttle_bucket_count, 4);

    assert_int_equal(def->outbound_throttle_messages.count, 10);
    assert_int_equal(def->outbound_throttle_messages.period_ms, 1000);
    assert_int_equal(def->outbound_throttle_messages.bucket, 0);
    /* b.test inherits the global throttle and shares its bucket. */
    assert_int_equal(b->outbound_throttle_messages.count, 10);
    assert_int_equal(b->outbound_throttle_messages.bucket, 0);
    assert_int_equal(a->outbound_throttle_messages.count, 5);
    assert_int_equal(a->outbound_throttle_messages.period_ms, 2000);
    assert_int_not_equal(a->outbound_throttle_messages.bucket, 0);
    /* c.test is unlimited, in a bucket of its own. */
    assert_int_equal(cc->outbound_throttle_messages.count, 0);
    assert_int_not_equal(cc->outbound_throttle_messages.bucket, 0);
    assert_int_not_equal(cc->outbound_throttle_messages.bucket,
                         a->outbound_throttle_messages.bucket);

    t = conf_binding_throttle(x, b);
    assert_ptr_equal(t, &x->overrides.outbound_throttle_messages);
    assert_int_equal(t->count, 3);
    assert_int_equal(t->period_ms, 3600 * 1000);
    assert_true(t->bucket < c->throttle_bucket_count);
    assert_int_not_equal(t->bucket, 0);
    assert_int_not_equal(t->bucket, a->outbound_throttle_messages.bucket);
    assert_int_not_equal(t->bucket, cc->outbound_throttle_messages.bucket);
    assert_ptr_equal(conf_binding_throttle(y, a),
                     &a->outbound_throttle_messages);
    assert_ptr_equal(conf_binding_throttle(y, b),
                     &b->outbound_throttle_messages);
    conf_free(c);
}


static void
nameservers(void **state)
{
    struct conf *c = load_ok(
        "Nameservers = ( \"127.0.0.1:5353\" \"[::1]:53\" \"10.0.0.1\"\n"
        "                \"2001:db8::35\" \"[fe80::1]\" )\n" LISTENER);
    const struct sockaddr_in *sin;

    (void)state;
    assert_int_equal(c->nameserver_count, 5);
    sin = (const struct sockaddr_in *)&c->nameservers[0].addr;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK);
    assert_int_equal(c->nameservers[0].addr_len, sizeof *sin);
    assert_int_equal(port_of(&c->nameservers[0].addr), 5353);
    assert_string_equal(c->nameservers[0].text, "127.0.0.1:5353");
    assert_int_equal(c->nameservers[1].addr.ss_family, AF_INET6);
    assert_int_equal(c->nameservers[1].addr_len,
                     sizeof(struct sockaddr_in6));
    assert_int_equal(port_of(&c->nameservers[1].addr), 53);
    assert_int_equal(c->nameservers[2].addr.ss_family, AF_INET);
    assert_int_equal(port_of(&c->nameservers[2].addr), 53);
    assert_int_equal(c->nameservers[3].addr.ss_family, AF_INET6);
    assert_int_equal(port_of(&c->nameservers[3].addr), 53);
    assert_int_equal(port_of(&c->nameservers[4].addr), 53);
    conf_free(c);

    /* A single value is a list of one; ( ) is the default. */
    c = load_ok("Nameservers = 192.0.2.53\n" LISTENER);
    assert_int_equal(c->nameserver_count, 1);
    conf_free(c);
    c = load_ok("Nameservers = ( )\n" LISTENER);
    assert_int_equal(c->nameserver_count, 0);
    conf_free(c);

    load_errors(LISTENER
                "Nameservers = ( \"127.0.0.1:0\" \"dns.example.com\"\n"
                "  \"1.2.3.4:53x\" \"[::1]:70000\" \"::1:53:\" \"[::1\"\n"
                "  \"1.2.3.4:\" \"\" )\n"
                "Shards = 0\n",
                9);
    expect_error(0, 2, "option 'Nameservers': bad port in '127.0.0.1:0' "
                 "(1 to 65535)");
    expect_error(1, 2, "option 'Nameservers': bad server 'dns.example.com' "
                 "(expected IPV4[:PORT] or [IPV6][:PORT])");
    expect_error(2, 2, "option 'Nameservers': bad server '1.2.3.4:53x' "
                 "(expected IPV4[:PORT] or [IPV6][:PORT])");
    expect_error(3, 2, "option 'Nameservers': bad port in '[::1]:70000' "
                 "(1 to 65535)");
    expect_error(4, 2, "option 'Nameservers': bad server '::1:53:' "
                 "(expected IPV4[:PORT] or [IPV6][:PORT])");
    expect_error(8, 5, "option 'Shards' expects auto or a number from 1 "
                 "to 256");
    conf_errors_fini(&test_errs);

    one_error("Nameservers = ( 1.1.1.1 1.1.1.2 1.1.1.3 1.1.1.4 1.1.1.5\n"
              " 1.1.1.6 1.1.1.7 1.1.1.8 1.1.1.9 1.1.1.10 1.1.1.11 1.1.1.12\n"
              " 1.1.1.13 1.1.1.14 1.1.1.15 1.1.1.16 1.1.1.17 )\n" LISTENER,
              1, "option 'Nameservers' takes at most 16 servers");
}


static void
mailer_daemon(void **state)
{
    static const char *const good[] = {
        "MAILER-DAEMON@mx.example.com", "bounce+x.y@example.com",
        "pm@[192.0.2.1]", "a@b",
    };
    static const char *const bad[] = {
        "no at sign", "@example.com", "x@", "x@-bad.example",
        "two words@example.com", "x@example.com>", ".x@example.com",
        "x.@example.com", "<x@example.com>", "x@[]",
    };
    char text[256], want[256];
    struct conf *c;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof good / sizeof good[0]; i++) {
        snprintf(text, sizeof text, "MailerDaemon = \"%s\"\n" LISTENER,
                 good[i]);
        c = load_ok(text);
        assert_string_equal(c->mailer_daemon, good[i]);
        conf_free(c);
    }
    snprintf(want, sizeof want, "option 'MailerDaemon' expects an address "
             "such as MAILER-DAEMON@mail.example.com");
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, LISTENER "MailerDaemon = \"%s\"\n",
                 bad[i]);
        one_error(text, 2, want);
        conf_errors_fini(&test_errs);
    }
}


static void
error_domain_scopes(void **state)
{
    (void)state;
    /* Duplicates, case-insensitively, reported where they repeat. */
    load_errors(LISTENER
                "Domain \"a.test\" { }\n"          /* 2 */
                "Domain \"b.test\" { }\n"
                "Domain \"A.Test\" { }\n"          /* 4 */
                "Domain \"a.test\" { Retry_Interval = 0 }\n",
                3);
    expect_error(0, 4, "duplicate Domain 'a.test' (first on line 2)");
    expect_error(1, 5, "option 'Retry_Interval' expects a duration from 1s "
                 "to 1d (seconds, or a number with ms, s, m, h or d)");
    expect_error(2, 5, "duplicate Domain 'a.test' (first on line 2)");
    conf_errors_fini(&test_errs);

    load_errors(LISTENER
                "Domain \"a.test\" {\n"
                "    Foo = 1\n"                    /* 3 */
                "    Hostname = x.example\n"       /* 4 */
                "    EHLO_Hostname = x.example\n"  /* 5 */
                "    Domain \"b.test\" { }\n"      /* 6 */
                "    Binding \"b\" { }\n"          /* 7 */
                "}\n"
                "Domain \"*.test\" { }\n"          /* 9 */
                "Domain \"/test$/\" { }\n"         /* 10 */
                "Domain \"a_b.test\" { }\n"        /* 11 */
                "Domain { Retry_Interval = 1 }\n", /* 12 */
                9);
    expect_error(0, 3, "unknown option 'Foo'");
    expect_error(1, 4, "option 'Hostname' is not allowed in Domain");
    expect_error(2, 5, "option 'EHLO_Hostname' is not allowed in Domain");
    expect_error(3, 6, "scope 'Domain' is not allowed in Domain");
    expect_error(4, 7, "scope 'Binding' is not allowed in Domain");
    expect_error(5, 9, "bad Domain name '*.test': wildcards are not "
                 "supported; write one Domain per name");
    expect_error(6, 10, "bad Domain name '/test$/': regex domains are not "
                 "supported; write one Domain per name");
    expect_error(7, 11, "bad Domain name 'a_b.test': expected a domain "
                 "name such as example.com");
    expect_error(8, 12, "scope 'Domain' needs a name, as in "
                 "Domain \"example.com\" { }");
}


static void
error_binding_scopes(void **state)
{
    (void)state;
    load_errors(LISTENER
                "Binding \"b1\" {\n"
                "    Retry_Interval = 1m\n"            /* 3 */
                "    Max_Retries = 2\n"                /* 4 */
                "    Message_Expiration = 1h\n"        /* 5 */
                "    Outbound_SMTP_Port = 26\n"        /* 6 */
                "    Bind_Address = \"localhost\"\n"   /* 7 */
                "    EHLO_Hostname = \"a b\"\n"        /* 8 */
                "}\n"
                "Binding \"b1\" { }\n"                 /* 10 */
                "Binding \"B1\" { }\n"
                "Binding \"x y\" { }\n"                /* 12 */
                "Binding { }\n"                        /* 13 */
                "Bind_Address = \"127.0.0.1\"\n",      /* 14 */
                10);
    expect_error(0, 3, "option 'Retry_Interval' is not allowed in Binding");
    expect_error(1, 4, "option 'Max_Retries' is not allowed in Binding");
    expect_error(2, 5, "option 'Message_Expiration' is not allowed in "
                 "Binding");
    expect_error(3, 6, "option 'Outbound_SMTP_Port' is not allowed in "
                 "Binding");
    expect_error(4, 7, "option 'Bind_Address' expects an IPv4 or IPv6 "
                 "address such as 192.0.2.1 or 2001:db8::1");
    expect_error(5, 8, "option 'EHLO_Hostname' expects a host name such as "
                 "mail.example.com");
    expect_error(6, 10, "duplicate Binding 'b1' (first on line 2)");
    expect_error(7, 12, "bad Binding name 'x y': expected 1 to 255 "
                 "characters without spaces or colons");
    expect_error(8, 13, "scope 'Binding' needs a name, as in "
                 "Binding \"name\" { }");
    expect_error(9, 14, "option 'Bind_Address' is not allowed in the "
                 "global scope");
    conf_errors_fini(&test_errs);

    load_errors(LISTENER "Binding \"default\" { }\n"
                "Binding \"default\" { }\n", 1);
    expect_error(0, 3, "duplicate Binding 'default' (first on line 2)");
}


/* --- the syntax alone: conf_parse_buf() ----------------------------- */


static struct conf_node *
parse(const char *text, size_t len)
{
    return conf_parse_buf("t.conf", text, len, &test_errs);
}


static void
parse_tree(void **state)
{
    static const char text[] =
        "a = word\n"
        "b = \"q \\\"x\\\" \\\\ \\n\\t \\d\"\n"
        "c = (\n  one \"two\"\n  \"\" )\n"
        "S inst { T { } }\n"
        "U \"i 2\" { k = v }\n";
    struct conf_node *root = parse(text, sizeof text - 1);
    const struct conf_node *n;

    (void)state;
    assert_int_equal(test_errs.count, 0);
    assert_null(root->name);
    assert_int_equal(root->kind, CONF_NODE_SCOPE);
    n = root->children;
    assert_string_equal(n->name, "a");
    assert_int_equal(n->value_kind, CONF_VALUE_WORD);
    assert_string_equal(n->value, "word");
    assert_int_equal(n->line, 1);
    assert_string_equal(n->file, "t.conf");
    n = n->next;
    assert_int_equal(n->value_kind, CONF_VALUE_STRING);
    assert_string_equal(n->value, "q \"x\" \\ \n\t \\d");
    n = n->next;
    assert_int_equal(n->value_kind, CONF_VALUE_LIST);
    assert_int_equal(n->item_count, 3);
    assert_string_equal(n->items[0], "one");
    assert_string_equal(n->items[1], "two");
    assert_string_equal(n->items[2], "");
    n = n->next;
    assert_int_equal(n->kind, CONF_NODE_SCOPE);
    assert_string_equal(n->instance, "inst");
    assert_int_equal(n->line, 6);
    assert_string_equal(n->children->name, "T");
    assert_null(n->children->instance);
    assert_ptr_equal(n->children->parent, n);
    n = n->next;
    assert_string_equal(n->instance, "i 2");
    assert_string_equal(n->children->value, "v");
    assert_null(n->next);
    conf_node_free(root);
}


static void
parse_bad_bytes(void **state)
{
    static const char text[] = "a = 1\n\0b = 2\x01\nc = \"x\0y\"\nd = 4\n";
    struct conf_node *root = parse(text, sizeof text - 1);

    (void)state;
    assert_int_equal(test_errs.count, 3);
    assert_string_equal(test_errs.v[0].message, "unexpected NUL byte");
    assert_int_equal(test_errs.v[0].line, 2);
    assert_string_equal(test_errs.v[1].message,
                        "unexpected control character 0x01");
    assert_string_equal(test_errs.v[2].message,
                        "control character 0x00 in string");
    assert_int_equal(test_errs.v[2].line, 3);
    /* a, b and d survive; c is dropped. */
    assert_string_equal(root->children->next->name, "b");
    assert_string_equal(root->children->next->next->name, "d");
    conf_node_free(root);
}


static void
parse_limits(void **state)
{
    static char text[CONF_PARSE_TOKEN_MAX + 128];
    size_t big = CONF_PARSE_TOKEN_MAX + 10;
    struct conf_node *root;
    size_t i, len;

    (void)state;
    /* Nesting. */
    len = 0;
    for (i = 0; i < CONF_PARSE_DEPTH_MAX + 5; i++)
        len += (size_t)sprintf(text + len, "s {\n");
    for (i = 0; i < CONF_PARSE_DEPTH_MAX + 5; i++)
        len += (size_t)sprintf(text + len, "}\n");
    len += (size_t)sprintf(text + len, "after = 1\n");
    root = parse(text, len);
    assert_int_equal(test_errs.count, 1);
    assert_string_equal(test_errs.v[0].message, "scopes nested deeper "
                        "than 32");
    assert_int_equal(test_errs.v[0].line, CONF_PARSE_DEPTH_MAX + 1);
    assert_string_equal(root->children->next->name, "after");
    conf_node_free(root);
    conf_errors_fini(&test_errs);

    /* Token length. */
    len = (size_t)sprintf(text, "a = \"");
    memset(text + len, 'x', big);
    len += big;
    len += (size_t)sprintf(text + len, "\"\nc = 1\n");
    root = parse(text, len);
    assert_int_equal(test_errs.count, 1);
    assert_string_equal(test_errs.v[0].message,
                        "string longer than 65536 bytes");
    assert_string_equal(root->children->name, "c");
    conf_node_free(root);
    conf_errors_fini(&test_errs);

    memset(text, 'w', big);
    memcpy(text + big, " = 1\nc = 2\n", 11);
    root = parse(text, big + 11);
    assert_int_equal(test_errs.count, 1);
    assert_string_equal(test_errs.v[0].message,
                        "word longer than 65536 bytes");
    assert_string_equal(root->children->name, "c");
    conf_node_free(root);
}


static void
parse_recovery(void **state)
{
    static const char text[] =
        "a b c {\n"              /* 1: broken header: skip the block */
        "  x = 1\n"
        "}\n"
        "= 2\n"                  /* 4: stray '=' */
        "d = ( 1 { 2 )\n"        /* 5: '{' in a list */
        "e\n"                    /* 6: e f = ... */
        "f = 3\n"                /* 7 */
        "g = 4\n";
    struct conf_node *root = parse(text, sizeof text - 1);

    (void)state;
    assert_int_equal(test_errs.count, 4);
    assert_string_equal(test_errs.v[0].message,
                        "expected '{' after 'a \"b\"', got a word");
    assert_int_equal(test_errs.v[0].line, 1);
    assert_string_equal(test_errs.v[1].message,
                        "expected an option or scope name, got '='");
    assert_int_equal(test_errs.v[1].line, 4);
    assert_string_equal(test_errs.v[2].message, "expected a list item or "
                        "')' in the list for 'd', got '{'");
    assert_int_equal(test_errs.v[2].line, 5);
    assert_string_equal(test_errs.v[3].message,
                        "expected '{' after 'e \"f\"', got '='");
    assert_int_equal(test_errs.v[3].line, 7);
    assert_string_equal(root->children->name, "g");
    assert_null(root->children->next);
    conf_node_free(root);
}


static void
parse_empty(void **state)
{
    struct conf_node *root = parse("", 0);

    (void)state;
    assert_int_equal(test_errs.count, 0);
    assert_null(root->children);
    conf_node_free(root);
    root = parse("# only a comment", 16);
    assert_int_equal(test_errs.count, 0);
    assert_null(root->children);
    conf_node_free(root);
}


/* Two Listen scopes on one address would split its connections. */
static void
test_duplicate_listen(void **state)
{
    one_error("ESMTP_Listener {\n"
              "  Listen \"127.0.0.1:2525\" { }\n"
              "}\n"
              "ESMTP_Listener \"b\" {\n"
              "  Listen \"127.0.0.1:0\" { }\n"
              "  Listen \"127.0.0.1:0\" { }\n"
              "  Listen \"127.0.0.1:2525\" { }\n"
              "}\n", 7,
              "Listen address '127.0.0.1:2525' is already used by another "
              "Listen scope");
}


#define CASE(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int
main(void)
{
    static const struct CMUnitTest cases[] = {
        CASE(default_conf_loads),
        CASE(test_duplicate_listen),
        CASE(defaults),
        CASE(options_with_units),
        CASE(value_parsers),
        CASE(shards),
        CASE(listen_addresses),
        CASE(cidr_match),
        CASE(comments_and_case),
        CASE(relative_paths),
        CASE(error_unknown_option),
        CASE(error_unknown_scope),
        CASE(error_misplaced),
        CASE(error_bad_size_suffix),
        CASE(error_out_of_range),
        CASE(error_unterminated_string),
        CASE(error_unterminated_scope),
        CASE(error_missing_listener),
        CASE(error_duplicate_option),
        CASE(error_bad_cidr),
        CASE(error_bad_listen),
        CASE(error_hostname),
        CASE(multiple_errors),
        CASE(error_cap),
        CASE(error_unreadable),
        CASE(golden_files),
        CASE(delivery_defaults),
        CASE(delivery_options_with_units),
        CASE(delivery_out_of_range),
        CASE(gateway_forms),
        CASE(error_bad_gateway),
        CASE(error_bad_throttle),
        CASE(domain_inheritance),
        CASE(domain_many),
        CASE(binding_lookup),
        CASE(throttle_buckets),
        CASE(nameservers),
        CASE(mailer_daemon),
        CASE(error_domain_scopes),
        CASE(error_binding_scopes),
        CASE(parse_tree),
        CASE(parse_bad_bytes),
        CASE(parse_limits),
        CASE(parse_recovery),
        CASE(parse_empty),
    };

    return cmocka_run_group_tests(cases, NULL, NULL);
}
