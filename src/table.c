/* The one hash function (FNV-1a 64) and the one hash table: chained, intrusive, growing. */
#include "lifeline/table.h"

#include <errno.h>
#include <stdlib.h>

#define TABLE_MIN_BUCKETS 64

uint64_t hash_bytes(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

int table_init(struct table *t)
{
    t->n_entries = 0;
    t->n_buckets = TABLE_MIN_BUCKETS;
    t->buckets = calloc(t->n_buckets, sizeof(*t->buckets));
    return t->buckets == NULL ? -ENOMEM : 0;
}

void table_destroy(struct table *t)
{
    free(t->buckets);
    t->buckets = NULL;
    t->n_buckets = t->n_entries = 0;
}

static struct table_node **bucket(const struct table *t, uint64_t hash)
{
    return &t->buckets[hash & (t->n_buckets - 1)];
}

struct table_node *table_find(const struct table *t, uint64_t hash, const void *key, table_eq_fn eq)
{
    for (struct table_node *n = *bucket(t, hash); n != NULL; n = n->next)
        if (n->hash == hash && eq(n, key))
            return n;
    return NULL;
}

static void grow(struct table *t)
{
    size_t n_buckets = t->n_buckets * 2;
    struct table_node **b = calloc(n_buckets, sizeof(*b));
    if (b == NULL)
        return;
    for (size_t i = 0; i < t->n_buckets; i++) {
        while (t->buckets[i] != NULL) {
            struct table_node *n = t->buckets[i];
            t->buckets[i] = n->next;
            n->next = b[n->hash & (n_buckets - 1)];
            b[n->hash & (n_buckets - 1)] = n;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->n_buckets = n_buckets;
}

void table_insert(struct table *t, struct table_node *node, uint64_t hash)
{
    if (t->n_entries >= t->n_buckets)
        grow(t);
    node->hash = hash;
    struct table_node **b = bucket(t, hash);
    node->next = *b;
    *b = node;
    t->n_entries++;
}

void table_remove(struct table *t, struct table_node *node)
{
    for (struct table_node **p = bucket(t, node->hash); *p != NULL; p = &(*p)->next) {
        if (*p == node) {
            *p = node->next;
            node->next = NULL;
            t->n_entries--;
            return;
        }
    }
}

void table_clear(struct table *t, void (*drop)(struct table_node *node))
{
    for (size_t i = 0; i < t->n_buckets; i++) {
        while (t->buckets[i] != NULL) {
            struct table_node *n = t->buckets[i];
            t->buckets[i] = n->next;
            n->next = NULL;
            drop(n);
        }
    }
    t->n_entries = 0;
}

static void free_node(struct table_node *n) { free(n); }

void table_free(struct table *t)
{
    table_clear(t, free_node);
    table_destroy(t);
}
