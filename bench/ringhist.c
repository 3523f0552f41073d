/*
 * ringhist - see ringhist.h
 */
#include "ringhist.h"

#include <string.h>

#include "util.h"


/* ringhist_reset - empty the histogram */
void
ringhist_reset(struct ringhist *h)
{
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}


/* ringhist_merge - add the counts of from to to */
void
ringhist_merge(struct ringhist *to, const struct ringhist *from)
{
    unsigned i;

    for (i = 0; i < RINGHIST_BUCKETS; i++)
        to->bucket[i] += from->bucket[i];
    to->count += from->count;
    to->sum += from->sum;
    to->max = MAX(to->max, from->max);
    to->min = MIN(to->min, from->min);
}


/* ringhist_bucket_upper - the highest value that falls in bucket idx */
uint64_t
ringhist_bucket_upper(unsigned idx)
{
    unsigned k, sub;

    if (idx < 2 * RINGHIST_HALF) {
        k = 0;
        sub = idx;
    } else {
        k = idx / RINGHIST_HALF - 1;
        sub = idx - k * RINGHIST_HALF;
    }
    return (((uint64_t)sub + 1) << k) - 1;
}


/* ringhist_quantile - the value below which a fraction q of values lie */
uint64_t
ringhist_quantile(const struct ringhist *h, double q)
{
    uint64_t rank, seen = 0;
    unsigned i;

    if (h->count == 0)
        return 0;
    if (q <= 0)
        return h->min;
    rank = (uint64_t)(q * (double)h->count + 0.999999);
    if (rank == 0)
        rank = 1;
    if (rank > h->count)
        rank = h->count;
    for (i = 0; i < RINGHIST_BUCKETS; i++) {
        seen += h->bucket[i];
        if (seen >= rank)
            return MIN(ringhist_bucket_upper(i), h->max);
    }
    return h->max;
}


/* ringhist_mean - the mean of the values (0 when empty) */
double
ringhist_mean(const struct ringhist *h)
{
    return h->count ? (double)h->sum / (double)h->count : 0.0;
}
