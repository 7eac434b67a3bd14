/* The admin endpoint: HTTP/1.1 on the supervisor's loop (health, readiness, metrics, sessions). */
#ifndef LIFELINE_ADMIN_H
#define LIFELINE_ADMIN_H

#include <http_parser.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

/* Bounds that keep admin clients from holding the supervisor or its
 * memory, whatever they do. */
#define ADMIN_MAX_CONNS 16       /* open at once; the descriptor reserve covers them */
#define ADMIN_TIMEOUT_MS 5000    /* from accept to the last byte of the answer */
#define ADMIN_EVICT_AFTER_MS 500 /* at capacity, the oldest connection this old makes room */
#define ADMIN_LINGER_MS 1000     /* after the answer, waiting for the client's close */
#define ADMIN_HEAVY_MAX 2        /* /sessions answers being built or sent at once */
#define ADMIN_URL_MAX 1024
#define ADMIN_HEADERS_MAX 8192
#define ADMIN_BODY_MAX 4096

/* X(ENUM_SUFFIX, "label"): what a request asks for, as counted in
 * lifeline_admin_requests_total{endpoint}. */
#define ADMIN_ENDPOINTS(X)                                                                         \
    X(HEALTHZ, "healthz")                                                                          \
    X(READYZ, "readyz")                                                                            \
    X(METRICS, "metrics")                                                                          \
    X(SESSIONS, "sessions")                                                                        \
    X(CLOSE, "close") /* POST /sessions/{id}/close */                                              \
    X(OTHER, "other") /* anything else: 400, 404, 431 (a 405 counts as its path) */

enum admin_endpoint {
#define ADMIN_EP_ENUM_(id, name) ADMIN_EP_##id,
    ADMIN_ENDPOINTS(ADMIN_EP_ENUM_)
#undef ADMIN_EP_ENUM_
        ADMIN_EP_COUNT
};

/* X(ENUM_SUFFIX, "label"): how an admin client was cut short, as counted in
 * lifeline_admin_overload_total{action}. */
#define ADMIN_OVERLOADS(X)                                                                         \
    X(TIMEOUT, "timeout") /* closed at its ADMIN_TIMEOUT_MS deadline */                            \
    X(EVICTED, "evicted") /* closed to make room for a new connection */                           \
    X(BUSY, "busy")       /* /sessions answered 503: ADMIN_HEAVY_MAX reached */

enum admin_overload {
#define ADMIN_OV_ENUM_(id, name) ADMIN_OVERLOAD_##id,
    ADMIN_OVERLOADS(ADMIN_OV_ENUM_)
#undef ADMIN_OV_ENUM_
        ADMIN_OVERLOAD_COUNT
};

const char *admin_endpoint_name(enum admin_endpoint e);
const char *admin_overload_name(enum admin_overload o);

/* The endpoint's counters, written and read on its own loop only. */
struct admin_stats {
    uint64_t requests[ADMIN_EP_COUNT];
    uint64_t overload[ADMIN_OVERLOAD_COUNT];
};

/* --- one request, without a socket (the fuzzer drives these) ------------ */

enum admin_parse {
    ADMIN_PARSE_MORE,      /* the request is not complete yet */
    ADMIN_PARSE_DONE,      /* one whole request: route it */
    ADMIN_PARSE_BAD,       /* malformed: 400 */
    ADMIN_PARSE_TOO_LARGE, /* URL or headers over their bound: 431 */
};

struct admin_request {
    http_parser parser;
    size_t header_bytes;
    size_t body_bytes;
    int too_large;
    int complete;
    char url[ADMIN_URL_MAX];
    size_t url_len;
};

void admin_request_init(struct admin_request *r);

/* Feeds bytes as they arrive. After DONE, BAD or TOO_LARGE, further bytes
 * change nothing (one request per connection). */
enum admin_parse admin_request_feed(struct admin_request *r, const char *data, size_t len);

/* What a complete request asks for. status 0: serve `endpoint`; otherwise
 * answer with that status (404, 405 with the methods in `allow`). */
struct admin_route {
    enum admin_endpoint endpoint;
    int status;
    const char *allow;
    uint64_t session_id; /* ADMIN_EP_CLOSE: the session to close (never 0) */
    int head;            /* a HEAD request: the headers of the GET only */
};

void admin_request_route(const struct admin_request *r, struct admin_route *out);

/* --- the endpoint -------------------------------------------------------- */

struct admin;
struct admin_conn;

/* What the endpoint asks of the process. The two that need the workers
 * answer later, through admin_reply(). All run on the admin loop. */
struct admin_backend {
    void *ctx;
    int (*healthy)(void *ctx);   /* 1: every worker loop is responsive */
    int (*ready)(void *ctx);     /* 1: listeners bound, not draining */
    char *(*metrics)(void *ctx); /* malloc'd Prometheus text, NULL on ENOMEM */
    void (*sessions)(void *ctx, struct admin_conn *c);
    void (*close_session)(void *ctx, struct admin_conn *c, uint64_t id);
};

/* Serves the listening socket `fd` (bound before any privilege drop; the
 * endpoint owns it from now on, even on failure). Returns 0 or a negative
 * UV error. */
int admin_start(struct admin **out, uv_loop_t *loop, int fd, const struct admin_backend *b);

/* Answers a request the backend kept; takes `body` (malloc'd, may be NULL). */
void admin_reply(struct admin_conn *c, int status, const char *content_type, char *body);

/* The endpoint's counters (for /metrics). */
const struct admin_stats *admin_get_stats(const struct admin *a);

/* Stops listening and closes every connection; requests the backend still
 * holds are dropped when it replies. */
void admin_stop(struct admin *a);

/* The listening socket (a live upgrade hands it over). */
int admin_fd(const struct admin *a);

#endif
