/*
 * policy_gen - policy generations: read the scripts, prove them, publish
 *              them to the shards, retire them (policy.h)
 *
 * DESCRIPTION
 *   policy_gen_build() resolves each script's source ("dir.name" or
 *   "dir/name", no .lua suffix) in the search path (the scriptlet's
 *   search_path, by default the configuration file's directory), then in
 *   ringmail's own lua/ library (msys.boot lives there). It reads every
 *   file into memory, then builds a check master in this thread: the
 *   scripts run, their require()s are read from disk and kept in the
 *   generation (shards never touch the disk: their require() finds only
 *   what the check loaded), modules register, init() runs (and deinit()
 *   when the check state closes).
 *
 *   Publication: policy_gen_current is read by shards inside a ck_epoch
 *   section, where they take a reference; policy_gen_publish() swaps the
 *   pointer and waits for an epoch grace period before dropping its own
 *   reference to the old generation, so no shard can take a reference to
 *   a freed one.
 * OWNERSHIP
 *   A generation is malloc'd and freed by whoever drops the last
 *   reference (main thread or a shard).
 * THREADS
 *   build/publish/option_set: one non-shard thread at a time. put: any.
 */
#include <ck_epoch.h>
#include <ck_pr.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "policy_int.h"
#include "util.h"

#ifndef RINGMAIL_LUA_DIR
#define RINGMAIL_LUA_DIR "lua"
#endif

#define POLICY_SOURCE_MAX (16u << 20)

struct policy_gen *policy_gen_current;
ck_epoch_t policy_epoch;
static ck_epoch_record_t policy_main_record;
static int policy_epoch_ready;
static uint64_t policy_gen_next_id = 1;

struct policy_opts policy_opts_live = {
    .script_ttl_ms = 300000,
    .gc_pause = 200,
    .gc_stepmul = 200,
    .max_spare = 5000,
    .reap_interval_ms = 120000,
    .instruction_budget = 1000000,
    .again_delay_ms = 10,
    .memory_limit = 64u << 20,
    .jit = 0,
};


static void
epoch_init(void)
{
    if (policy_epoch_ready)
        return;
    ck_epoch_init(&policy_epoch);
    ck_epoch_register(&policy_epoch, &policy_main_record, NULL);
    policy_epoch_ready = 1;
}


/* read_file - the whole file, NUL-terminated; NULL with errno */
static char *
read_file(const char *path, size_t *len)
{
    struct stat st;
    char *buf;
    size_t off = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        (uint64_t)st.st_size > POLICY_SOURCE_MAX) {
        close(fd);
        errno = S_ISREG(st.st_mode) ? EFBIG : EISDIR;
        return NULL;
    }
    buf = xmalloc((size_t)st.st_size + 1);
    while (off < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + off, (size_t)st.st_size - off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(fd);
    buf[off] = '\0';
    *len = off;
    return buf;
}


/*
 * policy_source_find - the file for a source or module name: "a.b" and
 * "a/b" both name a/b.lua. Returns a malloc'd path or NULL.
 */
static char *
source_find(const struct conf *c, const char *source)
{
    const struct conf_scriptlet *sl = &c->scriptlet;
    char rel[4096], path[8192];
    size_t i, n = strlen(source);

    if (n == 0 || n + 5 > sizeof rel || source[0] == '/' ||
        strstr(source, "..") != NULL)
        return NULL;
    for (i = 0; i < n; i++)
        rel[i] = source[i] == '.' ? '/' : source[i];
    memcpy(rel + n, ".lua", 5);
    for (i = 0; i <= sl->search_path_count; i++) {
        const char *dir = i < sl->search_path_count ? sl->search_path[i]
                                                    : c->dir;

        if (i == sl->search_path_count && sl->search_path_count > 0)
            break;               /* an explicit path replaces the default */
        snprintf(path, sizeof path, "%s/%s", dir, rel);
        if (access(path, R_OK) == 0)
            return xstrdup(path);
    }
    snprintf(path, sizeof path, "%s/%s", RINGMAIL_LUA_DIR, rel);
    if (access(path, R_OK) == 0)
        return xstrdup(path);
    return NULL;
}


static const struct conf *policy_build_conf;   /* during a build only */


/* policy_gen_module - a require()d module of g, reading it when building */
const struct policy_src *
policy_gen_module(const struct policy_gen *cg, const char *name)
{
    struct policy_gen *g = (struct policy_gen *)cg;
    struct policy_src *s;
    size_t i;
    char *path, *text;
    size_t len;

    for (i = 0; i < g->mod_count; i++) {
        if (strcmp(g->mods[i].name, name) == 0)
            return &g->mods[i];
    }
    if (policy_build_conf == NULL)
        return NULL;             /* a shard: only what the check loaded */
    path = source_find(policy_build_conf, name);
    if (path == NULL)
        return NULL;
    text = read_file(path, &len);
    if (text == NULL) {
        free(path);
        return NULL;
    }
    g->mods = xrealloc(g->mods, (g->mod_count + 1) * sizeof *g->mods);
    s = &g->mods[g->mod_count++];
    s->name = xstrdup(name);
    s->path = path;
    s->text = text;
    s->len = len;
    return s;
}


static void
gen_free(struct policy_gen *g)
{
    size_t i;

    for (i = 0; i < g->script_count; i++) {
        free(g->scripts[i].name);
        free(g->scripts[i].path);
        free(g->scripts[i].text);
    }
    for (i = 0; i < g->mod_count; i++) {
        free(g->mods[i].name);
        free(g->mods[i].path);
        free(g->mods[i].text);
    }
    free(g->scripts);
    free(g->mods);
    free(g);
}


void
policy_gen_put(struct policy_gen *g)
{
    bool zero;

    if (g == NULL)
        return;
    ck_pr_dec_int_zero(&g->refs, &zero);
    if (zero)
        gen_free(g);
}


static void
opts_from_conf(struct policy_opts *o, const struct conf_scriptlet *sl)
{
    o->script_ttl_ms = sl->script_ttl_ms;
    o->gc_pause = sl->gc_pause;
    o->gc_stepmul = sl->gc_stepmul;
    o->max_spare = sl->max_spare_per_master;
    o->reap_interval_ms = sl->reap_interval_ms;
    o->instruction_budget = sl->instruction_budget;
    o->again_delay_ms = sl->again_delay_ms;
    o->memory_limit = sl->memory_limit;
    o->jit = sl->jit;
}


struct policy_gen *
policy_gen_build(const struct conf *c, char *err, size_t errlen)
{
    const struct conf_scriptlet *sl = &c->scriptlet;
    struct policy_master *m;
    struct policy_gen *g;
    size_t i;

    err[0] = '\0';
    epoch_init();
    if (sl->instance == NULL)
        return NULL;
    g = xcalloc(1, sizeof *g);
    g->refs = 1;
    opts_from_conf(&g->opts, sl);
    g->scripts = xcalloc(sl->script_count ? sl->script_count : 1,
                         sizeof *g->scripts);
    for (i = 0; i < sl->script_count; i++) {
        const struct conf_script *cs = &sl->scripts[i];
        struct policy_src *s = &g->scripts[g->script_count];
        size_t n = strlen(err);

        s->path = source_find(c, cs->source);
        if (s->path == NULL) {
            snprintf(err + n, errlen - n, "%s%s:%d: script '%s': cannot "
                     "find source '%s' (as %s.lua in the search path or "
                     "in %s)", n ? "\n" : "", cs->file, cs->line, cs->name,
                     cs->source, cs->source, RINGMAIL_LUA_DIR);
            continue;
        }
        s->text = read_file(s->path, &s->len);
        if (s->text == NULL) {
            snprintf(err + n, errlen - n, "%s%s:%d: script '%s': cannot "
                     "read %s: %s", n ? "\n" : "", cs->file, cs->line,
                     cs->name, s->path, strerror(errno));
            free(s->path);
            continue;
        }
        s->name = xstrdup(cs->name);
        g->script_count++;
    }
    if (err[0] != '\0') {
        gen_free(g);
        return NULL;
    }

    /* The check runs with the new options (policy_master_build: no
     * engine): a budget or memory limit too small for init() fails here,
     * not on the shards. */
    policy_build_conf = c;
    m = policy_master_build(g, NULL, err, errlen);
    policy_build_conf = NULL;
    if (m == NULL) {
        policy_gen_put(g);
        return NULL;
    }
    policy_master_close(m);      /* runs deinit(), drops its reference */
    return g;
}


void
policy_gen_publish(struct policy_gen *g)
{
    struct policy_gen *old;

    epoch_init();
    if (g != NULL) {
        g->id = policy_gen_next_id++;
        /* Options take effect with the generation that carries them. */
        ck_pr_store_uint(&policy_opts_live.script_ttl_ms,
                         g->opts.script_ttl_ms);
        ck_pr_store_uint(&policy_opts_live.gc_pause, g->opts.gc_pause);
        ck_pr_store_uint(&policy_opts_live.gc_stepmul, g->opts.gc_stepmul);
        ck_pr_store_uint(&policy_opts_live.max_spare, g->opts.max_spare);
        ck_pr_store_uint(&policy_opts_live.reap_interval_ms,
                         g->opts.reap_interval_ms);
        ck_pr_store_uint(&policy_opts_live.instruction_budget,
                         g->opts.instruction_budget);
        ck_pr_store_uint(&policy_opts_live.again_delay_ms,
                         g->opts.again_delay_ms);
        ck_pr_store_64(&policy_opts_live.memory_limit, g->opts.memory_limit);
        ck_pr_store_int(&policy_opts_live.jit, g->opts.jit);
    }
    old = ck_pr_load_ptr(&policy_gen_current);
    ck_pr_fence_store();
    ck_pr_store_ptr(&policy_gen_current, g);
    ck_epoch_synchronize(&policy_main_record);
    policy_gen_put(old);
}


/* for statistics: read while the daemon lock keeps publishers out */
uint64_t
policy_generation_id(void)
{
    struct policy_gen *g = ck_pr_load_ptr(&policy_gen_current);

    return g != NULL ? g->id : 0;
}


uint64_t
policy_generation_scripts(void)
{
    struct policy_gen *g = ck_pr_load_ptr(&policy_gen_current);

    return g != NULL ? g->script_count : 0;
}


void
policy_gen_unpublish(void)
{
    if (policy_epoch_ready)
        policy_gen_publish(NULL);
}


int
policy_option_set(const char *name, const char *value, char *err,
                  size_t errlen)
{
    char *end;
    unsigned long long v;
    uint64_t ms;

    if (strcasecmp(name, "always_gc") == 0)
        return 0;                /* accepted, obsolete (as in Momentum) */
    if (strcasecmp(name, "script_ttl") == 0 ||
        strcasecmp(name, "reap_interval") == 0) {
        if (conf_duration_from_str(value, &ms) < 0 || ms < 1000 ||
            ms > 30ull * 86400 * 1000) {
            snprintf(err, errlen, "%s: expected a duration (seconds, or a "
                     "number with ms, s, m, h or d) of at least 1s", name);
            return -1;
        }
        ck_pr_store_uint(name[0] == 's' || name[0] == 'S'
                             ? &policy_opts_live.script_ttl_ms
                             : &policy_opts_live.reap_interval_ms,
                         (unsigned)ms);
        return 0;
    }
    errno = 0;
    v = strtoull(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || v > 2000000000ull) {
        snprintf(err, errlen, "%s: expected a number", name);
        return -1;
    }
    if (strcasecmp(name, "gc_pause") == 0 && v >= 50 && v <= 1000)
        ck_pr_store_uint(&policy_opts_live.gc_pause, (unsigned)v);
    else if (strcasecmp(name, "gc_stepmul") == 0 && v >= 50 && v <= 10000)
        ck_pr_store_uint(&policy_opts_live.gc_stepmul, (unsigned)v);
    else if (strcasecmp(name, "max_spare_per_master") == 0 &&
             v <= 1000000)
        ck_pr_store_uint(&policy_opts_live.max_spare, (unsigned)v);
    else if (strcasecmp(name, "instruction_budget") == 0 && v >= 10000)
        ck_pr_store_uint(&policy_opts_live.instruction_budget, (unsigned)v);
    else {
        snprintf(err, errlen, "%s: unknown option or value out of range "
                 "(script_ttl, gc_pause 50..1000, gc_stepmul 50..10000, "
                 "max_spare_per_master 0..1000000, reap_interval, "
                 "instruction_budget >= 10000, always_gc)", name);
        return -1;
    }
    return 0;
}
