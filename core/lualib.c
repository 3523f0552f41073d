/*
 * lualib - helpers shared by the msys library openers (see lualib.h)
 *
 * Only table plumbing lives here; each namespace has its own file.
 */
#include "lualib.h"

#include <lauxlib.h>


/* lualib_msys_table - push the global msys table, creating it if missing */
void
lualib_msys_table(lua_State *L)
{
    lua_getglobal(L, "msys");
    if (lua_istable(L, -1))
        return;
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setglobal(L, "msys");
}


/* lualib_subtable - push msys[name] (msys at idx), creating it if missing */
void
lualib_subtable(lua_State *L, int idx, const char *name)
{
    if (idx < 0)
        idx = lua_gettop(L) + idx + 1;
    lua_getfield(L, idx, name);
    if (lua_istable(L, -1))
        return;
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, idx, name);
}


/* lualib_provide - package.loaded[modname] = value at idx, if package */
void
lualib_provide(lua_State *L, int idx, const char *modname)
{
    if (idx < 0)
        idx = lua_gettop(L) + idx + 1;
    lua_getglobal(L, "package");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    lua_getfield(L, -1, "loaded");
    if (lua_istable(L, -1)) {
        lua_pushvalue(L, idx);
        lua_setfield(L, -2, modname);
    }
    lua_pop(L, 2);
}
