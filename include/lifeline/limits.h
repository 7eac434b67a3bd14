/* Connection limits shared by the workers: per route, and per client address. */
#ifndef LIFELINE_LIMITS_H
#define LIFELINE_LIMITS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "lifeline/table.h"

/* One route's open sessions, kept by route name so that the count spans
 * config reloads: sessions started before and after a reload share it. */
struct limit_route {
    SLIST_ENTRY(limit_route) link;
    _Atomic uint64_t open;
    char name[];
};
SLIST_HEAD(limit_route_list, limit_route);

/* Counts of open sessions that the workers check at accept time. Taken
 * once when a session starts and once when it ends, never on the relay path. */
struct limits {
    pthread_mutex_t lock;           /* guards both tables */
    struct limit_route_list routes; /* grows only: entries live as long as the limits */
    struct table addresses;         /* struct limit_entry: per route and client address */
};

int limits_init(struct limits *l);
void limits_destroy(struct limits *l);

/* The counter of the route with this name, created on first use. The
 * pointer stays valid until limits_destroy(). NULL on ENOMEM. */
struct limit_route *limits_route(struct limits *l, const char *name);

/* Which bound refused a take. */
enum limits_full {
    LIMITS_ROUTE_FULL,   /* the route has max_route sessions */
    LIMITS_ADDRESS_FULL, /* the address has max_per_address sessions on the route */
};

/* Counts one more session of `route` from `sa` unless that would pass a
 * non-zero max. Returns 0, or -EBUSY with *full saying which bound, in
 * which case nothing was counted. An IPv4-mapped address counts as the
 * IPv4 address it maps. */
int limits_take(struct limits *l, struct limit_route *route, const struct sockaddr *sa,
                uint64_t max_route, uint64_t max_per_address, enum limits_full *full);

/* Gives back what limits_take() counted. */
void limits_give(struct limits *l, struct limit_route *route, const struct sockaddr *sa);

#endif
