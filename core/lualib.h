/*
 * lualib - the self-contained parts of the msys Lua API, one opener each
 *
 * SYNOPSIS
 *   #include <lua.h>
 *   void lualib_pcre_open(lua_State *L);     msys.pcre.match/replace/split
 *   void lualib_codec_open(lua_State *L);    msys.base64.*, msys.qp.*
 *   void lualib_dumper_open(lua_State *L);   msys.dumper.Dumper
 *   void lualib_json_open(lua_State *L);     global json (lua-cjson)
 *   void lualib_addr_open(lua_State *L);     msys.parseRFC2822Addresses
 *   void lualib_cidr_open(lua_State *L);     msys.cidr.define/query/reload
 *   void lualib_gauge_open(lua_State *L);    msys.gauge_cache.*
 * DESCRIPTION
 *   Each opener expects nothing on the stack, creates the global table
 *   msys when it is missing, sets its own fields in it (or, for json, the
 *   global json) and leaves the stack as it found it. It also sets
 *   package.loaded["msys.pcre"] (and so on, "json" for json) when the
 *   state has package, so the require() lines of Momentum scripts work. Openers may be
 *   called in any order and more than once; a second call replaces the
 *   functions and, for modules with per-state data (pcre cache, cidr,
 *   gauge caches), keeps the data already there.
 *
 *   docs/lua-library.md describes every function, its errors and limits
 *   and where it differs from Momentum.
 * OWNERSHIP
 *   All per-state data lives in the Lua registry of the state the opener
 *   was called on (userdata with __gc), and is released by lua_close().
 * THREADS
 *   A lua_State belongs to one shard thread; nothing here is shared
 *   between states, so caches and counters are per shard, not per process.
 * ERRORS
 *   Openers raise a Lua error (LUA_ERRMEM) when the state cannot allocate;
 *   call them under lua_pcall/lua_cpcall when the allocator is capped.
 * SEE ALSO
 *   docs/lua-library.md, /work/shared/reference/momentum-lua-api.md
 */
#ifndef RINGMAIL_LUALIB_H
#define RINGMAIL_LUALIB_H

/* This header's name hides LuaJIT's <lualib.h> for every file built with
   -Icore, so it includes that one by its full name: code that wants
   luaL_openlibs() or luaopen_*() can keep writing #include <lualib.h>. */
#include <lauxlib.h>
#include <lua.h>
#include <luajit-2.1/lualib.h>

void lualib_pcre_open(lua_State *L);
void lualib_codec_open(lua_State *L);
void lualib_dumper_open(lua_State *L);
void lualib_json_open(lua_State *L);
void lualib_addr_open(lua_State *L);
void lualib_cidr_open(lua_State *L);
void lualib_gauge_open(lua_State *L);

/* lualib_msys_table - push the global msys table, creating it if missing
   (shared by the openers; leaves exactly one value on the stack) */
void lualib_msys_table(lua_State *L);

/* lualib_subtable - push msys[name] (msys at index idx), creating it if
   missing */
void lualib_subtable(lua_State *L, int idx, const char *name);

/* lualib_provide - package.loaded[modname] = the value at idx, so that
   Momentum's require('msys.pcre') returns it; nothing without package */
void lualib_provide(lua_State *L, int idx, const char *modname);

#endif
