/* The one hash function (FNV-1a 64) and the one hash table: chained, intrusive, growing. */
#ifndef LIFELINE_TABLE_H
#define LIFELINE_TABLE_H

#include <stddef.h>
#include <stdint.h>

#define HASH_SEED 0xcbf29ce484222325ull /* the FNV-1a 64 offset basis */

/* Feeds n bytes into h (start from HASH_SEED); returns the new hash. */
uint64_t hash_bytes(uint64_t h, const void *data, size_t n);

/* Embedded in every entry; the table never allocates or frees entries,
 * only its bucket array. */
struct table_node {
    struct table_node *next;
    uint64_t hash;
};

/* Is the entry holding `node` the one `key` names? */
typedef int (*table_eq_fn)(const struct table_node *node, const void *key);

struct table {
    struct table_node **buckets;
    size_t n_buckets; /* a power of two */
    size_t n_entries;
};

/* Returns 0 or -ENOMEM. */
int table_init(struct table *t);
/* Frees the bucket array; the entries are their owner's to free (see table_clear). */
void table_destroy(struct table *t);

/* The entry with this hash that `eq` says is `key`, or NULL. */
struct table_node *table_find(const struct table *t, uint64_t hash, const void *key,
                              table_eq_fn eq);

/* Adds an entry (the caller knows it is not there yet). The table doubles
 * its buckets when it holds more entries than buckets; if that allocation
 * fails it keeps the old array, only with longer chains. */
void table_insert(struct table *t, struct table_node *node, uint64_t hash);

/* Takes an entry that is in the table out of it. */
void table_remove(struct table *t, struct table_node *node);

/* Takes every entry out, passing each to `drop` (which may free it). */
void table_clear(struct table *t, void (*drop)(struct table_node *node));

/* table_clear() with free() as `drop`, then table_destroy(): for entries
 * that were malloc'd with their node first. */
void table_free(struct table *t);

#endif
