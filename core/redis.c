/*
 * redis - see redis.h
 *
 * This file is the datasource: request records, commands failed without
 * trying (answered from the deferred pass, never inside redis_command()),
 * the circuit breaker, and which connection a command goes to.
 * redis_conn.c is one connection's state machine.
 */
#include "redis_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "util.h"

static const char *const breaker_names[] = {
    [REDIS_BREAKER_CLOSED] = "closed",
    [REDIS_BREAKER_OPEN] = "open",
    [REDIS_BREAKER_HALF_OPEN] = "half-open",
};


const char *
redis_breaker_name(enum redis_breaker b)
{
    return b < ARRAY_SIZE(breaker_names) ? breaker_names[b] : "?";
}


enum redis_breaker
redis_breaker_state(const struct redis *rd)
{
    return rd->breaker;
}


const struct redis_stats *
redis_stats(const struct redis *rd)
{
    return &rd->stats;
}


/* --- requests ------------------------------------------------------------ */

struct redis_req *
redis_req_new(struct redis *rd)
{
    struct redis_req *q = rd->spare;

    if (q != NULL) {
        rd->spare = q->next;
        rd->spare_count--;
    } else {
        q = xmalloc(sizeof *q);
    }
    memset(q, 0, sizeof *q);
    return q;
}


void
redis_req_free(struct redis *rd, struct redis_req *q)
{
    if (rd->spare_count >= REDIS_REQ_SPARE_MAX) {
        free(q);
        return;
    }
    q->next = rd->spare;
    rd->spare = q;
    rd->spare_count++;
}


static void
failed_done(struct op *op, int res, uint32_t flags)
{
    struct redis *rd = container_of(op, struct redis, failed_op);
    struct redis_req *q;

    rd->failed_queued = 0;
    /* Detach first: a callback may fail another command fast. */
    q = rd->failed;
    rd->failed = NULL;
    rd->failed_tail = &rd->failed;
    while (q != NULL) {
        struct redis_req *next = q->next;
        redis_done_fn *done = q->done;
        void *arg = q->arg;
        int qres = q->res;
        const char *err = q->err;

        redis_req_free(rd, q);
        done(arg, qres, NULL, err);
        q = next;
    }
}


/* fail_fast - answer a command without trying, from the deferred pass */
static void
fail_fast(struct redis *rd, redis_done_fn *done, void *arg, int res,
          const char *err)
{
    struct redis_req *q = redis_req_new(rd);

    q->done = done;
    q->arg = arg;
    q->res = res;
    q->err = err;
    *rd->failed_tail = q;
    rd->failed_tail = &q->next;
    rd->stats.failed_fast++;
    if (!rd->failed_queued) {
        rd->failed_queued = 1;
        loop_defer(rd->lp, &rd->failed_op);
    }
}


/* --- the breaker --------------------------------------------------------- */

/* redis_failure - a timeout, a lost connection or a failed connect */
void
redis_failure(struct redis *rd, const char *why)
{
    rd->failures++;
    if (rd->breaker == REDIS_BREAKER_CLOSED &&
        rd->failures >= rd->c->breaker_failures)
        redis_breaker_open(rd, why);
}


void
redis_breaker_open(struct redis *rd, const char *why)
{
    unsigned i;

    if (rd->breaker == REDIS_BREAKER_CLOSED) {
        rd->stats.breaker_opens++;
        rd->probe_ms = rd->c->breaker_probe_ms;
        log_panic("redis", "shard %u: datasource %s: circuit open after %u "
                  "failures (%s): lookups fail at once, probing every %u ms",
                  rd->shard_id, rd->c->name, rd->failures, why,
                  rd->probe_ms);
    } else {
        rd->probe_ms = MIN(rd->probe_ms * 2, MAX(rd->c->reconnect_max_ms,
                                                 rd->c->breaker_probe_ms));
    }
    rd->breaker = REDIS_BREAKER_OPEN;
    for (i = 0; i < rd->conn_count; i++) {
        struct redis_conn *rc = &rd->conns[i];

        rc->reconnect_at_ms = REDIS_NEVER;
        if (rc->state == REDIS_CONN_CONNECTING ||
            rc->state == REDIS_CONN_READY)
            redis_conn_fail(rc, "circuit open");
    }
    /* Connection 0 probes; its timer waits out the interval. */
    rd->conns[0].reconnect_at_ms = now_ms() + rd->probe_ms;
    redis_conn_timer_at(&rd->conns[0], rd->conns[0].reconnect_at_ms);
}


void
redis_breaker_close(struct redis *rd)
{
    unsigned i;

    log_panic("redis", "shard %u: datasource %s: circuit closed, Redis "
              "answers again", rd->shard_id, rd->c->name);
    rd->breaker = REDIS_BREAKER_CLOSED;
    rd->failures = 0;
    for (i = 0; i < rd->conn_count; i++) {
        struct redis_conn *rc = &rd->conns[i];

        rc->probe = 0;
        rc->backoff_ms = 0;
        if (rc->state == REDIS_CONN_DOWN)
            redis_conn_connect(rc);
    }
}


/* --- the datasource ------------------------------------------------------ */

struct redis *
redis_create(struct loop *lp, const struct conf_datasource *c,
             unsigned shard_id)
{
    struct redis *rd = xcalloc(1, sizeof *rd);
    unsigned i;

    ASSERT(c->uri_count > 0);
    ASSERT(c->connections > 0);
    rd->lp = lp;
    rd->c = c;
    rd->shard_id = shard_id;
    rd->breaker = REDIS_BREAKER_CLOSED;
    rd->failed_tail = &rd->failed;
    rd->failed_op.done = failed_done;
    rd->conn_count = c->connections;
    rd->conns = xcalloc(rd->conn_count, sizeof *rd->conns);
    for (i = 0; i < rd->conn_count; i++) {
        redis_conn_init(&rd->conns[i], rd, i);
        redis_conn_connect(&rd->conns[i]);
    }
    return rd;
}


/* redis_command - queue one command; done() is called once, later */
void
redis_command(struct redis *rd, int argc, const char **argv,
              const size_t *argvlen, redis_done_fn *done, void *arg)
{
    struct redis_conn *best = NULL;
    struct redis_req *q;
    unsigned i;
    int rc;

    ASSERT(argc > 0);
    ASSERT(done != NULL);
    rd->stats.commands++;
    if (rd->breaker != REDIS_BREAKER_CLOSED) {
        fail_fast(rd, done, arg, -EAGAIN, "Redis unavailable (circuit open)");
        return;
    }
    /* The least busy ready connection, else one still connecting. */
    for (i = 0; i < rd->conn_count; i++) {
        struct redis_conn *c = &rd->conns[i];

        if (c->state == REDIS_CONN_READY &&
            (best == NULL || best->state != REDIS_CONN_READY ||
             c->inflight < best->inflight))
            best = c;
        else if (c->state == REDIS_CONN_CONNECTING && best == NULL)
            best = c;
    }
    if (best == NULL) {
        fail_fast(rd, done, arg, -EAGAIN, "Redis not connected");
        return;
    }
    if (best->inflight >= rd->c->max_pending) {
        fail_fast(rd, done, arg, -ENOBUFS,
                  "too many Redis commands in flight");
        return;
    }
    q = redis_req_new(rd);
    q->kind = REDIS_REQ_USER;
    q->done = done;
    q->arg = arg;
    rc = redis_conn_enqueue(best, q, argc, argv, argvlen,
                      now_ms() + rd->c->timeout_ms);
    if (rc < 0) {
        redis_req_free(rd, q);
        fail_fast(rd, done, arg, rc, "Redis output buffer full");
    }
}


/* redis_destroy - after the ring is gone: no op can complete any more */
void
redis_destroy(struct redis *rd)
{
    struct redis_req *q;
    unsigned i;

    if (rd == NULL)
        return;
    log_panic("redis", "shard %u: datasource %s: %llu commands, %llu "
              "replies, %llu timeouts, %llu failed fast, %llu lost with a "
              "connection, %llu connects (%llu failed), circuit opened %llu "
              "times, %llu sends", rd->shard_id, rd->c->name,
              (unsigned long long)rd->stats.commands,
              (unsigned long long)rd->stats.replies,
              (unsigned long long)rd->stats.timeouts,
              (unsigned long long)rd->stats.failed_fast,
              (unsigned long long)rd->stats.conn_lost,
              (unsigned long long)rd->stats.connects,
              (unsigned long long)rd->stats.connect_failures,
              (unsigned long long)rd->stats.breaker_opens,
              (unsigned long long)rd->stats.batches);
    for (i = 0; i < rd->conn_count; i++)
        redis_conn_free(&rd->conns[i]);
    while ((q = rd->failed) != NULL) {
        rd->failed = q->next;
        free(q);
    }
    while ((q = rd->spare) != NULL) {
        rd->spare = q->next;
        free(q);
    }
    free(rd->conns);
    free(rd);
}
