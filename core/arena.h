/*
 * arena - session and transaction arenas: bump allocation, one reset frees all
 *
 * SYNOPSIS
 *   void  arena_pool_init(struct arena_pool *pool, size_t chunk_bytes,
 *                         size_t spare_max);
 *   void  arena_pool_fini(struct arena_pool *pool);
 *   struct arena *arena_create(struct arena_pool *pool);
 *   void *arena_alloc(struct arena *a, size_t n);
 *   void *arena_zalloc(struct arena *a, size_t n);
 *   char *arena_strndup(struct arena *a, const char *s, size_t n);
 *   void  arena_cleanup_add(struct arena *a, arena_cleanup_fn *fn, void *arg);
 *   void  arena_reset(struct arena *a);
 *   void  arena_destroy(struct arena *a);
 *   struct arena_pool *arena_pool_of(const struct arena *a);
 * DESCRIPTION
 *   A pool is per shard: it hands out fixed-size chunks (malloc, which is
 *   jemalloc in the daemon) and keeps up to spare_max returned chunks for
 *   reuse, so the steady state allocates nothing from the system.
 *
 *   An arena is a bump allocator over chunks from its pool; the struct
 *   arena itself lives at the start of its first chunk. Allocations are
 *   16-byte aligned. A request larger than a quarter of a chunk gets its own
 *   malloc block, freed with the arena. Nothing is freed one at a time.
 *
 *   arena_cleanup_add() registers fn(arg) to run (last added first) when the
 *   arena is reset or destroyed: how external resources (fds, malloc'd
 *   buffers, child arenas) die with their owner.
 *
 *   arena_reset() runs the cleanups, frees big blocks and every chunk but
 *   the first, and makes the whole first chunk available again: the
 *   transaction arena is reset after each message and on RSET.
 *   arena_destroy() resets and gives the first chunk back to the pool.
 *
 *   Built with -Darena_debug=true, every allocation is its own malloc so
 *   AddressSanitizer sees overruns and use after reset.
 * OWNERSHIP
 *   Memory from arena_alloc() is valid until the next arena_reset() or
 *   arena_destroy() of that arena, never longer.
 * THREADS
 *   Shard-local: a pool and its arenas belong to one shard thread.
 * ERRORS
 *   Allocation failure aborts (xmalloc): a shard that cannot get 4 KiB has
 *   nothing sensible to answer.
 */
#ifndef RINGMAIL_ARENA_H
#define RINGMAIL_ARENA_H

#include <stddef.h>
#include <stdint.h>

typedef void arena_cleanup_fn(void *arg);

struct arena_chunk;

struct arena_pool {
    size_t chunk_bytes;
    size_t spare_max;
    struct arena_chunk *spare;
    size_t spare_count;
    /* statistics */
    uint64_t chunks_live;
    uint64_t system_allocs;
};

struct arena;

void arena_pool_init(struct arena_pool *pool, size_t chunk_bytes,
                     size_t spare_max);
void arena_pool_fini(struct arena_pool *pool);
struct arena *arena_create(struct arena_pool *pool);
void *arena_alloc(struct arena *a, size_t n);
void *arena_zalloc(struct arena *a, size_t n);
char *arena_strndup(struct arena *a, const char *s, size_t n);
char *arena_strdup(struct arena *a, const char *s);
char *arena_printf(struct arena *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void arena_cleanup_add(struct arena *a, arena_cleanup_fn *fn, void *arg);
void arena_reset(struct arena *a);
void arena_destroy(struct arena *a);
size_t arena_bytes(const struct arena *a);
struct arena_pool *arena_pool_of(const struct arena *a);

#endif
