/*
 * redis - one Redis datasource on one shard: pipelined connections driven
 *         by the shard's ring, per-command deadlines, reconnect with
 *         backoff, and a circuit breaker
 *
 * SYNOPSIS
 *   struct redis *redis_create(struct loop *lp,
 *                              const struct conf_datasource *c,
 *                              unsigned shard_id);
 *   void redis_command(struct redis *rd, int argc, const char **argv,
 *                      const size_t *argvlen, redis_done_fn *done,
 *                      void *arg);
 *   void redis_destroy(struct redis *rd);
 *   const char *redis_breaker_name(enum redis_breaker b);
 * DESCRIPTION
 *   redis_create() opens c->connections connections to the datasource's
 *   first uri (each connect bounded by connect_timeout; AUTH and SELECT
 *   are pipelined ahead of everything else) and returns at once.
 *
 *   redis_command() formats argv with hiredis (every argument a separate
 *   bulk string: nothing in an argument can become a second command),
 *   appends it to the least busy connection's write buffer, and returns.
 *   Every command queued during one loop turn leaves in one send. done()
 *   is called exactly once, later, from the loop, never from inside
 *   redis_command(): with res 0 and the reply (which done() then owns and
 *   frees with freeReplyObject(); a Redis error is a REDIS_REPLY_ERROR
 *   reply), or with res -errno, reply NULL and err saying why:
 *   -ETIMEDOUT (no reply within timeout), -ECONNRESET (the connection was
 *   lost with the command in flight), -EAGAIN (the circuit is open, or no
 *   connection is up: failed without trying), -ENOBUFS (max_pending
 *   commands already in flight).
 *
 *   Connection state machine, per connection:
 *     DOWN --connect--> CONNECTING --connected--> READY
 *     CONNECTING/READY --error, EOF, protocol error, handshake refused-->
 *       CLOSING (every command in flight failed at once; shutdown(2)
 *       ends the recv and send) --last op completed--> DOWN
 *     DOWN --backoff (reconnect_backoff_min doubling up to _max), breaker
 *       closed--> CONNECTING
 *   A command that misses its deadline is answered -ETIMEDOUT at once and
 *   its reply, if it ever comes, is dropped (the pipeline keeps order).
 *
 *   Circuit breaker, per datasource and shard: timeouts, lost connections
 *   and failed connects count as failures, any reply resets the count.
 *   breaker_failures in a row open the circuit: every connection is
 *   closed, commands fail at once with -EAGAIN. After
 *   breaker_probe_interval one connection reconnects and sends PING
 *   (HALF_OPEN; commands still fail fast); its answer closes the circuit
 *   and every connection reconnects; a failure reopens it for twice the
 *   interval (at most reconnect_backoff_max).
 * OWNERSHIP
 *   The shard owns struct redis. A command's bytes are copied; argv need
 *   not outlive the call.
 * THREADS
 *   Shard-local.
 * ERRORS
 *   Failures are reported to done(); connection losses and breaker
 *   changes are logged once each to the paniclog with shard and
 *   datasource; hiredis aborts on OOM (PLATFORM.md 16).
 * SECURITY
 *   Replies are parsed by hiredis' reader (protocol errors close the
 *   connection); commands are built only by redisFormatCommandArgv().
 * SEE ALSO
 *   redis_int.h (redis.c: requests, breaker; redis_conn.c: a connection),
 *   datasource.h, lualib_db.c, docs/redis.md
 */
#ifndef RINGMAIL_REDIS_H
#define RINGMAIL_REDIS_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "conf.h"
#include "loop.h"

#define REDIS_RBUF_BYTES 16384               /* one recv */
#define REDIS_WBUF_MAX (4u * 1024 * 1024)    /* queued bytes per connection */

/* redis_done_fn - a command's outcome; reply is the callee's to free */
typedef void redis_done_fn(void *arg, int res, redisReply *reply,
                           const char *err);

enum redis_breaker {
    REDIS_BREAKER_CLOSED,
    REDIS_BREAKER_OPEN,
    REDIS_BREAKER_HALF_OPEN,
};

enum redis_conn_state {
    REDIS_CONN_DOWN,
    REDIS_CONN_CONNECTING,
    REDIS_CONN_READY,
    REDIS_CONN_CLOSING,
};

struct redis_stats {
    uint64_t commands;
    uint64_t replies;
    uint64_t timeouts;
    uint64_t failed_fast;        /* circuit open, not connected, full */
    uint64_t conn_lost;          /* commands failed by a lost connection */
    uint64_t connects;
    uint64_t connect_failures;
    uint64_t breaker_opens;
    uint64_t batches;            /* sends: commands / batches = pipelining */
};

struct redis;

struct redis *redis_create(struct loop *lp, const struct conf_datasource *c,
                           unsigned shard_id);
void redis_command(struct redis *rd, int argc, const char **argv,
                   const size_t *argvlen, redis_done_fn *done, void *arg);
void redis_destroy(struct redis *rd);
enum redis_breaker redis_breaker_state(const struct redis *rd);
const struct redis_stats *redis_stats(const struct redis *rd);
const char *redis_breaker_name(enum redis_breaker b);
const char *redis_conn_state_name(enum redis_conn_state s);

#endif
