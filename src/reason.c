/* Names of the session close reasons and deny causes. */
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

static const char *const deny_names[DENY_COUNT] = {
#define DENY_NAME_(id, name) [DENY_##id] = name,
    DENY_LIST(DENY_NAME_)
#undef DENY_NAME_
};

const char *deny_name(enum deny_cause c)
{
    return (unsigned)c < DENY_COUNT ? deny_names[c] : "unknown";
}
