/* Session close reasons: defined once here; logs, counters and docs derive from this list. */
#ifndef LIFELINE_REASON_H
#define LIFELINE_REASON_H

/* X(ENUM_SUFFIX, "name in logs and metrics") */
#define REASON_LIST(X)                                                      \
    X(CLIENT_EOF, "client_eof")                                             \
    X(CLIENT_RESET, "client_reset")                                         \
    X(CLIENT_SILENCE, "client_silence")                                     \
    X(CLIENT_KEEPALIVE, "client_keepalive")                                 \
    X(CLIENT_USER_TIMEOUT, "client_user_timeout")                           \
    X(REPLACED, "replaced")                                                 \
    X(REJECTED, "rejected")                                                 \
    X(UPSTREAM_EOF, "upstream_eof")                                         \
    X(UPSTREAM_RESET, "upstream_reset")                                     \
    X(UPSTREAM_CONNECT_FAILED, "upstream_connect_failed")                   \
    X(ADMIN_KILL, "admin_kill")                                             \
    X(SHUTDOWN, "shutdown")                                                 \
    X(DENIED, "denied")

enum reason {
#define REASON_ENUM_(id, name) REASON_##id,
    REASON_LIST(REASON_ENUM_)
#undef REASON_ENUM_
    REASON_COUNT
};

const char *reason_name(enum reason r);

#endif
