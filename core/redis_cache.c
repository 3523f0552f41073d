/*
 * redis_cache - see redis_cache.h
 *
 * A chained hash table (power-of-two buckets, at least twice the size)
 * plus a doubly linked LRU list. Expired entries are dropped when met.
 */
#include "redis_cache.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

struct cache_entry {
    struct cache_entry *hnext;   /* bucket chain */
    struct cache_entry *prev;    /* LRU: prev is more recent */
    struct cache_entry *next;
    uint64_t hash;
    uint64_t expires_ms;
    redisReply *reply;
    size_t len;
    unsigned char key[];
};

struct redis_cache {
    unsigned size;
    unsigned life_ms;
    unsigned count;
    size_t mask;
    struct cache_entry **buckets;
    struct cache_entry *mru;
    struct cache_entry *lru;
    struct redis_cache_stats stats;
};


static uint64_t
cache_hash(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = 1469598103934665603ull;     /* FNV-1a */
    size_t i;

    for (i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}


struct redis_cache *
redis_cache_create(unsigned size, unsigned life_ms)
{
    struct redis_cache *c = xcalloc(1, sizeof *c);
    size_t n = 16;

    c->size = life_ms > 0 ? size : 0;
    c->life_ms = life_ms;
    while (n < (size_t)c->size * 2)
        n *= 2;
    c->mask = n - 1;
    c->buckets = c->size > 0 ? xcalloc(n, sizeof *c->buckets) : NULL;
    return c;
}


static void
lru_unlink(struct redis_cache *c, struct cache_entry *e)
{
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        c->mru = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    else
        c->lru = e->prev;
    e->prev = e->next = NULL;
}


static void
lru_push(struct redis_cache *c, struct cache_entry *e)
{
    e->prev = NULL;
    e->next = c->mru;
    if (c->mru != NULL)
        c->mru->prev = e;
    c->mru = e;
    if (c->lru == NULL)
        c->lru = e;
}


/* cache_drop - unlink e from its bucket and the list, and free it */
static void
cache_drop(struct redis_cache *c, struct cache_entry *e)
{
    struct cache_entry **pp = &c->buckets[e->hash & c->mask];

    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(c, e);
    freeReplyObject(e->reply);
    free(e);
    c->count--;
}


static struct cache_entry *
cache_find(struct redis_cache *c, const void *key, size_t len, uint64_t h)
{
    struct cache_entry *e;

    for (e = c->buckets[h & c->mask]; e != NULL; e = e->hnext) {
        if (e->hash == h && e->len == len && memcmp(e->key, key, len) == 0)
            return e;
    }
    return NULL;
}


const redisReply *
redis_cache_get(struct redis_cache *c, const void *key, size_t len,
                uint64_t now_ms)
{
    uint64_t h;
    struct cache_entry *e;

    if (c->size == 0)
        return NULL;
    h = cache_hash(key, len);
    e = cache_find(c, key, len, h);
    if (e == NULL) {
        c->stats.misses++;
        return NULL;
    }
    if (now_ms >= e->expires_ms) {
        c->stats.expired++;
        c->stats.misses++;
        cache_drop(c, e);
        return NULL;
    }
    c->stats.hits++;
    lru_unlink(c, e);
    lru_push(c, e);
    return e->reply;
}


void
redis_cache_put(struct redis_cache *c, const void *key, size_t len,
                redisReply *reply, uint64_t now_ms)
{
    uint64_t h;
    struct cache_entry *e;

    if (c->size == 0) {
        freeReplyObject(reply);
        return;
    }
    h = cache_hash(key, len);
    e = cache_find(c, key, len, h);
    if (e != NULL)
        cache_drop(c, e);
    while (c->count >= c->size) {
        c->stats.evicted++;
        cache_drop(c, c->lru);
    }
    e = xmalloc(sizeof *e + len);
    e->hash = h;
    e->len = len;
    memcpy(e->key, key, len);
    e->reply = reply;
    e->expires_ms = now_ms + c->life_ms;
    e->hnext = c->buckets[h & c->mask];
    c->buckets[h & c->mask] = e;
    lru_push(c, e);
    c->count++;
}


const struct redis_cache_stats *
redis_cache_stats(const struct redis_cache *c)
{
    return &c->stats;
}


void
redis_cache_destroy(struct redis_cache *c)
{
    if (c == NULL)
        return;
    while (c->mru != NULL)
        cache_drop(c, c->mru);
    free(c->buckets);
    free(c);
}
