/*
 * policy_test - generations and the per-shard interpreter cache, without
 *               SMTP: load-time errors, coroutine reuse and its cap,
 *               generation swap with pinned sessions, validate_dealloc,
 *               fail-closed results, the routing hook
 *
 * The SMTP-visible behaviour (each callout at its phase, yields, reload
 * through SIGHUP) is in tests/smtp/test_policy.py.
 */
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
#include "conf.h"
#include "loop.h"
#include "policy.h"
#include "policy_int.h"

struct fixture {
    char dir[64];
    struct conf *conf;
    struct loop lp;
    struct arena_pool pool;
};


static void
write_file(const char *dir, const char *name, const char *text)
{
    char path[256];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}


/* conf_with - a configuration loading the scripts named, one per line */
static struct conf *
conf_with(struct fixture *fx, const char *scriptlet_body)
{
    char text[4096], path[256];
    struct conf_errors errs = { 0 };
    struct conf *c;

    snprintf(text, sizeof text,
             "Spool_Base = \"spool\"\n"
             "ESMTP_Listener { Listen \"127.0.0.1:0\" { } }\n"
             "scriptlet \"scriptlet\" {\n%s}\n", scriptlet_body);
    write_file(fx->dir, "t.conf", text);
    snprintf(path, sizeof path, "%s/t.conf", fx->dir);
    c = conf_load(path, &errs);
    if (c == NULL)
        conf_errors_print(&errs, stderr);
    conf_errors_fini(&errs);
    assert_non_null(c);
    return c;
}


static int
setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);

    snprintf(fx->dir, sizeof fx->dir, "/tmp/policy-test-XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    assert_int_equal(loop_init(&fx->lp, 64, 256), 0);
    arena_pool_init(&fx->pool, 4096, 4);
    *state = fx;
    return 0;
}


static int
teardown(void **state)
{
    struct fixture *fx = *state;
    char cmd[128];

    policy_gen_unpublish();
    conf_free(fx->conf);
    loop_fini(&fx->lp);
    arena_pool_fini(&fx->pool);
    snprintf(cmd, sizeof cmd, "rm -rf %s", fx->dir);
    assert_int_equal(system(cmd), 0);
    free(fx);
    return 0;
}


/* build - the generation of fx->conf, or NULL with err */
static struct policy_gen *
build(struct fixture *fx, const char *body, char *err, size_t errlen)
{
    conf_free(fx->conf);
    fx->conf = conf_with(fx, body);
    return policy_gen_build(fx->conf, err, errlen);
}


static void
test_load_errors(void **state)
{
    struct fixture *fx = *state;
    char err[2048];

    /* a syntax error: file and line */
    write_file(fx->dir, "syn.lua", "local mod = {}\nfunction mod:x(\n");
    assert_null(build(fx, "script \"syn\" { source = \"syn\" }\n", err,
                      sizeof err));
    assert_non_null(strstr(err, "syn.lua:"));

    /* Momentum's words for a module without callouts, at load time */
    write_file(fx->dir, "nomethod.lua",
               "msys.registerModule(\"empty\", { helper = function() end })\n");
    assert_null(build(fx, "script \"nm\" { source = \"nomethod\" }\n", err,
                      sizeof err));
    assert_non_null(strstr(err, "no usable methods found for module empty "
                                "in registerModule call"));

    /* init must return true */
    write_file(fx->dir, "badinit.lua",
               "local m = {}\nfunction m:init() return false end\n"
               "function m:validate_connect() return 0 end\n"
               "msys.registerModule(\"bi\", m)\n");
    assert_null(build(fx, "script \"bi\" { source = \"badinit\" }\n", err,
                      sizeof err));
    assert_non_null(strstr(err, "init did not return true"));

    /* a runaway init is stopped by the budget */
    write_file(fx->dir, "loopinit.lua",
               "local m = {}\nfunction m:init() while true do end end\n"
               "function m:validate_connect() return 0 end\n"
               "msys.registerModule(\"li\", m)\n");
    assert_null(build(fx, "instruction_budget = 20000\n"
                          "script \"li\" { source = \"loopinit\" }\n", err,
                      sizeof err));
    assert_non_null(strstr(err, "instruction budget exhausted"));

    /* a missing source names the stanza, the file and the line */
    assert_null(build(fx, "script \"gone\" { source = \"no.such\" }\n", err,
                      sizeof err));
    assert_non_null(strstr(err, "t.conf:4: script 'gone': cannot find "
                                "source 'no.such'"));

    /* the sandbox: no io, no os.execute, no bytecode */
    write_file(fx->dir, "sandbox.lua",
               "assert(io == nil and os.execute == nil and debug == nil)\n"
               "assert(string.dump == nil and loadfile == nil)\n"
               "assert(loadstring('\\027LJ') == nil)\n"
               "assert(not pcall(require, 'ffi'))\n"
               "local m = {}\nfunction m:validate_connect() return 0 end\n"
               "msys.registerModule(\"sb\", m)\n");
    {
        struct policy_gen *g = build(fx, "script \"sb\" { source = "
                                         "\"sandbox\" }\n", err, sizeof err);

        if (g == NULL)
            fail_msg("sandbox script failed: %s", err);
        policy_gen_put(g);
    }
}


/* a connect callout that counts its runs in a global and answers by it */
static const char *const counting_script =
    "local m = {}\n"
    "calls = 0\n"
    "function m:validate_connect(accept, vctx)\n"
    "  calls = calls + 1\n"
    "  vctx:set_code(GEN_CODE, 'gen')\n"
    "  return msys.core.VALIDATE_CONT\n"
    "end\n"
    "function m:validate_dealloc() deallocs = (deallocs or 0) + 1 end\n"
    "msys.registerModule(\"counting\", m)\n";


static struct policy_gen *
counting_gen(struct fixture *fx, int code)
{
    char text[1024], err[1024];
    struct policy_gen *g;

    snprintf(text, sizeof text, "GEN_CODE = %d\n%s", code, counting_script);
    write_file(fx->dir, "count.lua", text);
    g = build(fx, "script \"count\" { source = \"count\" }\n", err,
              sizeof err);
    if (g == NULL)
        fail_msg("build: %s", err);
    return g;
}


static struct policy_sess *
sess_open(struct fixture *fx, struct policy_engine *pe, struct arena *a)
{
    struct policy_conn pc = { .peer_ip = "192.0.2.1", .peer_port = 1234,
                              .fd = -1 };

    return policy_sess_open(pe, &fx->pool, a, &pc);
}


static int
run_connect(struct policy_sess *ps)
{
    struct policy_txn txn = { 0 };

    assert_int_equal(policy_run(ps, POLICY_CONNECT, &txn, NULL, NULL), 0);
    return policy_result(ps)->code;
}


static void
test_cache_and_generations(void **state)
{
    struct fixture *fx = *state;
    struct policy_engine *pe;
    struct policy_sess *a, *b;
    struct arena *aa, *ab;
    struct policy_stats st;
    char err[256];

    policy_gen_publish(counting_gen(fx, 551));
    pe = policy_engine_create(&fx->lp, NULL, fx->conf, 0);
    assert_true(policy_engine_active(pe));

    aa = arena_create(&fx->pool);
    a = sess_open(fx, pe, aa);
    assert_non_null(a);
    assert_true(policy_wants(a, POLICY_CONNECT));
    assert_false(policy_wants(a, POLICY_EHLO));
    /* Each run borrows a coroutine and gives it back: one is enough. */
    assert_int_equal(run_connect(a), 551);
    assert_int_equal(run_connect(a), 551);
    assert_int_equal(run_connect(a), 551);
    assert_int_equal(pe->current->spare_count, 1);
    assert_int_equal(pe->current->borrowed, 0);
    policy_engine_stats(pe, &st);
    assert_int_equal(st.callouts, 3);
    assert_int_equal(st.masters, 1);

    /* max_spare_per_master = 0: nothing is kept */
    assert_int_equal(policy_option_set("max_spare_per_master", "0", err,
                                       sizeof err), 0);
    assert_int_equal(run_connect(a), 551);
    assert_int_equal(pe->current->spare_count, 0);
    assert_int_equal(policy_option_set("max_spare_per_master", "5000", err,
                                       sizeof err), 0);
    assert_int_not_equal(policy_option_set("gc_pause", "5", err, sizeof err),
                         0);
    assert_int_not_equal(policy_option_set("nonsense", "5", err, sizeof err),
                         0);

    /* A new generation: a's session stays on the old master, b gets the
     * new one; the old one closes when a does. */
    policy_gen_publish(counting_gen(fx, 552));
    policy_engine_tick(pe, 0);
    ab = arena_create(&fx->pool);
    b = sess_open(fx, pe, ab);
    assert_int_equal(run_connect(b), 552);
    assert_int_equal(run_connect(a), 551);
    policy_engine_stats(pe, &st);
    assert_int_equal(st.masters, 2);
    policy_sess_close(a);
    arena_destroy(aa);
    policy_engine_stats(pe, &st);
    assert_int_equal(st.masters, 1);

    /* validate_dealloc ran for b (it ran a callout) when b closes */
    policy_sess_close(b);
    arena_destroy(ab);
    {
        lua_State *L = pe->current->L;

        lua_getglobal(L, "deallocs");
        assert_int_equal(lua_tointeger(L, -1), 1);
        lua_pop(L, 1);
    }

    /* No scriptlet any more: the engine drops its state. */
    policy_gen_unpublish();
    policy_engine_tick(pe, 0);
    assert_false(policy_engine_active(pe));
    policy_engine_destroy(pe);
}


static void
test_fail_closed(void **state)
{
    struct fixture *fx = *state;
    struct policy_engine *pe;
    struct policy_sess *ps;
    struct arena *a;
    struct policy_txn txn = { .str = "client.example" };
    char err[1024];
    struct policy_gen *g;

    write_file(fx->dir, "bad.lua",
               "local m = {}\n"
               "function m:validate_connect() return 7 end\n"
               "function m:validate_ehlo(s) if s == 'loop' then "
               "while true do end end error('boom') end\n"
               "function m:validate_mailfrom() local t = {} "
               "for i = 1, 1e9 do t[i] = string.rep('x', 64) .. i end end\n"
               "msys.registerModule(\"bad\", m)\n");
    g = build(fx, "memory_limit = 2M\ninstruction_budget = 5000000\n"
                  "script \"bad\" { source = \"bad\" }\n", err, sizeof err);
    if (g == NULL)
        fail_msg("build: %s", err);
    policy_gen_publish(g);
    pe = policy_engine_create(&fx->lp, NULL, fx->conf, 1);
    a = arena_create(&fx->pool);
    ps = sess_open(fx, pe, a);

    /* a wrong return value: 421 and close at connect */
    assert_int_equal(policy_run(ps, POLICY_CONNECT, &txn, NULL, NULL), 0);
    assert_int_equal(policy_result(ps)->code, 421);
    assert_true(policy_result(ps)->disconnect);
    /* a runtime error at EHLO */
    assert_int_equal(policy_run(ps, POLICY_EHLO, &txn, NULL, NULL), 0);
    assert_int_equal(policy_result(ps)->code, 421);
    /* a runaway loop: stopped by the budget */
    txn.str = "loop";
    assert_int_equal(policy_run(ps, POLICY_EHLO, &txn, NULL, NULL), 0);
    assert_int_equal(policy_result(ps)->code, 421);
    assert_int_equal(pe->stats.budget_exhausted, 1);
    /* a memory bomb at MAIL: 451, the state is marked for replacement */
    assert_int_equal(policy_run(ps, POLICY_MAILFROM, &txn, NULL, NULL), 0);
    assert_int_equal(policy_result(ps)->code, 451);
    assert_false(policy_result(ps)->disconnect);
    assert_true(ps->m->oom);
    assert_int_equal(pe->stats.callout_errors, 4);
    policy_sess_close(ps);
    arena_destroy(a);
    /* the next session gets a fresh state */
    a = arena_create(&fx->pool);
    ps = sess_open(fx, pe, a);
    assert_false(ps->m->oom);
    policy_sess_close(ps);
    arena_destroy(a);
    policy_engine_destroy(pe);
}


/*
 * The memory limit across many caps: every one stops the callout with a
 * 451 and none crashes. With LuaJIT 2.1-20230119 an out-of-memory error
 * unwound from inside an allocation can segfault at some caps
 * (docs/lua-library.md); policy_alloc() keeps that path out of reach.
 */
static void
test_memory_limit_sweep(void **state)
{
    struct fixture *fx = *state;
    unsigned kib;

    write_file(fx->dir, "grow.lua",
               "local m = {}\n"
               "function m:validate_mailfrom(str)\n"
               "  local t = {}\n"
               "  for i = 1, 1e7 do\n"
               "    t[i] = { i, tostring(i), ('ab'):rep(i % 40) }\n"
               "    if i % 97 == 0 then\n"
               "      local s = ('a+b@x.org'):match('^([^@]+)@(.+)$')\n"
               "      local r = (('ab'):rep(50)):gsub('b', 'bb')\n"
               "    end\n"
               "  end\n"
               "  return msys.core.VALIDATE_CONT\n"
               "end\n"
               "msys.registerModule(\"grow\", m)\n");
    for (kib = 1024; kib < 1024 + 48; kib += 3) {
        struct policy_engine *pe;
        struct policy_sess *ps;
        struct policy_txn txn = { .str = "s@x" };
        struct arena *a;
        char body[256], err[512];
        struct policy_gen *g;

        snprintf(body, sizeof body, "memory_limit = %uK\n"
                 "instruction_budget = 50000000\n"
                 "script \"grow\" { source = \"grow\" }\n", kib);
        g = build(fx, body, err, sizeof err);
        if (g == NULL)
            fail_msg("build: %s", err);
        policy_gen_publish(g);
        pe = policy_engine_create(&fx->lp, NULL, fx->conf, 2);
        a = arena_create(&fx->pool);
        ps = sess_open(fx, pe, a);
        assert_int_equal(policy_run(ps, POLICY_MAILFROM, &txn, NULL, NULL),
                         0);
        assert_int_equal(policy_result(ps)->code, 451);
        policy_sess_close(ps);
        arena_destroy(a);
        policy_engine_destroy(pe);
        policy_gen_unpublish();
    }
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_load_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_and_generations, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fail_closed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_limit_sweep, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
