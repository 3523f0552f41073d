/*
 * queue_test - priority order, fairness, round robin, the timer wheel,
 *              backoff
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "queue.h"

#define ITEMS 1000

static struct queue_item items[ITEMS];


static struct queue_item *
item(unsigned i, unsigned priority)
{
    memset(&items[i], 0, sizeof items[i]);
    items[i].priority = priority;
    return &items[i];
}


static void
test_priority_then_fifo(void **state)
{
    struct queue q;
    struct queue_dest *d;

    queue_init(&q, 0);
    d = queue_dest_get(&q, "a.test");
    queue_ready(&q, d, item(0, 50));
    queue_ready(&q, d, item(1, 100));
    queue_ready(&q, d, item(2, 50));
    queue_ready(&q, d, item(3, 100));
    assert_ptr_equal(queue_pop(&q, d), &items[1]);
    assert_ptr_equal(queue_pop(&q, d), &items[3]);
    assert_ptr_equal(queue_pop(&q, d), &items[0]);
    assert_ptr_equal(queue_pop(&q, d), &items[2]);
    assert_null(queue_pop(&q, d));
    assert_int_equal(q.ready, 0);
    queue_fini(&q);
}


/* Under a steady flood of priority mail, normal mail gets >= 1 in 10. */
static void
test_no_starvation(void **state)
{
    struct queue q;
    struct queue_dest *d;
    unsigned i, next = 0, normal_sent = 0, sends = 0;

    queue_init(&q, 0);
    d = queue_dest_get(&q, "flood.test");
    for (i = 0; i < 100; i++)
        queue_ready(&q, d, item(next++, 50));
    /* Each send is replaced by a new priority message. */
    for (sends = 0; sends < 500; sends++) {
        struct queue_item *it = queue_pop(&q, d);

        assert_non_null(it);
        if (it->priority == 50)
            normal_sent++;
        if (next < ITEMS)
            queue_ready(&q, d, item(next++, 100));
    }
    assert_true(normal_sent * QUEUE_FAIR_EVERY >= sends);
    queue_fini(&q);
}


static void
test_round_robin_destinations(void **state)
{
    struct queue q;
    struct queue_dest *a, *b, *c, *d;
    unsigned i, seen_a = 0, seen_b = 0, seen_c = 0;

    queue_init(&q, 0);
    a = queue_dest_get(&q, "A.test");
    b = queue_dest_get(&q, "b.test");
    c = queue_dest_get(&q, "c.test");
    assert_ptr_equal(queue_dest_get(&q, "a.TEST"), a);
    assert_string_equal(a->name, "a.test");
    for (i = 0; i < 30; i++)
        queue_ready(&q, a, item(i, 50));
    queue_ready(&q, b, item(30, 50));
    queue_ready(&q, c, item(31, 50));
    for (i = 0; i < 6; i++) {
        d = queue_next_dest(&q);
        seen_a += d == a;
        seen_b += d == b;
        seen_c += d == c;
    }
    assert_int_equal(seen_a, 2);
    assert_int_equal(seen_b, 2);
    assert_int_equal(seen_c, 2);
    /* Emptied destinations leave the ring. */
    assert_non_null(queue_pop(&q, b));
    assert_non_null(queue_pop(&q, c));
    for (i = 0; i < 3; i++)
        assert_ptr_equal(queue_next_dest(&q), a);
    queue_fini(&q);
}


static void
test_many_destinations(void **state)
{
    struct queue q;
    char name[32];
    unsigned i;

    queue_init(&q, 0);
    for (i = 0; i < 500; i++) {
        snprintf(name, sizeof name, "d%u.test", i);
        queue_ready(&q, queue_dest_get(&q, name), item(i, 50));
    }
    assert_int_equal(q.dest_count, 500);
    for (i = 0; i < 500; i++) {
        snprintf(name, sizeof name, "D%u.TEST", i);
        assert_ptr_equal(queue_dest_get(&q, name), items[i].dest);
    }
    queue_fini(&q);
}


static void
test_wheel_due_order(void **state)
{
    struct queue q;
    struct queue_dest *d;
    uint64_t now = 1000000;

    queue_init(&q, now);
    d = queue_dest_get(&q, "w.test");
    queue_ready(&q, d, item(0, 50));
    queue_ready(&q, d, item(1, 50));
    queue_ready(&q, d, item(2, 50));
    queue_pop(&q, d);
    queue_pop(&q, d);
    queue_pop(&q, d);
    queue_defer(&q, &items[0], now + 1000);
    queue_defer(&q, &items[1], now + 250);
    /* beyond one revolution of the wheel */
    queue_defer(&q, &items[2],
                now + (uint64_t)QUEUE_WHEEL_SLOTS * QUEUE_TICK_MS + 500);
    assert_int_equal(q.deferred, 3);
    assert_int_equal(queue_advance(&q, now + 100), 0);
    assert_int_equal(queue_advance(&q, now + 260), 1);
    assert_ptr_equal(queue_pop(&q, d), &items[1]);
    assert_int_equal(queue_advance(&q, now + 999), 0);
    assert_int_equal(queue_advance(&q, now + 1000), 1);
    assert_ptr_equal(queue_pop(&q, d), &items[0]);
    /* One revolution later the far item is still not due. */
    assert_int_equal(queue_advance(&q, now + (uint64_t)QUEUE_WHEEL_SLOTS *
                                            QUEUE_TICK_MS), 0);
    assert_int_equal(queue_advance(&q, now + (uint64_t)QUEUE_WHEEL_SLOTS *
                                            QUEUE_TICK_MS + 500), 1);
    assert_int_equal(q.deferred, 0);
    assert_int_equal(queue_next_due_ms(&q), UINT64_MAX);
    queue_fini(&q);
}


static void
test_wheel_long_sleep_and_remove(void **state)
{
    struct queue q;
    struct queue_dest *d;
    unsigned i;

    queue_init(&q, 0);
    d = queue_dest_get(&q, "s.test");
    for (i = 0; i < 100; i++) {
        /* New items are deferred straight away (their first try later). */
        item(i, 50)->dest = d;
        queue_defer(&q, &items[i], (uint64_t)i * 3600 * 1000);
    }
    assert_int_equal(q.deferred, 100);
    queue_remove(&q, &items[7]);
    assert_int_equal(q.deferred, 99);
    /* A jump of days: everything due comes out, once. */
    assert_int_equal(queue_advance(&q, 5ull * 24 * 3600 * 1000), 99);
    assert_int_equal(q.ready, 99);
    queue_remove(&q, &items[8]);
    assert_int_equal(q.ready, 98);
    queue_fini(&q);
}


static void
test_backoff(void **state)
{
    uint64_t s = 1000, cap = 12 * 3600 * 1000ull;

    /* rnd % 41 == 20 gives exactly 100% */
    assert_int_equal(queue_backoff_ms(s, cap, 1, 20), 1000);
    assert_int_equal(queue_backoff_ms(s, cap, 2, 20), 2000);
    assert_int_equal(queue_backoff_ms(s, cap, 5, 20), 16000);
    assert_int_equal(queue_backoff_ms(s, cap, 60, 20), cap);
    assert_int_equal(queue_backoff_ms(s, cap, 1, 0), 800);
    assert_int_equal(queue_backoff_ms(s, cap, 1, 40), 1200);
    /* Max_Retry_Interval caps the doubling: 1, 2, 3, 3, ... s */
    assert_int_equal(queue_backoff_ms(s, 3000, 2, 20), 2000);
    assert_int_equal(queue_backoff_ms(s, 3000, 3, 20), 3000);
    assert_int_equal(queue_backoff_ms(s, 3000, 9, 20), 3000);
    /* an interval above the cap is kept as it is */
    assert_int_equal(queue_backoff_ms(cap * 2, cap, 3, 20), cap * 2);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_priority_then_fifo),
        cmocka_unit_test(test_no_starvation),
        cmocka_unit_test(test_round_robin_destinations),
        cmocka_unit_test(test_many_destinations),
        cmocka_unit_test(test_wheel_due_order),
        cmocka_unit_test(test_wheel_long_sleep_and_remove),
        cmocka_unit_test(test_backoff),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
