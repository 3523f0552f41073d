/*
 * datasource - a shard's named datasources (Datasource scopes), and how a
 *              msys.db query string becomes a Redis command
 *
 * SYNOPSIS
 *   struct datasources *datasources_create(struct loop *lp,
 *                                          const struct conf *c,
 *                                          unsigned shard_id);
 *   struct datasource *datasource_find(struct datasources *dss,
 *                                      const char *name);
 *   void datasources_destroy(struct datasources *dss);
 *   int  ds_query_split(const char *query, const char *const *params,
 *                       const size_t *param_lens, size_t param_count,
 *                       struct ds_argv *out, char *err, size_t errlen);
 *   void ds_argv_init(struct ds_argv *av, int argc_max, size_t bytes);
 *   void ds_argv_init(struct ds_argv *av, int argc_max, size_t bytes);
void ds_argv_fini(struct ds_argv *av);
 *   size_t ds_cache_key(const struct ds_argv *av, char **key);
 * DESCRIPTION
 *   datasources_create() makes, for each Datasource of c, its Redis client
 *   (redis.h) and its result cache (redis_cache.h); call it in the shard
 *   thread, and datasources_destroy() after the ring is gone.
 *
 *   ds_query_split() turns a msys.db query into arguments: the query is
 *   split on white space (space, tab, CR, LF) into words; a word that is
 *   exactly "?" becomes the next parameter as one whole argument; in any
 *   other word each "?" is replaced by the next parameter, inside that one
 *   argument ("customer:?" with 42 gives customer:42). Parameters are
 *   bytes: never split, parsed or escaped; each ends up inside exactly one
 *   argument, sent as its own bulk string. Fewer or more parameters than
 *   "?" marks, an empty query, more than DS_ARGS_MAX arguments or
 *   DS_CMD_BYTES_MAX bytes are errors (-EINVAL with err set).
 *
 *   ds_argv_init() makes room for argc_max arguments of bytes in all
 *   (argc 0, one allocation); ds_argv_fini() frees it.
 *
 *   ds_cache_key() encodes the arguments (each length-prefixed, so no two
 *   different commands share a key) into a malloc'd key.
 * OWNERSHIP
 *   The shard owns struct datasources; ds_argv owns its buffer.
 * THREADS
 *   Shard-local; ds_query_split() and ds_cache_key() are pure.
 * SECURITY
 *   Parameters come from the peer (addresses, domains); the split keeps
 *   each one inside one argument whatever bytes it holds (CR, LF, RESP
 *   fragments, "?" or white space).
 * SEE ALSO
 *   redis.h, lualib_db.c, docs/redis.md
 */
#ifndef RINGMAIL_DATASOURCE_H
#define RINGMAIL_DATASOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "loop.h"
#include "redis.h"
#include "redis_cache.h"

#define DS_ARGS_MAX 1024                     /* arguments per command */
#define DS_CMD_BYTES_MAX (1024u * 1024)      /* bytes of all arguments */

struct datasource {
    const struct conf_datasource *c;
    struct redis *rd;
    struct redis_cache *cache;
};

struct datasources {
    struct datasource *v;
    size_t count;
};

struct ds_argv {
    int argc;
    const char **argv;           /* into buf */
    size_t *argvlen;             /* into buf */
    char *buf;                   /* one allocation: the arrays, then the
                                  * arguments' bytes */
};

struct datasources *datasources_create(struct loop *lp, const struct conf *c,
                                       unsigned shard_id);
struct datasource *datasource_find(struct datasources *dss, const char *name);
void datasources_destroy(struct datasources *dss);
int ds_query_split(const char *query, const char *const *params,
                   const size_t *param_lens, size_t param_count,
                   struct ds_argv *out, char *err, size_t errlen);
void ds_argv_init(struct ds_argv *av, int argc_max, size_t bytes);
void ds_argv_fini(struct ds_argv *av);
size_t ds_cache_key(const struct ds_argv *av, char **key);

#endif
