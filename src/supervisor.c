/* The main thread: listeners, worker lifecycle, signals. */
#include "lifeline/supervisor.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include "lifeline/log.h"
#include "lifeline/net.h"
#include "lifeline/worker.h"

#define LISTEN_BACKLOG 4096

enum sup_phase {
    SUP_STARTING,   /* waiting for every worker to run */
    SUP_RUNNING,    /* ready logged */
    SUP_STOPPING,   /* drain or stop sent; waiting for workers to exit */
};

struct supervisor {
    const struct config *cfg;
    uv_loop_t loop;
    uv_signal_t sigterm, sigint, sighup;
    uv_async_t notify;            /* workers report phase changes here */
    struct worker *workers;
    size_t n_workers;
    struct registry registry;     /* client identities, shared by the workers */
    size_t n_started;             /* workers whose thread was created */
    enum sup_phase phase;
    int signals;                  /* shutdown signals received */
    int exit_code;
};

static void stop_workers(struct supervisor *sup, enum worker_command cmd)
{
    sup->phase = SUP_STOPPING;
    for (size_t i = 0; i < sup->n_started; i++)
        worker_send(&sup->workers[i], cmd);
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
}

static void notify_cb(uv_async_t *a)
{
    struct supervisor *sup = a->data;
    size_t running = 0, done = 0;

    for (size_t i = 0; i < sup->n_started; i++) {
        struct worker *w = &sup->workers[i];
        int phase = atomic_load(&w->phase);
        if (phase == WORKER_PHASE_RUNNING) {
            running++;
        } else if (phase == WORKER_PHASE_FAILED) {
            done++;
            if (sup->exit_code == EXIT_CLEAN) {
                log_error("worker could not start", LF_INT("worker", w->id),
                          LF_STR("error", uv_strerror(w->start_error)));
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
        stop_workers(sup, WORKER_CMD_DRAIN);
    } else {
        log_info("second signal: closing every session now", LF_STR("signal", name));
        stop_workers(sup, WORKER_CMD_STOP);
    }
}

static void sighup_cb(uv_signal_t *h, int signum)
{
    log_warn("SIGHUP ignored: live reload is not available in this version");
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

static void log_listen_error(const struct route_config *r, const char *what)
{
    char addr[ADDR_STR_MAX];
    log_error("cannot listen", LF_STR("route", r->name),
              LF_STR("address", addr_format_hostport(&r->listen, addr, sizeof(addr))),
              LF_STR("error", what));
}

/* Resolves and binds every route's address, once per worker. On success
 * fds[w * n_routes + r] holds worker w's socket for route r. */
static int open_listen_sockets(const struct config *cfg, size_t n_workers, int *fds)
{
    size_t n = n_workers * cfg->n_routes;
    for (size_t i = 0; i < n; i++)
        fds[i] = -1;

    for (size_t r = 0; r < cfg->n_routes; r++) {
        const struct route_config *route = &cfg->routes[r];
        struct sockaddr_storage sa;
        const char *why = NULL;

        if (route->listen.numeric) {
            sa = route->listen.sa;
        } else if (net_resolve_listen(route->listen.host, route->listen.port, &sa, &why) < 0) {
            log_listen_error(route, why);
            close_fds(fds, n);
            return EXIT_USAGE;
        }
        int rc = net_probe_bind((struct sockaddr *)&sa);
        for (size_t w = 0; rc == 0 && w < n_workers; w++) {
            int fd = net_listen_socket((struct sockaddr *)&sa, LISTEN_BACKLOG);
            if (fd < 0)
                rc = fd;
            else
                fds[w * cfg->n_routes + r] = fd;
        }
        if (rc < 0) {
            log_listen_error(route, strerror(-rc));
            close_fds(fds, n);
            return EXIT_RUNTIME;
        }
        char addr[ADDR_STR_MAX];
        log_info("listening", LF_STR("route", route->name),
                 LF_STR("address", addr_format((struct sockaddr *)&sa, addr, sizeof(addr))));
    }
    return EXIT_CLEAN;
}

int supervisor_run(const struct config *cfg)
{
    struct supervisor sup = { .cfg = cfg, .phase = SUP_STARTING, .exit_code = EXIT_CLEAN };
    sup.n_workers = cfg->workers != 0 ? cfg->workers : uv_available_parallelism();

    /* A peer that vanishes mid-write must be an error return, not a signal. */
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();

    int *fds = calloc(sup.n_workers * cfg->n_routes, sizeof(*fds));
    sup.workers = calloc(sup.n_workers, sizeof(*sup.workers));
    if (fds == NULL || sup.workers == NULL) {
        log_error("out of memory");
        free(fds);
        free(sup.workers);
        return EXIT_RUNTIME;
    }
    int code = open_listen_sockets(cfg, sup.n_workers, fds);
    if (code != EXIT_CLEAN) {
        free(fds);
        free(sup.workers);
        return code;
    }

    if (registry_init(&sup.registry) < 0) {
        log_error("out of memory");
        close_fds(fds, sup.n_workers * cfg->n_routes);
        free(fds);
        free(sup.workers);
        return EXIT_RUNTIME;
    }
    uv_loop_init(&sup.loop);
    uv_async_init(&sup.loop, &sup.notify, notify_cb);
    sup.notify.data = &sup;
    uv_signal_init(&sup.loop, &sup.sigterm);
    uv_signal_init(&sup.loop, &sup.sigint);
    uv_signal_init(&sup.loop, &sup.sighup);
    sup.sigterm.data = sup.sigint.data = sup.sighup.data = &sup;
    uv_signal_start(&sup.sigterm, signal_cb, SIGTERM);
    uv_signal_start(&sup.sigint, signal_cb, SIGINT);
    uv_signal_start(&sup.sighup, sighup_cb, SIGHUP);

    sigset_t set, old_mask;
    handled_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, &old_mask); /* inherited by the workers */
    for (size_t i = 0; i < sup.n_workers; i++) {
        struct worker *w = &sup.workers[i];
        size_t first_unowned = i; /* workers from here on do not own their fds */
        int rc = worker_init(w, (int)i, cfg, &fds[i * cfg->n_routes], &sup.notify, sup.workers,
                             sup.n_workers, &sup.registry);
        if (rc == 0) {
            first_unowned = i + 1;
            rc = worker_start(w);
            if (rc < 0)
                worker_destroy(w);
        }
        if (rc < 0) {
            log_error("cannot start worker", LF_INT("worker", i), LF_STR("error", uv_strerror(rc)));
            close_fds(&fds[first_unowned * cfg->n_routes],
                      (sup.n_workers - first_unowned) * cfg->n_routes);
            sup.exit_code = EXIT_RUNTIME;
            break;
        }
        sup.n_started++;
    }
    free(fds);
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    if (sup.exit_code != EXIT_CLEAN) {
        if (sup.n_started == 0)
            close_own_handles(&sup);
        else
            stop_workers(&sup, WORKER_CMD_STOP);
    }

    uv_run(&sup.loop, UV_RUN_DEFAULT);
    for (size_t i = 0; i < sup.n_started; i++)
        worker_join(&sup.workers[i]);
    uv_loop_close(&sup.loop);
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    registry_destroy(&sup.registry);
    free(sup.workers);
    if (sup.exit_code == EXIT_CLEAN)
        log_info("stopped");
    return sup.exit_code;
}
