/* Connection limits shared by the workers: per route, and per client address. */
#ifndef LIFELINE_LIMITS_H
#define LIFELINE_LIMITS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct limit_entry;

/* Counts of open sessions that the workers check at accept time. Taken
 * once when a session starts and once when it ends, never on the relay path. */
struct limits {
    _Atomic uint64_t *route_open;   /* per route index */
    size_t n_routes;
    pthread_mutex_t lock;           /* guards the per-address table */
    struct limit_entry **buckets;
    size_t n_buckets;
};

int limits_init(struct limits *l, size_t n_routes);
void limits_destroy(struct limits *l);

/* Counts one more session of `route` from `sa` unless that would pass a
 * non-zero max. Returns 0, or -1 (route full) or -2 (address full), in which
 * case nothing was counted. */
int limits_take(struct limits *l, size_t route, const struct sockaddr *sa,
                uint64_t max_route, uint64_t max_per_address);

/* Gives back what limits_take() counted. */
void limits_give(struct limits *l, size_t route, const struct sockaddr *sa);

#endif
