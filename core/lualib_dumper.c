/*
 * lualib_dumper - msys.dumper.Dumper: any Lua value as readable Lua text
 *
 * SYNOPSIS
 *   void lualib_dumper_open(lua_State *L);
 *   Lua: s = msys.dumper.Dumper(value)
 * DESCRIPTION
 *   Dumper() returns "return " followed by value written as a Lua
 *   constructor, on one line, in the shape Momentum prints to its paniclog:
 *     return { code="550", note="No email", recipient="x@example.com"}
 *   Tables open with "{ ", separate items with ", " and close with "}";
 *   an empty table is "{}". The array part (1..n up to the first nil)
 *   comes first as bare values, then the other keys in a fixed order:
 *   numbers ascending, then strings bytewise, then booleans, then other
 *   types. Identifier-like string keys are written name=, others
 *   ["key"]=, [12]= and [true]=. Strings are double-quoted with \", \\,
 *   \n, \r, \t and \ddd escapes for other control bytes, so the text
 *   loads back with loadstring() when it holds only data. Integral
 *   numbers print without a fraction, others with 17 significant digits,
 *   infinities as math.huge and -math.huge, NaN as 0/0.
 *
 *   A table that contains itself (directly or further down) is written
 *   nil --[[cycle]] at the point where it recurs; a table reached twice
 *   by different paths is written twice. Functions, userdata and threads
 *   are written nil --[[function: 0x...]] and so on. Nesting deeper than
 *   DUMPER_DEPTH_MAX is written nil --[[too deep]]. Metatables are ignored
 *   (raw access; no __index, __pairs or __tostring runs).
 * OWNERSHIP
 *   The output grows in Lua userdata (never malloc), so a Lua error (out
 *   of memory) while dumping leaks nothing.
 * THREADS
 *   Stateless; any state.
 * ERRORS
 *   Out of memory only. Output past DUMPER_OUT_MAX bytes is cut and ends
 *   with --[[truncated]].
 * SEE ALSO
 *   lualib.h, docs/lua-library.md
 */
#include "lualib.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

#define DUMPER_DEPTH_MAX 64
#define DUMPER_OUT_MAX (4 * 1024 * 1024)

/* Stack slots of Dumper(): 1 value, 2 output userdata, 3 the set of
   tables on the current path. */
#define DUMPER_SLOT_OUT 2
#define DUMPER_SLOT_PATH 3

struct dumper_out {
    char *p;
    size_t len;
    size_t cap;
    int truncated;
};


/* dumper_add - append n bytes, growing the buffer userdata in its slot */
static void
dumper_add(lua_State *L, struct dumper_out *o, const char *s, size_t n)
{
    size_t cap;
    char *np;

    if (o->truncated)
        return;
    if (o->len + n > DUMPER_OUT_MAX) {
        o->truncated = 1;
        return;
    }
    if (o->len + n > o->cap) {
        cap = o->cap * 2;
        if (cap < o->len + n)
            cap = o->len + n;
        np = lua_newuserdata(L, cap);
        memcpy(np, o->p, o->len);
        lua_replace(L, DUMPER_SLOT_OUT);
        o->p = np;
        o->cap = cap;
    }
    ASSERT(o->len + n <= o->cap);
    memcpy(o->p + o->len, s, n);
    o->len += n;
}


/* dumper_adds - append a C string */
static void
dumper_adds(lua_State *L, struct dumper_out *o, const char *s)
{
    dumper_add(L, o, s, strlen(s));
}


/* dumper_string - append s as a double-quoted Lua string literal */
static void
dumper_string(lua_State *L, struct dumper_out *o, const char *s, size_t n)
{
    char esc[8];
    size_t i, run = 0;

    dumper_add(L, o, "\"", 1);
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *e = NULL;

        switch (c) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\n': e = "\\n"; break;
        case '\r': e = "\\r"; break;
        case '\t': e = "\\t"; break;
        default:
            if (c < 32 || c == 127) {
                snprintf(esc, sizeof(esc), "\\%03u", c);
                e = esc;
            }
        }
        if (e == NULL) {
            run++;
            continue;
        }
        dumper_add(L, o, s + i - run, run);
        run = 0;
        dumper_adds(L, o, e);
    }
    dumper_add(L, o, s + n - run, run);
    dumper_add(L, o, "\"", 1);
}


/* dumper_number - append a number the way Lua would read it back */
static void
dumper_number(lua_State *L, struct dumper_out *o, lua_Number x)
{
    char num[64];

    if (isnan(x))
        snprintf(num, sizeof(num), "0/0");
    else if (isinf(x))
        snprintf(num, sizeof(num), x > 0 ? "math.huge" : "-math.huge");
    else if (x == floor(x) && fabs(x) < 1e15)
        snprintf(num, sizeof(num), "%.0f", x);
    else
        snprintf(num, sizeof(num), "%.17g", x);
    dumper_adds(L, o, num);
}


/* dumper_is_name - true when s can be written as a bare key (name=) */
static int
dumper_is_name(const char *s, size_t n)
{
    static const char *const reserved[] = {
        "and", "break", "do", "else", "elseif", "end", "false", "for",
        "function", "goto", "if", "in", "local", "nil", "not", "or",
        "repeat", "return", "then", "true", "until", "while", NULL,
    };
    size_t i;

    if (n == 0 || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (i = 0; i < n; i++) {
        char c = s[i];

        if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9')))
            return 0;
    }
    for (i = 0; reserved[i] != NULL; i++)
        if (strlen(reserved[i]) == n && memcmp(reserved[i], s, n) == 0)
            return 0;
    return 1;
}


/* dumper_rank - sort class of the value at idx: number, string, boolean,
   the rest */
static int
dumper_rank(lua_State *L, int idx)
{
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER: return 0;
    case LUA_TSTRING: return 1;
    case LUA_TBOOLEAN: return 2;
    default: return 3;
    }
}


/* dumper_less - key order for the values at a and b (both on the stack) */
static int
dumper_less(lua_State *L, int a, int b)
{
    int ra = dumper_rank(L, a), rb = dumper_rank(L, b);
    const char *sa, *sb;
    size_t la, lb;
    int c;

    if (ra != rb)
        return ra < rb;
    switch (ra) {
    case 0:
        return lua_tonumber(L, a) < lua_tonumber(L, b);
    case 1:
        sa = lua_tolstring(L, a, &la);
        sb = lua_tolstring(L, b, &lb);
        c = memcmp(sa, sb, la < lb ? la : lb);
        return c < 0 || (c == 0 && la < lb);
    case 2:
        return !lua_toboolean(L, a) && lua_toboolean(L, b);
    default:
        /* Functions, tables...: by address, stable within one run. */
        return (const char *)lua_topointer(L, a) <
               (const char *)lua_topointer(L, b);
    }
}


/* dumper_sort - merge sort of idx[0..n) by the keys in table at ktab */
static void
dumper_sort(lua_State *L, int ktab, int *idx, int *tmp, int n)
{
    int width, i, l, m, r, a, b, k;

    for (width = 1; width < n; width *= 2) {
        for (i = 0; i < n; i += 2 * width) {
            l = i;
            m = i + width < n ? i + width : n;
            r = i + 2 * width < n ? i + 2 * width : n;
            a = l;
            b = m;
            k = l;
            while (a < m && b < r) {
                lua_rawgeti(L, ktab, idx[b]);
                lua_rawgeti(L, ktab, idx[a]);
                tmp[k++] = dumper_less(L, -2, -1) ? idx[b++] : idx[a++];
                lua_pop(L, 2);
            }
            while (a < m)
                tmp[k++] = idx[a++];
            while (b < r)
                tmp[k++] = idx[b++];
        }
        memcpy(idx, tmp, sizeof(int) * (size_t)n);
    }
}


static void dumper_value(lua_State *L, struct dumper_out *o, int depth);


/* dumper_opaque - append nil --[[type: address]] for the value at -1 */
static void
dumper_opaque(lua_State *L, struct dumper_out *o, const char *why)
{
    char text[96];

    if (why != NULL)
        snprintf(text, sizeof(text), "nil --[[%s]]", why);
    else
        snprintf(text, sizeof(text), "nil --[[%s: %p]]",
                 luaL_typename(L, -1), lua_topointer(L, -1));
    dumper_adds(L, o, text);
}


/* dumper_key - append the key at -1 followed by '=' */
static void
dumper_key(lua_State *L, struct dumper_out *o, int depth)
{
    const char *s;
    size_t n;

    if (lua_type(L, -1) == LUA_TSTRING) {
        s = lua_tolstring(L, -1, &n);
        if (dumper_is_name(s, n)) {
            dumper_add(L, o, s, n);
            dumper_add(L, o, "=", 1);
            return;
        }
    }
    dumper_add(L, o, "[", 1);
    dumper_value(L, o, depth);
    dumper_add(L, o, "]=", 2);
}


/* dumper_table - append the table at -1 (not on the current path) */
static void
dumper_table(lua_State *L, struct dumper_out *o, int depth)
{
    int t = lua_gettop(L), ktab, n = 0, nkeys = 0, i, first = 1;
    int *idx, *tmp;

    luaL_checkstack(L, 8, "msys.dumper.Dumper");
    /* Mark the table as on the path. */
    lua_pushvalue(L, t);
    lua_pushboolean(L, 1);
    lua_rawset(L, DUMPER_SLOT_PATH);

    dumper_add(L, o, "{", 1);
    for (;;) {
        lua_rawgeti(L, t, n + 1);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            break;
        }
        dumper_adds(L, o, first ? " " : ", ");
        first = 0;
        dumper_value(L, o, depth + 1);
        lua_pop(L, 1);
        n++;
    }

    /* The other keys, sorted. */
    lua_newtable(L);
    ktab = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TNUMBER) {
            lua_Number k = lua_tonumber(L, -1);

            if (k >= 1 && k <= n && k == floor(k))
                continue;
        }
        lua_pushvalue(L, -1);
        lua_rawseti(L, ktab, ++nkeys);
    }
    if (nkeys > 0) {
        idx = lua_newuserdata(L, sizeof(int) * 2 * (size_t)nkeys);
        tmp = idx + nkeys;
        for (i = 0; i < nkeys; i++)
            idx[i] = i + 1;
        dumper_sort(L, ktab, idx, tmp, nkeys);
        for (i = 0; i < nkeys; i++) {
            dumper_adds(L, o, first ? " " : ", ");
            first = 0;
            lua_rawgeti(L, ktab, idx[i]);
            dumper_key(L, o, depth + 1);
            lua_rawget(L, t);
            dumper_value(L, o, depth + 1);
            lua_pop(L, 1);
        }
    }
    dumper_add(L, o, "}", 1);
    lua_settop(L, t);

    lua_pushvalue(L, t);
    lua_pushnil(L);
    lua_rawset(L, DUMPER_SLOT_PATH);
}


/* dumper_value - append the value at -1 (left on the stack) */
static void
dumper_value(lua_State *L, struct dumper_out *o, int depth)
{
    const char *s;
    size_t n;

    switch (lua_type(L, -1)) {
    case LUA_TNIL:
        dumper_adds(L, o, "nil");
        break;
    case LUA_TBOOLEAN:
        dumper_adds(L, o, lua_toboolean(L, -1) ? "true" : "false");
        break;
    case LUA_TNUMBER:
        dumper_number(L, o, lua_tonumber(L, -1));
        break;
    case LUA_TSTRING:
        s = lua_tolstring(L, -1, &n);
        dumper_string(L, o, s, n);
        break;
    case LUA_TTABLE:
        lua_pushvalue(L, -1);
        lua_rawget(L, DUMPER_SLOT_PATH);
        if (lua_toboolean(L, -1)) {
            lua_pop(L, 1);
            dumper_opaque(L, o, "cycle");
        } else if (depth >= DUMPER_DEPTH_MAX) {
            lua_pop(L, 1);
            dumper_opaque(L, o, "too deep");
        } else {
            lua_pop(L, 1);
            dumper_table(L, o, depth);
        }
        break;
    default:
        dumper_opaque(L, o, NULL);
        break;
    }
}


/* dumper_dump - msys.dumper.Dumper(value) */
static int
dumper_dump(lua_State *L)
{
    struct dumper_out o;

    lua_settop(L, 1);
    o.cap = 256;
    o.len = 0;
    o.truncated = 0;
    o.p = lua_newuserdata(L, o.cap);          /* DUMPER_SLOT_OUT */
    lua_newtable(L);                          /* DUMPER_SLOT_PATH */
    dumper_adds(L, &o, "return ");
    lua_pushvalue(L, 1);
    dumper_value(L, &o, 0);
    if (o.truncated) {
        o.truncated = 0;
        o.len = o.len + 16 > DUMPER_OUT_MAX ? DUMPER_OUT_MAX - 16 : o.len;
        dumper_adds(L, &o, " --[[truncated]]");
    }
    lua_pushlstring(L, o.p, o.len);
    return 1;
}


/* lualib_dumper_open - register msys.dumper.Dumper */
void
lualib_dumper_open(lua_State *L)
{
    int top = lua_gettop(L);

    lualib_msys_table(L);
    lualib_subtable(L, -1, "dumper");
    lualib_provide(L, -1, "msys.dumper");
    lua_pushcfunction(L, dumper_dump);
    lua_setfield(L, -2, "Dumper");
    lua_settop(L, top);
}
