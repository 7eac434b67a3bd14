/* Unit tests for table.c: FNV-1a and the growing intrusive hash table. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lifeline/table.h"

struct item {
    struct table_node node;
    int key;
    int dropped;
};

static int item_is(const struct table_node *n, const void *key)
{
    return ((const struct item *)n)->key == *(const int *)key;
}

/* A poor hash on purpose: many keys share a value, so chains form. */
static uint64_t weak_hash(int key) { return (uint64_t)(key % 7); }

static struct item *find(struct table *t, int key, uint64_t (*h)(int))
{
    return (struct item *)table_find(t, h(key), &key, item_is);
}

static uint64_t fnv(int key) { return hash_bytes(HASH_SEED, &key, sizeof(key)); }

static void test_fnv1a_vectors(void **state)
{
    (void)state;
    /* The published FNV-1a 64 test vectors. */
    assert_int_equal(hash_bytes(HASH_SEED, "", 0), 0xcbf29ce484222325ull);
    assert_int_equal(hash_bytes(HASH_SEED, "a", 1), 0xaf63dc4c8601ec8cull);
    assert_int_equal(hash_bytes(HASH_SEED, "foobar", 6), 0x85944171f73967e8ull);
    /* Fed in pieces, the same as at once. */
    assert_int_equal(hash_bytes(hash_bytes(HASH_SEED, "foo", 3), "bar", 3), 0x85944171f73967e8ull);
}

static void check_many(uint64_t (*h)(int))
{
    enum { N = 5000 };
    struct table t;
    assert_int_equal(table_init(&t), 0);
    size_t first = t.n_buckets;
    struct item *items = calloc(N, sizeof(*items));
    assert_non_null(items);
    for (int i = 0; i < N; i++) {
        items[i].key = i * 3;
        assert_null(find(&t, i * 3, h));
        table_insert(&t, &items[i].node, h(i * 3));
    }
    assert_int_equal(t.n_entries, N);
    assert_true(t.n_buckets > first);
    assert_true(t.n_buckets >= N / 2);
    assert_int_equal(t.n_buckets & (t.n_buckets - 1), 0);
    for (int i = 0; i < N; i++) {
        assert_ptr_equal(find(&t, i * 3, h), &items[i]);
        assert_null(find(&t, i * 3 + 1, h));
    }
    /* Every other one out, from the middle of chains. */
    for (int i = 0; i < N; i += 2)
        table_remove(&t, &items[i].node);
    assert_int_equal(t.n_entries, N / 2);
    for (int i = 0; i < N; i++) {
        if (i % 2)
            assert_ptr_equal(find(&t, i * 3, h), &items[i]);
        else
            assert_null(find(&t, i * 3, h));
    }
    table_destroy(&t);
    free(items);
}

static void test_many_fnv(void **state)
{
    (void)state;
    check_many(fnv);
}

static void test_many_collisions(void **state)
{
    (void)state;
    check_many(weak_hash);
}

static int dropped;

static void drop(struct table_node *n)
{
    ((struct item *)n)->dropped++;
    dropped++;
}

static void test_clear_hands_every_entry_back(void **state)
{
    (void)state;
    enum { N = 300 };
    static struct item items[N];
    struct table t;
    assert_int_equal(table_init(&t), 0);
    for (int i = 0; i < N; i++) {
        items[i].key = i;
        table_insert(&t, &items[i].node, fnv(i));
    }
    dropped = 0;
    table_clear(&t, drop);
    assert_int_equal(dropped, N);
    assert_int_equal(t.n_entries, 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(items[i].dropped, 1);
        assert_null(find(&t, i, fnv));
    }
    /* Usable again after a clear. */
    table_insert(&t, &items[0].node, fnv(0));
    assert_ptr_equal(find(&t, 0, fnv), &items[0]);
    table_destroy(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fnv1a_vectors),
        cmocka_unit_test(test_many_fnv),
        cmocka_unit_test(test_many_collisions),
        cmocka_unit_test(test_clear_hands_every_entry_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
