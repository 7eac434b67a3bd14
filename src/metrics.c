/* Counters: per worker and route, written by one loop, summed when read; Prometheus text. */
#include "lifeline/metrics.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lifeline/admin.h"
#include "lifeline/budget.h"
#include "lifeline/cluster.h"
#include "lifeline/config.h"

/* Every metric family, once: name, type, help. */
#define METRIC_FAMILIES(X)                                                                         \
    X(SESSIONS_ACTIVE, "lifeline_sessions_active", "gauge", "Sessions open now.")                  \
    X(SESSIONS_TOTAL, "lifeline_sessions_total", "counter",                                        \
      "Connections accepted, denied ones included.")                                               \
    X(CLOSES, "lifeline_session_closes_total", "counter", "Sessions closed, by reason.")           \
    X(BYTES, "lifeline_bytes_total", "counter",                                                    \
      "Bytes relayed, by direction (from_client, from_server).")                                   \
    X(CONNECT_ATTEMPTS, "lifeline_upstream_connect_attempts_total", "counter",                     \
      "Connection tries to each upstream server.")                                                 \
    X(CONNECT_FAILURES, "lifeline_upstream_connect_failures_total", "counter",                     \
      "Failed connection tries to each upstream server.")                                          \
    X(TAKEOVERS, "lifeline_takeovers_total", "counter",                                            \
      "Sessions that replaced an older session of the same client.")                               \
    X(REJECTIONS, "lifeline_rejections_total", "counter",                                          \
      "Connections closed because their client already had a session.")                            \
    X(LIVENESS, "lifeline_liveness_expiries_total", "counter",                                     \
      "Sessions ended because the client was found dead, by kind.")                                \
    X(DENIED, "lifeline_denied_total", "counter",                                                  \
      "Connections refused by access control or limits, by cause.")                                \
    X(ACCEPT_ERRORS, "lifeline_accept_errors_total", "counter", "Failed accepts.")                 \
    X(RELOADS, "lifeline_config_reloads_total", "counter", "Configuration reloads, by result.")    \
    X(UPGRADES, "lifeline_upgrades_total", "counter",                                              \
      "Live upgrades, by result; carried over to each new process.")                               \
    X(UPGRADE_SECONDS, "lifeline_upgrade_duration_seconds", "gauge",                               \
      "How long the last live upgrade took, from SIGUSR2 until the new process relayed again.")    \
    X(CONFIG_INFO, "lifeline_config_info", "gauge",                                                \
      "Always 1; the hash label identifies the loaded configuration file.")                        \
    X(START_TIME, "lifeline_process_start_time_seconds", "gauge",                                  \
      "Start time of the process since the Unix epoch, in seconds.")                               \
    X(WORKERS, "lifeline_workers", "gauge", "Worker threads.")                                     \
    X(FDS, "lifeline_session_descriptors", "gauge",                                                \
      "Descriptors held by sessions now (two per session, counted from accept).")                  \
    X(FDS_MAX, "lifeline_session_descriptors_max", "gauge",                                        \
      "The descriptor limit less what the rest of the process keeps for itself.")                  \
    X(BUFFER, "lifeline_buffer_bytes", "gauge",                                                    \
      "Memory in relay buffers held by sessions now (may pass the _max bound by one "              \
      "read per worker and 64 KiB per stalled session).")                                          \
    X(BUFFER_MAX, "lifeline_buffer_bytes_max", "gauge",                                            \
      "buffer_total_bytes: past it lifeline stops reading.")                                       \
    X(ADMIN_REQUESTS, "lifeline_admin_requests_total", "counter",                                  \
      "Admin endpoint requests, by endpoint.")                                                     \
    X(ADMIN_OVERLOAD, "lifeline_admin_overload_total", "counter",                                  \
      "Admin clients cut short, by action (timeout, evicted, busy).")                              \
    X(CLUSTER_UP, "lifeline_cluster_up", "gauge", "1 while this instance holds its etcd lease.")   \
    X(CLUSTER_CLAIMS, "lifeline_cluster_claims_total", "counter",                                  \
      "Identity claims decided through etcd, by result.")                                          \
    X(CLUSTER_EVICTIONS, "lifeline_cluster_evictions_total", "counter",                            \
      "Cross-instance evictions, by direction (requested: of another instance; received).")        \
    X(CLUSTER_RENEW_FAILURES, "lifeline_cluster_lease_renew_failures_total", "counter",            \
      "Lease renewals that failed.")                                                               \
    X(CLUSTER_FENCES, "lifeline_cluster_fences_total", "counter",                                  \
      "Times the lease was given up as lost.")                                                     \
    X(CLUSTER_FENCED, "lifeline_cluster_fenced_sessions_total", "counter",                         \
      "Sessions closed because the lease was lost.")                                               \
    X(CLUSTER_RTT, "lifeline_cluster_etcd_request_seconds", "histogram",                           \
      "Round trip of each etcd request.")

enum family {
#define FAMILY_ENUM_(id, name, type, help) FAMILY_##id,
    METRIC_FAMILIES(FAMILY_ENUM_)
#undef FAMILY_ENUM_
};

static const struct {
    const char *name, *type, *help;
} families[] = {
#define FAMILY_ROW_(id, n, t, h) [FAMILY_##id] = { n, t, h },
    METRIC_FAMILIES(FAMILY_ROW_)
#undef FAMILY_ROW_
};

static const char *deny_label(size_t i) { return deny_name((enum deny_cause)i); }
static const char *reason_label(size_t i) { return reason_name((enum reason)i); }

static const char *direction_label(size_t i) { return i == 0 ? "from_client" : "from_server"; }

/* The liveness kinds: the three client_* liveness reasons, in their order. */
static const char *liveness_label(size_t i)
{
    static const char *const kinds[] = { "silence", "keepalive", "user_timeout" };
    return kinds[i];
}

/* Where each per-route family's series come from, in exposition order:
 * `n` counters from `first`, one series each, labelled label="value(i)"
 * (only the route label when `label` is NULL). With `server`, one series
 * per server of the route, from that server's counter `first`. */
static const struct series {
    enum family family;
    enum route_counter first;
    size_t n;
    const char *label;
    const char *(*value)(size_t i);
    int server; /* 1: a server counter (first is enum server_counter) */
} route_series[] = {
    { FAMILY_SESSIONS_ACTIVE, RC_SESSIONS_ACTIVE, 1, NULL, NULL, 0 },
    { FAMILY_SESSIONS_TOTAL, RC_SESSIONS_TOTAL, 1, NULL, NULL, 0 },
    { FAMILY_CLOSES, RC_CLOSES, REASON_COUNT, "reason", reason_label, 0 },
    { FAMILY_BYTES, RC_BYTES_FROM_CLIENT, 2, "direction", direction_label, 0 },
    { FAMILY_CONNECT_ATTEMPTS, (enum route_counter)SC_ATTEMPTS, 1, "server", NULL, 1 },
    { FAMILY_CONNECT_FAILURES, (enum route_counter)SC_FAILURES, 1, "server", NULL, 1 },
    { FAMILY_TAKEOVERS, RC_TAKEOVERS, 1, NULL, NULL, 0 },
    { FAMILY_REJECTIONS, RC_CLOSES + REASON_REJECTED, 1, NULL, NULL, 0 },
    { FAMILY_LIVENESS, RC_CLOSES + REASON_CLIENT_SILENCE, 3, "kind", liveness_label, 0 },
    { FAMILY_DENIED, RC_DENIED, DENY_COUNT, "cause", deny_label, 0 },
    { FAMILY_ACCEPT_ERRORS, RC_ACCEPT_ERRORS, 1, NULL, NULL, 0 },
};

_Static_assert(RC_BYTES_FROM_SERVER == RC_BYTES_FROM_CLIENT + 1,
               "the directions are contiguous, in direction_label's order");
_Static_assert(REASON_CLIENT_KEEPALIVE == REASON_CLIENT_SILENCE + 1 &&
                   REASON_CLIENT_USER_TIMEOUT == REASON_CLIENT_SILENCE + 2,
               "the liveness reasons are contiguous, in liveness_label's order");

void worker_stats_init(struct worker_stats *ws)
{
    pthread_mutex_init(&ws->lock, NULL); /* default attributes: cannot fail (glibc) */
    STAILQ_INIT(&ws->routes);
}

static void routes_free(struct route_stats_list *list)
{
    struct route_stats *r;
    while ((r = STAILQ_FIRST(list)) != NULL) {
        STAILQ_REMOVE_HEAD(list, link);
        struct server_stats *sv;
        while ((sv = STAILQ_FIRST(&r->servers)) != NULL) {
            STAILQ_REMOVE_HEAD(&r->servers, link);
            free(sv);
        }
        free(r);
    }
}

void worker_stats_destroy(struct worker_stats *ws)
{
    routes_free(&ws->routes);
    pthread_mutex_destroy(&ws->lock);
}

/* Appends keep the config's order in the exposition. Callers hold the lock
 * when the list is shared. */
static struct route_stats *route_find_or_add(struct route_stats_list *list, const char *name)
{
    struct route_stats *r;
    STAILQ_FOREACH (r, list, link)
        if (strcmp(r->name, name) == 0)
            return r;
    r = calloc(1, sizeof(*r));
    if (r != NULL) {
        snprintf(r->name, sizeof(r->name), "%s", name);
        STAILQ_INIT(&r->servers);
        STAILQ_INSERT_TAIL(list, r, link);
    }
    return r;
}

static struct server_stats *server_find(struct route_stats *r, const char *label, int add)
{
    struct server_stats *sv;
    STAILQ_FOREACH (sv, &r->servers, link)
        if (strcmp(sv->label, label) == 0)
            return sv;
    if (!add)
        return NULL;
    sv = calloc(1, sizeof(*sv));
    if (sv != NULL) {
        snprintf(sv->label, sizeof(sv->label), "%s", label);
        STAILQ_INSERT_TAIL(&r->servers, sv, link);
    }
    return sv;
}

struct route_stats *metrics_route(struct worker_stats *ws, const struct route_config *route)
{
    pthread_mutex_lock(&ws->lock);
    struct route_stats *r = route_find_or_add(&ws->routes, route->name);
    for (size_t i = 0; r != NULL && i < route->upstream.n_servers; i++) {
        char label[ADDR_STR_MAX];
        addr_format_hostport(&route->upstream.servers[i], label, sizeof(label));
        if (server_find(r, label, 1) == NULL)
            r = NULL; /* out of memory: what was added stays, and is harmless */
    }
    pthread_mutex_unlock(&ws->lock);
    return r;
}

struct server_stats *metrics_server(struct route_stats *r, const struct hostport *server)
{
    /* Only the owning loop appends, and it is the caller: no lock needed. */
    char label[ADDR_STR_MAX];
    addr_format_hostport(server, label, sizeof(label));
    return server_find(r, label, 0);
}

/* --- text output ---------------------------------------------------------- */

static void header(FILE *t, enum family f)
{
    fprintf(t, "# HELP %s %s\n# TYPE %s %s\n", families[f].name, families[f].help, families[f].name,
            families[f].type);
}

static void sum_into(struct route_stats *d, struct route_stats *r)
{
    for (size_t i = 0; i < RC_COUNT; i++)
        metric_add(&d->c[i], metric_get(&r->c[i]));
}

/* Every worker's counters summed by route name and server into `sums`
 * (*oom set when memory ran out). The caller frees the list. */
static void sum_workers(struct worker_stats *const *stats, size_t n_workers,
                        struct route_stats_list *sums, int *oom)
{
    for (size_t w = 0; w < n_workers && !*oom; w++) {
        pthread_mutex_lock(&stats[w]->lock);
        struct route_stats *r;
        STAILQ_FOREACH (r, &stats[w]->routes, link) {
            if (*oom)
                break;
            struct route_stats *d = route_find_or_add(sums, r->name);
            if (d == NULL) {
                *oom = 1;
                break;
            }
            sum_into(d, r);
            struct server_stats *sv;
            STAILQ_FOREACH (sv, &r->servers, link) {
                struct server_stats *ds = server_find(d, sv->label, 1);
                if (ds == NULL) {
                    *oom = 1;
                    break;
                }
                for (size_t i = 0; i < SC_COUNT; i++)
                    metric_add(&ds->c[i], metric_get(&sv->c[i]));
            }
        }
        pthread_mutex_unlock(&stats[w]->lock);
    }
}

static void render_cluster(FILE *t, const struct cluster_stats *cs)
{
    header(t, FAMILY_CLUSTER_UP);
    fprintf(t, "%s %d\n", families[FAMILY_CLUSTER_UP].name, atomic_load(&cs->up));
    header(t, FAMILY_CLUSTER_CLAIMS);
    for (int r = 0; r < CLUSTER_RESULT_COUNT; r++)
        fprintf(t, "%s{result=\"%s\"} %" PRIu64 "\n", families[FAMILY_CLUSTER_CLAIMS].name,
                cluster_result_name((enum cluster_result)r), atomic_load(&cs->claims[r]));
    header(t, FAMILY_CLUSTER_EVICTIONS);
    fprintf(t, "%s{direction=\"requested\"} %" PRIu64 "\n%s{direction=\"received\"} %" PRIu64 "\n",
            families[FAMILY_CLUSTER_EVICTIONS].name, atomic_load(&cs->evictions_requested),
            families[FAMILY_CLUSTER_EVICTIONS].name, atomic_load(&cs->evictions_received));
    const struct {
        enum family fam;
        const _Atomic uint64_t *v;
    } counters[] = {
        { FAMILY_CLUSTER_RENEW_FAILURES, &cs->renew_failures },
        { FAMILY_CLUSTER_FENCES, &cs->fences },
        { FAMILY_CLUSTER_FENCED, &cs->fenced_sessions },
    };
    for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
        header(t, counters[i].fam);
        fprintf(t, "%s %" PRIu64 "\n", families[counters[i].fam].name, atomic_load(counters[i].v));
    }
    const char *rtt = families[FAMILY_CLUSTER_RTT].name;
    header(t, FAMILY_CLUSTER_RTT);
    uint64_t cumulative = 0;
    for (size_t b = 0; b <= CLUSTER_RTT_BUCKETS; b++) {
        cumulative += atomic_load(&cs->rtt_buckets[b]);
        if (b < CLUSTER_RTT_BUCKETS)
            fprintf(t, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", rtt, cluster_rtt_bounds_us[b] / 1e6,
                    cumulative);
        else
            fprintf(t, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", rtt, cumulative);
    }
    fprintf(t, "%s_sum %.6f\n%s_count %" PRIu64 "\n", rtt, atomic_load(&cs->rtt_sum_us) / 1e6, rtt,
            cumulative);
}

char *metrics_render(struct worker_stats *const *stats, size_t n_workers,
                     const struct process_stats *ps)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *t = open_memstream(&buf, &len);
    if (t == NULL)
        return NULL;
    int oom = 0;
    struct route_stats_list sums = STAILQ_HEAD_INITIALIZER(sums);
    sum_workers(stats, n_workers, &sums, &oom);

    for (size_t k = 0; k < sizeof(route_series) / sizeof(route_series[0]); k++) {
        const struct series *se = &route_series[k];
        const char *name = families[se->family].name;
        if (k == 0 || route_series[k - 1].family != se->family)
            header(t, se->family);
        struct route_stats *r;
        STAILQ_FOREACH (r, &sums, link) {
            if (se->server) {
                struct server_stats *sv;
                STAILQ_FOREACH (sv, &r->servers, link)
                    fprintf(t, "%s{route=\"%s\",server=\"%s\"} %" PRIu64 "\n", name, r->name,
                            sv->label, metric_get(&sv->c[se->first]));
            } else if (se->label == NULL) {
                fprintf(t, "%s{route=\"%s\"} %" PRIu64 "\n", name, r->name,
                        metric_get(&r->c[se->first]));
            } else {
                for (size_t i = 0; i < se->n; i++)
                    fprintf(t, "%s{route=\"%s\",%s=\"%s\"} %" PRIu64 "\n", name, r->name, se->label,
                            se->value(i), metric_get(&r->c[se->first + i]));
            }
        }
    }

    routes_free(&sums);

    header(t, FAMILY_RELOADS);
    fprintf(t, "%s{result=\"ok\"} %" PRIu64 "\n%s{result=\"failed\"} %" PRIu64 "\n",
            families[FAMILY_RELOADS].name, ps->reloads_ok, families[FAMILY_RELOADS].name,
            ps->reloads_failed);
    header(t, FAMILY_UPGRADES);
    fprintf(t, "%s{result=\"ok\"} %" PRIu64 "\n%s{result=\"failed\"} %" PRIu64 "\n",
            families[FAMILY_UPGRADES].name, ps->upgrades_ok, families[FAMILY_UPGRADES].name,
            ps->upgrades_failed);
    header(t, FAMILY_UPGRADE_SECONDS);
    fprintf(t, "%s %.3f\n", families[FAMILY_UPGRADE_SECONDS].name, ps->upgrade_seconds);
    header(t, FAMILY_CONFIG_INFO);
    fprintf(t, "%s{hash=\"%s\"} 1\n", families[FAMILY_CONFIG_INFO].name, ps->config_hash);
    header(t, FAMILY_START_TIME);
    fprintf(t, "%s %.3f\n", families[FAMILY_START_TIME].name, ps->start_time);
    header(t, FAMILY_WORKERS);
    fprintf(t, "%s %zu\n", families[FAMILY_WORKERS].name, n_workers);
    if (ps->budget != NULL) {
        const struct {
            enum family fam;
            const _Atomic int64_t *v;
        } gauges[] = {
            { FAMILY_FDS, &ps->budget->fds_used },
            { FAMILY_FDS_MAX, &ps->budget->fds_max },
            { FAMILY_BUFFER, &ps->budget->buf_used },
            { FAMILY_BUFFER_MAX, &ps->budget->buf_max },
        };
        for (size_t g = 0; g < sizeof(gauges) / sizeof(gauges[0]); g++) {
            header(t, gauges[g].fam);
            fprintf(t, "%s %" PRId64 "\n", families[gauges[g].fam].name, atomic_load(gauges[g].v));
        }
    }
    if (ps->admin != NULL) {
        header(t, FAMILY_ADMIN_REQUESTS);
        for (int e = 0; e < ADMIN_EP_COUNT; e++)
            fprintf(t, "%s{endpoint=\"%s\"} %" PRIu64 "\n", families[FAMILY_ADMIN_REQUESTS].name,
                    admin_endpoint_name((enum admin_endpoint)e), ps->admin->requests[e]);
        header(t, FAMILY_ADMIN_OVERLOAD);
        for (int o = 0; o < ADMIN_OVERLOAD_COUNT; o++)
            fprintf(t, "%s{action=\"%s\"} %" PRIu64 "\n", families[FAMILY_ADMIN_OVERLOAD].name,
                    admin_overload_name((enum admin_overload)o), ps->admin->overload[o]);
    }

    if (ps->cluster != NULL)
        render_cluster(t, ps->cluster);

    if (fclose(t) != 0 || oom) {
        free(buf);
        return NULL;
    }
    return buf;
}
