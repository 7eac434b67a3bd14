/* Live upgrade: on SIGUSR2 the process starts its executable again, and the
 * new process takes over every listening socket and every established
 * session, so that no server sees an EOF that its client did not cause.
 *
 *   old (this module, on the supervisor's loop)        new (supervisor_run)
 *   spawn exe, same argv, LIFELINE_UPGRADE_FD=3 ───▶   reads its config
 *                                              ◀───   HELLO
 *   workers: stop accepting, hold each session once
 *   it relays with nothing left to write (FREEZE)
 *   LISTENER, SESSION ..., SENT                ───▶   checks, binds what is new,
 *                                                     adopts every session, starts
 *                                                     its workers held
 *                                              ◀───   ADOPTED (every worker runs)
 *   MAINPID=new to systemd, COMMIT             ───▶
 *   closes its copies (nothing sent), RELEASED ───▶   thaws: relays and accepts
 *   exits 0                                           ready, once the old is gone
 *
 * Until COMMIT the old process owns everything: any failure (the new one
 * exits, says ABORT, or misses a deadline) thaws it, and it serves on.
 * Nothing that can fail in the new process comes after ADOPTED. The old
 * process sends COMMIT only when it will relay no more, and the new one
 * relays only once the old has closed its copies (RELEASED, or its exit):
 * never both at once, and a reset the new one sends is a reset. */
#ifndef LIFELINE_UPGRADE_H
#define LIFELINE_UPGRADE_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "lifeline/metrics.h"
#include "lifeline/session.h"
#include "lifeline/worker.h"

#define UPGRADE_ENV "LIFELINE_UPGRADE_FD"
#define UPGRADE_CHILD_FD 3
/* Bounds on each step, in the old process. */
#define UPGRADE_HELLO_MS 10000                       /* start, read the config, say hello */
#define UPGRADE_SETTLE_MS 5000                       /* sessions connecting or closing finish */
#define UPGRADE_FREEZE_MS (UPGRADE_SETTLE_MS + 2000) /* every worker has answered */
#define UPGRADE_ADOPT_MS 10000                       /* the new process adopts what was sent */
/* And in the new one: everything must have come by then. */
#define UPGRADE_RECEIVE_MS (UPGRADE_SETTLE_MS + UPGRADE_ADOPT_MS)
/* How long a new process waits for the old one to close its copies of the
 * sockets (RELEASED) before it relays, and to exit before it says ready. */
#define UPGRADE_RELEASE_MS 5000
#define UPGRADE_OLD_EXIT_MS 10000
/* After the channel's EOF, how long the old process waits for the new
 * one's exit status, to name it in the log. */
#define UPGRADE_EXIT_GRACE_MS 200

/* What an upgrade starts again: the executable's path as it was at start
 * (the file there now is what runs: an upgraded package takes effect) and
 * the command line. */
struct upgrade_exec {
    char exe[PATH_MAX];
    char **argv;
};

/* The path the process was started by, made absolute at start without
 * resolving symbolic links: argv[0] when it names a path, else the first
 * match in $PATH, else /proc/self/exe. 0 or -errno. */
int upgrade_exec_init(struct upgrade_exec *e, char **argv);

enum upgrade_phase {
    UPGRADE_IDLE,
    UPGRADE_SPAWNED,   /* waiting for HELLO */
    UPGRADE_FREEZING,  /* the workers are settling their sessions */
    UPGRADE_SENT,      /* waiting for ADOPTED */
    UPGRADE_THAWING,   /* failed: the workers are resuming */
    UPGRADE_COMMITTED, /* the new process has it all: this one releases its copies, ends */
};

/* The old process's side. The owner sets the fields above `phase`, then
 * calls upgrade_init() once. */
struct upgrade {
    uv_loop_t *loop; /* the supervisor's */
    struct worker_set *workers;
    struct process_stats *ps;
    const struct upgrade_exec *exec;
    int admin_fd; /* the admin endpoint's listening socket, or -1 */
    /* Called once the new process has everything: stop serving and exit 0. */
    void (*committed)(struct upgrade *u);
    /* Called once a failed upgrade has thawed the workers: serving again. */
    void (*ended)(struct upgrade *u);
    struct cluster *cluster; /* its lease goes to the new process; NULL: none */
    void *owner;

    enum upgrade_phase phase;
    int failed;          /* this attempt failed (logged, counted): thaw once frozen */
    int sock;            /* our end of the channel, or -1 */
    uv_poll_t *poll;     /* readable sock; freed when its handle closes */
    uv_timer_t deadline; /* the current step's bound */
    uv_signal_t sigchld; /* reaps a new process that ends before it commits */
    int child_pid;
    int child_running;             /* not reaped yet */
    int handles;                   /* deadline and sigchld are initialised */
    uint64_t started_ns;           /* uv_hrtime() at SIGUSR2 */
    struct request *freezing;      /* the FREEZE asked, until it completes */
    struct freeze_request *frozen; /* the workers' answers, while SENT */
    int channel_closed;            /* EOF seen: failing once the exit status is known */
    size_t n_sessions, n_listeners;
};

/* Initialises the handles on u->loop. 0 or a negative UV error. */
int upgrade_init(struct upgrade *u);
/* SIGUSR2. Logs `upgrade refused` (and returns) when one is running or
 * this process is PID 1; else `upgrade starting`. */
void upgrade_start(struct upgrade *u);
/* A shutdown signal: a running upgrade fails (the workers thaw first). */
void upgrade_cancel(struct upgrade *u, const char *why);
int upgrade_busy(const struct upgrade *u);
/* Closes the handles, for the loop's end. */
void upgrade_close(struct upgrade *u);

/* --- the new process's side ---------------------------------------------- */

/* What the old process sent. Every descriptor is owned by it until taken
 * (set to -1); upgrade_inbound_free() closes the rest. */
struct upgrade_inbound {
    int *listen_fds; /* route listeners, with their bound addresses */
    struct sockaddr_storage *listen_addrs;
    size_t n_listen;
    int admin_fd; /* -1 if none */
    struct sockaddr_storage admin_addr;
    struct session_record *recs;
    int *fds; /* 2 per record: client, server */
    size_t n_sessions;
    uint64_t started_ns; /* the old process's uv_hrtime() at SIGUSR2 */
    uint64_t upgrades_ok, upgrades_failed;
    int64_t cluster_lease;         /* the old process's etcd lease; 0: none */
    uint64_t cluster_lease_age_ms; /* since its last successful renewal was sent */
    char cluster_scope[640];       /* what it belongs to (cluster_scope()) */
};

/* The channel's descriptor from the environment (removed from it), or -1
 * when this process was not started by an upgrade. */
int upgrade_channel(void);
/* Says HELLO and receives everything up to SENT (bounded). 0, or -errno
 * (logged). */
int upgrade_receive(int sock, struct upgrade_inbound *in);
/* Says ADOPTED and waits for COMMIT (bounded). 0, or -errno (logged): the
 * old process keeps everything, and this one must exit without touching it. */
int upgrade_adopted(int sock, size_t n_sessions, size_t n_listeners);
/* Tells the old process why this one gives up (best effort). */
void upgrade_abort(int sock, const char *why);
void upgrade_inbound_free(struct upgrade_inbound *in);

#endif
