/*
 * calloutbench - what one policy callout costs, without SMTP around it
 *
 * SYNOPSIS
 *   calloutbench SCRIPT.lua [SESSIONS] [PHASES_PER_SESSION]
 * DESCRIPTION
 *   Loads SCRIPT (as a scriptlet with one script) into a shard-style
 *   engine, then opens SESSIONS policy sessions one after another and runs
 *   the phases the script has callouts for (connect, ehlo, mailfrom,
 *   rcptto, data, set_binding) once per session, as a one-message SMTP
 *   session would; the data phases see a 1 KiB message. Prints one JSON
 *   line: callouts run, wall and CPU nanoseconds per callout, and per
 *   session (open, phases, close). Used by bench/run policy.
 * OWNERSHIP
 *   Everything is freed before exit (ASan builds check it).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "arena.h"
#include "conf.h"
#include "loop.h"
#include "policy.h"

static uint64_t
mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}


static uint64_t
cpu_ns(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) *
               1000000000u +
           ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) *
               1000u;
}


int
main(int argc, char **argv)
{
    static const enum policy_phase phases[] = {
        POLICY_CONNECT, POLICY_EHLO, POLICY_MAILFROM, POLICY_RCPTTO,
        POLICY_DATA, POLICY_SET_BINDING,
    };
    char dir[] = "/tmp/calloutbench-XXXXXX", path[256], text[1024];
    char err[4096], body[1024];
    unsigned long sessions = argc > 2 ? strtoul(argv[2], NULL, 10) : 200000;
    struct conf_errors errs = { 0 };
    struct policy_engine *pe;
    struct policy_gen *g;
    struct arena_pool pool;
    struct loop lp;
    struct conf *c;
    struct iovec iov;
    char *rcpts[1] = { "r@example.com" };
    uint64_t w0, c0, w1, c1, callouts = 0;
    unsigned long s;
    size_t i;
    FILE *f;

    if (argc < 2) {
        fprintf(stderr, "usage: calloutbench SCRIPT.lua [SESSIONS]\n");
        return 2;
    }
    if (mkdtemp(dir) == NULL)
        return 1;
    snprintf(path, sizeof path, "%s/s.lua", dir);
    snprintf(text, sizeof text, "cp '%s' '%s'", argv[1], path);
    if (system(text) != 0)
        return 1;
    snprintf(path, sizeof path, "%s/t.conf", dir);
    f = fopen(path, "w");
    fprintf(f, "ESMTP_Listener { Listen \"127.0.0.1:0\" { } }\n"
               "scriptlet \"scriptlet\" { script \"s\" { source = \"s\" } }\n");
    fclose(f);
    c = conf_load(path, &errs);
    if (c == NULL) {
        conf_errors_print(&errs, stderr);
        return 1;
    }
    g = policy_gen_build(c, err, sizeof err);
    if (g == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    policy_gen_publish(g);
    if (loop_init(&lp, 64, 256) < 0)
        return 1;
    arena_pool_init(&pool, 16384, 64);
    pe = policy_engine_create(&lp, NULL, c, 0);
    memset(body, 'x', sizeof body);
    memcpy(body, "Subject: bench\r\nFrom: a@b\r\n\r\n", 29);
    iov.iov_base = body;
    iov.iov_len = sizeof body;

    w0 = mono_ns();
    c0 = cpu_ns();
    for (s = 0; s < sessions; s++) {
        struct policy_conn pc = { .peer_ip = "192.0.2.1", .peer_port = 1,
                                  .local_ip = "127.0.0.1",
                                  .local_port = 25, .fd = -1 };
        struct policy_txn t = { .id = "id", .helo = "client.example",
                                .str = "a@b.example",
                                .sender = "a@b.example",
                                .rcpts = rcpts, .rcpt_count = 1,
                                .rcpt = rcpts[0], .body = &iov,
                                .body_count = 1,
                                .body_bytes = sizeof body };
        struct arena *a = arena_create(&pool);
        struct policy_sess *ps = policy_sess_open(pe, &pool, a, &pc);

        for (i = 0; i < sizeof phases / sizeof phases[0]; i++) {
            if (!policy_wants(ps, phases[i]))
                continue;
            if (phases[i] == POLICY_MAILFROM)
                policy_txn_begin(ps);
            if (policy_run(ps, phases[i], &t, NULL, NULL) != 0) {
                fprintf(stderr, "calloutbench: a callout yielded\n");
                return 1;
            }
            callouts++;
        }
        policy_sess_close(ps);
        arena_destroy(a);
        if ((s & 1023) == 0)
            policy_engine_tick(pe, 0);
    }
    w1 = mono_ns();
    c1 = cpu_ns();
    printf("{\"sessions\": %lu, \"callouts\": %llu, \"wall_ns_per_callout\": "
           "%.1f, \"cpu_ns_per_callout\": %.1f, \"cpu_ns_per_session\": "
           "%.1f}\n", sessions, (unsigned long long)callouts,
           callouts ? (double)(w1 - w0) / (double)callouts : 0.0,
           callouts ? (double)(c1 - c0) / (double)callouts : 0.0,
           sessions ? (double)(c1 - c0) / (double)sessions : 0.0);
    policy_engine_destroy(pe);
    policy_gen_unpublish();
    arena_pool_fini(&pool);
    loop_fini(&lp);
    conf_free(c);
    snprintf(text, sizeof text, "rm -rf '%s'", dir);
    return system(text) == 0 ? 0 : 1;
}
