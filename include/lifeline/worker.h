/* A worker thread: one uv_loop, its listening sockets, its sessions. */
#ifndef LIFELINE_WORKER_H
#define LIFELINE_WORKER_H

#include <stdatomic.h>
#include <stddef.h>
#include <uv.h>

#include "lifeline/config.h"
#include "lifeline/pool.h"
#include "lifeline/reason.h"
#include "lifeline/registry.h"

struct session;
struct worker;

/* One route's listening socket on one worker (SO_REUSEPORT shares the port). */
struct listener {
    uv_tcp_t tcp;
    struct worker *w;
    const struct route_config *route;
    int fd;              /* handed over by the supervisor; owned by tcp once opened */
};

/* What the supervisor asks of a worker; read by the worker's loop. */
enum worker_command {
    WORKER_CMD_NONE,
    WORKER_CMD_DRAIN,    /* stop accepting; close what is left at the drain deadline */
    WORKER_CMD_STOP,     /* close every session now */
};

/* A message from one worker's session to a session on another (or the same)
 * worker: the takeover path. */
enum worker_msg_type {
    WORKER_MSG_EVICT,    /* close that session: a new connection replaces it */
    WORKER_MSG_GO,       /* that session now owns its identity: connect upstream */
};

struct worker_msg {
    struct worker_msg *next;
    enum worker_msg_type type;
    uint64_t session_id;
};

/* Counters a worker keeps for its own sessions; read from other threads. */
struct worker_stats {
    _Atomic uint64_t closes[REASON_COUNT];
    _Atomic uint64_t takeovers;   /* sessions that replaced an older one */
};

/* Where the worker is in its life; written by the worker, read by the supervisor. */
enum worker_phase {
    WORKER_PHASE_STARTING,
    WORKER_PHASE_RUNNING,
    WORKER_PHASE_FAILED,   /* could not start; start_error says why */
    WORKER_PHASE_EXITED,
};

struct worker {
    int id;
    const struct config *cfg;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;            /* the supervisor's commands arrive here */
    uv_timer_t drain_timer;
    struct listener *listeners;   /* one per route */
    size_t n_listeners;
    struct pool pool;
    struct session *sessions;     /* every live session, for drain and shutdown */
    size_t n_sessions;
    int draining;                 /* loop-local: listeners closed, waiting for sessions */

    struct worker *peers;         /* every worker, this one included */
    size_t n_peers;
    struct registry *registry;    /* shared by every worker */
    struct worker_stats stats;

    uv_mutex_t inbox_lock;        /* guards inbox only */
    struct worker_msg *inbox;     /* posted by any thread, drained by this loop */
    struct worker_msg *inbox_tail;
    int inbox_closed;             /* the loop is ending: messages are dropped */

    _Atomic int command;          /* enum worker_command */
    _Atomic int phase;            /* enum worker_phase */
    int start_error;              /* valid once phase is FAILED */
    uv_async_t *notify;           /* the supervisor's: sent on every phase change */
};

/* Prepares a worker that will serve `cfg` on the listening fds (one per
 * route, in route order; the worker owns them from now on). */
int worker_init(struct worker *w, int id, const struct config *cfg, const int *fds,
                uv_async_t *notify, struct worker *peers, size_t n_peers,
                struct registry *registry);
/* Starts the thread. Returns 0 or a negative UV error. */
int worker_start(struct worker *w);
/* Thread-safe: asks the worker to drain or stop. */
void worker_send(struct worker *w, enum worker_command cmd);
/* Waits for the thread and frees what the worker owns. */
void worker_join(struct worker *w);
/* Frees a worker that was initialised but never started. */
void worker_destroy(struct worker *w);

/* Thread-safe: posts a message to a session on worker `to`. Returns 0 or
 * UV_ENOMEM. */
int worker_post(struct worker *to, enum worker_msg_type type, uint64_t session_id);

/* Called by the session module when a session is gone for good. */
void worker_session_freed(struct worker *w);

#endif
