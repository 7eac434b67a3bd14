/* Dropping root once every socket is bound. */
#ifndef LIFELINE_PRIVILEGES_H
#define LIFELINE_PRIVILEGES_H

#include "lifeline/config.h"

/* Switches to the config's `user` and `group` (supplementary groups
 * first, then the group, then the user), so that a legacy port below 1024
 * needs root only for bind(). Nothing to do when neither is set. Logs
 * `dropped privileges`, or `cannot drop privileges` with the reason, and
 * returns 0 or -errno. */
int privileges_drop(const struct config *cfg);

#endif
