/* Connection limits shared by the workers: per route, and per client address. */
#include "lifeline/limits.h"

#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Open sessions of one route from one client address. */
struct limit_entry {
    struct limit_entry *next;
    const struct limit_route *route;
    int family;
    uint8_t addr[16];
    uint64_t open;
};

static void key_of(const struct sockaddr *sa, int *family, uint8_t addr[16])
{
    memset(addr, 0, 16);
    *family = sa->sa_family;
    /* Copied by offset: a struct sockaddr need not be aligned as the
     * family's own struct. */
    if (sa->sa_family == AF_INET)
        memcpy(addr, (const char *)sa + offsetof(struct sockaddr_in, sin_addr), 4);
    else if (sa->sa_family == AF_INET6)
        memcpy(addr, (const char *)sa + offsetof(struct sockaddr_in6, sin6_addr), 16);
}

static size_t bucket_of(const struct limits *l, const struct limit_route *route,
                        const uint8_t addr[16])
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)(uintptr_t)route;
    for (int i = 0; i < 16; i++)
        h = (h ^ addr[i]) * 1099511628211ull;
    return (size_t)(h % l->n_buckets);
}

int limits_init(struct limits *l)
{
    memset(l, 0, sizeof(*l));
    l->n_buckets = 1024;
    l->buckets = calloc(l->n_buckets, sizeof(*l->buckets));
    if (l->buckets == NULL)
        return -ENOMEM;
    pthread_mutex_init(&l->lock, NULL);
    return 0;
}

void limits_destroy(struct limits *l)
{
    for (size_t i = 0; l->buckets != NULL && i < l->n_buckets; i++) {
        while (l->buckets[i] != NULL) {
            struct limit_entry *e = l->buckets[i];
            l->buckets[i] = e->next;
            free(e);
        }
    }
    while (l->routes != NULL) {
        struct limit_route *r = l->routes;
        l->routes = r->next;
        free(r);
    }
    free(l->buckets);
    l->buckets = NULL;
    pthread_mutex_destroy(&l->lock);
}

struct limit_route *limits_route(struct limits *l, const char *name)
{
    pthread_mutex_lock(&l->lock);
    struct limit_route *r = l->routes;
    while (r != NULL && strcmp(r->name, name) != 0)
        r = r->next;
    if (r == NULL && (r = calloc(1, sizeof(*r) + strlen(name) + 1)) != NULL) {
        memcpy(r->name, name, strlen(name) + 1);
        atomic_init(&r->open, 0);
        r->next = l->routes;
        l->routes = r;
    }
    pthread_mutex_unlock(&l->lock);
    return r;
}

static struct limit_entry **find(struct limits *l, const struct limit_route *route, int family,
                                 const uint8_t addr[16])
{
    struct limit_entry **p = &l->buckets[bucket_of(l, route, addr)];
    while (*p != NULL && !((*p)->route == route && (*p)->family == family &&
                           memcmp((*p)->addr, addr, 16) == 0))
        p = &(*p)->next;
    return p;
}

int limits_take(struct limits *l, struct limit_route *route, const struct sockaddr *sa,
                uint64_t max_route, uint64_t max_per_address)
{
    int family;
    uint8_t addr[16];
    key_of(sa, &family, addr);
    /* Both checks and both counts under the lock: a take refused for its
     * address never holds a route slot, even for a moment, so it cannot make
     * another client's take see the route full. (limits_give() lowers the
     * route count outside the lock; that only frees room.) */
    pthread_mutex_lock(&l->lock);
    if (max_route != 0 && atomic_load(&route->open) >= max_route) {
        pthread_mutex_unlock(&l->lock);
        return -1;
    }
    int rc = 0;
    struct limit_entry **p = find(l, route, family, addr);
    if (*p == NULL) {
        struct limit_entry *e = calloc(1, sizeof(*e));
        if (e != NULL) {
            e->route = route;
            e->family = family;
            memcpy(e->addr, addr, 16);
            *p = e;
        }
    }
    if (*p != NULL && max_per_address != 0 && (*p)->open >= max_per_address)
        rc = -2;
    else if (*p != NULL)
        (*p)->open++;
    if (rc == 0)
        atomic_fetch_add(&route->open, 1);
    pthread_mutex_unlock(&l->lock);
    return rc;
}

void limits_give(struct limits *l, struct limit_route *route, const struct sockaddr *sa)
{
    int family;
    uint8_t addr[16];
    key_of(sa, &family, addr);
    atomic_fetch_sub(&route->open, 1);
    pthread_mutex_lock(&l->lock);
    struct limit_entry **p = find(l, route, family, addr);
    struct limit_entry *e = *p;
    if (e != NULL && --e->open == 0) {
        *p = e->next;
        free(e);
    }
    pthread_mutex_unlock(&l->lock);
}
