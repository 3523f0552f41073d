/*
 * arena - see arena.h
 */
#include "arena.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

#define ARENA_ALIGN 16

struct arena_chunk {
    struct arena_chunk *next;
    size_t size;                 /* bytes of data[] */
    /* data follows, 16-byte aligned */
};

struct arena_cleanup {
    struct arena_cleanup *next;
    arena_cleanup_fn *fn;
    void *arg;
};

/* A block allocated on its own: big requests, and every request in debug. */
struct arena_big {
    struct arena_big *next;
    size_t size;
    uint64_t pad[2];             /* keep the payload 16-byte aligned */
};

_Static_assert(sizeof(struct arena_big) % 16 == 0, "arena_big alignment");

struct arena {
    struct arena_pool *pool;
    struct arena_chunk *first;   /* holds this struct; kept on reset */
    struct arena_chunk *more;    /* further chunks, returned on reset */
    char *cur;
    char *end;
    struct arena_cleanup *cleanups;
    struct arena_big *bigs;
    size_t bytes;                /* allocated since the last reset */
};

#define CHUNK_HDR ((sizeof(struct arena_chunk) + ARENA_ALIGN - 1) & \
                   ~(size_t)(ARENA_ALIGN - 1))
#define ARENA_HDR ((sizeof(struct arena) + ARENA_ALIGN - 1) & \
                   ~(size_t)(ARENA_ALIGN - 1))

static inline char *
chunk_data(struct arena_chunk *c)
{
    return (char *)c + CHUNK_HDR;
}


void
arena_pool_init(struct arena_pool *pool, size_t chunk_bytes, size_t spare_max)
{
    ASSERT(chunk_bytes >= 1024);
    memset(pool, 0, sizeof *pool);
    pool->chunk_bytes = chunk_bytes;
    pool->spare_max = spare_max;
}


void
arena_pool_fini(struct arena_pool *pool)
{
    while (pool->spare != NULL) {
        struct arena_chunk *c = pool->spare;

        pool->spare = c->next;
        free(c);
    }
    pool->spare_count = 0;
}


static struct arena_chunk *
pool_get(struct arena_pool *pool)
{
    struct arena_chunk *c = pool->spare;

    if (c != NULL) {
        pool->spare = c->next;
        pool->spare_count--;
    } else {
        c = xmalloc(pool->chunk_bytes);
        c->size = pool->chunk_bytes - CHUNK_HDR;
        pool->system_allocs++;
    }
    c->next = NULL;
    pool->chunks_live++;
    return c;
}


static void
pool_put(struct arena_pool *pool, struct arena_chunk *c)
{
    ASSERT(pool->chunks_live > 0);
    pool->chunks_live--;
    if (pool->spare_count >= pool->spare_max) {
        free(c);
        return;
    }
    c->next = pool->spare;
    pool->spare = c;
    pool->spare_count++;
}


/* arena_create - a new arena living in the first chunk it owns */
struct arena *
arena_create(struct arena_pool *pool)
{
    struct arena_chunk *c = pool_get(pool);
    struct arena *a = (struct arena *)chunk_data(c);

    memset(a, 0, sizeof *a);
    a->pool = pool;
    a->first = c;
    a->cur = chunk_data(c) + ARENA_HDR;
    a->end = chunk_data(c) + c->size;
    return a;
}


static void *
arena_alloc_big(struct arena *a, size_t n)
{
    struct arena_big *b = xmalloc(sizeof *b + n);

    b->size = n;
    b->next = a->bigs;
    a->bigs = b;
    return b + 1;
}


/* arena_alloc - n bytes, 16-byte aligned, valid until the next reset */
void *
arena_alloc(struct arena *a, size_t n)
{
    struct arena_chunk *c;
    size_t need = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    void *p;

    if (need == 0)
        need = ARENA_ALIGN;
    a->bytes += need;
#ifdef ARENA_DEBUG
    return arena_alloc_big(a, n);
#endif
    if (likely((size_t)(a->end - a->cur) >= need)) {
        p = a->cur;
        a->cur += need;
        return p;
    }
    if (need > a->pool->chunk_bytes / 4)
        return arena_alloc_big(a, n);
    c = pool_get(a->pool);
    c->next = a->more;
    a->more = c;
    p = chunk_data(c);
    a->cur = chunk_data(c) + need;
    a->end = chunk_data(c) + c->size;
    return p;
}


void *
arena_zalloc(struct arena *a, size_t n)
{
    return memset(arena_alloc(a, n), 0, n);
}


char *
arena_strndup(struct arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);

    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}


char *
arena_strdup(struct arena *a, const char *s)
{
    return arena_strndup(a, s, strlen(s));
}


char *
arena_printf(struct arena *a, const char *fmt, ...)
{
    va_list ap;
    char *p;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    ASSERT(n >= 0);
    p = arena_alloc(a, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}


/* arena_cleanup_add - run fn(arg) when the arena is reset or destroyed */
void
arena_cleanup_add(struct arena *a, arena_cleanup_fn *fn, void *arg)
{
    struct arena_cleanup *cl = arena_alloc(a, sizeof *cl);

    cl->fn = fn;
    cl->arg = arg;
    cl->next = a->cleanups;
    a->cleanups = cl;
}


/* arena_reset - run cleanups, free everything but the first chunk */
void
arena_reset(struct arena *a)
{
    /*
     * Cleanups may allocate from this arena (rarely) or register more
     * cleanups; take the list first so each one runs exactly once.
     */
    while (a->cleanups != NULL) {
        struct arena_cleanup *cl = a->cleanups;

        a->cleanups = cl->next;
        cl->fn(cl->arg);
    }
    while (a->bigs != NULL) {
        struct arena_big *b = a->bigs;

        a->bigs = b->next;
        free(b);
    }
    while (a->more != NULL) {
        struct arena_chunk *c = a->more;

        a->more = c->next;
        pool_put(a->pool, c);
    }
    a->cur = chunk_data(a->first) + ARENA_HDR;
    a->end = chunk_data(a->first) + a->first->size;
    a->bytes = 0;
}


void
arena_destroy(struct arena *a)
{
    struct arena_pool *pool = a->pool;
    struct arena_chunk *first = a->first;

    arena_reset(a);
    pool_put(pool, first);
}


size_t
arena_bytes(const struct arena *a)
{
    return a->bytes;
}


struct arena_pool *
arena_pool_of(const struct arena *a)
{
    return a->pool;
}
