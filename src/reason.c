/* Names of the session close reasons. */
#include "lifeline/reason.h"

static const char *const reason_names[REASON_COUNT] = {
#define REASON_NAME_(id, name) [REASON_##id] = name,
    REASON_LIST(REASON_NAME_)
#undef REASON_NAME_
};

const char *reason_name(enum reason r)
{
    return (unsigned)r < REASON_COUNT ? reason_names[r] : "unknown";
}
