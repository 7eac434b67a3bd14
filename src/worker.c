/* A worker thread: one uv_loop, its listening sockets, its sessions. */
#define _GNU_SOURCE /* pthread_setname_np */
#include "lifeline/worker.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lifeline/liveness.h"
#include "lifeline/log.h"
#include "lifeline/net.h"
#include "lifeline/session.h"

#define TICK_MS 500
#define POOL_MAX_FREE 64 /* cached buffers per worker: 4 MiB */
#define ACCEPT_BATCH 64
#define TRIM_AFTER_FREES 1024 /* sessions ended before memory is handed back */
#define ACCEPT_RETRY_MS 100 /* out of descriptors: try accepting again after this */
#define BUDGET_RETRY_MS 10  /* buffer memory spent: look for room again after this */
#define SHORTAGE_OVER_MS 1000 /* accepting this long without a pause ends a shortage */

static void set_phase(struct worker *w, enum worker_phase phase)
{
    atomic_store(&w->phase, (int)phase);
    uv_async_send(w->notify);
}

static void accept_cb(uv_poll_t *p, int status, int events);
static void accept_retry_cb(uv_timer_t *t);

/* Out of descriptors (the budget is spent, or the kernel said EMFILE): stop
 * accepting on every listener of this worker, so that new connections wait
 * in the kernel's queues while the sessions already open go on, and try
 * again shortly. Logged when a shortage begins, not at every retry. */
void worker_pause_accepting(struct worker *w, const char *route, int err)
{
    if (w->draining)
        return;
    if (w->accept == ACCEPT_ON)
        log_warn("accept paused: out of file descriptors", LF_STR("route", route),
                 LF_INT("worker", w->id), LF_INT("sessions", w->n_sessions),
                 LF_STR("error", uv_strerror(err)));
    w->accept = ACCEPT_PAUSED;
    for (struct listener *x = w->listeners; x != NULL; x = x->next)
        if (x->poll.data != NULL)
            uv_poll_stop(&x->poll);
    uv_timer_start(&w->accept_retry, accept_retry_cb, ACCEPT_RETRY_MS, 0);
}

/* PAUSED -> RETRYING once the budget has room for a session. */
static void resume_accepting(struct worker *w)
{
    if (w->accept != ACCEPT_PAUSED || w->draining)
        return;
    if (!budget_fds_room(w->budget)) {
        uv_timer_start(&w->accept_retry, accept_retry_cb, ACCEPT_RETRY_MS, 0);
        return;
    }
    w->accept = ACCEPT_RETRYING;
    w->accepting_since_ms = uv_now(&w->loop);
    for (struct listener *x = w->listeners; x != NULL; x = x->next)
        if (x->poll.data != NULL)
            uv_poll_start(&x->poll, UV_READABLE, accept_cb);
}

static void accept_retry_cb(uv_timer_t *t) { resume_accepting(t->data); }

/* A shortage is over once accepting has gone on for SHORTAGE_OVER_MS
 * without pausing again (the worker's tick looks). So a worker that hovers
 * at its budget, each closing session letting one client in, logs one
 * shortage, not one per session. */
static void end_shortage(struct worker *w)
{
    if (w->accept != ACCEPT_RETRYING ||
        uv_now(&w->loop) - w->accepting_since_ms < SHORTAGE_OVER_MS)
        return;
    w->accept = ACCEPT_ON;
    log_info("accepting again", LF_INT("worker", w->id), LF_INT("sessions", w->n_sessions));
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
        if (budget_take_fds(w->budget, BUDGET_FDS_PER_SESSION) < 0) {
            worker_pause_accepting(w, l->route->name, UV_EMFILE);
            return;
        }
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);
        int fd = accept4(l->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        int rc;
        if (fd < 0) {
            rc = -errno;
            budget_give_fds(w->budget, BUDGET_FDS_PER_SESSION);
        } else {
            /* The session owns the descriptors taken from now on. */
            rc = session_accept(w, l, fd, (struct sockaddr *)&peer, len);
        }
        if (rc == UV_EAGAIN)
            return;
        if (rc == UV_ECONNABORTED || rc == UV_EINTR)
            continue;
        if (rc == UV_EMFILE || rc == UV_ENFILE || rc == UV_ENOBUFS || rc == UV_ENOMEM) {
            metric_add(&l->stats->c[RC_ACCEPT_ERRORS], 1);
            worker_pause_accepting(w, l->route->name, rc);
            return;
        }
        if (rc < 0) {
            uint64_t suppressed;
            metric_add(&l->stats->c[RC_ACCEPT_ERRORS], 1);
            if (log_enabled(LOG_WARN) &&
                log_limit_allow(&w->accept_log, uv_now(&w->loop), &suppressed))
                log_warn("accept failed", LF_STR("route", l->route->name),
                         LF_INT("worker", w->id), LF_STR("error", uv_strerror(rc)),
                         LF_INT("suppressed", suppressed));
            return;
        }
    }
}

/* --- listeners -------------------------------------------------------------- */

/* A listener for a socket the supervisor bound; the worker owns fd from now on. */
static struct listener *listener_new(struct worker *w, int fd, const struct sockaddr_storage *addr)
{
    struct listener *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        close(fd);
        return NULL;
    }
    l->w = w;
    l->fd = fd;
    l->addr = *addr;
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
    return l->w->accept == ACCEPT_PAUSED ? 0 : uv_poll_start(&l->poll, UV_READABLE, accept_cb);
}

/* Points a listener at its route in the worker's (new) config. */
static int listener_serve(struct listener *l, const struct route_config *route)
{
    struct route_stats *stats = metrics_route(&l->w->stats, route);
    struct limit_route *limit = limits_route(l->w->limits, route->name);
    if (stats == NULL || limit == NULL)
        return UV_ENOMEM;
    /* Accepted sockets inherit these from the listener. */
    net_set_nodelay(l->fd);
    int rc = liveness_apply(l->fd, &route->client.heartbeat);
    if (rc < 0)
        return rc;
    l->route = route;
    l->stats = stats;
    l->limit = limit;
    return 0;
}

static void close_listeners(struct worker *w)
{
    while (w->listeners != NULL) {
        struct listener *l = w->listeners;
        w->listeners = l->next;
        listener_close(l);
    }
}

/* Takes the listener bound to addr out of the list. */
static struct listener *listener_unlink(struct listener **list, const struct sockaddr_storage *addr)
{
    for (struct listener **p = list; *p != NULL; p = &(*p)->next) {
        struct listener *l = *p;
        if (addr_equal((const struct sockaddr *)&l->addr, (const struct sockaddr *)addr)) {
            *p = l->next;
            l->next = NULL;
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
    struct listener *old = w->listeners, **tail = &w->listeners;
    w->listeners = NULL;
    int first_error = 0;
    for (size_t r = 0; r < cfg->n_routes; r++) {
        struct listener *l;
        int rc = 0;
        if (fds[r] >= 0) {
            l = listener_new(w, fds[r], &addrs[r]);
            fds[r] = -1;
            rc = l == NULL ? UV_ENOMEM : listener_open(l);
        } else {
            l = listener_unlink(&old, &addrs[r]);
            rc = l == NULL ? UV_ENOENT : 0; /* the supervisor said it was kept */
        }
        if (rc == 0)
            rc = listener_serve(l, &cfg->routes[r]);
        if (rc < 0) {
            log_listener_error(w, &cfg->routes[r], rc);
            if (l != NULL)
                listener_close(l);
            if (first_error == 0)
                first_error = rc;
            continue;
        }
        *tail = l;
        tail = &l->next;
    }
    /* What is left belongs to routes the new config dropped: they stop
     * accepting, and their sessions run on until they end. */
    while (old != NULL) {
        struct listener *l = old;
        old = l->next;
        listener_close(l);
    }
    struct config *prev = w->cfg;
    w->cfg = config_ref(cfg);
    config_free(prev);
    return first_error;
}

/* --- readers waiting for buffer memory ------------------------------------ */

static int waiters_empty(const struct budget_waiter *head) { return head->next == head; }

static void waiter_link(struct budget_waiter *head, struct budget_waiter *bw)
{
    bw->prev = head->prev;
    bw->next = head;
    head->prev->next = bw;
    head->prev = bw;
}

void worker_unwait_budget(struct budget_waiter *bw)
{
    if (bw->next == NULL)
        return;
    bw->prev->next = bw->next;
    bw->next->prev = bw->prev;
    bw->prev = bw->next = NULL;
}

static void budget_retry_cb(uv_timer_t *t);

void worker_wait_budget(struct worker *w, struct budget_waiter *bw)
{
    if (bw->next != NULL)
        return;
    waiter_link(&w->budget_waiters, bw);
    if (!uv_is_active((uv_handle_t *)&w->budget_retry))
        uv_timer_start(&w->budget_retry, budget_retry_cb, BUDGET_RETRY_MS, BUDGET_RETRY_MS);
}

/* Asks each waiter, oldest first, whether it may read now. The list is
 * moved aside first: a waiter that still may not read joins the worker's
 * list again, and one whose session ends meanwhile leaves whichever list it
 * is on. */
static void budget_retry_cb(uv_timer_t *t)
{
    struct worker *w = t->data;
    struct budget_waiter asking = { &asking, &asking };
    if (!waiters_empty(&w->budget_waiters)) {
        asking.next = w->budget_waiters.next;
        asking.prev = w->budget_waiters.prev;
        asking.next->prev = &asking;
        asking.prev->next = &asking;
        w->budget_waiters.next = w->budget_waiters.prev = &w->budget_waiters;
    }
    while (!waiters_empty(&asking)) {
        struct budget_waiter *bw = asking.next;
        worker_unwait_budget(bw);
        session_budget_retry(bw);
    }
    if (waiters_empty(&w->budget_waiters))
        uv_timer_stop(&w->budget_retry);
}

static void close_all_sessions(struct worker *w)
{
    struct session *s = w->sessions;
    while (s != NULL) {
        struct session *next = session_next(s);
        session_close(s, REASON_SHUTDOWN);
        s = next;
    }
}

static void drain_inbox(struct worker *w);

/* Once draining and the last session is gone, closing the worker's own
 * handles lets uv_run() return. */
static void exit_if_idle(struct worker *w)
{
    if (!w->draining || w->n_sessions > 0)
        return;
    if (!uv_is_closing((uv_handle_t *)&w->wakeup)) {
        uv_mutex_lock(&w->inbox_lock);
        w->inbox_closed = 1;
        uv_mutex_unlock(&w->inbox_lock);
        drain_inbox(w); /* questions posted before the close still get answers */
        uv_close((uv_handle_t *)&w->wakeup, NULL);
        uv_close((uv_handle_t *)&w->tick, NULL);
        uv_close((uv_handle_t *)&w->accept_retry, NULL);
        uv_close((uv_handle_t *)&w->budget_retry, NULL);
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

static struct session *find_session(struct worker *w, uint64_t id)
{
    for (struct session *s = w->sessions; s != NULL; s = session_next(s))
        if (session_id(s) == id)
            return s;
    return NULL;
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
        malloc_trim(0);
    }
}

uint64_t worker_stalled_ms(struct worker *w)
{
    uint64_t last = atomic_load(&w->last_tick_ms);
    uint64_t now = now_ms();
    return now > last + TICK_MS ? now - last - TICK_MS : 0;
}

static void gather_answer(struct gather *g, char *part, int id, int found)
{
    uv_mutex_lock(&g->lock);
    if (part != NULL)
        g->parts[id] = part;
    g->found |= found;
    int last = --g->pending == 0;
    uv_mutex_unlock(&g->lock);
    if (last)
        uv_async_send(&g->done);
}

/* Every session of this worker as JSON objects separated by commas. */
static char *describe_all(struct worker *w)
{
    size_t cap = 256 * (w->n_sessions + 1), len = 0;
    char *out = malloc(cap);
    if (out == NULL)
        return NULL;
    out[0] = '\0';
    for (struct session *s = w->sessions; s != NULL; s = session_next(s)) {
        char one[SESSION_JSON_MAX];
        int n = session_json(s, one, sizeof(one));
        if (len + (size_t)n + 2 > cap) {
            cap = cap * 2 + (size_t)n;
            char *bigger = realloc(out, cap);
            if (bigger == NULL)
                break;
            out = bigger;
        }
        len += (size_t)snprintf(out + len, cap - len, "%s%s", len > 0 ? "," : "", one);
    }
    return out;
}

/* A draining worker keeps its sessions on the config they started with and
 * accepts nothing: the new config is of no use to it. */
static void reload(struct worker *w, struct gather *g)
{
    int rc = 0;
    if (!w->draining)
        rc = serve_config(w, g->cfg, g->addrs, &g->fds[(size_t)w->id * g->cfg->n_routes]);
    config_free(g->cfg); /* the reference the supervisor took for this worker */
    gather_answer(g, NULL, w->id, rc < 0);
}

/* A message for a session that is gone already needs nothing: its own close
 * released its identity, and the registry handed it on. */
static void deliver(struct worker *w, const struct worker_msg *m)
{
    if (m->type == WORKER_MSG_DESCRIBE) {
        gather_answer(m->gather, describe_all(w), w->id, 0);
        return;
    }
    struct session *s = find_session(w, m->session_id);
    switch (m->type) {
    case WORKER_MSG_EVICT:
        if (s != NULL)
            session_close(s, REASON_REPLACED);
        break;
    case WORKER_MSG_GO:
        if (s != NULL)
            session_go(s);
        break;
    case WORKER_MSG_KILL:
        if (s != NULL)
            session_close(s, REASON_ADMIN_KILL);
        gather_answer(m->gather, NULL, w->id, s != NULL);
        break;
    case WORKER_MSG_RELOAD:
        reload(w, m->gather);
        break;
    case WORKER_MSG_DESCRIBE:
        break;
    }
}

static void drain_inbox(struct worker *w)
{
    uv_mutex_lock(&w->inbox_lock);
    struct worker_msg *m = w->inbox;
    w->inbox = w->inbox_tail = NULL;
    uv_mutex_unlock(&w->inbox_lock);

    while (m != NULL) {
        struct worker_msg *next = m->next;
        deliver(w, m);
        free(m);
        m = next;
    }
}

int worker_post(struct worker *to, enum worker_msg_type type, uint64_t session_id,
                struct gather *g)
{
    struct worker_msg *m = malloc(sizeof(*m));
    if (m == NULL)
        return UV_ENOMEM;
    m->next = NULL;
    m->type = type;
    m->session_id = session_id;
    m->gather = g;
    uv_mutex_lock(&to->inbox_lock);
    if (to->inbox_closed) {
        /* Only while shutting down: its sessions are closing anyway. */
        uv_mutex_unlock(&to->inbox_lock);
        free(m);
        return UV_ECANCELED;
    }
    if (to->inbox_tail != NULL)
        to->inbox_tail->next = m;
    else
        to->inbox = m;
    to->inbox_tail = m;
    /* Sent under the lock, so that the handle cannot be closed in between. */
    uv_async_send(&to->wakeup);
    uv_mutex_unlock(&to->inbox_lock);
    return 0;
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

void worker_session_freed(struct worker *w)
{
    w->n_sessions--;
    w->freed_since_trim++;
    exit_if_idle(w);
}

int worker_init(struct worker *w, int id, struct config *cfg,
                const struct sockaddr_storage *addrs, const int *fds, uv_async_t *notify,
                struct worker *peers, size_t n_peers, struct registry *registry,
                struct limits *limits, struct budget *budget)
{
    memset(w, 0, sizeof(*w));
    w->id = id;
    w->notify = notify;
    w->peers = peers;
    w->n_peers = n_peers;
    w->registry = registry;
    w->limits = limits;
    w->budget = budget;
    atomic_init(&w->command, WORKER_CMD_NONE);
    atomic_init(&w->phase, WORKER_PHASE_STARTING);
    worker_stats_init(&w->stats);
    log_limit_init(&w->deny_log, "connection denied", 1);
    log_limit_init(&w->upstream_log, "upstream", WORKER_UPSTREAM_LOG_PER_S);
    log_limit_init(&w->accept_log, "accept failed", 1);
    /* The sockets wait, unopened, for the loop's thread: serve_config(). */
    int rc = 0;
    struct listener **tail = &w->listeners;
    for (size_t i = 0; i < cfg->n_routes; i++) {
        struct listener *l = rc == 0 ? listener_new(w, fds[i], &addrs[i]) : NULL;
        if (l == NULL) {
            if (rc == 0)
                rc = UV_ENOMEM;
            else
                close(fds[i]);
            continue;
        }
        *tail = l;
        tail = &l->next;
    }
    if (rc == 0)
        rc = uv_loop_init(&w->loop);
    if (rc < 0) {
        close_listeners(w);
        worker_stats_destroy(&w->stats);
        return rc;
    }
    w->cfg = config_ref(cfg);
    uv_mutex_init(&w->inbox_lock);
    uv_async_init(&w->loop, &w->wakeup, wakeup_cb);
    w->wakeup.data = w;
    uv_timer_init(&w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    uv_timer_init(&w->loop, &w->tick);
    w->tick.data = w;
    uv_timer_init(&w->loop, &w->accept_retry);
    w->accept_retry.data = w;
    uv_timer_init(&w->loop, &w->budget_retry);
    w->budget_retry.data = w;
    w->budget_waiters.prev = w->budget_waiters.next = &w->budget_waiters;
    atomic_init(&w->last_tick_ms, now_ms());
    pool_init(&w->pool, POOL_MAX_FREE);
    return 0;
}

/* Opens the sockets worker_init() was given, in route order. */
static int open_listeners(struct worker *w)
{
    size_t r = 0;
    int rc = 0;
    for (struct listener *l = w->listeners; l != NULL && rc == 0; l = l->next, r++) {
        rc = listener_open(l);
        if (rc == 0)
            rc = listener_serve(l, &w->cfg->routes[r]);
        if (rc < 0)
            log_listener_error(w, &w->cfg->routes[r], rc);
    }
    return rc;
}

static void worker_main(void *arg)
{
    struct worker *w = arg;
    /* Named, so that top -H, gdb and /proc/PID/task tell the loops apart. */
    char name[16];
    snprintf(name, sizeof(name), "worker-%d", w->id);
    pthread_setname_np(pthread_self(), name);
    int rc = open_listeners(w);
    if (rc < 0) {
        w->start_error = rc;
        begin_drain(w);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        set_phase(w, WORKER_PHASE_FAILED);
        return;
    }
    uv_timer_start(&w->tick, tick_cb, TICK_MS, TICK_MS);
    set_phase(w, WORKER_PHASE_RUNNING);
    /* A command may have come before the loop ran. */
    wakeup_cb(&w->wakeup);
    uv_run(&w->loop, UV_RUN_DEFAULT);
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
    while (w->inbox != NULL) {
        struct worker_msg *m = w->inbox;
        w->inbox = m->next;
        free(m);
    }
    uv_mutex_destroy(&w->inbox_lock);
    worker_stats_destroy(&w->stats);
    config_free(w->cfg);
    w->cfg = NULL;
    pool_drain(&w->pool);
}

void worker_join(struct worker *w)
{
    uv_thread_join(&w->thread);
    uv_loop_close(&w->loop);
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
    uv_close((uv_handle_t *)&w->drain_timer, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    free_worker(w);
}
