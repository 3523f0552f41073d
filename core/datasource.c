/*
 * datasource - see datasource.h
 */
#include "datasource.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"


struct datasources *
datasources_create(struct loop *lp, const struct conf *c, unsigned shard_id)
{
    struct datasources *dss = xcalloc(1, sizeof *dss);
    size_t i;

    dss->count = c->datasource_count;
    dss->v = xcalloc(dss->count ? dss->count : 1, sizeof *dss->v);
    for (i = 0; i < dss->count; i++) {
        const struct conf_datasource *dc = &c->datasources[i];

        dss->v[i].c = dc;
        dss->v[i].rd = redis_create(lp, dc, shard_id);
        dss->v[i].cache = redis_cache_create(dc->cache_size,
                                             dc->cache_life_ms);
    }
    return dss;
}


/* datasource_find - by name (case-sensitive), or NULL */
struct datasource *
datasource_find(struct datasources *dss, const char *name)
{
    size_t i;

    if (dss == NULL)
        return NULL;
    for (i = 0; i < dss->count; i++) {
        if (strcmp(dss->v[i].c->name, name) == 0)
            return &dss->v[i];
    }
    return NULL;
}


void
datasources_destroy(struct datasources *dss)
{
    size_t i;

    if (dss == NULL)
        return;
    for (i = 0; i < dss->count; i++) {
        const struct redis_cache_stats *cs =
            redis_cache_stats(dss->v[i].cache);

        if (cs->hits + cs->misses > 0)
            log_panic("redis", "datasource %s: cache %llu hits, %llu "
                      "misses, %llu expired, %llu evicted",
                      dss->v[i].c->name, (unsigned long long)cs->hits,
                      (unsigned long long)cs->misses,
                      (unsigned long long)cs->expired,
                      (unsigned long long)cs->evicted);
        redis_destroy(dss->v[i].rd);
        redis_cache_destroy(dss->v[i].cache);
    }
    free(dss->v);
    free(dss);
}


static int
ds_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}


/* ds_argv_init - room for argc_max arguments of bytes in all */
void
ds_argv_init(struct ds_argv *av, int argc_max, size_t bytes)
{
    size_t arrays = (size_t)argc_max * (sizeof *av->argv +
                                        sizeof *av->argvlen);

    av->argc = 0;
    av->buf = xmalloc(arrays + bytes + 1);
    av->argv = (const char **)(void *)av->buf;
    av->argvlen = (size_t *)(void *)(av->buf + (size_t)argc_max *
                                     sizeof *av->argv);
}


void
ds_argv_fini(struct ds_argv *av)
{
    free(av->buf);
    av->buf = NULL;
    av->argv = NULL;
    av->argvlen = NULL;
    av->argc = 0;
}


/* ds_query_split - see datasource.h */
int
ds_query_split(const char *query, const char *const *params,
               const size_t *param_lens, size_t param_count,
               struct ds_argv *out, char *err, size_t errlen)
{
    size_t total = 0, used = 0, i, pi = 0, words = 0;
    const char *p;
    char *bytes;
    int in_word = 0;

    out->argc = 0;
    out->buf = NULL;
    out->argv = NULL;
    out->argvlen = NULL;
    for (p = query; *p != '\0'; p++) {
        if (ds_space(*p)) {
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            words++;
        }
    }
    if (words == 0) {
        snprintf(err, errlen, "empty query");
        return -EINVAL;
    }
    if (words > DS_ARGS_MAX) {
        snprintf(err, errlen, "more than %d words in the query",
                 DS_ARGS_MAX);
        return -EINVAL;
    }
    /* An upper bound of the bytes needed: the query plus every param. */
    for (i = 0; i < param_count; i++)
        total += param_lens[i];
    total += (size_t)(p - query);
    if (total > DS_CMD_BYTES_MAX) {
        snprintf(err, errlen, "query and parameters exceed %u bytes",
                 DS_CMD_BYTES_MAX);
        return -EINVAL;
    }
    ds_argv_init(out, (int)words, total);
    bytes = (char *)(out->argvlen + words);
    p = query;
    for (;;) {
        const char *ws;
        size_t start = used;

        while (*p != '\0' && ds_space(*p))
            p++;
        if (*p == '\0')
            break;
        ws = p;
        while (*p != '\0' && !ds_space(*p))
            p++;
        for (; ws < p; ws++) {
            if (*ws != '?') {
                bytes[used++] = *ws;
                continue;
            }
            if (pi == param_count) {
                snprintf(err, errlen, "the query has more ? than the %zu "
                         "parameters given", param_count);
                goto fail;
            }
            memcpy(bytes + used, params[pi], param_lens[pi]);
            used += param_lens[pi];
            pi++;
        }
        ASSERT((size_t)out->argc < words);
        out->argv[out->argc] = bytes + start;
        out->argvlen[out->argc] = used - start;
        out->argc++;
    }
    if (pi != param_count) {
        snprintf(err, errlen, "%zu parameters given, the query uses %zu",
                 param_count, pi);
        goto fail;
    }
    return 0;
fail:
    ds_argv_fini(out);
    return -EINVAL;
}


/* ds_cache_key - each argument as 4 length bytes then its bytes */
size_t
ds_cache_key(const struct ds_argv *av, char **key)
{
    size_t len = 0, off = 0;
    int i;
    char *k;

    for (i = 0; i < av->argc; i++)
        len += 4 + av->argvlen[i];
    k = xmalloc(len ? len : 1);
    for (i = 0; i < av->argc; i++) {
        uint32_t n = (uint32_t)av->argvlen[i];

        memcpy(k + off, &n, 4);
        memcpy(k + off + 4, av->argv[i], av->argvlen[i]);
        off += 4 + av->argvlen[i];
    }
    *key = k;
    return len;
}
