/* Unit tests for deadline.c: the pairing heap's order under random
 * operations, and firing on a real loop. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdlib.h>

#include "lifeline/deadline.h"

#define N 300

struct item {
    struct deadline d; /* first */
    int set;           /* the model: is it set, and for when */
    uint64_t at;
    int fired;
};

static struct item items[N];
static uint64_t last_fired_at;
static int fired_total;
static int disorder;

/* Every child is due no sooner than its parent; returns the nodes below. */
static size_t check_tree(const struct deadline *d)
{
    size_t n = 0;
    for (const struct deadline *c = d->child; c != NULL; c = c->next) {
        assert_true(c->at >= d->at);
        assert_true(c->prev == d || c->prev->next == c);
        n += 1 + check_tree(c);
    }
    return n;
}

static void check(struct deadlines *q)
{
    size_t want = 0;
    uint64_t min = UINT64_MAX;
    for (int i = 0; i < N; i++) {
        assert_int_equal(deadline_is_set(q, &items[i].d), items[i].set);
        if (items[i].set) {
            want++;
            if (items[i].at < min)
                min = items[i].at;
        }
    }
    assert_int_equal(q->n, want);
    if (want == 0) {
        assert_null(q->root);
        return;
    }
    assert_non_null(q->root);
    assert_int_equal(q->root->at, min);
    assert_null(q->root->prev);
    assert_null(q->root->next);
    assert_int_equal(1 + check_tree(q->root), want);
}

static void no_fire(struct deadline *d) { (void)d; }

static void test_random_operations_keep_the_order(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct deadlines q;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(deadlines_init(&q, &loop, no_fire), 0);
    for (int i = 0; i < N; i++) {
        deadline_init(&items[i].d);
        items[i].set = 0;
    }
    srand(7);
    for (int step = 0; step < 20000; step++) {
        struct item *it = &items[rand() % N];
        if (rand() % 3 == 0) {
            deadline_clear(&q, &it->d);
            it->set = 0;
        } else {
            /* Few distinct times: equal deadlines are the common case. */
            it->at = 1000 + (uint64_t)(rand() % 50);
            deadline_set(&q, &it->d, it->at);
            it->set = 1;
        }
        if (step % 97 == 0)
            check(&q);
    }
    check(&q);
    for (int i = 0; i < N; i++) {
        deadline_clear(&q, &items[i].d);
        items[i].set = 0;
    }
    check(&q);
    deadlines_close(&q);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void record_fire(struct deadline *d)
{
    struct item *it = (struct item *)d;
    it->fired++;
    fired_total++;
    if (it->at < last_fired_at)
        disorder++;
    last_fired_at = it->at;
    it->set = 0;
}

static void test_fires_each_once_in_order(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct deadlines q;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(deadlines_init(&q, &loop, record_fire), 0);
    uint64_t now = uv_now(&loop);
    srand(11);
    fired_total = disorder = 0;
    last_fired_at = 0;
    for (int i = 0; i < N; i++) {
        deadline_init(&items[i].d);
        items[i] = (struct item){ .set = 1, .at = now + (uint64_t)(rand() % 40) };
        deadline_set(&q, &items[i].d, items[i].at);
    }
    /* Cleared ones never fire. */
    for (int i = 0; i < N; i += 10) {
        deadline_clear(&q, &items[i].d);
        items[i].set = 0;
    }
    uv_run(&loop, UV_RUN_DEFAULT); /* returns once the timer has nothing left */
    assert_int_equal(fired_total, N - N / 10);
    assert_int_equal(disorder, 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(items[i].fired, i % 10 == 0 ? 0 : 1);
    assert_true(uv_now(&loop) >= now + 30);
    deadlines_close(&q);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A deadline that its fire sets again fires again; one that is due stays
 * so until it has fired. */
static struct deadlines *again_q;
static int again_count;

static void fire_again(struct deadline *d)
{
    again_count++;
    if (again_count < 5)
        deadline_set(again_q, d, uv_now(again_q->timer.loop) + 1);
}

static void test_set_again_from_fire(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct deadlines q;
    struct deadline d;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(deadlines_init(&q, &loop, fire_again), 0);
    again_q = &q;
    again_count = 0;
    deadline_init(&d);
    uint64_t start = uv_now(&loop);
    deadline_set(&q, &d, start);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(again_count, 5);
    assert_true(uv_now(&loop) >= start + 4);
    assert_false(deadline_is_set(&q, &d));
    deadlines_close(&q);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_operations_keep_the_order),
        cmocka_unit_test(test_fires_each_once_in_order),
        cmocka_unit_test(test_set_again_from_fire),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
