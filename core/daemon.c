/*
 * daemon - process-wide actions shared by signals and the console
 *          (daemon.h): configuration reload, scriptlet options and
 *          statistics
 *
 * DESCRIPTION
 *   daemon_start() remembers the configuration path and the shards, and
 *   builds and publishes the first policy generation. A reload re-reads
 *   the file; what it applies is the scriptlet scope (the policy
 *   generation and its options). Other options keep their running values
 *   until a restart, and the paniclog names each top-level statement of
 *   the file that differs from the running configuration
 *   (conf_start_changes()).
 * THREADS
 *   Main thread and the control thread; one mutex serializes them. Shard
 *   counters are read without locks (64-bit loads of counters only their
 *   shard writes).
 */
#include <ck_pr.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "daemon.h"
#include "log.h"
#include "policy.h"
#include "policy_int.h"
#include "shard.h"

static pthread_mutex_t daemon_lock = PTHREAD_MUTEX_INITIALIZER;
static char *daemon_conf_path;
static const struct conf *daemon_conf;    /* the one started with */
static struct shard *daemon_shards;
static unsigned daemon_shard_count;


/* policy_apply - build c's generation and publish it; 0 or -1 with err */
static int
policy_apply(const struct conf *c, char *err, size_t errlen)
{
    struct policy_gen *g = policy_gen_build(c, err, errlen);

    if (g == NULL && c->scriptlet.instance != NULL)
        return -1;
    policy_gen_publish(g);      /* NULL: no scriptlet, no policy */
    return 0;
}


int
daemon_start(const char *conf_path, const struct conf *c, char *err,
             size_t errlen)
{
    int rc;

    pthread_mutex_lock(&daemon_lock);
    free(daemon_conf_path);
    daemon_conf_path = strdup(conf_path);
    daemon_conf = c;
    rc = policy_apply(c, err, errlen);
    pthread_mutex_unlock(&daemon_lock);
    return rc;
}


void
daemon_shards_set(struct shard *shards, unsigned count)
{
    pthread_mutex_lock(&daemon_lock);
    daemon_shards = shards;
    daemon_shard_count = count;
    pthread_mutex_unlock(&daemon_lock);
}


void
daemon_stop(void)
{
    pthread_mutex_lock(&daemon_lock);
    daemon_shards = NULL;
    daemon_shard_count = 0;
    policy_gen_unpublish();
    free(daemon_conf_path);
    daemon_conf_path = NULL;
    daemon_conf = NULL;
    pthread_mutex_unlock(&daemon_lock);
}


/* daemon_start_change - a statement a reload does not apply changed */
static void
daemon_start_change(const char *key, void *arg)
{
    (void)arg;
    log_panic("main", "config reload: %s differs from the running "
              "configuration; it takes effect at the next start", key);
}


int
daemon_reload(char *err, size_t errlen)
{
    struct conf_errors errs = { 0 };
    struct conf *c;
    int rc = -1;
    size_t i, off = 0;

    err[0] = '\0';
    pthread_mutex_lock(&daemon_lock);
    if (daemon_conf_path == NULL) {
        snprintf(err, errlen, "config reload: the daemon is not running");
        goto out;
    }
    c = conf_load(daemon_conf_path, &errs);
    if (c == NULL) {
        for (i = 0; i < errs.count && off + 1 < errlen; i++)
            off += (size_t)snprintf(err + off, errlen - off, "%s%s:%d: %s",
                                    i ? "\n" : "", errs.v[i].file,
                                    errs.v[i].line, errs.v[i].message);
        conf_errors_fini(&errs);
        goto out;
    }
    if (daemon_conf != NULL)
        conf_start_changes(daemon_conf, c, daemon_start_change, NULL);
    rc = policy_apply(c, err, errlen);
    conf_free(c);
out:
    pthread_mutex_unlock(&daemon_lock);
    if (rc == 0)
        log_panic("main", "config reload: scriptlet generation applied");
    else
        log_panic("main", "config reload failed, running configuration "
                  "kept: %s", err);
    return rc;
}


int
daemon_scriptlet_set(const char *option, const char *value, char *err,
                     size_t errlen)
{
    int rc;

    pthread_mutex_lock(&daemon_lock);
    rc = policy_option_set(option, value, err, errlen);
    pthread_mutex_unlock(&daemon_lock);
    return rc;
}


void
daemon_scriptlet_stats(struct daemon_scriptlet_stats *out)
{
    unsigned i;

    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&daemon_lock);
    for (i = 0; i < daemon_shard_count; i++) {
        const struct policy_engine *pe =
            ck_pr_load_ptr(&daemon_shards[i].policy);

        if (pe == NULL)
            continue;
        out->callouts += ck_pr_load_64(&pe->stats.callouts);
        out->callout_errors += ck_pr_load_64(&pe->stats.callout_errors);
        out->budget_exhausted += ck_pr_load_64(&pe->stats.budget_exhausted);
        out->yields += ck_pr_load_64(&pe->stats.yields);
        out->states += ck_pr_load_64(&pe->stats.masters);
        out->spare_threads += ck_pr_load_64(&pe->stats.spare_threads);
        out->lua_bytes += ck_pr_load_64(&pe->stats.lua_bytes);
    }
    pthread_mutex_unlock(&daemon_lock);
    out->generation = policy_generation_id();
    out->scripts = policy_generation_scripts();
}
