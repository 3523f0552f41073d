/*
 * policy - Lua policy: script generations, per-shard interpreter caches,
 *          and the callouts sessions run (Momentum scriptlets)
 *
 * SYNOPSIS
 *   Main thread:
 *   struct policy_gen *policy_gen_build(const struct conf *c,
 *                                       char *err, size_t errlen);
 *   void policy_gen_publish(struct policy_gen *g);
 *   void policy_gen_put(struct policy_gen *g);
 *   int  policy_option_set(const char *name, const char *value,
 *                          char *err, size_t errlen);
 *
 *   Shard:
 *   struct policy_engine *policy_engine_create(struct loop *lp,
 *                                              struct dns *dns,
 *                                              const struct conf *c,
 *                                              unsigned shard_id);
 *   void policy_engine_tick(struct policy_engine *pe, uint64_t now_ms);
 *   void policy_engine_set_datasources(struct policy_engine *pe,
 *                                      struct datasources *ds);
 *   void policy_engine_destroy(struct policy_engine *pe);
 *   struct policy_sess *policy_sess_open(struct policy_engine *pe,
 *                                        struct arena_pool *pool,
 *                                        const struct policy_conn *conn);
 *   int  policy_wants(const struct policy_sess *ps, enum policy_phase ph);
 *   int  policy_run(struct policy_sess *ps, enum policy_phase ph,
 *                   const struct policy_txn *txn, policy_done_fn *done,
 *                   void *arg);
 *   const struct policy_result *policy_result(const struct policy_sess *ps);
 *   void policy_sess_close(struct policy_sess *ps);
 * DESCRIPTION
 *   A generation is what one `scriptlet` configuration compiles to: the
 *   scripts' source text (read once, by the main thread) and every Lua
 *   module they require() while loading. policy_gen_build() reads them and
 *   proves them in a scratch state: every script loads, every module it
 *   registers has a usable callout, every init() returns true. On any
 *   failure it returns NULL with every reason in err (one "FILE:LINE:
 *   text" per line) and nothing changes. policy_gen_publish() makes it the
 *   current generation: shards pick it up at their next tick.
 *
 *   Each shard has an engine: per generation a master lua_State (its
 *   scripts loaded, its modules registered, its init() run) and a stack of
 *   spare coroutines that callouts borrow and give back. A session pins
 *   the master current when it opened; new sessions take the newest one,
 *   and an old master is closed (deinit() first) once no session holds it.
 *   A master that reached the memory limit, or older than script_ttl, is
 *   replaced the same way.
 *
 *   policy_run() runs the callouts of one phase, module by module in load
 *   order. A callout returns msys.core.VALIDATE_CONT (next module),
 *   VALIDATE_DONE (skip the rest of the phase) or VALIDATE_AGAIN (run it
 *   again after again_delay). vctx:set_code() with a 4xx or 5xx ends the
 *   phase with that reply whatever the return value. A callout that waits
 *   (msys.sleep, msys.dnsLookup) yields; the shard goes on; completion
 *   resumes it. policy_run() returns 0 when the phase finished at once
 *   (the result is ready) or 1 when it went on in the background, in
 *   which case done(ps, arg) is called exactly once, later, from the loop.
 *
 *   Fail closed: a Lua error, a missing or wrong return value, an
 *   exhausted instruction budget (a count hook; the JIT is off unless
 *   `jit = true`) or memory limit ends the phase with 421 4.3.0 and a
 *   disconnect at connect and EHLO, 451 4.3.0 elsewhere, and a paniclog
 *   line naming the module and the callout.
 * OWNERSHIP
 *   A generation is reference-counted (ck_pr): the publisher's reference
 *   plus one per shard master built from it. The engine and its masters
 *   belong to the shard. A policy_sess lives in the session arena given to
 *   policy_sess_open(); its per-message data in an arena of its own, reset
 *   at each MAIL.
 * THREADS
 *   policy_gen_* and policy_option_set from one non-shard thread at a time
 *   (daemon.c serializes them); everything else shard-local, lock-free.
 * SECURITY
 *   Scripts are the operator's, but they handle the peer's data: states
 *   are sandboxed (no io, os.execute, C modules, FFI, bytecode, debug);
 *   header values with CR, LF or NUL are refused.
 * SEE ALSO
 *   docs/lua-policy.md, policy_api.c (the msys functions), policy_msg.c
 */
#ifndef RINGMAIL_POLICY_H
#define RINGMAIL_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "arena.h"
#include "conf.h"

struct loop;
struct dns;
struct datasources;

enum policy_phase {
    POLICY_CONNECT,
    POLICY_EHLO,
    POLICY_MAILFROM,
    POLICY_RCPTTO,
    POLICY_RCPTTO_LIST,
    POLICY_RCPTTO_LIST_FINAL,
    POLICY_DATA,
    POLICY_DATA_SPOOL,
    POLICY_DATA_SPOOL_EACH_RCPT,
    POLICY_SET_BINDING,
    POLICY_HOOK_ROUTING,         /* core_config_get_message_routing_domain */
    POLICY_PHASE_COUNT,
};

#define POLICY_VALIDATE_CONT 0
#define POLICY_VALIDATE_DONE 1
#define POLICY_VALIDATE_AGAIN 2

#define POLICY_TEXT_MAX 512

/* What a session knows about its connection, for vctx and macros. */
struct policy_conn {
    const char *peer_ip;
    unsigned peer_port;
    const char *local_ip;        /* NULL: asked of fd when a script wants it */
    unsigned local_port;
    const char *hostname;        /* ours */
    int fd;                      /* the connection, or -1 */
};

/* The transaction a callout sees through msg (NULL fields: not yet). */
struct policy_txn {
    const char *id;
    const char *helo;
    const char *str;             /* the command argument of this phase */
    const char *sender;
    char *const *rcpts;
    unsigned rcpt_count;
    const char *rcpt;            /* RCPT phase and each_rcpt: this one */
    const struct iovec *body;    /* data phases: the message, unstuffed */
    unsigned body_count;
    uint64_t body_bytes;
};

/* The outcome of a phase. */
struct policy_result {
    int code;                    /* 0: go on as usual; else the reply code */
    char text[POLICY_TEXT_MAX];  /* the whole reply line when code != 0 */
    unsigned disconnect : 1;     /* close after the reply */
    unsigned discard : 1;        /* msg:discard(): say 250, keep nothing */
};

/* What the data phases changed, for the commit (policy_msg.c). */
struct policy_msg_out {
    const char *sender;          /* msg:mailfrom(new), or NULL */
    char *const *rcpts;          /* msg:rcptto / recipient changes, or NULL */
    unsigned rcpt_count;
    const struct iovec *body;    /* headers changed: the new body, or NULL */
    unsigned body_count;
    uint64_t body_bytes;
    const char *binding;         /* msg:binding(), or NULL */
    const char *binding_group;
    const char *routing_domain;  /* msg:routing_domain(), or NULL */
    unsigned priority;           /* 1..100, 0: not set (50) */
};

struct policy_gen;
struct policy_engine;
struct policy_sess;

typedef void policy_done_fn(struct policy_sess *ps, void *arg);

/* main thread */
struct policy_gen *policy_gen_build(const struct conf *c, char *err,
                                    size_t errlen);
void policy_gen_publish(struct policy_gen *g);
void policy_gen_put(struct policy_gen *g);
void policy_gen_unpublish(void);
uint64_t policy_generation_id(void);
uint64_t policy_generation_scripts(void);
int policy_option_set(const char *name, const char *value, char *err,
                      size_t errlen);

/* shard */
struct policy_engine *policy_engine_create(struct loop *lp, struct dns *dns,
                                           const struct conf *c,
                                           unsigned shard_id);
void policy_engine_tick(struct policy_engine *pe, uint64_t now_ms);
void policy_engine_set_datasources(struct policy_engine *pe,
                                   struct datasources *ds);
void policy_engine_destroy(struct policy_engine *pe);
int policy_engine_active(const struct policy_engine *pe);

struct policy_sess *policy_sess_open(struct policy_engine *pe,
                                     struct arena_pool *pool,
                                     struct arena *session_arena,
                                     const struct policy_conn *conn);
int policy_wants(const struct policy_sess *ps, enum policy_phase ph);
int policy_run(struct policy_sess *ps, enum policy_phase ph,
               const struct policy_txn *txn, policy_done_fn *done,
               void *arg);
const struct policy_result *policy_result(const struct policy_sess *ps);
int policy_msg_out(struct policy_sess *ps, struct policy_msg_out *out);
void policy_txn_begin(struct policy_sess *ps);
void policy_ctx_conn_set(struct policy_sess *ps, const char *key,
                         const char *val);
void policy_ctx_mess_set(struct policy_sess *ps, const char *key,
                         const char *val);
int policy_busy(const struct policy_sess *ps);
void policy_cancel(struct policy_sess *ps);
void policy_sess_close(struct policy_sess *ps);

const char *policy_phase_name(enum policy_phase ph);

/* Relay control: a message about to be sent, as CheckFile sees it. */
struct policy_relay_msg {
    const char *id;
    int64_t created_unix;
    const char *return_path;
    const char *const *rcpts;
    unsigned rcpt_count;
    const char *data;            /* the whole message */
    uint64_t data_bytes;
};
int policy_relay_check(struct policy_engine *pe,
                       const struct policy_relay_msg *m, int *skip,
                       unsigned *priority, char *reason, size_t reason_len);

/* statistics, summed over shards by daemon.c */
struct policy_stats {
    uint64_t generation;
    uint64_t masters;
    uint64_t spare_threads;
    uint64_t callouts;
    uint64_t callout_errors;
    uint64_t budget_exhausted;
    uint64_t yields;
    uint64_t lua_bytes;
};
void policy_engine_stats(const struct policy_engine *pe,
                         struct policy_stats *out);

#endif
