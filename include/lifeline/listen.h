/* Listen addresses: checked alike by --check, start and reload; bound once per worker. */
#ifndef LIFELINE_LISTEN_H
#define LIFELINE_LISTEN_H

#include <stddef.h>
#include <sys/socket.h>

#include "lifeline/config.h"

/* Resolves every listen address of cfg (blocking, for host names) into
 * addrs (one per route) and *admin (when the config has one and admin is
 * not NULL), and checks them as the daemon does before it binds: no
 * IPv4-mapped address, and no two that overlap (a wildcard holds its port
 * on every address of its family; a dual_stack "[::]" on IPv4's too).
 * --check, the start and a reload all run it. Adds "json.path: message"
 * lines to errs and returns -EINVAL on a problem, else 0. */
int listen_check(const struct config *cfg, struct sockaddr_storage *addrs,
                 struct sockaddr_storage *admin, struct config_errors *errs);

/* Binds every route's address (resolved in addrs) once per worker: fds[w *
 * n_routes + r] is worker w's socket for route r. An address the running
 * config `old` listens on already (old_addrs) keeps its sockets: its fds
 * stay -1, and a changed dual_stack is logged as needing a restart. Logs
 * `listening` per address bound, `cannot listen` on a failure. Returns 0
 * or -errno; the caller closes the fds either way. */
int listen_open_routes(const struct config *cfg, size_t n_workers, const struct config *old,
                       const struct sockaddr_storage *old_addrs,
                       const struct sockaddr_storage *addrs, int *fds);

/* Binds route r's address sa once per worker into fds[w * n_routes + r]
 * (what listen_open_routes does for each new address). Returns 0 or -errno
 * (logged); the caller closes the fds either way. */
int listen_open_route(const struct config *cfg, size_t r, size_t n_workers,
                      const struct sockaddr_storage *sa, int *fds);

/* The admin endpoint's socket at sa in *fd (-1 when the config has none).
 * Returns 0 or -errno (logged). */
int listen_open_admin(const struct config *cfg, const struct sockaddr_storage *sa, int *fd);

/* The route of `old` (the running config) whose address (old_addrs) is sa,
 * or -1. */
long listen_bound_by(const struct sockaddr_storage *sa, const struct config *old,
                     const struct sockaddr_storage *old_addrs);

/* Closes the descriptors of fds[n] that are not -1, and sets them to -1. */
void listen_close_fds(int *fds, size_t n);

#endif
