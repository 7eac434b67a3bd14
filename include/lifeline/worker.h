/* A worker thread: one uv_loop, its listening sockets, admission, its sessions. */
#ifndef LIFELINE_WORKER_H
#define LIFELINE_WORKER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "lifeline/budget.h"
#include "lifeline/config.h"
#include "lifeline/limits.h"
#include "lifeline/metrics.h"
#include "lifeline/registry.h"
#include "lifeline/request.h"

/* Private to worker.c: the supervisor and the sessions see only functions
 * (the sessions through their struct session_host). */
struct worker;

/* Lines a second, per worker, about failed upstream tries and reconnects;
 * the rest are counted in the next line's `suppressed` field. */
#define WORKER_UPSTREAM_LOG_PER_S 10

/* What the supervisor asks of a worker; read by the worker's loop. */
enum worker_command {
    WORKER_CMD_NONE,
    WORKER_CMD_DRAIN, /* stop accepting; close what is left at the drain deadline */
    WORKER_CMD_STOP,  /* close every session now */
};

/* Where the worker is in its life; written by the worker, read by the supervisor. */
enum worker_phase {
    WORKER_PHASE_STARTING,
    WORKER_PHASE_RUNNING,
    WORKER_PHASE_FAILED, /* could not start; worker_start_error() says why */
    WORKER_PHASE_EXITED,
};

/* What every worker shares, owned by the supervisor. */
struct worker_shared {
    struct registry *registry;
    struct limits *limits;
    struct budget *budget;
    uv_async_t *notify; /* the supervisor's: sent on every phase change */
};

/* Makes worker number `id`, to serve `cfg` (it takes a reference) on the
 * listening fds bound to addrs (one per route, in route order; the worker
 * owns the fds from now on, even on failure). Returns 0 and *out, or a
 * negative UV error. `shared` must outlive the worker. */
int worker_new(struct worker **out, int id, struct config *cfg,
               const struct sockaddr_storage *addrs, const int *fds,
               const struct worker_shared *shared);
/* Before worker_start(), for a live upgrade: one more listening socket for
 * route index `route` of the worker's config (an upgrade to fewer workers
 * gives a worker several sockets of an address), owned by the worker from
 * the call on. 0 or UV_ENOMEM (fd closed). */
int worker_add_listener(struct worker *w, int fd, const struct sockaddr_storage *addr,
                        size_t route);
/* Before worker_start(): a session the old process handed over, held until
 * the loop starts; the fds are the worker's from the call on. 0, UV_ENOENT
 * when the config has no route of that name, or UV_ENOMEM. */
struct session_record;
int worker_adopt_session(struct worker *w, const struct session_record *rec, int client_fd,
                         int upstream_fd);
/* Before worker_start(), for a live upgrade: the worker starts held,
 * accepting nothing and relaying none of its sessions (registry messages
 * wait too) until REQUEST_THAW, which the new process asks once the old
 * one has committed and closed its copies. */
void worker_hold(struct worker *w);
/* Starts the thread. Returns 0 or a negative UV error. */
int worker_start(struct worker *w);
/* Thread-safe: asks the worker to drain or stop. */
void worker_send(struct worker *w, enum worker_command cmd);
/* Waits for the thread and frees the worker. */
void worker_join(struct worker *w);
/* Frees a worker that was made but never started. */
void worker_destroy(struct worker *w);

/* The supervisor's workers, as the modules of its thread see them. */
struct worker_set {
    struct worker **w; /* by number */
    size_t n;          /* made: sockets are bound for each */
    size_t n_started;  /* whose thread was started: the ones asked */
};

/* Begins r on `loop` and asks every started worker; r->complete runs on
 * `loop` once each has answered (at once when none could be reached).
 * Returns 0, or a negative UV error when r could not be begun: nothing was
 * asked, and r is the caller's to free. */
int worker_set_ask(struct worker_set *ws, uv_loop_t *loop, struct request *r);

/* The registry's way to its sessions (registry_deliver_fn; ctx is the
 * struct worker_set): posts msg to the worker that runs `to`. */
void worker_deliver(void *ctx, struct session_ref to, enum registry_msg msg);

/* Has worker w's loop not turned for WORKER_STALL_MS? */
#define WORKER_STALL_MS 2000
int worker_stuck(struct worker *w);

/* Thread-safe: asks worker `to` a request (request.h); it answers through
 * request_answered(). Returns 0, UV_ENOMEM, or UV_ECANCELED when the
 * worker's loop has ended (it will not answer: it has no sessions). */
int worker_ask(struct worker *to, struct request *r);

/* Thread-safe readers for the supervisor. */
int worker_id(const struct worker *w);
enum worker_phase worker_phase(struct worker *w);
int worker_start_error(const struct worker *w); /* valid once the phase is FAILED */
uint64_t worker_stalled_ms(struct worker *w);   /* since the loop last turned */
struct worker_stats *worker_stats(struct worker *w);

#endif
