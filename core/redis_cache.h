/*
 * redis_cache - a shard's cache of Redis replies for one datasource:
 *               least recently used out, each entry for cache_life
 *
 * SYNOPSIS
 *   struct redis_cache *redis_cache_create(unsigned size, unsigned life_ms);
 *   const redisReply *redis_cache_get(struct redis_cache *c,
 *                                     const void *key, size_t len,
 *                                     uint64_t now_ms);
 *   void redis_cache_put(struct redis_cache *c, const void *key,
 *                        size_t len, redisReply *reply, uint64_t now_ms);
 *   void redis_cache_destroy(struct redis_cache *c);
 * DESCRIPTION
 *   Keys are bytes (datasource.c encodes a command's arguments, each with
 *   its length, so no two commands share a key). redis_cache_get() returns
 *   the reply stored for key if it is younger than life_ms, and makes it
 *   the most recently used; the pointer is valid until the next put.
 *   redis_cache_put() takes ownership of reply (freed with
 *   freeReplyObject() on eviction, replacement or destroy) and evicts the
 *   least recently used entry when size entries are held. A cache of size
 *   0 or life 0 stores nothing (put frees the reply at once).
 * OWNERSHIP
 *   Shard-local; entries and keys are malloc'd, one allocation each.
 * THREADS
 *   Shard-local.
 */
#ifndef RINGMAIL_REDIS_CACHE_H
#define RINGMAIL_REDIS_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

struct redis_cache_stats {
    uint64_t hits;
    uint64_t misses;
    uint64_t expired;
    uint64_t evicted;
};

struct redis_cache;

struct redis_cache *redis_cache_create(unsigned size, unsigned life_ms);
const redisReply *redis_cache_get(struct redis_cache *c, const void *key,
                                  size_t len, uint64_t now_ms);
void redis_cache_put(struct redis_cache *c, const void *key, size_t len,
                     redisReply *reply, uint64_t now_ms);
const struct redis_cache_stats *redis_cache_stats(
    const struct redis_cache *c);
void redis_cache_destroy(struct redis_cache *c);

#endif
