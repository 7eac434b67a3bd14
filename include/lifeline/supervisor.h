/* The main thread: start-up, the workers' lifecycle, signals, the watchdog. */
#ifndef LIFELINE_SUPERVISOR_H
#define LIFELINE_SUPERVISOR_H

#include <sys/socket.h>

#include "lifeline/config.h"

#include "lifeline/exit.h"
#include "lifeline/reload.h"

/* Binds every listener, runs the workers until a signal drains them, and
 * returns the process exit code. The supervisor takes its own reference to
 * cfg; the caller keeps (and frees) its own. */
int supervisor_run(struct config *cfg, const struct supervisor_options *opts);

#endif
