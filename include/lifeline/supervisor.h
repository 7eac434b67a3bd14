/* The main thread: start-up, the workers' lifecycle, signals, the watchdog. */
#ifndef LIFELINE_SUPERVISOR_H
#define LIFELINE_SUPERVISOR_H

#include <sys/socket.h>

#include "lifeline/config.h"

/* Process exit codes, the CLI contract. */
enum exit_code {
    EXIT_CLEAN = 0,   /* clean shutdown, or --check ok */
    EXIT_RUNTIME = 1, /* cannot bind, a worker could not start, ... */
    EXIT_USAGE = 2,   /* bad command line or bad config */
};

/* What the supervisor needs to reload the config on SIGHUP. */
struct supervisor_options {
    const char *config_path; /* read again on SIGHUP */
    int log_level_fixed;     /* --log-level was given: it wins over every config */
    int log_format_fixed;    /* --log-format likewise */
};

/* The `invalid config` lines: what --check prints, as the daemon logs them. */
void supervisor_log_invalid(const char *path, const struct config_errors *errs);

/* Binds every listener, runs the workers until a signal drains them, and
 * returns the process exit code. The supervisor takes its own reference to
 * cfg; the caller keeps (and frees) its own. */
int supervisor_run(struct config *cfg, const struct supervisor_options *opts);

#endif
