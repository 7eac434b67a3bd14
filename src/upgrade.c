/* Live upgrade: the old process's steps on the supervisor's loop, and the
 * new process's receiving side. See upgrade.h for the sequence. */
#define _GNU_SOURCE /* environ */
#include "lifeline/upgrade.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lifeline/addr.h"
#include "lifeline/cluster.h"
#include "lifeline/exit.h"
#include "lifeline/handover.h"
#include "lifeline/log.h"
#include "lifeline/notify.h"
#include "lifeline/request.h"

extern char **environ;

/* Payloads, fixed-width: both ends run from one source tree's version, and
 * handover.h's version field guards the rest. */
enum listener_kind { LISTENER_ROUTE, LISTENER_ADMIN };
struct listener_msg {
    uint32_t kind;
};
struct sent_msg {
    uint64_t started_ns;
    uint64_t upgrades_ok;
    uint64_t upgrades_failed;
    uint64_t next_session_id;
    int64_t cluster_lease;
    uint64_t cluster_lease_age_ms;
    char cluster_scope[640];
};
struct hello_msg {
    int32_t pid;
    char version[32];
};
struct adopted_msg {
    uint64_t sessions;
    uint64_t listeners;
};

/* dir/name into out, absolute (the working directory may change later),
 * symbolic links left as they are. 0, or -ENAMETOOLONG. */
static int join_path(char *out, size_t len, const char *dir, const char *name)
{
    char cwd[PATH_MAX] = "";
    if (dir[0] != '/' && getcwd(cwd, sizeof(cwd)) == NULL)
        return -errno;
    int n = snprintf(out, len, "%s%s%s%s%s", cwd, cwd[0] != '\0' ? "/" : "", dir,
                     dir[0] != '\0' ? "/" : "", name);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int upgrade_exec_init(struct upgrade_exec *e, char **argv)
{
    e->argv = argv;
    const char *name = argv[0] != NULL ? argv[0] : "";
    /* The path it was started by, not the file it resolved to: a symbolic
     * link switched to a new version (/opt/lifeline/current) takes effect. */
    if (name[0] == '/')
        return (size_t)snprintf(e->exe, sizeof(e->exe), "%s", name) < sizeof(e->exe)
                   ? 0
                   : -ENAMETOOLONG;
    if (strchr(name, '/') != NULL)
        return join_path(e->exe, sizeof(e->exe), "", name);
    const char *path = getenv("PATH");
    while (name[0] != '\0' && path != NULL && *path != '\0') {
        size_t dir_len = strcspn(path, ":");
        char dir[PATH_MAX];
        if (dir_len < sizeof(dir)) {
            memcpy(dir, path, dir_len);
            dir[dir_len] = '\0';
            if (join_path(e->exe, sizeof(e->exe), dir_len > 0 ? dir : ".", name) == 0 &&
                access(e->exe, X_OK) == 0)
                return 0;
        }
        path += dir_len + (path[dir_len] == ':');
    }
    ssize_t n = readlink("/proc/self/exe", e->exe, sizeof(e->exe) - 1);
    if (n < 0)
        return -errno;
    e->exe[n] = '\0';
    return 0;
}

/* Blocking, whatever a uv_poll on it set: the sends and the bounded
 * receives of an upgrade wait (SO_SNDTIMEO, SO_RCVTIMEO). */
static void set_blocking(int sock)
{
    int fl = fcntl(sock, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK))
        fcntl(sock, F_SETFL, fl & ~O_NONBLOCK);
}

/* --- the old process ------------------------------------------------------ */

static void poll_cb(uv_poll_t *p, int status, int events);
static void thaw_done(struct request *r);

static double seconds_since(uint64_t ns) { return (double)(uv_hrtime() - ns) / 1e9; }

static void handle_free_cb(uv_handle_t *h) { free(h); }

static void close_channel(struct upgrade *u)
{
    if (u->sock < 0)
        return;
    uv_close((uv_handle_t *)u->poll, handle_free_cb);
    u->poll = NULL;
    close(u->sock);
    u->sock = -1;
}

/* Every worker serves again; `ended` runs then. */
static void thaw_all(struct upgrade *u)
{
    if (u->frozen != NULL) {
        request_free(&u->frozen->base);
        u->frozen = NULL;
    }
    u->phase = UPGRADE_THAWING;
    struct request *r = request_new(REQUEST_THAW, u->workers->n, thaw_done, u);
    if (r == NULL || worker_set_ask(u->workers, u->loop, r) < 0) {
        /* Only short of memory; the sessions would stay held. */
        log_error("upgrade: cannot resume the workers", LF_STR("error", "out of memory"));
        if (r != NULL)
            request_free(r);
        u->phase = UPGRADE_IDLE;
        u->ended(u);
    }
}

/* Gives up: logged and counted once, the new process stopped, and the
 * workers thawed (at once, or once the freeze has its answers). */
static void fail_as(struct upgrade *u, const char *msg, const char *why, int err)
{
    if (u->phase == UPGRADE_IDLE || u->phase == UPGRADE_THAWING || u->phase == UPGRADE_COMMITTED ||
        u->failed)
        return;
    u->failed = 1;
    u->ps->upgrades_failed++;
    u->ps->upgrade_seconds = seconds_since(u->started_ns);
    if (err != 0)
        log_error(msg, LF_STR("reason", why), LF_STR("error", uv_strerror(err)),
                  LF_INT("new_pid", u->child_pid));
    else
        log_error(msg, LF_STR("reason", why), LF_INT("new_pid", u->child_pid));
    /* Whatever it got, it must never serve: it starts only on COMMIT, and
     * SIGKILL makes sure it will not wait for one. */
    if (u->child_running)
        kill(u->child_pid, SIGKILL); /* reaped by sigchld_cb */
    uv_timer_stop(&u->deadline);
    close_channel(u);
    if (u->phase == UPGRADE_SPAWNED) { /* nothing frozen */
        u->phase = UPGRADE_IDLE;
        u->ended(u);
        return;
    }
    /* While freezing, too: a worker that has not answered yet thaws after
     * it freezes (its inbox keeps the order), and freeze_done then only
     * frees the answers. */
    u->freezing = NULL;
    thaw_all(u);
}

static void fail(struct upgrade *u, const char *why, int err)
{
    fail_as(u, "upgrade failed: serving on", why, err);
}

static void thaw_done(struct request *r)
{
    struct upgrade *u = r->owner;
    request_free(r);
    u->phase = UPGRADE_IDLE;
    log_info("upgrade rolled back: accepting again", LF_INT("new_pid", u->child_pid));
    u->ended(u);
}

/* SIGCHLD: reaps the new process if it has ended (a failed upgrade, or
 * one that failed it); after a commit it is no longer ours to wait for. */
static void sigchld_cb(uv_signal_t *h, int signum)
{
    struct upgrade *u = h->data;
    int status;
    (void)signum;
    if (u->child_pid <= 0 || !u->child_running || waitpid(u->child_pid, &status, WNOHANG) <= 0)
        return;
    u->child_running = 0;
    if (u->phase == UPGRADE_COMMITTED || u->phase == UPGRADE_IDLE || u->phase == UPGRADE_THAWING ||
        u->failed)
        return;
    uv_timer_stop(&u->deadline);
    char why[64];
    if (WIFSIGNALED(status))
        snprintf(why, sizeof(why), "the new process was killed by signal %d", WTERMSIG(status));
    else
        snprintf(why, sizeof(why), "the new process exited with status %d", WEXITSTATUS(status));
    fail(u, why, 0);
}

static void deadline_cb(uv_timer_t *t)
{
    struct upgrade *u = t->data;
    if (u->channel_closed) /* no exit status came: it closed the channel and lives on */
        fail(u, "the new process closed the channel", 0);
    else if (u->phase == UPGRADE_SPAWNED)
        fail(u, "the new process was not ready to take over within 10 s", UV_ETIMEDOUT);
    else if (u->phase == UPGRADE_FREEZING)
        fail(u, "the workers did not all answer the freeze in time", UV_ETIMEDOUT);
    else
        fail(u, "the new process did not adopt everything in time", UV_ETIMEDOUT);
}

/* Blocking sends (SO_SNDTIMEO bounds each), with a bound on them all. */
static int send_all(struct upgrade *u, struct freeze_request *f)
{
    struct listener_msg lm = { .kind = LISTENER_ROUTE };
    uint64_t until = uv_hrtime() + (uint64_t)UPGRADE_ADOPT_MS * 1000000;
    int rc = 0;
    u->n_sessions = u->n_listeners = 0;
    for (size_t w = 0; w < f->n_parts && rc == 0; w++) {
        const struct worker_export *e = &f->parts[w];
        for (size_t i = 0; i < e->n_listen && rc == 0; i++, u->n_listeners++)
            rc = handover_send(u->sock, HANDOVER_LISTENER, &lm, sizeof(lm), &e->listen_fds[i], 1);
        for (size_t i = 0; i < e->n && rc == 0; i++, u->n_sessions++) {
            rc = handover_send(u->sock, HANDOVER_SESSION, &e->recs[i], sizeof(e->recs[i]),
                               &e->fds[2 * i], 2);
            if (rc == 0 && uv_hrtime() > until)
                rc = -ETIMEDOUT;
        }
    }
    if (rc == 0 && u->admin_fd >= 0) {
        lm.kind = LISTENER_ADMIN;
        rc = handover_send(u->sock, HANDOVER_LISTENER, &lm, sizeof(lm), &u->admin_fd, 1);
    }
    struct sent_msg sm = { .started_ns = u->started_ns,
                           .upgrades_ok = u->ps->upgrades_ok,
                           .upgrades_failed = u->ps->upgrades_failed,
                           .next_session_id = session_next_id() };
    if (u->cluster != NULL)
        sm.cluster_lease = cluster_lease(u->cluster, sm.cluster_scope, sizeof(sm.cluster_scope),
                                         &sm.cluster_lease_age_ms);
    if (rc == 0)
        rc = handover_send(u->sock, HANDOVER_SENT, &sm, sizeof(sm), NULL, 0);
    return rc;
}

static void freeze_done(struct request *r)
{
    struct upgrade *u = r->owner;
    struct freeze_request *f = (struct freeze_request *)(void *)r;
    if (u->freezing != r) { /* the upgrade failed meanwhile and thawed */
        request_free(r);
        return;
    }
    u->freezing = NULL;
    uv_timer_stop(&u->deadline);
    size_t busy = 0, writing = 0;
    for (size_t w = 0; w < f->n_parts; w++) {
        busy += f->parts[w].busy;
        writing += f->parts[w].writing;
    }
    u->phase = UPGRADE_SENT;
    u->frozen = f;
    if (f->failed) {
        fail(u, "a worker could not hand its sessions over", UV_ENOMEM);
        return;
    }
    if (writing > 0) {
        char why[128];
        snprintf(why, sizeof(why),
                 "%zu session%s with a peer that stopped reading (named in the lines above)",
                 writing, writing == 1 ? "" : "s");
        fail(u, why, 0);
        return;
    }
    if (busy > 0) {
        char why[128];
        snprintf(why, sizeof(why), "%zu session%s still connecting or closing after %d ms", busy,
                 busy == 1 ? "" : "s", UPGRADE_SETTLE_MS);
        fail(u, why, 0);
        return;
    }
    int rc = send_all(u, f);
    if (rc < 0) {
        fail(u, "cannot send the sockets to the new process", rc);
        return;
    }
    uv_timer_start(&u->deadline, deadline_cb, UPGRADE_ADOPT_MS, 0);
}

static void freeze(struct upgrade *u)
{
    u->phase = UPGRADE_FREEZING;
    /* The workers bound the settling themselves; this bounds a worker loop
     * that does not answer at all. */
    uv_timer_start(&u->deadline, deadline_cb, UPGRADE_FREEZE_MS, 0);
    struct request *r = request_new(REQUEST_FREEZE, u->workers->n, freeze_done, u);
    u->freezing = r;
    if (r != NULL)
        ((struct freeze_request *)(void *)r)->settle_ms = UPGRADE_SETTLE_MS;
    if (r == NULL || worker_set_ask(u->workers, u->loop, r) < 0) {
        if (r != NULL)
            request_free(r);
        u->phase = UPGRADE_SPAWNED; /* nothing frozen */
        fail(u, "cannot ask the workers", UV_ENOMEM);
    }
}

/* Our copies are closed: the new process may relay now without them (a
 * reset it sends is a reset then, not the close of one copy of two). */
static void release_done(struct request *r)
{
    struct upgrade *u = r->owner;
    request_free(r);
    if (u->sock >= 0)
        (void)handover_send(u->sock, HANDOVER_RELEASED, NULL, 0, NULL, 0);
}

/* The new process has adopted everything: from COMMIT on it serves, and
 * this process only closes its copies. */
static void commit(struct upgrade *u)
{
    int rc = handover_send(u->sock, HANDOVER_COMMIT, NULL, 0, NULL, 0);
    if (rc < 0) {
        fail(u, "cannot send COMMIT to the new process", rc);
        return;
    }
    uv_timer_stop(&u->deadline);
    uv_poll_stop(u->poll); /* the channel stays open: its EOF tells the new process we are gone */
    u->phase = UPGRADE_COMMITTED;
    /* NotifyAccess=main: only the main process may say who the main
     * process is now. */
    char state[64];
    snprintf(state, sizeof(state), "MAINPID=%d\nSTATUS=upgraded", u->child_pid);
    notify_send(state);
    log_info("upgraded", LF_INT("new_pid", u->child_pid), LF_INT("sessions", u->n_sessions),
             LF_INT("listeners", u->n_listeners),
             LF_INT("duration_ms", (uint64_t)(seconds_since(u->started_ns) * 1000)));
    request_free(&u->frozen->base);
    u->frozen = NULL;
    struct request *r = request_new(REQUEST_RELEASE, u->workers->n, release_done, u);
    if (r == NULL || worker_set_ask(u->workers, u->loop, r) < 0) {
        /* Out of memory: exiting closes the copies all the same, and
         * nothing else (no shutdown, no reset). */
        log_error("upgrade: cannot ask the workers to release; exiting",
                  LF_STR("error", "out of memory"));
        _exit(EXIT_CLEAN);
    }
    u->committed(u);
}

static void poll_cb(uv_poll_t *p, int status, int events)
{
    struct upgrade *u = p->data;
    (void)events;
    if (status < 0) {
        fail(u, "the channel to the new process failed", status);
        return;
    }
    struct handover_msg *m = malloc(sizeof(*m));
    if (m == NULL) {
        fail(u, "out of memory", UV_ENOMEM);
        return;
    }
    int rc = handover_recv(u->sock, m);
    if (rc == -EAGAIN) {
        free(m);
        return;
    }
    handover_msg_close_fds(m); /* nothing the new process sends carries one */
    if (rc == -ECONNRESET) {
        /* Most often it exited: wait a moment for SIGCHLD and its status. */
        u->channel_closed = 1;
        uv_poll_stop(u->poll);
        uv_timer_start(&u->deadline, deadline_cb, UPGRADE_EXIT_GRACE_MS, 0);
    } else if (rc < 0) {
        fail(u, "the channel to the new process failed", rc);
    } else if (m->kind == HANDOVER_ABORT) {
        char why[256];
        size_t n = m->len < sizeof(why) - 1 ? m->len : sizeof(why) - 1;
        memcpy(why, m->payload, n);
        why[n] = '\0';
        fail(u, why, 0);
    } else if (m->kind == HANDOVER_HELLO && u->phase == UPGRADE_SPAWNED &&
               m->len == sizeof(struct hello_msg)) {
        struct hello_msg h;
        memcpy(&h, m->payload, sizeof(h));
        h.version[sizeof(h.version) - 1] = '\0';
        log_info("upgrade: the new process is ready to take over", LF_INT("new_pid", u->child_pid),
                 LF_STR("new_version", h.version));
        freeze(u);
    } else if (m->kind == HANDOVER_ADOPTED && u->phase == UPGRADE_SENT) {
        commit(u);
    } else {
        fail(u, "unexpected message from the new process", UV_EPROTO);
    }
    free(m);
}

/* The environment with the channel's fd added (any inherited one replaced). */
static char **child_env(void)
{
    size_t n = 0;
    while (environ[n] != NULL)
        n++;
    char **env = calloc(n + 2, sizeof(*env));
    if (env == NULL)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], UPGRADE_ENV "=", sizeof(UPGRADE_ENV)) != 0)
            env[k++] = environ[i];
    static char channel[] = UPGRADE_ENV "=3"; /* UPGRADE_CHILD_FD */
    env[k++] = channel;
    return env;
}

int upgrade_init(struct upgrade *u)
{
    u->phase = UPGRADE_IDLE;
    u->sock = -1;
    uv_timer_init(u->loop, &u->deadline);
    u->deadline.data = u->sigchld.data = u;
    int rc = uv_signal_init(u->loop, &u->sigchld);
    if (rc < 0) {
        uv_close((uv_handle_t *)&u->deadline, NULL);
        return rc;
    }
    u->handles = 1;
    return 0;
}

/* Is our parent a container's minimal init (docker run --init, podman
 * run --init, tini, dumb-init)? Each exits when its child does: the old
 * process's exit would end the container, and the new process with it. */
static int container_init(char *name, size_t len)
{
    static const char *const inits[] = { "tini", "docker-init", "dumb-init", "catatonit" };
    if (getppid() != 1)
        return 0;
    FILE *f = fopen("/proc/1/comm", "r");
    if (f == NULL)
        return 0;
    int found = 0;
    if (fgets(name, (int)len, f) != NULL) {
        name[strcspn(name, "\n")] = '\0';
        for (size_t i = 0; i < sizeof(inits) / sizeof(inits[0]); i++)
            found |= strcmp(name, inits[i]) == 0;
    }
    fclose(f);
    return found;
}

int upgrade_busy(const struct upgrade *u) { return u->phase != UPGRADE_IDLE; }

void upgrade_start(struct upgrade *u)
{
    if (u->phase != UPGRADE_IDLE) {
        log_warn("upgrade refused", LF_STR("reason", "an upgrade is in progress"),
                 LF_INT("new_pid", u->child_pid));
        return;
    }
    if (u->child_running) { /* killed by a failed upgrade, not reaped yet */
        log_warn("upgrade refused", LF_STR("reason", "the last new process has not ended yet"),
                 LF_INT("new_pid", u->child_pid));
        return;
    }
    if (getpid() == 1) {
        /* The container (or the machine) ends when PID 1 exits. */
        log_warn("upgrade refused",
                 LF_STR("reason", "running as PID 1: its exit would end the container"));
        return;
    }
    char init[32];
    if (container_init(init, sizeof(init))) {
        log_warn(
            "upgrade refused",
            LF_STR("reason", "the container's init exits with its child, ending the container"),
            LF_STR("init", init));
        return;
    }
    uint64_t started_ns = uv_hrtime(); /* the upgrade's duration starts at the signal */
    int pair[2];
    int rc = handover_pair(pair);
    if (rc < 0) {
        log_error("upgrade refused", LF_STR("reason", "cannot make the channel"),
                  LF_STR("error", strerror(-rc)));
        return;
    }
    /* A sender must never wait for good on a new process that stopped reading. */
    struct timeval tv = { .tv_sec = UPGRADE_ADOPT_MS / 1000 };
    setsockopt(pair[0], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));

    /* The child's end goes to fd 3 with dup2(), which clears its
     * close-on-exec flag, unless it is fd 3 already: then a copy is moved.
     * (dup(), not fcntl(F_DUPFD): ThreadSanitizer tracks descriptors made
     * by the calls it intercepts.) */
    int child_end = pair[1];
    if (child_end == UPGRADE_CHILD_FD) {
        child_end = dup(pair[1]);
        if (child_end >= 0)
            fcntl(child_end, F_SETFD, FD_CLOEXEC);
        close(pair[1]);
    }
    char **env = child_env();
    uv_poll_t *poll = calloc(1, sizeof(*poll));
    /* posix_spawn rather than uv_spawn: no helper pipe whose close
     * ThreadSanitizer cannot see (libuv closes it with a raw system call). */
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t none, dfl;
    sigemptyset(&none);
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGTERM);
    sigaddset(&dfl, SIGINT);
    sigaddset(&dfl, SIGHUP);
    sigaddset(&dfl, SIGUSR1);
    sigaddset(&dfl, SIGUSR2);
    sigaddset(&dfl, SIGCHLD);
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_adddup2(&fa, child_end, UPGRADE_CHILD_FD);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &dfl);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid = -1;
    rc = child_end < 0 ? -errno : env == NULL || poll == NULL ? -ENOMEM : 0;
    if (rc == 0 && (rc = uv_signal_start(&u->sigchld, sigchld_cb, SIGCHLD)) == 0)
        rc = -posix_spawn(&pid, u->exec->exe, &fa, &at, u->exec->argv, env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    free(env);
    if (child_end >= 0)
        close(child_end);
    if (rc < 0) {
        close(pair[0]);
        free(poll);
        u->ps->upgrades_failed++;
        log_error("upgrade failed: serving on", LF_STR("reason", "cannot start the executable"),
                  LF_STR("executable", u->exec->exe), LF_STR("error", strerror(-rc)));
        return;
    }
    u->child_pid = pid;
    u->child_running = 1;
    u->sock = pair[0];
    u->started_ns = started_ns;
    u->failed = 0;
    u->channel_closed = 0;
    u->phase = UPGRADE_SPAWNED;
    u->poll = poll;
    uv_poll_init(u->loop, poll, u->sock);
    set_blocking(u->sock); /* poll_cb reads only when readable; sends wait */
    poll->data = u;
    uv_poll_start(poll, UV_READABLE, poll_cb);
    uv_timer_start(&u->deadline, deadline_cb, UPGRADE_HELLO_MS, 0);
    log_info("upgrade starting", LF_STR("executable", u->exec->exe),
             LF_INT("new_pid", u->child_pid));
}

void upgrade_cancel(struct upgrade *u, const char *why) { fail_as(u, "upgrade cancelled", why, 0); }

void upgrade_close(struct upgrade *u)
{
    if (!u->handles)
        return;
    u->handles = 0;
    uv_close((uv_handle_t *)&u->deadline, NULL);
    uv_close((uv_handle_t *)&u->sigchld, NULL);
    if (u->phase == UPGRADE_COMMITTED && u->sock >= 0) {
        /* Left open until this process has exited: its EOF is how the new
         * process learns that (and only then says ready). */
        uv_close((uv_handle_t *)u->poll, handle_free_cb);
        u->poll = NULL;
    } else {
        close_channel(u);
    }
    if (u->frozen != NULL) {
        request_free(&u->frozen->base);
        u->frozen = NULL;
    }
}

/* --- the new process ------------------------------------------------------- */

int upgrade_channel(void)
{
    const char *v = getenv(UPGRADE_ENV);
    if (v == NULL)
        return -1;
    char *end;
    long fd = strtol(v, &end, 10);
    unsetenv(UPGRADE_ENV);
    if (*end != '\0' || fd < 0 || fd > INT_MAX)
        return -1;
    int sock = (int)fd;
    int type = 0;
    socklen_t len = sizeof(type);
    if (getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_SEQPACKET)
        return -1;
    fcntl(sock, F_SETFD, FD_CLOEXEC);
    return sock;
}

static int recv_bounded(int sock, struct handover_msg *m, int ms)
{
    set_blocking(sock);
    struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int rc = handover_recv(sock, m);
    return rc == -EAGAIN ? -ETIMEDOUT : rc;
}

static int grow(void **p, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return 0;
    size_t c = *cap > 0 ? *cap * 2 : 64;
    void *q = realloc(*p, c * size);
    if (q == NULL)
        return -ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

static int take_message(struct upgrade_inbound *in, struct handover_msg *m, size_t *cap_l,
                        size_t *cap_s, size_t *cap_f)
{
    if (m->kind == HANDOVER_LISTENER && m->len == sizeof(struct listener_msg) && m->n_fds == 1) {
        struct listener_msg lm;
        memcpy(&lm, m->payload, sizeof(lm));
        struct sockaddr_storage sa;
        socklen_t len = sizeof(sa);
        if (getsockname(m->fds[0], (struct sockaddr *)&sa, &len) < 0)
            return -errno;
        if (lm.kind == LISTENER_ADMIN) {
            if (in->admin_fd >= 0)
                return -EPROTO;
            in->admin_fd = m->fds[0];
            in->admin_addr = sa;
            m->fds[0] = -1;
            return 0;
        }
        size_t cap = *cap_l;
        if (grow((void **)&in->listen_fds, cap_l, in->n_listen, sizeof(int)) < 0 ||
            grow((void **)&in->listen_addrs, &cap, in->n_listen, sizeof(sa)) < 0)
            return -ENOMEM;
        in->listen_fds[in->n_listen] = m->fds[0];
        in->listen_addrs[in->n_listen++] = sa;
        m->fds[0] = -1;
        return 0;
    }
    if (m->kind == HANDOVER_SESSION && m->len == sizeof(struct session_record) && m->n_fds == 2) {
        if (grow((void **)&in->recs, cap_s, in->n_sessions, sizeof(*in->recs)) < 0 ||
            grow((void **)&in->fds, cap_f, 2 * in->n_sessions + 1, sizeof(int)) < 0)
            return -ENOMEM;
        struct session_record *r = &in->recs[in->n_sessions];
        memcpy(r, m->payload, sizeof(*r));
        r->route[sizeof(r->route) - 1] = '\0';
        in->fds[2 * in->n_sessions] = m->fds[0];
        in->fds[2 * in->n_sessions + 1] = m->fds[1];
        in->n_sessions++;
        m->fds[0] = m->fds[1] = -1;
        return 0;
    }
    return -EPROTO;
}

int upgrade_receive(int sock, struct upgrade_inbound *in)
{
    memset(in, 0, sizeof(*in));
    in->admin_fd = -1;
    struct hello_msg h = { .pid = getpid() };
    snprintf(h.version, sizeof(h.version), "%s", LIFELINE_VERSION);
    int rc = handover_send(sock, HANDOVER_HELLO, &h, sizeof(h), NULL, 0);
    struct handover_msg *m = malloc(sizeof(*m));
    size_t cap_l = 0, cap_s = 0, cap_f = 0;
    if (rc == 0 && m == NULL)
        rc = -ENOMEM;
    while (rc == 0) {
        rc = recv_bounded(sock, m, UPGRADE_RECEIVE_MS);
        if (rc < 0)
            break;
        if (m->kind == HANDOVER_SENT && m->len == sizeof(struct sent_msg)) {
            struct sent_msg sm;
            memcpy(&sm, m->payload, sizeof(sm));
            in->started_ns = sm.started_ns;
            in->upgrades_ok = sm.upgrades_ok;
            in->upgrades_failed = sm.upgrades_failed;
            in->cluster_lease = sm.cluster_lease;
            in->cluster_lease_age_ms = sm.cluster_lease_age_ms;
            memcpy(in->cluster_scope, sm.cluster_scope, sizeof(in->cluster_scope));
            in->cluster_scope[sizeof(in->cluster_scope) - 1] = '\0';
            if (sm.next_session_id > 0) /* ids stay unique across the processes */
                session_ids_above(sm.next_session_id - 1);
            break;
        }
        rc = m->kind == HANDOVER_ABORT ? -ECANCELED : take_message(in, m, &cap_l, &cap_s, &cap_f);
        handover_msg_close_fds(m);
    }
    free(m);
    if (rc < 0)
        log_error("upgrade: cannot take over", LF_STR("step", "receiving"),
                  LF_STR("error", strerror(-rc)));
    return rc;
}

int upgrade_adopted(int sock, size_t n_sessions, size_t n_listeners)
{
    struct adopted_msg am = { .sessions = n_sessions, .listeners = n_listeners };
    set_blocking(sock);
    int rc = handover_send(sock, HANDOVER_ADOPTED, &am, sizeof(am), NULL, 0);
    struct handover_msg *m = rc == 0 ? malloc(sizeof(*m)) : NULL;
    if (rc == 0 && m == NULL)
        rc = -ENOMEM;
    if (rc == 0) {
        rc = recv_bounded(sock, m, UPGRADE_ADOPT_MS);
        if (rc == 0) {
            handover_msg_close_fds(m);
            if (m->kind != HANDOVER_COMMIT)
                rc = m->kind == HANDOVER_ABORT ? -ECANCELED : -EPROTO;
        }
    }
    free(m);
    if (rc < 0)
        log_error("upgrade: cannot take over", LF_STR("step", "waiting for COMMIT"),
                  LF_STR("error", strerror(-rc)));
    return rc;
}

void upgrade_abort(int sock, const char *why)
{
    (void)handover_send(sock, HANDOVER_ABORT, why, strlen(why), NULL, 0);
}

void upgrade_inbound_free(struct upgrade_inbound *in)
{
    for (size_t i = 0; i < in->n_listen; i++)
        if (in->listen_fds[i] >= 0)
            close(in->listen_fds[i]);
    for (size_t i = 0; i < 2 * in->n_sessions; i++)
        if (in->fds[i] >= 0)
            close(in->fds[i]);
    if (in->admin_fd >= 0)
        close(in->admin_fd);
    free(in->listen_fds);
    free(in->listen_addrs);
    free(in->recs);
    free(in->fds);
    memset(in, 0, sizeof(*in));
    in->admin_fd = -1;
}
