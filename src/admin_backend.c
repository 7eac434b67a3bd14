/* What the admin endpoint asks of the process: health, readiness, metrics, the sessions, a kill. */
#include "lifeline/admin_backend.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lifeline/cluster.h"
#include "lifeline/request.h"

int admin_state_healthy(const struct admin_state *st)
{
    for (size_t i = 0; i < st->workers->n_started; i++)
        if (worker_stuck(st->workers->w[i]))
            return 0;
    return 1;
}

static int healthy(void *ctx) { return admin_state_healthy(ctx); }

/* Ready: listening and not draining; with a cluster that refuses without
 * etcd, also holding a lease (else every identity client is refused). */
static int ready(void *ctx)
{
    const struct admin_state *st = ctx;
    const struct cluster_stats *cs = st->ps->cluster;
    return st->ready && (cs == NULL || !st->ps->cluster_refuses || atomic_load(&cs->up));
}

static char *metrics(void *ctx)
{
    struct admin_state *st = ctx;
    size_t n = st->workers->n_started;
    struct worker_stats *stats[n + 1];
    for (size_t i = 0; i < n; i++)
        stats[i] = worker_stats(st->workers->w[i]);
    return metrics_render(stats, n, st->ps);
}

/* Every worker's sessions as one JSON array: the workers' arrays, joined. */
static void list_done(struct request *r)
{
    struct list_request *l = (struct list_request *)(void *)r;
    char *body = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&body, &len);
    if (f != NULL) {
        int first = 1;
        fputc('[', f);
        for (size_t i = 0; i < l->n_parts; i++) {
            const char *part = l->parts[i];
            size_t n = part != NULL ? strlen(part) : 0;
            if (n <= 2) /* none from that worker, or "[]" */
                continue;
            fprintf(f, "%s%.*s", first ? "" : ",", (int)(n - 2), part + 1);
            first = 0;
        }
        fputs("]\n", f);
        if (fclose(f) != 0) {
            free(body);
            body = NULL;
        }
    }
    admin_reply(r->owner, body != NULL ? 200 : 500, "application/json", body);
    request_free(r);
}

static void kill_done(struct request *r)
{
    struct kill_request *k = (struct kill_request *)(void *)r;
    char body[64];
    int status = k->busy ? 409 : k->found ? 200 : 404;
    if (k->busy)
        snprintf(body, sizeof(body), "{\"error\":\"live upgrade in progress\"}\n");
    else if (k->found)
        snprintf(body, sizeof(body), "{\"closed\":%" PRIu64 "}\n", k->session_id);
    else
        snprintf(body, sizeof(body), "{\"error\":\"no such session\"}\n");
    admin_reply(r->owner, status, "application/json", strdup(body));
    request_free(r);
}

static void ask(struct admin_state *st, struct admin_conn *c, struct request *r)
{
    if (r == NULL || worker_set_ask(st->workers, st->loop, r) < 0) {
        if (r != NULL)
            request_free(r);
        admin_reply(c, 500, "text/plain; charset=utf-8", strdup("out of memory\n"));
    }
}

static void sessions(void *ctx, struct admin_conn *c)
{
    struct admin_state *st = ctx;
    ask(st, c, request_new(REQUEST_LIST, st->workers->n, list_done, c));
}

static void close_session(void *ctx, struct admin_conn *c, uint64_t id)
{
    struct admin_state *st = ctx;
    struct request *r = request_new(REQUEST_KILL, st->workers->n, kill_done, c);
    if (r != NULL)
        ((struct kill_request *)(void *)r)->session_id = id;
    ask(st, c, r);
}

struct admin_backend admin_backend_of(struct admin_state *st)
{
    return (struct admin_backend){
        .ctx = st,
        .healthy = healthy,
        .ready = ready,
        .metrics = metrics,
        .sessions = sessions,
        .close_session = close_session,
    };
}
