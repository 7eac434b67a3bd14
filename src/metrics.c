/* Counters: per worker and route, written by one loop, summed when read; Prometheus text. */
#include "lifeline/metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lifeline/config.h"

/* Every metric family, once: name, type, help. */
#define METRIC_FAMILIES(X)                                                                  \
    X(SESSIONS_ACTIVE, "lifeline_sessions_active", "gauge", "Sessions open now.")          \
    X(SESSIONS_TOTAL, "lifeline_sessions_total", "counter", "Sessions accepted.")          \
    X(CLOSES, "lifeline_session_closes_total", "counter", "Sessions closed, by reason.")   \
    X(BYTES, "lifeline_bytes_total", "counter",                                            \
      "Bytes relayed, by direction (from_client, from_server).")                          \
    X(CONNECT_ATTEMPTS, "lifeline_upstream_connect_attempts_total", "counter",             \
      "Connection tries to each upstream server.")                                         \
    X(CONNECT_FAILURES, "lifeline_upstream_connect_failures_total", "counter",             \
      "Failed connection tries to each upstream server.")                                  \
    X(TAKEOVERS, "lifeline_takeovers_total", "counter",                                    \
      "Sessions that replaced an older session of the same client.")                       \
    X(REJECTIONS, "lifeline_rejections_total", "counter",                                  \
      "Connections closed because their client already had a session.")                   \
    X(LIVENESS, "lifeline_liveness_expiries_total", "counter",                             \
      "Sessions ended because the client was found dead, by kind.")                        \
    X(DENIED, "lifeline_denied_total", "counter",                                          \
      "Connections refused by access control or limits, by cause.")                        \
    X(ACCEPT_ERRORS, "lifeline_accept_errors_total", "counter", "Failed accepts.")         \
    X(RELOADS, "lifeline_config_reloads_total", "counter",                                 \
      "Configuration reloads, by result.")                                                 \
    X(CONFIG_INFO, "lifeline_config_info", "gauge",                                        \
      "Always 1; the hash label identifies the loaded configuration file.")                \
    X(START_TIME, "lifeline_process_start_time_seconds", "gauge",                          \
      "Start time of the process since the Unix epoch, in seconds.")                       \
    X(WORKERS, "lifeline_workers", "gauge", "Worker threads.")

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

static const char *const deny_names[] = {
    [DENY_ALLOW] = "allow", [DENY_MAX_CONNECTIONS] = "max_connections",
    [DENY_MAX_PER_ADDRESS] = "max_per_address",
};

/* The liveness kinds, as close reasons. */
static const struct {
    enum reason reason;
    const char *kind;
} liveness_kinds[] = {
    { REASON_CLIENT_SILENCE, "silence" },
    { REASON_CLIENT_KEEPALIVE, "keepalive" },
    { REASON_CLIENT_USER_TIMEOUT, "user_timeout" },
};

struct route_stats *metrics_routes_new(const struct config *cfg)
{
    struct route_stats *r = calloc(cfg->n_routes, sizeof(*r));
    if (r == NULL)
        return NULL;
    for (size_t i = 0; i < cfg->n_routes; i++) {
        size_t n = cfg->routes[i].upstream.n_servers;
        r[i].connect_attempts = calloc(n, sizeof(*r[i].connect_attempts));
        r[i].connect_failures = calloc(n, sizeof(*r[i].connect_failures));
        if (r[i].connect_attempts == NULL || r[i].connect_failures == NULL) {
            metrics_routes_free(r, i + 1);
            return NULL;
        }
    }
    return r;
}

void metrics_routes_free(struct route_stats *r, size_t n_routes)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < n_routes; i++) {
        free(r[i].connect_attempts);
        free(r[i].connect_failures);
    }
    free(r);
}

void metrics_hash(const void *data, size_t len, char out[17])
{
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    snprintf(out, 17, "%016" PRIx64, h);
}

/* --- text output ---------------------------------------------------------- */

struct text {
    char *buf;
    size_t len, cap;
    int oom;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct text *t, const char *fmt, ...)
{
    if (t->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n;
        char *b = realloc(t->buf, cap);
        if (b == NULL) {
            t->oom = 1;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

static void header(struct text *t, enum family f)
{
    put(t, "# HELP %s %s\n# TYPE %s %s\n", families[f].name, families[f].help, families[f].name,
        families[f].type);
}

/* Sums one counter of one route (at byte offset `off` in struct
 * route_stats) over every worker. */
static uint64_t sum(struct route_stats *const *stats, size_t n_workers, size_t route, size_t off)
{
    uint64_t total = 0;
    for (size_t w = 0; w < n_workers; w++)
        total += metric_get((_Atomic uint64_t *)((char *)&stats[w][route] + off));
    return total;
}

#define SUM(field) sum(stats, n_workers, r, offsetof(struct route_stats, field))

char *metrics_render(const struct config *cfg, struct route_stats *const *stats,
                     size_t n_workers, const struct process_stats *ps)
{
    struct text t = { .cap = 16384 };
    t.buf = malloc(t.cap);
    if (t.buf == NULL)
        return NULL;
    t.buf[0] = '\0';
    size_t nr = cfg->n_routes;

#define PER_ROUTE(fam, field)                                                         \
    do {                                                                              \
        header(&t, fam);                                                              \
        for (size_t r = 0; r < nr; r++)                                               \
            put(&t, "%s{route=\"%s\"} %" PRIu64 "\n", families[fam].name,            \
                cfg->routes[r].name, SUM(field));                \
    } while (0)

    PER_ROUTE(FAMILY_SESSIONS_ACTIVE, sessions_active);
    PER_ROUTE(FAMILY_SESSIONS_TOTAL, sessions_total);

    header(&t, FAMILY_CLOSES);
    for (size_t r = 0; r < nr; r++)
        for (int why = 0; why < REASON_COUNT; why++)
            put(&t, "%s{route=\"%s\",reason=\"%s\"} %" PRIu64 "\n", families[FAMILY_CLOSES].name,
                cfg->routes[r].name, reason_name((enum reason)why),
                SUM(closes[why]));

    header(&t, FAMILY_BYTES);
    for (size_t r = 0; r < nr; r++) {
        put(&t, "%s{route=\"%s\",direction=\"from_client\"} %" PRIu64 "\n",
            families[FAMILY_BYTES].name, cfg->routes[r].name,
            SUM(bytes_from_client));
        put(&t, "%s{route=\"%s\",direction=\"from_server\"} %" PRIu64 "\n",
            families[FAMILY_BYTES].name, cfg->routes[r].name,
            SUM(bytes_from_server));
    }

    for (int f = FAMILY_CONNECT_ATTEMPTS; f <= FAMILY_CONNECT_FAILURES; f++) {
        header(&t, (enum family)f);
        for (size_t r = 0; r < nr; r++) {
            const struct upstream_config *u = &cfg->routes[r].upstream;
            for (size_t i = 0; i < u->n_servers; i++) {
                char server[ADDR_STR_MAX];
                uint64_t sum = 0;
                for (size_t w = 0; w < n_workers; w++)
                    sum += metric_get(f == FAMILY_CONNECT_ATTEMPTS ? &stats[w][r].connect_attempts[i]
                                                                   : &stats[w][r].connect_failures[i]);
                put(&t, "%s{route=\"%s\",server=\"%s\"} %" PRIu64 "\n", families[f].name,
                    cfg->routes[r].name, addr_format_hostport(&u->servers[i], server, sizeof(server)),
                    sum);
            }
        }
    }

    PER_ROUTE(FAMILY_TAKEOVERS, takeovers);
    PER_ROUTE(FAMILY_REJECTIONS, closes[REASON_REJECTED]);

    header(&t, FAMILY_LIVENESS);
    for (size_t r = 0; r < nr; r++)
        for (size_t k = 0; k < sizeof(liveness_kinds) / sizeof(liveness_kinds[0]); k++)
            put(&t, "%s{route=\"%s\",kind=\"%s\"} %" PRIu64 "\n", families[FAMILY_LIVENESS].name,
                cfg->routes[r].name, liveness_kinds[k].kind,
                SUM(closes[liveness_kinds[k].reason]));

    header(&t, FAMILY_DENIED);
    for (size_t r = 0; r < nr; r++)
        for (size_t c = 0; c < sizeof(deny_names) / sizeof(deny_names[0]); c++)
            put(&t, "%s{route=\"%s\",cause=\"%s\"} %" PRIu64 "\n", families[FAMILY_DENIED].name,
                cfg->routes[r].name, deny_names[c], SUM(denied[c]));

    PER_ROUTE(FAMILY_ACCEPT_ERRORS, accept_errors);
#undef PER_ROUTE

    header(&t, FAMILY_RELOADS);
    put(&t, "%s{result=\"ok\"} %" PRIu64 "\n%s{result=\"failed\"} %" PRIu64 "\n",
        families[FAMILY_RELOADS].name, ps->reloads_ok, families[FAMILY_RELOADS].name,
        ps->reloads_failed);
    header(&t, FAMILY_CONFIG_INFO);
    put(&t, "%s{hash=\"%s\"} 1\n", families[FAMILY_CONFIG_INFO].name, ps->config_hash);
    header(&t, FAMILY_START_TIME);
    put(&t, "%s %.3f\n", families[FAMILY_START_TIME].name, ps->start_time);
    header(&t, FAMILY_WORKERS);
    put(&t, "%s %zu\n", families[FAMILY_WORKERS].name, n_workers);

    if (t.oom) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}
