/* The main thread: listeners, worker lifecycle, signals. */
#ifndef LIFELINE_SUPERVISOR_H
#define LIFELINE_SUPERVISOR_H

#include "lifeline/config.h"

/* Process exit codes, the CLI contract. */
enum exit_code {
    EXIT_CLEAN = 0,    /* clean shutdown, or --check ok */
    EXIT_RUNTIME = 1,  /* cannot bind, a worker could not start, ... */
    EXIT_USAGE = 2,    /* bad command line or bad config */
};

/* Binds every listener, runs the workers until a signal drains them, and
 * returns the process exit code. The config outlives the call. */
int supervisor_run(const struct config *cfg);

#endif
