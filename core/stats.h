/*
 * stats - a shard's counters, published once per tick for other threads
 *
 * SYNOPSIS
 *   void stats_publish(struct stats_pub *pub, const struct shard *sh);
 *   void stats_read(const struct stats_pub *pub, struct stats_snap *out);
 *   void stats_hist_add(struct hist *sum, const struct hist *h);
 * DESCRIPTION
 *   A shard never shares its live counters. stats_publish() (the shard,
 *   from its tick and when its state changes) copies them into pub: a
 *   snapshot of plain 64-bit words written with ck_pr stores inside a
 *   ck_sequence write section. stats_read() (any other thread: the
 *   control console, the metrics endpoint) copies a consistent snapshot
 *   out with ck_pr loads, retrying while a write is under way. Readers
 *   see figures up to one tick (250 ms) old; the shard pays one copy of a
 *   few hundred bytes per tick and nothing per event.
 *
 *   stats_hist_add() adds one histogram into another, for sums over
 *   the shards at scrape time.
 * OWNERSHIP
 *   struct stats_pub is embedded in struct shard.
 * THREADS
 *   stats_publish() from the owning shard only; stats_read() from any
 *   thread. One writer, any number of readers, no locks.
 * SEE ALSO
 *   hist.h, shard.h, control.h
 */
#ifndef RINGMAIL_STATS_H
#define RINGMAIL_STATS_H

#include <ck_sequence.h>
#include <stdint.h>

#include "hist.h"

struct shard;

/* Every field is a uint64_t: the snapshot is copied word by word. */
struct stats_snap {
    uint64_t state;              /* enum shard_state */
    uint64_t published_ms;       /* CLOCK_MONOTONIC of the copy */
    /* inbound */
    uint64_t sessions;           /* greeted, not yet closed */
    uint64_t sessions_accepted;
    uint64_t sessions_refused;
    uint64_t sessions_timed_out;
    uint64_t messages_received;
    uint64_t messages_rejected;
    uint64_t commit_failures;
    uint64_t recv_bytes;
    /* outbound */
    uint64_t messages_live;      /* waiting for delivery, in memory */
    uint64_t delivered;          /* recipients */
    uint64_t deferred;
    uint64_t bounced;
    uint64_t expired;
    uint64_t dsns;
    uint64_t connections;        /* outbound, opened */
    uint64_t connect_failures;
    uint64_t connections_open;
    uint64_t dup_window;
    uint64_t dup_window_max;
    uint64_t abandoned;
    uint64_t queue_ready;        /* items (message x domain) */
    uint64_t queue_deferred;
    /* spool */
    uint64_t spool_segments;
    uint64_t spool_bytes;        /* segments on disk, preallocated size */
    uint64_t spool_commits;
    uint64_t spool_fdatasyncs;
    uint64_t spool_bytes_written;
    uint64_t spool_failed;       /* 0, or the errno it failed with */
    /* Redis datasources, summed over this shard's clients (redis.h) */
    uint64_t redis_commands;
    uint64_t redis_replies;
    uint64_t redis_timeouts;
    uint64_t redis_failed_fast;  /* circuit open, not connected, full */
    uint64_t redis_conn_lost;
    uint64_t redis_connects;
    uint64_t redis_connect_failures;
    uint64_t redis_breaker_opens;
    uint64_t redis_batches;      /* sends: commands / batches = pipelining */
    uint64_t redis_breakers_open;    /* datasources whose circuit is open */
    uint64_t redis_cache_hits;
    uint64_t redis_cache_misses;
    /* latencies */
    struct hist commit;          /* one group commit: submit to durable */
    struct hist dot_to_250;      /* a message queued for commit to durable */
    struct hist delivery;        /* reception to the remote 250 */
};

#define STATS_WORDS (sizeof(struct stats_snap) / sizeof(uint64_t))

struct stats_pub {
    ck_sequence_t seq;
    uint64_t w[STATS_WORDS];
};

void stats_publish(struct stats_pub *pub, const struct shard *sh);
void stats_read(const struct stats_pub *pub, struct stats_snap *out);
void stats_hist_add(struct hist *sum, const struct hist *h);

#endif
