/* The main thread: start-up, the workers' lifecycle, signals, the watchdog. */
#include "lifeline/supervisor.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "lifeline/admin.h"
#include "lifeline/admin_backend.h"
#include "lifeline/budget.h"
#include "lifeline/listen.h"
#include "lifeline/log.h"
#include "lifeline/metrics.h"
#include "lifeline/notify.h"
#include "lifeline/privileges.h"
#include "lifeline/reload.h"
#include "lifeline/worker.h"

/* How often the watchdog looks for stuck worker loops (WORKER_STALL_MS). */
#define WATCHDOG_MS 500

enum sup_phase {
    SUP_STARTING, /* waiting for every worker to run */
    SUP_RUNNING,  /* ready logged */
    SUP_STOPPING, /* drain or stop sent; waiting for workers to exit */
};

struct supervisor {
    struct reload rl; /* the running config (rl.cfg, rl.addrs) and its reloads */
    const struct supervisor_options *opts;
    int reload_again; /* a SIGHUP came during a reload, or before ready */
    uv_loop_t loop;
    uv_signal_t sigterm, sigint, sighup, sigusr1, sigusr2;
    uv_async_t notify;           /* workers report phase changes here */
    struct worker_set workers;   /* by number; n_started of them running */
    struct worker_shared shared; /* what every worker is lent */
    struct registry *registry;   /* client identities, shared by the workers */
    struct limits limits;        /* open sessions per route and address */
    struct budget budget;        /* descriptors and buffer memory, shared by the workers */
    enum sup_phase phase;
    int signals; /* shutdown signals received */
    int exit_code;
    struct admin *admin;            /* NULL when the config has no admin object */
    struct admin_state admin_state; /* what the admin endpoint answers from */
    int admin_fd;                   /* bound before the workers start */
    uv_timer_t watchdog;            /* looks for stuck worker loops */
    uv_timer_t sd_watchdog;         /* WATCHDOG=1 to systemd while healthy */
    unsigned char *stalled;         /* per worker: stuck, and logged as such */
    struct process_stats ps;
};

static void stop_workers(struct supervisor *sup, enum worker_command cmd)
{
    sup->phase = SUP_STOPPING;
    sup->admin_state.ready = 0;
    for (size_t i = 0; i < sup->workers.n_started; i++)
        worker_send(sup->workers.w[i], cmd);
}

/* The signals the supervisor handles; workers (and the threads they start)
 * block them, so that only the supervisor's thread ever receives them. */
static void handled_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGUSR1);
    sigaddset(set, SIGUSR2);
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
    uv_close((uv_handle_t *)&sup->sigusr1, NULL);
    uv_close((uv_handle_t *)&sup->sigusr2, NULL);
    uv_close((uv_handle_t *)&sup->notify, NULL);
    uv_close((uv_handle_t *)&sup->watchdog, NULL);
    uv_close((uv_handle_t *)&sup->sd_watchdog, NULL);
    admin_stop(sup->admin);
    sup->admin = NULL;
}

/* --- watchdog ------------------------------------------------------------- */

static void watchdog_cb(uv_timer_t *t)
{
    struct supervisor *sup = t->data;
    for (size_t i = 0; i < sup->workers.n_started; i++) {
        struct worker *w = sup->workers.w[i];
        int stuck = worker_stuck(w);
        if (stuck && !sup->stalled[i])
            log_error("worker loop not responding", LF_INT("worker", i),
                      LF_INT("stalled_ms", worker_stalled_ms(w)));
        else if (!stuck && sup->stalled[i])
            log_info("worker loop responding again", LF_INT("worker", i));
        sup->stalled[i] = (unsigned char)stuck;
    }
}

/* systemd's watchdog hears from us only while every worker loop turns. */
static void sd_watchdog_cb(uv_timer_t *t)
{
    struct supervisor *sup = t->data;
    if (admin_state_healthy(&sup->admin_state))
        notify_send("WATCHDOG=1");
}

/* --- reload -------------------------------------------------------------- */

static void reload_finished_cb(struct reload *rl, int ok)
{
    struct supervisor *sup = rl->owner;
    if (sup->phase != SUP_STOPPING)
        notify_send(ok ? "READY=1\nSTATUS=ready" : "READY=1\nSTATUS=ready (reload failed)");
    if (sup->reload_again && sup->phase == SUP_RUNNING) {
        sup->reload_again = 0;
        reload_start(rl);
    }
}

static void sighup_cb(uv_signal_t *h, int signum)
{
    struct supervisor *sup = h->data;
    (void)signum;
    if (sup->phase == SUP_STOPPING) {
        log_info("SIGHUP ignored: shutting down");
    } else if (sup->phase == SUP_STARTING || sup->rl.busy) {
        sup->reload_again = 1; /* once the workers run, or this reload is done */
    } else {
        sup->reload_again = 0;
        reload_start(&sup->rl);
    }
}

/* The default action of SIGUSR1 and SIGUSR2 is to terminate: a stray one
 * (other proxies upgrade on SIGUSR2) would reset every session. Logged and
 * ignored, until SIGUSR2 starts a live upgrade. */
static void sigusr_cb(uv_signal_t *h, int signum)
{
    (void)h;
    if (signum == SIGUSR2)
        log_warn("SIGUSR2 ignored: live upgrade is not available in this version");
    else
        log_warn("SIGUSR1 ignored");
}

static void notify_cb(uv_async_t *a)
{
    struct supervisor *sup = a->data;
    size_t running = 0, done = 0;

    for (size_t i = 0; i < sup->workers.n_started; i++) {
        struct worker *w = sup->workers.w[i];
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
    if (sup->phase == SUP_STARTING && running == sup->workers.n) {
        sup->phase = SUP_RUNNING;
        sup->admin_state.ready = 1;
        log_info("ready", LF_INT("workers", sup->workers.n),
                 LF_INT("routes", sup->rl.cfg->n_routes), LF_INT("pid", getpid()));
        notify_send("READY=1\nSTATUS=ready");
        if (sup->reload_again) {
            sup->reload_again = 0;
            reload_start(&sup->rl);
        }
    }
    if (done == sup->workers.n_started && sup->phase == SUP_STOPPING)
        close_own_handles(sup);
}

static void signal_cb(uv_signal_t *h, int signum)
{
    struct supervisor *sup = h->data;
    const char *name = signum == SIGTERM ? "SIGTERM" : "SIGINT";

    if (++sup->signals == 1) {
        log_info("shutting down", LF_STR("signal", name),
                 LF_INT("drain_timeout_ms", sup->rl.cfg->drain_timeout_ms));
        notify_send("STOPPING=1\nSTATUS=draining");
        stop_workers(sup, WORKER_CMD_DRAIN);
    } else {
        log_info("second signal: closing every session now", LF_STR("signal", name));
        stop_workers(sup, WORKER_CMD_STOP);
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
 * limit. Returns 0, or -EMFILE when no session would fit. */
static int plan_descriptors(struct supervisor *sup)
{
    int64_t limit = budget_fd_limit();
    int64_t open_now = budget_fds_open();
    if (open_now < 0) /* no /proc: a generous guess */
        open_now = 64 + (int64_t)(sup->workers.n * (sup->rl.cfg->n_routes + 4));
    int64_t admin = sup->admin != NULL ? ADMIN_MAX_CONNS + 1 : 0;
    int64_t reserved = open_now + admin + budget_resolver_fds() + FD_MARGIN;
    int64_t for_sessions = limit < 0 ? 0 : limit - reserved;
    if (for_sessions < BUDGET_FDS_PER_SESSION) {
        log_error("descriptor limit too low", LF_INT("limit", limit),
                  LF_INT("needed", reserved + BUDGET_FDS_PER_SESSION));
        return -EMFILE;
    }
    budget_init(&sup->budget, for_sessions, sup->rl.cfg->buffer_total_bytes);
    log_info("descriptor budget", LF_INT("limit", limit), LF_INT("reserved", reserved),
             LF_INT("sessions", for_sessions / BUDGET_FDS_PER_SESSION));
    return 0;
}

/* Prepares every worker on its sockets, sizes the descriptor budget from
 * what is then open, and starts them. On a failure the rest of the fds are
 * closed and the exit code says so. */
static void start_workers(struct supervisor *sup, int *fds)
{
    const struct config *cfg = sup->rl.cfg;
    sup->shared = (struct worker_shared){
        .registry = sup->registry,
        .limits = &sup->limits,
        .budget = &sup->budget,
        .notify = &sup->notify,
    };
    size_t n_init = 0;
    for (size_t i = 0; i < sup->workers.n; i++, n_init++) {
        /* worker_new() owns worker i's fds from the call on, even on failure. */
        int rc = worker_new(&sup->workers.w[i], (int)i, sup->rl.cfg, sup->rl.addrs,
                            &fds[i * cfg->n_routes], &sup->shared);
        if (rc < 0) {
            log_error("cannot start worker", LF_INT("worker", i), LF_STR("error", uv_strerror(rc)));
            listen_close_fds(&fds[(i + 1) * cfg->n_routes],
                             (sup->workers.n - i - 1) * cfg->n_routes);
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
        struct worker *w = sup->workers.w[i];
        int rc = sup->exit_code == EXIT_CLEAN ? worker_start(w) : UV_ECANCELED;
        if (rc < 0) {
            if (rc != UV_ECANCELED)
                log_error("cannot start worker", LF_INT("worker", i),
                          LF_STR("error", uv_strerror(rc)));
            worker_destroy(w);
            sup->workers.w[i] = NULL; /* freed: nothing may post to it */
            sup->exit_code = EXIT_RUNTIME;
            continue;
        }
        sup->workers.n_started++;
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Returns 0, or a negative UV error (logged) after undoing what it made. */
static int init_loop(struct supervisor *sup)
{
    int rc = uv_loop_init(&sup->loop);
    if (rc < 0) {
        log_error("cannot start the event loop", LF_STR("error", uv_strerror(rc)));
        return rc;
    }
    /* Timers cannot fail to initialise (libuv allocates nothing for them). */
    uv_timer_init(&sup->loop, &sup->watchdog);
    uv_timer_init(&sup->loop, &sup->sd_watchdog);
    sup->notify.data = sup->sigterm.data = sup->sigint.data = sup->sighup.data = sup;
    sup->watchdog.data = sup->sd_watchdog.data = sup;
    if ((rc = uv_signal_init(&sup->loop, &sup->sigterm)) < 0 ||
        (rc = uv_signal_init(&sup->loop, &sup->sigint)) < 0 ||
        (rc = uv_signal_init(&sup->loop, &sup->sighup)) < 0 ||
        (rc = uv_signal_init(&sup->loop, &sup->sigusr1)) < 0 ||
        (rc = uv_signal_init(&sup->loop, &sup->sigusr2)) < 0 ||
        (rc = uv_async_init(&sup->loop, &sup->notify, notify_cb)) < 0 ||
        (rc = uv_signal_start(&sup->sigterm, signal_cb, SIGTERM)) < 0 ||
        (rc = uv_signal_start(&sup->sigint, signal_cb, SIGINT)) < 0 ||
        (rc = uv_signal_start(&sup->sighup, sighup_cb, SIGHUP)) < 0 ||
        (rc = uv_signal_start(&sup->sigusr1, sigusr_cb, SIGUSR1)) < 0 ||
        (rc = uv_signal_start(&sup->sigusr2, sigusr_cb, SIGUSR2)) < 0) {
        log_error("cannot start the event loop", LF_STR("error", uv_strerror(rc)));
        uv_walk(&sup->loop, close_walk_cb, NULL);
        uv_run(&sup->loop, UV_RUN_DEFAULT);
        uv_loop_close(&sup->loop);
        return rc;
    }
    uv_timer_start(&sup->watchdog, watchdog_cb, WATCHDOG_MS, WATCHDOG_MS);
    uint64_t usec = notify_watchdog_usec();
    if (usec > 0) {
        uint64_t every_ms = usec / 2000 > 0 ? usec / 2000 : 1; /* twice per period */
        uv_timer_start(&sup->sd_watchdog, sd_watchdog_cb, every_ms, every_ms);
    }
    return 0;
}

static int start_admin(struct supervisor *sup)
{
    if (sup->admin_fd < 0)
        return 0;
    struct admin_backend b = admin_backend_of(&sup->admin_state);
    int rc = admin_start(&sup->admin, &sup->loop, sup->admin_fd, &b);
    sup->admin_fd = -1; /* adopted, or closed */
    if (rc < 0)
        log_error("cannot start the admin endpoint", LF_STR("error", uv_strerror(rc)));
    else
        sup->ps.admin = admin_get_stats(sup->admin);
    return rc;
}

/* Everything before the loop runs: every address checked and bound, the
 * admin socket, then the privilege drop. Returns an exit code. */
static int bind_all(struct supervisor *sup, int *fds, size_t n_fds)
{
    const struct config *cfg = sup->rl.cfg;
    struct sockaddr_storage admin_sa;
    struct config_errors errs = { 0 };
    int rc = listen_check(cfg, sup->rl.addrs, &admin_sa, &errs);
    config_errors_log(sup->opts->config_path, &errs);
    config_errors_free(&errs);
    if (rc < 0)
        return EXIT_USAGE;
    if (privileges_check(cfg) < 0)
        return EXIT_RUNTIME;
    for (size_t i = 0; i < n_fds; i++)
        fds[i] = -1;
    if ((rc = listen_open_routes(cfg, sup->workers.n, NULL, NULL, sup->rl.addrs, fds)) < 0 ||
        (rc = listen_open_admin(cfg, &admin_sa, &sup->admin_fd)) < 0 ||
        (rc = privileges_drop(cfg)) < 0) {
        listen_close_fds(fds, n_fds);
        if (sup->admin_fd >= 0)
            close(sup->admin_fd);
        sup->admin_fd = -1;
        return EXIT_RUNTIME;
    }
    return EXIT_CLEAN;
}

int supervisor_run(struct config *cfg, const struct supervisor_options *opts)
{
    struct supervisor sup = {
        .opts = opts, .phase = SUP_STARTING, .exit_code = EXIT_CLEAN, .admin_fd = -1
    };
    sup.workers.n = cfg->workers != 0 ? cfg->workers : uv_available_parallelism();
    sup.ps.start_time = (double)time(NULL);
    sup.ps.budget = &sup.budget;
    memcpy(sup.ps.config_hash, cfg->hash, sizeof(sup.ps.config_hash));
    /* Read by the systemd watchdog too, with or without an admin endpoint. */
    sup.admin_state = (struct admin_state){
        .loop = &sup.loop,
        .workers = &sup.workers,
        .ps = &sup.ps,
    };
    sup.rl = (struct reload){
        .loop = &sup.loop,
        .opts = opts,
        .workers = &sup.workers,
        .budget = &sup.budget,
        .ps = &sup.ps,
        .finished = reload_finished_cb,
        .owner = &sup,
        .cfg = config_ref(cfg),
    };

    /* A peer that vanishes mid-write must be an error return, not a signal;
     * SIGUSR1/2 are ignored until the loop handles them (sigusr_cb). */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    budget_raise_fd_limit();

    size_t n_fds = sup.workers.n * cfg->n_routes;
    int *fds = malloc(n_fds * sizeof(*fds));
    sup.workers.w = calloc(sup.workers.n, sizeof(*sup.workers.w));
    sup.stalled = calloc(sup.workers.n, 1);
    sup.rl.addrs = calloc(cfg->n_routes, sizeof(*sup.rl.addrs));
    int code = EXIT_RUNTIME;
    int have_registry = 0, have_limits = 0;
    if (fds == NULL || sup.workers.w == NULL || sup.stalled == NULL || sup.rl.addrs == NULL ||
        !(have_registry = registry_local_new(&sup.registry, worker_deliver, &sup.workers) == 0) ||
        !(have_limits = limits_init(&sup.limits) == 0)) {
        log_error("out of memory");
        goto out;
    }
    code = bind_all(&sup, fds, n_fds);
    if (code != EXIT_CLEAN)
        goto out;

    if (init_loop(&sup) < 0) {
        listen_close_fds(fds, n_fds);
        if (sup.admin_fd >= 0)
            close(sup.admin_fd);
        code = EXIT_RUNTIME;
        goto out;
    }
    if (start_admin(&sup) < 0) {
        listen_close_fds(fds, n_fds);
        sup.exit_code = EXIT_RUNTIME;
    } else {
        start_workers(&sup, fds);
    }
    if (sup.exit_code != EXIT_CLEAN) {
        if (sup.workers.n_started == 0)
            close_own_handles(&sup);
        else
            stop_workers(&sup, WORKER_CMD_STOP);
    }

    uv_run(&sup.loop, UV_RUN_DEFAULT);
    for (size_t i = 0; i < sup.workers.n_started; i++)
        worker_join(sup.workers.w[i]);
    if (uv_loop_close(&sup.loop) < 0)
        log_error("supervisor loop left handles open");
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    code = sup.exit_code;
    if (code == EXIT_CLEAN)
        log_info("stopped");
out:
    if (have_registry)
        registry_destroy(sup.registry);
    if (have_limits)
        limits_destroy(&sup.limits);
    free(fds);
    free(sup.workers.w);
    free(sup.stalled);
    free(sup.rl.addrs);
    config_free(sup.rl.cfg);
    return code;
}
