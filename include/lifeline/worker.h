/* A worker thread: one uv_loop, its listening sockets, its sessions. */
#ifndef LIFELINE_WORKER_H
#define LIFELINE_WORKER_H

#include <stdatomic.h>
#include <stddef.h>
#include <uv.h>

#include "lifeline/budget.h"
#include "lifeline/config.h"
#include "lifeline/limits.h"
#include "lifeline/metrics.h"
#include "lifeline/pool.h"
#include "lifeline/reason.h"
#include "lifeline/registry.h"

struct session;
struct worker;

/* Lines a second, per worker, about failed upstream tries and reconnects;
 * the rest are counted in the next line's `suppressed` field. */
#define WORKER_UPSTREAM_LOG_PER_S 10

/* One route's listening socket on one worker (SO_REUSEPORT shares the
 * port). A reload that keeps the address keeps the socket, and with it the
 * connections queued on it, and points it at the new route config. */
struct listener {
    uv_poll_t poll;                    /* readable: connections to accept; data is NULL until initialised */
    struct listener *next;             /* the worker's list */
    struct worker *w;
    struct sockaddr_storage addr;      /* what it is bound to */
    const struct route_config *route;  /* in the worker's current config */
    struct route_stats *stats;         /* the route's counters on this worker */
    struct limit_route *limit;         /* the route's open sessions, all workers */
    int fd;                            /* handed over by the supervisor; the listener's */
};

/* A reader waiting for buffer memory (buffer_total_bytes spent): a node of
 * its worker's circular list, detached when prev and next are NULL. */
struct budget_waiter {
    struct budget_waiter *prev, *next;
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
    WORKER_MSG_DESCRIBE, /* add every session to the gather (admin /sessions) */
    WORKER_MSG_KILL,     /* close that session, reason admin_kill, if it is here */
    WORKER_MSG_RELOAD,   /* serve the gather's config to new connections */
};

/* A question the supervisor asks every worker at once; the last worker to
 * answer wakes the supervisor through `done`. */
struct gather {
    enum worker_msg_type type;   /* DESCRIBE, KILL or RELOAD */
    uint64_t session_id;         /* KILL */
    /* RELOAD: the config (one reference per worker it was posted to), its
     * listen addresses resolved, and the sockets to add: fds[worker *
     * n_routes + route], -1 where the worker keeps its listener on that
     * address. A worker sets the entries it adopts to -1. */
    struct config *cfg;
    const struct sockaddr_storage *addrs;
    int *fds;
    uv_mutex_t lock;
    size_t pending;              /* workers yet to answer */
    char **parts;                /* DESCRIBE: one JSON fragment per worker */
    size_t n_parts;
    int found;                   /* KILL: a worker had the session; RELOAD: one failed */
    uv_async_t done;             /* on the supervisor's loop */
    void *owner;                 /* the supervisor's request */
};

struct worker_msg {
    struct worker_msg *next;
    enum worker_msg_type type;
    uint64_t session_id;
    struct gather *gather;       /* DESCRIBE and KILL */
};

/* Where the worker is in its life; written by the worker, read by the supervisor. */
enum worker_phase {
    WORKER_PHASE_STARTING,
    WORKER_PHASE_RUNNING,
    WORKER_PHASE_FAILED,   /* could not start; start_error says why */
    WORKER_PHASE_EXITED,
};

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

struct worker {
    int id;
    struct config *cfg;           /* for new connections; a reference */
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;            /* the supervisor's commands arrive here */
    uv_timer_t drain_timer;
    struct listener *listeners;   /* one per route of cfg */
    struct pool pool;
    struct session *sessions;     /* every live session, for drain and shutdown */
    size_t n_sessions;
    int draining;                 /* loop-local: listeners closed, waiting for sessions */
    enum accept_state accept;     /* loop-local */
    uv_timer_t accept_retry;      /* ACCEPT_PAUSED: try again */
    uint64_t accepting_since_ms;  /* ACCEPT_RETRYING: when accepting resumed */

    struct worker *peers;         /* every worker, this one included */
    size_t n_peers;
    struct registry *registry;    /* shared by every worker */
    struct limits *limits;        /* shared by every worker */
    struct budget *budget;        /* descriptors and buffer memory, shared by every worker */
    struct log_limit deny_log;    /* "connection denied": one line a second */
    struct log_limit upstream_log; /* failed tries and reconnects: WORKER_UPSTREAM_LOG_PER_S */
    struct log_limit accept_log;  /* "accept failed": one line a second */
    struct worker_stats stats;    /* per route, written only by this loop */

    uv_mutex_t inbox_lock;        /* guards inbox only */
    struct worker_msg *inbox;     /* posted by any thread, drained by this loop */
    struct worker_msg *inbox_tail;
    int inbox_closed;             /* the loop is ending: messages are dropped */

    struct budget_waiter budget_waiters; /* the list's head: readers waiting for memory */
    uv_timer_t budget_retry;      /* armed while someone waits */
    uv_timer_t tick;              /* proves the loop turns: see last_tick_ms */
    size_t freed_since_trim;      /* sessions freed since memory was last trimmed */
    _Atomic uint64_t last_tick_ms;

    _Atomic int command;          /* enum worker_command */
    _Atomic int phase;            /* enum worker_phase */
    int start_error;              /* valid once phase is FAILED */
    uv_async_t *notify;           /* the supervisor's: sent on every phase change */
};

/* Prepares a worker that will serve `cfg` (it takes a reference) on the
 * listening fds bound to addrs (one per route, in route order; the worker
 * owns the fds from now on, even on failure). */
int worker_init(struct worker *w, int id, struct config *cfg,
                const struct sockaddr_storage *addrs, const int *fds, uv_async_t *notify,
                struct worker *peers, size_t n_peers, struct registry *registry,
                struct limits *limits, struct budget *budget);
/* Starts the thread. Returns 0 or a negative UV error. */
int worker_start(struct worker *w);
/* Thread-safe: asks the worker to drain or stop. */
void worker_send(struct worker *w, enum worker_command cmd);
/* Waits for the thread and frees what the worker owns. */
void worker_join(struct worker *w);
/* Frees a worker that was initialised but never started. */
void worker_destroy(struct worker *w);

/* Thread-safe: posts a message to a session on worker `to`. Returns 0,
 * UV_ENOMEM, or UV_ECANCELED when the worker's loop has ended. */
int worker_post(struct worker *to, enum worker_msg_type type, uint64_t session_id,
                struct gather *g);

/* Thread-safe: milliseconds since the worker's loop last turned. */
uint64_t worker_stalled_ms(struct worker *w);

/* Out of file descriptors (err: UV_EMFILE, ...): stop accepting for a
 * moment, so that new connections wait in the kernel's queue while the open
 * sessions go on. Logged once until an accept works again. */
void worker_pause_accepting(struct worker *w, const char *route, int err);

/* Buffer memory is spent: `bw` waits, and every BUDGET_RETRY_MS its owner
 * is asked (session_budget_retry) whether it may read again. Idempotent. */
void worker_wait_budget(struct worker *w, struct budget_waiter *bw);
/* `bw` stops waiting (it reads again, or its session ends). Idempotent. */
void worker_unwait_budget(struct budget_waiter *bw);

/* Called by the session module when a session is gone for good. */
void worker_session_freed(struct worker *w);

#endif
