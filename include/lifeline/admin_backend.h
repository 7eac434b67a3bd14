/* What the admin endpoint asks of the process: health, readiness, metrics, the sessions, a kill. */
#ifndef LIFELINE_ADMIN_BACKEND_H
#define LIFELINE_ADMIN_BACKEND_H

#include <uv.h>

#include "lifeline/admin.h"
#include "lifeline/metrics.h"
#include "lifeline/worker.h"

/* The supervisor's state the answers come from; it keeps `ready` and the
 * process stats current. */
struct admin_state {
    uv_loop_t *loop; /* the supervisor's, where the admin endpoint runs */
    struct worker_set *workers;
    struct process_stats *ps; /* admin and budget pointers included */
    int ready;                /* listeners bound, not draining: /readyz */
};

/* The callbacks admin_start() takes, answering from `st`. */
struct admin_backend admin_backend_of(struct admin_state *st);

/* Is every started worker's loop turning? (/healthz, systemd's watchdog) */
int admin_state_healthy(const struct admin_state *st);

#endif
