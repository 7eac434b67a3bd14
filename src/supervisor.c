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
#include <curl/curl.h>
#include <uv.h>

#include "lifeline/admin.h"
#include "lifeline/admin_backend.h"
#include "lifeline/budget.h"
#include "lifeline/cluster.h"
#include "lifeline/etcd.h"
#include "lifeline/handover.h"
#include "lifeline/listen.h"
#include "lifeline/log.h"
#include "lifeline/metrics.h"
#include "lifeline/notify.h"
#include "lifeline/privileges.h"
#include "lifeline/reload.h"
#include "lifeline/upgrade.h"
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
    struct cluster *cluster;     /* the registry, when it is etcd's; else NULL */
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
    struct upgrade up; /* a live upgrade this process starts (SIGUSR2) */
    /* A process started by a live upgrade: the channel to the old one,
     * whose EOF says it has exited; ready is said only then (bounded). */
    int channel;
    uv_poll_t old_poll;
    uv_timer_t old_exit;     /* polls for that, after the channel's EOF */
    pid_t old_pid;           /* the old process: this one's parent until it has exited */
    unsigned old_exit_polls; /* after its EOF, until it is no longer the parent */
    uv_timer_t old_timer;
    int await_old;
    enum adopt_step {
        ADOPT_NONE,      /* not started by an upgrade, or done */
        ADOPT_STARTING,  /* the workers start, held: nothing relays or accepts */
        ADOPT_RELEASING, /* committed: waiting for the old process to close its copies */
        ADOPT_THAWING,   /* the workers relay and accept again */
    } adopt;
    struct took_over {
        uint64_t started_ns; /* the old process's SIGUSR2 */
        size_t sessions, listeners;
        uint64_t upgrades_ok, upgrades_failed; /* carried over */
    } took_over;
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
    upgrade_close(&sup->up);
    if (sup->channel >= 0) {
        uv_close((uv_handle_t *)&sup->old_poll, NULL);
        uv_close((uv_handle_t *)&sup->old_timer, NULL);
        uv_close((uv_handle_t *)&sup->old_exit, NULL);
        close(sup->channel);
        sup->channel = -1;
    }
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
    } else if (upgrade_busy(&sup->up)) {
        log_info("SIGHUP during a live upgrade: applied if it fails (the new process reads the "
                 "file itself)");
        sup->reload_again = 1;
    } else if (sup->phase == SUP_STARTING || sup->rl.busy) {
        sup->reload_again = 1; /* once the workers run, or this reload is done */
    } else {
        sup->reload_again = 0;
        reload_start(&sup->rl);
    }
}

/* --- live upgrade -------------------------------------------------------- */

/* A process started by a live upgrade that cannot take over: the old one
 * is told and keeps everything. Nothing here may touch a socket it got (a
 * worker's cleanup would close sessions with FIN): the kernel drops this
 * process's copies at _exit, and the old process still holds them. */
static void give_up(int channel, const char *why)
{
    log_error("upgrade: giving up, the old process serves on", LF_STR("reason", why));
    upgrade_abort(channel, why);
    _exit(EXIT_RUNTIME);
}

/* The new process has every socket: the workers are releasing theirs, and
 * the loop ends once they have. */
static void upgrade_committed_cb(struct upgrade *u)
{
    struct supervisor *sup = u->owner;
    sup->phase = SUP_STOPPING;
    sup->admin_state.ready = 0;
    if (sup->cluster != NULL)
        cluster_detach(sup->cluster);
}

/* A failed upgrade rolled back: serving as before. */
static void upgrade_ended_cb(struct upgrade *u)
{
    struct supervisor *sup = u->owner;
    if (sup->reload_again && sup->phase == SUP_RUNNING && !sup->rl.busy) {
        sup->reload_again = 0;
        reload_start(&sup->rl);
    }
}

/* SIGUSR2 starts a live upgrade; SIGUSR1's default action (terminate)
 * would reset every session: logged and ignored. */
static void sigusr_cb(uv_signal_t *h, int signum)
{
    struct supervisor *sup = h->data;
    if (signum != SIGUSR2) {
        log_warn("SIGUSR1 ignored");
        return;
    }
    if (sup->phase != SUP_RUNNING)
        log_warn("upgrade refused",
                 LF_STR("reason", sup->phase == SUP_STARTING ? "not ready yet" : "shutting down"));
    else if (sup->rl.busy)
        log_warn("upgrade refused", LF_STR("reason", "a reload is in progress"));
    else if (sup->opts->exec == NULL || sup->opts->exec->exe[0] == '\0')
        log_warn("upgrade refused", LF_STR("reason", "the executable's path is unknown"));
    else {
        sup->up.admin_fd = sup->admin != NULL ? admin_fd(sup->admin) : -1;
        upgrade_start(&sup->up);
    }
}

/* A process started by an upgrade: the old one has exited (EOF on the
 * channel), or has not in time; either way this one is the one now. */
static void old_gone(struct supervisor *sup, int timed_out)
{
    if (!sup->await_old)
        return;
    sup->await_old = 0;
    uv_poll_stop(&sup->old_poll);
    uv_timer_stop(&sup->old_timer);
    if (timed_out)
        log_warn("upgrade: the old process has not exited; ready all the same",
                 LF_INT("waited_ms", UPGRADE_OLD_EXIT_MS));
    uv_async_send(&sup->notify);
}

static void old_timer_cb(uv_timer_t *t);
static int start_admin(struct supervisor *sup);

/* Every worker relays and accepts again: the upgrade is done, but for
 * the old process's exit (`ready` waits for that). */
static void thawed_cb(struct request *r)
{
    struct supervisor *sup = r->owner;
    request_free(r);
    sup->adopt = ADOPT_NONE;
    sup->ps.upgrade_seconds = (double)(uv_hrtime() - sup->took_over.started_ns) / 1e9;
    log_info("upgrade: took over", LF_INT("sessions", sup->took_over.sessions),
             LF_INT("listeners", sup->took_over.listeners),
             LF_INT("duration_ms", (uint64_t)(sup->ps.upgrade_seconds * 1000)));
    if (sup->channel < 0) /* the loop's handles are closing: shutting down */
        return;
    /* The admin endpoint answers from the new process from now on (before,
     * the old one did; the socket is the same). */
    if (start_admin(sup) < 0)
        log_error("upgrade: serving without the admin endpoint");
    if (sup->await_old)
        uv_timer_start(&sup->old_timer, old_timer_cb, UPGRADE_OLD_EXIT_MS, 0);
    uv_async_send(&sup->notify);
}

/* The old process has closed its copies of the sockets (RELEASED, or its
 * exit): from now on a reset this process sends is a reset, and a close
 * is the last one. The held workers relay and accept. */
static void released(struct supervisor *sup, int timed_out)
{
    if (sup->adopt != ADOPT_RELEASING)
        return;
    uv_timer_stop(&sup->old_timer);
    if (timed_out)
        log_warn("upgrade: the old process has not released its sockets; relaying all the same",
                 LF_INT("waited_ms", UPGRADE_RELEASE_MS));
    sup->adopt = ADOPT_THAWING;
    struct request *r = request_new(REQUEST_THAW, sup->workers.n, thawed_cb, sup);
    if (r == NULL || worker_set_ask(&sup->workers, &sup->loop, r) < 0) {
        log_error("upgrade: cannot start the workers relaying; exiting",
                  LF_STR("error", "out of memory"));
        _exit(EXIT_RUNTIME);
    }
}

/* Polls, every millisecond for at most a second, until this process has
 * been handed to another parent: the old process has then really exited. */
static void old_exit_cb(uv_timer_t *t)
{
    struct supervisor *sup = t->data;
    if (getppid() != sup->old_pid || ++sup->old_exit_polls >= 1000) {
        uv_timer_stop(t);
        old_gone(sup, 0);
    }
}

/* EOF on the channel: the kernel has closed the old process's descriptors,
 * which it does before the process has finished exiting. */
static void old_exiting(struct supervisor *sup)
{
    uv_poll_stop(&sup->old_poll);
    if (getppid() != sup->old_pid) {
        old_gone(sup, 0);
        return;
    }
    sup->old_exit_polls = 0;
    uv_timer_start(&sup->old_exit, old_exit_cb, 1, 1);
}

static void old_poll_cb(uv_poll_t *p, int status, int events)
{
    struct supervisor *sup = p->data;
    (void)events;
    struct handover_msg *m = malloc(sizeof(*m));
    int rc = status < 0 ? status : m == NULL ? -ENOMEM : handover_recv(sup->channel, m);
    if (rc == 0) {
        handover_msg_close_fds(m);
        if (m->kind == HANDOVER_RELEASED)
            released(sup, 0);
    } else if (rc != -EAGAIN) {
        released(sup, 0); /* it exited: the kernel closed its copies */
        old_exiting(sup);
    }
    free(m);
}

static void old_timer_cb(uv_timer_t *t)
{
    struct supervisor *sup = t->data;
    if (sup->adopt == ADOPT_RELEASING)
        released(sup, 1);
    else
        old_gone(sup, 1);
}

/* Every worker of a process started by an upgrade runs, holding its
 * sessions: only now is ADOPTED said (nothing can fail after COMMIT but
 * the process itself), and COMMIT awaited. */
static void adopt_commit(struct supervisor *sup)
{
    if (upgrade_adopted(sup->channel, sup->took_over.sessions, sup->took_over.listeners) < 0)
        _exit(EXIT_RUNTIME); /* logged; the old process serves on */
    if (sup->cluster != NULL)
        cluster_attach(sup->cluster);
    sup->ps.upgrades_ok = sup->took_over.upgrades_ok + 1;
    sup->ps.upgrades_failed = sup->took_over.upgrades_failed;
    sup->adopt = ADOPT_RELEASING;
    uv_timer_start(&sup->old_timer, old_timer_cb, UPGRADE_RELEASE_MS, 0);
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
            if (sup->adopt == ADOPT_STARTING) /* before ADOPTED: the old process serves on */
                give_up(sup->channel, "a worker could not start");
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
    if (sup->adopt == ADOPT_STARTING && running == sup->workers.n)
        adopt_commit(sup);
    if (sup->phase == SUP_STARTING && running == sup->workers.n && sup->adopt == ADOPT_NONE &&
        !sup->await_old) {
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
    if (sup->up.phase ==
        UPGRADE_COMMITTED) { /* the new process serves: this one is releasing its copies */
        log_info("signal ignored: upgraded, exiting", LF_STR("signal", name));
        return;
    }
    if (sup->adopt == ADOPT_STARTING) /* the sessions are still the old process's */
        give_up(sup->channel, "a shutdown signal came before the new process took over");
    upgrade_cancel(&sup->up, "shutdown requested"); /* the workers thaw, then drain */

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
static int plan_descriptors(struct supervisor *sup, int64_t session_fds)
{
    int64_t limit = budget_fd_limit();
    int64_t open_now = budget_fds_open();
    if (open_now >= session_fds) /* adopted sessions' count against the budget itself */
        open_now -= session_fds;
    if (open_now < 0) /* no /proc: a generous guess */
        open_now = 64 + (int64_t)(sup->workers.n * (sup->rl.cfg->n_routes + 4));
    int64_t admin = sup->admin != NULL || sup->admin_fd >= 0 ? ADMIN_MAX_CONNS + 1 : 0;
    int64_t cluster = sup->rl.cfg->cluster.enabled ? ETCD_MAX_FDS : 0;
    int64_t reserved = open_now + admin + cluster + budget_resolver_fds() + FD_MARGIN;
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

/* Gives the workers (made, not started) what the old process handed over:
 * the listening sockets beyond one per worker and route, and every
 * session, round robin. Then the budget, ADOPTED, and COMMIT. */
static void adopt_all(struct supervisor *sup, struct upgrade_inbound *in)
{
    const struct config *cfg = sup->rl.cfg;
    size_t *per_route = calloc(cfg->n_routes, sizeof(*per_route));
    if (per_route == NULL)
        give_up(sup->channel, "out of memory");
    for (size_t j = 0; j < in->n_listen; j++) {
        long r = listen_bound_by(&in->listen_addrs[j], cfg, sup->rl.addrs);
        if (in->listen_fds[j] < 0 || r < 0)
            continue;
        size_t w = per_route[r]++ % sup->workers.n;
        if (worker_add_listener(sup->workers.w[w], in->listen_fds[j], &in->listen_addrs[j],
                                (size_t)r) < 0)
            give_up(sup->channel, "out of memory");
        in->listen_fds[j] = -1;
    }
    free(per_route);
    for (size_t i = 0; i < in->n_sessions; i++) {
        int rc = worker_adopt_session(sup->workers.w[i % sup->workers.n], &in->recs[i],
                                      in->fds[2 * i], in->fds[2 * i + 1]);
        in->fds[2 * i] = in->fds[2 * i + 1] = -1;
        if (rc < 0)
            give_up(sup->channel, "cannot adopt a session");
    }
}

/* Prepares every worker on its sockets (and, in a process started by a
 * live upgrade, what `in` holds), sizes the descriptor budget from what is
 * then open, and starts them. On a failure the rest of the fds are closed
 * and the exit code says so. */
static void start_workers(struct supervisor *sup, int *fds, struct upgrade_inbound *in)
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
    /* The sessions handed over hold descriptors already: the budget is
     * planned without them, then they claim their share (a plan made
     * after would start the count at 0 and let new sessions overspend). */
    int64_t adopted_fds = in != NULL ? (int64_t)in->n_sessions * BUDGET_FDS_PER_SESSION : 0;
    if (sup->exit_code == EXIT_CLEAN && plan_descriptors(sup, adopted_fds) < 0)
        sup->exit_code = EXIT_RUNTIME;
    if (in != NULL) {
        if (sup->exit_code != EXIT_CLEAN)
            give_up(sup->channel, "cannot start the workers");
        adopt_all(sup, in);
        /* They start held, relaying and accepting nothing until THAW:
         * notify_cb says ADOPTED once every one runs (adopt_commit). */
        for (size_t i = 0; i < sup->workers.n; i++)
            worker_hold(sup->workers.w[i]);
        sup->adopt = ADOPT_STARTING;
        sup->took_over = (struct took_over){ .started_ns = in->started_ns,
                                             .sessions = in->n_sessions,
                                             .listeners = in->n_listen,
                                             .upgrades_ok = in->upgrades_ok,
                                             .upgrades_failed = in->upgrades_failed };
    }

    sigset_t set, old_mask;
    handled_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, &old_mask); /* inherited by the workers */
    for (size_t i = 0; i < n_init; i++) {
        struct worker *w = sup->workers.w[i];
        int rc = sup->exit_code == EXIT_CLEAN ? worker_start(w) : UV_ECANCELED;
        if (rc < 0 && in != NULL) /* its sessions must not be closed: _exit */
            give_up(sup->channel, "cannot start a worker thread");
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
    sup->sigusr1.data = sup->sigusr2.data = sup;
    sup->up = (struct upgrade){ .loop = &sup->loop,
                                .workers = &sup->workers,
                                .ps = &sup->ps,
                                .exec = sup->opts->exec,
                                .admin_fd = -1,
                                .committed = upgrade_committed_cb,
                                .ended = upgrade_ended_cb,
                                .cluster = sup->cluster,
                                .owner = sup };
    if ((rc = upgrade_init(&sup->up)) < 0) {
        log_error("cannot start the event loop", LF_STR("error", uv_strerror(rc)));
        uv_close((uv_handle_t *)&sup->watchdog, NULL);
        uv_close((uv_handle_t *)&sup->sd_watchdog, NULL);
        uv_run(&sup->loop, UV_RUN_DEFAULT);
        uv_loop_close(&sup->loop);
        return rc;
    }
    if (sup->channel >= 0) {
        uv_timer_init(&sup->loop, &sup->old_timer);
        uv_timer_init(&sup->loop, &sup->old_exit);
        sup->old_timer.data = sup->old_poll.data = sup->old_exit.data = sup;
        if (uv_poll_init(&sup->loop, &sup->old_poll, sup->channel) < 0) {
            /* Cannot watch for its exit: say ready once the workers run. */
            uv_close((uv_handle_t *)&sup->old_timer, NULL);
            uv_close((uv_handle_t *)&sup->old_exit, NULL);
            close(sup->channel);
            sup->channel = -1;
        } else {
            sup->await_old = 1;
            uv_poll_start(&sup->old_poll, UV_READABLE, old_poll_cb);
        }
    }
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

/* bind_all() for a process started by a live upgrade: receives what the
 * old process hands over, checks the config against it, takes the
 * listening sockets whose addresses it keeps (dup()ing them when there are
 * more workers now), binds only what is new, and drops privileges. A
 * problem is told to the old process, which serves on. Returns an exit
 * code. */
static int take_over(struct supervisor *sup, int *fds, size_t n_fds, struct upgrade_inbound *in)
{
    const struct config *cfg = sup->rl.cfg;
    size_t n_workers = sup->workers.n, n_routes = cfg->n_routes;
    char why[160];
    for (size_t i = 0; i < n_fds; i++)
        fds[i] = -1;
    /* systemd's watchdog was meant for the old process; it is ours once
     * MAINPID names us. */
    const char *wd = getenv("WATCHDOG_PID");
    if (wd != NULL && strtoll(wd, NULL, 10) == (long long)getppid()) {
        char pid[24];
        snprintf(pid, sizeof(pid), "%d", (int)getpid());
        setenv("WATCHDOG_PID", pid, 1);
    }
    sup->old_pid = getppid();
    if (upgrade_receive(sup->channel, in) < 0)
        return EXIT_RUNTIME;
    log_info("upgrade: taking over", LF_INT("sessions", in->n_sessions),
             LF_INT("listeners", in->n_listen), LF_INT("old_pid", getppid()));

    struct sockaddr_storage admin_sa;
    struct config_errors errs = { 0 };
    int rc = listen_check(cfg, sup->rl.addrs, &admin_sa, &errs);
    config_errors_log(sup->opts->config_path, &errs);
    snprintf(why, sizeof(why), "invalid config: %s", errs.n > 0 ? errs.msgs[0] : "");
    config_errors_free(&errs);
    if (rc < 0) {
        upgrade_abort(sup->channel, why);
        return EXIT_USAGE;
    }
    for (size_t i = 0; i < in->n_sessions; i++) {
        size_t r = 0;
        while (r < n_routes && strcmp(cfg->routes[r].name, in->recs[i].route) != 0)
            r++;
        if (r == n_routes) {
            snprintf(why, sizeof(why),
                     "route \"%s\" has live sessions and is not in the new config",
                     in->recs[i].route);
            log_error("upgrade: cannot take over", LF_STR("reason", why));
            upgrade_abort(sup->channel, why);
            return EXIT_USAGE;
        }
    }
    if (privileges_check(cfg) < 0) {
        upgrade_abort(sup->channel, "missing capability (see the new process's log)");
        return EXIT_RUNTIME;
    }
    char scope[sizeof(in->cluster_scope)];
    if (cfg->cluster.enabled && in->cluster_lease != 0) {
        cluster_scope(&cfg->cluster, scope, sizeof(scope));
        if (strcmp(scope, in->cluster_scope) != 0) {
            snprintf(why, sizeof(why),
                     "cluster.etcd, cluster.prefix or cluster.instance changed: "
                     "a restart changes them");
            log_error("upgrade: cannot take over", LF_STR("reason", why));
            upgrade_abort(sup->channel, why);
            return EXIT_USAGE;
        }
    }
    for (size_t r = 0; r < n_routes; r++) {
        /* The old sockets of this address, one per worker while they last. */
        size_t c = 0;
        for (size_t j = 0; j < in->n_listen && c < n_workers; j++) {
            if (in->listen_fds[j] < 0 || !addr_equal((const struct sockaddr *)&in->listen_addrs[j],
                                                     (const struct sockaddr *)&sup->rl.addrs[r]))
                continue;
            fds[c++ * n_routes + r] = in->listen_fds[j];
            in->listen_fds[j] = -1;
        }
        if (c == 0) {
            rc = listen_open_route(cfg, r, n_workers, &sup->rl.addrs[r], fds);
        } else {
            /* More workers than before: the extra ones share the old
             * sockets (their port may need a privilege dropped already). */
            for (size_t w = c; w < n_workers && rc == 0; w++) {
                int fd = dup(fds[(w % c) * n_routes + r]);
                rc = fd < 0 ? -errno : 0;
                if (fd >= 0)
                    fcntl(fd, F_SETFD, FD_CLOEXEC);
                fds[w * n_routes + r] = fd;
            }
        }
        if (rc < 0) {
            snprintf(why, sizeof(why), "cannot listen for route \"%s\": %s", cfg->routes[r].name,
                     strerror(-rc));
            upgrade_abort(sup->channel, why);
            return EXIT_RUNTIME;
        }
    }
    if (cfg->admin.enabled && in->admin_fd >= 0 &&
        addr_equal((const struct sockaddr *)&in->admin_addr, (const struct sockaddr *)&admin_sa)) {
        sup->admin_fd = in->admin_fd;
        in->admin_fd = -1;
    } else if ((rc = listen_open_admin(cfg, &admin_sa, &sup->admin_fd)) < 0) {
        upgrade_abort(sup->channel, "cannot listen for the admin endpoint");
        return EXIT_RUNTIME;
    }
    if (privileges_drop(cfg) < 0) {
        upgrade_abort(sup->channel, "cannot drop privileges (see the new process's log)");
        return EXIT_RUNTIME;
    }
    return EXIT_CLEAN;
}

/* The identity registry: the in-process table, or etcd's when the config
 * has a cluster (a live upgrade may hand its lease over). 0 or -errno
 * (logged). */
static int make_registry(struct supervisor *sup, struct config *cfg, int64_t lease,
                         uint64_t lease_age_ms)
{
    if (!cfg->cluster.enabled) {
        if (registry_local_new(&sup->registry, worker_deliver, &sup->workers) < 0) {
            log_error("out of memory");
            return -ENOMEM;
        }
        return 0;
    }
    /* Before any thread of ours: curl_global_init is not thread-safe. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("cluster: cannot initialise libcurl");
        return -ENOMEM;
    }
    int rc = cluster_new(&sup->cluster, &sup->registry, cfg, worker_deliver, &sup->workers, lease,
                         lease_age_ms);
    if (rc < 0) {
        curl_global_cleanup();
        sup->cluster = NULL;
        return rc;
    }
    sup->ps.cluster = cluster_stats(sup->cluster);
    sup->ps.cluster_refuses = !cluster_on_unavailable_local(sup->cluster);
    log_info("cluster: starting", LF_STR("instance", cfg->cluster.instance),
             LF_STR("prefix", cfg->cluster.prefix),
             LF_INT("lease_ttl_ms", cfg->cluster.lease_ttl_ms),
             LF_STR("on_unavailable", sup->ps.cluster_refuses ? "refuse" : "local"));
    return 0;
}

int supervisor_run(struct config *cfg, const struct supervisor_options *opts)
{
    struct supervisor sup = {
        .opts = opts, .phase = SUP_STARTING, .exit_code = EXIT_CLEAN, .admin_fd = -1
    };
    /* Started by a live upgrade: the old process hands everything over. */
    sup.channel = upgrade_channel();
    struct upgrade_inbound in = { .admin_fd = -1 };
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
        !(have_limits = limits_init(&sup.limits) == 0)) {
        log_error("out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_fds; i++)
        fds[i] = -1;
    code = sup.channel >= 0 ? take_over(&sup, fds, n_fds, &in) : bind_all(&sup, fds, n_fds);
    if (code == EXIT_CLEAN) {
        have_registry = make_registry(&sup, cfg, in.cluster_lease, in.cluster_lease_age_ms) == 0;
        if (!have_registry) {
            if (sup.channel >= 0)
                upgrade_abort(sup.channel, "cannot start the registry (see the new process's log)");
            code = EXIT_RUNTIME;
        }
    }
    if (code != EXIT_CLEAN) {
        listen_close_fds(fds, n_fds);
        if (sup.admin_fd >= 0)
            close(sup.admin_fd);
        sup.admin_fd = -1;
        goto out;
    }

    if (init_loop(&sup) < 0) {
        listen_close_fds(fds, n_fds);
        if (sup.admin_fd >= 0)
            close(sup.admin_fd);
        sup.admin_fd = -1;
        code = EXIT_RUNTIME;
        goto out;
    }
    /* A process started by an upgrade starts its admin endpoint once it
     * relays (thawed_cb): until then the old process answers on it. */
    if (sup.channel < 0 && start_admin(&sup) < 0) {
        listen_close_fds(fds, n_fds);
        sup.exit_code = EXIT_RUNTIME;
    } else {
        start_workers(&sup, fds, sup.channel >= 0 ? &in : NULL);
    }
    /* Old listening sockets of addresses the config no longer has: closed
     * (the old process closes its copies too). */
    for (size_t j = 0; j < in.n_listen; j++)
        if (in.listen_fds[j] >= 0) {
            char addr[ADDR_STR_MAX];
            log_info("upgrade: closing a listener the config dropped",
                     LF_STR("address", addr_format((const struct sockaddr *)&in.listen_addrs[j],
                                                   addr, sizeof(addr))));
        }
    upgrade_inbound_free(&in);
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
    if (code == EXIT_CLEAN && sup.up.phase != UPGRADE_COMMITTED)
        log_info("stopped");
out:
    if (sup.admin_fd >= 0) /* a new process that stopped before it relayed */
        close(sup.admin_fd);
    upgrade_inbound_free(&in);
    if (sup.channel >= 0)
        close(sup.channel);
    if (have_registry)
        registry_destroy(sup.registry);
    if (sup.cluster != NULL)
        curl_global_cleanup();
    if (have_limits)
        limits_destroy(&sup.limits);
    free(fds);
    free(sup.workers.w);
    free(sup.stalled);
    free(sup.rl.addrs);
    config_free(sup.rl.cfg);
    return code;
}
