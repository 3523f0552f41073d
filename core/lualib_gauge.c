/*
 * lualib_gauge - msys.gauge_cache: named, bounded sets of counters with TTL
 *
 * SYNOPSIS
 *   void lualib_gauge_open(lua_State *L);
 *   Lua: msys.gauge_cache.define(name, maxelems, ttl[, replicated]) -> true
 *        n = msys.gauge_cache.inc(name, key)
 *        n = msys.gauge_cache.dec(name, key)
 *        n = msys.gauge_cache.get(name, key)       (nil when absent)
 *        existed = msys.gauge_cache.remove_item(name, key)
 * DESCRIPTION
 *   define() creates the cache name holding at most maxelems counters
 *   (1..GAUGE_MAX_ELEMS). A counter lives ttl seconds (fractions allowed;
 *   0 or less: no expiry) after it was last changed by inc() or dec();
 *   get() does not extend it. Adding a counter to a full cache drops the
 *   one changed longest ago. Defining an existing name again keeps its
 *   counters, applies the new ttl and drops the oldest ones if maxelems
 *   shrank. replicated is accepted and ignored: nothing is broadcast.
 *
 *   inc() and dec() create a missing counter at 0, add or subtract one
 *   and return the new value; dec() never goes below 0 (a counter that
 *   expired between an inc and its dec would otherwise go negative).
 *   get() returns the value, or nil for a key that was never set, has
 *   expired or was removed. remove_item() drops a counter and tells
 *   whether it was there.
 *
 *   Time is CLOCK_MONOTONIC, so wall-clock steps do not expire counters.
 *   Expiry is lazy: an expired counter is dropped when it is looked up or
 *   when it is the oldest and room is needed, so memory stays bounded by
 *   maxelems whatever the key churn.
 * OWNERSHIP
 *   Per cache: a userdata of maxelems slots (value, change time, LRU
 *   links) plus two Lua tables, key -> slot and slot -> key, all in a
 *   per-state registry table and freed by lua_close(). The Lua tables are
 *   updated before the slots, so an out-of-memory error in the middle of
 *   an insert leaves the cache consistent.
 * THREADS
 *   Per state. In ringmail each shard has its own states, so a gauge is
 *   per shard, not per process: a connection counter keyed by IP counts
 *   the connections that shard saw. Momentum's are process-wide (and
 *   optionally cluster-wide); see docs/lua-library.md.
 * ERRORS
 *   Bad argument types, maxelems out of range and an unknown cache name
 *   raise.
 * SEE ALSO
 *   lualib.h, docs/lua-library.md
 */
#include "lualib.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "util.h"

#define GAUGE_MAX_ELEMS (1u << 20)
/* Tables are pre-sized up to this many entries; beyond, they grow. */
#define GAUGE_PRESIZE 1024
#define GAUGE_META "ringmail.gauge_cache"

/* Registry key: the address of this variable. */
static const char gauge_key = 0;

struct gauge_slot {
    int64_t value;
    uint64_t changed_ns;
    uint32_t prev;      /* towards newer; 0: none */
    uint32_t next;      /* towards older; also the free-list link */
};

struct gauge {
    uint32_t max;
    uint32_t used;
    uint32_t head;      /* most recently changed */
    uint32_t tail;      /* changed longest ago */
    uint32_t free;
    uint64_t ttl_ns;    /* 0: no expiry */
    struct gauge_slot s[];   /* 1..max; s[0] unused */
};

/* Stack layout of the operations: 1 name, 2 key, then these. */
#define GAUGE_IDX_OBJ 3
#define GAUGE_IDX_KEYS 4
#define GAUGE_IDX_NAMES 5


/* gauge_now_ns - CLOCK_MONOTONIC in nanoseconds */
static uint64_t
gauge_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}


/* gauge_unlink - take slot i out of the LRU list */
static void
gauge_unlink(struct gauge *g, uint32_t i)
{
    struct gauge_slot *e = &g->s[i];

    ASSERT(i >= 1);
    ASSERT(i <= g->max);
    if (e->prev != 0)
        g->s[e->prev].next = e->next;
    else
        g->head = e->next;
    if (e->next != 0)
        g->s[e->next].prev = e->prev;
    else
        g->tail = e->prev;
    e->prev = 0;
    e->next = 0;
}


/* gauge_touch - slot i was just changed: move it to the head */
static void
gauge_touch(struct gauge *g, uint32_t i, uint64_t now)
{
    struct gauge_slot *e = &g->s[i];

    /* A fresh slot (gauge_insert) is not in the list yet. */
    if (e->prev != 0 || e->next != 0 || g->head == i)
        gauge_unlink(g, i);
    e->next = g->head;
    if (g->head != 0)
        g->s[g->head].prev = i;
    g->head = i;
    if (g->tail == 0)
        g->tail = i;
    e->changed_ns = now;
}


/* gauge_expired - true when slot i outlived the ttl */
static int
gauge_expired(const struct gauge *g, uint32_t i, uint64_t now)
{
    return g->ttl_ns != 0 && now - g->s[i].changed_ns > g->ttl_ns;
}


/* gauge_evict - drop slot i and its key (never allocates: only stores
   nil) */
static void
gauge_evict(lua_State *L, struct gauge *g, uint32_t i)
{
    ASSERT(g->used > 0);
    lua_rawgeti(L, GAUGE_IDX_NAMES, (int)i);
    ASSERT(lua_isstring(L, -1));
    lua_pushnil(L);
    lua_rawset(L, GAUGE_IDX_KEYS);
    lua_pushnil(L);
    lua_rawseti(L, GAUGE_IDX_NAMES, (int)i);
    gauge_unlink(g, i);
    g->s[i].next = g->free;
    g->free = i;
    g->used--;
}


/* gauge_open_cache - push the cache object, its keys and names tables
   (slots 3..5) for the name at 1; raise when unknown */
static struct gauge *
gauge_open_cache(lua_State *L, const char *fn)
{
    const char *name = luaL_checkstring(L, 1);
    struct gauge *g;

    luaL_checkstring(L, 2);
    lua_settop(L, 2);
    lua_pushlightuserdata(L, (void *)&gauge_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, name);
    lua_remove(L, -2);
    if (!lua_istable(L, -1))
        luaL_error(L, "msys.gauge_cache.%s: no cache named \"%s\"", fn, name);
    lua_getfield(L, GAUGE_IDX_OBJ, "keys");
    lua_getfield(L, GAUGE_IDX_OBJ, "names");
    lua_getfield(L, GAUGE_IDX_OBJ, "slots");
    g = luaL_checkudata(L, -1, GAUGE_META);
    lua_pop(L, 1);
    return g;
}


/* gauge_find - slot of the key at 2, 0 when absent (expired: dropped) */
static uint32_t
gauge_find(lua_State *L, struct gauge *g, uint64_t now)
{
    uint32_t i;

    lua_pushvalue(L, 2);
    lua_rawget(L, GAUGE_IDX_KEYS);
    i = (uint32_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (i != 0 && gauge_expired(g, i, now)) {
        gauge_evict(L, g, i);
        i = 0;
    }
    return i;
}


/* gauge_insert - a new counter at 0 for the key at 2; makes room first */
static uint32_t
gauge_insert(lua_State *L, struct gauge *g, uint64_t now)
{
    uint32_t i;

    while (g->tail != 0 && gauge_expired(g, g->tail, now))
        gauge_evict(L, g, g->tail);
    if (g->free == 0)
        gauge_evict(L, g, g->tail);
    i = g->free;
    ASSERT(i != 0);
    /* The tables first: these may raise (out of memory) and the slot is
       still on the free list then. */
    lua_pushvalue(L, 2);
    lua_rawseti(L, GAUGE_IDX_NAMES, (int)i);
    lua_pushvalue(L, 2);
    lua_pushinteger(L, (lua_Integer)i);
    lua_rawset(L, GAUGE_IDX_KEYS);
    g->free = g->s[i].next;
    memset(&g->s[i], 0, sizeof(g->s[i]));
    g->used++;
    gauge_touch(g, i, now);
    return i;
}


/* gauge_add - inc/dec: change the counter by delta, floor 0 */
static int
gauge_add(lua_State *L, int delta, const char *fn)
{
    struct gauge *g = gauge_open_cache(L, fn);
    uint64_t now = gauge_now_ns();
    uint32_t i;

    i = gauge_find(L, g, now);
    if (i == 0)
        i = gauge_insert(L, g, now);
    g->s[i].value += delta;
    if (g->s[i].value < 0)
        g->s[i].value = 0;
    gauge_touch(g, i, now);
    lua_pushnumber(L, (lua_Number)g->s[i].value);
    return 1;
}


/* gauge_inc - msys.gauge_cache.inc(name, key) */
static int
gauge_inc(lua_State *L)
{
    return gauge_add(L, 1, "inc");
}


/* gauge_dec - msys.gauge_cache.dec(name, key) */
static int
gauge_dec(lua_State *L)
{
    return gauge_add(L, -1, "dec");
}


/* gauge_get - msys.gauge_cache.get(name, key) */
static int
gauge_get(lua_State *L)
{
    struct gauge *g = gauge_open_cache(L, "get");
    uint32_t i = gauge_find(L, g, gauge_now_ns());

    if (i == 0)
        lua_pushnil(L);
    else
        lua_pushnumber(L, (lua_Number)g->s[i].value);
    return 1;
}


/* gauge_remove - msys.gauge_cache.remove_item(name, key) */
static int
gauge_remove(lua_State *L)
{
    struct gauge *g = gauge_open_cache(L, "remove_item");
    uint32_t i = gauge_find(L, g, gauge_now_ns());

    if (i != 0)
        gauge_evict(L, g, i);
    lua_pushboolean(L, i != 0);
    return 1;
}


/* gauge_define - msys.gauge_cache.define(name, maxelems, ttl, replicated) */
static int
gauge_define(lua_State *L)
{
    lua_Number max = luaL_checknumber(L, 2);
    lua_Number ttl = luaL_checknumber(L, 3);
    struct gauge *g, *old = NULL;
    uint64_t now = gauge_now_ns();
    size_t bytes;
    uint32_t i, j, n;

    luaL_checkstring(L, 1);
    if (!(max >= 1 && max <= GAUGE_MAX_ELEMS))
        return luaL_error(L, "msys.gauge_cache.define: maxelems must be "
                          "1..%d", (int)GAUGE_MAX_ELEMS);
    if (isnan(ttl))
        return luaL_argerror(L, 3, "ttl is NaN");
    n = (uint32_t)max;

    /* Same layout as the operations: 1 name, 2 key, 3 obj, 4 keys,
       5 names; then 6 the old names table when redefining. */
    lua_settop(L, 1);
    lua_pushnil(L);
    lua_createtable(L, 0, 3);
    lua_createtable(L, 0, (int)(n < GAUGE_PRESIZE ? n : GAUGE_PRESIZE));
    lua_pushvalue(L, -1);
    lua_setfield(L, GAUGE_IDX_OBJ, "keys");
    lua_createtable(L, (int)(n < GAUGE_PRESIZE ? n : GAUGE_PRESIZE), 0);
    lua_pushvalue(L, -1);
    lua_setfield(L, GAUGE_IDX_OBJ, "names");
    bytes = sizeof(*g) + sizeof(g->s[0]) * ((size_t)n + 1);
    g = lua_newuserdata(L, bytes);
    memset(g, 0, bytes);
    luaL_getmetatable(L, GAUGE_META);
    lua_setmetatable(L, -2);
    lua_setfield(L, GAUGE_IDX_OBJ, "slots");
    g->max = n;
    g->ttl_ns = ttl > 0 ? (uint64_t)(fmin(ttl, 1e9) * 1e9) : 0;
    for (i = n; i >= 1; i--) {
        g->s[i].next = g->free;
        g->free = i;
    }

    lua_pushlightuserdata(L, (void *)&gauge_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, 1);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "slots");
        old = lua_touserdata(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, -1, "names");
        lua_replace(L, -2);   /* 6: old names */
    }
    if (old != NULL) {
        /* Keep the counters, oldest first so the order survives; when
           maxelems shrank the oldest go, as if evicted. */
        for (i = old->tail; i != 0; i = old->s[i].prev) {
            if (g->ttl_ns != 0 && now - old->s[i].changed_ns > g->ttl_ns)
                continue;
            lua_rawgeti(L, 6, (int)i);
            lua_replace(L, 2);
            j = gauge_insert(L, g, now);
            g->s[j].value = old->s[i].value;
            gauge_touch(g, j, old->s[i].changed_ns);
        }
    }

    /* Only a complete cache replaces the old one. */
    lua_pushlightuserdata(L, (void *)&gauge_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, GAUGE_IDX_OBJ);
    lua_rawset(L, -3);
    lua_pushboolean(L, 1);
    return 1;
}


/* lualib_gauge_open - register msys.gauge_cache; per-state store once */
void
lualib_gauge_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"define", gauge_define},
        {"inc", gauge_inc},
        {"dec", gauge_dec},
        {"get", gauge_get},
        {"remove_item", gauge_remove},
        {NULL, NULL},
    };
    const luaL_Reg *f;
    int top = lua_gettop(L);

    luaL_newmetatable(L, GAUGE_META);
    lua_pop(L, 1);
    lua_pushlightuserdata(L, (void *)&gauge_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (lua_isnil(L, -1)) {
        lua_pushlightuserdata(L, (void *)&gauge_key);
        lua_newtable(L);
        lua_rawset(L, LUA_REGISTRYINDEX);
    }
    lua_settop(L, top);

    lualib_msys_table(L);
    lualib_subtable(L, -1, "gauge_cache");
    lualib_provide(L, -1, "msys.gauge_cache");
    for (f = fns; f->name != NULL; f++) {
        lua_pushcfunction(L, f->func);
        lua_setfield(L, -2, f->name);
    }
    lua_settop(L, top);
}
