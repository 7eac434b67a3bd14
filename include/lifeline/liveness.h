/* Client liveness: TCP keepalive and user-timeout options, and telling which one fired. */
#ifndef LIFELINE_LIVENESS_H
#define LIFELINE_LIVENESS_H

#include <stdint.h>

#include "lifeline/reason.h"

struct heartbeat_config;

/* Sets SO_KEEPALIVE with TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT (whole
 * seconds, rounded up; idle 0 turns keepalive off) and TCP_USER_TIMEOUT
 * (0: the kernel default). Set on a route's listening socket: the clients
 * it accepts inherit them, with no system call per connection. Returns 0
 * or -errno. */
int liveness_apply(int fd, const struct heartbeat_config *hb);

/* A client read failed with ETIMEDOUT: did keepalive probes or unacknowledged
 * data (the user timeout) give up? Asks TCP_INFO. */
enum reason liveness_timeout_reason(int fd);

/* Milliseconds rounded up to whole seconds, as the kernel takes keepalive times. */
uint32_t liveness_ms_to_s(uint32_t ms);

#endif
