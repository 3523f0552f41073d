/*
 * policy - per-shard interpreter caches and the callout runner (policy.h)
 *
 * DESCRIPTION
 *   Masters. policy_master_build() makes a lua_State with a counting
 *   allocator (refuses past memory_limit and marks the master for
 *   replacement), the JIT off unless configured, gc_pause/gc_stepmul, a
 *   count hook for the instruction budget, the sandboxed msys API; then
 *   it runs every script, collects the registered modules and runs their
 *   init(). The main thread builds one to check a generation; each shard
 *   builds its own.
 *
 *   Coroutines. A callout runs in a coroutine borrowed from the master's
 *   spare stack (or a new one); one that returns normally goes back, one
 *   that raised or was killed is dropped. The stack holds at most
 *   max_spare_per_master; every reap_interval it is trimmed to the most
 *   that were borrowed at once since the last reap.
 *
 *   The budget. The count hook fires every POLICY_HOOK_COUNT instructions
 *   and charges the running callout. When its budget is spent the hook
 *   yields the callout's coroutine out of whatever it is doing, pcall
 *   included, and the runner drops it; in a place a yield cannot cross (a
 *   C boundary such as a table.sort comparator, a script's own
 *   coroutine) it raises an error instead and fires on every instruction
 *   from then on, so the next instruction back in the callout's own
 *   coroutine yields it out. The JIT is off by default because count
 *   hooks do not fire in compiled traces (PLATFORM.md pitfall 10); with
 *   `jit = true` a runaway loop that gets compiled is not stopped.
 * OWNERSHIP
 *   Masters belong to their engine (malloc); a run lives in its session's
 *   struct policy_sess; coroutines are anchored in the master's registry.
 * THREADS
 *   Shard-local, except policy_master_build() for the check state, which
 *   the main thread runs on a master of its own.
 */
#include <ck_epoch.h>
#include <ck_pr.h>
#include <errno.h>
#include <luajit.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "policy_int.h"
#include "util.h"

enum outcome {
    OUT_NEXT,                    /* run the module at r->mod or after */
    OUT_CONT,
    OUT_DONE,
    OUT_AGAIN,
    OUT_STOP,                    /* a result is set: end the phase */
    OUT_PENDING,                 /* yielded: a completion will wake it */
};

__thread struct policy_run *policy_cur;
static __thread long policy_pcall_budget;

static const char *const phase_names[POLICY_PHASE_COUNT] = {
    [POLICY_CONNECT] = "validate_connect",
    [POLICY_EHLO] = "validate_ehlo",
    [POLICY_MAILFROM] = "validate_mailfrom",
    [POLICY_RCPTTO] = "validate_rcptto",
    [POLICY_RCPTTO_LIST] = "validate_rcptto_list",
    [POLICY_RCPTTO_LIST_FINAL] = "validate_rcptto_list_final",
    [POLICY_DATA] = "validate_data",
    [POLICY_DATA_SPOOL] = "validate_data_spool",
    [POLICY_DATA_SPOOL_EACH_RCPT] = "validate_data_spool_each_rcpt",
    [POLICY_SET_BINDING] = "validate_set_binding",
    [POLICY_HOOK_ROUTING] = "core_config_get_message_routing_domain",
};


const char *
policy_phase_name(enum policy_phase ph)
{
    ASSERT(ph < POLICY_PHASE_COUNT);
    return phase_names[ph];
}


void
policy_paniclog(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_panic("scriptlet", "%s", buf);
}


static uint64_t
mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}


/* --- the state: allocator and budget hook ------------------------------- */

static void policy_hook(lua_State *L, lua_Debug *ar);

/*
 * policy_alloc - the state's allocator, and how the memory limit holds.
 *
 * LuaJIT 2.1-20230119 can crash while unwinding an out-of-memory error
 * raised inside an allocation (docs/lua-library.md has a pure-Lua case,
 * reproduced with the JIT off). So reaching memory_limit does not fail
 * the allocation: it marks the state and makes the count hook fire at the
 * next instruction, and the hook (a safe place) collects garbage once and,
 * if the state is still over, stops the callout like an exhausted budget:
 * a yield out of the coroutine, no error unwinding at all. Only a state
 * that grows past the hard limit (half as much again, e.g. one giant
 * string.rep between two instructions) gets NULL and the error path.
 */
static void *
policy_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct policy_master *m = ud;
    void *p;

    if (nsize == 0) {
        free(ptr);
        m->bytes -= osize;
        return NULL;
    }
    if (nsize > osize) {
        size_t after = m->bytes + (nsize - osize);
        size_t hard = m->limit + m->limit / 2 +
                      (m->in_c ? POLICY_C_SLACK : 0);

        if (after > hard) {
            m->oom = 1;
            return NULL;
        }
        if (after > m->limit && !m->over && !m->in_c && m->L != NULL) {
            m->over = 1;
            lua_sethook(m->L, policy_hook, LUA_MASKCOUNT, 1);
        }
    }
    p = realloc(ptr, nsize);
    if (p == NULL) {
        m->oom = 1;
        return NULL;
    }
    m->bytes = m->bytes - osize + nsize;
    return p;
}


/*
 * policy_panic - an error outside any protected call. The runner keeps
 * its own Lua calls (borrowing a coroutine, pushing arguments) inside
 * POLICY_C_SLACK, so this is a broken invariant: say so and abort rather
 * than let LuaJIT exit(1) without a word.
 */
static int
policy_panic(lua_State *L)
{
    const char *e = lua_tostring(L, -1);

    panic("scriptlet: Lua error outside a protected call: %s",
          e != NULL ? e : "(not a string)");
    return 0;
}


/* hook_memory - the state went over memory_limit: 0 if a collection
 * brought it back under, -1 if the running code must stop */
static int
hook_memory(lua_State *L, struct policy_master *m)
{
    lua_gc(L, LUA_GCCOLLECT, 0);
    if (m->bytes <= m->limit - m->limit / 8) {
        m->over = 0;
        lua_sethook(L, policy_hook, LUA_MASKCOUNT, POLICY_HOOK_COUNT);
        return 0;
    }
    m->oom = 1;                  /* replaced once its sessions are done */
    return -1;
}


static void
policy_hook(lua_State *L, lua_Debug *ar)
{
    struct policy_run *r = policy_cur;
    long *left = r != NULL ? &r->budget_left : &policy_pcall_budget;
    struct policy_master *m;
    void *ud;

    lua_getallocf(L, &ud);
    m = ud;
    if (m->over && !m->oom && hook_memory(L, m) == 0)
        return;
    if (m->oom) {
        lua_sethook(L, policy_hook, LUA_MASKCOUNT, 1);
        if (r != NULL && L == r->co) {
            r->killed = 1;
            r->killed_mem = 1;
            lua_yield(L, 0);
            return;
        }
        luaL_error(L, "memory limit reached");
        return;
    }
    *left -= POLICY_HOOK_COUNT;
    if (*left > 0)
        return;
    /* From now on, check at every instruction: see the contract. */
    lua_sethook(L, policy_hook, LUA_MASKCOUNT, 1);
    if (r != NULL && L == r->co) {
        r->killed = 1;
        lua_yield(L, 0);
        return;
    }
    luaL_error(L, "instruction budget exhausted");
}


void
policy_hook_reset(lua_State *L)
{
    lua_sethook(L, policy_hook, LUA_MASKCOUNT, POLICY_HOOK_COUNT);
}


/* policy_pcall - run the function and nargs below it, protected, with the
 * instruction budget (init, deinit, dealloc, timers, CheckFile); on error
 * *err is the message, left on the stack for the caller to pop */
int
policy_pcall(struct policy_master *m, int nargs, int nres, const char **err)
{
    lua_State *L = m->L;
    int rc;

    policy_pcall_budget = (long)m->opts->instruction_budget;
    rc = lua_pcall(L, nargs, nres, 0);
    policy_hook_reset(L);
    if (rc != 0) {
        *err = lua_tostring(L, -1);
        if (*err == NULL)
            *err = "(error object is not a string)";
    }
    return rc;
}


/* --- masters ------------------------------------------------------------ */

static void
errf(char *err, size_t errlen, const char *fmt, ...)
{
    size_t n = strlen(err);
    va_list ap;

    if (n + 2 >= errlen)
        return;
    if (n > 0)
        err[n++] = '\n';
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - n, fmt, ap);
    va_end(ap);
}


/*
 * module_call - run mod:name() protected; 1 when it returned true, 0 when
 * it returned something else, -1 on error (err set).
 */
static int
module_call(struct policy_master *m, struct policy_module *mod,
            const char *name, const char **err)
{
    lua_State *L = m->L;
    int ok;

    m->in_c = 1;
    lua_rawgeti(L, LUA_REGISTRYINDEX, mod->ref);
    lua_pushstring(L, name);     /* raw: no script metamethod runs here */
    lua_rawget(L, -2);
    lua_insert(L, -2);
    m->in_c = 0;
    if (policy_pcall(m, 1, 1, err) != 0) {
        lua_pop(L, 1);
        return -1;
    }
    ok = lua_toboolean(L, -1) && lua_type(L, -1) == LUA_TBOOLEAN;
    lua_pop(L, 1);
    return ok;
}


struct policy_master *
policy_master_build(struct policy_gen *g, struct policy_engine *pe,
                    char *err, size_t errlen)
{
    struct policy_master *m = xcalloc(1, sizeof *m);
    /* The check state runs with the new generation's options, shards
     * with the live ones (config set may change them). */
    const struct policy_opts *o = pe != NULL ? &policy_opts_live : &g->opts;
    size_t i;
    int failed = 0;

    err[0] = '\0';
    m->pe = pe;
    m->gen = g;
    m->opts = o;
    m->limit = (size_t)o->memory_limit;
    m->created_ms = mono_ms();
    ck_pr_inc_int(&g->refs);
    m->L = lua_newstate(policy_alloc, m);
    if (m->L == NULL) {
        errf(err, errlen, "scriptlet: cannot create a Lua state");
        ck_pr_dec_int(&g->refs);
        free(m);
        return NULL;
    }
    lua_atpanic(m->L, policy_panic);
    if (!o->jit)
        luaJIT_setmode(m->L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    lua_gc(m->L, LUA_GCSETPAUSE, (int)o->gc_pause);
    lua_gc(m->L, LUA_GCSETSTEPMUL, (int)o->gc_stepmul);
    policy_hook_reset(m->L);
    policy_api_open(m->L, m);

    for (i = 0; i < g->script_count && !failed; i++) {
        const struct policy_src *s = &g->scripts[i];
        char chunk[4200];
        const char *e;

        snprintf(chunk, sizeof chunk, "@%s", s->path);
        if (luaL_loadbuffer(m->L, s->text, s->len, chunk) != 0) {
            errf(err, errlen, "%s", lua_tostring(m->L, -1));
            lua_pop(m->L, 1);
            failed = 1;
        } else if (policy_pcall(m, 0, 0, &e) != 0) {
            errf(err, errlen, "%s", e);
            lua_pop(m->L, 1);
            failed = 1;
        }
    }
    if (!failed && policy_api_modules(m->L, m, err, errlen) < 0)
        failed = 1;
    for (i = 0; i < m->mod_count && !failed; i++) {
        struct policy_module *mod = &m->mods[i];
        const char *e = NULL;
        int rc;

        if (!(mod->methods & POLICY_M_INIT))
            continue;
        rc = module_call(m, mod, "init", &e);
        if (rc <= 0) {
            errf(err, errlen, "scriptlet: module %s: init %s: %s",
                 mod->name, rc < 0 ? "error" : "did not return true",
                 rc < 0 ? e : "the configuration is not applied");
            if (rc < 0)
                lua_pop(m->L, 1);
            /* Modules whose init ran get their deinit; this one not. */
            mod->methods &= ~POLICY_M_DEINIT;
            for (size_t k = i; k < m->mod_count; k++)
                m->mods[k].methods &= ~POLICY_M_DEINIT;
            failed = 1;
        }
    }
    if (failed) {
        policy_master_close(m);
        return NULL;
    }
    lua_settop(m->L, 0);
    return m;
}


void
policy_master_close(struct policy_master *m)
{
    unsigned i;

    if (m == NULL)
        return;
    ASSERT(m->users == 0);
    for (i = 0; i < m->mod_count; i++) {
        const char *e;

        if ((m->mods[i].methods & POLICY_M_DEINIT) &&
            module_call(m, &m->mods[i], "deinit", &e) < 0) {
            policy_paniclog("%s: deinit error: %s", m->mods[i].name, e);
            lua_pop(m->L, 1);
        }
    }
    policy_timers_close(m);
    lua_close(m->L);
    for (i = 0; i < m->mod_count; i++)
        free(m->mods[i].name);
    free(m->mods);
    free(m->spare);
    policy_gen_put(m->gen);
    free(m);
}


/* --- coroutines --------------------------------------------------------- */

static lua_State *
co_borrow(struct policy_master *m, int *ref)
{
    lua_State *co;

    if (m->spare_count > 0) {
        *ref = m->spare[--m->spare_count];
        lua_rawgeti(m->L, LUA_REGISTRYINDEX, *ref);
        co = lua_tothread(m->L, -1);
        lua_pop(m->L, 1);
    } else {
        co = lua_newthread(m->L);
        lua_getfield(m->L, LUA_REGISTRYINDEX, RUNNERS_KEY);
        lua_pushvalue(m->L, -2);
        lua_pushboolean(m->L, 1);
        lua_rawset(m->L, -3);
        lua_pop(m->L, 1);
        *ref = luaL_ref(m->L, LUA_REGISTRYINDEX);
    }
    m->borrowed++;
    if (m->borrowed > m->hi_water)
        m->hi_water = m->borrowed;
    return co;
}


/* co_return - a coroutine that finished cleanly goes back to the stack */
static void
co_return(struct policy_master *m, lua_State *co, int ref)
{
    ASSERT(m->borrowed > 0);
    m->borrowed--;
    lua_settop(co, 0);
    if (m->spare_count >= policy_opts_live.max_spare || m->oom) {
        luaL_unref(m->L, LUA_REGISTRYINDEX, ref);
        return;
    }
    if (m->spare_count == m->spare_cap) {
        m->spare_cap = m->spare_cap ? m->spare_cap * 2 : 16;
        m->spare = xrealloc(m->spare, m->spare_cap * sizeof *m->spare);
    }
    m->spare[m->spare_count++] = ref;
}


/* co_drop - a coroutine that raised or was killed is never reused */
static void
co_drop(struct policy_master *m, int ref)
{
    ASSERT(m->borrowed > 0);
    m->borrowed--;
    luaL_unref(m->L, LUA_REGISTRYINDEX, ref);
}


static void
spares_trim(struct policy_master *m, unsigned keep)
{
    while (m->spare_count > keep)
        luaL_unref(m->L, LUA_REGISTRYINDEX, m->spare[--m->spare_count]);
}


/* --- running a phase ---------------------------------------------------- */

static void run_advance(struct policy_run *r, enum outcome o);


/* run_fail - fail closed: the phase's 4xx, and the paniclog says why */
static void
run_fail(struct policy_run *r, const char *why)
{
    struct policy_sess *ps = r->ps;
    struct policy_master *m = ps->m;
    int early = r->phase == POLICY_CONNECT || r->phase == POLICY_EHLO;

    policy_paniclog("%s: %s error: %s", m->mods[r->mod].name,
                    phase_names[r->phase], why);
    if (ps->pe != NULL)
        ps->pe->stats.callout_errors++;
    ps->result.code = early ? 421 : 451;
    snprintf(ps->result.text, sizeof ps->result.text,
             "%d 4.3.0 Temporary policy failure, try again later",
             ps->result.code);
    ps->result.disconnect = early;
    ps->result.discard = 0;
}


static enum outcome callout_outcome(struct policy_run *r, int rc);


/*
 * policy_wait_prepare - an msys function that waits calls this, then
 * `return lua_yield(L, 0)`. The wait starts only once the yield really
 * happened (callout_outcome): inside a C boundary (a gsub callback, a
 * sort comparator) lua_yield raises instead, and a wait already started
 * would complete into a run that has moved on, or a freed session.
 */
void
policy_wait_prepare(struct policy_run *r, int kind, policy_wait_fn *start,
                    policy_wait_fn *drop, void *arg)
{
    if (r->wait_start != NULL && r->wait_drop != NULL)
        r->wait_drop(r, r->wait_arg);    /* an earlier one never started */
    r->wait_start = start;
    r->wait_drop = drop;
    r->wait_arg = arg;
    r->wait_kind = kind;
}


/* wait_forget - the callout ended without the prepared wait: drop it */
static void
wait_forget(struct policy_run *r)
{
    if (r->wait_start != NULL && r->wait_drop != NULL)
        r->wait_drop(r, r->wait_arg);
    r->wait_start = NULL;
    r->wait_drop = NULL;
    r->wait_arg = NULL;
}


static enum outcome
callout_resume(struct policy_run *r, int nargs)
{
    struct policy_sess *ps = r->ps;
    struct policy_master *m = ps->m;
    struct policy_run *prev = policy_cur;
    lua_State *co = r->co;
    int rc;

    policy_cur = r;
    m->in_c = 0;
    rc = lua_resume(co, nargs);
    m->in_c = 1;                 /* until we are out of this function */
    policy_cur = prev;
    rc = callout_outcome(r, rc);
    m->in_c = 0;
    return rc;
}


/* callout_outcome - what a resume that returned rc means for the phase */
static enum outcome
callout_outcome(struct policy_run *r, int rc)
{
    struct policy_sess *ps = r->ps;
    struct policy_master *m = ps->m;
    lua_State *co = r->co;
    int ret;

    if (r->killed) {
        wait_forget(r);
        policy_hook_reset(m->L);
        co_drop(m, r->co_ref);
        ps->pe->stats.budget_exhausted++;
        if (r->killed_mem) {
            run_fail(r, "memory limit reached (the state is replaced)");
        } else {
            run_fail(r, "instruction budget exhausted");
        }
        return OUT_STOP;
    }
    if (rc == LUA_YIELD) {
        if (r->wait_start != NULL) {
            policy_wait_fn *start = r->wait_start;
            void *arg = r->wait_arg;

            r->wait_start = NULL;
            r->wait_drop = NULL;
            r->wait_arg = NULL;
            r->waiting = r->wait_kind;
            ps->pe->stats.yields++;
            start(r, arg);
            return OUT_PENDING;
        }
        co_drop(m, r->co_ref);
        run_fail(r, "the callout yielded outside an msys call");
        return OUT_STOP;
    }
    wait_forget(r);
    if (rc != 0) {
        char why[512];
        const char *e = lua_tostring(co, -1);

        if (m->oom)              /* replaced by a fresh state */
            ps->pe->stats.budget_exhausted++;
        snprintf(why, sizeof why, "%s%s", e != NULL ? e : "(null)",
                 m->oom ? " (memory limit reached: the state is replaced)"
                        : "");
        co_drop(m, r->co_ref);
        run_fail(r, why);
        return OUT_STOP;
    }
    ret = -1;
    if (r->phase == POLICY_HOOK_ROUTING) {
        ret = POLICY_VALIDATE_CONT;      /* a hook returns #buff: any */
    } else if (lua_gettop(co) >= 1 && lua_type(co, 1) == LUA_TNUMBER) {
        lua_Number v = lua_tonumber(co, 1);

        if (v == 0 || v == 1 || (v == 2 && r->phase != POLICY_SET_BINDING))
            ret = (int)v;
    }
    co_return(m, co, r->co_ref);
    if (ret < 0) {
        run_fail(r, "(null): the callout must return msys.core.VALIDATE_"
                    "CONT, VALIDATE_DONE or VALIDATE_AGAIN");
        return OUT_STOP;
    }
    if (ps->result.code >= 400 || ps->result.disconnect)
        return OUT_STOP;         /* vctx:set_code / disconnect decide */
    return ret == POLICY_VALIDATE_CONT ? OUT_CONT :
           ret == POLICY_VALIDATE_DONE ? OUT_DONE : OUT_AGAIN;
}


static struct policy_master *engine_current(struct policy_engine *pe);
static void engine_release(struct policy_engine *pe, struct policy_master *m);


static enum outcome
callout_start(struct policy_run *r)
{
    struct policy_sess *ps = r->ps;
    struct policy_master *m = ps->m;
    struct policy_module *mod = &m->mods[r->mod];
    lua_State *co;

    /* A session whose state hit the memory limit moves to a fresh one
     * between callouts (its contexts live in C, not in the state). */
    if (m->oom && ps->pe != NULL) {
        struct policy_master *fresh = engine_current(ps->pe);

        /* Same generation: the same modules at the same indices. */
        if (fresh != NULL && fresh != m && fresh->gen == m->gen) {
            fresh->users++;
            engine_release(ps->pe, m);
            ps->m = m = fresh;
            mod = &m->mods[r->mod];
        }
    }
    if (m->oom) {
        run_fail(r, "the Lua state is at its memory limit");
        return OUT_STOP;
    }
    m->in_c = 1;
    co = co_borrow(m, &r->co_ref);
    r->co = co;
    r->killed = 0;
    r->killed_mem = 0;
    r->waiting = POLICY_WAIT_NONE;
    r->budget_left = (long)policy_opts_live.instruction_budget;
    if (r->mod < 32)
        ps->invoked |= 1u << r->mod;
    ps->pe->stats.callouts++;
    lua_rawgeti(co, LUA_REGISTRYINDEX, mod->ref);
    lua_pushstring(co, phase_names[r->phase]);
    lua_rawget(co, -2);          /* raw: no script metamethod runs here */
    lua_insert(co, -2);                          /* fn, self */
    policy_push_callout_args(co, r);
    m->in_c = 0;
    return callout_resume(r, lua_gettop(co) - 1);
}


static void
run_finish(struct policy_run *r)
{
    r->active = 0;
    if (r->async) {
        r->async = 0;
        r->done(r->ps, r->done_arg);
    }
}


static void
run_advance(struct policy_run *r, enum outcome o)
{
    for (;;) {
        /* Re-read each time: callout_start() may move the session to a
         * fresh master (and close the old one). */
        struct policy_master *m = r->ps->m;

        switch (o) {
        case OUT_PENDING:
            return;
        case OUT_AGAIN:
            policy_run_timer(r, policy_opts_live.again_delay_ms,
                             POLICY_WAIT_AGAIN);
            return;
        case OUT_CONT:
            r->mod++;
            break;
        case OUT_DONE:
        case OUT_STOP:
            r->mod = m->mod_count;
            break;
        case OUT_NEXT:
            break;
        }
        while (r->mod < m->mod_count &&
               !(m->mods[r->mod].methods & (1u << r->phase)))
            r->mod++;
        if (r->mod >= m->mod_count || r->cancelled) {
            run_finish(r);
            return;
        }
        o = callout_start(r);
    }
}


/* policy_run_wake - a yielded callout's operation completed: nres values
 * are on r->co's stack */
void
policy_run_wake(struct policy_run *r, int nres)
{
    struct policy_master *m = r->ps->m;

    ASSERT(r->active);
    r->waiting = POLICY_WAIT_NONE;
    if (r->cancelled) {
        co_drop(m, r->co_ref);
        r->ps->result.code = 421;
        snprintf(r->ps->result.text, sizeof r->ps->result.text,
                 "421 4.3.2 Session closed");
        r->ps->result.disconnect = 1;
        run_finish(r);
        return;
    }
    run_advance(r, callout_resume(r, nres));
}


static void
timer_done(struct op *op, int res, uint32_t flags)
{
    struct policy_run *r = container_of(op, struct policy_run, timer_op);
    int kind = r->waiting;

    r->timer_armed = 0;
    r->cancel_busy = 0;
    if (kind == POLICY_WAIT_AGAIN) {
        r->waiting = POLICY_WAIT_NONE;
        if (r->cancelled) {
            r->ps->result.code = 421;
            snprintf(r->ps->result.text, sizeof r->ps->result.text,
                     "421 4.3.2 Session closed");
            r->ps->result.disconnect = 1;
            run_finish(r);
        } else {
            run_advance(r, OUT_NEXT);
        }
    } else {
        policy_run_wake(r, 0);
    }
}


/* The timeout-remove of policy_cancel(): its own allocation, because the
 * session (and the run in it) may be freed before this CQE is reaped. */
struct policy_cancel_op {
    struct op op;
};


static void
cancel_done(struct op *op, int res, uint32_t flags)
{
    free(container_of(op, struct policy_cancel_op, op));
}


void
policy_run_timer(struct policy_run *r, uint64_t ms, int kind)
{
    struct io_uring_sqe *sqe;

    r->waiting = kind;
    r->ts.tv_sec = (long long)(ms / 1000);
    r->ts.tv_nsec = (long long)(ms % 1000) * 1000000;
    r->timer_op.done = timer_done;
    sqe = loop_sqe(r->ps->pe->lp, &r->timer_op);
    io_uring_prep_timeout(sqe, &r->ts, 0, 0);
    r->timer_armed = 1;
}


int
policy_run(struct policy_sess *ps, enum policy_phase ph,
           const struct policy_txn *txn, policy_done_fn *done, void *arg)
{
    struct policy_run *r = &ps->run;

    ASSERT(!r->active);
    ASSERT(ph < POLICY_PHASE_COUNT);
    memset(&ps->result, 0, sizeof ps->result);
    r->ps = ps;
    r->phase = ph;
    r->mod = 0;
    r->txn = txn;
    r->serial++;
    r->active = 1;
    r->async = 0;
    r->cancelled = 0;
    r->done = done;
    r->done_arg = arg;
    run_advance(r, OUT_NEXT);
    if (r->active) {
        r->async = 1;
        return 1;
    }
    return 0;
}


int
policy_wants(const struct policy_sess *ps, enum policy_phase ph)
{
    return ps != NULL && (ps->m->methods & (1u << ph)) != 0;
}


const struct policy_result *
policy_result(const struct policy_sess *ps)
{
    return &ps->result;
}


int
policy_busy(const struct policy_sess *ps)
{
    return ps != NULL && ps->run.active;
}


/* policy_cancel - the session is closing: cut a wait short */
void
policy_cancel(struct policy_sess *ps)
{
    struct policy_run *r;
    struct io_uring_sqe *sqe;

    if (ps == NULL || !ps->run.active)
        return;
    r = &ps->run;
    r->cancelled = 1;
    if (r->timer_armed && !r->cancel_busy) {
        struct policy_cancel_op *c = xcalloc(1, sizeof *c);

        c->op.done = cancel_done;
        sqe = loop_sqe(ps->pe->lp, &c->op);
        io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)&r->timer_op,
                                     0);
        r->cancel_busy = 1;      /* once per wait: the timer ends it */
    }
}


/* --- sessions ----------------------------------------------------------- */


struct policy_sess *
policy_sess_open(struct policy_engine *pe, struct arena_pool *pool,
                 struct arena *session_arena, const struct policy_conn *conn)
{
    struct policy_master *m;
    struct policy_sess *ps;

    if (pe == NULL || (m = engine_current(pe)) == NULL)
        return NULL;
    ps = arena_zalloc(session_arena, sizeof *ps);
    ps->pe = pe;
    ps->m = m;
    ps->pool = pool;
    ps->arena = session_arena;
    ps->conn = *conn;
    ps->conn_id = ++pe->next_conn_id;
    m->users++;
    return ps;
}


void
policy_txn_begin(struct policy_sess *ps)
{
    if (ps == NULL)
        return;
    ps->ctx[POLICY_CTX_VMESS] = NULL;
    ps->ctx[POLICY_CTX_MMESS] = NULL;
    ps->ctx_bytes[POLICY_CTX_VMESS] = 0;
    ps->ctx_bytes[POLICY_CTX_MMESS] = 0;
    policy_msg_reset(ps);
    if (ps->mess != NULL)
        arena_reset(ps->mess);
}


void
policy_sess_close(struct policy_sess *ps)
{
    struct policy_master *m;
    unsigned i;

    if (ps == NULL)
        return;
    ASSERT(!ps->run.active);
    m = ps->m;
    /* validate_dealloc: only for modules that ran for this session. */
    for (i = 0; i < m->mod_count && i < 32; i++) {
        const char *e;

        if (!(m->mods[i].methods & POLICY_M_DEALLOC) ||
            !(ps->invoked & (1u << i)))
            continue;
        if (module_call(m, &m->mods[i], "validate_dealloc", &e) < 0) {
            policy_paniclog("%s: validate_dealloc error: %s",
                            m->mods[i].name, e);
            lua_pop(m->L, 1);
        }
    }
    if (ps->mess != NULL)
        arena_destroy(ps->mess);
    ps->mess = NULL;
    engine_release(ps->pe, m);
}


/* --- the engine --------------------------------------------------------- */

extern struct policy_gen *policy_gen_current;
extern ck_epoch_t policy_epoch;
static ck_epoch_record_t policy_records[256];
static int policy_record_used[256];


struct policy_engine *
policy_engine_create(struct loop *lp, struct dns *dns, const struct conf *c,
                     unsigned shard_id)
{
    struct policy_engine *pe = xcalloc(1, sizeof *pe);

    pe->lp = lp;
    pe->dns = dns;
    pe->conf = c;
    pe->shard_id = shard_id;
    ASSERT(shard_id < ARRAY_SIZE(policy_records));
    /* Records are never freed (ck_epoch keeps them listed): one per
     * shard id for the whole process, registered the first time. */
    if (!policy_record_used[shard_id]) {
        ck_epoch_register(&policy_epoch, &policy_records[shard_id], NULL);
        policy_record_used[shard_id] = 1;
    }
    policy_engine_tick(pe, mono_ms());
    return pe;
}


/* policy_engine_set_datasources - what msys.db and msys.redis reach */
void
policy_engine_set_datasources(struct policy_engine *pe,
                              struct datasources *ds)
{
    if (pe != NULL)
        pe->ds = ds;
}


int
policy_engine_active(const struct policy_engine *pe)
{
    return pe != NULL && pe->current != NULL;
}


static void
master_retire(struct policy_engine *pe, struct policy_master *m)
{
    if (m == NULL)
        return;
    if (m->users == 0) {
        policy_master_close(m);
        return;
    }
    m->next = pe->old;
    pe->old = m;
}


static void
engine_release(struct policy_engine *pe, struct policy_master *m)
{
    struct policy_master **pp;

    ASSERT(m->users > 0);
    if (--m->users > 0 || m == pe->current)
        return;
    for (pp = &pe->old; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == m) {
            *pp = m->next;
            policy_master_close(m);
            return;
        }
    }
}


/* engine_rebuild - a fresh master from g to replace the current one */
static void
engine_rebuild(struct policy_engine *pe, struct policy_gen *g)
{
    char err[2048];
    struct policy_master *m = policy_master_build(g, pe, err, sizeof err);

    if (m == NULL) {
        policy_paniclog("shard %u: cannot build generation %llu: %s",
                        pe->shard_id, (unsigned long long)g->id, err);
        return;
    }
    master_retire(pe, pe->current);
    pe->current = m;
}


static struct policy_master *
engine_current(struct policy_engine *pe)
{
    struct policy_master *m = pe->current;

    if (m != NULL && m->oom)
        engine_rebuild(pe, m->gen);
    return pe->current;
}


void
policy_engine_tick(struct policy_engine *pe, uint64_t now_ms)
{
    ck_epoch_record_t *rec;
    struct policy_master *m;
    struct policy_gen *g;
    uint64_t id = 0;

    if (pe == NULL)
        return;
    rec = &policy_records[pe->shard_id];
    now_ms = mono_ms();
    ck_epoch_begin(rec, NULL);
    g = ck_pr_load_ptr(&policy_gen_current);
    if (g != NULL) {
        id = g->id;
        if (pe->current == NULL || pe->current->gen->id != id)
            ck_pr_inc_int(&g->refs);
        else
            g = NULL;            /* nothing new */
    }
    ck_epoch_end(rec, NULL);

    if (g != NULL) {
        engine_rebuild(pe, g);
        policy_gen_put(g);
    } else if (id == 0 && pe->current != NULL) {
        /* The scriptlet scope was removed by a reload. */
        master_retire(pe, pe->current);
        pe->current = NULL;
    }

    m = pe->current;
    /* now_ms was read before a rebuild above: created_ms may be later. */
    if (m != NULL && (m->oom || m->created_ms +
                                    policy_opts_live.script_ttl_ms <= now_ms))
        engine_rebuild(pe, m->gen);

    if (now_ms - pe->last_reap_ms >= policy_opts_live.reap_interval_ms) {
        pe->last_reap_ms = now_ms;
        for (m = pe->current; m != NULL; m = NULL) {
            spares_trim(m, m->hi_water > m->borrowed ?
                               m->hi_water - m->borrowed : 0);
            m->hi_water = m->borrowed;
            lua_gc(m->L, LUA_GCSTEP, 0);
        }
    }
    m = pe->current;
    if (m != NULL) {
        lua_gc(m->L, LUA_GCSETPAUSE, (int)policy_opts_live.gc_pause);
        lua_gc(m->L, LUA_GCSETSTEPMUL, (int)policy_opts_live.gc_stepmul);
    }
    /* Gauges for the console and /metrics, read from another thread. */
    {
        struct policy_stats st;

        policy_engine_stats(pe, &st);
        ck_pr_store_64(&pe->stats.masters, st.masters);
        ck_pr_store_64(&pe->stats.spare_threads, st.spare_threads);
        ck_pr_store_64(&pe->stats.lua_bytes, st.lua_bytes);
    }
}


void
policy_engine_stats(const struct policy_engine *pe, struct policy_stats *out)
{
    const struct policy_master *m;

    *out = pe->stats;
    out->masters = 0;
    out->spare_threads = 0;
    out->lua_bytes = 0;
    out->generation = pe->current != NULL ? pe->current->gen->id : 0;
    for (m = pe->current; m != NULL; m = NULL) {
        out->masters++;
        out->spare_threads += m->spare_count;
        out->lua_bytes += m->bytes;
    }
    for (m = pe->old; m != NULL; m = m->next) {
        out->masters++;
        out->spare_threads += m->spare_count;
        out->lua_bytes += m->bytes;
    }
}


void
policy_engine_destroy(struct policy_engine *pe)
{
    struct policy_master *m;

    if (pe == NULL)
        return;
    while ((m = pe->old) != NULL) {
        pe->old = m->next;
        m->users = 0;            /* sessions are gone by now */
        policy_master_close(m);
    }
    if (pe->current != NULL) {
        pe->current->users = 0;
        policy_master_close(pe->current);
    }
    /* The ring is about to go: no CQE will come for these any more. */
    policy_timers_free(pe);
    free(pe);
}
