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

/* Private to worker.c: the supervisor and the sessions see only functions
 * (the sessions through their struct session_host). */
struct worker;

/* Lines a second, per worker, about failed upstream tries and reconnects;
 * the rest are counted in the next line's `suppressed` field. */
#define WORKER_UPSTREAM_LOG_PER_S 10

/* What the supervisor asks of a worker; read by the worker's loop. */
enum worker_command {
    WORKER_CMD_NONE,
    WORKER_CMD_DRAIN,    /* stop accepting; close what is left at the drain deadline */
    WORKER_CMD_STOP,     /* close every session now */
};

/* Supervisor requests that every worker answers. */
enum worker_msg_type {
    WORKER_MSG_EVICT,    /* a session's: close that session, a new connection replaces it */
    WORKER_MSG_GO,       /* a session's: that session now owns its identity */
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

/* Where the worker is in its life; written by the worker, read by the supervisor. */
enum worker_phase {
    WORKER_PHASE_STARTING,
    WORKER_PHASE_RUNNING,
    WORKER_PHASE_FAILED,   /* could not start; worker_start_error() says why */
    WORKER_PHASE_EXITED,
};

/* What every worker shares, owned by the supervisor. */
struct worker_shared {
    struct worker *const *peers; /* every worker, by number, this one included */
    size_t n_peers;
    struct registry *registry;
    struct limits *limits;
    struct budget *budget;
    uv_async_t *notify;          /* the supervisor's: sent on every phase change */
};

/* Makes worker number `id`, to serve `cfg` (it takes a reference) on the
 * listening fds bound to addrs (one per route, in route order; the worker
 * owns the fds from now on, even on failure). Returns 0 and *out, or a
 * negative UV error. `shared` must outlive the worker. */
int worker_new(struct worker **out, int id, struct config *cfg,
               const struct sockaddr_storage *addrs, const int *fds,
               const struct worker_shared *shared);
/* Starts the thread. Returns 0 or a negative UV error. */
int worker_start(struct worker *w);
/* Thread-safe: asks the worker to drain or stop. */
void worker_send(struct worker *w, enum worker_command cmd);
/* Waits for the thread and frees the worker. */
void worker_join(struct worker *w);
/* Frees a worker that was made but never started. */
void worker_destroy(struct worker *w);

/* Thread-safe: posts a message to worker `to` (a session's, by id, or a
 * gather's). Returns 0, UV_ENOMEM, or UV_ECANCELED when the worker's loop
 * has ended. */
int worker_post(struct worker *to, enum worker_msg_type type, uint64_t session_id,
                struct gather *g);

/* Thread-safe readers for the supervisor. */
int worker_id(const struct worker *w);
enum worker_phase worker_phase(struct worker *w);
int worker_start_error(const struct worker *w);   /* valid once the phase is FAILED */
uint64_t worker_stalled_ms(struct worker *w);      /* since the loop last turned */
struct worker_stats *worker_stats(struct worker *w);

#endif
