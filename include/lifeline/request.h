/* Questions the supervisor asks every worker at once, each a typed message with its own completion. */
#ifndef LIFELINE_REQUEST_H
#define LIFELINE_REQUEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct config;
struct session_record;

enum request_type {
    REQUEST_LIST,   /* every session as JSON (admin /sessions) */
    REQUEST_KILL,   /* close one session, reason admin_kill */
    REQUEST_RELOAD, /* serve a new config to new connections */
    /* A live upgrade (upgrade.h), in this order: */
    REQUEST_FREEZE,  /* stop accepting; hold every session once it relays and has
                      * written what it read; answer with them (freeze_request) */
    REQUEST_THAW,    /* the upgrade failed: serve again */
    REQUEST_RELEASE, /* the new process has everything: close our copies, end */
};

/* The common part: posted to every worker; each answers once, writing its
 * answer under `lock`; the last answer wakes the asker's loop, where
 * `complete` runs. The asker owns the request and frees it in `complete`
 * (request_free). */
struct request {
    enum request_type type;
    void (*complete)(struct request *r); /* on the asker's loop, once */
    void *owner;                         /* the asker's */
    uv_mutex_t lock;                     /* guards pending and every answer field */
    size_t pending;                      /* answers still due */
    uv_async_t done;
};

struct list_request {
    struct request base;
    char **parts; /* one JSON array per worker (by number), or NULL */
    size_t n_parts;
};

struct kill_request {
    struct request base;
    uint64_t session_id;
    int found; /* a worker had the session */
    int busy;  /* ... and could not close it: a live upgrade is moving it */
};

struct reload_request {
    struct request base;
    /* The config (the asker's reference, held until the request completes:
     * a worker that serves it takes its own), its listen addresses resolved, and the sockets to add: fds[worker * n_routes +
     * route], -1 where the worker keeps its listener on that address. A
     * worker sets the entries it adopts to -1. */
    struct config *cfg;
    const struct sockaddr_storage *addrs;
    int *fds;
    int failed; /* a worker could not serve every route */
};

/* One worker's answer to REQUEST_FREEZE. The descriptors stay the
 * worker's: they are sent to the new process, then released or thawed. */
struct worker_export {
    struct session_record *recs; /* malloc'd, n of them */
    int *fds;                    /* 2 per record: client, server */
    size_t n;
    int *listen_fds; /* its listening sockets */
    size_t n_listen;
    size_t busy;    /* sessions still connecting or closing at the deadline */
    size_t writing; /* sessions whose peer took none of their bytes for SETTLE_STALL_MS */
};

struct freeze_request {
    struct request base;
    uint64_t settle_ms;          /* how long sessions may take to settle */
    struct worker_export *parts; /* by worker number */
    size_t n_parts;
    int failed; /* a worker could not freeze (draining, out of memory) */
};

/* Makes a request of this type for n_workers (all fields zero but these).
 * NULL on ENOMEM. */
struct request *request_new(enum request_type type, size_t n_workers,
                            void (*complete)(struct request *r), void *owner);

/* Arms the request on the asker's loop before it is posted to n_posted
 * workers. Returns 0 or a negative UV error. */
int request_begin(struct request *r, uv_loop_t *loop, size_t n_posted);

/* A worker has written its answer (under r->lock) or will not answer (its
 * loop ended): one answer fewer due. Thread-safe. */
void request_answered(struct request *r);

/* Frees a request once complete (or one never begun). */
void request_free(struct request *r);

#endif
