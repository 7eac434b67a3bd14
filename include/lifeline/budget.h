/* Process-wide budgets the workers draw on: file descriptors and relay-buffer memory. */
#ifndef LIFELINE_BUDGET_H
#define LIFELINE_BUDGET_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Descriptors one session may hold at once: its client and its server
 * connection. Taken before the client is accepted, so that an accepted
 * client can always get its server connection. */
#define BUDGET_FDS_PER_SESSION 2

/* Shared by every worker (atomics, no lock). Each count has one writer
 * path per worker: taken when a resource is about to be used, given back
 * where it is released, so that `used` never lags behind the truth in the
 * direction that would overspend. */
struct budget {
    _Atomic int64_t fds_used; /* held (or about to be) by sessions */
    _Atomic int64_t fds_max;  /* the limit less what the rest of the process needs */
    _Atomic int64_t buf_used; /* bytes of relay buffers held by sessions */
    _Atomic int64_t buf_max;  /* buffer_total_bytes */
};

void budget_init(struct budget *b, int64_t fds_max, int64_t buf_max);

/* Reserves n descriptors for a session. Returns 0, or -EMFILE (nothing
 * taken) when that would pass fds_max. */
int budget_take_fds(struct budget *b, int n);
void budget_give_fds(struct budget *b, int n);
/* Counts n descriptors that are open already (a live upgrade's sessions),
 * even past fds_max: new sessions wait until they are given back. */
void budget_claim_fds(struct budget *b, int n);
/* Is there room for one more session's descriptors? */
int budget_fds_room(const struct budget *b);
/* The rest of the process opened (delta > 0) or closed descriptors that
 * stay open for good (listening sockets): sessions get that many fewer, or
 * more. */
void budget_adjust_fds(struct budget *b, int64_t delta);

/* Bytes of buffer memory still free (0 when spent or overspent). */
size_t budget_buf_room(const struct budget *b);
void budget_take_buf(struct budget *b, size_t n);
void budget_give_buf(struct budget *b, size_t n);
void budget_set_buf_max(struct budget *b, int64_t max);

/* --- how many descriptors the process needs besides its sessions' -------- */

/* Raises the soft descriptor limit to the hard one. */
void budget_raise_fd_limit(void);

/* The process's descriptor limit (RLIMIT_NOFILE, soft), or -1. */
int64_t budget_fd_limit(void);

/* Descriptors open in this process now (/proc/self/fd), or -1. */
int64_t budget_fds_open(void);

/* Descriptors that libuv's thread pool may hold at once resolving host
 * names (a socket and a file per lookup thread). */
int64_t budget_resolver_fds(void);

#endif
