/* Session close reasons and deny causes: defined once here; logs, counters and docs derive from these lists. */
#ifndef LIFELINE_REASON_H
#define LIFELINE_REASON_H

/* X(ENUM_SUFFIX, "name in logs and metrics") */
#define REASON_LIST(X)                                                                             \
    X(CLIENT_EOF, "client_eof")                                                                    \
    X(CLIENT_RESET, "client_reset")                                                                \
    X(CLIENT_SILENCE, "client_silence")                                                            \
    X(CLIENT_KEEPALIVE, "client_keepalive")                                                        \
    X(CLIENT_USER_TIMEOUT, "client_user_timeout")                                                  \
    X(REPLACED, "replaced")                                                                        \
    X(REJECTED, "rejected")                                                                        \
    X(UPSTREAM_EOF, "upstream_eof")                                                                \
    X(UPSTREAM_RESET, "upstream_reset")                                                            \
    X(UPSTREAM_CONNECT_FAILED, "upstream_connect_failed")                                          \
    X(ADMIN_KILL, "admin_kill")                                                                    \
    X(SHUTDOWN, "shutdown")                                                                        \
    X(DENIED, "denied")                                                                            \
    X(FENCED, "fenced")                                                                            \
    X(CLUSTER_UNAVAILABLE, "cluster_unavailable")

enum reason {
#define REASON_ENUM_(id, name) REASON_##id,
    REASON_LIST(REASON_ENUM_)
#undef REASON_ENUM_
        REASON_COUNT
};

const char *reason_name(enum reason r);

/* Why a connection was refused before it became a session (the `cause` of
 * a "connection denied" line and of lifeline_denied_total).
 * X(ENUM_SUFFIX, "name in logs and metrics") */
#define DENY_LIST(X)                                                                               \
    X(ALLOW, "allow")                     /* its address is outside client.allow */                \
    X(MAX_CONNECTIONS, "max_connections") /* the route is at client.max_connections */             \
    X(MAX_PER_ADDRESS, "max_per_address") /* its address is at client.max_per_address */

enum deny_cause {
#define DENY_ENUM_(id, name) DENY_##id,
    DENY_LIST(DENY_ENUM_)
#undef DENY_ENUM_
        DENY_COUNT
};

const char *deny_name(enum deny_cause c);

#endif
