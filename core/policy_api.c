/*
 * policy_api - the sandbox and the msys functions that are not about the
 *              message: registerModule, require, print, expandMacro,
 *              vctx, sleep, dnsLookup, msys.core
 *
 * DESCRIPTION
 *   policy_api_open() opens a policy state: base (without dofile,
 *   loadfile, load, module; loadstring refuses bytecode), string (without
 *   dump), table, math, bit, a reduced os (time, date, clock, difftime),
 *   no io, no debug, no package, no jit, no ffi. require() finds the msys
 *   modules built in, then Lua modules of the generation (policy_gen.c).
 *   Then the msys table: this file's functions, the message API
 *   (policy_msg.c), and the library modules (lualib.h) when linked.
 *
 *   msys.registerModule(name, table) records the module; once every script
 *   has run, policy_api_modules() checks each: a module with no callout,
 *   hook or init is an error at load time ("no usable methods found for
 *   module X in registerModule call", Momentum's words).
 *
 *   Functions that wait (msys.sleep, msys.dnsLookup) yield the callout's
 *   coroutine when they are called from it on a shard (msys.asyncOk() is
 *   true then); anywhere else (init, a script's own coroutine) msys.sleep
 *   returns at once and msys.dnsLookup returns nil and an error.
 * THREADS
 *   The state's thread.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dns.h"
#include "policy_int.h"
#include "util.h"

#define MODULES_KEY "ringmail.modules"
#define LOADED_KEY "ringmail.loaded"
#define MASTER_KEY "ringmail.master"

static const char *const extra_methods[] = {
    "init", "deinit", "validate_dealloc", "CheckFile",
};


static struct policy_master *
api_master(lua_State *L)
{
    struct policy_master *m;

    lua_getfield(L, LUA_REGISTRYINDEX, MASTER_KEY);
    m = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return m;
}


/* policy_check_run - the run whose coroutine is L, on a shard, or NULL */
struct policy_run *
policy_check_run(lua_State *L)
{
    struct policy_run *r = policy_cur;

    if (r == NULL || r->co != L || r->ps->pe == NULL)
        return NULL;
    return r;
}


/* --- sandbox ------------------------------------------------------------ */

static int
api_loadstring(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *name = luaL_optstring(L, 2, s);

    if (len > 0 && s[0] == LUA_SIGNATURE[0]) {
        lua_pushnil(L);
        lua_pushstring(L, "loading bytecode is not allowed in policy");
        return 2;
    }
    if (luaL_loadbuffer(L, s, len, name) != 0) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    return 1;
}


static int
api_collectgarbage(lua_State *L)
{
    const char *opt = luaL_optstring(L, 1, "collect");

    if (strcmp(opt, "collect") == 0) {
        lua_gc(L, LUA_GCCOLLECT, 0);
        lua_pushinteger(L, 0);
    } else if (strcmp(opt, "count") == 0) {
        lua_pushnumber(L, lua_gc(L, LUA_GCCOUNT, 0) +
                              lua_gc(L, LUA_GCCOUNTB, 0) / 1024.0);
    } else if (strcmp(opt, "step") == 0) {
        lua_pushboolean(L, lua_gc(L, LUA_GCSTEP, (int)luaL_optinteger(L, 2,
                                                                     0)));
    } else {
        return luaL_error(L, "collectgarbage('%s') is not allowed in "
                             "policy", opt);
    }
    return 1;
}


/* print - one paniclog line, Momentum's "ts:scriptlet: text" */
static int
api_print(lua_State *L)
{
    char buf[1024];
    size_t off = 0;
    int i, n = lua_gettop(L);

    lua_getglobal(L, "tostring");
    for (i = 1; i <= n && off < sizeof buf - 1; i++) {
        const char *s;
        size_t len, k;

        lua_pushvalue(L, -1);
        lua_pushvalue(L, i);
        lua_call(L, 1, 1);
        s = lua_tolstring(L, -1, &len);
        if (s == NULL)
            return luaL_error(L, "'tostring' must return a string to "
                                 "'print'");
        if (i > 1)
            buf[off++] = ' ';
        for (k = 0; k < len && off < sizeof buf - 1; k++) {
            unsigned char c = (unsigned char)s[k];

            buf[off++] = (c < 0x20 && c != '\t') || c == 0x7f ? ' '
                                                              : (char)c;
        }
        lua_pop(L, 1);
    }
    buf[off] = '\0';
    policy_paniclog("%s", buf);
    return 0;
}


static int
api_require(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    struct policy_master *m = api_master(L);
    const struct policy_src *src;
    char chunk[4200];

    lua_getfield(L, LUA_REGISTRYINDEX, LOADED_KEY);
    lua_getfield(L, -1, name);
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    if (strcmp(name, "json") == 0 || strcmp(name, "cjson") == 0) {
        lua_getglobal(L, "json");
        return 1;
    }
    src = policy_gen_module(m->gen, name);
    if (src == NULL) {
        /* Momentum's msys.* modules are built in here. */
        if (strncmp(name, "msys.", 5) == 0 || strcmp(name, "msys") == 0) {
            lua_getglobal(L, "msys");
            return 1;
        }
        return luaL_error(L, "module '%s' not found (as %s.lua in the "
                             "search path, or required after load time: "
                             "require modules when the script loads)",
                          name, name);
    }
    snprintf(chunk, sizeof chunk, "@%s", src->path);
    if (luaL_loadbuffer(L, src->text, src->len, chunk) != 0)
        return lua_error(L);
    lua_pushstring(L, name);
    lua_call(L, 1, 1);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, name);
    return 1;
}


static void
open_lib(lua_State *L, lua_CFunction fn, const char *name)
{
    lua_pushcfunction(L, fn);
    lua_pushstring(L, name);
    lua_call(L, 1, 0);
}


static void
sandbox(lua_State *L)
{
    static const char *const drop_global[] = {
        "dofile", "loadfile", "load", "module", "gcinfo",
        /* a userdata with a Lua __gc: finalizers run with hooks off, so
         * one that loops would hang the shard past any budget */
        "newproxy",
    };
    static const char *const keep_os[] = {
        "time", "date", "clock", "difftime",
    };
    size_t i;

    open_lib(L, luaopen_base, "");
    /* The runner's coroutines (policy.c co_borrow) are listed here, weak,
     * and coroutine.resume/wrap refuse them: a script that kept one from
     * coroutine.running() cannot run another session's callout. */
    lua_newtable(L);
    lua_newtable(L);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, RUNNERS_KEY);
    if (luaL_loadstring(L,
            "local runners = ...\n"
            "local resume = coroutine.resume\n"
            "coroutine.resume = function(co, ...)\n"
            "  if runners[co] then\n"
            "    error('cannot resume the coroutine of a policy callout', 2)\n"
            "  end\n"
            "  return resume(co, ...)\n"
            "end\n") != 0)
        panic("sandbox: %s", lua_tostring(L, -1));
    lua_insert(L, -2);
    lua_call(L, 1, 0);
    open_lib(L, luaopen_table, LUA_TABLIBNAME);
    open_lib(L, luaopen_string, LUA_STRLIBNAME);
    open_lib(L, luaopen_math, LUA_MATHLIBNAME);
    open_lib(L, luaopen_bit, LUA_BITLIBNAME);
    open_lib(L, luaopen_os, LUA_OSLIBNAME);

    for (i = 0; i < ARRAY_SIZE(drop_global); i++) {
        lua_pushnil(L);
        lua_setglobal(L, drop_global[i]);
    }
    lua_pushcfunction(L, api_loadstring);
    lua_setglobal(L, "loadstring");
    lua_pushcfunction(L, api_collectgarbage);
    lua_setglobal(L, "collectgarbage");
    lua_pushcfunction(L, api_print);
    lua_setglobal(L, "print");
    lua_pushcfunction(L, api_require);
    lua_setglobal(L, "require");

    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);

    /* os: only the clock functions */
    lua_getglobal(L, "os");
    lua_newtable(L);
    for (i = 0; i < ARRAY_SIZE(keep_os); i++) {
        lua_getfield(L, -2, keep_os[i]);
        lua_setfield(L, -2, keep_os[i]);
    }
    lua_setglobal(L, "os");
    lua_pop(L, 1);
}


/* --- registerModule ----------------------------------------------------- */

static int
api_register_module(lua_State *L)
{
    size_t n;

    luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, LUA_REGISTRYINDEX, MODULES_KEY);
    n = lua_objlen(L, -1);
    lua_createtable(L, 2, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, (int)n + 1);
    lua_pop(L, 1);
    return 0;
}


static unsigned
method_bit(const char *name)
{
    unsigned i;

    for (i = 0; i < POLICY_PHASE_COUNT; i++) {
        if (strcmp(name, policy_phase_name(i)) == 0)
            return 1u << i;
    }
    if (strcmp(name, "init") == 0)
        return POLICY_M_INIT;
    if (strcmp(name, "deinit") == 0)
        return POLICY_M_DEINIT;
    if (strcmp(name, "validate_dealloc") == 0)
        return POLICY_M_DEALLOC;
    if (strcmp(name, "CheckFile") == 0)
        return POLICY_M_CHECKFILE;
    return 0;
}


/* --- msys.timer --------------------------------------------------------- */

static void timer_arm(struct policy_timer *t, uint64_t ms);


static void
timer_fire(struct op *op, int res, uint32_t flags)
{
    struct policy_timer *t = container_of(op, struct policy_timer, op);
    struct policy_master *m = t->m;
    struct policy_timer **pp;
    const char *e;
    lua_State *L;

    t->armed = 0;
    if (m == NULL) {
        /* Orphaned by a closed master: unlink from the engine, free. */
        if (t->cancel_busy)
            return;              /* the cancel CQE frees it */
        for (pp = &t->pe->orphans; *pp != NULL; pp = &(*pp)->next) {
            if (*pp == t) {
                *pp = t->next;
                break;
            }
        }
        free(t);
        return;
    }
    L = m->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
    if (policy_pcall(m, 0, 0, &e) != 0) {
        policy_paniclog("timer %s error: %s", t->name[0] ? t->name : "-",
                        e);
        lua_pop(L, 1);
    }
    if (t->interval_ms > 0 && t->m != NULL) {
        timer_arm(t, t->interval_ms);
        return;
    }
    /* A one-shot is done: off the master's list. */
    for (pp = &m->timers; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    }
    luaL_unref(L, LUA_REGISTRYINDEX, t->fn_ref);
    free(t);
}


static void
timer_cancel_done(struct op *op, int res, uint32_t flags)
{
    struct policy_timer *t = container_of(op, struct policy_timer,
                                          cancel_op);

    t->cancel_busy = 0;
    if (!t->armed)
        timer_fire(&t->op, -ECANCELED, 0);   /* frees the orphan */
}


static void
timer_arm(struct policy_timer *t, uint64_t ms)
{
    struct io_uring_sqe *sqe;

    t->ts.tv_sec = (long long)(ms / 1000);
    t->ts.tv_nsec = (long long)(ms % 1000) * 1000000;
    t->op.done = timer_fire;
    sqe = loop_sqe(t->pe->lp, &t->op);
    io_uring_prep_timeout(sqe, &t->ts, 0, 0);
    t->armed = 1;
}


/* policy_timers_close - the master closes: its timers stop */
void
policy_timers_close(struct policy_master *m)
{
    struct policy_timer *t, *next;

    for (t = m->timers; t != NULL; t = next) {
        next = t->next;
        t->m = NULL;
        if (!t->armed) {
            free(t);
            continue;
        }
        t->next = t->pe->orphans;
        t->pe->orphans = t;
        if (!t->cancel_busy) {
            struct io_uring_sqe *sqe;

            t->cancel_op.done = timer_cancel_done;
            sqe = loop_sqe(t->pe->lp, &t->cancel_op);
            io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)&t->op,
                                         0);
            t->cancel_busy = 1;
        }
    }
    m->timers = NULL;
}


void
policy_timers_free(struct policy_engine *pe)
{
    struct policy_timer *t, *next;

    for (t = pe->orphans; t != NULL; t = next) {
        next = t->next;
        free(t);
    }
    pe->orphans = NULL;
}


/* msys.timer.after(seconds, fn [, name]) and every(); at(unix_time, ...) */
static int
timer_new(lua_State *L, int kind)
{
    lua_Number v = luaL_checknumber(L, 1);
    struct policy_master *m = api_master(L);
    struct policy_timer *t;
    double ms;

    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (!(v == v) || v > 1e15 || v < -1e15)
        return luaL_error(L, "msys.timer: bad time");
    if (kind == 2)
        v -= (lua_Number)time(NULL);
    ms = v * 1000.0;
    if (kind == 1 && ms < 10)
        return luaL_error(L, "msys.timer.every: interval below 10 ms");
    if (ms < 0)
        ms = 0;
    if (ms > 86400000.0 * 30)
        ms = 86400000.0 * 30;
    if (m->pe == NULL) {
        /* The main thread's check state: nothing runs timers there. */
        lua_pushboolean(L, 1);
        return 1;
    }
    t = xcalloc(1, sizeof *t);
    t->m = m;
    t->pe = m->pe;
    t->interval_ms = kind == 1 ? (unsigned)ms : 0;
    snprintf(t->name, sizeof t->name, "%s", luaL_optstring(L, 3, ""));
    lua_pushvalue(L, 2);
    t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->next = m->timers;
    m->timers = t;
    timer_arm(t, (uint64_t)ms);
    lua_pushboolean(L, 1);
    return 1;
}


static int
api_timer_after(lua_State *L)
{
    return timer_new(L, 0);
}


static int
api_timer_every(lua_State *L)
{
    return timer_new(L, 1);
}


static int
api_timer_at(lua_State *L)
{
    return timer_new(L, 2);
}


/* A VPOP3 global CheckFile(...) seen as mod:CheckFile(...). */
static int
api_checkfile_shim(lua_State *L)
{
    lua_getglobal(L, "CheckFile");
    lua_replace(L, 1);           /* drop self */
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}


/* modules_body - policy_api_modules' work, run under lua_cpcall */
static int
modules_body(lua_State *L, struct policy_master *m, char *err,
             size_t errlen)
{
    size_t i, n;
    int rc = 0;

    lua_getfield(L, LUA_REGISTRYINDEX, MODULES_KEY);
    n = lua_objlen(L, -1);
    m->mods = xcalloc(n + 2, sizeof *m->mods);
    for (i = 1; i <= n; i++) {
        struct policy_module *mod = &m->mods[m->mod_count];
        unsigned ph;

        lua_rawgeti(L, -1, (int)i);
        lua_rawgeti(L, -1, 1);
        mod->name = xstrdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        lua_rawgeti(L, -1, 2);
        for (ph = 0; ph < POLICY_PHASE_COUNT + ARRAY_SIZE(extra_methods);
             ph++) {
            const char *name = ph < POLICY_PHASE_COUNT
                                   ? policy_phase_name(ph)
                                   : extra_methods[ph - POLICY_PHASE_COUNT];

            lua_pushstring(L, name);
            lua_rawget(L, -2);   /* raw: the table's metamethods are the
                                  * script's, and this runs unprotected */
            if (lua_isfunction(L, -1))
                mod->methods |= method_bit(name);
            lua_pop(L, 1);
        }
        mod->ref = luaL_ref(L, LUA_REGISTRYINDEX);    /* pops the table */
        lua_pop(L, 1);
        if (mod->methods == 0) {
            size_t len = strlen(err);

            snprintf(err + len, errlen - len, "%sscriptlet: no usable "
                     "methods found for module %s in registerModule call",
                     len ? "\n" : "", mod->name);
            free(mod->name);
            rc = -1;
            continue;
        }
        m->methods |= mod->methods;
        m->mod_count++;
    }
    lua_pop(L, 1);
    /* A VPOP3-style script defines a global CheckFile: a module of its own
     * whose CheckFile method calls the global. */
    lua_pushliteral(L, "CheckFile");
    lua_rawget(L, LUA_GLOBALSINDEX);
    if (lua_isfunction(L, -1)) {
        struct policy_module *mod = &m->mods[m->mod_count++];

        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushcfunction(L, api_checkfile_shim);
        lua_setfield(L, -2, "CheckFile");
        mod->name = xstrdup("CheckFile");
        mod->methods = POLICY_M_CHECKFILE;
        mod->ref = luaL_ref(L, LUA_REGISTRYINDEX);
        m->methods |= mod->methods;
    } else {
        lua_pop(L, 1);
    }
    return rc;
}


struct modules_cp {
    struct policy_master *m;
    char *err;
    size_t errlen;
    int rc;
};


static int
modules_cp(lua_State *L)
{
    struct modules_cp *c = lua_touserdata(L, 1);

    lua_pop(L, 1);
    c->rc = modules_body(L, c->m, c->err, c->errlen);
    return 0;
}


/* policy_api_modules - the registered modules into m->mods, checked;
 * protected, so nothing a script did to its tables can abort the process */
int
policy_api_modules(lua_State *L, struct policy_master *m, char *err,
                   size_t errlen)
{
    struct modules_cp c = { m, err, errlen, 0 };

    if (lua_cpcall(L, modules_cp, &c) != 0) {
        size_t n = strlen(err);

        snprintf(err + n, errlen - n, "%sscriptlet: registering modules: %s",
                 n ? "\n" : "", lua_tostring(L, -1) ? lua_tostring(L, -1)
                                                    : "(error)");
        lua_pop(L, 1);
        return -1;
    }
    return c.rc;
}


/* --- vctx --------------------------------------------------------------- */

#define VCTX_MT "ringmail.vctx"

/*
 * The objects a callout gets (vctx, msg, accept, buff) are one userdata
 * shape: the session and the serial of the run that made them. They are
 * valid only while that run executes (policy_int.h), so one a script
 * kept in a global cannot reach a finished or freed session.
 */
struct policy_ud {
    struct policy_sess *ps;
    uint64_t serial;
};


void
policy_ud_push(lua_State *L, struct policy_run *r, const char *mt)
{
    struct policy_ud *u = lua_newuserdata(L, sizeof *u);

    u->ps = r->ps;
    u->serial = r->serial;
    luaL_getmetatable(L, mt);
    lua_setmetatable(L, -2);
}


/* policy_ud_check - the session behind the object at idx, if its callout
 * is the one running; a Lua error naming what otherwise */
struct policy_sess *
policy_ud_check(lua_State *L, int idx, const char *mt, const char *what)
{
    struct policy_ud *u = luaL_checkudata(L, idx, mt);
    struct policy_run *r = policy_cur;

    if (r == NULL || r->ps != u->ps || r->serial != u->serial)
        luaL_error(L, "%s used outside the callout it was given to", what);
    return u->ps;
}


static struct policy_sess *
vctx_check(lua_State *L, int idx)
{
    return policy_ud_check(L, idx, VCTX_MT, "vctx");
}


void
policy_push_vctx(lua_State *L, struct policy_run *r)
{
    policy_ud_push(L, r, VCTX_MT);
}


static enum policy_ctx
vctx_type(lua_State *L, int idx)
{
    return policy_ctx_arg(L, idx, POLICY_CTX_VMESS, POLICY_CTX_VCONN,
                          "expected msys.core.VCTX_MESS or VCTX_CONN");
}


static int
vctx_get(lua_State *L)
{
    struct policy_sess *ps = vctx_check(L, 1);

    return policy_ctx_lua_get(L, ps, vctx_type(L, 2), 3);
}


static int
vctx_set(lua_State *L)
{
    struct policy_sess *ps = vctx_check(L, 1);
    enum policy_ctx c = vctx_type(L, 2);
    int rc = policy_ctx_lua_set(L, ps, c, 3);

    if (rc == -2)
        return luaL_error(L, "vctx:set: value has no string form");
    if (rc < 0)
        return luaL_error(L, "vctx:set: the %s context is full (%d bytes)",
                          c == POLICY_CTX_VCONN ? "VCTX_CONN" : "VCTX_MESS",
                          c == POLICY_CTX_VCONN ? POLICY_CTX_CONN_MAX
                                                : POLICY_CTX_MESS_MAX);
    return 0;
}


/* policy_reply_set - code and text into the result; text without CR/LF
 * (vctx:set_code, vctx:disconnect, msg:code) */
void
policy_reply_set(lua_State *L, struct policy_sess *ps, int code,
                 const char *text)
{
    char clean[POLICY_TEXT_MAX - 8];
    size_t i, n = 0;

    if (code < 200 || code > 599)
        luaL_error(L, "reply code %d out of range (200..599)", code);
    for (i = 0; text[i] != '\0' && n < sizeof clean - 1; i++)
        clean[n++] = text[i] == '\r' || text[i] == '\n' ? ' ' : text[i];
    clean[n] = '\0';
    ps->result.code = code;
    if (n > 3 && atoi(clean) == code && clean[3] == ' ')
        snprintf(ps->result.text, sizeof ps->result.text, "%s", clean);
    else
        snprintf(ps->result.text, sizeof ps->result.text, "%d %s", code,
                 n ? clean : (code >= 500 ? "5.7.1 Rejected by policy"
                              : code >= 400 ? "4.7.1 Deferred by policy"
                                            : "Ok"));
    if (code == 421)
        ps->result.disconnect = 1;
}


static int
vctx_set_code(lua_State *L)
{
    struct policy_sess *ps = vctx_check(L, 1);
    int code = (int)luaL_checkinteger(L, 2);

    policy_reply_set(L, ps, code, luaL_optstring(L, 3, ""));
    if (code < 400)
        ps->result.code = 0;     /* 2xx: go on as usual */
    return 0;
}


static int
vctx_disconnect(lua_State *L)
{
    struct policy_sess *ps = vctx_check(L, 1);
    int code = (int)luaL_optinteger(L, 2, 421);

    /* A disconnect refuses what is in progress: never a 2xx that would
     * claim a message was taken. */
    if (code < 400)
        code = 421;
    policy_reply_set(L, ps, code, luaL_optstring(L, 3,
                                          "4.7.0 Connection closed by "
                                          "policy"));
    ps->result.disconnect = 1;
    return 0;
}


static int
vctx_tarpit(lua_State *L)
{
    vctx_check(L, 1);
    return 0;
}


/* --- msys functions ----------------------------------------------------- */

/* expand - %{vctx_conn:key} and %{vctx_mess:key}; others stay as they are */
static int
api_expand_macro(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len), *end = s + len;
    struct policy_run *r = policy_cur;
    luaL_Buffer b;

    luaL_buffinit(L, &b);
    while (s < end) {
        const char *open = memchr(s, '%', (size_t)(end - s)), *close;
        enum policy_ctx c;
        const char *key;
        size_t klen;

        if (open == NULL || open + 1 >= end || open[1] != '{' ||
            (close = memchr(open, '}', (size_t)(end - open))) == NULL) {
            luaL_addlstring(&b, s, (size_t)(end - s));
            break;
        }
        luaL_addlstring(&b, s, (size_t)(open - s));
        key = open + 2;
        if ((size_t)(close - key) > 9 && memcmp(key, "vctx_conn:", 10) == 0)
            c = POLICY_CTX_VCONN, key += 10;
        else if ((size_t)(close - key) > 9 &&
                 memcmp(key, "vctx_mess:", 10) == 0)
            c = POLICY_CTX_VMESS, key += 10;
        else {
            luaL_addlstring(&b, open, (size_t)(close + 1 - open));
            s = close + 1;
            continue;
        }
        klen = (size_t)(close - key);
        if (r != NULL && klen < POLICY_CTX_KEY_MAX) {
            char k[POLICY_CTX_KEY_MAX];
            const struct policy_kv *kv;

            memcpy(k, key, klen);
            k[klen] = '\0';
            kv = policy_ctx_get(r->ps, c, k);
            if (kv != NULL)
                luaL_addlstring(&b, kv->val, kv->len);
        }
        s = close + 1;
    }
    luaL_pushresult(&b);
    return 1;
}


static void
sleep_start(struct policy_run *r, void *arg)
{
    policy_run_timer(r, r->wait_ms, POLICY_WAIT_SLEEP);
}


static int
api_sleep(lua_State *L)
{
    lua_Number sec = luaL_checknumber(L, 1);
    struct policy_run *r = policy_check_run(L);
    uint64_t ms;

    if (r == NULL || !(sec > 0))     /* also NaN */
        return 0;
    ms = sec > 3600 ? 3600000 : (uint64_t)(sec * 1000.0);
    r->wait_ms = ms ? ms : 1;
    policy_wait_prepare(r, POLICY_WAIT_SLEEP, sleep_start, NULL, NULL);
    return lua_yield(L, 0);
}


static int
api_async_ok(lua_State *L)
{
    lua_pushboolean(L, policy_check_run(L) != NULL);
    return 1;
}


static int
api_now(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)time(NULL));
    return 1;
}


static int
api_noop(lua_State *L)
{
    return 0;
}


struct dns_lookup {
    struct dns_rr_req req;
    struct policy_run *r;
    int priority;                /* {pref, name} pairs for MX */
    int qtype;
    char name[DNS_NAME_MAX + 2];
};


static void dns_lookup_done(struct dns_rr_req *req);


static void
dns_lookup_start(struct policy_run *r, void *arg)
{
    struct dns_lookup *dl = arg;

    dns_lookup_rr(r->ps->pe->dns, dl->name, dl->qtype, &dl->req,
                  dns_lookup_done);
}


static void
dns_lookup_drop(struct policy_run *r, void *arg)
{
    free(arg);
}


static void
dns_lookup_done(struct dns_rr_req *req)
{
    struct dns_lookup *dl = container_of(req, struct dns_lookup, req);
    struct policy_run *r = dl->r;
    lua_State *co = r->co;
    struct policy_master *m = r->ps->m;
    int mx = req->type == dns_rr_type("MX");
    size_t i;

    m->in_c = 1;                 /* pushing the answer: see policy_panic */
    if (req->status != DNS_OK) {
        lua_pushnil(co);
        lua_pushstring(co, req->why);
        dns_rr_free(req);
        free(dl);
        m->in_c = 0;
        policy_run_wake(r, 2);
        return;
    }
    lua_createtable(co, (int)req->count, 0);
    for (i = 0; i < req->count; i++) {
        if (dl->priority && mx) {
            lua_createtable(co, 2, 0);
            lua_pushinteger(co, req->rr[i].pref);
            lua_rawseti(co, -2, 1);
            lua_pushstring(co, req->rr[i].text);
            lua_rawseti(co, -2, 2);
        } else {
            lua_pushstring(co, req->rr[i].text);
        }
        lua_rawseti(co, -2, (int)i + 1);
    }
    dns_rr_free(req);
    free(dl);
    m->in_c = 0;
    policy_run_wake(r, 1);
}


/*
 * msys.dnsLookup(name, [type], [{priority = bool}]) - A (default), AAAA,
 * TXT, MX, PTR or NS, as Momentum documents: a table of strings (MX with
 * priority = true: {pref, host} pairs), best preference first; nil and an
 * error ("NXDOMAIN", "timeout", ...) on failure. An unknown type raises.
 * Suspends the callout; the `server` option is not supported.
 */
static int
api_dns_lookup(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const char *type = luaL_optstring(L, 2, "A");
    int qtype = dns_rr_type(type);
    struct policy_run *r = policy_check_run(L);
    struct dns_lookup *dl;
    int priority = 0;

    if (qtype < 0)
        return luaL_error(L, "msys.dnsLookup: unknown record type '%s' "
                             "(A, AAAA, TXT, MX, PTR, NS)", type);
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "priority");
        priority = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    if (r == NULL || r->ps->pe->dns == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, "dnsLookup: cannot suspend here");
        return 2;
    }
    if (strlen(name) > DNS_NAME_MAX + 1) {
        lua_pushnil(L);
        lua_pushstring(L, "invalid name");
        return 2;
    }
    dl = xcalloc(1, sizeof *dl);
    dl->r = r;
    dl->priority = priority;
    dl->qtype = qtype;
    strcpy(dl->name, name);
    policy_wait_prepare(r, POLICY_WAIT_DNS, dns_lookup_start,
                        dns_lookup_drop, dl);
    return lua_yield(L, 0);
}


void
policy_api_open(lua_State *L, struct policy_master *m)
{
    static const luaL_Reg vctx_methods[] = {
        { "get", vctx_get },
        { "set", vctx_set },
        { "set_code", vctx_set_code },
        { "disconnect", vctx_disconnect },
        { "tarpit", vctx_tarpit },
        { NULL, NULL },
    };

    sandbox(L);
    lua_pushlightuserdata(L, m);
    lua_setfield(L, LUA_REGISTRYINDEX, MASTER_KEY);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, MODULES_KEY);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, LOADED_KEY);

    luaL_newmetatable(L, VCTX_MT);
    lua_newtable(L);
    luaL_register(L, NULL, vctx_methods);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "vctx");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);

    lua_newtable(L);                                   /* msys */
    lua_pushcfunction(L, api_register_module);
    lua_setfield(L, -2, "registerModule");
    lua_pushcfunction(L, api_expand_macro);
    lua_setfield(L, -2, "expandMacro");
    lua_pushcfunction(L, api_sleep);
    lua_setfield(L, -2, "sleep");
    lua_pushcfunction(L, api_async_ok);
    lua_setfield(L, -2, "asyncOk");
    lua_pushcfunction(L, api_dns_lookup);
    lua_setfield(L, -2, "dnsLookup");
    lua_pushcfunction(L, api_noop);
    lua_setfield(L, -2, "lock");
    lua_pushcfunction(L, api_noop);
    lua_setfield(L, -2, "unlock");

    lua_newtable(L);                                   /* msys.timer */
    lua_pushcfunction(L, api_timer_after);
    lua_setfield(L, -2, "after");
    lua_pushcfunction(L, api_timer_every);
    lua_setfield(L, -2, "every");
    lua_pushcfunction(L, api_timer_at);
    lua_setfield(L, -2, "at");
    lua_setfield(L, -2, "timer");

    lua_newtable(L);                                   /* msys.core */
    lua_pushinteger(L, POLICY_VALIDATE_CONT);
    lua_setfield(L, -2, "VALIDATE_CONT");
    lua_pushinteger(L, POLICY_VALIDATE_DONE);
    lua_setfield(L, -2, "VALIDATE_DONE");
    lua_pushinteger(L, POLICY_VALIDATE_AGAIN);
    lua_setfield(L, -2, "VALIDATE_AGAIN");
    lua_pushinteger(L, 1);
    lua_setfield(L, -2, "VCTX_MESS");
    lua_pushinteger(L, 2);
    lua_setfield(L, -2, "VCTX_CONN");
    lua_pushinteger(L, 1);
    lua_setfield(L, -2, "ECMESS_CTX_MESS");
    lua_pushinteger(L, 2);
    lua_setfield(L, -2, "ECMESS_CTX_CONN");
    lua_pushinteger(L, 1);
    lua_setfield(L, -2, "ECTP_COMPLETE_CALLBACK_SCHED");
    lua_pushcfunction(L, api_now);
    lua_setfield(L, -2, "get_now_ts");
    lua_setfield(L, -2, "core");
    lua_setglobal(L, "msys");

    policy_msg_open(L);
    policy_libs_open(L);
}
