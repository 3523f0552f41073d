/*
 * datasource_test - how a msys.db query becomes Redis arguments
 * (ds_query_split), the cache key, the uri parser, and how replies become
 * rows (lualib_db_push_rows), with replies parsed by hiredis from RESP.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <lauxlib.h>
#include <lualib.h>

#include "conf.h"
#include "datasource.h"
#include "lualib_db.h"
#include "redis_cache.h"


static int
split(const char *q, const char *const *params, size_t n,
      struct ds_argv *av, char *err, size_t errlen)
{
    size_t lens[16] = { 0 };
    size_t i;

    for (i = 0; i < n; i++)
        lens[i] = strlen(params[i]);
    return ds_query_split(q, params, lens, n, av, err, errlen);
}


static void
assert_arg(const struct ds_argv *av, int i, const char *want)
{
    assert_true(i < av->argc);
    assert_int_equal(av->argvlen[i], strlen(want));
    assert_memory_equal(av->argv[i], want, strlen(want));
}


static void
test_split_words(void **state)
{
    struct ds_argv *av = malloc(sizeof *av);
    char err[128];

    assert_int_equal(split("  GET\tfoo\r\n", NULL, 0, av, err, sizeof err),
                     0);
    assert_int_equal(av->argc, 2);
    assert_arg(av, 0, "GET");
    assert_arg(av, 1, "foo");
    ds_argv_fini(av);
    free(av);
}


static void
test_split_whole_param(void **state)
{
    struct ds_argv *av = malloc(sizeof *av);
    const char *p[] = { "a b\r\n*1\r\n$8\r\nFLUSHALL\r\n", "x?y" };
    char err[128];

    assert_int_equal(split("SISMEMBER ? ?", p, 2, av, err, sizeof err), 0);
    assert_int_equal(av->argc, 3);
    assert_arg(av, 0, "SISMEMBER");
    /* Whitespace, CR/LF, RESP and '?' inside a parameter stay in it. */
    assert_arg(av, 1, p[0]);
    assert_arg(av, 2, "x?y");
    ds_argv_fini(av);
    free(av);
}


static void
test_split_inside_word(void **state)
{
    struct ds_argv *av = malloc(sizeof *av);
    const char *p[] = { "42", "eu", "bind ing" };
    char err[128];

    assert_int_equal(split("HGET customer:?:? ?", p, 3, av, err,
                           sizeof err), 0);
    assert_int_equal(av->argc, 3);
    assert_arg(av, 0, "HGET");
    assert_arg(av, 1, "customer:42:eu");
    assert_arg(av, 2, "bind ing");
    ds_argv_fini(av);
    free(av);
}


static void
test_split_binary_param(void **state)
{
    struct ds_argv *av = malloc(sizeof *av);
    const char *p[] = { "a\0b" };
    size_t lens[] = { 3 };
    char err[128];

    assert_int_equal(ds_query_split("GET k:?", p, lens, 1, av, err,
                                    sizeof err), 0);
    assert_int_equal(av->argc, 2);
    assert_int_equal(av->argvlen[1], 5);
    assert_memory_equal(av->argv[1], "k:a\0b", 5);
    ds_argv_fini(av);
    free(av);
}


static void
test_split_errors(void **state)
{
    struct ds_argv *av = malloc(sizeof *av);
    const char *p[] = { "1", "2" };
    char err[128];

    assert_int_equal(split("GET ?", NULL, 0, av, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "more ?"));
    assert_int_equal(split("GET ?", p, 2, av, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "2 parameters"));
    assert_int_equal(split(" \t ", NULL, 0, av, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "empty"));
    free(av);
}


static void
test_cache_key(void **state)
{
    struct ds_argv *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    const char *pa[] = { "b c" };
    const char *pb[] = { "b", "c" };
    char err[128], *ka, *kb;
    size_t la, lb;

    /* GET "b c" and GET b c must not share a cache entry. */
    assert_int_equal(split("GET ?", pa, 1, a, err, sizeof err), 0);
    assert_int_equal(split("GET ? ?", pb, 2, b, err, sizeof err), 0);
    la = ds_cache_key(a, &ka);
    lb = ds_cache_key(b, &kb);
    assert_true(la != lb || memcmp(ka, kb, la) != 0);
    free(ka);
    free(kb);
    ds_argv_fini(a);
    ds_argv_fini(b);
    free(a);
    free(b);
}


static void
test_uri(void **state)
{
    struct conf_redis_uri u;

    assert_int_equal(conf_redis_uri_parse("redis://127.0.0.1:6380/3", &u),
                     0);
    assert_int_equal(u.db, 3);
    assert_int_equal(u.addr.ss_family, AF_INET);
    assert_null(u.password);
    conf_redis_uri_fini(&u);
    assert_int_equal(conf_redis_uri_parse("redis://:s3cret@[::1]", &u), 0);
    assert_string_equal(u.password, "s3cret");
    assert_int_equal(u.addr.ss_family, AF_INET6);
    assert_null(strstr(u.text, "s3cret"));
    conf_redis_uri_fini(&u);
    assert_int_equal(conf_redis_uri_parse("redis://localhost", &u), 0);
    conf_redis_uri_fini(&u);
    /* A name would need a blocking resolver on a shard. */
    assert_int_equal(conf_redis_uri_parse("redis://redis.example", &u),
                     -EINVAL);
    assert_int_equal(conf_redis_uri_parse("mysql://127.0.0.1", &u),
                     -EINVAL);
    assert_int_equal(conf_redis_uri_parse("redis://127.0.0.1:0", &u),
                     -EINVAL);
}


/* --- replies to rows ----------------------------------------------------- */

static redisReply *
parse(const char *resp)
{
    redisReader *rd = redisReaderCreate();
    void *reply = NULL;

    assert_int_equal(redisReaderFeed(rd, resp, strlen(resp)), REDIS_OK);
    assert_int_equal(redisReaderGetReply(rd, &reply), REDIS_OK);
    assert_non_null(reply);
    redisReaderFree(rd);
    return reply;
}


/* rows - map resp as the reply to query; the Lua value dumped as text */
static void
rows(lua_State *L, const char *query, const char *resp, const char *want)
{
    struct ds_argv *av = malloc(sizeof *av);
    redisReply *r = parse(resp);
    char err[128];
    const char *got;

    assert_int_equal(split(query, NULL, 0, av, err, sizeof err), 0);
    lua_getglobal(L, "dump");
    lualib_db_push_rows(L, av->argc, av->argv, av->argvlen, r);
    assert_int_equal(lua_pcall(L, 1, 1, 0), 0);
    got = lua_tostring(L, -1);
    if (strcmp(got, want) != 0)
        fail_msg("%s -> %s, want %s", query, got, want);
    lua_pop(L, 1);
    freeReplyObject(r);
    ds_argv_fini(av);
    free(av);
}


static const char dump_lua[] =
    "function dump(v)\n"
    "  if type(v) ~= 'table' then\n"
    "    return type(v) == 'string' and ('%q'):format(v) or tostring(v)\n"
    "  end\n"
    "  local keys = {}\n"
    "  for k in pairs(v) do keys[#keys + 1] = k end\n"
    "  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)\n"
    "  local out = {}\n"
    "  for _, k in ipairs(keys) do\n"
    "    out[#out + 1] = tostring(k) .. '=' .. dump(v[k])\n"
    "  end\n"
    "  return '{' .. table.concat(out, ',') .. '}'\n"
    "end\n";


static void
test_rows(void **state)
{
    lua_State *L = luaL_newstate();

    luaL_openlibs(L);
    assert_int_equal(luaL_dostring(L, dump_lua), 0);
    /* nil: no row */
    rows(L, "GET missing", "$-1\r\n", "{}");
    /* scalars: one row, the value at row[1] */
    rows(L, "GET k", "$5\r\nhello\r\n", "{1={1=\"hello\"}}");
    rows(L, "SISMEMBER s m", ":1\r\n", "{1={1=1}}");
    rows(L, "SET k v", "+OK\r\n", "{1={1=\"OK\"}}");
    /* arrays: one row per element; a nil element an empty row */
    rows(L, "MGET a b c", "*3\r\n$1\r\nx\r\n$-1\r\n:7\r\n",
         "{1={1=\"x\"},2={},3={1=7}}");
    rows(L, "SMEMBERS empty", "*0\r\n", "{}");
    /* nested arrays: a table at row[1], nil elements false */
    rows(L, "SCAN 0", "*2\r\n$1\r\n0\r\n*2\r\n$1\r\na\r\n$-1\r\n",
         "{1={1=\"0\"},2={1={1=\"a\",2=false}}}");
    /* field/value commands: one row keyed by field */
    rows(L, "HGETALL customer:1",
         "*4\r\n$7\r\nbinding\r\n$4\r\npool\r\n$8\r\npriority\r\n$1\r\n1\r\n",
         "{1={binding=\"pool\",priority=\"1\"}}");
    rows(L, "hgetall customer:none", "*0\r\n", "{}");
    rows(L, "CONFIG GET maxmemory", "*2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n",
         "{1={maxmemory=\"0\"}}");
    /* CONFIG SET is not one */
    rows(L, "CONFIG SET a b", "+OK\r\n", "{1={1=\"OK\"}}");
    lua_close(L);
}


static void
test_cache(void **state)
{
    struct redis_cache *c = redis_cache_create(2, 1000);

    redis_cache_put(c, "a", 1, parse(":1\r\n"), 0);
    redis_cache_put(c, "b", 1, parse(":2\r\n"), 0);
    assert_non_null(redis_cache_get(c, "a", 1, 10));   /* a most recent */
    redis_cache_put(c, "c", 1, parse(":3\r\n"), 10);   /* evicts b */
    assert_null(redis_cache_get(c, "b", 1, 10));
    assert_int_equal(redis_cache_get(c, "c", 1, 10)->integer, 3);
    assert_null(redis_cache_get(c, "a", 1, 1000));     /* expired */
    assert_int_equal(redis_cache_stats(c)->evicted, 1);
    assert_int_equal(redis_cache_stats(c)->expired, 1);
    redis_cache_destroy(c);
    c = redis_cache_create(10, 0);                     /* life 0: off */
    redis_cache_put(c, "a", 1, parse(":1\r\n"), 0);
    assert_null(redis_cache_get(c, "a", 1, 0));
    redis_cache_destroy(c);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_words),
        cmocka_unit_test(test_split_whole_param),
        cmocka_unit_test(test_split_inside_word),
        cmocka_unit_test(test_split_binary_param),
        cmocka_unit_test(test_split_errors),
        cmocka_unit_test(test_cache_key),
        cmocka_unit_test(test_uri),
        cmocka_unit_test(test_rows),
        cmocka_unit_test(test_cache),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
