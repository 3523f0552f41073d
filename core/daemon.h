/*
 * daemon - the process-wide actions the control console and signals share:
 *          configuration reload, scriptlet options, scriptlet statistics
 *
 * SYNOPSIS
 *   int  daemon_start(const char *conf_path, const struct conf *c,
 *                     char *err, size_t errlen);
 *   void daemon_shards_set(struct shard *shards, unsigned count);
 *   void daemon_stop(void);
 *   int  daemon_reload(char *err, size_t errlen);
 *   int  daemon_scriptlet_set(const char *option, const char *value,
 *                             char *err, size_t errlen);
 *   void daemon_scriptlet_stats(struct daemon_scriptlet_stats *out);
 * DESCRIPTION
 *   daemon_start() (main thread, before the shards start) remembers the
 *   configuration file and publishes its policy generation: -1 with err
 *   when a script fails. daemon_shards_set() tells it the shards, for
 *   statistics; daemon_stop() forgets them and retires the generation.
 *
 *   daemon_reload() re-reads the configuration file ringmaild was started
 *   with, builds and checks the new policy generation (every script loads,
 *   registers and passes init), and only then publishes it to the shards.
 *   0 on success; -1 with a human-readable reason in err (FILE:LINE: text
 *   lines, newline separated) when anything fails, in which case the
 *   running configuration stays. SIGHUP and `config reload` both call it.
 *
 *   daemon_scriptlet_set() changes one interpreter-cache option at run time
 *   (script_ttl, gc_pause, gc_stepmul, max_spare_per_master, reap_interval;
 *   always_gc is accepted and ignored). 0, or -1 with err.
 *
 *   daemon_scriptlet_stats() sums the shards' interpreter-cache counters.
 *   The figures are read without locks from counters each shard publishes
 *   once per tick, so they may be up to one tick old.
 * THREADS
 *   Any thread except a shard's. Calls are serialized internally.
 */
#ifndef RINGMAIL_DAEMON_H
#define RINGMAIL_DAEMON_H

#include <stddef.h>
#include <stdint.h>

struct daemon_scriptlet_stats {
    uint64_t generation;         /* current policy generation, 0 = none */
    uint64_t scripts;            /* scripts in it */
    uint64_t states;             /* master states alive, all generations */
    uint64_t spare_threads;      /* cached coroutines */
    uint64_t callouts;           /* callouts run */
    uint64_t callout_errors;     /* failed closed (4xx given) */
    uint64_t budget_exhausted;   /* instruction or memory budget hit */
    uint64_t yields;             /* callouts suspended on DNS/sleep/... */
    uint64_t lua_bytes;          /* memory held by all policy states */
};

struct conf;
struct shard;

int daemon_start(const char *conf_path, const struct conf *c, char *err,
                 size_t errlen);
void daemon_shards_set(struct shard *shards, unsigned count);
void daemon_stop(void);
int daemon_reload(char *err, size_t errlen);
int daemon_scriptlet_set(const char *option, const char *value,
                         char *err, size_t errlen);
void daemon_scriptlet_stats(struct daemon_scriptlet_stats *out);

#endif
