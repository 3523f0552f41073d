/*
 * lualib_db - msys.db and msys.redis for policy states (lualib_db.c)
 *
 * SYNOPSIS
 *   void lualib_db_open(lua_State *L);
 *   void lualib_db_push_rows(lua_State *L, int argc,
 *                            const char *const *argv,
 *                            const size_t *argvlen, const redisReply *r);
 *   int  lualib_db_fieldvalue(int argc, const char *const *argv,
 *                             const size_t *argvlen);
 * DESCRIPTION
 *   lualib_db_open() adds msys.db and msys.redis to the msys table of L.
 *   lualib_db_push_rows() pushes the table of rows msys.db makes of the
 *   reply r to the command argv (see lualib_db.c for the mapping);
 *   lualib_db_fieldvalue() says whether argv's reply is a flat
 *   field/value list (HGETALL, CONFIG GET, HELLO).
 * THREADS
 *   The state's thread.
 */
#ifndef RINGMAIL_LUALIB_DB_H
#define RINGMAIL_LUALIB_DB_H

#include <stddef.h>

#include <hiredis/hiredis.h>
#include <lua.h>

void lualib_db_open(lua_State *L);
void lualib_db_push_rows(lua_State *L, int argc, const char *const *argv,
                         const size_t *argvlen, const redisReply *r);
int lualib_db_fieldvalue(int argc, const char *const *argv,
                         const size_t *argvlen);

#endif
