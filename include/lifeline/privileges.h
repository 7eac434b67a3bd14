/* Dropping root once every socket is bound. */
#ifndef LIFELINE_PRIVILEGES_H
#define LIFELINE_PRIVILEGES_H

#include "lifeline/config.h"

#include <stdint.h>

/* The capabilities cfg needs while it runs, after binding: CAP_NET_ADMIN for
 * a transparent source ("client") or an upstream mark. Bit n is capability n. */
uint64_t privileges_needed(const struct config *cfg);

/* Whether the calling thread's effective set holds what cfg needs. Logs
 * `missing capability` with the capability and the key that needs it, for
 * each such key, and returns -EPERM; else 0. */
int privileges_check(const struct config *cfg);

/* Switches to the config's `user` and `group` (supplementary groups
 * first, then the group, then the user), so that a legacy port below 1024
 * needs root only for bind(). The capabilities privileges_needed() names
 * are kept across the switch, every other one is dropped. Nothing to do
 * when neither is set. Call it before any other thread starts: the kernel
 * keeps capabilities per thread. Logs `dropped privileges`, or `cannot drop
 * privileges` with the reason, and returns 0 or -errno. */
int privileges_drop(const struct config *cfg);

#endif
