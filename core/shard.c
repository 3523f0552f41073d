/*
 * shard - see shard.h
 *
 * The life of a shard thread: pin (Pin_Shards), create the ring, start delivery, recover
 * the spool (into delivery's queue), register the provided buffers, arm
 * accept on every listening socket, arm the tick, then loop until DONE.
 * Each turn's before-wait hook runs delivery's scheduler, flushes the
 * spool's group commit (messages and done-marks) and advances the
 * shutdown state machine:
 *
 *   RUNNING --drain msg--> DRAINING --no greeted session, no delivery in
 *   flight, spool idle--> STOPPING (accepts cancelled) --no session, no
 *   outbound connection, spool and delivery log idle--> DONE
 *
 * Draining starts no new delivery; a delivery in flight gets its reply
 * and its done-marks, so a 250 is never left unmarked by a clean stop.
 * A spent drain budget (Shutdown_Timeout) or a stop message jumps to
 * STOPPING, closes every session that is not waiting for a commit and
 * every outbound connection (delivery_abort).
 */
#include "datasource.h"
#include "policy.h"
#include "shard.h"

#include <ck_pr.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "listener.h"
#include "log.h"
#include "util.h"

#define SHARD_SQ_ENTRIES   1024
#define SHARD_CQ_ENTRIES   16384
#define SHARD_BUF_COUNT    512   /* provided recv buffers per shard */
#define SHARD_BUF_SIZE     16384
#define SHARD_CHUNK_BYTES  4096  /* arena chunk: one idle session fits in one */
#define SHARD_CHUNK_SPARE  1024  /* chunks kept for reuse: 4 MiB */
#define SHARD_TICK_MS      250


static const char *const shard_state_names[] = {
    [SHARD_STATE_STARTING] = "starting",
    [SHARD_STATE_RUNNING] = "running",
    [SHARD_STATE_DRAINING] = "draining",
    [SHARD_STATE_STOPPING] = "stopping",
    [SHARD_STATE_DONE] = "done",
};


static const char *
shard_state_name(enum shard_state st)
{
    return (unsigned)st < ARRAY_SIZE(shard_state_names)
               ? shard_state_names[st] : "?";
}


static void
shard_set_state(struct shard *sh, enum shard_state st)
{
    ck_pr_store_int((int *)&sh->state, (int)st);
    stats_publish(&sh->pub, sh);
}


static void
shard_new_id(void *arg, char id[SMTP_ID_MAX])
{
    struct shard *sh = arg;

    _Static_assert(SMTP_ID_MAX >= SPOOL_ID_MAX, "id sizes");
    spool_next_id(&sh->spool, id);
}


void
shard_setup(struct shard *sh, unsigned id, unsigned shard_count, int cpu,
            const struct conf *conf, struct shard_listen *ls, size_t ls_count)
{
    size_t i;

    memset(sh, 0, sizeof *sh);
    sh->id = id;
    sh->shard_count = shard_count;
    sh->cpu = cpu;
    sh->conf = conf;
    sh->listens = ls;
    sh->listen_count = ls_count;
    for (i = 0; i < ls_count; i++)
        ls[i].sh = sh;
    snprintf(sh->spool_dir, sizeof sh->spool_dir, "%s/%u", conf->spool_base,
             id);
    sh->limits.hostname = conf->hostname;
    sh->limits.message_max = conf->max_message_size;
    sh->limits.rcpt_max = conf->max_recipients;
    sh->limits.line_max = 2048;  /* RFC 5321 says 512; extensions need more */
    sh->limits.new_id = shard_new_id;
    sh->limits.new_id_arg = sh;
    sem_init(&sh->started, 0, 0);
    xshard_box_init(&sh->box);
    xshard_box_init(&sh->ctl_box);
    sh->state = SHARD_STATE_STARTING;
}


/* shard_buf_return - give a provided recv buffer back to the kernel */
void
shard_buf_return(struct shard *sh, unsigned bid)
{
    ASSERT(bid < sh->br_count);
    io_uring_buf_ring_add(sh->br, sh->br_mem + (size_t)bid * sh->br_size,
                          sh->br_size, (unsigned short)bid,
                          io_uring_buf_ring_mask(sh->br_count), 0);
    io_uring_buf_ring_advance(sh->br, 1);
}


/*
 * shard_bufs_init - register the provided-buffer ring. liburing 2.3 has no
 * io_uring_setup_buf_ring(): the ring memory is ours, page-aligned.
 */
static int
shard_bufs_init(struct shard *sh)
{
    struct io_uring_buf_reg reg;
    size_t ring_bytes = SHARD_BUF_COUNT * sizeof(struct io_uring_buf);
    void *mem;
    unsigned i;
    int rc;

    sh->br_count = SHARD_BUF_COUNT;
    sh->br_size = SHARD_BUF_SIZE;
    if (posix_memalign(&mem, 4096, ring_bytes) != 0)
        return -ENOMEM;
    sh->br = mem;
    sh->br_mem = xmalloc((size_t)sh->br_count * sh->br_size);
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)sh->br;
    reg.ring_entries = sh->br_count;
    reg.bgid = SHARD_BUF_GROUP;
    rc = io_uring_register_buf_ring(&sh->loop.ring, &reg, 0);
    if (rc < 0)
        return rc;
    io_uring_buf_ring_init(sh->br);
    for (i = 0; i < sh->br_count; i++) {
        io_uring_buf_ring_add(sh->br, sh->br_mem + (size_t)i * sh->br_size,
                              sh->br_size, (unsigned short)i,
                              io_uring_buf_ring_mask(sh->br_count), (int)i);
    }
    io_uring_buf_ring_advance(sh->br, (int)sh->br_count);
    return 0;
}


static void
shard_bufs_fini(struct shard *sh)
{
    if (sh->br != NULL)
        io_uring_unregister_buf_ring(&sh->loop.ring, SHARD_BUF_GROUP);
    free(sh->br);
    free(sh->br_mem);
    sh->br = NULL;
    sh->br_mem = NULL;
}


/* shard_stop_listening - cancel every multishot accept */
static void
shard_stop_listening(struct shard *sh)
{
    size_t i;

    for (i = 0; i < sh->listen_count; i++) {
        struct shard_listen *l = &sh->listens[i];
        struct io_uring_sqe *sqe;

        if (!l->armed)
            continue;
        /* The cancel's own completion needs no action: no op. */
        sqe = loop_sqe(&sh->loop, NULL);
        io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)&l->accept_op, 0);
    }
}


static void
shard_enter_stopping(struct shard *sh)
{
    if (sh->state >= SHARD_STATE_STOPPING)
        return;
    shard_set_state(sh, SHARD_STATE_STOPPING);
    shard_stop_listening(sh);
    if (sh->spool.dir != NULL)
        spool_hurry(&sh->spool);
}


static void shard_tick_arm(struct shard *sh);


static void
shard_tick_done(struct op *op, int res, uint32_t flags)
{
    struct shard *sh = container_of(op, struct shard, tick_op);
    uint64_t now = now_ms();
    size_t i;

    session_timeouts(sh, now);
    if (sh->state == SHARD_STATE_DRAINING &&
        now - sh->drain_started_ms >= sh->conf->shutdown_timeout_ms) {
        log_panic("shard", "shard %u: drain budget spent, closing %u "
                  "sessions", sh->id, sh->sessions_active);
        shard_enter_stopping(sh);
        session_abort_all(sh);
        delivery_abort(&sh->dlv);
    }
    delivery_tick(&sh->dlv, now);
    policy_engine_tick(sh->policy, now);
    stats_publish(&sh->pub, sh);
    /* Listeners whose accept ended on an error are re-armed here. */
    for (i = 0; i < sh->listen_count; i++) {
        if (!sh->listens[i].armed && sh->state <= SHARD_STATE_DRAINING)
            listener_arm(&sh->listens[i]);
    }
    if (sh->state != SHARD_STATE_DONE)
        shard_tick_arm(sh);
}


static void
shard_tick_arm(struct shard *sh)
{
    struct io_uring_sqe *sqe;

    sh->tick_op.done = shard_tick_done;
    sh->tick_ts.tv_sec = SHARD_TICK_MS / 1000;
    sh->tick_ts.tv_nsec = (long long)(SHARD_TICK_MS % 1000) * 1000000;
    sqe = loop_sqe(&sh->loop, &sh->tick_op);
    io_uring_prep_timeout(sqe, &sh->tick_ts, 0, 0);
}


/* shard_box_done - the main thread posted messages: handle them all */
static void
shard_box_done(struct op *op, int res, uint32_t flags)
{
    struct shard *sh = container_of(op, struct shard, box_op);
    struct xshard_msg *m;

    while ((m = xshard_recv(&sh->box)) != NULL) {
        switch (m->kind) {
        case XS_MAIN_SHARD_DRAIN:
            if (sh->state == SHARD_STATE_RUNNING) {
                shard_set_state(sh, SHARD_STATE_DRAINING);
                sh->drain_started_ms = now_ms();
                session_drain_all(sh);
                delivery_drain(&sh->dlv);
                spool_hurry(&sh->spool);
            }
            break;
        case XS_MAIN_SHARD_STOP:
            shard_enter_stopping(sh);
            session_abort_all(sh);
            delivery_abort(&sh->dlv);
            break;
        case XS_MAIN_SHARD_LOGS_REOPEN:
            if (sh->dlv.log_ok)
                delivery_log_reopen(&sh->dlv.log);
            break;
        default:
            panic("shard %u: unknown message kind %d", sh->id, m->kind);
        }
        ck_pr_store_int(&m->handled, 1);
    }
}


/* shard_before_wait - group commit, then move the shutdown along */
static void
shard_before_wait(struct loop *lp, void *arg)
{
    struct shard *sh = arg;
    size_t i;

    delivery_flush(&sh->dlv);
    spool_flush(&sh->spool);
    if (sh->state == SHARD_STATE_DRAINING && sh->sessions_active == 0 &&
        delivery_idle(&sh->dlv) && spool_idle(&sh->spool))
        shard_enter_stopping(sh);
    if (sh->state == SHARD_STATE_STOPPING && sh->sessions == 0 &&
        delivery_idle(&sh->dlv) && spool_idle(&sh->spool)) {
        for (i = 0; i < sh->listen_count; i++) {
            if (sh->listens[i].armed)
                return;
        }
        shard_set_state(sh, SHARD_STATE_DONE);
        loop_stop(&sh->loop);
    }
}


/* shard_recovered - spool_open() found a live message: queue it */
static void
shard_recovered(void *arg, const struct spool_found *f)
{
    struct shard *sh = arg;

    /* f->body is valid only during this call: delivery copies it. */
    delivery_recovered(&sh->dlv, f);
}


/* shard_relay_check - delivery asks policy's CheckFile about m */
static int
shard_relay_check(void *arg, const struct dlv_msg *m,
                  struct delivery_relay *out)
{
    struct shard *sh = arg;
    struct policy_relay_msg rm;

    if (!policy_engine_active(sh->policy))
        return 0;
    rm.id = m->id;
    rm.created_unix = m->received_unix;
    rm.return_path = m->sender;
    rm.rcpts = (const char *const *)m->rcpts;
    rm.rcpt_count = m->rcpt_count;
    rm.data = m->body;
    rm.data_bytes = m->body_bytes;
    return policy_relay_check(sh->policy, &rm, &out->skip, &out->priority,
                              out->reason, sizeof out->reason);
}


static int
shard_init(struct shard *sh)
{
    struct delivery_env env;
    cpu_set_t set;
    size_t i;
    int rc;

    /*
     * Pinning is Pin_Shards' choice, off by default: a pinned shard woken
     * while another process runs on its CPU waits for that one's slice
     * even when the other CPU is idle, and every '.'-to-250 wait is such
     * a wakeup (bench/RESULTS.md, "accept": 2 pinned shards beside
     * smtp-source gave half the unpinned rate).
     */
    if (sh->cpu >= 0) {
        CPU_ZERO(&set);
        CPU_SET(sh->cpu, &set);
        rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
        if (rc != 0)
            log_panic("shard", "shard %u: cannot pin to CPU %d: %s",
                      sh->id, sh->cpu, strerror(rc));
    }
    rc = loop_init(&sh->loop, SHARD_SQ_ENTRIES, SHARD_CQ_ENTRIES);
    if (rc < 0) {
        log_panic("shard", "shard %u: io_uring setup: %s", sh->id,
                  strerror(-rc));
        return rc;
    }
    sh->ring_fd = sh->loop.ring.ring_fd;
    arena_pool_init(&sh->pool, SHARD_CHUNK_BYTES, SHARD_CHUNK_SPARE);
    memset(&env, 0, sizeof env);
    env.lp = &sh->loop;
    env.sp = &sh->spool;
    env.conf = sh->conf;
    env.pool = &sh->pool;
    env.shard_id = sh->id;
    env.shard_count = sh->shard_count;
    env.stats = &sh->stats.dlv;
    env.relay_check = shard_relay_check;
    env.relay_arg = sh;
    delivery_init(&sh->dlv, &env);
    sh->dlv_ok = 1;
    sh->policy = policy_engine_create(&sh->loop, &sh->dlv.dns, sh->conf,
                                      sh->id);
    sh->ds = datasources_create(&sh->loop, sh->conf, sh->id);
    policy_engine_set_datasources(sh->policy, sh->ds);
    rc = spool_open(&sh->spool, &sh->loop, sh->spool_dir, sh->id,
                    sh->conf->spool_segment_size, shard_recovered, sh);
    if (rc < 0) {
        log_panic("shard", "shard %u: spool %s: %s", sh->id, sh->spool_dir,
                  strerror(-rc));
        return rc;
    }
    if (sh->spool.recovered.live || sh->spool.recovered.torn ||
        sh->spool.recovered.corrupt) {
        log_panic("spool", "shard %u: recovered %llu live messages from "
                  "%llu segments (%llu torn, %llu corrupt)", sh->id,
                  (unsigned long long)sh->spool.recovered.live,
                  (unsigned long long)sh->spool.recovered.segments,
                  (unsigned long long)sh->spool.recovered.torn,
                  (unsigned long long)sh->spool.recovered.corrupt);
    }
    rc = shard_bufs_init(sh);
    if (rc < 0) {
        log_panic("shard", "shard %u: provided buffers: %s", sh->id,
                  strerror(-rc));
        return rc;
    }
    loop_before_wait(&sh->loop, shard_before_wait, sh);
    sh->box_op.done = shard_box_done;
    sh->ctl_box_op.done = shard_ctl_box_done;
    for (i = 0; i < sh->listen_count; i++)
        listener_arm(&sh->listens[i]);
    shard_tick_arm(sh);
    /* Submit the accepts now, so that "ready" means accepting. */
    rc = io_uring_submit(&sh->loop.ring);
    if (rc < 0)
        return rc;
    return 0;
}


static void
shard_fini(struct shard *sh)
{
    size_t i;

    if (sh->dlv_ok)
        delivery_fini(&sh->dlv);
    if (sh->spool.dir != NULL)
        spool_close(&sh->spool);
    shard_bufs_fini(sh);
    /* Last before the ring goes: delivery_fini() and spool_close() turn
     * the loop, and its tick and policy timers use the engine. */
    policy_engine_destroy(sh->policy);
    sh->policy = NULL;
    loop_fini(&sh->loop);
    /* After the ring: no Redis op can complete into freed memory. */
    datasources_destroy(sh->ds);
    sh->ds = NULL;
    for (i = 0; i < sh->listen_count; i++)
        close(sh->listens[i].fd);
    arena_pool_fini(&sh->pool);
}


static void *
shard_main(void *arg)
{
    struct shard *sh = arg;
    char name[16];
    int rc;

    snprintf(name, sizeof name, "shard-%u", sh->id);
    pthread_setname_np(pthread_self(), name);
    rc = shard_init(sh);
    sh->start_result = rc;
    if (rc < 0) {
        shard_set_state(sh, SHARD_STATE_DONE);
        sem_post(&sh->started);
        return NULL;
    }
    shard_set_state(sh, SHARD_STATE_RUNNING);
    sem_post(&sh->started);
    while (ck_pr_load_int((int *)&sh->state) != SHARD_STATE_DONE)
        loop_run_once(&sh->loop, 1000);
    log_panic("shard", "shard %u: %s: %llu sessions, %llu messages, "
              "%llu fdatasyncs, %llu segments reclaimed", sh->id,
              shard_state_name(sh->state),
              (unsigned long long)sh->stats.sessions_accepted,
              (unsigned long long)sh->stats.messages_received,
              (unsigned long long)sh->spool.fdatasyncs,
              (unsigned long long)sh->spool.segments_reclaimed);
    log_panic("shard", "shard %u: delivery: %llu delivered, %llu deferred, "
              "%llu bounced, %llu expired, %llu DSNs, %llu connections, "
              "%llu messages left in the spool, duplicate window max %llu "
              "(now %llu), %llu abandoned", sh->id,
              (unsigned long long)sh->stats.dlv.delivered,
              (unsigned long long)sh->stats.dlv.deferred,
              (unsigned long long)sh->stats.dlv.bounced,
              (unsigned long long)sh->stats.dlv.expired,
              (unsigned long long)sh->stats.dlv.dsns,
              (unsigned long long)sh->stats.dlv.connections,
              (unsigned long long)sh->stats.dlv.messages_live,
              (unsigned long long)sh->stats.dlv.dup_window_max,
              (unsigned long long)sh->stats.dlv.dup_window,
              (unsigned long long)sh->stats.dlv.abandoned);
    shard_fini(sh);
    return NULL;
}


int
shard_start(struct shard *sh)
{
    return -pthread_create(&sh->thread, NULL, shard_main, sh);
}


int
shard_wait_started(struct shard *sh)
{
    while (sem_wait(&sh->started) < 0 && errno == EINTR)
        ;
    return sh->start_result;
}


static void
shard_post(struct shard *sh, struct xshard_sender *tx, enum xshard_kind kind)
{
    struct xshard_msg *m = &sh->msgs[kind];
    int rc;

    if (ck_pr_load_int((int *)&sh->state) == SHARD_STATE_DONE)
        return;
    m->kind = kind;
    rc = xshard_send_remote(tx, &sh->box, sh->ring_fd,
                            (uint64_t)(uintptr_t)&sh->box_op, m);
    if (rc < 0 && rc != -ENXIO)
        log_panic("shard", "shard %u: cannot post message %d: %s", sh->id,
                  kind, strerror(-rc));
}


void
shard_drain_remote(struct shard *sh, struct xshard_sender *tx)
{
    shard_post(sh, tx, XS_MAIN_SHARD_DRAIN);
}


void
shard_stop_remote(struct shard *sh, struct xshard_sender *tx)
{
    shard_post(sh, tx, XS_MAIN_SHARD_STOP);
}


void
shard_reopen_logs_remote(struct shard *sh, struct xshard_sender *tx)
{
    shard_post(sh, tx, XS_MAIN_SHARD_LOGS_REOPEN);
}


void
shard_join(struct shard *sh)
{
    pthread_join(sh->thread, NULL);
    sem_destroy(&sh->started);
}
