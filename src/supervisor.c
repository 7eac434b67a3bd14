/* The main thread: listeners, worker lifecycle, signals. */
#include "lifeline/supervisor.h"

#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "lifeline/admin.h"
#include "lifeline/budget.h"
#include "lifeline/log.h"
#include "lifeline/metrics.h"
#include "lifeline/net.h"
#include "lifeline/notify.h"
#include "lifeline/worker.h"

#define LISTEN_BACKLOG 4096
#define ADMIN_BACKLOG 128
/* A worker loop that has not turned for this long is stuck: /healthz says
 * 503 and the supervisor logs it. */
#define WORKER_STALL_MS 2000
#define WATCHDOG_MS 500

enum sup_phase {
    SUP_STARTING,   /* waiting for every worker to run */
    SUP_RUNNING,    /* ready logged */
    SUP_STOPPING,   /* drain or stop sent; waiting for workers to exit */
};

struct supervisor {
    struct config *cfg;           /* for new sessions; a reference */
    struct sockaddr_storage *addrs; /* cfg's listen addresses, resolved */
    const struct supervisor_options *opts;
    int reloading;                /* a reload waits for the workers' answers */
    int reload_again;             /* a SIGHUP came meanwhile */
    uv_loop_t loop;
    uv_signal_t sigterm, sigint, sighup;
    uv_async_t notify;            /* workers report phase changes here */
    struct worker **workers;      /* by number */
    struct worker_shared shared;  /* what every worker is lent */
    size_t n_workers;
    struct registry registry;     /* client identities, shared by the workers */
    struct limits limits;         /* open sessions per route and address */
    struct budget budget;         /* descriptors and buffer memory, shared by the workers */
    size_t n_started;             /* workers whose thread was created */
    enum sup_phase phase;
    int signals;                  /* shutdown signals received */
    int exit_code;
    struct admin *admin;          /* NULL when the config has no admin object */
    int admin_fd;                 /* bound before the workers start */
    uv_timer_t watchdog;          /* looks for stuck worker loops */
    uv_timer_t sd_watchdog;       /* WATCHDOG=1 to systemd while healthy */
    unsigned char *stalled;       /* per worker: stuck, and logged as such */
    struct process_stats ps;
};

static void stop_workers(struct supervisor *sup, enum worker_command cmd)
{
    sup->phase = SUP_STOPPING;
    for (size_t i = 0; i < sup->n_started; i++)
        worker_send(sup->workers[i], cmd);
}

/* The signals the supervisor handles; workers (and the threads they start)
 * block them, so that only the supervisor's thread ever receives them. */
static void handled_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
}

static void close_own_handles(struct supervisor *sup)
{
    /* Closing a uv_signal restores the default action: from here on a late
     * signal stays pending (blocked), and is dropped once ignored at exit,
     * instead of killing a process that is finishing a clean exit. */
    sigset_t set;
    handled_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    uv_close((uv_handle_t *)&sup->sigterm, NULL);
    uv_close((uv_handle_t *)&sup->sigint, NULL);
    uv_close((uv_handle_t *)&sup->sighup, NULL);
    uv_close((uv_handle_t *)&sup->notify, NULL);
    uv_close((uv_handle_t *)&sup->watchdog, NULL);
    uv_close((uv_handle_t *)&sup->sd_watchdog, NULL);
    admin_stop(sup->admin);
    sup->admin = NULL;
}

/* --- watchdog and the admin backend ---------------------------------------- */

static int worker_stuck(struct supervisor *sup, size_t i)
{
    struct worker *w = sup->workers[i];
    return worker_phase(w) == WORKER_PHASE_RUNNING &&
           worker_stalled_ms(w) > WORKER_STALL_MS;
}

static void watchdog_cb(uv_timer_t *t)
{
    struct supervisor *sup = t->data;
    for (size_t i = 0; i < sup->n_started; i++) {
        int stuck = worker_stuck(sup, i);
        if (stuck && !sup->stalled[i])
            log_error("worker loop not responding", LF_INT("worker", i),
                      LF_INT("stalled_ms", worker_stalled_ms(sup->workers[i])));
        else if (!stuck && sup->stalled[i])
            log_info("worker loop responding again", LF_INT("worker", i));
        sup->stalled[i] = (unsigned char)stuck;
    }
}

static int backend_healthy(void *ctx)
{
    struct supervisor *sup = ctx;
    for (size_t i = 0; i < sup->n_started; i++)
        if (worker_stuck(sup, i))
            return 0;
    return 1;
}

/* systemd's watchdog hears from us only while every worker loop turns. */
static void sd_watchdog_cb(uv_timer_t *t)
{
    struct supervisor *sup = t->data;
    if (backend_healthy(sup))
        notify_send("WATCHDOG=1");
}

static int backend_ready(void *ctx)
{
    struct supervisor *sup = ctx;
    return sup->phase == SUP_RUNNING;
}

static char *backend_metrics(void *ctx)
{
    struct supervisor *sup = ctx;
    struct worker_stats *stats[sup->n_started + 1];
    for (size_t i = 0; i < sup->n_started; i++)
        stats[i] = worker_stats(sup->workers[i]);
    sup->ps.admin = sup->admin != NULL ? admin_get_stats(sup->admin) : NULL;
    sup->ps.budget = &sup->budget;
    return metrics_render(stats, sup->n_started, &sup->ps);
}

static void gather_closed_cb(uv_handle_t *h)
{
    struct gather *g = h->data;
    for (size_t i = 0; g->parts != NULL && i < g->n_parts; i++)
        free(g->parts[i]);
    free(g->parts);
    uv_mutex_destroy(&g->lock);
    free(g);
}

static void reload_done(struct supervisor *sup, struct gather *g);

/* Every worker answered: build the HTTP response, or finish the reload. */
static void gather_done_cb(uv_async_t *a)
{
    struct gather *g = a->data;
    /* Each worker wrote its answer (parts, found, the fds it adopted) and
     * then released the lock; the last one's wakeup brought us here. That
     * order also holds through uv_async_send, but by atomics that
     * ThreadSanitizer does not see: taking the lock makes it visible. */
    uv_mutex_lock(&g->lock);
    uv_mutex_unlock(&g->lock);
    if (g->type == WORKER_MSG_RELOAD) {
        reload_done(g->owner, g);
    } else if (g->type == WORKER_MSG_KILL) {
        char body[64];
        snprintf(body, sizeof(body), "{\"closed\":%" PRIu64 "}\n", g->session_id);
        admin_reply(g->owner, g->found ? 200 : 404, "application/json",
                    strdup(g->found ? body : "{\"error\":\"no such session\"}\n"));
    } else {
        size_t len = 4;
        for (size_t i = 0; i < g->n_parts; i++)
            len += (g->parts[i] ? strlen(g->parts[i]) : 0) + 1;
        char *body = malloc(len);
        if (body != NULL) {
            size_t o = 0;
            body[o++] = '[';
            for (size_t i = 0; i < g->n_parts; i++) {
                if (g->parts[i] == NULL || g->parts[i][0] == '\0')
                    continue;
                if (o > 1)
                    body[o++] = ',';
                memcpy(body + o, g->parts[i], strlen(g->parts[i]));
                o += strlen(g->parts[i]);
            }
            body[o++] = ']';
            body[o++] = '\n';
            body[o] = '\0';
        }
        admin_reply(g->owner, body ? 200 : 500, "application/json", body);
    }
    uv_close((uv_handle_t *)&g->done, gather_closed_cb);
}

static struct gather *gather_new(struct supervisor *sup, enum worker_msg_type type, void *owner)
{
    struct gather *g = calloc(1, sizeof(*g));
    if (g != NULL && (g->parts = calloc(sup->n_started + 1, sizeof(*g->parts))) == NULL) {
        free(g);
        g = NULL;
    }
    if (g == NULL)
        return NULL;
    g->type = type;
    g->owner = owner;
    g->n_parts = sup->n_started;
    return g;
}

/* Asks every worker; the answer comes in gather_done_cb(). */
static void gather_post(struct supervisor *sup, struct gather *g)
{
    g->pending = sup->n_started + 1; /* one for this function, released below */
    uv_mutex_init(&g->lock);
    uv_async_init(&sup->loop, &g->done, gather_done_cb);
    g->done.data = g;
    size_t unreachable = 0;
    for (size_t i = 0; i < sup->n_started; i++) {
        if (g->type == WORKER_MSG_RELOAD)
            config_ref(g->cfg); /* the worker's to drop once it has answered */
        if (worker_post(sup->workers[i], g->type, g->session_id, g) < 0) {
            unreachable++; /* its loop ended: it has no sessions */
            if (g->type == WORKER_MSG_RELOAD)
                config_free(g->cfg);
        }
    }
    uv_mutex_lock(&g->lock);
    g->pending -= unreachable + 1;
    int last = g->pending == 0;
    uv_mutex_unlock(&g->lock);
    if (last)
        uv_async_send(&g->done);
}

static void gather_admin(struct supervisor *sup, struct admin_conn *c, enum worker_msg_type type,
                         uint64_t id)
{
    struct gather *g = gather_new(sup, type, c);
    if (g == NULL) {
        admin_reply(c, 500, "text/plain; charset=utf-8", strdup("out of memory\n"));
        return;
    }
    g->session_id = id;
    gather_post(sup, g);
}

static void backend_sessions(void *ctx, struct admin_conn *c)
{
    gather_admin(ctx, c, WORKER_MSG_DESCRIBE, 0);
}

static void backend_close_session(void *ctx, struct admin_conn *c, uint64_t id)
{
    gather_admin(ctx, c, WORKER_MSG_KILL, id);
}

static void reload_start(struct supervisor *sup);

static void notify_cb(uv_async_t *a)
{
    struct supervisor *sup = a->data;
    size_t running = 0, done = 0;

    for (size_t i = 0; i < sup->n_started; i++) {
        struct worker *w = sup->workers[i];
        enum worker_phase phase = worker_phase(w);
        if (phase == WORKER_PHASE_RUNNING) {
            running++;
        } else if (phase == WORKER_PHASE_FAILED) {
            done++;
            if (sup->exit_code == EXIT_CLEAN) {
                log_error("worker could not start", LF_INT("worker", worker_id(w)),
                          LF_STR("error", uv_strerror(worker_start_error(w))));
                sup->exit_code = EXIT_RUNTIME;
                stop_workers(sup, WORKER_CMD_STOP);
            }
        } else if (phase == WORKER_PHASE_EXITED) {
            done++;
        }
    }
    if (sup->phase == SUP_STARTING && running == sup->n_workers) {
        sup->phase = SUP_RUNNING;
        log_info("ready", LF_INT("workers", sup->n_workers),
                 LF_INT("routes", sup->cfg->n_routes), LF_INT("pid", getpid()));
        notify_send("READY=1\nSTATUS=ready");
        if (sup->reload_again)
            reload_start(sup);
    }
    if (done == sup->n_started && sup->phase == SUP_STOPPING)
        close_own_handles(sup);
}

static void signal_cb(uv_signal_t *h, int signum)
{
    struct supervisor *sup = h->data;
    const char *name = signum == SIGTERM ? "SIGTERM" : "SIGINT";

    if (++sup->signals == 1) {
        log_info("shutting down", LF_STR("signal", name),
                 LF_INT("drain_timeout_ms", sup->cfg->drain_timeout_ms));
        notify_send("STOPPING=1\nSTATUS=draining");
        stop_workers(sup, WORKER_CMD_DRAIN);
    } else {
        log_info("second signal: closing every session now", LF_STR("signal", name));
        stop_workers(sup, WORKER_CMD_STOP);
    }
}


static void raise_fd_limit(void)
{
    /* Two descriptors per session: take all the hard limit allows. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void close_fds(int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

static void log_listen_error(const char *name, const struct hostport *hp, const char *what)
{
    char addr[ADDR_STR_MAX];
    log_error("cannot listen", LF_STR("route", name),
              LF_STR("address", addr_format_hostport(hp, addr, sizeof(addr))),
              LF_STR("error", what));
}

/* --- listen addresses ------------------------------------------------------ */

/* Listen address i of cfg: routes first, in order, then the admin's. */
static const struct hostport *listen_at(const struct config *cfg, size_t i, int *dual_stack,
                                        char *path, size_t len)
{
    if (i < cfg->n_routes) {
        snprintf(path, len, "routes[%zu].listen", i);
        *dual_stack = cfg->routes[i].dual_stack;
        return &cfg->routes[i].listen;
    }
    snprintf(path, len, "admin.listen");
    *dual_stack = 0;
    return &cfg->admin.listen;
}

static const char *overlap_why(const struct sockaddr *a, const struct sockaddr *b)
{
    if (addr_equal(a, b))
        return "the same address";
    if (a->sa_family == b->sa_family)
        return "a wildcard address holds its port on every address of its family";
    return "a dual_stack \"[::]\" listener holds its port on IPv4 addresses too";
}

int supervisor_check_listen(const struct config *cfg, struct sockaddr_storage *addrs,
                            struct sockaddr_storage *admin, struct config_errors *errs)
{
    size_t n = cfg->n_routes + (cfg->admin.enabled ? 1 : 0);
    struct sockaddr_storage all[n + 1];
    unsigned char ok[n + 1];
    size_t before = errs->n;
    char path[48], other[48], text[ADDR_STR_MAX], other_text[ADDR_STR_MAX];
    int dual, other_dual;

    for (size_t i = 0; i < n; i++) {
        const struct hostport *hp = listen_at(cfg, i, &dual, path, sizeof(path));
        const char *why = NULL;
        ok[i] = 0;
        addr_format_hostport(hp, text, sizeof(text));
        if (hp->numeric) {
            all[i] = hp->sa;
        } else if (net_resolve_listen(hp->host, hp->port, &all[i], &why) < 0) {
            config_errors_add(errs, "%s: cannot resolve \"%s\": %s", path, hp->host, why);
            continue;
        }
        if (addr_is_v4_mapped((const struct sockaddr *)&all[i])) {
            /* An IPv6 socket takes it only without IPV6_V6ONLY. */
            config_errors_add(errs, "%s: \"%s\" is an IPv4-mapped address; listen on the IPv4 "
                              "address itself", path, text);
            continue;
        }
        ok[i] = 1;
        for (size_t j = 0; j < i; j++) {
            const struct hostport *o = listen_at(cfg, j, &other_dual, other, sizeof(other));
            if (!ok[j] || !addr_listen_overlap((const struct sockaddr *)&all[i], dual,
                                               (const struct sockaddr *)&all[j], other_dual))
                continue;
            config_errors_add(errs, "%s: \"%s\" overlaps %s \"%s\" (%s)", path, text, other,
                              addr_format_hostport(o, other_text, sizeof(other_text)),
                              overlap_why((const struct sockaddr *)&all[i],
                                          (const struct sockaddr *)&all[j]));
            break;
        }
    }
    if (errs->n > before)
        return -EINVAL;
    for (size_t r = 0; r < cfg->n_routes; r++)
        addrs[r] = all[r];
    if (cfg->admin.enabled && admin != NULL)
        *admin = all[cfg->n_routes];
    return 0;
}

/* The lines --check prints, as the daemon logs them. */
static void log_invalid(const char *path, const struct config_errors *errs)
{
    for (size_t i = 0; i < errs->n; i++)
        log_error("invalid config", LF_STR("file", path), LF_STR("error", errs->msgs[i]));
}

/* Checks that nobody holds a listen address, binding it exactly as the
 * listener will be bound. Returns an exit code. */
static int probe_listen(const char *name, const struct hostport *hp,
                        const struct sockaddr_storage *sa, int dual_stack)
{
    int rc = net_probe_bind((const struct sockaddr *)sa, dual_stack);
    if (rc < 0) {
        log_listen_error(name, hp, strerror(-rc));
        return EXIT_RUNTIME;
    }
    return EXIT_CLEAN;
}

static void log_listening(const char *name, const struct sockaddr_storage *sa)
{
    char addr[ADDR_STR_MAX];
    log_info("listening", LF_STR("route", name),
             LF_STR("address", addr_format((const struct sockaddr *)sa, addr, sizeof(addr))));
}

/* The route of `old` (the running config, on a reload) listening on sa, or -1. */
static long bound_by(const struct sockaddr_storage *sa, const struct config *old,
                     const struct sockaddr_storage *old_addrs)
{
    for (size_t i = 0; old != NULL && i < old->n_routes; i++)
        if (addr_equal((const struct sockaddr *)sa, (const struct sockaddr *)&old_addrs[i]))
            return (long)i;
    return -1;
}

/* Binds every route's address (resolved in addrs) once per worker: fds[w *
 * n_routes + r] is worker w's socket for route r. An address the running
 * config `old` listens on already keeps its sockets: its fds stay -1.
 * Returns an exit code; the caller closes the fds. */
static int open_route_sockets(const struct config *cfg, size_t n_workers, const struct config *old,
                              const struct sockaddr_storage *old_addrs,
                              const struct sockaddr_storage *addrs, int *fds)
{
    for (size_t r = 0; r < cfg->n_routes; r++) {
        const struct route_config *route = &cfg->routes[r];
        const struct sockaddr_storage *sa = &addrs[r];
        long kept = bound_by(sa, old, old_addrs);
        if (kept >= 0) {
            if (old->routes[kept].dual_stack != route->dual_stack) {
                char key[48];
                snprintf(key, sizeof(key), "routes[%zu].dual_stack", r);
                log_warn("config change needs a restart: keeping the running value",
                         LF_STR("key", key));
            }
            continue;
        }
        int code = probe_listen(route->name, &route->listen, sa, route->dual_stack);
        if (code != EXIT_CLEAN)
            return code;
        for (size_t w = 0; w < n_workers; w++) {
            int fd = net_listen_socket((const struct sockaddr *)sa, route->dual_stack,
                                       LISTEN_BACKLOG);
            if (fd < 0) {
                log_listen_error(route->name, &route->listen, strerror(-fd));
                return EXIT_RUNTIME;
            }
            fds[w * cfg->n_routes + r] = fd;
        }
        log_listening(route->name, sa);
    }
    return EXIT_CLEAN;
}

/* The admin endpoint's socket at sa, or -1 when the config has none. */
static int open_admin_socket(const struct config *cfg, const struct sockaddr_storage *sa, int *fd)
{
    *fd = -1;
    if (!cfg->admin.enabled)
        return EXIT_CLEAN;
    int code = probe_listen("admin", &cfg->admin.listen, sa, 0);
    if (code != EXIT_CLEAN)
        return code;
    *fd = net_listen_socket((const struct sockaddr *)sa, 0, ADMIN_BACKLOG);
    if (*fd < 0) {
        log_listen_error("admin", &cfg->admin.listen, strerror(-*fd));
        return EXIT_RUNTIME;
    }
    char addr[ADDR_STR_MAX];
    log_info("admin listening",
             LF_STR("address", addr_format((const struct sockaddr *)sa, addr, sizeof(addr))));
    return EXIT_CLEAN;
}

/* Drops to the configured user and group once every socket is bound, so a
 * legacy port below 1024 needs root only for bind(). Returns an exit code. */
static int drop_privileges(const struct config *cfg)
{
    if (cfg->user[0] == '\0' && cfg->group[0] == '\0')
        return EXIT_CLEAN;
    gid_t gid = getgid();
    struct passwd *pw = NULL;
    errno = 0;
    if (cfg->user[0] != '\0') {
        pw = getpwnam(cfg->user);
        if (pw == NULL) {
            log_error("cannot drop privileges", LF_STR("user", cfg->user),
                      LF_STR("error", errno ? strerror(errno) : "no such user"));
            return EXIT_RUNTIME;
        }
        gid = pw->pw_gid;
    }
    if (cfg->group[0] != '\0') {
        struct group *gr = getgrnam(cfg->group);
        if (gr == NULL) {
            log_error("cannot drop privileges", LF_STR("group", cfg->group),
                      LF_STR("error", errno ? strerror(errno) : "no such group"));
            return EXIT_RUNTIME;
        }
        gid = gr->gr_gid;
    }
    /* Supplementary groups first (needs root), then the group, then the user. */
    int rc = 0;
    if (pw != NULL && getuid() == 0)
        rc = initgroups(pw->pw_name, gid);
    else if (getuid() == 0)
        rc = setgroups(1, &gid);
    if (rc < 0 || setgid(gid) < 0) {
        log_error("cannot drop privileges", LF_INT("gid", gid), LF_STR("error", strerror(errno)));
        return EXIT_RUNTIME;
    }
    if (pw != NULL && setuid(pw->pw_uid) < 0) {
        log_error("cannot drop privileges", LF_STR("user", cfg->user),
                  LF_STR("error", strerror(errno)));
        return EXIT_RUNTIME;
    }
    log_info("dropped privileges", LF_INT("uid", getuid()), LF_INT("gid", getgid()));
    return EXIT_CLEAN;
}

/* --- reload ------------------------------------------------------------------ */

/* A key that only a restart changes (the worker threads, the privileges
 * already dropped, the admin socket): the running value stays. */
static void warn_restart_only_cb(const char *path, void *arg)
{
    (void)arg;
    log_warn("config change needs a restart: keeping the running value", LF_STR("key", path));
}

static void reload_finished(struct supervisor *sup, int ok)
{
    if (ok)
        sup->ps.reloads_ok++;
    else
        sup->ps.reloads_failed++;
    if (sup->phase != SUP_STOPPING)
        notify_send(ok ? "READY=1\nSTATUS=ready" : "READY=1\nSTATUS=ready (reload failed)");
    if (sup->reload_again && sup->phase == SUP_RUNNING)
        reload_start(sup);
}

static void reload_failed(struct supervisor *sup)
{
    log_error("reload failed: keeping the running config",
              LF_STR("config", sup->opts->config_path), LF_STR("hash", sup->ps.config_hash));
    reload_finished(sup, 0);
}

/* Reads the config file again and hands it to every worker. Sessions keep
 * the config they started with; new connections get the new one. The
 * workers answer through the gather: reload_done(). */
static void reload_start(struct supervisor *sup)
{
    const char *path = sup->opts->config_path;
    char monotonic[64];
    snprintf(monotonic, sizeof(monotonic), "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=%" PRIu64,
             notify_monotonic_usec());
    notify_send(monotonic);
    sup->reload_again = 0;
    log_info("reloading", LF_STR("config", path));

    /* Exactly the checks of --check and of a start: the file, then its
     * listen addresses. */
    struct config *cfg = NULL;
    struct config_errors errs = { 0 };
    int rc = config_load(path, &cfg, &errs);
    struct sockaddr_storage *addrs = rc == 0 ? calloc(cfg->n_routes, sizeof(*addrs)) : NULL;
    if (rc == 0 && addrs == NULL)
        rc = -ENOMEM;
    if (rc == 0)
        rc = supervisor_check_listen(cfg, addrs, NULL, &errs);
    log_invalid(path, &errs);
    config_errors_free(&errs);
    if (rc < 0) {
        free(addrs);
        config_free(cfg);
        reload_failed(sup);
        return;
    }

    size_t n_fds = sup->n_workers * cfg->n_routes;
    int *fds = malloc(n_fds * sizeof(*fds));
    struct gather *g = gather_new(sup, WORKER_MSG_RELOAD, sup);
    int code = EXIT_RUNTIME;
    if (fds != NULL && g != NULL) {
        for (size_t i = 0; i < n_fds; i++)
            fds[i] = -1;
        code = open_route_sockets(cfg, sup->n_workers, sup->cfg, sup->addrs, addrs, fds);
    } else {
        log_error("out of memory");
    }
    if (code != EXIT_CLEAN) {
        if (fds != NULL)
            close_fds(fds, n_fds);
        free(fds);
        free(addrs);
        if (g != NULL)
            free(g->parts);
        free(g);
        config_free(cfg);
        reload_failed(sup);
        return;
    }
    /* New listening sockets stay open: sessions get that many fewer. */
    int64_t opened = 0;
    for (size_t i = 0; i < n_fds; i++)
        opened += fds[i] >= 0;
    budget_adjust_fds(&sup->budget, opened);
    config_restart_changes(sup->cfg, cfg, warn_restart_only_cb, NULL);
    for (size_t i = 0; i < cfg->notes.n; i++)
        log_warn("config note", LF_STR("note", cfg->notes.msgs[i]));
    if (!sup->opts->log_level_fixed)
        log_set_level(cfg->log_level);
    if (!sup->opts->log_format_fixed)
        log_set_format(cfg->log_format);

    g->cfg = cfg; /* the supervisor's reference, until reload_done() */
    g->addrs = addrs;
    g->fds = fds;
    sup->reloading = 1;
    gather_post(sup, g);
}

/* Every worker serves the new config (a draining one ignored it). */
static void reload_done(struct supervisor *sup, struct gather *g)
{
    struct config *cfg = g->cfg, *prev = sup->cfg;
    /* Sockets no worker adopted: a worker had ended or was draining. */
    close_fds(g->fds, sup->n_workers * cfg->n_routes);
    free(g->fds);
    for (size_t r = 0; r < prev->n_routes; r++)
        if (bound_by(&sup->addrs[r], cfg, g->addrs) < 0) {
            /* Each worker closes its socket for it. */
            budget_adjust_fds(&sup->budget, -(int64_t)sup->n_workers);
            char addr[ADDR_STR_MAX];
            log_info("stopped listening", LF_STR("route", prev->routes[r].name),
                     LF_STR("address", addr_format((const struct sockaddr *)&sup->addrs[r], addr,
                                                   sizeof(addr))));
        }
    free(sup->addrs);
    sup->addrs = (struct sockaddr_storage *)g->addrs;
    sup->cfg = cfg;
    config_free(prev);
    budget_set_buf_max(&sup->budget, cfg->buffer_total_bytes);
    memcpy(sup->ps.config_hash, cfg->hash, sizeof(sup->ps.config_hash));
    sup->reloading = 0;
    if (g->found)
        log_error("reloaded with errors: a worker could not serve every route",
                  LF_STR("hash", cfg->hash));
    else
        log_info("reloaded", LF_INT("routes", cfg->n_routes), LF_STR("hash", cfg->hash));
    reload_finished(sup, !g->found);
}

static void sighup_cb(uv_signal_t *h, int signum)
{
    struct supervisor *sup = h->data;
    if (sup->phase == SUP_STOPPING) {
        log_info("SIGHUP ignored: shutting down");
    } else if (sup->phase == SUP_STARTING || sup->reloading) {
        sup->reload_again = 1; /* once the workers run, or this reload is done */
    } else {
        reload_start(sup);
    }
}

/* --- start-up -------------------------------------------------------------- */

/* What the rest of the process may hold at once besides the sessions'
 * descriptors, beyond what is open when the workers start: a reload's
 * config file, probe and new listening sockets, systemd's notify socket. */
#define FD_MARGIN 16

/* Sessions may use the descriptor limit less what everything else needs:
 * what is open now (listening sockets, loops, the admin socket), the admin
 * endpoint's connections and the resolver's lookups. Those stay free
 * whatever clients do, so /healthz answers and host names resolve at the
 * limit. Returns 0, or -1 when no session would fit. */
static int plan_descriptors(struct supervisor *sup)
{
    int64_t limit = budget_fd_limit();
    int64_t open_now = budget_fds_open();
    if (open_now < 0) /* no /proc: a generous guess */
        open_now = 64 + (int64_t)(sup->n_workers * (sup->cfg->n_routes + 4));
    int64_t admin = sup->admin != NULL ? ADMIN_MAX_CONNS + 1 : 0;
    int64_t reserved = open_now + admin + budget_resolver_fds() + FD_MARGIN;
    int64_t for_sessions = limit < 0 ? 0 : limit - reserved;
    if (for_sessions < BUDGET_FDS_PER_SESSION) {
        log_error("descriptor limit too low", LF_INT("limit", limit),
                  LF_INT("needed", reserved + BUDGET_FDS_PER_SESSION));
        return -1;
    }
    budget_init(&sup->budget, for_sessions, sup->cfg->buffer_total_bytes);
    log_info("descriptor budget", LF_INT("limit", limit), LF_INT("reserved", reserved),
             LF_INT("sessions", for_sessions / BUDGET_FDS_PER_SESSION));
    return 0;
}

/* Prepares every worker on its sockets, sizes the descriptor budget from
 * what is then open, and starts them. On a failure the rest of the fds are
 * closed and the exit code says so. */
static void start_workers(struct supervisor *sup, int *fds)
{
    const struct config *cfg = sup->cfg;
    sup->shared = (struct worker_shared){
        .peers = sup->workers, .n_peers = sup->n_workers, .registry = &sup->registry,
        .limits = &sup->limits, .budget = &sup->budget, .notify = &sup->notify,
    };
    size_t n_init = 0;
    for (size_t i = 0; i < sup->n_workers; i++, n_init++) {
        /* worker_new() owns worker i's fds from the call on, even on failure. */
        int rc = worker_new(&sup->workers[i], (int)i, sup->cfg, sup->addrs,
                            &fds[i * cfg->n_routes], &sup->shared);
        if (rc < 0) {
            log_error("cannot start worker", LF_INT("worker", i), LF_STR("error", uv_strerror(rc)));
            close_fds(&fds[(i + 1) * cfg->n_routes], (sup->n_workers - i - 1) * cfg->n_routes);
            sup->exit_code = EXIT_RUNTIME;
            break;
        }
    }
    if (sup->exit_code == EXIT_CLEAN && plan_descriptors(sup) < 0)
        sup->exit_code = EXIT_RUNTIME;

    sigset_t set, old_mask;
    handled_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, &old_mask); /* inherited by the workers */
    for (size_t i = 0; i < n_init; i++) {
        struct worker *w = sup->workers[i];
        int rc = sup->exit_code == EXIT_CLEAN ? worker_start(w) : UV_ECANCELED;
        if (rc < 0) {
            if (rc != UV_ECANCELED)
                log_error("cannot start worker", LF_INT("worker", i),
                          LF_STR("error", uv_strerror(rc)));
            worker_destroy(w);
            sup->exit_code = EXIT_RUNTIME;
            continue;
        }
        sup->n_started++;
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
}

static void init_loop(struct supervisor *sup)
{
    uv_loop_init(&sup->loop);
    uv_async_init(&sup->loop, &sup->notify, notify_cb);
    sup->notify.data = sup;
    uv_signal_init(&sup->loop, &sup->sigterm);
    uv_signal_init(&sup->loop, &sup->sigint);
    uv_signal_init(&sup->loop, &sup->sighup);
    sup->sigterm.data = sup->sigint.data = sup->sighup.data = sup;
    uv_signal_start(&sup->sigterm, signal_cb, SIGTERM);
    uv_signal_start(&sup->sigint, signal_cb, SIGINT);
    uv_signal_start(&sup->sighup, sighup_cb, SIGHUP);
    uv_timer_init(&sup->loop, &sup->watchdog);
    sup->watchdog.data = sup;
    uv_timer_start(&sup->watchdog, watchdog_cb, WATCHDOG_MS, WATCHDOG_MS);
    uv_timer_init(&sup->loop, &sup->sd_watchdog);
    sup->sd_watchdog.data = sup;
    uint64_t usec = notify_watchdog_usec();
    if (usec > 0) {
        uint64_t every_ms = usec / 2000 > 0 ? usec / 2000 : 1; /* twice per period */
        uv_timer_start(&sup->sd_watchdog, sd_watchdog_cb, every_ms, every_ms);
    }
}

static int start_admin(struct supervisor *sup)
{
    static const struct admin_backend backend = {
        .healthy = backend_healthy,
        .ready = backend_ready,
        .metrics = backend_metrics,
        .sessions = backend_sessions,
        .close_session = backend_close_session,
    };
    if (sup->admin_fd < 0)
        return 0;
    struct admin_backend b = backend;
    b.ctx = sup;
    int rc = admin_start(&sup->admin, &sup->loop, sup->admin_fd, &b);
    sup->admin_fd = -1; /* adopted, or closed */
    if (rc < 0)
        log_error("cannot start the admin endpoint", LF_STR("error", uv_strerror(rc)));
    return rc;
}

int supervisor_run(struct config *cfg, const struct supervisor_options *opts)
{
    struct supervisor sup = { .cfg = config_ref(cfg), .opts = opts, .phase = SUP_STARTING,
                              .exit_code = EXIT_CLEAN, .admin_fd = -1 };
    sup.n_workers = cfg->workers != 0 ? cfg->workers : uv_available_parallelism();
    sup.ps.start_time = (double)time(NULL);
    memcpy(sup.ps.config_hash, cfg->hash, sizeof(sup.ps.config_hash));

    /* A peer that vanishes mid-write must be an error return, not a signal. */
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();

    size_t n_fds = sup.n_workers * cfg->n_routes;
    int *fds = malloc(n_fds * sizeof(*fds));
    sup.workers = calloc(sup.n_workers, sizeof(*sup.workers));
    sup.stalled = calloc(sup.n_workers, 1);
    sup.addrs = calloc(cfg->n_routes, sizeof(*sup.addrs));
    int code = EXIT_RUNTIME;
    if (fds == NULL || sup.workers == NULL || sup.stalled == NULL || sup.addrs == NULL ||
        registry_init(&sup.registry) < 0) {
        log_error("out of memory");
        goto out;
    }
    if (limits_init(&sup.limits) < 0) {
        log_error("out of memory");
        registry_destroy(&sup.registry);
        goto out;
    }
    for (size_t i = 0; i < n_fds; i++)
        fds[i] = -1;
    struct sockaddr_storage admin_sa;
    struct config_errors errs = { 0 };
    if (supervisor_check_listen(cfg, sup.addrs, &admin_sa, &errs) < 0) {
        log_invalid(opts->config_path, &errs);
        code = EXIT_USAGE;
    } else {
        code = open_route_sockets(cfg, sup.n_workers, NULL, NULL, sup.addrs, fds);
    }
    config_errors_free(&errs);
    if (code == EXIT_CLEAN)
        code = open_admin_socket(cfg, &admin_sa, &sup.admin_fd);
    if (code == EXIT_CLEAN)
        code = drop_privileges(cfg);
    if (code != EXIT_CLEAN) {
        close_fds(fds, n_fds);
        if (sup.admin_fd >= 0)
            close(sup.admin_fd);
        registry_destroy(&sup.registry);
        limits_destroy(&sup.limits);
        goto out;
    }

    init_loop(&sup);
    if (start_admin(&sup) < 0) {
        close_fds(fds, n_fds);
        sup.exit_code = EXIT_RUNTIME;
    } else {
        start_workers(&sup, fds);
    }
    if (sup.exit_code != EXIT_CLEAN) {
        if (sup.n_started == 0)
            close_own_handles(&sup);
        else
            stop_workers(&sup, WORKER_CMD_STOP);
    }

    uv_run(&sup.loop, UV_RUN_DEFAULT);
    for (size_t i = 0; i < sup.n_started; i++)
        worker_join(sup.workers[i]);
    uv_loop_close(&sup.loop);
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    registry_destroy(&sup.registry);
    limits_destroy(&sup.limits);
    code = sup.exit_code;
    if (code == EXIT_CLEAN)
        log_info("stopped");
out:
    free(fds);
    free(sup.workers);
    free(sup.stalled);
    free(sup.addrs);
    config_free(sup.cfg);
    return code;
}
