/* Reloading the config on SIGHUP: check it as a start would, bind what is new, hand it to every worker. */
#ifndef LIFELINE_RELOAD_H
#define LIFELINE_RELOAD_H

#include <sys/socket.h>
#include <uv.h>

#include "lifeline/budget.h"
#include "lifeline/config.h"
#include "lifeline/metrics.h"
#include "lifeline/worker.h"

struct upgrade_exec;

/* Where the config comes from, and what the command line fixed. */
struct supervisor_options {
    const char *config_path;         /* read again on SIGHUP */
    int log_level_fixed;             /* --log-level was given: it wins over every config */
    int log_format_fixed;            /* --log-format likewise */
    const struct upgrade_exec *exec; /* what a live upgrade starts again */
};

/* The running config and what a reload needs to replace it. The
 * supervisor sets every field before the first reload_start(). */
struct reload {
    uv_loop_t *loop; /* the supervisor's */
    const struct supervisor_options *opts;
    struct worker_set *workers;
    struct budget *budget;
    struct process_stats *ps; /* reload counters, the config's hash */
    /* A reload ended, either way (after `reloaded` or `reload failed`). */
    void (*finished)(struct reload *rl, int ok);
    void *owner;

    struct config *cfg;             /* running; a reference */
    struct sockaddr_storage *addrs; /* cfg's listen addresses, one per route */
    int busy;                       /* the workers are answering a reload */
};

/* Reads the config file again and checks it as --check and a start do.
 * A bad one changes nothing: `reload failed: keeping the running config`.
 * A good one gets its new listening sockets (kept addresses keep theirs),
 * applies log settings, and goes to every worker; once all have answered,
 * it is the running config. Sessions keep the config they started with. */
void reload_start(struct reload *rl);

#endif
