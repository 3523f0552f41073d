/*
 * delivery_log_test - the JSON lines on a real ring and a real file (a
 * mkdtemp directory under /tmp): exact fields, escaping of hostile text,
 * many turns, the cap and its drop count, writing a full buffer early,
 * reopen after a logrotate rename, the rest written at close, and two
 * shard threads appending to one file. Python's json module checks the
 * lines when python3 is there.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "delivery_log.h"
#include "log.h"
#include "loop.h"
#include "util.h"

struct fixture {
    char dir[64];
    char path[128];
    char panic_path[128];
    struct loop lp;
    struct delivery_log dl;
    int dl_open;
};


static void
fixture_hook(struct loop *lp, void *arg)
{
    struct fixture *f = arg;

    if (f->dl_open)
        delivery_log_flush(&f->dl);
}


static int
setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);

    snprintf(f->dir, sizeof f->dir, "/tmp/delivery_log_test.XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->path, sizeof f->path, "%s/delivery.log", f->dir);
    snprintf(f->panic_path, sizeof f->panic_path, "%s/paniclog", f->dir);
    if (log_open(f->panic_path) < 0)
        return -1;
    log_set_stderr(0);
    if (loop_init(&f->lp, 64, 256) < 0) {
        /* No io_uring here (seccomp, old kernel): every case skips. */
        f->lp.hook_count = LOOP_HOOKS_MAX;
        *state = f;
        return 0;
    }
    loop_before_wait(&f->lp, fixture_hook, f);
    *state = f;
    return 0;
}


static int
teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[160];

    if (f->dl_open)
        delivery_log_close(&f->dl);
    if (f->lp.hook_count != LOOP_HOOKS_MAX)
        loop_fini(&f->lp);
    log_close();
    log_set_stderr(1);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}


/* need_ring - skip the case when the fixture has no ring */
static void
need_ring(struct fixture *f)
{
    if (f->lp.hook_count == LOOP_HOOKS_MAX)
        skip();
}


static void
open_log(struct fixture *f, unsigned shard)
{
    need_ring(f);
    assert_int_equal(delivery_log_open(&f->dl, &f->lp, f->path, shard), 0);
    f->dl_open = 1;
}


static void
run_until_idle(struct fixture *f)
{
    int i;

    for (i = 0; i < 1000 && !delivery_log_idle(&f->dl); i++)
        loop_run_once(&f->lp, 10);
    assert_true(delivery_log_idle(&f->dl));
}


/* slurp - a whole file, NUL-terminated; *len its size */
static char *
slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    char *buf;
    long n;

    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}


static size_t
count_lines(const char *path)
{
    size_t len, i, n = 0;
    char *buf = slurp(path, &len);

    for (i = 0; i < len; i++)
        n += buf[i] == '\n';
    free(buf);
    return n;
}


static const char python_check[] =
    "import json, sys\n"
    "keys = ['ts', 'id', 'shard', 'sender', 'rcpt', 'outcome', 'code',\n"
    "        'enhanced', 'response', 'host', 'ip', 'attempt',\n"
    "        'queue_seconds']\n"
    "n = 0\n"
    "for raw in open(sys.argv[1], 'rb'):\n"
    "    assert raw.endswith(b'\\n'), raw\n"
    "    o = json.loads(raw)       # strict: refuses raw control bytes\n"
    "    assert list(o) == keys, list(o)\n"
    "    assert isinstance(o['ts'], float)\n"
    "    assert isinstance(o['queue_seconds'], float)\n"
    "    for k in ('shard', 'code', 'attempt'):\n"
    "        assert isinstance(o[k], int), k\n"
    "    for k in ('id', 'sender', 'rcpt', 'enhanced', 'response', 'host',\n"
    "              'ip'):\n"
    "        assert isinstance(o[k], str), k\n"
    "    assert o['outcome'] in ('delivered', 'deferred', 'bounced',\n"
    "                            'expired')\n"
    "    if len(sys.argv) > 3:\n"
    "        assert o['response'] == sys.argv[3], o['response']\n"
    "    n += 1\n"
    "assert n == int(sys.argv[2]), n\n";


/* python_check_lines - every line is JSON with the fields; 0 or skipped */
static void
python_check_lines(struct fixture *f, const char *path, size_t lines,
                   const char *response)
{
    char script[160], cmd[512];
    FILE *fp;

    if (system("python3 -c 'import json' >/dev/null 2>&1") != 0)
        return;
    snprintf(script, sizeof script, "%s/check.py", f->dir);
    fp = fopen(script, "w");
    assert_non_null(fp);
    fputs(python_check, fp);
    fclose(fp);
    snprintf(cmd, sizeof cmd, "python3 %s %s %zu %s%s%s", script, path,
             lines, response ? "'" : "", response ? response : "",
             response ? "'" : "");
    assert_int_equal(system(cmd), 0);
}


static const struct delivery_log_rec sample = {
    .ts_ms = 1700000000123LL,
    .id = "00000001-0000-000a",
    .sender = "alice@example.org",
    .rcpt = "bob@example.net",
    .outcome = DELIVERY_LOG_DELIVERED,
    .code = 250,
    .enhanced = "2.0.0",
    .response = "2.0.0 Ok: queued as 4Xyz",
    .host = "mx.example.net",
    .ip = "192.0.2.1",
    .attempt = 1,
    .queue_ms = 12345,
};

static const char sample_line[] =
    "{\"ts\":1700000000.123,\"id\":\"00000001-0000-000a\",\"shard\":3,"
    "\"sender\":\"alice@example.org\",\"rcpt\":\"bob@example.net\","
    "\"outcome\":\"delivered\",\"code\":250,\"enhanced\":\"2.0.0\","
    "\"response\":\"2.0.0 Ok: queued as 4Xyz\",\"host\":\"mx.example.net\","
    "\"ip\":\"192.0.2.1\",\"attempt\":1,\"queue_seconds\":12.345}\n";


static void
test_exact_line(void **state)
{
    struct fixture *f = *state;
    struct delivery_log_rec r = { 0 };
    char *buf, *second;
    size_t len;
    double ts;

    open_log(f, 3);
    delivery_log_record(&f->dl, &sample);
    /* Absent strings are "", ts 0 means now, milliseconds are padded. */
    r.outcome = DELIVERY_LOG_EXPIRED;
    r.code = 0;
    r.queue_ms = 5;
    delivery_log_record(&f->dl, &r);
    assert_int_equal(f->dl.records, 2);
    run_until_idle(f);
    assert_int_equal(f->dl.writes, 1);

    buf = slurp(f->path, &len);
    assert_memory_equal(buf, sample_line, sizeof sample_line - 1);
    second = buf + sizeof sample_line - 1;
    assert_memory_equal(second, "{\"ts\":", 6);
    ts = strtod(second + 6, NULL);
    assert_true(ts > (double)time(NULL) - 60 && ts < (double)time(NULL) + 60);
    assert_non_null(strstr(second, ",\"id\":\"\",\"shard\":3,\"sender\":\"\","
                           "\"rcpt\":\"\",\"outcome\":\"expired\",\"code\":0,"
                           "\"enhanced\":\"\",\"response\":\"\",\"host\":\"\","
                           "\"ip\":\"\",\"attempt\":0,\"queue_seconds\":0.005}"
                           "\n"));
    assert_int_equal(len, (size_t)(strchr(second, '\n') + 1 - buf));
    free(buf);
    python_check_lines(f, f->path, 2, NULL);
}


static void
test_escaping(void **state)
{
    struct fixture *f = *state;
    struct delivery_log_rec r = sample;
    static const char nasty[] =
        "q\"b\\s\r\n\tx\x01\x1f\x7f caf\xc3\xa9 \xe2\x82\xac "
        "\xf0\x9f\x98\x80 bad:\xff\xc3(\xe0\x80\xaf\xed\xa0\x80"
        "\xf4\x90\x80\x80 end\xe2\x82";
    static const char escaped[] =
        "\"response\":\"q\\\"b\\\\s\\r\\n\\tx\\u0001\\u001f\\u007f "
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 bad:\\u00ff\\u00c3("
        "\\u00e0\\u0080\\u00af\\u00ed\\u00a0\\u0080"
        "\\u00f4\\u0090\\u0080\\u0080 end\\u00e2\\u0082\",";
    static char longtext[4000];
    char *buf, *p;
    size_t len, i;

    open_log(f, 0);
    r.response = nasty;
    r.rcpt = "\"evil\"\r\n{\"x\":1}@example.net";
    delivery_log_record(&f->dl, &r);
    /* Too long, with the cap inside a two-byte character: cut before it. */
    longtext[0] = 'a';
    for (i = 0; i < 1500; i++)
        memcpy(longtext + 1 + 2 * i, "\xc3\xa9", 2);
    r = sample;
    r.response = longtext;
    delivery_log_record(&f->dl, &r);
    run_until_idle(f);

    buf = slurp(f->path, &len);
    assert_non_null(strstr(buf, escaped));
    assert_non_null(strstr(buf, "\"rcpt\":\"\\\"evil\\\"\\r\\n{\\\"x\\\":1}"
                           "@example.net\","));
    /* Two lines, no raw control byte anywhere but the line ends. */
    for (i = 0; i < len; i++) {
        if (buf[i] == '\n')
            continue;
        assert_true((unsigned char)buf[i] >= 0x20);
        assert_true(buf[i] != 0x7f);
    }
    assert_int_equal(count_lines(f->path), 2);
    p = strstr(strchr(buf, '\n'), "\"response\":\"a");
    assert_non_null(p);
    p += strlen("\"response\":\"");
    assert_int_equal(strchr(p, '"') - p, 1 + 2 * 1023);
    assert_memory_equal(p, longtext, 1 + 2 * 1023);
    free(buf);
    python_check_lines(f, f->path, 2, NULL);
}


static void
test_many_turns(void **state)
{
    struct fixture *f = *state;
    struct delivery_log_rec r = sample;
    char id[32], *buf, *p;
    struct stat st;
    size_t len;
    int turn, i, n = 0;

    open_log(f, 1);
    r.id = id;
    for (turn = 0; turn < 20; turn++) {
        for (i = 0; i < 500; i++) {
            snprintf(id, sizeof id, "m%05d", n++);
            r.outcome = (enum delivery_log_outcome)(n % 4);
            r.attempt = (unsigned)turn;
            delivery_log_record(&f->dl, &r);
        }
        /* Returns when the turn's write completes, or a write still in
           flight makes this turn's lines wait for the next one. */
        loop_run_once(&f->lp, 100);
    }
    run_until_idle(f);
    assert_int_equal(f->dl.records, 10000);
    assert_int_equal(f->dl.dropped, 0);
    assert_true(f->dl.writes >= 2);
    assert_true(f->dl.writes <= 21);
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(f->dl.bytes_written, (uint64_t)st.st_size);

    /* In order, each exactly once. */
    buf = slurp(f->path, &len);
    p = buf;
    for (i = 0; i < 10000; i++) {
        snprintf(id, sizeof id, "\"id\":\"m%05d\"", i);
        p = strstr(p, id);
        assert_non_null(p);
    }
    free(buf);
    assert_int_equal(count_lines(f->path), 10000);
    python_check_lines(f, f->path, 10000, "2.0.0 Ok: queued as 4Xyz");
}


static size_t
count_in_file(const char *path, const char *needle)
{
    size_t len, n = 0;
    char *buf = slurp(path, &len), *p = buf;

    while ((p = strstr(p, needle)) != NULL) {
        n++;
        p++;
    }
    free(buf);
    return n;
}


static void
test_cap_drops(void **state)
{
    struct fixture *f = *state;
    int i;

    open_log(f, 0);
    f->dl.buf_max = DELIVERY_LOG_BUF_MIN;
    for (i = 0; i < 100; i++)
        delivery_log_record(&f->dl, &sample);
    delivery_log_flush(&f->dl);  /* a write in flight, not completed */
    assert_non_null(f->dl.inflight);
    for (i = 0; i < 1000; i++)
        delivery_log_record(&f->dl, &sample);
    assert_true(f->dl.dropped > 0);
    assert_int_equal(f->dl.records + f->dl.dropped, 1100);
    assert_true(f->dl.fill->len <= DELIVERY_LOG_BUF_MIN);
    assert_true(f->dl.fill->cap <= DELIVERY_LOG_BUF_MIN);
    run_until_idle(f);
    assert_int_equal(count_lines(f->path), f->dl.records);
    /* One paniclog line for all the drops. */
    assert_int_equal(count_in_file(f->panic_path, "dropping records"), 1);

    /* Once the disk caught up, records go through again. */
    for (i = 0; i < 10; i++)
        delivery_log_record(&f->dl, &sample);
    run_until_idle(f);
    assert_int_equal(count_lines(f->path), f->dl.records);
    python_check_lines(f, f->path, (size_t)f->dl.records, NULL);
}


static void
test_full_buffer_written_early(void **state)
{
    struct fixture *f = *state;
    int i;

    open_log(f, 0);
    f->dl.buf_max = DELIVERY_LOG_BUF_MIN;
    /* About 1.5 buffers in one turn, no flush: one write goes early. */
    for (i = 0; i < 300; i++)
        delivery_log_record(&f->dl, &sample);
    assert_int_equal(f->dl.dropped, 0);
    assert_int_equal(f->dl.writes, 1);
    run_until_idle(f);
    assert_int_equal(f->dl.writes, 2);
    assert_int_equal(count_lines(f->path), 300);
}


static void
test_grows_to_cap(void **state)
{
    struct fixture *f = *state;
    int i;

    open_log(f, 0);
    /* A busy turn grows the buffer (default cap) instead of dropping. */
    for (i = 0; i < 2000; i++)
        delivery_log_record(&f->dl, &sample);
    assert_int_equal(f->dl.dropped, 0);
    assert_int_equal(f->dl.writes, 0);
    assert_true(f->dl.fill->cap > DELIVERY_LOG_BUF_MIN);
    assert_true(f->dl.fill->cap <= DELIVERY_LOG_BUF_MAX);
    run_until_idle(f);
    assert_int_equal(f->dl.writes, 1);
    assert_int_equal(count_lines(f->path), 2000);
}


static void
test_reopen_after_rename(void **state)
{
    struct fixture *f = *state;
    char rotated[160], moved[160];
    int i;

    open_log(f, 0);
    for (i = 0; i < 10; i++)
        delivery_log_record(&f->dl, &sample);
    run_until_idle(f);
    snprintf(rotated, sizeof rotated, "%s.1", f->path);
    assert_int_equal(rename(f->path, rotated), 0);
    /* Written before the reopen happens: goes to the old file. */
    delivery_log_record(&f->dl, &sample);
    delivery_log_flush(&f->dl);
    delivery_log_reopen(&f->dl);
    for (i = 0; i < 7; i++)
        delivery_log_record(&f->dl, &sample);
    run_until_idle(f);
    assert_int_equal(f->dl.reopens, 1);
    assert_int_equal(count_lines(rotated), 11);
    assert_int_equal(count_lines(f->path), 7);

    /* A reopen that fails keeps the old file. */
    snprintf(moved, sizeof moved, "%s.moved", f->dir);
    assert_int_equal(rename(f->dir, moved), 0);
    delivery_log_reopen(&f->dl);
    delivery_log_record(&f->dl, &sample);
    run_until_idle(f);
    assert_int_equal(rename(moved, f->dir), 0);
    assert_int_equal(f->dl.reopens, 1);
    assert_int_equal(count_lines(f->path), 8);
    python_check_lines(f, f->path, 8, NULL);
}


static void
test_close_writes_rest(void **state)
{
    struct fixture *f = *state;
    int i;

    open_log(f, 0);
    for (i = 0; i < 5; i++)
        delivery_log_record(&f->dl, &sample);
    delivery_log_close(&f->dl);
    f->dl_open = 0;
    assert_int_equal(count_lines(f->path), 5);
}


static void
test_write_error_counted(void **state)
{
    struct fixture *f = *state;
    int i, round;

    need_ring(f);
    /* /dev/full takes the open and fails every write with ENOSPC. */
    if (access("/dev/full", W_OK) != 0)
        skip();
    assert_int_equal(delivery_log_open(&f->dl, &f->lp, "/dev/full", 0), 0);
    f->dl_open = 1;
    for (round = 1; round <= 2; round++) {
        for (i = 0; i < 5; i++)
            delivery_log_record(&f->dl, &sample);
        run_until_idle(f);
        assert_int_equal(f->dl.write_errors, round);
        assert_int_equal(f->dl.lost, 5 * round);
    }
    /* Logged once for the same errno. */
    assert_int_equal(count_in_file(f->panic_path, "records lost"), 1);
    assert_int_equal(count_in_file(f->panic_path, "No space left"), 1);
}


static void
test_open_fails(void **state)
{
    struct fixture *f = *state;
    struct delivery_log dl;

    need_ring(f);
    assert_int_equal(delivery_log_open(&dl, &f->lp,
                                       "/nonexistent/dir/delivery.log", 0),
                     -ENOENT);
    assert_string_equal(delivery_log_outcome_name(DELIVERY_LOG_DELIVERED),
                        "delivered");
    assert_string_equal(delivery_log_outcome_name(DELIVERY_LOG_DEFERRED),
                        "deferred");
    assert_string_equal(delivery_log_outcome_name(DELIVERY_LOG_BOUNCED),
                        "bounced");
    assert_string_equal(delivery_log_outcome_name(DELIVERY_LOG_EXPIRED),
                        "expired");
}


/* Two shards, each its own thread, ring and log, one file. */
#define SHARD_TURNS 200
#define SHARD_PER_TURN 100

struct shard_arg {
    const char *path;
    unsigned id;
    int rc;
};


static void
shard_hook(struct loop *lp, void *arg)
{
    delivery_log_flush(arg);
}


static void *
shard_main(void *arg)
{
    struct shard_arg *sa = arg;
    struct delivery_log_rec r = sample;
    struct delivery_log dl;
    struct loop lp;
    char resp[600];
    int turn, i;

    sa->rc = loop_init(&lp, 64, 256);
    if (sa->rc < 0)
        return NULL;
    sa->rc = delivery_log_open(&dl, &lp, sa->path, sa->id);
    if (sa->rc < 0) {
        loop_fini(&lp);
        return NULL;
    }
    loop_before_wait(&lp, shard_hook, &dl);
    /* Long lines make long writes, the case that could interleave. */
    memset(resp, 'a' + (int)sa->id, sizeof resp - 1);
    resp[sizeof resp - 1] = '\0';
    r.response = resp;
    for (turn = 0; turn < SHARD_TURNS; turn++) {
        for (i = 0; i < SHARD_PER_TURN; i++)
            delivery_log_record(&dl, &r);
        loop_run_once(&lp, 0);
    }
    for (i = 0; i < 1000 && !delivery_log_idle(&dl); i++)
        loop_run_once(&lp, 10);
    if (dl.dropped != 0 || !delivery_log_idle(&dl))
        sa->rc = -EIO;
    delivery_log_close(&dl);
    loop_fini(&lp);
    return NULL;
}


static void
test_shards_share_file(void **state)
{
    struct fixture *f = *state;
    struct shard_arg sa[2] = {
        { .path = f->path, .id = 0 },
        { .path = f->path, .id = 1 },
    };
    pthread_t th[2];
    char *buf, *line, *nl, want[700];
    size_t len, per_shard[2] = { 0, 0 };
    unsigned i;

    need_ring(f);
    for (i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, shard_main, &sa[i]),
                         0);
    for (i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(sa[i].rc, 0);
    }
    /* Every line whole: its shard's response and nothing else. */
    buf = slurp(f->path, &len);
    for (line = buf; line < buf + len; line = nl + 1) {
        unsigned shard;

        nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = '\0';             /* sscanf would strlen the whole file */
        assert_int_equal(sscanf(line, "{\"ts\":%*f,\"id\":\"%*[^\"]\","
                                "\"shard\":%u", &shard), 1);
        assert_true(shard < 2);
        per_shard[shard]++;
        memset(want, 'a' + (int)shard, 599);
        want[599] = '\0';
        assert_non_null(memmem(line, (size_t)(nl - line), want, 599));
        assert_int_equal(nl - line, sizeof sample_line - 1 - 1 -
                         strlen(sample.response) + 599);
    }
    free(buf);
    assert_int_equal(per_shard[0], SHARD_TURNS * SHARD_PER_TURN);
    assert_int_equal(per_shard[1], SHARD_TURNS * SHARD_PER_TURN);
    python_check_lines(f, f->path, 2 * SHARD_TURNS * SHARD_PER_TURN, NULL);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exact_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escaping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_turns, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cap_drops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_buffer_written_early,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_grows_to_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_after_rename, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_close_writes_rest, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_write_error_counted, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_open_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shards_share_file, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
