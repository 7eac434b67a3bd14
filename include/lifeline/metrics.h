/* Counters: per worker and route, written by one loop, summed when read; Prometheus text. */
#ifndef LIFELINE_METRICS_H
#define LIFELINE_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "lifeline/reason.h"

struct config;

/* Why a connection was refused before it became a session. */
enum deny_cause {
    DENY_ALLOW,            /* its address is outside client.allow */
    DENY_MAX_CONNECTIONS,  /* the route is at client.max_connections */
    DENY_MAX_PER_ADDRESS,  /* its address is at client.max_per_address */
};

/* One route's counters on one worker. Only that worker's loop writes them
 * (metric_add), any thread reads them (metric_get): no lock, no atomic
 * read-modify-write on the relay path. */
struct route_stats {
    _Atomic uint64_t sessions_active;
    _Atomic uint64_t sessions_total;
    _Atomic uint64_t closes[REASON_COUNT];
    _Atomic uint64_t bytes_from_client;
    _Atomic uint64_t bytes_from_server;
    _Atomic uint64_t takeovers;
    _Atomic uint64_t denied[3];          /* enum deny_cause */
    _Atomic uint64_t accept_errors;
    _Atomic uint64_t *connect_attempts;  /* one per upstream server */
    _Atomic uint64_t *connect_failures;
};

static inline void metric_add(_Atomic uint64_t *m, uint64_t n)
{
    /* Single writer: a plain load and store, still free of torn reads. */
    atomic_store_explicit(m, atomic_load_explicit(m, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void metric_sub(_Atomic uint64_t *m, uint64_t n)
{
    atomic_store_explicit(m, atomic_load_explicit(m, memory_order_relaxed) - n,
                          memory_order_relaxed);
}

static inline uint64_t metric_get(_Atomic uint64_t *m)
{
    return atomic_load_explicit(m, memory_order_relaxed);
}

/* Allocates zeroed counters for every route of cfg. Returns NULL on ENOMEM. */
struct route_stats *metrics_routes_new(const struct config *cfg);
void metrics_routes_free(struct route_stats *r, size_t n_routes);

/* Process-wide facts the supervisor owns. */
struct process_stats {
    double start_time;            /* Unix time, seconds */
    uint64_t reloads_ok;
    uint64_t reloads_failed;
    char config_hash[17];         /* FNV-1a of the loaded file, hex */
};

/* Renders the Prometheus text exposition of every worker's counters
 * (stats[w] is worker w's array of cfg->n_routes). Returns a malloc'd,
 * NUL-terminated string, or NULL on ENOMEM. */
char *metrics_render(const struct config *cfg, struct route_stats *const *stats,
                     size_t n_workers, const struct process_stats *ps);

/* FNV-1a 64 of a buffer, as 16 hex digits. */
void metrics_hash(const void *data, size_t len, char out[17]);

#endif
