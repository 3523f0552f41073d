/*
 * redis_int - what redis.c (the datasource: requests, breaker, command
 *             routing) and redis_conn.c (one connection's state machine)
 *             share; nothing else includes it
 *
 * DESCRIPTION
 *   A struct redis is one datasource on one shard: its connections, its
 *   circuit breaker, spare request records and the list of commands
 *   failed without trying (answered from the deferred pass). A struct
 *   redis_conn is one TCP connection: its socket, hiredis reader, the two
 *   write buffers, and the FIFO of commands awaiting replies.
 * THREADS
 *   Shard-local.
 */
#ifndef RINGMAIL_REDIS_INT_H
#define RINGMAIL_REDIS_INT_H

#include "redis.h"

#define REDIS_NEVER UINT64_MAX
#define REDIS_REQ_SPARE_MAX 4096     /* request records kept for reuse */

enum redis_req_kind {
    REDIS_REQ_USER,
    REDIS_REQ_HANDSHAKE,         /* AUTH, SELECT: an error closes */
    REDIS_REQ_PROBE,             /* PING of the half-open breaker */
};

struct redis_req {
    struct redis_req *next;
    redis_done_fn *done;         /* NULL: already answered (timed out) */
    void *arg;
    uint64_t deadline_ms;
    enum redis_req_kind kind;
    int res;                     /* for the fail-fast list */
    const char *err;
};

struct redis_conn {
    struct redis *rd;
    unsigned idx;
    enum redis_conn_state state;
    int fd;
    unsigned uri;                /* index into conf->uris */
    redisReader *reader;
    struct redis_req *head;      /* sent or queued, awaiting replies */
    struct redis_req **tail;
    struct redis_req *live;      /* first one not yet timed out */
    unsigned inflight;
    char *wbuf[2];
    size_t wlen[2];
    size_t wcap[2];
    unsigned wpend;              /* the buffer commands append to */
    size_t woff;                 /* sent bytes of the other one */
    unsigned send_busy : 1;
    unsigned recv_busy : 1;
    unsigned connect_busy : 1;
    unsigned timer_armed : 1;
    unsigned flush_queued : 1;
    unsigned probe : 1;          /* this connect is the breaker's probe */
    unsigned answered : 1;       /* a reply came since the connect */
    uint64_t timer_at_ms;
    uint64_t reconnect_at_ms;
    unsigned backoff_ms;
    struct op connect_op;
    struct op send_op;
    struct op recv_op;
    struct op timer_op;
    struct op flush_op;
    struct __kernel_timespec connect_ts;
    struct __kernel_timespec timer_ts;
    char rbuf[REDIS_RBUF_BYTES];
};

struct redis {
    struct loop *lp;
    const struct conf_datasource *c;
    unsigned shard_id;
    struct redis_conn *conns;
    unsigned conn_count;
    enum redis_breaker breaker;
    unsigned failures;           /* in a row */
    unsigned probe_ms;           /* the open circuit's current interval */
    struct redis_req *spare;
    unsigned spare_count;
    struct redis_req *failed;    /* answered from the deferred pass */
    struct redis_req **failed_tail;
    struct op failed_op;
    int failed_queued;
    struct redis_stats stats;
};

/* redis.c */
struct redis_req *redis_req_new(struct redis *rd);
void redis_req_free(struct redis *rd, struct redis_req *q);
void redis_failure(struct redis *rd, const char *why);
void redis_breaker_open(struct redis *rd, const char *why);
void redis_breaker_close(struct redis *rd);

/* redis_conn.c */
void redis_conn_init(struct redis_conn *rc, struct redis *rd, unsigned idx);
void redis_conn_connect(struct redis_conn *rc);
void redis_conn_fail(struct redis_conn *rc, const char *why);
void redis_conn_timer_at(struct redis_conn *rc, uint64_t at_ms);
int redis_conn_enqueue(struct redis_conn *rc, struct redis_req *q, int argc,
                       const char **argv, const size_t *argvlen,
                       uint64_t deadline_ms);
void redis_conn_free(struct redis_conn *rc);

#endif
