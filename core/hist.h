/*
 * hist - cheap fixed-bucket latency histograms, recorded where events happen
 *
 * SYNOPSIS
 *   void hist_record_us(struct hist *h, uint64_t us);
 *   extern const uint64_t hist_bounds_us[HIST_BUCKETS];
 * DESCRIPTION
 *   A histogram counts observations in HIST_BUCKETS buckets whose upper
 *   bounds (inclusive, microseconds) are hist_bounds_us[]; an observation
 *   above the last bound counts in count only (Prometheus' +Inf). Buckets
 *   are not cumulative here; the metrics endpoint adds them up. The same
 *   bounds serve a 100 us group commit and a 1 h queue time: one
 *   comparison loop per record, no division, no allocation.
 * OWNERSHIP
 *   Embedded in its owner (spool, delivery stats).
 * THREADS
 *   Written by one shard only; other threads read the copy the shard
 *   publishes (stats.h).
 */
#ifndef RINGMAIL_HIST_H
#define RINGMAIL_HIST_H

#include <stdint.h>

#define HIST_BUCKETS 20

struct hist {
    uint64_t count;
    uint64_t sum_us;
    uint64_t bucket[HIST_BUCKETS];
};

extern const uint64_t hist_bounds_us[HIST_BUCKETS];


/* hist_record_us - count one observation of us microseconds */
static inline void
hist_record_us(struct hist *h, uint64_t us)
{
    unsigned i;

    h->count++;
    h->sum_us += us;
    for (i = 0; i < HIST_BUCKETS; i++) {
        if (us <= hist_bounds_us[i]) {
            h->bucket[i]++;
            return;
        }
    }
}

#endif
