/*
 * queue - a shard's delivery queue: ready queues per destination, ordered by
 *         priority without starvation, and a timer wheel for deferred items
 *
 * SYNOPSIS
 *   void queue_init(struct queue *q, uint64_t now_ms);
 *   void queue_fini(struct queue *q);
 *   struct queue_dest *queue_dest_get(struct queue *q, const char *name);
 *   void queue_ready(struct queue *q, struct queue_dest *d,
 *                    struct queue_item *it);
 *   void queue_defer(struct queue *q, struct queue_item *it, uint64_t due_ms);
 *   void queue_remove(struct queue *q, struct queue_item *it);
 *   struct queue_dest *queue_next_dest(struct queue *q);
 *   struct queue_item *queue_pop(struct queue *q, struct queue_dest *d);
 *   unsigned queue_advance(struct queue *q, uint64_t now_ms);
 *   uint64_t queue_next_due_ms(const struct queue *q);
 *   uint64_t queue_backoff_ms(uint64_t interval_ms, uint64_t max_ms,
 *                             unsigned attempt, uint32_t rnd);
 * DESCRIPTION
 *   An item is one message's recipients for one destination (a routing
 *   domain now; an MX set later). The delivery code embeds struct
 *   queue_item in its own record; the queue only links it.
 *
 *   Each destination keeps its ready items twice: in a heap ordered by
 *   priority (1..100, higher first; FIFO among equals) and in a FIFO list
 *   by arrival. queue_pop() takes from the heap, except every
 *   QUEUE_FAIR_EVERY-th pick of a destination, which takes the oldest
 *   item whatever its priority: under a flood of priority mail, older
 *   normal mail still gets at least one send in QUEUE_FAIR_EVERY.
 *
 *   queue_next_dest() walks the destinations that have ready items round
 *   robin, so one busy domain cannot starve the others; the delivery code
 *   decides whether it may open a connection there (its limits) and pops.
 *
 *   Deferred items sit on a hashed timer wheel of QUEUE_WHEEL_SLOTS slots
 *   of QUEUE_TICK_MS each; an item due beyond one revolution stays in its
 *   slot until a pass finds it due. queue_advance() makes due items ready
 *   and returns how many; queue_next_due_ms() says when to call it next.
 *
 *   queue_backoff_ms() is the retry schedule: Retry_Interval times 2 to
 *   the (attempt - 1), capped at max_ms (Max_Retry_Interval; or the
 *   interval when that is larger), with a jitter of -20%..+20% from rnd so that a
 *   burst of deferrals does not come back as a burst.
 * OWNERSHIP
 *   Items belong to the caller; destinations to the queue (freed by
 *   queue_fini, with their names).
 * THREADS
 *   Shard-local.
 */
#ifndef RINGMAIL_QUEUE_H
#define RINGMAIL_QUEUE_H

#include <stdint.h>

#define QUEUE_FAIR_EVERY      10
#define QUEUE_TICK_MS         100
#define QUEUE_WHEEL_SLOTS     8192          /* 13.6 minutes a revolution */
#define QUEUE_PRIORITY_MIN    1
#define QUEUE_PRIORITY_MAX    100
#define QUEUE_PRIORITY_NORMAL 50

enum queue_where {
    QUEUE_NOWHERE,               /* popped (being delivered) or new */
    QUEUE_READY,
    QUEUE_DEFERRED,
};

struct queue_dest;

struct queue_item {
    unsigned priority;           /* set by the caller before queue_ready */
    enum queue_where where;
    struct queue_dest *dest;
    uint64_t seq;                /* arrival order within the queue */
    uint64_t due_ms;             /* when deferred */
    unsigned heap_idx;
    struct queue_item *fifo_prev, *fifo_next;
    struct queue_item *wheel_next, **wheel_pprev;
};

struct queue_dest {
    char *name;
    struct queue_dest *hash_next;
    struct queue_dest *rr_prev, *rr_next;     /* in q's ready ring */
    int in_rr;
    struct queue_item **heap;
    unsigned heap_len, heap_cap;
    struct queue_item *fifo_head, *fifo_tail;
    unsigned picks;
    unsigned deferred;
    /* for the delivery code: connections and rate */
    unsigned conns_active;
    void *user;
};

/*
 * queue_ready_hook_fn - an item's retry time came: 0 to make it ready (the
 * hook may change its priority first), 1 when the hook deferred it again
 * with queue_defer() (relay control's SkipSend).
 */
typedef int queue_ready_hook_fn(void *arg, struct queue_item *it);

struct queue {
    queue_ready_hook_fn *ready_hook;  /* or NULL */
    void *hook_arg;
    struct queue_dest **buckets;
    unsigned bucket_count;
    unsigned dest_count;
    struct queue_dest *rr;       /* next destination to offer */
    struct queue_item *wheel[QUEUE_WHEEL_SLOTS];
    uint64_t wheel_ms;           /* start of the slot not yet advanced */
    uint64_t seq;
    uint64_t ready;
    uint64_t deferred;
};

void queue_init(struct queue *q, uint64_t now_ms);
void queue_fini(struct queue *q);
struct queue_dest *queue_dest_get(struct queue *q, const char *name);
void queue_ready(struct queue *q, struct queue_dest *d, struct queue_item *it);
void queue_defer(struct queue *q, struct queue_item *it, uint64_t due_ms);
void queue_remove(struct queue *q, struct queue_item *it);
struct queue_dest *queue_next_dest(struct queue *q);
struct queue_item *queue_pop(struct queue *q, struct queue_dest *d);
unsigned queue_advance(struct queue *q, uint64_t now_ms);
uint64_t queue_next_due_ms(const struct queue *q);
uint64_t queue_backoff_ms(uint64_t interval_ms, uint64_t max_ms,
                          unsigned attempt, uint32_t rnd);

static inline unsigned
queue_dest_ready(const struct queue_dest *d)
{
    return d->heap_len;
}

#endif
