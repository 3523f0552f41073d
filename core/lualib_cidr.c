/*
 * lualib_cidr - msys.cidr: named IPv4/IPv6 prefix lists, longest match wins
 *
 * SYNOPSIS
 *   void lualib_cidr_open(lua_State *L);
 *   Lua: msys.cidr.define(name, options)          -> true
 *        value = msys.cidr.query(name, address)
 *        msys.cidr.add(name, prefix[, value])      (ringmail)
 *        msys.cidr.remove(name, prefix)            (ringmail)
 *        msys.cidr.reload(name)                    -> true
 * DESCRIPTION
 *   define() creates (or replaces) the CIDR object name. options is a
 *   table, or a string taken as options.type:
 *     type          "empty" or "static" (ringmail); "datasource" and
 *                   "rbldnsd" raise "not supported" until the datasource
 *                   layer and asynchronous file loading exist
 *     entries       (ringmail) { ["10.0.0.0/8"] = value, ["2001:db8::/32"]
 *                   = value, ["192.0.2.7"] = value, ... }, or the array
 *                   form { "10.0.0.0/8", ... } where each maps to true;
 *                   "static" requires it, "empty" accepts it
 *     default_value returned by query() when nothing matches (nil)
 *     interpolate   when true, each '$' in a string value is replaced by
 *                   the queried address on return
 *   A prefix is an address with an optional /len; host bits past len are
 *   ignored (10.1.2.3/8 is 10.0.0.0/8); a bare address is a host route.
 *
 *   query() returns the value of the longest prefix containing address,
 *   else default_value. IPv4-mapped IPv6 (::ffff:192.0.2.1) and brackets
 *   ([2001:db8::1]) are understood. A string that is not an address
 *   returns default_value too. address is required: Momentum's "peer of
 *   the current session" default belongs to the policy core.
 *
 *   add() and remove() change one prefix of a defined object; reload()
 *   has nothing to reload for these types and returns true.
 * OWNERSHIP
 *   Everything is Lua data in one registry table per state: per object a
 *   table {map, default, interpolate, counts} where map is keyed by the
 *   masked address bytes plus the prefix length and counts is a userdata
 *   of per-length entry counts. Lookup probes only the lengths in use,
 *   longest first. lua_close() frees it all; there is no C-side memory.
 * THREADS
 *   Per state, so per shard: a CIDR defined in one shard's init is not
 *   seen by another shard's state; each state runs the init.
 * ERRORS
 *   Bad argument types, an unknown object name, a bad prefix in define()
 *   or add() ("msys.cidr.define: bad prefix \"x\"") and unsupported types
 *   raise. Out of memory raises LUA_ERRMEM.
 * SEE ALSO
 *   lualib.h, docs/lua-library.md
 */
#include "lualib.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

/* Registry key: the address of this variable. */
static const char lcidr_key = 0;

#define LCIDR_META "ringmail.cidr.counts"

/* Entries per prefix length, for IPv4 (0..32) and IPv6 (0..128). */
struct lcidr_counts {
    uint32_t v4[33];
    uint32_t v6[129];
};

struct lcidr_addr {
    unsigned char b[16];
    int len;            /* 4 or 16 bytes */
    int bits;           /* prefix length */
};


/* lcidr_parse - parse "addr[/len]" (brackets allowed); 0 or -1 */
static int
lcidr_parse(const char *s, size_t n, int allow_len, struct lcidr_addr *a)
{
    char buf[INET6_ADDRSTRLEN + 8];
    const char *slash;
    long bits = -1;
    size_t alen;

    if (n >= 2 && s[0] == '[') {
        const char *close = memchr(s, ']', n);

        if (close == NULL)
            return -1;
        /* "[addr]" or "[addr]/len" */
        if ((size_t)(close - s) + 1 < n && close[1] != '/')
            return -1;
        if ((size_t)(close - s) - 1 >= sizeof(buf))
            return -1;
        alen = (size_t)(close - s) - 1;
        memcpy(buf, s + 1, alen);
        slash = (size_t)(close - s) + 1 < n ? close + 1 : NULL;
    } else {
        slash = memchr(s, '/', n);
        alen = slash != NULL ? (size_t)(slash - s) : n;
        if (alen >= sizeof(buf))
            return -1;
        memcpy(buf, s, alen);
    }
    buf[alen] = '\0';
    if (slash != NULL) {
        const char *p = slash + 1, *end = s + n;

        if (!allow_len || p == end || end - p > 3)
            return -1;
        for (bits = 0; p < end; p++) {
            if (*p < '0' || *p > '9')
                return -1;
            bits = bits * 10 + (*p - '0');
        }
    }
    if (inet_pton(AF_INET, buf, a->b) == 1) {
        a->len = 4;
    } else if (inet_pton(AF_INET6, buf, a->b) == 1) {
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0,
                                                 0, 0, 0xff, 0xff};

        a->len = 16;
        if (memcmp(a->b, mapped, 12) == 0 && (bits < 0 || bits >= 96)) {
            memmove(a->b, a->b + 12, 4);
            a->len = 4;
            if (bits >= 96)
                bits -= 96;
        }
    } else {
        return -1;
    }
    if (bits > a->len * 8)
        return -1;
    a->bits = bits < 0 ? a->len * 8 : (int)bits;
    return 0;
}


/* lcidr_push_key - push the map key of a masked to `bits` */
static void
lcidr_push_key(lua_State *L, const struct lcidr_addr *a, int bits)
{
    unsigned char k[17];
    int i;

    memset(k, 0, sizeof(k));
    for (i = 0; i < bits / 8; i++)
        k[i] = a->b[i];
    if (bits % 8)
        k[i] = a->b[i] & (unsigned char)(0xff << (8 - bits % 8));
    k[a->len] = (unsigned char)bits;
    lua_pushlstring(L, (const char *)k, (size_t)a->len + 1);
}


/* lcidr_store - push the per-state table of CIDR objects */
static void
lcidr_store(lua_State *L)
{
    lua_pushlightuserdata(L, (void *)&lcidr_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
}


/* lcidr_get - push the object called name (arg 1) or raise */
static void
lcidr_get(lua_State *L, const char *fn)
{
    const char *name = luaL_checkstring(L, 1);

    lcidr_store(L);
    lua_getfield(L, -1, name);
    if (!lua_istable(L, -1))
        luaL_error(L, "msys.cidr.%s: no CIDR named \"%s\"", fn, name);
    lua_remove(L, -2);
}


/* lcidr_counts - the counts userdata of the object at idx */
static struct lcidr_counts *
lcidr_counts(lua_State *L, int idx)
{
    struct lcidr_counts *c;

    lua_getfield(L, idx, "counts");
    c = luaL_checkudata(L, -1, LCIDR_META);
    lua_pop(L, 1);
    return c;
}


/* lcidr_set - set prefix (string at pidx) to the value at vidx (nil
   removes) in the object at oidx */
static void
lcidr_set(lua_State *L, int oidx, int pidx, int vidx, const char *fn)
{
    struct lcidr_counts *c;
    struct lcidr_addr a;
    const char *p;
    size_t n;
    uint32_t *count;
    int existed, top = lua_gettop(L);

    oidx = oidx < 0 ? top + oidx + 1 : oidx;
    pidx = pidx < 0 ? top + pidx + 1 : pidx;
    vidx = vidx < 0 ? top + vidx + 1 : vidx;
    c = lcidr_counts(L, oidx);

    if (lua_type(L, pidx) != LUA_TSTRING)
        luaL_error(L, "msys.cidr.%s: prefix must be a string, not %s", fn,
                   luaL_typename(L, pidx));
    p = lua_tolstring(L, pidx, &n);
    if (lcidr_parse(p, n, 1, &a) != 0)
        luaL_error(L, "msys.cidr.%s: bad prefix \"%s\"", fn, p);
    count = a.len == 4 ? &c->v4[a.bits] : &c->v6[a.bits];

    lua_getfield(L, oidx, "map");
    lcidr_push_key(L, &a, a.bits);
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    existed = !lua_isnil(L, -1);
    lua_pop(L, 1);
    lua_pushvalue(L, vidx);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    if (!existed && !lua_isnil(L, vidx))
        (*count)++;
    else if (existed && lua_isnil(L, vidx))
        (*count)--;
}


/* lcidr_define - msys.cidr.define(name, options) */
static int
lcidr_define(lua_State *L)
{
    const char *type;
    struct lcidr_counts *c;
    int obj;

    luaL_checkstring(L, 1);
    lua_settop(L, 2);
    if (lua_type(L, 2) == LUA_TSTRING) {
        lua_newtable(L);
        lua_pushvalue(L, 2);
        lua_setfield(L, -2, "type");
        lua_replace(L, 2);
    }
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "type");
    type = lua_tostring(L, -1);
    if (type == NULL)
        return luaL_error(L, "msys.cidr.define: options.type is required");
    if (strcmp(type, "datasource") == 0 || strcmp(type, "rbldnsd") == 0)
        return luaL_error(L, "msys.cidr.define: type \"%s\" is not "
                          "supported by ringmail yet", type);
    if (strcmp(type, "empty") != 0 && strcmp(type, "static") != 0)
        return luaL_error(L, "msys.cidr.define: unknown type \"%s\"", type);
    lua_getfield(L, 2, "entries");
    if (!lua_isnil(L, -1) && !lua_istable(L, -1))
        return luaL_error(L, "msys.cidr.define: options.entries must be a "
                          "table");
    if (strcmp(type, "static") == 0 && lua_isnil(L, -1))
        return luaL_error(L, "msys.cidr.define: type \"static\" needs "
                          "options.entries");
    lua_pop(L, 2);

    lua_createtable(L, 0, 4);
    obj = lua_gettop(L);
    lua_newtable(L);
    lua_setfield(L, obj, "map");
    c = lua_newuserdata(L, sizeof(*c));
    memset(c, 0, sizeof(*c));
    luaL_getmetatable(L, LCIDR_META);
    lua_setmetatable(L, -2);
    lua_setfield(L, obj, "counts");
    lua_getfield(L, 2, "default_value");
    lua_setfield(L, obj, "default");
    lua_getfield(L, 2, "interpolate");
    lua_pushboolean(L, lua_toboolean(L, -1));
    lua_setfield(L, obj, "interpolate");
    lua_pop(L, 1);

    lua_getfield(L, 2, "entries");
    if (lua_istable(L, -1)) {
        int entries = lua_gettop(L);

        lua_pushnil(L);
        while (lua_next(L, entries) != 0) {
            if (lua_type(L, -2) == LUA_TNUMBER) {
                /* Array form {"10.0.0.0/8", ...}: each maps to true. */
                lua_pushboolean(L, 1);
                lcidr_set(L, obj, -2, -1, "define");
                lua_pop(L, 1);
            } else {
                lcidr_set(L, obj, -2, -1, "define");
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);

    /* Only a complete object replaces the old one. */
    lcidr_store(L);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, obj);
    lua_rawset(L, -3);
    lua_pushboolean(L, 1);
    return 1;
}


/* lcidr_query - msys.cidr.query(name, address) */
static int
lcidr_query(lua_State *L)
{
    struct lcidr_counts *c;
    struct lcidr_addr a;
    const char *addr;
    size_t n;
    int obj, map, bits;
    uint32_t *counts;

    lua_settop(L, 2);
    lcidr_get(L, "query");
    obj = lua_gettop(L);
    if (lua_isnoneornil(L, 2))
        return luaL_error(L, "msys.cidr.query: address required (there is "
                          "no session peer here)");
    addr = luaL_checklstring(L, 2, &n);
    c = lcidr_counts(L, obj);
    lua_getfield(L, obj, "map");
    map = lua_gettop(L);
    if (lcidr_parse(addr, n, 0, &a) == 0) {
        counts = a.len == 4 ? c->v4 : c->v6;
        for (bits = a.len * 8; bits >= 0; bits--) {
            if (counts[bits] == 0)
                continue;
            lcidr_push_key(L, &a, bits);
            lua_rawget(L, map);
            if (!lua_isnil(L, -1))
                goto found;
            lua_pop(L, 1);
        }
    }
    lua_getfield(L, obj, "default");
    return 1;

found:
    lua_getfield(L, obj, "interpolate");
    if (lua_toboolean(L, -1) && lua_type(L, -2) == LUA_TSTRING) {
        lua_pop(L, 1);
        (void)luaL_gsub(L, lua_tostring(L, -1), "$", addr);
        return 1;
    }
    lua_pop(L, 1);
    return 1;
}


/* lcidr_add - msys.cidr.add(name, prefix[, value]) */
static int
lcidr_add(lua_State *L)
{
    lua_settop(L, 3);
    if (lua_isnil(L, 3)) {
        lua_pushboolean(L, 1);
        lua_replace(L, 3);
    }
    lcidr_get(L, "add");
    luaL_checkstring(L, 2);
    lcidr_set(L, 4, 2, 3, "add");
    return 0;
}


/* lcidr_remove - msys.cidr.remove(name, prefix) */
static int
lcidr_remove(lua_State *L)
{
    lua_settop(L, 2);
    lcidr_get(L, "remove");
    luaL_checkstring(L, 2);
    lua_pushnil(L);
    lcidr_set(L, 3, 2, 4, "remove");
    return 0;
}


/* lcidr_reload - msys.cidr.reload(name): nothing to refresh */
static int
lcidr_reload(lua_State *L)
{
    lcidr_get(L, "reload");
    lua_pushboolean(L, 1);
    return 1;
}


/* lualib_cidr_open - register msys.cidr; create the per-state store once */
void
lualib_cidr_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"define", lcidr_define},
        {"query", lcidr_query},
        {"add", lcidr_add},
        {"remove", lcidr_remove},
        {"reload", lcidr_reload},
        {NULL, NULL},
    };
    const luaL_Reg *f;
    int top = lua_gettop(L);

    luaL_newmetatable(L, LCIDR_META);
    lua_pop(L, 1);
    lcidr_store(L);
    if (lua_isnil(L, -1)) {
        lua_pushlightuserdata(L, (void *)&lcidr_key);
        lua_newtable(L);
        lua_rawset(L, LUA_REGISTRYINDEX);
    }
    lua_settop(L, top);

    lualib_msys_table(L);
    lualib_subtable(L, -1, "cidr");
    lualib_provide(L, -1, "msys.cidr");
    for (f = fns; f->name != NULL; f++) {
        lua_pushcfunction(L, f->func);
        lua_setfield(L, -2, f->name);
    }
    lua_settop(L, top);
}
