/* A worker thread: one uv_loop, its listening sockets, admission, its sessions. */
#define _GNU_SOURCE /* pthread_setname_np */
#include "lifeline/worker.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lifeline/addr.h"
#include "lifeline/liveness.h"
#include "lifeline/log.h"
#include "lifeline/net.h"
#include "lifeline/pool.h"
#include "lifeline/session.h"
#include "lifeline/table.h"

/* The sanitizers bring allocators of their own: glibc's malloc_trim()
 * would walk an arena they never used (ThreadSanitizer crashes in it). */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TRIM_MEMORY 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TRIM_MEMORY 0
#endif
#endif
#ifndef TRIM_MEMORY
#define TRIM_MEMORY 1
#endif

#define TICK_MS 500
#define POOL_MAX_FREE 64 /* cached buffers per worker: 4 MiB */
#define ACCEPT_BATCH 64
#define TRIM_AFTER_FREES 1024  /* sessions ended before memory is handed back */
#define ACCEPT_RETRY_MS 100    /* out of descriptors: try accepting again after this */
#define BUDGET_RETRY_MS 10     /* buffer memory spent: look for room again after this */
#define SHORTAGE_OVER_MS 1000  /* accepting this long without a pause ends a shortage */
#define DENY_DRAIN_BYTES 65536 /* read from a denied client before a FIN close */
#define SETTLE_POLL_MS 5       /* a live upgrade looks this often for settled sessions */
/* A peer that takes none of a held session's bytes for this long has
 * stopped reading: the upgrade fails now rather than hold every session
 * until its deadline. */
#define SETTLE_STALL_MS 1000
#define SETTLE_STALL_LOG_MAX 5 /* such sessions named per worker */

/* One route's listening socket on one worker (SO_REUSEPORT shares the
 * port). A reload that keeps the address keeps the socket, and with it the
 * connections queued on it, and points it at the new route config. */
struct listener {
    uv_poll_t poll; /* readable: connections to accept; data is NULL until initialised */
    STAILQ_ENTRY(listener) link; /* the worker's list, in route order */
    struct worker *w;
    struct sockaddr_storage addr;     /* what it is bound to */
    const struct route_config *route; /* in the worker's current config */
    struct route_stats *stats;        /* the route's counters on this worker */
    struct limit_route *limit;        /* the route's open sessions, all workers */
    size_t route_ix;                  /* its route's index in the worker's config */
    int fd;                           /* handed over by the supervisor; the listener's */
};
STAILQ_HEAD(listener_list, listener);

/* A message for this worker: from a session on any worker, or a request
 * from the supervisor. */
struct worker_msg {
    STAILQ_ENTRY(worker_msg) link;
    struct request *request; /* a request, or NULL: a registry message */
    enum registry_msg msg;
    uint64_t session_id;
};
STAILQ_HEAD(worker_msg_list, worker_msg);

/* Accepting, as descriptors allow. A shortage is logged when it begins
 * (ON -> PAUSED) and when it is over (RETRYING -> ON, after a second of
 * accepting without a pause), not at every pause. */
enum accept_state {
    ACCEPT_ON,       /* accepting */
    ACCEPT_PAUSED,   /* out of descriptors: listeners stopped, accept_retry armed;
                      * connections wait in the kernel's queue */
    ACCEPT_RETRYING, /* the budget has room again: accepting, the shortage not
                      * over until a second passes without a pause */
};

/* Where the worker is in a live upgrade (upgrade.h). */
enum worker_handover {
    HANDOVER_NONE,     /* serving */
    HANDOVER_SETTLING, /* not accepting; sessions held as they settle (freeze_tick) */
    HANDOVER_FROZEN,   /* every session held and exported: it moves, or thaws */
};

struct worker {
    int id;
    struct worker_shared shared; /* registry, limits, budget, notify */
    struct session_host host;    /* what the sessions may use of this worker */
    struct deadlines deadlines;  /* the sessions' timers */
    struct config *cfg;          /* for new connections; a reference */
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;  /* messages and commands arrive here */
    uv_prepare_t flush; /* before the loop waits: a turn's log lines, in one write() */
    uv_timer_t drain_timer;
    struct listener_list listeners; /* one per route of cfg */
    struct pool pool;
    struct session_list sessions; /* every live session, for drain and shutdown */
    struct table by_id;           /* the same sessions by id, for messages */
    size_t n_sessions;            /* made and not yet freed (some may be closed) */
    int draining;                 /* loop-local: listeners closed, waiting for sessions */
    enum accept_state accept;     /* loop-local */
    uv_timer_t accept_retry;      /* ACCEPT_PAUSED: try again */
    uint64_t accepting_since_ms;  /* ACCEPT_RETRYING: when accepting resumed */

    struct log_limit deny_log;     /* "connection denied": one line a second */
    struct log_limit upstream_log; /* failed tries and reconnects: WORKER_UPSTREAM_LOG_PER_S */
    struct log_limit accept_log;   /* "accept failed": one line a second */
    struct worker_stats stats;     /* per route, written only by this loop */

    uv_mutex_t inbox_lock;        /* guards inbox only */
    struct worker_msg_list inbox; /* posted by any thread, drained by this loop */
    int inbox_closed;             /* the loop is ending: messages are dropped */

    struct budget_waiters budget_waiters; /* readers waiting for memory, oldest first */
    uv_timer_t budget_retry;              /* armed while someone waits */
    uv_timer_t tick;                      /* proves the loop turns: see last_tick_ms */
    enum worker_handover handover;        /* loop-local */
    uv_timer_t settle;                    /* HANDOVER_SETTLING: looks at the sessions */
    struct freeze_request *freezing;      /* answered once settled or at the deadline */
    uint64_t settle_deadline_ms;
    uint64_t settle_unwritten;   /* bytes held sessions still had to write, last tick */
    uint64_t settle_progress_ms; /* when that last went down */
    /* Registry messages for sessions while HANDOVER_FROZEN: their records
     * are in the new process's hands, so nothing may close them here;
     * delivered on THAW, dropped once they are released. */
    struct worker_msg_list deferred;
    size_t freed_since_trim; /* sessions freed since memory was last trimmed */
    _Atomic uint64_t last_tick_ms;

    _Atomic int command; /* enum worker_command */
    _Atomic int phase;   /* enum worker_phase */
    int start_error;     /* valid once phase is FAILED */
};

static void free_msgs(struct worker_msg_list *list)
{
    struct worker_msg *m;
    while ((m = STAILQ_FIRST(list)) != NULL) {
        STAILQ_REMOVE_HEAD(list, link);
        free(m);
    }
}

static int deliver(struct worker *w, struct worker_msg *m);

static struct worker *worker_of(struct session_host *h)
{
    return (struct worker *)(void *)((char *)h - offsetof(struct worker, host));
}

static void set_phase(struct worker *w, enum worker_phase phase)
{
    atomic_store(&w->phase, (int)phase);
    uv_async_send(w->shared.notify);
}

static void accept_cb(uv_poll_t *p, int status, int events);
static void accept_retry_cb(uv_timer_t *t);
static void log_listener_error(struct worker *w, const struct route_config *route, int err);

/* Out of descriptors (the budget is spent: err 0, or the kernel said so): stop
 * accepting on every listener of this worker, so that new connections wait
 * in the kernel's queues while the sessions already open go on, and try
 * again shortly. Logged when a shortage begins, not at every retry. */
static void pause_accepting(struct worker *w, const char *route, int err)
{
    if (w->draining)
        return;
    if (w->accept == ACCEPT_ON)
        log_warn("accept paused: out of file descriptors", LF_STR("route", route),
                 LF_INT("worker", w->id), LF_INT("sessions", w->n_sessions),
                 LF_STR("error", err == 0 ? "descriptor budget spent" : uv_strerror(err)));
    w->accept = ACCEPT_PAUSED;
    struct listener *x;
    STAILQ_FOREACH (x, &w->listeners, link)
        if (x->poll.data != NULL)
            uv_poll_stop(&x->poll);
    uv_timer_start(&w->accept_retry, accept_retry_cb, ACCEPT_RETRY_MS, 0);
}

/* PAUSED -> RETRYING once the budget has room for a session. */
static void resume_accepting(struct worker *w)
{
    if (w->accept != ACCEPT_PAUSED || w->draining || w->handover != HANDOVER_NONE)
        return;
    if (!budget_fds_room(w->shared.budget)) {
        uv_timer_start(&w->accept_retry, accept_retry_cb, ACCEPT_RETRY_MS, 0);
        return;
    }
    w->accept = ACCEPT_RETRYING;
    w->accepting_since_ms = uv_now(&w->loop);
    struct listener *x;
    STAILQ_FOREACH (x, &w->listeners, link) {
        int rc = x->poll.data != NULL ? uv_poll_start(&x->poll, UV_READABLE, accept_cb) : 0;
        if (rc < 0)
            log_listener_error(w, x->route, rc);
    }
}

static void accept_retry_cb(uv_timer_t *t) { resume_accepting(t->data); }

/* A shortage is over once accepting has gone on for SHORTAGE_OVER_MS
 * without pausing again (the worker's tick looks). So a worker that hovers
 * at its budget, each closing session letting one client in, logs one
 * shortage, not one per session. */
static void end_shortage(struct worker *w)
{
    if (w->accept != ACCEPT_RETRYING || uv_now(&w->loop) - w->accepting_since_ms < SHORTAGE_OVER_MS)
        return;
    w->accept = ACCEPT_ON;
    log_info("accepting again", LF_INT("worker", w->id), LF_INT("sessions", w->n_sessions));
}

/* --- admission ----------------------------------------------------------- */

static int allowed(const struct client_config *cc, const struct sockaddr *sa)
{
    if (cc->n_allow == 0)
        return 1;
    for (size_t i = 0; i < cc->n_allow; i++)
        if (addr_cidr_match(&cc->allow[i], sa))
            return 1;
    return 0;
}

/* Closes a connection that never became a session, as client.close says:
 * a reset, or a FIN (after reading what it sent, which close() would
 * otherwise answer with a reset). */
static void refuse(struct worker *w, const struct route_config *route, int fd)
{
    if (route->client.close == CLOSE_RST) {
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    } else {
        char *buf = pool_read_buffer(&w->pool);
        if (buf != NULL)
            net_drain_input(fd, buf, POOL_READ_SIZE, DENY_DRAIN_BYTES);
    }
    close(fd);
}

/* Access control and limits, before any session exists. Returns 0, with
 * the connection counted in the limits (*limit), or -EACCES after it was
 * counted as denied, logged (at most one line a second per worker, so that
 * a flood cannot flood the log) and closed. */
static int admit(struct worker *w, struct listener *l, int fd, const struct sockaddr *peer,
                 struct limit_route **limit)
{
    const struct client_config *cc = &l->route->client;
    enum deny_cause cause;
    enum limits_full full;
    if (!allowed(cc, peer)) {
        cause = DENY_ALLOW;
    } else if (limits_take(w->shared.limits, l->limit, peer, cc->max_connections,
                           cc->max_per_address, &full) == 0) {
        /* Counted even when this route has no limit: a reload may set one,
         * and it must find the sessions already open. */
        *limit = l->limit;
        return 0;
    } else {
        cause = full == LIMITS_ROUTE_FULL ? DENY_MAX_CONNECTIONS : DENY_MAX_PER_ADDRESS;
    }
    /* A denied connection counts as a session that closed at once, reason
     * denied, so that sessions_total = active + closes holds. */
    metric_add(&l->stats->c[RC_DENIED + cause], 1);
    metric_add(&l->stats->c[RC_SESSIONS_TOTAL], 1);
    metric_add(&l->stats->c[RC_CLOSES + REASON_DENIED], 1);
    refuse(w, l->route, fd);
    uint64_t suppressed;
    if (log_enabled(LOG_WARN) && log_limit_allow(&w->deny_log, uv_now(&w->loop), &suppressed)) {
        char client[ADDR_STR_MAX];
        log_warn("connection denied", LF_STR("route", l->route->name),
                 LF_STR("client", addr_format(peer, client, sizeof(client))),
                 LF_STR("cause", deny_name(cause)), LF_INT("suppressed", suppressed));
    }
    return -EACCES;
}

static uint64_t id_hash(uint64_t id) { return hash_bytes(HASH_SEED, &id, sizeof(id)); }

static int link_is(const struct table_node *n, const void *key)
{
    const struct session_link *l =
        (const struct session_link *)(const void *)((const char *)n -
                                                    offsetof(struct session_link, by_id));
    return session_id(session_of_link((struct session_link *)l)) == *(const uint64_t *)key;
}

static struct session *find_session(struct worker *w, uint64_t id)
{
    struct table_node *n = table_find(&w->by_id, id_hash(id), &id, link_is);
    if (n == NULL)
        return NULL;
    return session_of_link(
        (struct session_link *)(void *)((char *)n - offsetof(struct session_link, by_id)));
}

/* A connection the budget made room for (its descriptors taken): admitted,
 * it becomes a listed session; refused, it is closed. Returns 0 or a
 * negative UV error (the descriptors are given back then). */
static int take_connection(struct worker *w, struct listener *l, int fd,
                           const struct sockaddr *peer, socklen_t peer_len)
{
    struct limit_route *limit = NULL;
    if (admit(w, l, fd, peer, &limit) < 0) {
        budget_give_fds(w->shared.budget, BUDGET_FDS_PER_SESSION);
        return 0;
    }
    struct session_params p = { .cfg = w->cfg,
                                .route = l->route,
                                .stats = l->stats,
                                .fd = fd,
                                .peer = peer,
                                .peer_len = peer_len };
    struct session *s;
    int rc = session_new(&w->host, &p, &s);
    if (rc < 0) {
        limits_give(w->shared.limits, limit, peer);
        budget_give_fds(w->shared.budget, BUDGET_FDS_PER_SESSION);
        return rc;
    }
    struct session_link *link = session_link(s);
    link->limit = limit;
    LIST_INSERT_HEAD(&w->sessions, link, list);
    table_insert(&w->by_id, &link->by_id, id_hash(session_id(s)));
    w->n_sessions++;
    session_run(s);
    return 0;
}

static void accept_cb(uv_poll_t *p, int status, int events)
{
    struct listener *l = p->data;
    struct worker *w = l->w;
    (void)events;
    /* A batch, so that a burst costs one wakeup; bounded, so that one busy
     * route cannot starve the rest of the loop. */
    for (int i = 0; i < ACCEPT_BATCH && status == 0 && w->accept != ACCEPT_PAUSED; i++) {
        /* The client's descriptor and its server connection's, before the
         * client is taken off the queue: what is accepted can be served,
         * and the descriptors kept back for the admin endpoint and the
         * resolver stay free. */
        if (budget_take_fds(w->shared.budget, BUDGET_FDS_PER_SESSION) < 0) {
            pause_accepting(w, l->route->name, 0);
            return;
        }
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);
        int fd = accept4(l->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        int rc;
        if (fd < 0) {
            rc = -errno;
            budget_give_fds(w->shared.budget, BUDGET_FDS_PER_SESSION);
        } else {
            rc = take_connection(w, l, fd, (struct sockaddr *)&peer, len);
        }
        if (rc == UV_EAGAIN)
            return;
        if (rc == UV_ECONNABORTED || rc == UV_EINTR)
            continue;
        if (rc == UV_EMFILE || rc == UV_ENFILE || rc == UV_ENOBUFS || rc == UV_ENOMEM) {
            metric_add(&l->stats->c[RC_ACCEPT_ERRORS], 1);
            pause_accepting(w, l->route->name, rc);
            return;
        }
        if (rc < 0) {
            uint64_t suppressed;
            metric_add(&l->stats->c[RC_ACCEPT_ERRORS], 1);
            if (log_enabled(LOG_WARN) &&
                log_limit_allow(&w->accept_log, uv_now(&w->loop), &suppressed))
                log_warn("accept failed", LF_STR("route", l->route->name), LF_INT("worker", w->id),
                         LF_STR("error", uv_strerror(rc)), LF_INT("suppressed", suppressed));
            return;
        }
    }
}

/* --- listeners -------------------------------------------------------------- */

/* A listener for a socket the supervisor bound; the worker owns fd from now on. */
static struct listener *listener_new(struct worker *w, int fd, const struct sockaddr_storage *addr,
                                     size_t route_ix)
{
    struct listener *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        close(fd);
        return NULL;
    }
    l->w = w;
    l->fd = fd;
    l->addr = *addr;
    l->route_ix = route_ix;
    return l;
}

static void listener_free(struct listener *l)
{
    /* Closed after the poll handle: connections still queued are reset. */
    close(l->fd);
    free(l);
}

static void listener_closed_cb(uv_handle_t *h) { listener_free(h->data); }

static void listener_close(struct listener *l)
{
    if (l->poll.data == NULL) /* never opened: no handle to close */
        listener_free(l);
    else
        uv_close((uv_handle_t *)&l->poll, listener_closed_cb);
}

/* The socket is bound and listening already (the supervisor did that). */
static int listener_open(struct listener *l)
{
    int rc = uv_poll_init(&l->w->loop, &l->poll, l->fd);
    if (rc < 0)
        return rc;
    l->poll.data = l; /* from here on the handle needs uv_close() */
    if (l->w->accept == ACCEPT_PAUSED || l->w->handover != HANDOVER_NONE)
        return 0;
    return uv_poll_start(&l->poll, UV_READABLE, accept_cb);
}

/* Points a listener at its route in the worker's (new) config. */
static int listener_options(int fd, const struct route_config *route)
{
    net_set_nodelay(fd);
    return liveness_apply(fd, &route->client.heartbeat);
}

static int listener_serve(struct listener *l, const struct route_config *route)
{
    struct route_stats *stats = metrics_route(&l->w->stats, route);
    struct limit_route *limit = limits_route(l->w->shared.limits, route->name);
    if (stats == NULL || limit == NULL)
        return UV_ENOMEM;
    /* Accepted sockets inherit these from the listener. Held for a live
     * upgrade, the socket is still the old process's too: set at THAW
     * (listener_options), so that a failed upgrade leaves its settings. */
    if (l->w->handover != HANDOVER_FROZEN) {
        int rc = listener_options(l->fd, route);
        if (rc < 0)
            return rc;
    }
    l->route = route;
    l->stats = stats;
    l->limit = limit;
    return 0;
}

static void close_list(struct listener_list *list)
{
    struct listener *l;
    while ((l = STAILQ_FIRST(list)) != NULL) {
        STAILQ_REMOVE_HEAD(list, link);
        listener_close(l);
    }
}

static void close_listeners(struct worker *w) { close_list(&w->listeners); }

/* Takes the listener bound to addr out of the list. */
static struct listener *listener_unlink(struct listener_list *list,
                                        const struct sockaddr_storage *addr)
{
    struct listener *l;
    STAILQ_FOREACH (l, list, link) {
        if (addr_equal((const struct sockaddr *)&l->addr, (const struct sockaddr *)addr)) {
            STAILQ_REMOVE(list, l, listener, link);
            return l;
        }
    }
    return NULL;
}

static void log_listener_error(struct worker *w, const struct route_config *route, int err)
{
    log_error("cannot serve route", LF_STR("route", route->name), LF_INT("worker", w->id),
              LF_STR("error", uv_strerror(err)));
}

/* Serves cfg from now on: keeps the listeners whose address it still
 * lists, opens the new sockets in fds (one per route, -1 where a listener
 * is kept; adopted entries are set to -1), closes the listeners of routes
 * it dropped. Sessions stay where they are, on the config they started
 * with. Returns 0, or the first error (the other routes are served). */
static int serve_config(struct worker *w, struct config *cfg, const struct sockaddr_storage *addrs,
                        int *fds)
{
    struct listener_list old = STAILQ_HEAD_INITIALIZER(old);
    STAILQ_CONCAT(&old, &w->listeners);
    int first_error = 0;
    for (size_t r = 0; r < cfg->n_routes; r++) {
        struct listener *l;
        int rc = 0;
        int kept = fds[r] < 0;
        if (!kept) {
            l = listener_new(w, fds[r], &addrs[r], r);
            fds[r] = -1;
            rc = l == NULL ? UV_ENOMEM : listener_open(l);
        } else {
            l = listener_unlink(&old, &addrs[r]);
            rc = l == NULL ? UV_ENOENT : 0; /* the supervisor said it was kept */
        }
        if (rc == 0) {
            l->route_ix = r;
            rc = listener_serve(l, &cfg->routes[r]);
        }
        if (rc < 0) {
            log_listener_error(w, &cfg->routes[r], rc);
            if (l != NULL)
                listener_close(l);
            if (first_error == 0)
                first_error = rc;
            continue;
        }
        STAILQ_INSERT_TAIL(&w->listeners, l, link);
        /* A kept address may have more sockets here: an upgrade to fewer
         * workers gave this worker several of the old ones. */
        while (kept && (l = listener_unlink(&old, &addrs[r])) != NULL) {
            l->route_ix = r;
            rc = listener_serve(l, &cfg->routes[r]);
            if (rc < 0) {
                log_listener_error(w, &cfg->routes[r], rc);
                listener_close(l);
                continue;
            }
            STAILQ_INSERT_TAIL(&w->listeners, l, link);
        }
    }
    /* What is left belongs to routes the new config dropped: they stop
     * accepting, and their sessions run on until they end. */
    close_list(&old);
    struct config *prev = w->cfg;
    w->cfg = config_ref(cfg);
    config_free(prev);
    return first_error;
}

/* --- what the sessions may use of their worker (struct session_host) ----- */

static void budget_retry_cb(uv_timer_t *t);

static void host_wait_budget(struct session_host *h, struct budget_waiter *bw)
{
    struct worker *w = worker_of(h);
    if (budget_waiter_queued(bw))
        return;
    TAILQ_INSERT_TAIL(&w->budget_waiters, bw, link);
    if (!uv_is_active((uv_handle_t *)&w->budget_retry))
        uv_timer_start(&w->budget_retry, budget_retry_cb, BUDGET_RETRY_MS, BUDGET_RETRY_MS);
}

static void leave_budget(struct budget_waiters *q, struct budget_waiter *bw)
{
    if (!budget_waiter_queued(bw))
        return;
    TAILQ_REMOVE(q, bw, link);
    budget_waiter_unqueued(bw);
}

static void host_leave_budget(struct session_host *h, struct budget_waiter *bw)
{
    leave_budget(&worker_of(h)->budget_waiters, bw);
}

/* Asks each waiter, oldest first, whether it may read now: as many as were
 * waiting, taken from the head, so that one that still may not read (it
 * joins the tail again) is asked once per round, and one whose session ends
 * meanwhile leaves the one queue there is. */
static void budget_retry_cb(uv_timer_t *t)
{
    struct worker *w = t->data;
    size_t n = 0;
    struct budget_waiter *bw;
    TAILQ_FOREACH (bw, &w->budget_waiters, link)
        n++;
    while (n-- > 0 && (bw = TAILQ_FIRST(&w->budget_waiters)) != NULL) {
        leave_budget(&w->budget_waiters, bw);
        session_budget_retry(bw);
    }
    if (TAILQ_EMPTY(&w->budget_waiters))
        uv_timer_stop(&w->budget_retry);
}

/* Unlisted and its limit slot given back before the close line is logged. */
static void host_closed(struct session_host *h, struct session *s)
{
    struct worker *w = worker_of(h);
    struct session_link *link = session_link(s);
    LIST_REMOVE(link, list);
    table_remove(&w->by_id, &link->by_id);
    if (link->limit != NULL)
        limits_give(w->shared.limits, link->limit, session_peer(s));
    link->limit = NULL;
}

static void host_fds_exhausted(struct session_host *h, const char *route, int err)
{
    pause_accepting(worker_of(h), route, err);
}

static void exit_if_idle(struct worker *w);

static void host_freed(struct session_host *h)
{
    struct worker *w = worker_of(h);
    /* Both descriptors are closed by now (uv_close closes at once). */
    budget_give_fds(w->shared.budget, BUDGET_FDS_PER_SESSION);
    w->n_sessions--;
    w->freed_since_trim++;
    exit_if_idle(w);
}

static void close_all_sessions(struct worker *w)
{
    /* A closing session leaves the list (host_closed): the next is taken first. */
    struct session_link *link, *next;
    for (link = LIST_FIRST(&w->sessions); link != NULL; link = next) {
        next = LIST_NEXT(link, list);
        session_close(session_of_link(link), REASON_SHUTDOWN);
    }
}

static void drain_inbox(struct worker *w);

/* Once draining and the last session is gone, closing the worker's own
 * handles lets uv_run() return. */
static void freeze_answer(struct worker *w, struct worker_export e, int failed);

static void exit_if_idle(struct worker *w)
{
    if (!w->draining || w->n_sessions > 0)
        return;
    if (w->freezing != NULL) /* a drain overtook the freeze: it must still be answered */
        freeze_answer(w, (struct worker_export){ 0 }, 1);
    if (!uv_is_closing((uv_handle_t *)&w->wakeup)) {
        uv_mutex_lock(&w->inbox_lock);
        w->inbox_closed = 1;
        uv_mutex_unlock(&w->inbox_lock);
        drain_inbox(w); /* questions posted before the close still get answers */
        uv_close((uv_handle_t *)&w->wakeup, NULL);
        uv_close((uv_handle_t *)&w->tick, NULL);
        uv_close((uv_handle_t *)&w->accept_retry, NULL);
        uv_close((uv_handle_t *)&w->budget_retry, NULL);
        uv_close((uv_handle_t *)&w->settle, NULL);
        uv_close((uv_handle_t *)&w->flush, NULL);
        deadlines_close(&w->deadlines);
    }
    if (!uv_is_closing((uv_handle_t *)&w->drain_timer))
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
}

static void drain_timer_cb(uv_timer_t *t)
{
    struct worker *w = t->data;
    close_all_sessions(w);
}

static void begin_drain(struct worker *w)
{
    if (w->draining)
        return;
    w->draining = 1;
    close_listeners(w);
    uv_timer_start(&w->drain_timer, drain_timer_cb, w->cfg->drain_timeout_ms, 0);
    exit_if_idle(w);
}

static uint64_t now_ms(void) { return uv_hrtime() / 1000000; }

static void tick_cb(uv_timer_t *t)
{
    struct worker *w = t->data;
    atomic_store(&w->last_tick_ms, now_ms());
    log_limit_flush(&w->deny_log, uv_now(&w->loop));
    log_limit_flush(&w->upstream_log, uv_now(&w->loop));
    log_limit_flush(&w->accept_log, uv_now(&w->loop));
    end_shortage(w);
    /* After many sessions ended, give their memory back to the system: the
     * allocator keeps freed chunks in the middle of its heap otherwise. At
     * most twice a second, and only after a wave of closes. */
    if (w->freed_since_trim >= TRIM_AFTER_FREES) {
        w->freed_since_trim = 0;
        if (TRIM_MEMORY)
            malloc_trim(0);
    }
}

uint64_t worker_stalled_ms(struct worker *w)
{
    uint64_t last = atomic_load(&w->last_tick_ms);
    uint64_t now = now_ms();
    return now > last + TICK_MS ? now - last - TICK_MS : 0;
}

/* Every session of this worker as a JSON array, or NULL on ENOMEM. One
 * session's object at a time: a large list costs its text, not a tree. */
static char *describe_all(struct worker *w)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return NULL;
    int n = 0;
    fputc('[', f);
    struct session_link *link;
    LIST_FOREACH (link, &w->sessions, list) {
        char one[SESSION_JSON_MAX];
        cJSON *o = session_describe(session_of_link(link));
        if (o != NULL && cJSON_PrintPreallocated(o, one, sizeof(one), 0))
            fprintf(f, "%s%s", n++ > 0 ? "," : "", one);
        cJSON_Delete(o);
    }
    fputc(']', f);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

/* --- live upgrade (upgrade.h) --------------------------------------------- */

static void thaw_sessions(struct worker *w)
{
    struct session_link *link, *next;
    for (link = LIST_FIRST(&w->sessions); link != NULL; link = next) {
        next = LIST_NEXT(link, list); /* a session may end as it thaws */
        session_thaw(session_of_link(link));
    }
}

static void poll_listeners(struct worker *w, int on)
{
    struct listener *l;
    STAILQ_FOREACH (l, &w->listeners, link) {
        if (l->poll.data == NULL)
            continue;
        int rc = on ? uv_poll_start(&l->poll, UV_READABLE, accept_cb) : uv_poll_stop(&l->poll);
        if (rc < 0)
            log_listener_error(w, l->route, rc);
    }
}

/* This worker's part of the hand-over: its sessions' records and
 * descriptors, and its listening sockets. 0 or UV_ENOMEM. */
static int export_all(struct worker *w, struct worker_export *e)
{
    size_t n = 0, n_listen = 0;
    struct session_link *link;
    LIST_FOREACH (link, &w->sessions, list)
        n++;
    struct listener *l;
    STAILQ_FOREACH (l, &w->listeners, link)
        n_listen++;
    e->recs = malloc((n > 0 ? n : 1) * sizeof(*e->recs));
    e->fds = malloc((n > 0 ? n : 1) * 2 * sizeof(*e->fds));
    e->listen_fds = malloc((n_listen > 0 ? n_listen : 1) * sizeof(*e->listen_fds));
    if (e->recs == NULL || e->fds == NULL || e->listen_fds == NULL)
        return UV_ENOMEM; /* freed with the request */
    LIST_FOREACH (link, &w->sessions, list) {
        session_export(session_of_link(link), &e->recs[e->n], &e->fds[2 * e->n]);
        e->n++;
    }
    STAILQ_FOREACH (l, &w->listeners, link)
        e->listen_fds[e->n_listen++] = l->fd;
    return 0;
}

/* Names the sessions whose peer stopped reading (a few: bounded lines),
 * so that an operator can see who holds the upgrade back. */
static void log_stalled(struct worker *w)
{
    int n = 0;
    struct session_link *link;
    LIST_FOREACH (link, &w->sessions, list) {
        struct session *s = session_of_link(link);
        uint64_t unwritten;
        if (session_settle(s, &unwritten) != SETTLE_WRITING || n++ >= SETTLE_STALL_LOG_MAX)
            continue;
        char client[ADDR_STR_MAX];
        log_warn("upgrade: a peer is not reading", LF_INT("session", session_id(s)),
                 LF_STR("client", addr_format(session_peer(s), client, sizeof(client))),
                 LF_INT("worker", w->id), LF_INT("unwritten_bytes", unwritten));
    }
}

/* Holds every relaying session; answers once all are held with nothing
 * left to write, or at the deadline with how many were not. */
static void freeze_tick(uv_timer_t *t)
{
    struct worker *w = t->data;
    size_t busy = 0, writing = 0;
    uint64_t unwritten = 0, now = uv_now(&w->loop);
    struct session_link *link;
    LIST_FOREACH (link, &w->sessions, list) {
        struct session *s = session_of_link(link);
        uint64_t n;
        session_hold(s);
        switch (session_settle(s, &n)) {
        case SETTLE_READY:
            break;
        case SETTLE_WRITING:
            writing++;
            unwritten += n;
            break;
        case SETTLE_BUSY:
            busy++;
            break;
        }
    }
    if (unwritten < w->settle_unwritten)
        w->settle_progress_ms = now;
    w->settle_unwritten = unwritten;
    int stalled = writing > 0 && now - w->settle_progress_ms >= SETTLE_STALL_MS;
    if (busy + writing > 0 && now < w->settle_deadline_ms && !stalled)
        return;
    if (stalled)
        log_stalled(w);
    struct worker_export e = { .busy = busy, .writing = writing };
    int rc = busy + writing == 0 && !w->draining ? export_all(w, &e) : 0;
    if (busy + writing == 0 && rc == 0 && !w->draining)
        w->handover = HANDOVER_FROZEN;
    freeze_answer(w, e, rc < 0 || w->draining);
}

static void freeze_answer(struct worker *w, struct worker_export e, int failed)
{
    uv_timer_stop(&w->settle);
    struct freeze_request *f = w->freezing;
    w->freezing = NULL;
    uv_mutex_lock(&f->base.lock);
    f->parts[w->id] = e;
    f->failed |= failed;
    uv_mutex_unlock(&f->base.lock);
    request_answered(&f->base);
}

static void freeze_begin(struct worker *w, struct freeze_request *f)
{
    if (w->draining || w->handover != HANDOVER_NONE) {
        uv_mutex_lock(&f->base.lock);
        f->failed = 1;
        uv_mutex_unlock(&f->base.lock);
        request_answered(&f->base);
        return;
    }
    /* Connections wait in the kernel's queues until the new process (or,
     * should it fail, this one again) accepts them. */
    w->handover = HANDOVER_SETTLING;
    poll_listeners(w, 0);
    w->freezing = f;
    w->settle_deadline_ms = uv_now(&w->loop) + f->settle_ms;
    w->settle_unwritten = UINT64_MAX;
    w->settle_progress_ms = uv_now(&w->loop);
    uv_timer_start(&w->settle, freeze_tick, 0, SETTLE_POLL_MS);
}

/* The upgrade failed: everything as it was. */
static void thaw(struct worker *w)
{
    if (w->handover == HANDOVER_NONE)
        return;
    if (w->freezing != NULL) /* still settling: the freeze gets its (failed) answer */
        freeze_answer(w, (struct worker_export){ 0 }, 1);
    w->handover = HANDOVER_NONE;
    uv_timer_stop(&w->settle);
    thaw_sessions(w);
    struct worker_msg *m;
    while ((m = STAILQ_FIRST(&w->deferred)) != NULL) {
        STAILQ_REMOVE_HEAD(&w->deferred, link);
        deliver(w, m);
        free(m);
    }
    if (w->draining)
        return;
    /* A held start skipped the listeners' options (listener_serve); after
     * a rolled-back freeze this sets the same values again. */
    struct listener *l;
    STAILQ_FOREACH (l, &w->listeners, link) {
        int rc = l->route != NULL ? listener_options(l->fd, l->route) : 0;
        if (rc < 0)
            log_listener_error(w, l->route, rc);
    }
    if (w->accept == ACCEPT_PAUSED)
        uv_timer_start(&w->accept_retry, accept_retry_cb, 0, 0);
    else
        poll_listeners(w, 1);
}

/* The new process has every socket: close our copies, sending nothing,
 * and end the loop. */
static void release(struct worker *w)
{
    if (w->handover != HANDOVER_FROZEN)
        return;
    struct session_link *link, *next;
    for (link = LIST_FIRST(&w->sessions); link != NULL; link = next) {
        next = LIST_NEXT(link, list);
        session_release(session_of_link(link));
    }
    free_msgs(&w->deferred); /* the new process's registry decides now */
    begin_drain(w);          /* closes the listeners (plain close) and ends once idle */
}

static const struct route_config *route_named(const struct config *cfg, const char *name)
{
    for (size_t r = 0; r < cfg->n_routes; r++)
        if (strcmp(cfg->routes[r].name, name) == 0)
            return &cfg->routes[r];
    return NULL;
}

void worker_hold(struct worker *w) { w->handover = HANDOVER_FROZEN; }

int worker_add_listener(struct worker *w, int fd, const struct sockaddr_storage *addr, size_t route)
{
    struct listener *l = listener_new(w, fd, addr, route);
    if (l == NULL)
        return UV_ENOMEM;
    STAILQ_INSERT_TAIL(&w->listeners, l, link);
    return 0;
}

int worker_adopt_session(struct worker *w, const struct session_record *rec, int client_fd,
                         int upstream_fd)
{
    const struct route_config *route = route_named(w->cfg, rec->route);
    struct route_stats *stats = route != NULL ? metrics_route(&w->stats, route) : NULL;
    struct limit_route *limit = route != NULL ? limits_route(w->shared.limits, route->name) : NULL;
    if (route == NULL || stats == NULL || limit == NULL) {
        close(client_fd);
        close(upstream_fd);
        return route == NULL ? UV_ENOENT : UV_ENOMEM;
    }
    struct session_adopt_params p = { .cfg = w->cfg,
                                      .route = route,
                                      .stats = stats,
                                      .rec = rec,
                                      .client_fd = client_fd,
                                      .upstream_fd = upstream_fd };
    struct session *s;
    int rc = session_adopt(&w->host, &p, &s);
    if (rc < 0)
        return rc;
    /* Counted as the limits and the budget count any session (no bound
     * refuses it: it exists already). */
    enum limits_full full;
    limits_take(w->shared.limits, limit, session_peer(s), 0, 0, &full);
    budget_claim_fds(w->shared.budget, BUDGET_FDS_PER_SESSION);
    struct session_link *link = session_link(s);
    link->limit = limit;
    LIST_INSERT_HEAD(&w->sessions, link, list);
    table_insert(&w->by_id, &link->by_id, id_hash(session_id(s)));
    w->n_sessions++;
    return 0;
}

/* Answers one of the supervisor's requests. A draining worker keeps its
 * sessions on the config they started with and accepts nothing: a new
 * config is of no use to it. */
static void answer(struct worker *w, struct request *r)
{
    switch (r->type) {
    case REQUEST_LIST: {
        struct list_request *l = (struct list_request *)(void *)r;
        char *part = describe_all(w);
        uv_mutex_lock(&r->lock);
        l->parts[w->id] = part;
        uv_mutex_unlock(&r->lock);
        break;
    }
    case REQUEST_KILL: {
        struct kill_request *k = (struct kill_request *)(void *)r;
        struct session *s = find_session(w, k->session_id);
        /* A session being moved is the new process's to close. */
        int busy = s != NULL && w->handover != HANDOVER_NONE;
        if (s != NULL && !busy)
            session_close(s, REASON_ADMIN_KILL);
        uv_mutex_lock(&r->lock);
        k->found |= s != NULL;
        k->busy |= busy;
        uv_mutex_unlock(&r->lock);
        break;
    }
    case REQUEST_FREEZE:
        freeze_begin(w, (struct freeze_request *)(void *)r);
        return; /* answered once settled: freeze_tick */
    case REQUEST_THAW:
        thaw(w);
        break;
    case REQUEST_RELEASE:
        release(w);
        break;
    case REQUEST_RELOAD: {
        struct reload_request *rl = (struct reload_request *)(void *)r;
        int rc = 0;
        if (!w->draining)
            rc = serve_config(w, rl->cfg, rl->addrs, &rl->fds[(size_t)w->id * rl->cfg->n_routes]);
        uv_mutex_lock(&r->lock);
        rl->failed |= rc < 0;
        uv_mutex_unlock(&r->lock);
        break;
    }
    }
    request_answered(r);
}

/* A message for a session that is gone already needs nothing: its own close
 * released its identity, and the registry handed it on. */
/* Returns 1 when it kept m (deferred), 0 when the caller may free it. */
static int deliver(struct worker *w, struct worker_msg *m)
{
    if (m->request != NULL) {
        answer(w, m->request);
        return 0;
    }
    if (w->handover == HANDOVER_FROZEN) {
        STAILQ_INSERT_TAIL(&w->deferred, m, link);
        return 1;
    }
    struct session *s = find_session(w, m->session_id);
    if (s != NULL)
        session_deliver(s, m->msg);
    return 0;
}

static void drain_inbox(struct worker *w)
{
    struct worker_msg_list taken = STAILQ_HEAD_INITIALIZER(taken);
    uv_mutex_lock(&w->inbox_lock);
    STAILQ_CONCAT(&taken, &w->inbox);
    uv_mutex_unlock(&w->inbox_lock);

    struct worker_msg *m;
    while ((m = STAILQ_FIRST(&taken)) != NULL) {
        STAILQ_REMOVE_HEAD(&taken, link);
        if (!deliver(w, m))
            free(m);
    }
}

static int post(struct worker *to, struct request *r, enum registry_msg msg, uint64_t id)
{
    struct worker_msg *m = malloc(sizeof(*m));
    if (m == NULL)
        return UV_ENOMEM;
    *m = (struct worker_msg){ .request = r, .msg = msg, .session_id = id };
    uv_mutex_lock(&to->inbox_lock);
    if (to->inbox_closed) {
        /* Only while shutting down: its sessions are closing anyway. */
        uv_mutex_unlock(&to->inbox_lock);
        free(m);
        return UV_ECANCELED;
    }
    STAILQ_INSERT_TAIL(&to->inbox, m, link);
    /* Sent under the lock, so that the handle cannot be closed in between. */
    uv_async_send(&to->wakeup);
    uv_mutex_unlock(&to->inbox_lock);
    return 0;
}

int worker_ask(struct worker *to, struct request *r)
{
    return post(to, r, REGISTRY_MSG_GO /* unused for a request */, 0);
}

void worker_deliver(void *ctx, struct session_ref to, enum registry_msg msg)
{
    const struct worker_set *ws = ctx;
    if (to.worker < 0 || (size_t)to.worker >= ws->n || ws->w[to.worker] == NULL)
        return;
    /* ECANCELED: that worker's loop ended, and its sessions with it. A lost
     * GO would leave a successor waiting for good: say so. */
    int rc = post(ws->w[to.worker], NULL, msg, to.id);
    if (rc == UV_ENOMEM)
        log_error("registry message lost", LF_INT("worker", to.worker), LF_INT("session", to.id),
                  LF_STR("error", uv_strerror(rc)));
}

static void wakeup_cb(uv_async_t *a)
{
    struct worker *w = a->data;
    drain_inbox(w);
    int cmd = atomic_load(&w->command);
    if (cmd == WORKER_CMD_NONE)
        return;
    begin_drain(w);
    if (cmd == WORKER_CMD_STOP)
        close_all_sessions(w);
}

int worker_new(struct worker **out, int id, struct config *cfg,
               const struct sockaddr_storage *addrs, const int *fds,
               const struct worker_shared *shared)
{
    struct worker *w = calloc(1, sizeof(*w));
    int rc = w == NULL ? UV_ENOMEM : table_init(&w->by_id);
    if (rc == 0 && (rc = uv_mutex_init(&w->inbox_lock)) < 0)
        table_destroy(&w->by_id);
    if (rc < 0) {
        free(w);
        for (size_t i = 0; i < cfg->n_routes; i++)
            close(fds[i]);
        return rc;
    }
    w->id = id;
    w->shared = *shared;
    atomic_init(&w->command, WORKER_CMD_NONE);
    atomic_init(&w->phase, WORKER_PHASE_STARTING);
    worker_stats_init(&w->stats);
    log_limit_init(&w->deny_log, "connection denied", 1);
    log_limit_init(&w->upstream_log, "upstream", WORKER_UPSTREAM_LOG_PER_S);
    log_limit_init(&w->accept_log, "accept failed", 1);
    LIST_INIT(&w->sessions);
    TAILQ_INIT(&w->budget_waiters);
    STAILQ_INIT(&w->listeners);
    STAILQ_INIT(&w->inbox);
    STAILQ_INIT(&w->deferred);
    /* The sockets wait, unopened, for the loop's thread: serve_config(). */
    for (size_t i = 0; i < cfg->n_routes; i++) {
        struct listener *l = rc == 0 ? listener_new(w, fds[i], &addrs[i], i) : NULL;
        if (l == NULL) {
            if (rc == 0)
                rc = UV_ENOMEM;
            else
                close(fds[i]);
            continue;
        }
        STAILQ_INSERT_TAIL(&w->listeners, l, link);
    }
    int loop_rc = rc == 0 ? uv_loop_init(&w->loop) : rc;
    if (loop_rc == 0 && (rc = uv_async_init(&w->loop, &w->wakeup, wakeup_cb)) < 0)
        uv_loop_close(&w->loop); /* nothing else is on it yet */
    if (loop_rc < 0 || rc < 0) {
        close_listeners(w); /* unopened: their fds are closed at once */
        worker_stats_destroy(&w->stats);
        table_destroy(&w->by_id);
        uv_mutex_destroy(&w->inbox_lock);
        free(w);
        return loop_rc < 0 ? loop_rc : rc;
    }
    /* Timers cannot fail to initialise (libuv allocates nothing for them). */
    uv_timer_init(&w->loop, &w->drain_timer);
    uv_timer_init(&w->loop, &w->tick);
    uv_timer_init(&w->loop, &w->accept_retry);
    uv_timer_init(&w->loop, &w->budget_retry);
    uv_timer_init(&w->loop, &w->settle);
    uv_prepare_init(&w->loop, &w->flush);
    uv_unref((uv_handle_t *)&w->flush); /* it never keeps the loop alive */
    w->wakeup.data = w->drain_timer.data = w->tick.data = w;
    w->accept_retry.data = w->budget_retry.data = w->settle.data = w;
    w->cfg = config_ref(cfg);
    atomic_init(&w->last_tick_ms, now_ms());
    pool_init(&w->pool, POOL_MAX_FREE);
    deadlines_init(&w->deadlines, &w->loop, session_deadline_fire);
    w->loop.data = &w->host;
    w->host = (struct session_host){
        .loop = &w->loop,
        .deadlines = &w->deadlines,
        .pool = &w->pool,
        .budget = shared->budget,
        .registry = shared->registry,
        .upstream_log = &w->upstream_log,
        .id = id,
        .wait_budget = host_wait_budget,
        .leave_budget = host_leave_budget,
        .fds_exhausted = host_fds_exhausted,
        .closed = host_closed,
        .freed = host_freed,
    };
    *out = w;
    return 0;
}

/* Opens the sockets worker_new() (and worker_add_listener()) gave it. */
static int open_listeners(struct worker *w)
{
    int rc = 0;
    for (struct listener *l = STAILQ_FIRST(&w->listeners); l != NULL && rc == 0;
         l = STAILQ_NEXT(l, link)) {
        const struct route_config *route = &w->cfg->routes[l->route_ix];
        rc = listener_open(l);
        if (rc == 0)
            rc = listener_serve(l, route);
        if (rc < 0)
            log_listener_error(w, route, rc);
    }
    return rc;
}

static void flush_cb(uv_prepare_t *p) { log_flush(); }

static void worker_main(void *arg)
{
    struct worker *w = arg;
    /* Named, so that top -H, gdb and /proc/PID/task tell the loops apart. */
    char name[16];
    snprintf(name, sizeof(name), "worker-%d", w->id);
    pthread_setname_np(pthread_self(), name);
    log_batch_start();
    uv_prepare_start(&w->flush, flush_cb);
    int rc = open_listeners(w);
    if (rc < 0 && w->handover == HANDOVER_FROZEN) {
        /* Held for a live upgrade: its sessions are still the old
         * process's, and a drain would close them. The supervisor gives
         * up (and exits) on this. */
        w->start_error = rc;
        log_flush();
        set_phase(w, WORKER_PHASE_FAILED);
        return;
    }
    if (rc < 0) {
        w->start_error = rc;
        begin_drain(w);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        log_flush();
        set_phase(w, WORKER_PHASE_FAILED);
        return;
    }
    uv_timer_start(&w->tick, tick_cb, TICK_MS, TICK_MS);
    set_phase(w, WORKER_PHASE_RUNNING);
    /* A command may have come before the loop ran. */
    wakeup_cb(&w->wakeup);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    log_flush();
    set_phase(w, WORKER_PHASE_EXITED);
}

int worker_start(struct worker *w) { return uv_thread_create(&w->thread, worker_main, w); }

void worker_send(struct worker *w, enum worker_command cmd)
{
    int cur = atomic_load(&w->command);
    /* Commands only escalate: NONE -> DRAIN -> STOP. */
    while (cur < (int)cmd && !atomic_compare_exchange_weak(&w->command, &cur, (int)cmd))
        ;
    uv_mutex_lock(&w->inbox_lock);
    if (!w->inbox_closed)
        uv_async_send(&w->wakeup);
    uv_mutex_unlock(&w->inbox_lock);
}

static void free_worker(struct worker *w)
{
    /* Messages posted after the loop stopped are for sessions long gone. */
    free_msgs(&w->inbox);
    free_msgs(&w->deferred);
    uv_mutex_destroy(&w->inbox_lock);
    worker_stats_destroy(&w->stats);
    config_free(w->cfg);
    pool_drain(&w->pool);
    table_destroy(&w->by_id);
    free(w);
}

/* Every handle is closed when the loop ends; one left open is a bug, and
 * would be used after free. */
static void close_loop(struct worker *w)
{
    int rc = uv_loop_close(&w->loop);
    if (rc < 0) {
        log_error("worker loop left handles open", LF_INT("worker", w->id),
                  LF_STR("error", uv_strerror(rc)));
        abort();
    }
}

void worker_join(struct worker *w)
{
    uv_thread_join(&w->thread);
    close_loop(w);
    free_worker(w);
}

void worker_destroy(struct worker *w)
{
    w->inbox_closed = 1; /* never started: nobody else can post yet */
    close_listeners(w);  /* unopened: their fds are closed at once */
    uv_close((uv_handle_t *)&w->wakeup, NULL);
    uv_close((uv_handle_t *)&w->tick, NULL);
    uv_close((uv_handle_t *)&w->accept_retry, NULL);
    uv_close((uv_handle_t *)&w->budget_retry, NULL);
    uv_close((uv_handle_t *)&w->settle, NULL);
    uv_close((uv_handle_t *)&w->flush, NULL);
    uv_close((uv_handle_t *)&w->drain_timer, NULL);
    deadlines_close(&w->deadlines);
    /* Sessions adopted for a worker that never ran are closed with it. */
    close_all_sessions(w);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    close_loop(w);
    free_worker(w);
}

int worker_id(const struct worker *w) { return w->id; }

enum worker_phase worker_phase(struct worker *w)
{
    return (enum worker_phase)atomic_load(&w->phase);
}

int worker_start_error(const struct worker *w) { return w->start_error; }

struct worker_stats *worker_stats(struct worker *w) { return &w->stats; }

int worker_stuck(struct worker *w)
{
    return worker_phase(w) == WORKER_PHASE_RUNNING && worker_stalled_ms(w) > WORKER_STALL_MS;
}

int worker_set_ask(struct worker_set *ws, uv_loop_t *loop, struct request *r)
{
    int rc = request_begin(r, loop, ws->n_started);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < ws->n_started; i++)
        if (worker_ask(ws->w[i], r) < 0)
            request_answered(r); /* its loop ended: it has no sessions */
    request_answered(r);         /* the asker's own share: every post is made */
    return 0;
}
