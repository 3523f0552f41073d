/*
 * queue - see queue.h
 */
#include "queue.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "util.h"

#define QUEUE_BUCKETS_MIN 64


/* --- destinations -------------------------------------------------------- */

static uint32_t
dest_hash(const char *name)
{
    uint32_t h = 2166136261u;    /* FNV-1a over the lower-cased name */

    for (; *name != '\0'; name++)
        h = (h ^ (uint8_t)tolower((unsigned char)*name)) * 16777619u;
    return h;
}


static void
dest_rehash(struct queue *q)
{
    unsigned n = q->bucket_count * 2, i;
    struct queue_dest **b = xcalloc(n, sizeof *b);

    for (i = 0; i < q->bucket_count; i++) {
        struct queue_dest *d = q->buckets[i], *next;

        for (; d != NULL; d = next) {
            uint32_t h = dest_hash(d->name) & (n - 1);

            next = d->hash_next;
            d->hash_next = b[h];
            b[h] = d;
        }
    }
    free(q->buckets);
    q->buckets = b;
    q->bucket_count = n;
}


/* queue_dest_get - the destination called name, created on first use */
struct queue_dest *
queue_dest_get(struct queue *q, const char *name)
{
    uint32_t h = dest_hash(name) & (q->bucket_count - 1);
    struct queue_dest *d;

    for (d = q->buckets[h]; d != NULL; d = d->hash_next) {
        if (strcasecmp(d->name, name) == 0)
            return d;
    }
    d = xcalloc(1, sizeof *d);
    d->name = xstrdup(name);
    for (char *p = d->name; *p != '\0'; p++)
        *p = (char)tolower((unsigned char)*p);
    d->hash_next = q->buckets[h];
    q->buckets[h] = d;
    if (++q->dest_count > q->bucket_count)
        dest_rehash(q);
    return d;
}


void
queue_init(struct queue *q, uint64_t now_ms)
{
    memset(q, 0, sizeof *q);
    q->bucket_count = QUEUE_BUCKETS_MIN;
    q->buckets = xcalloc(q->bucket_count, sizeof *q->buckets);
    q->wheel_ms = now_ms - now_ms % QUEUE_TICK_MS;
}


void
queue_fini(struct queue *q)
{
    unsigned i;

    for (i = 0; i < q->bucket_count; i++) {
        struct queue_dest *d = q->buckets[i], *next;

        for (; d != NULL; d = next) {
            next = d->hash_next;
            free(d->heap);
            free(d->name);
            free(d);
        }
    }
    free(q->buckets);
    q->buckets = NULL;
}


/* rr_add - d has ready items: put it in the round-robin ring */
static void
rr_add(struct queue *q, struct queue_dest *d)
{
    if (d->in_rr)
        return;
    d->in_rr = 1;
    if (q->rr == NULL) {
        d->rr_prev = d->rr_next = d;
        q->rr = d;
        return;
    }
    /* Just before the next one offered: the newcomer waits its turn. */
    d->rr_next = q->rr;
    d->rr_prev = q->rr->rr_prev;
    d->rr_prev->rr_next = d;
    q->rr->rr_prev = d;
}


static void
rr_remove(struct queue *q, struct queue_dest *d)
{
    if (!d->in_rr)
        return;
    d->in_rr = 0;
    if (d->rr_next == d) {
        q->rr = NULL;
    } else {
        d->rr_prev->rr_next = d->rr_next;
        d->rr_next->rr_prev = d->rr_prev;
        if (q->rr == d)
            q->rr = d->rr_next;
    }
    d->rr_next = d->rr_prev = NULL;
}


/* --- the ready heap and FIFO of a destination ---------------------------- */

/* heap_before - a goes before b: higher priority, then older */
static inline int
heap_before(const struct queue_item *a, const struct queue_item *b)
{
    if (a->priority != b->priority)
        return a->priority > b->priority;
    return a->seq < b->seq;
}


static void
heap_set(struct queue_dest *d, unsigned i, struct queue_item *it)
{
    d->heap[i] = it;
    it->heap_idx = i;
}


static void
heap_up(struct queue_dest *d, unsigned i)
{
    struct queue_item *it = d->heap[i];

    while (i > 0) {
        unsigned parent = (i - 1) / 2;

        if (!heap_before(it, d->heap[parent]))
            break;
        heap_set(d, i, d->heap[parent]);
        i = parent;
    }
    heap_set(d, i, it);
}


static void
heap_down(struct queue_dest *d, unsigned i)
{
    struct queue_item *it = d->heap[i];

    for (;;) {
        unsigned l = 2 * i + 1, r = l + 1, best = l;

        if (l >= d->heap_len)
            break;
        if (r < d->heap_len && heap_before(d->heap[r], d->heap[l]))
            best = r;
        if (!heap_before(d->heap[best], it))
            break;
        heap_set(d, i, d->heap[best]);
        i = best;
    }
    heap_set(d, i, it);
}


static void
heap_delete(struct queue_dest *d, unsigned i)
{
    ASSERT(i < d->heap_len);
    d->heap_len--;
    if (i == d->heap_len)
        return;
    heap_set(d, i, d->heap[d->heap_len]);
    heap_up(d, i);
    heap_down(d, d->heap[i]->heap_idx);
}


static void
fifo_remove(struct queue_dest *d, struct queue_item *it)
{
    if (it->fifo_prev != NULL)
        it->fifo_prev->fifo_next = it->fifo_next;
    else
        d->fifo_head = it->fifo_next;
    if (it->fifo_next != NULL)
        it->fifo_next->fifo_prev = it->fifo_prev;
    else
        d->fifo_tail = it->fifo_prev;
    it->fifo_prev = it->fifo_next = NULL;
}


/* queue_ready - it may be sent to d now */
void
queue_ready(struct queue *q, struct queue_dest *d, struct queue_item *it)
{
    ASSERT(it->where == QUEUE_NOWHERE);
    ASSERT(it->priority >= QUEUE_PRIORITY_MIN);
    ASSERT(it->priority <= QUEUE_PRIORITY_MAX);
    it->dest = d;
    it->seq = ++q->seq;
    it->where = QUEUE_READY;
    if (d->heap_len == d->heap_cap) {
        d->heap_cap = d->heap_cap ? d->heap_cap * 2 : 16;
        d->heap = xrealloc(d->heap, d->heap_cap * sizeof *d->heap);
    }
    d->heap[d->heap_len++] = it;
    heap_up(d, d->heap_len - 1);
    it->fifo_next = NULL;
    it->fifo_prev = d->fifo_tail;
    if (d->fifo_tail != NULL)
        d->fifo_tail->fifo_next = it;
    else
        d->fifo_head = it;
    d->fifo_tail = it;
    q->ready++;
    rr_add(q, d);
}


/* ready_take - unlink a ready item from its destination */
static void
ready_take(struct queue *q, struct queue_item *it)
{
    struct queue_dest *d = it->dest;

    ASSERT(it->where == QUEUE_READY);
    ASSERT(d->heap[it->heap_idx] == it);
    heap_delete(d, it->heap_idx);
    fifo_remove(d, it);
    it->where = QUEUE_NOWHERE;
    q->ready--;
    if (d->heap_len == 0)
        rr_remove(q, d);
}


/*
 * queue_pop - the next item to send to d: the highest priority one, or
 * every QUEUE_FAIR_EVERY-th time the oldest one.
 */
struct queue_item *
queue_pop(struct queue *q, struct queue_dest *d)
{
    struct queue_item *it;

    if (d->heap_len == 0)
        return NULL;
    if (++d->picks % QUEUE_FAIR_EVERY == 0)
        it = d->fifo_head;
    else
        it = d->heap[0];
    ready_take(q, it);
    return it;
}


/* queue_next_dest - the next destination with ready items, round robin */
struct queue_dest *
queue_next_dest(struct queue *q)
{
    struct queue_dest *d = q->rr;

    if (d != NULL)
        q->rr = d->rr_next;
    return d;
}


/* --- the timer wheel ----------------------------------------------------- */

static inline unsigned
wheel_slot(uint64_t ms)
{
    return (unsigned)((ms / QUEUE_TICK_MS) % QUEUE_WHEEL_SLOTS);
}


static void
wheel_unlink(struct queue_item *it)
{
    *it->wheel_pprev = it->wheel_next;
    if (it->wheel_next != NULL)
        it->wheel_next->wheel_pprev = it->wheel_pprev;
    it->wheel_next = NULL;
    it->wheel_pprev = NULL;
}


/* queue_defer - it (popped, or new) is to be tried again at due_ms */
void
queue_defer(struct queue *q, struct queue_item *it, uint64_t due_ms)
{
    struct queue_item **slot;

    ASSERT(it->where == QUEUE_NOWHERE);
    ASSERT(it->dest != NULL);
    /* Never into a slot already passed: it would wait a revolution. */
    if (due_ms < q->wheel_ms)
        due_ms = q->wheel_ms;
    it->due_ms = due_ms;
    it->where = QUEUE_DEFERRED;
    slot = &q->wheel[wheel_slot(due_ms)];
    it->wheel_next = *slot;
    if (*slot != NULL)
        (*slot)->wheel_pprev = &it->wheel_next;
    it->wheel_pprev = slot;
    *slot = it;
    it->dest->deferred++;
    q->deferred++;
}


/* queue_remove - take it out of the queue, wherever it is */
void
queue_remove(struct queue *q, struct queue_item *it)
{
    switch (it->where) {
    case QUEUE_READY:
        ready_take(q, it);
        break;
    case QUEUE_DEFERRED:
        wheel_unlink(it);
        it->where = QUEUE_NOWHERE;
        it->dest->deferred--;
        q->deferred--;
        break;
    case QUEUE_NOWHERE:
        break;
    }
}


/* queue_advance - make every item due by now_ms ready; returns how many */
unsigned
queue_advance(struct queue *q, uint64_t now_ms)
{
    unsigned moved = 0, steps = 0;

    for (;;) {
        struct queue_item **pp = &q->wheel[wheel_slot(q->wheel_ms)], *it;

        while ((it = *pp) != NULL) {
            if (it->due_ms > now_ms) {
                pp = &it->wheel_next;     /* a later revolution */
                continue;
            }
            wheel_unlink(it);
            it->where = QUEUE_NOWHERE;
            it->dest->deferred--;
            q->deferred--;
            if (q->ready_hook != NULL && q->ready_hook(q->hook_arg, it))
                continue;        /* held back again */
            queue_ready(q, it->dest, it);
            moved++;
        }
        if (q->wheel_ms + QUEUE_TICK_MS > now_ms)
            break;               /* the current slot: it may still fill */
        q->wheel_ms += QUEUE_TICK_MS;
        /* After a long sleep one revolution has seen every slot. */
        if (++steps >= QUEUE_WHEEL_SLOTS) {
            q->wheel_ms = now_ms - now_ms % QUEUE_TICK_MS;
            break;
        }
    }
    return moved;
}


/*
 * queue_next_due_ms - a time by which queue_advance() should run again:
 * the end of the current slot when anything is deferred, else UINT64_MAX.
 * (Exact due times would need a scan; one tick of slack is the design.)
 */
uint64_t
queue_next_due_ms(const struct queue *q)
{
    if (q->deferred == 0)
        return UINT64_MAX;
    return q->wheel_ms + QUEUE_TICK_MS;
}


/* queue_backoff_ms - delay before retry number attempt (1 = the first) */
uint64_t
queue_backoff_ms(uint64_t interval_ms, uint64_t max_ms, unsigned attempt,
                 uint32_t rnd)
{
    uint64_t cap = MAX(interval_ms, max_ms), d = interval_ms;
    unsigned i;

    for (i = 1; i < attempt && d < cap; i++)
        d *= 2;
    if (d > cap)
        d = cap;
    /* jitter: 80% .. 120% */
    return d * (80 + rnd % 41) / 100;
}
