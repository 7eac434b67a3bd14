/* One client connection and its upstream connection: state machine, relay, close. */
#ifndef LIFELINE_SESSION_H
#define LIFELINE_SESSION_H

#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <cjson/cJSON.h>
#include <uv.h>

#include "lifeline/config.h"
#include "lifeline/deadline.h"
#include "lifeline/reason.h"
#include "lifeline/registry.h"
#include "lifeline/table.h"

struct budget;
struct log_limit;
struct pool;
struct route_stats;
struct session;
struct session_host;

/* A reader waiting for buffer memory (buffer_total_bytes spent), on its
 * host's queue while budget_waiter_queued(). Two per session, so no flag
 * beside the link: one not on a queue has a NULL tqe_prev (a zeroed waiter
 * starts so, and the host marks it again when it takes it off). */
struct budget_waiter {
    TAILQ_ENTRY(budget_waiter) link;
};
TAILQ_HEAD(budget_waiters, budget_waiter);

static inline int budget_waiter_queued(const struct budget_waiter *bw)
{
    return bw->link.tqe_prev != NULL;
}

/* Marks a waiter that was just taken off its queue. */
static inline void budget_waiter_unqueued(struct budget_waiter *bw) { bw->link.tqe_prev = NULL; }

/* What a session needs of the loop that runs it, and all it may touch
 * there: a worker lends one to each of its sessions (and a unit test its
 * own). The functions run on the host's loop, except `post`. */
struct session_host {
    uv_loop_t *loop;                /* its `data` points at this host */
    struct deadlines *deadlines;    /* on loop, firing session_deadline_fire */
    struct pool *pool;              /* relay buffers */
    struct budget *budget;          /* descriptors and buffer memory, process-wide */
    struct registry *registry;      /* client identities (registry.h: its messages
                                      * come back through session_deliver) */
    struct log_limit *upstream_log; /* failed tries and reconnects: bounded lines */
    int id;                         /* the worker's number: a session_ref's worker */

    /* bw waits for buffer memory; session_budget_retry(bw) is called when
     * there may be some. wait on a queued bw, or leave on one that is not,
     * does nothing. */
    void (*wait_budget)(struct session_host *h, struct budget_waiter *bw);
    void (*leave_budget)(struct session_host *h, struct budget_waiter *bw);
    /* A descriptor that the budget had counted could not be had (EMFILE:
     * something outside the budget took it; ENFILE: the system is out):
     * accept no more for a while. */
    void (*fds_exhausted)(struct session_host *h, const char *route, int err);
    /* The session is closed: counted and about to be logged (whoever reads
     * the line then finds it gone), its handles closing. Once per session. */
    void (*closed)(struct session_host *h, struct session *s);
    /* The session's memory is gone, and both its descriptors are closed.
     * Once per session, after `closed`. */
    void (*freed)(struct session_host *h);
};

/* What the host keeps of each session: its list, its index by id, and the
 * session's slot in the connection limits. The session never touches it. */
struct session_link {
    LIST_ENTRY(session_link) list;
    struct table_node by_id;
    struct limit_route *limit; /* counted in the shared limits, or NULL */
};
LIST_HEAD(session_list, session_link);

/* A connection to start a session for. */
struct session_params {
    struct config *cfg;               /* the session takes a reference */
    const struct route_config *route; /* in cfg */
    struct route_stats *stats;        /* the route's counters on this host */
    int fd;                           /* accepted, non-blocking */
    const struct sockaddr *peer;      /* as accept4() gave it */
    socklen_t peer_len;
};

/* Makes the session of an accepted connection; it does nothing yet, so
 * that the host can list it before session_run(). Returns 0 and *out, or a
 * negative UV error: then the fd is closed, nothing is left that the host
 * must track (`closed` and `freed` are never called), and the host gives
 * back whatever it took for the connection. */
int session_new(struct session_host *h, const struct session_params *p, struct session **out);

/* Starts it: claims the client identity, reads, connects upstream. It may
 * close at once (rejected), calling h->closed before it returns. */
void session_run(struct session *s);

/* Ends the session with this reason (the first reason given wins). Safe to
 * call in any state and more than once; REASON_SHUTDOWN also cuts short a
 * session that is still flushing. */
void session_close(struct session *s, enum reason reason);

/* A message of the registry's to this session (on its host's loop). */
void session_deliver(struct session *s, enum registry_msg msg);

/* A reader that waits for buffer memory, asked whether it may read again
 * (bw has left the queue): it resumes, or waits again. */
void session_budget_retry(struct budget_waiter *bw);

/* The `fire` of the host's deadlines: a session's timer is due. */
void session_deadline_fire(struct deadline *d);

/* Process-wide id, the address of a session in messages. */
uint64_t session_id(const struct session *s);

/* The client's address, as accepted. */
const struct sockaddr *session_peer(const struct session *s);

/* The host's part of the session, and back. */
struct session_link *session_link(struct session *s);
struct session *session_of_link(struct session_link *l);

/* --- live upgrade ------------------------------------------------------- */

/* A relaying session as it moves to another process: everything but its
 * two sockets (which travel as descriptors) and the bytes in their kernel
 * buffers (which stay there). Times are uv_now() values, CLOCK_MONOTONIC
 * milliseconds, so the same on both sides of the move. */
struct session_record {
    char route[64]; /* the route's name, NUL-terminated */
    uint64_t id;
    uint64_t bytes_from_client;
    uint64_t bytes_from_server;
    uint64_t started_ms;
    uint64_t connected_ms;
    uint64_t last_rx_ms; /* the silence deadline is this plus silence_ms */
    struct sockaddr_storage peer;
    uint32_t server;        /* index of the server in the route's list */
    uint16_t upstream_port; /* our local port of the server connection */
    uint8_t up_open;        /* client -> server still relays (else its FIN went out) */
    uint8_t down_open;      /* server -> client likewise */
    uint8_t eof_reason;     /* enum reason of the first EOF, when one direction ended */
};

/* Stops a relaying session's reading, so that what it holds can be written
 * out and the session moved; other states are left to settle first. */
void session_hold(struct session *s);

/* Whether a held session can move. */
enum session_settle {
    SETTLE_READY,   /* relaying, held, nothing read waiting to be written */
    SETTLE_WRITING, /* relaying and held, bytes waiting for a peer to take them */
    SETTLE_BUSY,    /* connecting, waiting for the registry, or closing */
};
/* *unwritten: the bytes read and not yet written (SETTLE_WRITING). */
enum session_settle session_settle(const struct session *s, uint64_t *unwritten);

/* Writes the record of a settled session and its two descriptors (client,
 * server) into fds; stops watching its silence. The session keeps its sockets
 * until session_release() or session_thaw(). */
void session_export(struct session *s, struct session_record *rec, int fds[2]);

/* A held session reads again and its silence is watched for what is left
 * of it (an upgrade rolled back, or a session just adopted). */
void session_thaw(struct session *s);

/* The new process has the session: closes this process's copies of its
 * sockets and frees it, sending nothing (no FIN, no reset) and logging
 * nothing. The host's `closed` and `freed` are called as for a close. */
void session_release(struct session *s);

/* What session_adopt() needs besides the record. */
struct session_adopt_params {
    struct config *cfg;               /* the session takes a reference */
    const struct route_config *route; /* in cfg, of the record's route name */
    struct route_stats *stats;
    const struct session_record *rec;
    int client_fd; /* owned by the session from the call on, even on failure */
    int upstream_fd;
};

/* Makes a held, relaying session of another process's record, and claims
 * its client identity (a new process's registry is empty: it gets it).
 * session_thaw() starts it on its host's loop. Returns 0 and *out, or a
 * negative UV error with both fds closed (nothing for the host to track). */
int session_adopt(struct session_host *h, const struct session_adopt_params *p,
                  struct session **out);

/* Session ids handed out from now on are above `id` (an adopted session
 * keeps its own; a new process starts above the old one's next id). */
void session_ids_above(uint64_t id);
/* The id the next session will get. */
uint64_t session_next_id(void);

/* The session as a JSON object (admin /sessions), or NULL on ENOMEM.
 * Printed unformatted, it always fits SESSION_JSON_MAX bytes. */
#define SESSION_JSON_MAX 512
cJSON *session_describe(const struct session *s);

#endif
