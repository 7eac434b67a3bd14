/* The main thread: listeners, worker lifecycle, signals. */
#ifndef LIFELINE_SUPERVISOR_H
#define LIFELINE_SUPERVISOR_H

#include <sys/socket.h>

#include "lifeline/config.h"

/* Process exit codes, the CLI contract. */
enum exit_code {
    EXIT_CLEAN = 0,    /* clean shutdown, or --check ok */
    EXIT_RUNTIME = 1,  /* cannot bind, a worker could not start, ... */
    EXIT_USAGE = 2,    /* bad command line or bad config */
};

/* What the supervisor needs to reload the config on SIGHUP. */
struct supervisor_options {
    const char *config_path;   /* read again on SIGHUP */
    int log_level_fixed;       /* --log-level was given: it wins over every config */
    int log_format_fixed;      /* --log-format likewise */
};

/* Resolves every listen address of cfg (blocking, for host names) into
 * addrs (one per route) and *admin (when the config has one and admin is
 * not NULL), and checks them as the daemon does before it binds: no
 * IPv4-mapped address, and no two that overlap (a wildcard holds its port
 * on every address of its family; a dual_stack "[::]" on IPv4's too).
 * --check, the start and a reload all run it. Adds "json.path: message"
 * lines to errs and returns -EINVAL on a problem, else 0. */
int supervisor_check_listen(const struct config *cfg, struct sockaddr_storage *addrs,
                            struct sockaddr_storage *admin, struct config_errors *errs);

/* Binds every listener, runs the workers until a signal drains them, and
 * returns the process exit code. The supervisor takes its own reference to
 * cfg; the caller keeps (and frees) its own. */
int supervisor_run(struct config *cfg, const struct supervisor_options *opts);

#endif
