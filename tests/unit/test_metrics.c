/* Unit tests for metrics.c: per-worker counters summed by route and server, and the exact Prometheus text. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lifeline/admin.h"
#include "lifeline/budget.h"
#include "lifeline/config.h"
#include "lifeline/metrics.h"
#include "lifeline/reason.h"

/* The names as operators see them, written out here rather than read from
 * reason.c: a renamed reason must fail this test. In enum order. */
static const char *const reasons[] = {
    "client_eof", "client_reset", "client_silence", "client_keepalive", "client_user_timeout",
    "replaced",   "rejected",     "upstream_eof",   "upstream_reset",   "upstream_connect_failed",
    "admin_kill", "shutdown",     "denied",         "fenced",           "cluster_unavailable",
};
static const char *const causes[] = { "allow", "max_connections", "max_per_address" };
static const char *const endpoints[] = { "healthz",  "readyz", "metrics",
                                         "sessions", "close",  "other" };
static const char *const overloads[] = { "timeout", "evicted", "busy" };

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* Every family, in exposition order, with its type. */
static const struct {
    const char *name, *type;
    int process; /* 0: per route; 1: always; 2: with a budget; 3: with admin stats */
} families[] = {
    { "lifeline_sessions_active", "gauge", 0 },
    { "lifeline_sessions_total", "counter", 0 },
    { "lifeline_session_closes_total", "counter", 0 },
    { "lifeline_bytes_total", "counter", 0 },
    { "lifeline_upstream_connect_attempts_total", "counter", 0 },
    { "lifeline_upstream_connect_failures_total", "counter", 0 },
    { "lifeline_takeovers_total", "counter", 0 },
    { "lifeline_rejections_total", "counter", 0 },
    { "lifeline_liveness_expiries_total", "counter", 0 },
    { "lifeline_denied_total", "counter", 0 },
    { "lifeline_accept_errors_total", "counter", 0 },
    { "lifeline_config_reloads_total", "counter", 1 },
    { "lifeline_upgrades_total", "counter", 1 },
    { "lifeline_upgrade_duration_seconds", "gauge", 1 },
    { "lifeline_config_info", "gauge", 1 },
    { "lifeline_process_start_time_seconds", "gauge", 1 },
    { "lifeline_workers", "gauge", 1 },
    { "lifeline_session_descriptors", "gauge", 2 },
    { "lifeline_session_descriptors_max", "gauge", 2 },
    { "lifeline_buffer_bytes", "gauge", 2 },
    { "lifeline_buffer_bytes_max", "gauge", 2 },
    { "lifeline_admin_requests_total", "counter", 3 },
    { "lifeline_admin_overload_total", "counter", 3 },
};

/* Two routes; "a" has two servers, one of them IPv6. */
static const char config_json[] = "{\"routes\":["
                                  "{\"name\":\"a\",\"listen\":\"127.0.0.1:5001\","
                                  "\"upstream\":{\"servers\":[\"127.0.0.1:6001\",\"[::1]:6002\"]}},"
                                  "{\"name\":\"b\",\"listen\":\"127.0.0.1:5002\","
                                  "\"upstream\":{\"servers\":[\"127.0.0.1:6003\"]}}]}";

/* What a reload dropped: a route that only worker 1 still has counters for. */
static const char old_config_json[] =
    "{\"routes\":[{\"name\":\"old\",\"listen\":\"127.0.0.1:5003\","
    "\"upstream\":{\"servers\":[\"127.0.0.1:6004\"]}}]}";

static struct config *parse(const char *json)
{
    struct config *cfg = NULL;
    struct config_errors errs = { 0 };
    int rc = config_parse(json, strlen(json), &cfg, &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "config: %s\n", errs.msgs[i]);
    config_errors_free(&errs);
    assert_int_equal(rc, 0);
    return cfg;
}

/* How many lines of text are exactly `line`. */
static int count_line(const char *text, const char *line)
{
    size_t len = strlen(line);
    int n = 0;
    for (const char *p = text; *p != '\0';) {
        const char *end = strchr(p, '\n');
        assert_non_null(end); /* every line ends with a newline */
        if ((size_t)(end - p) == len && memcmp(p, line, len) == 0)
            n++;
        p = end + 1;
    }
    return n;
}

/* How many lines begin with `prefix`. */
static int count_prefix(const char *text, const char *prefix)
{
    size_t len = strlen(prefix);
    int n = 0;
    for (const char *p = text; *p != '\0';) {
        const char *end = strchr(p, '\n');
        assert_non_null(end);
        if ((size_t)(end - p) >= len && memcmp(p, prefix, len) == 0)
            n++;
        p = end + 1;
    }
    return n;
}

/* The text holds this line exactly once. */
static void expect_line(const char *text, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void expect_line(const char *text, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    int n = count_line(text, line);
    if (n != 1)
        fail_msg("want exactly one line \"%s\", found %d in:\n%s", line, n, text);
}

/* Every sample belongs to the family whose TYPE line came last, each family
 * is declared once (HELP then TYPE) and its samples are contiguous. Returns
 * the number of samples. */
static int check_grouping(const char *text)
{
    char current[128] = "";
    int samples = 0;
    for (const char *p = text; *p != '\0';) {
        const char *end = strchr(p, '\n');
        assert_non_null(end);
        char line[512];
        size_t len = (size_t)(end - p);
        assert_true(len < sizeof(line));
        memcpy(line, p, len);
        line[len] = '\0';
        p = end + 1;
        if (strncmp(line, "# HELP ", 7) == 0) {
            char name[128];
            assert_int_equal(sscanf(line + 7, "%127s", name), 1);
            /* The TYPE line follows at once. */
            char want[160];
            snprintf(want, sizeof(want), "# TYPE %s ", name);
            if (strncmp(p, want, strlen(want)) != 0)
                fail_msg("HELP of %s not followed by its TYPE", name);
            snprintf(current, sizeof(current), "%s", name);
            continue;
        }
        if (strncmp(line, "# TYPE ", 7) == 0)
            continue;
        assert_true(line[0] != '#');
        size_t n = strcspn(line, "{ ");
        if (strlen(current) != n || strncmp(line, current, n) != 0)
            fail_msg("sample \"%s\" outside its family (current: %s)", line, current);
        samples++;
    }
    return samples;
}

/* Worker w's count for slot i of route r: distinct per worker, route and
 * slot, so that a sum from the wrong place shows. */
static uint64_t route_count(int w, int r, int i)
{
    return (uint64_t)(w == 0 ? 1 : 1000) * (uint64_t)(100 * (r + 1) + i + 1);
}

struct fixture {
    struct config *cfg, *old;
    struct worker_stats ws[2];
    struct route_stats *rs[2][2]; /* [worker][route] */
    struct budget budget;
    struct admin_stats admin;
    struct process_stats ps;
};

static int setup(void **state)
{
    static struct fixture f;
    memset(&f, 0, sizeof(f));
    f.cfg = parse(config_json);
    f.old = parse(old_config_json);
    for (int w = 0; w < 2; w++) {
        worker_stats_init(&f.ws[w]);
        for (int r = 0; r < 2; r++) {
            f.rs[w][r] = metrics_route(&f.ws[w], &f.cfg->routes[r]);
            assert_non_null(f.rs[w][r]);
            for (int i = 0; i < RC_COUNT; i++)
                metric_add(&f.rs[w][r]->c[i], route_count(w, r, i));
        }
    }
    /* Server counters of route a: 127.0.0.1:6001 and [::1]:6002. */
    const uint64_t attempts[2][2] = { { 5, 11 }, { 7, 13 } }; /* [worker][server] */
    const uint64_t failures[2][2] = { { 1, 0 }, { 2, 4 } };
    for (int w = 0; w < 2; w++) {
        for (int s = 0; s < 2; s++) {
            struct server_stats *sv =
                metrics_server(f.rs[w][0], &f.cfg->routes[0].upstream.servers[s]);
            assert_non_null(sv);
            metric_add(&sv->c[SC_ATTEMPTS], attempts[w][s]);
            metric_add(&sv->c[SC_FAILURES], failures[w][s]);
        }
    }
    /* Route b's server: worker 1 only. */
    struct server_stats *b1 = metrics_server(f.rs[1][1], &f.cfg->routes[1].upstream.servers[0]);
    assert_non_null(b1);
    metric_add(&b1->c[SC_ATTEMPTS], 9);
    metric_add(&b1->c[SC_FAILURES], 9);
    /* A route that a reload removed: worker 1 still has its counters. */
    struct route_stats *old = metrics_route(&f.ws[1], &f.old->routes[0]);
    assert_non_null(old);
    metric_add(&old->c[RC_CLOSES + REASON_SHUTDOWN], 42);
    metric_add(&old->c[RC_SESSIONS_TOTAL], 42);

    budget_init(&f.budget, 1000, 16 * 1024 * 1024);
    assert_int_equal(budget_take_fds(&f.budget, 4), 0);
    budget_take_buf(&f.budget, 65536 + 123);
    for (int e = 0; e < ADMIN_EP_COUNT; e++)
        f.admin.requests[e] = 10 + (uint64_t)e;
    for (int o = 0; o < ADMIN_OVERLOAD_COUNT; o++)
        f.admin.overload[o] = 20 + (uint64_t)o;
    f.ps = (struct process_stats){ .start_time = 1700000000.25,
                                   .reloads_ok = 3,
                                   .reloads_failed = 1,
                                   .upgrades_ok = 2,
                                   .upgrades_failed = 5,
                                   .upgrade_seconds = 0.125,
                                   .budget = &f.budget,
                                   .admin = &f.admin };
    snprintf(f.ps.config_hash, sizeof(f.ps.config_hash), "%s", f.cfg->hash);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    for (int w = 0; w < 2; w++)
        worker_stats_destroy(&f->ws[w]);
    config_free(f->cfg);
    config_free(f->old);
    return 0;
}

static char *render(struct fixture *f, const struct process_stats *ps)
{
    struct worker_stats *const stats[2] = { &f->ws[0], &f->ws[1] };
    char *text = metrics_render(stats, 2, ps);
    assert_non_null(text);
    size_t len = strlen(text);
    assert_true(len > 0);
    assert_int_equal(text[len - 1], '\n');
    return text;
}

/* The sum of both workers' slot i of route r. */
static uint64_t sum(int r, int i) { return route_count(0, r, i) + route_count(1, r, i); }

static void test_lists_match_the_enums(void **state)
{
    (void)state;
    /* A new reason, cause, endpoint or action must be added here too. */
    assert_int_equal(N_OF(reasons), REASON_COUNT);
    assert_int_equal(N_OF(causes), DENY_COUNT);
    assert_int_equal(N_OF(endpoints), ADMIN_EP_COUNT);
    assert_int_equal(N_OF(overloads), ADMIN_OVERLOAD_COUNT);
}

static void test_route_series_summed(void **state)
{
    struct fixture *f = *state;
    char *text = render(f, &f->ps);
    const char *names[2] = { "a", "b" };
    for (int r = 0; r < 2; r++) {
        const char *n = names[r];
        expect_line(text, "lifeline_sessions_active{route=\"%s\"} %" PRIu64, n,
                    sum(r, RC_SESSIONS_ACTIVE));
        expect_line(text, "lifeline_sessions_total{route=\"%s\"} %" PRIu64, n,
                    sum(r, RC_SESSIONS_TOTAL));
        for (int i = 0; i < REASON_COUNT; i++)
            expect_line(text, "lifeline_session_closes_total{route=\"%s\",reason=\"%s\"} %" PRIu64,
                        n, reasons[i], sum(r, RC_CLOSES + i));
        expect_line(text, "lifeline_bytes_total{route=\"%s\",direction=\"from_client\"} %" PRIu64,
                    n, sum(r, RC_BYTES_FROM_CLIENT));
        expect_line(text, "lifeline_bytes_total{route=\"%s\",direction=\"from_server\"} %" PRIu64,
                    n, sum(r, RC_BYTES_FROM_SERVER));
        expect_line(text, "lifeline_takeovers_total{route=\"%s\"} %" PRIu64, n,
                    sum(r, RC_TAKEOVERS));
        /* Rejections are the closes for reason rejected, nothing else. */
        expect_line(text, "lifeline_rejections_total{route=\"%s\"} %" PRIu64, n,
                    sum(r, RC_CLOSES + REASON_REJECTED));
        expect_line(text,
                    "lifeline_liveness_expiries_total{route=\"%s\",kind=\"silence\"} %" PRIu64, n,
                    sum(r, RC_CLOSES + REASON_CLIENT_SILENCE));
        expect_line(text,
                    "lifeline_liveness_expiries_total{route=\"%s\",kind=\"keepalive\"} %" PRIu64, n,
                    sum(r, RC_CLOSES + REASON_CLIENT_KEEPALIVE));
        expect_line(text,
                    "lifeline_liveness_expiries_total{route=\"%s\",kind=\"user_timeout\"} %" PRIu64,
                    n, sum(r, RC_CLOSES + REASON_CLIENT_USER_TIMEOUT));
        for (int c = 0; c < DENY_COUNT; c++)
            expect_line(text, "lifeline_denied_total{route=\"%s\",cause=\"%s\"} %" PRIu64, n,
                        causes[c], sum(r, RC_DENIED + c));
        expect_line(text, "lifeline_accept_errors_total{route=\"%s\"} %" PRIu64, n,
                    sum(r, RC_ACCEPT_ERRORS));
    }
    free(text);
}

static void test_servers(void **state)
{
    struct fixture *f = *state;
    char *text = render(f, &f->ps);
    expect_line(
        text, "lifeline_upstream_connect_attempts_total{route=\"a\",server=\"127.0.0.1:6001\"} 12");
    expect_line(text,
                "lifeline_upstream_connect_attempts_total{route=\"a\",server=\"[::1]:6002\"} 24");
    expect_line(
        text, "lifeline_upstream_connect_failures_total{route=\"a\",server=\"127.0.0.1:6001\"} 3");
    expect_line(text,
                "lifeline_upstream_connect_failures_total{route=\"a\",server=\"[::1]:6002\"} 4");
    expect_line(
        text, "lifeline_upstream_connect_attempts_total{route=\"b\",server=\"127.0.0.1:6003\"} 9");
    expect_line(
        text, "lifeline_upstream_connect_failures_total{route=\"b\",server=\"127.0.0.1:6003\"} 9");
    expect_line(
        text,
        "lifeline_upstream_connect_attempts_total{route=\"old\",server=\"127.0.0.1:6004\"} 0");
    /* One series per server and route: 2 + 1 + 1. */
    assert_int_equal(count_prefix(text, "lifeline_upstream_connect_attempts_total{"), 4);
    assert_int_equal(count_prefix(text, "lifeline_upstream_connect_failures_total{"), 4);

    /* A server the route never listed has no counters. */
    assert_null(metrics_server(f->rs[0][1], &f->cfg->routes[0].upstream.servers[0]));
    /* Asking again finds the same counters. */
    assert_ptr_equal(metrics_route(&f->ws[0], &f->cfg->routes[0]), f->rs[0][0]);
    free(text);
}

/* A route only one worker still counts (a reload removed it) keeps its
 * series, after the routes of the first worker, with zeros where nothing
 * was counted. */
static void test_removed_route_kept(void **state)
{
    struct fixture *f = *state;
    char *text = render(f, &f->ps);
    expect_line(text, "lifeline_session_closes_total{route=\"old\",reason=\"shutdown\"} 42");
    expect_line(text, "lifeline_session_closes_total{route=\"old\",reason=\"client_eof\"} 0");
    expect_line(text, "lifeline_sessions_total{route=\"old\"} 42");
    expect_line(text, "lifeline_rejections_total{route=\"old\"} 0");
    expect_line(text, "lifeline_liveness_expiries_total{route=\"old\",kind=\"silence\"} 0");
    expect_line(text, "lifeline_denied_total{route=\"old\",cause=\"max_per_address\"} 0");
    /* Routes in order of first appearance: a, b, old. */
    const char *a = strstr(text, "lifeline_sessions_total{route=\"a\"}");
    const char *b = strstr(text, "lifeline_sessions_total{route=\"b\"}");
    const char *old = strstr(text, "lifeline_sessions_total{route=\"old\"}");
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(old);
    assert_true(a < b && b < old);
    /* Every reason of every route: 3 routes. */
    assert_int_equal(count_prefix(text, "lifeline_session_closes_total{"), 3 * REASON_COUNT);
    assert_int_equal(count_prefix(text, "lifeline_denied_total{"), 3 * DENY_COUNT);
    assert_int_equal(count_prefix(text, "lifeline_liveness_expiries_total{"), 3 * 3);
    free(text);
}

static void test_process_series(void **state)
{
    struct fixture *f = *state;
    char *text = render(f, &f->ps);
    expect_line(text, "lifeline_config_reloads_total{result=\"ok\"} 3");
    expect_line(text, "lifeline_config_reloads_total{result=\"failed\"} 1");
    expect_line(text, "lifeline_upgrades_total{result=\"ok\"} 2");
    expect_line(text, "lifeline_upgrades_total{result=\"failed\"} 5");
    expect_line(text, "lifeline_upgrade_duration_seconds 0.125");
    expect_line(text, "lifeline_config_info{hash=\"%s\"} 1", f->cfg->hash);
    assert_int_equal(strlen(f->cfg->hash), 16);
    expect_line(text, "lifeline_process_start_time_seconds 1700000000.250");
    expect_line(text, "lifeline_workers 2");
    expect_line(text, "lifeline_session_descriptors 4");
    expect_line(text, "lifeline_session_descriptors_max 1000");
    expect_line(text, "lifeline_buffer_bytes 65659");
    expect_line(text, "lifeline_buffer_bytes_max 16777216");
    for (int e = 0; e < ADMIN_EP_COUNT; e++)
        expect_line(text, "lifeline_admin_requests_total{endpoint=\"%s\"} %d", endpoints[e],
                    10 + e);
    for (int o = 0; o < ADMIN_OVERLOAD_COUNT; o++)
        expect_line(text, "lifeline_admin_overload_total{action=\"%s\"} %d", overloads[o], 20 + o);
    free(text);
}

/* Without a budget or admin stats, their families are left out entirely. */
static void test_process_series_optional(void **state)
{
    struct fixture *f = *state;
    struct process_stats ps = f->ps;
    ps.budget = NULL;
    ps.admin = NULL;
    char *text = render(f, &ps);
    for (size_t i = 0; i < N_OF(families); i++) {
        char prefix[160];
        snprintf(prefix, sizeof(prefix), "# TYPE %s ", families[i].name);
        assert_int_equal(count_prefix(text, prefix), families[i].process >= 2 ? 0 : 1);
        snprintf(prefix, sizeof(prefix), "%s ", families[i].name);
        int bare = count_prefix(text, prefix);
        snprintf(prefix, sizeof(prefix), "%s{", families[i].name);
        int labelled = count_prefix(text, prefix);
        if (families[i].process >= 2 && bare + labelled != 0)
            fail_msg("%s rendered without its source", families[i].name);
    }
    expect_line(text, "lifeline_workers 2");
    free(text);
}

/* HELP and TYPE once per family, TYPE as declared, samples grouped under
 * their family, and nothing but the families listed. */
static void test_families_declared_once(void **state)
{
    struct fixture *f = *state;
    char *text = render(f, &f->ps);
    int want_samples = 0;
    for (size_t i = 0; i < N_OF(families); i++) {
        char prefix[160];
        snprintf(prefix, sizeof(prefix), "# HELP %s ", families[i].name);
        if (count_prefix(text, prefix) != 1)
            fail_msg("HELP of %s: %d lines, want 1", families[i].name, count_prefix(text, prefix));
        expect_line(text, "# TYPE %s %s", families[i].name, families[i].type);
    }
    assert_int_equal(count_prefix(text, "# HELP "), N_OF(families));
    assert_int_equal(count_prefix(text, "# TYPE "), N_OF(families));
    /* Per route (3 routes): active, total, closes, 2 bytes, takeovers,
     * rejections, 3 liveness, denied, accept errors; servers: 4 + 4;
     * process: 2 reloads, 2 upgrades, upgrade duration, info, start,
     * workers, 4 budget, admin. */
    want_samples = 3 * (1 + 1 + REASON_COUNT + 2 + 1 + 1 + 3 + DENY_COUNT + 1) + 4 + 4 + 2 + 2 + 1 +
                   1 + 1 + 1 + 4 + ADMIN_EP_COUNT + ADMIN_OVERLOAD_COUNT;
    assert_int_equal(check_grouping(text), want_samples);
    /* Families come in the order listed. */
    const char *prev = text;
    for (size_t i = 0; i < N_OF(families); i++) {
        char want[160];
        snprintf(want, sizeof(want), "# HELP %s ", families[i].name);
        const char *at = strstr(text, want);
        assert_non_null(at);
        if (at < prev)
            fail_msg("%s out of order", families[i].name);
        prev = at;
    }
    free(text);
}

/* Rendering reads the counters and changes none of them. */
static void test_render_is_repeatable(void **state)
{
    struct fixture *f = *state;
    char *one = render(f, &f->ps);
    char *two = render(f, &f->ps);
    assert_string_equal(one, two);
    assert_int_equal(metric_get(&f->rs[0][0]->c[RC_SESSIONS_TOTAL]),
                     route_count(0, 0, RC_SESSIONS_TOTAL));
    free(one);
    free(two);

    /* One more close on worker 1 shows in the next render only there. */
    metric_add(&f->rs[1][1]->c[RC_CLOSES + REASON_CLIENT_KEEPALIVE], 5);
    char *three = render(f, &f->ps);
    expect_line(three,
                "lifeline_session_closes_total{route=\"b\",reason=\"client_keepalive\"} %" PRIu64,
                sum(1, RC_CLOSES + REASON_CLIENT_KEEPALIVE) + 5);
    expect_line(three, "lifeline_liveness_expiries_total{route=\"b\",kind=\"keepalive\"} %" PRIu64,
                sum(1, RC_CLOSES + REASON_CLIENT_KEEPALIVE) + 5);
    expect_line(three,
                "lifeline_session_closes_total{route=\"a\",reason=\"client_keepalive\"} %" PRIu64,
                sum(0, RC_CLOSES + REASON_CLIENT_KEEPALIVE));
    free(three);
}

/* No workers: the process series alone. */
static void test_no_workers(void **state)
{
    struct fixture *f = *state;
    char *text = metrics_render(NULL, 0, &f->ps);
    assert_non_null(text);
    expect_line(text, "lifeline_workers 0");
    assert_int_equal(count_prefix(text, "lifeline_sessions_total{"), 0);
    /* Each route family is still declared, with no samples. */
    assert_int_equal(count_prefix(text, "# TYPE lifeline_sessions_total "), 1);
    check_grouping(text);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lists_match_the_enums),
        cmocka_unit_test_setup_teardown(test_route_series_summed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_servers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_removed_route_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_process_series, setup, teardown),
        cmocka_unit_test_setup_teardown(test_process_series_optional, setup, teardown),
        cmocka_unit_test_setup_teardown(test_families_declared_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_is_repeatable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_workers, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
