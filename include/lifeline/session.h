/* One client connection and its upstream connection: state machine, relay, close. */
#ifndef LIFELINE_SESSION_H
#define LIFELINE_SESSION_H

#include <sys/socket.h>

#include "lifeline/reason.h"
#include "lifeline/worker.h"

struct session;

/* Starts the session of a connection accepted on the listener from peer
 * (as accept4() gave it); fd is the session's from now on, and so are the
 * BUDGET_FDS_PER_SESSION descriptors the caller took from the worker's
 * budget. Returns 0 or a negative UV error (nothing is left behind then). */
int session_accept(struct worker *w, struct listener *l, int fd, const struct sockaddr *peer,
                   socklen_t peer_len);

/* Ends the session with this reason (the first reason given wins). Safe to
 * call in any state and more than once; REASON_SHUTDOWN also cuts short a
 * session that is still flushing. */
void session_close(struct session *s, enum reason reason);

/* The session's identity now belongs to it: go on and connect upstream. */
void session_go(struct session *s);

/* The worker asks a reader that waits for buffer memory whether it may read
 * again (bw is detached then): it resumes, or waits again. */
void session_budget_retry(struct budget_waiter *bw);

/* Process-wide id, the address of a session in worker messages. */
uint64_t session_id(const struct session *s);

/* Writes the session as one JSON object (admin /sessions); returns its
 * length. SESSION_JSON_MAX is always enough. */
#define SESSION_JSON_MAX 512
int session_json(const struct session *s, char *buf, size_t len);

/* The next session in the worker's list, for walking it while closing. */
struct session *session_next(const struct session *s);

#endif
