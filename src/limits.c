/* Connection limits shared by the workers: per route, and per client address. */
#include "lifeline/limits.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "lifeline/addr.h"

/* Open sessions of one route from one client address. */
struct limit_entry {
    struct table_node node; /* first: the table hands nodes back */
    struct limit_key {
        const struct limit_route *route;
        struct addr_key client;
    } key; /* zero-padded: compared and hashed as bytes */
    uint64_t open;
};

static uint64_t key_of(struct limit_key *k, const struct limit_route *route,
                       const struct sockaddr *sa)
{
    memset(k, 0, sizeof(*k));
    k->route = route;
    addr_key_of(&k->client, sa, 0);
    return hash_bytes(HASH_SEED, k, sizeof(*k));
}

static int entry_is(const struct table_node *n, const void *key)
{
    const struct limit_entry *e = (const struct limit_entry *)n;
    return memcmp(&e->key, key, sizeof(e->key)) == 0;
}

int limits_init(struct limits *l)
{
    memset(l, 0, sizeof(*l));
    int rc = table_init(&l->addresses);
    if (rc != 0)
        return rc;
    rc = -pthread_mutex_init(&l->lock, NULL);
    if (rc != 0)
        table_destroy(&l->addresses);
    return rc;
}

void limits_destroy(struct limits *l)
{
    table_free(&l->addresses);
    struct limit_route *r;
    while ((r = SLIST_FIRST(&l->routes)) != NULL) {
        SLIST_REMOVE_HEAD(&l->routes, link);
        free(r);
    }
    pthread_mutex_destroy(&l->lock);
}

struct limit_route *limits_route(struct limits *l, const char *name)
{
    pthread_mutex_lock(&l->lock);
    struct limit_route *r;
    SLIST_FOREACH (r, &l->routes, link)
        if (strcmp(r->name, name) == 0)
            break;
    if (r == NULL && (r = calloc(1, sizeof(*r) + strlen(name) + 1)) != NULL) {
        memcpy(r->name, name, strlen(name) + 1);
        atomic_init(&r->open, 0);
        SLIST_INSERT_HEAD(&l->routes, r, link);
    }
    pthread_mutex_unlock(&l->lock);
    return r;
}

int limits_take(struct limits *l, struct limit_route *route, const struct sockaddr *sa,
                uint64_t max_route, uint64_t max_per_address, enum limits_full *full)
{
    struct limit_key key;
    uint64_t hash = key_of(&key, route, sa);
    /* Both checks and both counts under the lock: a take refused for its
     * address never holds a route slot, even for a moment, so it cannot make
     * another client's take see the route full. (limits_give() lowers the
     * route count outside the lock; that only frees room.) */
    pthread_mutex_lock(&l->lock);
    if (max_route != 0 && atomic_load(&route->open) >= max_route) {
        pthread_mutex_unlock(&l->lock);
        *full = LIMITS_ROUTE_FULL;
        return -EBUSY;
    }
    struct limit_entry *e = (struct limit_entry *)table_find(&l->addresses, hash, &key, entry_is);
    if (e != NULL && max_per_address != 0 && e->open >= max_per_address) {
        pthread_mutex_unlock(&l->lock);
        *full = LIMITS_ADDRESS_FULL;
        return -EBUSY;
    }
    if (e == NULL && (e = calloc(1, sizeof(*e))) != NULL) {
        e->key = key;
        table_insert(&l->addresses, &e->node, hash);
    }
    /* Without memory for the entry the address goes uncounted, as before
     * any limit: the route count still holds. */
    if (e != NULL)
        e->open++;
    atomic_fetch_add(&route->open, 1);
    pthread_mutex_unlock(&l->lock);
    return 0;
}

void limits_give(struct limits *l, struct limit_route *route, const struct sockaddr *sa)
{
    struct limit_key key;
    uint64_t hash = key_of(&key, route, sa);
    atomic_fetch_sub(&route->open, 1);
    pthread_mutex_lock(&l->lock);
    struct limit_entry *e = (struct limit_entry *)table_find(&l->addresses, hash, &key, entry_is);
    if (e != NULL && --e->open == 0) {
        table_remove(&l->addresses, &e->node);
        free(e);
    }
    pthread_mutex_unlock(&l->lock);
}
