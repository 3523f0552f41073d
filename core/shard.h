/*
 * shard - one thread owning a ring, its listeners, sessions, arenas
 *         and spool
 *
 * SYNOPSIS
 *   void shard_setup(struct shard *sh, unsigned id, unsigned shard_count,
 *                    int cpu, const struct conf *conf,
 *                    struct shard_listen *ls, size_t ls_count);
 *   int  shard_start(struct shard *sh);
 *   int  shard_wait_started(struct shard *sh);
 *   void shard_drain_remote(struct shard *sh, struct xshard_sender *tx);
 *   void shard_stop_remote(struct shard *sh, struct xshard_sender *tx);
 *   void shard_reopen_logs_remote(struct shard *sh,
 *                                 struct xshard_sender *tx);
 *   void shard_join(struct shard *sh);
 * DESCRIPTION
 *   shard_setup() fills the struct in the main thread; shard_start()
 *   creates the thread, which pins itself to cpu (-1: not pinned, the
 *   default; Pin_Shards), creates its ring (SINGLE_ISSUER|DEFER_TASKRUN
 *   must be created by the thread that submits), starts its delivery side
 *   (delivery.h), recovers its spool (live messages are queued for
 *   delivery), registers its provided-buffer ring, arms multishot accept
 *   on its listening sockets and runs its loop.
 *   shard_wait_started() blocks the main thread until the shard serves (0)
 *   or failed to start (-errno).
 *
 *   shard_drain_remote() (main thread): stop taking mail, answer new
 *   connections 421 4.3.2, let open transactions finish, then leave the
 *   loop once every session is closed and the spool is idle.
 *   shard_stop_remote(): the drain budget is spent; close every session
 *   now (a session waiting for its commit still gets its answer first).
 *   shard_reopen_logs_remote() (SIGUSR1): reopen the delivery log after
 *   logrotate moved it.
 * OWNERSHIP
 *   Everything reachable from struct shard, except conf (the main thread's)
 *   and the listening fds (created by the main thread, closed by the shard).
 * THREADS
 *   Functions named *_remote and shard_setup/start/wait/join run in the
 *   main thread; everything else in session.c, listener.c runs in the shard.
 */
#ifndef RINGMAIL_SHARD_H
#define RINGMAIL_SHARD_H

#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>

#include "arena.h"
#include "conf.h"
#include "delivery.h"
#include "loop.h"
#include "smtp_server.h"
#include "spool.h"
#include "stats.h"
#include "xshard.h"

struct session;

/* One listening socket of this shard (its own SO_REUSEPORT socket). */
struct shard_listen {
    int fd;
    const struct conf_esmtp_listener *conf;
    const struct conf_listen *listen;
    struct op accept_op;
    struct shard *sh;
    int armed;
};

/* A list of sessions ordered by last activity, for timeouts. */
struct session_list {
    struct session *head;
    struct session *tail;
    unsigned count;
};

struct shard_stats {
    uint64_t sessions_accepted;
    uint64_t sessions_refused;
    uint64_t sessions_timed_out;
    uint64_t messages_received;
    uint64_t messages_rejected;
    uint64_t commit_failures;
    uint64_t messages_discarded; /* msg:discard(): 250, nothing kept */
    uint64_t recv_bytes;
    struct delivery_stats dlv;   /* outbound: delivery.h */
};

enum shard_state {
    SHARD_STATE_STARTING,
    SHARD_STATE_RUNNING,
    SHARD_STATE_DRAINING,
    SHARD_STATE_STOPPING,
    SHARD_STATE_DONE,
};

struct shard {
    unsigned id;
    unsigned shard_count;        /* shards in this process */
    int cpu;                     /* pinned to this CPU; -1: not pinned */
    pthread_t thread;
    sem_t started;
    int start_result;
    const struct conf *conf;
    enum shard_state state;

    struct loop loop;
    struct arena_pool pool;
    struct spool spool;
    char spool_dir[4096];
    struct delivery dlv;
    int dlv_ok;                  /* delivery_init() ran */
    struct policy_engine *policy;    /* Lua policy, policy.h */
    struct datasources *ds;          /* Redis datasources, datasource.h */
    struct smtp_limits limits;

    struct shard_listen *listens;
    size_t listen_count;

    /* provided buffers for multishot recv */
    struct io_uring_buf_ring *br;
    char *br_mem;
    unsigned br_count;
    unsigned br_size;

    /* sessions waiting for commands and sessions inside DATA */
    struct session_list idle_list;
    struct session_list data_list;
    struct session_list wait_list;   /* waiting for their commit */
    unsigned sessions;               /* all, refused ones included */
    unsigned sessions_active;        /* greeted, not yet freed */

    struct op tick_op;
    struct __kernel_timespec tick_ts;
    uint64_t drain_started_ms;

    struct xshard_box box;
    struct op box_op;
    struct xshard_msg msgs[XS_MAIN_KIND_COUNT];
    int ring_fd;

    struct shard_stats stats;

    /* the control thread: its own mailbox (one producer per box), and
     * the counters it reads (stats.h, control.h) */
    struct xshard_box ctl_box;
    struct op ctl_box_op;
    struct stats_pub pub;
};

void shard_setup(struct shard *sh, unsigned id, unsigned shard_count,
                 int cpu, const struct conf *conf, struct shard_listen *ls,
                 size_t ls_count);
int shard_start(struct shard *sh);
int shard_wait_started(struct shard *sh);
void shard_drain_remote(struct shard *sh, struct xshard_sender *tx);
void shard_stop_remote(struct shard *sh, struct xshard_sender *tx);
void shard_reopen_logs_remote(struct shard *sh, struct xshard_sender *tx);
void shard_join(struct shard *sh);

#define SHARD_BUF_GROUP 1

/* shard-internal, shared by shard.c, listener.c and session.c */
void session_start(struct shard *sh, struct shard_listen *l, int fd);
void session_shutdown(struct session *s);
void session_timeouts(struct shard *sh, uint64_t now);
void session_abort_all(struct shard *sh);
void session_drain_all(struct shard *sh);
void shard_buf_return(struct shard *sh, unsigned bid);
void shard_ctl_box_done(struct op *op, int res, uint32_t flags);

#endif
