/*
 * lualib_json - global json: encode, decode, new, strerror on lua-cjson
 *
 * SYNOPSIS
 *   void lualib_json_open(lua_State *L);
 *   Lua: s = json.encode(value)
 *        obj[, code, message] = json.decode(str)
 *        obj = json.new()
 *        text = json.strerror(code)
 *        json.null, json.ERROR_DEPTH ... json.ERROR_PARSE_COMMENT
 * DESCRIPTION
 *   encode() is lua-cjson's encode: a Lua value to a JSON string. It
 *   raises on values JSON cannot hold (functions, userdata other than
 *   json.null, excessively sparse arrays, nesting past 1000).
 *
 *   decode() parses str with lua-cjson and returns the value as plain Lua
 *   tables, like Momentum: on success the value; on bad JSON nil, an error
 *   code (json.ERROR_*, json-c's numbering) and cjson's message, instead
 *   of raising. Every table in the result gets a metatable whose
 *   __tostring returns the table encoded as JSON, so print(obj) shows JSON
 *   as Momentum's JSON objects do. JSON null decodes to json.null.
 *
 *   new() returns an empty table with that same metatable.
 *
 *   strerror(code) returns the description of an ERROR_* code.
 * LINKING
 *   Debian's lua-cjson-dev ships a linkable library, liblua5.1-cjson.so,
 *   which exports luaopen_cjson and has no dependency on a Lua library of
 *   its own: its lua_* references resolve against the LuaJIT we link. So
 *   meson finds it with cc.find_library('lua5.1-cjson') (its pkg-config
 *   file needs lua5.1.pc, which LuaJIT does not provide) and we call
 *   luaopen_cjson() directly; no dlopen, no Lua module path involved.
 *   The cjson module table itself is kept only in upvalues.
 * OWNERSHIP
 *   cjson keeps its encode buffer (malloc) in a userdata with __gc, freed
 *   when the state closes. XXX: lua-cjson 2.1.0's decode mallocs a scratch
 *   buffer as long as the input and frees it only on the normal and
 *   parse-error paths; when the Lua allocator fails in the middle of a
 *   decode, that buffer leaks (once per such failure, bounded by the
 *   input size). Fixing it needs a cjson that allocates through Lua;
 *   tests/unit/lsan.supp names that one leak so the OOM test can run.
 * THREADS
 *   Per state. luaopen_cjson() writes a process-wide decimal-point cache
 *   (fpconv_init); concurrent openers write the same value.
 * ERRORS
 *   encode() raises on unsupported values; decode() raises only on a
 *   non-string argument and on out-of-memory.
 * SECURITY
 *   decode() input may be untrusted (HTTP replies, headers): cjson limits
 *   nesting to 1000 levels and checks every length.
 * SEE ALSO
 *   lualib.h, docs/lua-library.md, lua-cjson manual
 */
#include "lualib.h"

#include <string.h>

/* From lua-cjson-dev's <lua5.1/lua-cjson.h>, which does not include
   lua.h itself. */
#include <lua5.1/lua-cjson.h>

#define JSON_META "ringmail.json.object"

/* json-c's json_tokener_error numbering, which Momentum exposes. */
enum json_err {
    JSON_ERROR_DEPTH = 2,
    JSON_ERROR_PARSE_EOF = 3,
    JSON_ERROR_PARSE_UNEXPECTED = 4,
    JSON_ERROR_PARSE_NULL = 5,
    JSON_ERROR_PARSE_BOOLEAN = 6,
    JSON_ERROR_PARSE_NUMBER = 7,
    JSON_ERROR_PARSE_ARRAY = 8,
    JSON_ERROR_PARSE_OBJECT_KEY_NAME = 9,
    JSON_ERROR_PARSE_OBJECT_KEY_SEP = 10,
    JSON_ERROR_PARSE_OBJECT_VALUE_SEP = 11,
    JSON_ERROR_PARSE_STRING = 12,
    JSON_ERROR_PARSE_COMMENT = 13,
};

static const struct {
    const char *name;
    int code;
    const char *text;
} json_errors[] = {
    {"ERROR_DEPTH", JSON_ERROR_DEPTH, "nesting too deep"},
    {"ERROR_PARSE_EOF", JSON_ERROR_PARSE_EOF, "unexpected end of data"},
    {"ERROR_PARSE_UNEXPECTED", JSON_ERROR_PARSE_UNEXPECTED,
     "unexpected character"},
    {"ERROR_PARSE_NULL", JSON_ERROR_PARSE_NULL, "null expected"},
    {"ERROR_PARSE_BOOLEAN", JSON_ERROR_PARSE_BOOLEAN, "boolean expected"},
    {"ERROR_PARSE_NUMBER", JSON_ERROR_PARSE_NUMBER, "invalid number"},
    {"ERROR_PARSE_ARRAY", JSON_ERROR_PARSE_ARRAY,
     "array value separator ',' expected"},
    {"ERROR_PARSE_OBJECT_KEY_NAME", JSON_ERROR_PARSE_OBJECT_KEY_NAME,
     "quoted object property name expected"},
    {"ERROR_PARSE_OBJECT_KEY_SEP", JSON_ERROR_PARSE_OBJECT_KEY_SEP,
     "object property name separator ':' expected"},
    {"ERROR_PARSE_OBJECT_VALUE_SEP", JSON_ERROR_PARSE_OBJECT_VALUE_SEP,
     "object value separator ',' expected"},
    {"ERROR_PARSE_STRING", JSON_ERROR_PARSE_STRING, "invalid string"},
    {"ERROR_PARSE_COMMENT", JSON_ERROR_PARSE_COMMENT,
     "invalid comment (comments are not accepted)"},
};

#define JSON_NERRORS (sizeof(json_errors) / sizeof(json_errors[0]))


/* json_classify - json-c style code for one of cjson's error messages */
static int
json_classify(const char *msg)
{
    static const struct {
        const char *needle;
        int code;
    } map[] = {
        {"too many nested", JSON_ERROR_DEPTH},
        {"found T_END", JSON_ERROR_PARSE_EOF},
        {"invalid number", JSON_ERROR_PARSE_NUMBER},
        {"escape", JSON_ERROR_PARSE_STRING},
        {"unexpected end of string", JSON_ERROR_PARSE_STRING},
        {"object key string", JSON_ERROR_PARSE_OBJECT_KEY_NAME},
        {"Expected colon", JSON_ERROR_PARSE_OBJECT_KEY_SEP},
        {"comma or object end", JSON_ERROR_PARSE_OBJECT_VALUE_SEP},
        {"comma or array end", JSON_ERROR_PARSE_ARRAY},
    };
    size_t i;

    for (i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strstr(msg, map[i].needle) != NULL)
            return map[i].code;
    return JSON_ERROR_PARSE_UNEXPECTED;
}


/* json_tostring - __tostring of decoded tables: the table as JSON
   (upvalue 1: cjson.encode) */
static int
json_tostring(lua_State *L)
{
    lua_settop(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 1, 1);
    return 1;
}


/* json_mark - give the table at idx, and every table inside it, the JSON
   metatable (at mt); cjson bounds the depth to 1000 */
static void
json_mark(lua_State *L, int idx, int mt)
{
    luaL_checkstack(L, 4, "json.decode");
    lua_pushvalue(L, mt);
    lua_setmetatable(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        if (lua_istable(L, -1))
            json_mark(L, lua_gettop(L), mt);
        lua_pop(L, 1);
    }
}


/* json_decode - json.decode(str) (upvalue 1: cjson.decode) */
static int
json_decode(lua_State *L)
{
    const char *msg;
    int rc;

    luaL_checkstring(L, 1);
    lua_settop(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    rc = lua_pcall(L, 1, 1, 0);
    if (rc == LUA_ERRMEM)
        return lua_error(L);
    if (rc != 0) {
        msg = lua_tostring(L, -1);
        lua_pushnil(L);
        lua_pushinteger(L, json_classify(msg != NULL ? msg : ""));
        lua_pushvalue(L, -3);
        return 3;
    }
    if (lua_istable(L, 2)) {
        luaL_getmetatable(L, JSON_META);
        json_mark(L, 2, 3);
        lua_settop(L, 2);
    }
    return 1;
}


/* json_new - json.new(): an empty object that prints as JSON */
static int
json_new(lua_State *L)
{
    lua_newtable(L);
    luaL_getmetatable(L, JSON_META);
    lua_setmetatable(L, -2);
    return 1;
}


/* json_strerror - json.strerror(code) */
static int
json_strerror(lua_State *L)
{
    int code = (int)luaL_checkinteger(L, 1);
    size_t i;

    for (i = 0; i < JSON_NERRORS; i++) {
        if (json_errors[i].code == code) {
            lua_pushstring(L, json_errors[i].text);
            return 1;
        }
    }
    if (code == 0)
        lua_pushliteral(L, "success");
    else
        lua_pushfstring(L, "unknown JSON error %d", code);
    return 1;
}


/* lualib_json_open - create the global json from a private cjson copy */
void
lualib_json_open(lua_State *L)
{
    int top = lua_gettop(L), cj, js;
    size_t i;

    lua_pushcfunction(L, luaopen_cjson);
    lua_call(L, 0, 1);
    cj = lua_gettop(L);

    lua_newtable(L);
    js = lua_gettop(L);
    lua_getfield(L, cj, "encode");
    lua_setfield(L, js, "encode");

    luaL_newmetatable(L, JSON_META);
    lua_getfield(L, cj, "encode");
    lua_pushcclosure(L, json_tostring, 1);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);

    lua_getfield(L, cj, "decode");
    lua_pushcclosure(L, json_decode, 1);
    lua_setfield(L, js, "decode");
    lua_pushcfunction(L, json_new);
    lua_setfield(L, js, "new");
    lua_pushcfunction(L, json_strerror);
    lua_setfield(L, js, "strerror");
    lua_getfield(L, cj, "null");
    lua_setfield(L, js, "null");
    for (i = 0; i < JSON_NERRORS; i++) {
        lua_pushinteger(L, json_errors[i].code);
        lua_setfield(L, js, json_errors[i].name);
    }
    lua_pushvalue(L, js);
    lua_setglobal(L, "json");
    lualib_provide(L, js, "json");
    lua_settop(L, top);
}
