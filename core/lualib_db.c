/*
 * lualib_db - msys.db (query, fetch_row, execute) and msys.redis.command
 *             on the shard's Redis datasources
 *
 * DESCRIPTION
 *   msys.db.query(name, query, params, opts) splits query into a Redis
 *   command (datasource.h: ds_query_split), sends it, yields the callout's
 *   coroutine until the reply or the deadline, and returns an iterator
 *   over the rows (lualib_db_push_rows below). msys.db.fetch_row() returns
 *   the first row (or nil when there is none); msys.db.execute() returns
 *   true, and never reads or fills the cache. opts: nocache = true skips
 *   the cache for this call; raise_error = true raises errors instead of
 *   returning nil and the message.
 *
 *   msys.redis.command(name, cmd, arg...) sends cmd with each argument as
 *   it is (no splitting, no cache) and returns the reply as a value:
 *   integer a number, bulk and status a string, nil nil, an array a table
 *   of values; on failure nil and the message.
 *
 *   Rows: a nil reply gives no row; an integer (a number), bulk or status
 *   reply (a string) one row with the value at row[1]; an array one row
 *   per element, the element at row[1] (a nil element gives an empty row,
 *   a nested array a table at row[1] in which nil elements are false);
 *   the reply of a field/value command (HGETALL, CONFIG GET, HELLO) one
 *   row keyed by field name, or no row when it is empty.
 *
 *   Where the call cannot wait (init, a script's own coroutine, the
 *   configuration check), it fails: nil and "cannot suspend here".
 * THREADS
 *   The shard's; completions come from its loop.
 * SEE ALSO
 *   datasource.h, redis.h, docs/redis.md
 */
#include "lualib_db.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "datasource.h"
#include "policy_int.h"
#include "util.h"

#define DB_PARAMS_MAX 256        /* parameters of one msys.db call */

enum db_kind {
    DB_QUERY = 1,                /* rows; cached */
    DB_EXECUTE = 2,              /* true; never cached */
    DB_COMMAND = 3,              /* the reply as a value */
};

/* One call in flight: from the yield to the wake. */
struct db_call {
    struct op op;                /* a cache hit, answered next */
    struct policy_run *r;
    struct datasource *ds;
    enum db_kind kind;
    int hit_ref;                 /* LUA_NOREF, or the rows of a cache hit */
    char *key;                   /* cache key, or NULL: do not cache */
    size_t key_len;
    struct ds_argv av;
};

/* Field/value commands: RESP2 sends their maps as flat arrays. */
static const char *const fieldvalue_cmds[][2] = {
    { "HGETALL", NULL },
    { "CONFIG", "GET" },
    { "HELLO", NULL },
};


/* lualib_db_fieldvalue - whether av's reply is field, value, field, ... */
int
lualib_db_fieldvalue(int argc, const char *const *argv,
                     const size_t *argvlen)
{
    size_t i;

    for (i = 0; i < ARRAY_SIZE(fieldvalue_cmds); i++) {
        const char *c = fieldvalue_cmds[i][0], *sub = fieldvalue_cmds[i][1];

        if (argvlen[0] != strlen(c) || strncasecmp(argv[0], c, argvlen[0]))
            continue;
        if (sub == NULL)
            return 1;
        if (argc >= 2 && argvlen[1] == strlen(sub) &&
            strncasecmp(argv[1], sub, argvlen[1]) == 0)
            return 1;
    }
    return 0;
}


/* push_value - one reply as a Lua value; nil_as is pushed for nil */
static void
push_value(lua_State *L, const redisReply *r, int nil_false)
{
    size_t i;

    switch (r->type) {
    case REDIS_REPLY_INTEGER:
        lua_pushnumber(L, (lua_Number)r->integer);
        break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        lua_pushlstring(L, r->str, r->len);
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, (int)r->elements, 0);
        for (i = 0; i < r->elements; i++) {
            push_value(L, r->element[i], 1);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
    default:                     /* REDIS_REPLY_NIL */
        if (nil_false)
            lua_pushboolean(L, 0);
        else
            lua_pushnil(L);
        break;
    }
}


/* lualib_db_push_rows - a reply as the table of rows msys.db returns */
void
lualib_db_push_rows(lua_State *L, int argc, const char *const *argv,
                    const size_t *argvlen, const redisReply *r)
{
    size_t i;

    lua_newtable(L);
    switch (r->type) {
    case REDIS_REPLY_NIL:
        return;
    case REDIS_REPLY_ARRAY:
        if (lualib_db_fieldvalue(argc, argv, argvlen)) {
            if (r->elements < 2)
                return;
            lua_newtable(L);
            for (i = 0; i + 1 < r->elements; i += 2) {
                const redisReply *f = r->element[i];

                if (f->type != REDIS_REPLY_STRING &&
                    f->type != REDIS_REPLY_STATUS)
                    continue;
                lua_pushlstring(L, f->str, f->len);
                push_value(L, r->element[i + 1], 1);
                lua_rawset(L, -3);
            }
            lua_rawseti(L, -2, 1);
            return;
        }
        for (i = 0; i < r->elements; i++) {
            lua_newtable(L);
            if (r->element[i]->type != REDIS_REPLY_NIL) {
                push_value(L, r->element[i], 1);
                lua_rawseti(L, -2, 1);
            }
            lua_rawseti(L, -2, (int)i + 1);
        }
        return;
    default:
        lua_newtable(L);
        push_value(L, r, 0);
        lua_rawseti(L, -2, 1);
        lua_rawseti(L, -2, 1);
        return;
    }
}


static void
db_call_free(struct db_call *dc)
{
    ds_argv_fini(&dc->av);
    free(dc->key);
    free(dc);
}


/* db_reply - the command's outcome: results onto the coroutine, wake it */
static void
db_reply(void *arg, int res, redisReply *reply, const char *err)
{
    struct db_call *dc = arg;
    struct policy_run *r = dc->r;
    lua_State *co = r->co;
    int n = 1;

    r->ps->m->in_c = 1;          /* pushing the answer: see policy_panic */
    if (res < 0) {
        lua_pushnil(co);
        lua_pushfstring(co, "datasource %s: %s", dc->ds->c->name, err);
        n = 2;
    } else if (reply->type == REDIS_REPLY_ERROR) {
        lua_pushnil(co);
        lua_pushfstring(co, "datasource %s: %s", dc->ds->c->name,
                        reply->str);
        n = 2;
    } else if (dc->kind == DB_QUERY) {
        lualib_db_push_rows(co, dc->av.argc, dc->av.argv, dc->av.argvlen,
                            reply);
    } else if (dc->kind == DB_EXECUTE) {
        lua_pushboolean(co, 1);
    } else {
        push_value(co, reply, 0);
    }
    if (reply != NULL) {
        if (dc->key != NULL && reply->type != REDIS_REPLY_ERROR)
            redis_cache_put(dc->ds->cache, dc->key, dc->key_len, reply,
                            now_ms());
        else
            freeReplyObject(reply);
    }
    db_call_free(dc);
    r->ps->m->in_c = 0;
    policy_run_wake(r, n);
}


/* db_hit_done - a cache hit, answered from the loop like any reply */
static void
db_hit_done(struct op *op, int res, uint32_t flags)
{
    struct db_call *dc = container_of(op, struct db_call, op);
    struct policy_run *r = dc->r;

    lua_rawgeti(r->co, LUA_REGISTRYINDEX, dc->hit_ref);
    luaL_unref(r->co, LUA_REGISTRYINDEX, dc->hit_ref);
    db_call_free(dc);
    policy_run_wake(r, 1);
}


/* db_start - the yield happened: send the command, or deliver the hit */
static void
db_start(struct policy_run *r, void *arg)
{
    struct db_call *dc = arg;

    if (dc->hit_ref != LUA_NOREF) {
        dc->op.done = db_hit_done;
        loop_defer(r->ps->pe->lp, &dc->op);
        return;
    }
    redis_command(dc->ds->rd, dc->av.argc, dc->av.argv, dc->av.argvlen,
                  db_reply, dc);
}


/* db_drop - the yield did not happen (a C boundary): nothing was sent */
static void
db_drop(struct policy_run *r, void *arg)
{
    struct db_call *dc = arg;

    if (dc->hit_ref != LUA_NOREF)
        luaL_unref(r->ps->m->L, LUA_REGISTRYINDEX, dc->hit_ref);
    db_call_free(dc);
}


/* db_param - parameter i of the table at idx as bytes, or NULL */
static const char *
db_param(lua_State *L, int idx, int i, size_t *len, char *num, size_t cap)
{
    const char *s = NULL;

    lua_rawgeti(L, idx, i);
    switch (lua_type(L, -1)) {
    case LUA_TSTRING:
        s = lua_tolstring(L, -1, len);
        break;
    case LUA_TNUMBER: {
        lua_Number v = lua_tonumber(L, -1);

        if (v == (lua_Number)(long long)v)
            snprintf(num, cap, "%lld", (long long)v);
        else
            snprintf(num, cap, "%.17g", v);
        s = num;
        *len = strlen(num);
        break;
    }
    default:
        break;
    }
    lua_pop(L, 1);               /* the string stays in the table */
    return s;
}


/*
 * db_request(kind, name, query, params, opts) - the C side of msys.db.*:
 * yields, or returns nil and an error at once when the call is wrong
 */
static int
db_request(lua_State *L)
{
    enum db_kind kind = (enum db_kind)luaL_checkinteger(L, 1);
    const char *name = luaL_checkstring(L, 2);
    const char *query = luaL_checkstring(L, 3);
    struct policy_run *r = policy_check_run(L);
    const char *params[DB_PARAMS_MAX];
    size_t lens[DB_PARAMS_MAX];
    char nums[DB_PARAMS_MAX][32];
    char err[256];
    struct datasource *ds;
    struct db_call *dc;
    size_t i, n = 0;
    int nocache = 0;

    if (lua_istable(L, 5)) {
        lua_getfield(L, 5, "nocache");
        nocache = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    if (r == NULL || r->ps->pe->ds == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, "msys.db: cannot suspend here (only in a "
                          "callout on a shard)");
        return 2;
    }
    ds = datasource_find(r->ps->pe->ds, name);
    if (ds == NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "msys.db: no datasource named '%s'", name);
        return 2;
    }
    if (lua_istable(L, 4)) {
        n = lua_objlen(L, 4);
        if (n > DB_PARAMS_MAX) {
            lua_pushnil(L);
            lua_pushfstring(L, "msys.db: more than %d parameters",
                            DB_PARAMS_MAX);
            return 2;
        }
        for (i = 0; i < n; i++) {
            params[i] = db_param(L, 4, (int)i + 1, &lens[i], nums[i],
                                 sizeof nums[i]);
            if (params[i] == NULL) {
                lua_pushnil(L);
                lua_pushfstring(L, "msys.db: parameter %d is not a string "
                                "or a number", (int)i + 1);
                return 2;
            }
        }
    } else if (!lua_isnoneornil(L, 4)) {
        lua_pushnil(L);
        lua_pushstring(L, "msys.db: parameters must be a table");
        return 2;
    }
    dc = xcalloc(1, sizeof *dc);
    if (ds_query_split(query, params, lens, n, &dc->av, err,
                       sizeof err) < 0) {
        free(dc);
        lua_pushnil(L);
        lua_pushfstring(L, "msys.db: %s", err);
        return 2;
    }
    dc->r = r;
    dc->ds = ds;
    dc->kind = kind;
    dc->hit_ref = LUA_NOREF;
    if (kind == DB_QUERY && !nocache && ds->c->cache_life_ms > 0 &&
        ds->c->cache_size > 0) {
        const redisReply *hit;

        dc->key_len = ds_cache_key(&dc->av, &dc->key);
        hit = redis_cache_get(ds->cache, dc->key, dc->key_len, now_ms());
        if (hit != NULL) {
            /* Rows now (the entry may be evicted), delivered later. */
            lualib_db_push_rows(L, dc->av.argc, dc->av.argv,
                                dc->av.argvlen, hit);
            dc->hit_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        }
    }
    policy_wait_prepare(r, POLICY_WAIT_REDIS, db_start, db_drop, dc);
    return lua_yield(L, 0);
}


/* msys.redis.command(name, cmd, arg...) - one command, arguments as given */
static int
db_command(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    int i, top = lua_gettop(L);
    struct policy_run *r = policy_check_run(L);
    struct datasource *ds;
    struct db_call *dc;
    size_t total = 0;

    luaL_checkstring(L, 2);
    if (top - 1 > DS_ARGS_MAX) {
        lua_pushnil(L);
        lua_pushfstring(L, "msys.redis.command: more than %d arguments",
                        DS_ARGS_MAX);
        return 2;
    }
    if (r == NULL || r->ps->pe->ds == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, "msys.redis.command: cannot suspend here (only "
                          "in a callout on a shard)");
        return 2;
    }
    ds = datasource_find(r->ps->pe->ds, name);
    if (ds == NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "msys.redis.command: no datasource named '%s'",
                        name);
        return 2;
    }
    for (i = 2; i <= top; i++) {
        if (lua_type(L, i) != LUA_TSTRING && lua_type(L, i) != LUA_TNUMBER) {
            lua_pushnil(L);
            lua_pushfstring(L, "msys.redis.command: argument %d is not a "
                            "string or a number", i - 1);
            return 2;
        }
        lua_tolstring(L, i, NULL);   /* numbers become strings in place */
        total += lua_objlen(L, i);
    }
    if (total > DS_CMD_BYTES_MAX) {
        lua_pushnil(L);
        lua_pushfstring(L, "msys.redis.command: arguments exceed %d bytes",
                        (int)DS_CMD_BYTES_MAX);
        return 2;
    }
    dc = xcalloc(1, sizeof *dc);
    dc->r = r;
    dc->ds = ds;
    dc->kind = DB_COMMAND;
    dc->hit_ref = LUA_NOREF;
    /* Copied: the command is sent only once the yield happened. */
    ds_argv_init(&dc->av, top - 1, total);
    {
        char *p = (char *)(dc->av.argvlen + (top - 1));

        for (i = 2; i <= top; i++) {
            size_t len;
            const char *v = lua_tolstring(L, i, &len);

            memcpy(p, v, len);
            dc->av.argv[dc->av.argc] = p;
            dc->av.argvlen[dc->av.argc] = len;
            dc->av.argc++;
            p += len;
        }
    }
    policy_wait_prepare(r, POLICY_WAIT_REDIS, db_start, db_drop, dc);
    return lua_yield(L, 0);
}


/*
 * The Lua side: the iterator, fetch_row's first row, and raise_error
 * (an error must be raised in the coroutine once it runs again, which a
 * C function that yielded cannot do).
 */
static const char db_lua[] =
    "local req, msys = ...\n"
    "local function fail(opts, err)\n"
    "  if type(opts) == 'table' and opts.raise_error then\n"
    "    error(err, 3)\n"
    "  end\n"
    "  return nil, err\n"
    "end\n"
    "local db = {}\n"
    "function db.query(name, query, params, opts)\n"
    "  local rows, err = req(1, name, query, params, opts)\n"
    "  if rows == nil then return fail(opts, err) end\n"
    "  local i = 0\n"
    "  return function() i = i + 1; return rows[i] end\n"
    "end\n"
    "function db.fetch_row(name, query, params, opts)\n"
    "  local rows, err = req(1, name, query, params, opts)\n"
    "  if rows == nil then return fail(opts, err) end\n"
    "  return rows[1]\n"
    "end\n"
    "function db.execute(name, query, params, opts)\n"
    "  local ok, err = req(2, name, query, params, opts)\n"
    "  if ok == nil then return fail(opts, err) end\n"
    "  return true\n"
    "end\n"
    "msys.db = db\n";


/* lualib_db_open - msys.db and msys.redis into a policy state */
void
lualib_db_open(lua_State *L)
{
    lua_getglobal(L, "msys");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    if (luaL_loadbuffer(L, db_lua, sizeof db_lua - 1, "=msys.db") != 0)
        panic("msys.db: %s", lua_tostring(L, -1));
    lua_pushcfunction(L, db_request);
    lua_pushvalue(L, -3);
    lua_call(L, 2, 0);
    lua_newtable(L);
    lua_pushcfunction(L, db_command);
    lua_setfield(L, -2, "command");
    lua_setfield(L, -2, "redis");
    lua_pop(L, 1);
}
