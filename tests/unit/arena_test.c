/*
 * arena_test - bump allocation, alignment, big blocks, cleanups, reset
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "arena.h"

static int cleanup_order[8];
static int cleanup_count;


static void
record_cleanup(void *arg)
{
    cleanup_order[cleanup_count++] = (int)(intptr_t)arg;
}


static void
test_alignment_and_contents(void **state)
{
    struct arena_pool pool;
    struct arena *a;
    char *p[100];
    int i;

    arena_pool_init(&pool, 4096, 8);
    a = arena_create(&pool);
    for (i = 0; i < 100; i++) {
        p[i] = arena_alloc(a, (size_t)i + 1);
        assert_int_equal((uintptr_t)p[i] % 16, 0);
        memset(p[i], i, (size_t)i + 1);
    }
    /* Nothing overlaps: every block still holds its own byte. */
    for (i = 0; i < 100; i++)
        assert_int_equal((unsigned char)p[i][i], i);
    assert_string_equal(arena_strdup(a, "hello"), "hello");
    assert_string_equal(arena_printf(a, "%d-%s", 42, "x"), "42-x");
    arena_destroy(a);
    assert_int_equal(pool.chunks_live, 0);
    arena_pool_fini(&pool);
}


static void
test_big_blocks_and_reset(void **state)
{
    struct arena_pool pool;
    struct arena *a;
    char *big;

    arena_pool_init(&pool, 4096, 8);
    a = arena_create(&pool);
    big = arena_alloc(a, 1 << 20);
    memset(big, 1, 1 << 20);
    for (int i = 0; i < 10; i++)
        (void)arena_alloc(a, 900);   /* more than one chunk holds */
#ifndef ARENA_DEBUG
    assert_true(pool.chunks_live >= 2);
#endif
    arena_reset(a);
    assert_int_equal(pool.chunks_live, 1);
    assert_int_equal(arena_bytes(a), 0);
    arena_destroy(a);
    assert_int_equal(pool.chunks_live, 0);
    arena_pool_fini(&pool);
}


static void
test_pool_reuses_chunks(void **state)
{
    struct arena_pool pool;
    uint64_t allocs;
    int i;

    arena_pool_init(&pool, 4096, 8);
    arena_destroy(arena_create(&pool));
    allocs = pool.system_allocs;
    for (i = 0; i < 1000; i++)
        arena_destroy(arena_create(&pool));
    assert_int_equal(pool.system_allocs, allocs);
    arena_pool_fini(&pool);
}


static void
test_cleanups_run_once_in_reverse(void **state)
{
    struct arena_pool pool;
    struct arena *a;

    cleanup_count = 0;
    arena_pool_init(&pool, 4096, 8);
    a = arena_create(&pool);
    arena_cleanup_add(a, record_cleanup, (void *)1);
    arena_cleanup_add(a, record_cleanup, (void *)2);
    arena_reset(a);
    assert_int_equal(cleanup_count, 2);
    assert_int_equal(cleanup_order[0], 2);
    assert_int_equal(cleanup_order[1], 1);
    arena_cleanup_add(a, record_cleanup, (void *)3);
    arena_destroy(a);
    assert_int_equal(cleanup_count, 3);
    assert_int_equal(cleanup_order[2], 3);
    arena_pool_fini(&pool);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alignment_and_contents),
        cmocka_unit_test(test_big_blocks_and_reset),
        cmocka_unit_test(test_pool_reuses_chunks),
        cmocka_unit_test(test_cleanups_run_once_in_reverse),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
