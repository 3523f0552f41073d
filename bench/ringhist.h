/*
 * ringhist - log-linear latency histogram (HDR-style), microseconds
 *
 * SYNOPSIS
 *   void     ringhist_reset(struct ringhist *h);
 *   void     ringhist_add(struct ringhist *h, uint64_t v);
 *   void     ringhist_merge(struct ringhist *to, const struct ringhist *from);
 *   uint64_t ringhist_quantile(const struct ringhist *h, double q);
 *   double   ringhist_mean(const struct ringhist *h);
 *   uint64_t ringhist_bucket_upper(unsigned idx);
 * DESCRIPTION
 *   Values below 128 have a bucket each; above, every power of two is cut
 *   into 64 buckets, so a reported value is at most 1/64 (1.6%) above the
 *   true one. Values from 2^40 (12.7 days in microseconds) on are counted
 *   in the last bucket. Adding is a few instructions and no allocation.
 *
 *   ringhist_quantile() returns the highest value of the bucket holding
 *   the q-th value (q in 0..1), never more than the maximum seen; 0 when
 *   the histogram is empty.
 *
 *   ringhist_bucket_upper() is the highest value counted in bucket idx,
 *   for printing the histogram itself (e.g. a CDF).
 * OWNERSHIP
 *   A plain struct (about 18 KiB); embed or allocate it as you like.
 * THREADS
 *   None: one owner.
 */
#ifndef RINGMAIL_RINGHIST_H
#define RINGMAIL_RINGHIST_H

#include <stdint.h>

#define RINGHIST_SUB_BITS 7                      /* 128 sub-buckets */
#define RINGHIST_HALF (1u << (RINGHIST_SUB_BITS - 1))
#define RINGHIST_VALUE_BITS 40                   /* values < 2^40 */
#define RINGHIST_BUCKETS \
    ((RINGHIST_VALUE_BITS - RINGHIST_SUB_BITS + 2) * RINGHIST_HALF)

struct ringhist {
    uint64_t count;
    uint64_t sum;
    uint64_t min;
    uint64_t max;
    uint64_t bucket[RINGHIST_BUCKETS];
};

void ringhist_reset(struct ringhist *h);
void ringhist_merge(struct ringhist *to, const struct ringhist *from);
uint64_t ringhist_quantile(const struct ringhist *h, double q);
double ringhist_mean(const struct ringhist *h);
uint64_t ringhist_bucket_upper(unsigned idx);

/* ringhist_index - the bucket of v */
static inline unsigned
ringhist_index(uint64_t v)
{
    unsigned k;

    if (v >= ((uint64_t)1 << RINGHIST_VALUE_BITS))
        v = ((uint64_t)1 << RINGHIST_VALUE_BITS) - 1;
    /* k = 0 below 128; then one step per power of two */
    k = (unsigned)(63 - __builtin_clzll(v | ((1u << RINGHIST_SUB_BITS) - 1)))
        - (RINGHIST_SUB_BITS - 1);
    return k * RINGHIST_HALF + (unsigned)(v >> k);
}

/* ringhist_add - count one value */
static inline void
ringhist_add(struct ringhist *h, uint64_t v)
{
    h->bucket[ringhist_index(v)]++;
    h->count++;
    h->sum += v;
    if (v > h->max)
        h->max = v;
    if (v < h->min)
        h->min = v;
}

#endif
