/*
 * policy_int - what policy.c, policy_gen.c, policy_api.c and policy_msg.c
 *              share; nothing outside the policy files includes it
 *
 * DESCRIPTION
 *   A master is one lua_State built from one generation. A run is one
 *   phase of one session in progress: at most one per session, embedded
 *   in the session's struct policy_sess. While a run's coroutine executes,
 *   policy_cur (thread-local) points at it: the msys functions find their
 *   session through it, and a vctx or msg object is valid only while the
 *   run that created it is the one executing (its serial matches), so a
 *   script that keeps one in a global cannot reach a dead session.
 */
#ifndef RINGMAIL_POLICY_INT_H
#define RINGMAIL_POLICY_INT_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "loop.h"
#include "policy.h"

/* Methods a module may have beyond the phases. */
#define POLICY_M_INIT (1u << POLICY_PHASE_COUNT)
#define POLICY_M_DEINIT (1u << (POLICY_PHASE_COUNT + 1))
#define POLICY_M_DEALLOC (1u << (POLICY_PHASE_COUNT + 2))
#define POLICY_M_CHECKFILE (1u << (POLICY_PHASE_COUNT + 4)) /* relay control */

#define POLICY_C_SLACK (1u << 20)  /* see policy_panic() */
#define RUNNERS_KEY "ringmail.runners"  /* registry: the runner's threads */
#define POLICY_HOOK_COUNT 1000    /* VM instructions between budget checks */
#define POLICY_CTX_CONN_MAX (64 * 1024)    /* bytes of VCTX_CONN values */
#define POLICY_CTX_MESS_MAX (256 * 1024)   /* bytes of VCTX_MESS values */
#define POLICY_CTX_KEY_MAX 256

/* context stores: vctx (VCTX_CONN, VCTX_MESS) and msg (ECMESS_CTX_*) */
enum policy_ctx {
    POLICY_CTX_VCONN,
    POLICY_CTX_VMESS,
    POLICY_CTX_MCONN,
    POLICY_CTX_MMESS,
    POLICY_CTX_COUNT,
};

/* One script's or one required module's source, read by the main thread. */
struct policy_src {
    char *name;                  /* script stanza name or module name */
    char *path;
    char *text;
    size_t len;
};

/* The scriptlet options, changeable at run time (config set). */
struct policy_opts {
    unsigned script_ttl_ms;
    unsigned gc_pause;
    unsigned gc_stepmul;
    unsigned max_spare;
    unsigned reap_interval_ms;
    unsigned instruction_budget;
    unsigned again_delay_ms;
    uint64_t memory_limit;
    int jit;
};

struct policy_gen {
    int refs;                    /* ck_pr */
    uint64_t id;
    struct policy_opts opts;     /* at build time; live values in
                                  * policy_opts_live */
    struct policy_src *scripts;
    size_t script_count;
    struct policy_src *mods;     /* modules the scripts require()d */
    size_t mod_count;
};

struct policy_module {
    char *name;
    int ref;                     /* the module table, in the registry */
    unsigned methods;            /* 1 << phase, POLICY_M_* */
};

/* msys.timer.after/every/at: one Lua closure run from the shard's loop */
struct policy_timer {
    struct op op;
    struct op cancel_op;
    struct __kernel_timespec ts;
    struct policy_master *m;     /* NULL: orphaned, freed by its CQE */
    struct policy_engine *pe;
    int fn_ref;
    unsigned interval_ms;        /* 0: once */
    unsigned armed : 1;
    unsigned cancel_busy : 1;
    char name[64];
    struct policy_timer *next;
};

struct policy_master {
    struct policy_engine *pe;    /* NULL: the main thread's check state */
    const struct policy_opts *opts;  /* live ones, or the gen's for a check */
    struct policy_gen *gen;
    lua_State *L;
    size_t bytes;
    size_t limit;
    int oom;                     /* over memory_limit even after a full
                                  * collection (or refused): replace it */
    int over;                    /* past memory_limit: the hook decides */
    int in_c;                    /* the runner's own Lua calls: the
                                  * allocator allows POLICY_C_SLACK more */
    unsigned users;              /* sessions pinning it */
    int *spare;                  /* registry refs of idle coroutines */
    unsigned spare_count;
    unsigned spare_cap;
    unsigned borrowed;
    unsigned hi_water;
    struct policy_module *mods;
    unsigned mod_count;
    unsigned methods;            /* OR of every module's */
    uint64_t created_ms;
    struct policy_timer *timers;
    struct policy_master *next;
};

struct policy_run;
/* A wait an msys function prepared: started only once the yield happened. */
typedef void policy_wait_fn(struct policy_run *r, void *arg);

struct policy_run {
    struct policy_sess *ps;
    enum policy_phase phase;
    unsigned mod;                /* index of the module being run */
    const struct policy_txn *txn;
    lua_State *co;
    int co_ref;
    uint64_t serial;
    long budget_left;            /* VM instructions */
    unsigned killed : 1;         /* budget spent: the hook yielded out */
    unsigned killed_mem : 1;     /* ... because of the memory limit */
    unsigned active : 1;         /* a phase is in progress */
    unsigned async : 1;          /* policy_run() already returned 1 */
    unsigned cancelled : 1;
    int waiting;                 /* POLICY_WAIT_*: what the yield awaits */
    policy_done_fn *done;
    void *done_arg;
    struct op timer_op;
    struct __kernel_timespec ts;
    unsigned timer_armed : 1;
    unsigned cancel_busy : 1;
    /* policy_wait_prepare(): what to start when the yield succeeds, or to
     * drop when it did not (a C boundary turned it into an error) */
    policy_wait_fn *wait_start;
    policy_wait_fn *wait_drop;
    void *wait_arg;
    int wait_kind;
    uint64_t wait_ms;            /* msys.sleep's delay */
};

enum {
    POLICY_WAIT_NONE,
    POLICY_WAIT_AGAIN,           /* VALIDATE_AGAIN's delay */
    POLICY_WAIT_SLEEP,           /* msys.sleep */
    POLICY_WAIT_DNS,             /* msys.dnsLookup */
    POLICY_WAIT_REDIS,           /* msys.db, msys.redis (lualib_db.c) */
};

struct policy_kv {
    struct policy_kv *next;
    char *key;
    char *val;
    size_t len;
    size_t cap;
};

struct policy_hdr {
    struct policy_hdr *next;
    char *name;                  /* as written */
    char *line;                  /* "Name: value\r\n", folded as received */
    const char *value;           /* in line: just after the colon */
    size_t len;
    int deleted;
};

struct policy_sess {
    struct policy_engine *pe;
    struct policy_master *m;
    struct arena_pool *pool;
    struct arena *arena;         /* the session's */
    struct arena *mess;          /* per message; reset at each MAIL */
    struct policy_conn conn;
    uint64_t conn_id;
    struct policy_kv *ctx[POLICY_CTX_COUNT];
    size_t ctx_bytes[POLICY_CTX_COUNT];
    unsigned invoked;            /* modules run at least once: bit per
                                  * module (validate_dealloc), first 32 */
    struct policy_run run;
    struct policy_result result;

    /* per message (mess arena): what the data phases changed */
    struct policy_hdr *hdrs;     /* parsed on first use */
    struct policy_hdr **hdr_tail;
    int hdrs_parsed;
    int hdrs_dirty;
    uint64_t hdr_bytes;          /* of the original header block */
    int hdr_blank;               /* it ends with the blank line */
    char *new_sender;
    char **new_rcpts;
    unsigned new_rcpt_count;
    char *binding;
    char *binding_group;
    char *routing_domain;
    unsigned priority;
    struct iovec *out_body;      /* built by policy_msg_out() */
};

struct policy_engine {
    struct loop *lp;
    struct dns *dns;
    const struct conf *conf;
    unsigned shard_id;
    struct policy_master *current;
    struct policy_master *old;   /* retired, still in use */
    struct policy_gen *gen_seen;
    uint64_t last_reap_ms;
    uint64_t next_conn_id;
    struct policy_timer *orphans;    /* timers of closed masters */
    struct datasources *ds;      /* the shard's, or NULL (datasource.h) */
    struct policy_stats stats;
};

extern struct policy_opts policy_opts_live;
extern __thread struct policy_run *policy_cur;
void policy_hook_reset(lua_State *L);
int policy_pcall(struct policy_master *m, int nargs, int nres,
                 const char **err);

/* policy.c */
struct policy_master *policy_master_build(struct policy_gen *g,
                                          struct policy_engine *pe,
                                          char *err, size_t errlen);
void policy_master_close(struct policy_master *m);
void policy_run_wake(struct policy_run *r, int nres);
void policy_wait_prepare(struct policy_run *r, int kind,
                         policy_wait_fn *start, policy_wait_fn *drop,
                         void *arg);
void policy_run_timer(struct policy_run *r, uint64_t ms, int kind);
void policy_paniclog(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

/* policy_api.c */
void policy_timers_close(struct policy_master *m);
void policy_timers_free(struct policy_engine *pe);
void policy_api_open(lua_State *L, struct policy_master *m);
int policy_api_modules(lua_State *L, struct policy_master *m, char *err,
                       size_t errlen);
struct policy_run *policy_check_run(lua_State *L);
void policy_ud_push(lua_State *L, struct policy_run *r, const char *mt);
struct policy_sess *policy_ud_check(lua_State *L, int idx, const char *mt,
                                    const char *what);
void policy_push_vctx(lua_State *L, struct policy_run *r);
void policy_reply_set(lua_State *L, struct policy_sess *ps, int code,
                      const char *text);
void policy_libs_open(lua_State *L);      /* policy_libs.c */
void lualib_db_open(lua_State *L);        /* lualib_db.c */
const struct policy_src *policy_gen_module(const struct policy_gen *g,
                                           const char *name);

/* policy_msg.c */
void policy_msg_open(lua_State *L);
void policy_push_callout_args(lua_State *L, struct policy_run *r);
int policy_ctx_set(struct policy_sess *ps, enum policy_ctx c,
                   const char *key, const char *val, size_t len);
const struct policy_kv *policy_ctx_get(const struct policy_sess *ps,
                                       enum policy_ctx c, const char *key);
void policy_msg_reset(struct policy_sess *ps);
enum policy_ctx policy_ctx_arg(lua_State *L, int idx, enum policy_ctx mess,
                               enum policy_ctx conn, const char *expected);
int policy_ctx_lua_get(lua_State *L, struct policy_sess *ps,
                       enum policy_ctx c, int kidx);
int policy_ctx_lua_set(lua_State *L, struct policy_sess *ps,
                       enum policy_ctx c, int kidx);

#endif
