/* Counters: per worker and route, written by one loop, summed when read; Prometheus text. */
#ifndef LIFELINE_METRICS_H
#define LIFELINE_METRICS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "lifeline/config.h"
#include "lifeline/reason.h"

/* Every counter of a route and of a server, defined once: X(ID, slots).
 * The structs, the per-worker sums and the Prometheus text (the series
 * table in metrics.c) all come from these lists. */
#define ROUTE_COUNTERS(X)                                                                          \
    X(SESSIONS_ACTIVE, 1)                                                                          \
    X(SESSIONS_TOTAL, 1)                                                                           \
    X(CLOSES, REASON_COUNT) /* one per enum reason */                                              \
    X(BYTES_FROM_CLIENT, 1)                                                                        \
    X(BYTES_FROM_SERVER, 1)                                                                        \
    X(TAKEOVERS, 1)                                                                                \
    X(DENIED, DENY_COUNT) /* one per enum deny_cause */                                            \
    X(ACCEPT_ERRORS, 1)

#define SERVER_COUNTERS(X)                                                                         \
    X(ATTEMPTS, 1)                                                                                 \
    X(FAILURES, 1)

/* Slot indexes: RC_CLOSES + reason is the closes for that reason. */
enum route_counter {
#define ROUTE_COUNTER_ENUM_(id, slots) RC_##id, RC_##id##_LAST_ = RC_##id + (slots)-1,
    ROUTE_COUNTERS(ROUTE_COUNTER_ENUM_)
#undef ROUTE_COUNTER_ENUM_
        RC_COUNT
};

enum server_counter {
#define SERVER_COUNTER_ENUM_(id, slots) SC_##id, SC_##id##_LAST_ = SC_##id + (slots)-1,
    SERVER_COUNTERS(SERVER_COUNTER_ENUM_)
#undef SERVER_COUNTER_ENUM_
        SC_COUNT
};

/* One upstream server's connection tries on one worker. */
struct server_stats {
    STAILQ_ENTRY(server_stats) link;
    _Atomic uint64_t c[SC_COUNT]; /* enum server_counter */
    char label[ADDR_STR_MAX];     /* "host:port" as written in the config */
};

/* One route's counters on one worker, kept by route name: a reload that
 * keeps the name keeps the counters. Only that worker's loop writes them
 * (metric_add), any thread reads them (metric_get): no lock, no atomic
 * read-modify-write on the relay path. */
STAILQ_HEAD(server_stats_list, server_stats);

struct route_stats {
    STAILQ_ENTRY(route_stats) link;
    char name[CONFIG_NAME_MAX];
    _Atomic uint64_t c[RC_COUNT];     /* enum route_counter */
    struct server_stats_list servers; /* every server the route ever had */
};
STAILQ_HEAD(route_stats_list, route_stats);

/* One worker's counters. The lists only grow (entries live until
 * worker_stats_destroy), so a session may keep pointers into them; `lock`
 * guards appends against readers on other threads. */
struct worker_stats {
    pthread_mutex_t lock;
    struct route_stats_list routes;
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

void worker_stats_init(struct worker_stats *ws);
void worker_stats_destroy(struct worker_stats *ws);

/* The counters of this route (by name) and of each of its servers, created
 * on first use. Called by the owning worker's loop. NULL on ENOMEM. */
struct route_stats *metrics_route(struct worker_stats *ws, const struct route_config *route);

/* The counters of one server of a route that metrics_route() returned for a
 * config listing it; NULL if it never did. */
struct server_stats *metrics_server(struct route_stats *r, const struct hostport *server);

struct admin_stats;
struct budget;
struct cluster_stats;

/* Process-wide facts the supervisor owns. */
struct process_stats {
    double start_time; /* Unix time, seconds */
    uint64_t reloads_ok;
    uint64_t reloads_failed;
    /* Live upgrades: carried from process to process (a failed one is
     * counted by the process that stays). */
    uint64_t upgrades_ok;
    uint64_t upgrades_failed;
    double upgrade_seconds;              /* the last one's duration, ok or failed; 0 before any */
    char config_hash[17];                /* the loaded config's hash (config.h) */
    const struct admin_stats *admin;     /* the admin endpoint's own counters */
    const struct budget *budget;         /* descriptors and buffer memory */
    const struct cluster_stats *cluster; /* NULL without a cluster */
    int cluster_refuses;                 /* on_unavailable is "refuse": /readyz needs etcd */
};

/* Renders the Prometheus text exposition of every worker's counters, summed
 * by route name (a route removed by a reload keeps its series). Returns a
 * malloc'd, NUL-terminated string, or NULL on ENOMEM. */
char *metrics_render(struct worker_stats *const *stats, size_t n_workers,
                     const struct process_stats *ps);

#endif
