/*
 * stats - see stats.h
 */
#include "datasource.h"
#include "stats.h"

#include <ck_pr.h>
#include <string.h>

#include "shard.h"
#include "util.h"

_Static_assert(sizeof(struct stats_snap) % sizeof(uint64_t) == 0,
               "stats_snap is made of 64-bit words");

/* Upper bounds of hist.h's buckets: 100 us to 1 h. */
const uint64_t hist_bounds_us[HIST_BUCKETS] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
    250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000,
    60000000, 300000000, 3600000000ull,
};


/* stats_snap_fill - the shard's live counters, gathered into one snapshot */
static void
stats_snap_fill(const struct shard *sh, struct stats_snap *s)
{
    const struct delivery_stats *d = &sh->stats.dlv;
    const struct spool *sp = &sh->spool;

    memset(s, 0, sizeof *s);
    s->state = (uint64_t)sh->state;
    s->published_ms = now_ms();
    s->sessions = sh->sessions_active;
    s->sessions_accepted = sh->stats.sessions_accepted;
    s->sessions_refused = sh->stats.sessions_refused;
    s->sessions_timed_out = sh->stats.sessions_timed_out;
    s->messages_received = sh->stats.messages_received;
    s->messages_rejected = sh->stats.messages_rejected;
    s->commit_failures = sh->stats.commit_failures;
    s->recv_bytes = sh->stats.recv_bytes;
    s->messages_live = d->messages_live;
    s->delivered = d->delivered;
    s->deferred = d->deferred;
    s->bounced = d->bounced;
    s->expired = d->expired;
    s->dsns = d->dsns;
    s->connections = d->connections;
    s->connect_failures = d->connect_failures;
    s->connections_open = sh->dlv.conn_count;
    s->dup_window = d->dup_window;
    s->dup_window_max = d->dup_window_max;
    s->abandoned = d->abandoned;
    s->queue_ready = sh->dlv.q.ready;
    s->queue_deferred = sh->dlv.q.deferred;
    s->spool_segments = sp->live_count;
    s->spool_bytes = (uint64_t)sp->live_count * sp->segment_bytes;
    s->spool_commits = sp->commits;
    s->spool_fdatasyncs = sp->fdatasyncs;
    s->spool_bytes_written = sp->bytes_written;
    s->spool_failed = (uint64_t)-sp->failed;
    if (sh->ds != NULL) {
        size_t k;

        for (k = 0; k < sh->ds->count; k++) {
            const struct datasource *ds = &sh->ds->v[k];
            const struct redis_stats *r = redis_stats(ds->rd);
            const struct redis_cache_stats *c =
                ds->cache != NULL ? redis_cache_stats(ds->cache) : NULL;

            s->redis_commands += r->commands;
            s->redis_replies += r->replies;
            s->redis_timeouts += r->timeouts;
            s->redis_failed_fast += r->failed_fast;
            s->redis_conn_lost += r->conn_lost;
            s->redis_connects += r->connects;
            s->redis_connect_failures += r->connect_failures;
            s->redis_breaker_opens += r->breaker_opens;
            s->redis_batches += r->batches;
            s->redis_breakers_open +=
                redis_breaker_state(ds->rd) != REDIS_BREAKER_CLOSED;
            if (c != NULL) {
                s->redis_cache_hits += c->hits;
                s->redis_cache_misses += c->misses;
            }
        }
    }
    s->commit = sp->commit_hist;
    s->dot_to_250 = sp->dot_to_250_hist;
    s->delivery = d->delivery_hist;
}


/* stats_publish - copy the shard's counters where other threads read them */
void
stats_publish(struct stats_pub *pub, const struct shard *sh)
{
    struct stats_snap s;
    const uint64_t *src = (const uint64_t *)&s;
    size_t i;

    stats_snap_fill(sh, &s);
    ck_sequence_write_begin(&pub->seq);
    for (i = 0; i < STATS_WORDS; i++)
        ck_pr_store_64(&pub->w[i], src[i]);
    ck_sequence_write_end(&pub->seq);
}


/* stats_read - a consistent copy of the last published snapshot */
void
stats_read(const struct stats_pub *pub, struct stats_snap *out)
{
    uint64_t *dst = (uint64_t *)out;
    unsigned version;
    size_t i;

    do {
        version = ck_sequence_read_begin(&pub->seq);
        for (i = 0; i < STATS_WORDS; i++)
            dst[i] = ck_pr_load_64((uint64_t *)&pub->w[i]);
    } while (ck_sequence_read_retry(&pub->seq, version));
}


/* stats_hist_add - sum += h */
void
stats_hist_add(struct hist *sum, const struct hist *h)
{
    unsigned i;

    sum->count += h->count;
    sum->sum_us += h->sum_us;
    for (i = 0; i < HIST_BUCKETS; i++)
        sum->bucket[i] += h->bucket[i];
}
