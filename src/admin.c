/* The admin endpoint: HTTP/1.1 on the supervisor's loop (health, readiness, metrics, sessions). */
#define _GNU_SOURCE /* accept4 */
#include "lifeline/admin.h"
#include "lifeline/num.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/*
 *  One request per connection. A connection's life, every state bounded in
 *  time (one deadline, ADMIN_TIMEOUT_MS from accept, covers reading, waiting
 *  and writing) and in memory:
 *
 *    READING ──▶ WAITING ──▶ WRITING ──▶ LINGERING ──▶ CLOSING ──▶ freed
 *       │           │           │            │            ▲
 *       └───────────┴───────────┴────────────┴────────────┘
 *                 error, client gone, deadline, evicted
 *
 *  WAITING     the backend (the supervisor, asking the workers) holds the
 *              request; a connection closed meanwhile closes its socket at
 *              once and is freed when the answer comes (admin_reply).
 *  LINGERING   answer sent and FIN'd: reading until the client closes too,
 *              so that unread request bytes cannot turn the close into a
 *              reset that destroys the answer in flight.
 *
 *  At most ADMIN_MAX_CONNS connections are open. When all are taken, a new
 *  one waits in the listen queue; the oldest connection, once it has been
 *  open ADMIN_EVICT_AFTER_MS, is closed to make room. So whatever other
 *  clients do, a /healthz request is answered within about a second. At
 *  most ADMIN_HEAVY_MAX /sessions answers (whose size grows with the
 *  sessions) are built or sent at once.
 */

#define ACCEPT_BATCH 16
#define ACCEPT_RETRY_MS 100 /* accept failed for want of a resource */

enum conn_state {
    CONN_READING,
    CONN_WAITING,
    CONN_WRITING,
    CONN_LINGERING,
    CONN_CLOSING,
};

struct admin_conn {
    struct admin_conn *prev, *next; /* a->conns, newest first */
    struct admin *a;
    enum conn_state state;
    uv_tcp_t tcp;
    uv_timer_t timer; /* the deadline, then the linger bound */
    int open_handles;
    int backend_holds; /* freed only after admin_reply() */
    int heavy;         /* counted in a->n_heavy until the answer is sent */
    uint64_t accepted_ms;
    struct admin_request req;
    char in[2048];
    uv_write_t write_req;
    uv_shutdown_t shutdown_req;
    char head[512];
    char *body; /* malloc'd answer body, freed once written */
};

struct admin {
    uv_loop_t *loop;
    int fd; /* the listening socket */
    uv_poll_t poll;
    int polling;
    uv_timer_t room;  /* accepting paused: when to look again */
    int open_handles; /* poll and room */
    struct admin_backend backend;
    struct admin_conn *conns; /* open (not closing), newest first */
    size_t n_conns;
    size_t n_alive; /* allocated and not yet freed */
    size_t n_heavy;
    int stopping;
    struct admin_stats stats;
};

static const char *const endpoint_names[] = {
#define ADMIN_EP_NAME_(id, name) [ADMIN_EP_##id] = name,
    ADMIN_ENDPOINTS(ADMIN_EP_NAME_)
#undef ADMIN_EP_NAME_
};

static const char *const overload_names[] = {
#define ADMIN_OV_NAME_(id, name) [ADMIN_OVERLOAD_##id] = name,
    ADMIN_OVERLOADS(ADMIN_OV_NAME_)
#undef ADMIN_OV_NAME_
};

const char *admin_endpoint_name(enum admin_endpoint e) { return endpoint_names[e]; }
const char *admin_overload_name(enum admin_overload o) { return overload_names[o]; }
const struct admin_stats *admin_get_stats(const struct admin *a) { return &a->stats; }

/* --- parsing: one request, no socket ------------------------------------- */

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct admin_request *r = p->data;
    if (r->url_len + len >= sizeof(r->url)) {
        r->too_large = 1;
        return -1;
    }
    memcpy(r->url + r->url_len, at, len);
    r->url_len += len;
    r->url[r->url_len] = '\0';
    return 0;
}

static int on_header(http_parser *p, const char *at, size_t len)
{
    struct admin_request *r = p->data;
    r->header_bytes += len;
    if (r->header_bytes > ADMIN_HEADERS_MAX) {
        r->too_large = 1;
        return -1;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct admin_request *r = p->data;
    r->body_bytes += len;
    return r->body_bytes > ADMIN_BODY_MAX ? -1 : 0;
}

static int on_message_complete(http_parser *p)
{
    struct admin_request *r = p->data;
    r->complete = 1;
    http_parser_pause(p, 1); /* one request per connection */
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_url = on_url,
    .on_header_field = on_header,
    .on_header_value = on_header,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void admin_request_init(struct admin_request *r)
{
    memset(r, 0, sizeof(*r));
    http_parser_init(&r->parser, HTTP_REQUEST);
    r->parser.data = r;
}

static enum admin_parse parse_result(const struct admin_request *r, size_t used, size_t len)
{
    /* The URL and headers together are bounded however the bytes arrived:
     * checked before completeness, so one read that brings the whole
     * request is judged as several would be. */
    if (r->too_large || r->header_bytes + r->url_len > ADMIN_HEADERS_MAX)
        return ADMIN_PARSE_TOO_LARGE;
    if (r->complete)
        return ADMIN_PARSE_DONE;
    if (HTTP_PARSER_ERRNO(&r->parser) != HPE_OK || used != len)
        return ADMIN_PARSE_BAD;
    return ADMIN_PARSE_MORE;
}

enum admin_parse admin_request_feed(struct admin_request *r, const char *data, size_t len)
{
    /* A finished or failed request takes no more bytes. */
    enum admin_parse before = parse_result(r, 0, 0);
    if (before != ADMIN_PARSE_MORE)
        return before;
    size_t used = http_parser_execute(&r->parser, &parser_settings, data, len);
    return parse_result(r, used, len);
}

/* "/sessions/123/close" -> 123; 0 when the path is not of that form. */
static uint64_t session_close_path(const char *path)
{
    static const char prefix[] = "/sessions/";
    if (strncmp(path, prefix, sizeof(prefix) - 1) != 0)
        return 0;
    const char *p = path + sizeof(prefix) - 1;
    const char *end = strchr(p, '/');
    uint64_t id;
    /* No leading zero: one id, one spelling. */
    if (*p == '0' || end == NULL || strcmp(end, "/close") != 0 ||
        num_parse(p, (size_t)(end - p), UINT64_MAX, &id) < 0)
        return 0;
    return id;
}

void admin_request_route(const struct admin_request *r, struct admin_route *out)
{
    static const struct {
        const char *path;
        enum admin_endpoint endpoint;
    } gets[] = {
        { "/healthz", ADMIN_EP_HEALTHZ },
        { "/readyz", ADMIN_EP_READYZ },
        { "/metrics", ADMIN_EP_METRICS },
        { "/sessions", ADMIN_EP_SESSIONS },
    };
    enum http_method method = (enum http_method)r->parser.method;
    memset(out, 0, sizeof(*out));
    out->head = method == HTTP_HEAD;
    char path[ADMIN_URL_MAX];
    size_t len = strcspn(r->url, "?");
    memcpy(path, r->url, len);
    path[len] = '\0';

    uint64_t id = session_close_path(path);
    if (id != 0) {
        out->endpoint = ADMIN_EP_CLOSE;
        out->session_id = id;
        if (method != HTTP_POST) {
            out->status = 405;
            out->allow = "POST";
        }
        return;
    }
    for (size_t i = 0; i < sizeof(gets) / sizeof(gets[0]); i++) {
        if (strcmp(path, gets[i].path) != 0)
            continue;
        out->endpoint = gets[i].endpoint;
        if (method != HTTP_GET && method != HTTP_HEAD) {
            out->status = 405;
            out->allow = "GET, HEAD";
        }
        return;
    }
    out->endpoint = ADMIN_EP_OTHER;
    out->status = 404;
}

/* --- lifetime ----------------------------------------------------------- */

static void accept_cb(uv_poll_t *p, int status, int events);

static void free_if_done(struct admin *a)
{
    if (a->stopping && a->open_handles == 0 && a->n_alive == 0)
        free(a);
}

static void release_heavy(struct admin_conn *c)
{
    if (c->heavy) {
        c->heavy = 0;
        c->a->n_heavy--;
    }
}

static void conn_free_if_unused(struct admin_conn *c)
{
    if (c->open_handles > 0 || c->backend_holds)
        return;
    struct admin *a = c->a;
    release_heavy(c);
    free(c->body);
    free(c);
    a->n_alive--;
    free_if_done(a);
}

static void conn_closed_cb(uv_handle_t *h)
{
    struct admin_conn *c = h->data;
    c->open_handles--;
    conn_free_if_unused(c);
}

static void resume_accepting(struct admin *a)
{
    if (a->polling || a->stopping)
        return;
    uv_timer_stop(&a->room);
    if (uv_poll_start(&a->poll, UV_READABLE, accept_cb) == 0)
        a->polling = 1;
}

/* The one way out of the list: the socket closes now; the memory goes when
 * the handles are closed and the backend has let go of it. */
static void conn_close(struct admin_conn *c)
{
    if (c->state == CONN_CLOSING)
        return;
    c->state = CONN_CLOSING;
    struct admin *a = c->a;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    a->n_conns--;
    uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
    uv_close((uv_handle_t *)&c->timer, conn_closed_cb);
    resume_accepting(a); /* a slot is free */
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void timeout_cb(uv_timer_t *t);

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    struct admin_conn *c = req->data;
    if (c->state != CONN_WRITING)
        return; /* closed meanwhile */
    if (status < 0) {
        conn_close(c);
        return;
    }
    c->state = CONN_LINGERING;
    uv_timer_start(&c->timer, timeout_cb, ADMIN_LINGER_MS, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) < 0)
        conn_close(c);
}

static void write_cb(uv_write_t *req, int status)
{
    struct admin_conn *c = req->data;
    if (c->state != CONN_WRITING)
        return; /* closed meanwhile: the close frees the body */
    /* Sent: its memory is not needed any more. */
    free(c->body);
    c->body = NULL;
    release_heavy(c);
    c->shutdown_req.data = c;
    if (status < 0 || uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, shutdown_cb) < 0)
        conn_close(c);
}

static const char *status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

/* Sends the answer and takes `owned` (the malloc'd body, or NULL when
 * `body` is static). */
static void respond(struct admin_conn *c, int status, const char *type, const char *body,
                    char *owned, const char *extra_headers)
{
    size_t body_len = body != NULL ? strlen(body) : 0;
    int n =
        snprintf(c->head, sizeof(c->head),
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                 "Connection: close\r\n\r\n",
                 status, status_text(status), type, body_len, extra_headers ? extra_headers : "");
    free(c->body);
    c->body = owned;
    c->state = CONN_WRITING;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_buf_t bufs[2] = { uv_buf_init(c->head, (unsigned)n),
                         uv_buf_init((char *)(body ? body : ""), (unsigned)body_len) };
    /* HEAD: the headers of the GET, without its body. */
    unsigned n_bufs = c->req.parser.method == HTTP_HEAD || body_len == 0 ? 1 : 2;
    c->write_req.data = c;
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, bufs, n_bufs, write_cb) < 0)
        conn_close(c);
}

static void respond_text(struct admin_conn *c, int status, const char *text)
{
    respond(c, status, "text/plain; charset=utf-8", text, NULL, NULL);
}

void admin_reply(struct admin_conn *c, int status, const char *content_type, char *body)
{
    c->backend_holds = 0;
    if (c->state != CONN_WAITING) {
        /* The client went away or its deadline passed meanwhile. */
        free(body);
        conn_free_if_unused(c);
        return;
    }
    if (body == NULL)
        respond_text(c, 500, "out of memory\n");
    else
        respond(c, status, content_type, body, body, NULL);
}

/* --- routing -------------------------------------------------------------- */

/* The backend answers later; the connection waits, still under its deadline. */
static void hand_to_backend(struct admin_conn *c)
{
    c->state = CONN_WAITING;
    c->backend_holds = 1;
}

static void dispatch(struct admin_conn *c)
{
    struct admin *a = c->a;
    const struct admin_backend *b = &a->backend;
    struct admin_route rt;
    admin_request_route(&c->req, &rt);
    a->stats.requests[rt.endpoint]++;

    if (rt.status == 404) {
        respond_text(c, 404, "not found\n");
        return;
    }
    if (rt.status == 405) {
        char allow[64];
        snprintf(allow, sizeof(allow), "Allow: %s\r\n", rt.allow);
        respond(c, 405, "text/plain; charset=utf-8", "method not allowed\n", NULL, allow);
        return;
    }
    switch (rt.endpoint) {
    case ADMIN_EP_HEALTHZ: {
        int ok = b->healthy(b->ctx);
        respond_text(c, ok ? 200 : 503, ok ? "ok\n" : "a worker loop is not responding\n");
        break;
    }
    case ADMIN_EP_READYZ: {
        int ok = b->ready(b->ctx);
        respond_text(c, ok ? 200 : 503, ok ? "ready\n" : "not ready\n");
        break;
    }
    case ADMIN_EP_METRICS: {
        char *text = b->metrics(b->ctx);
        if (text == NULL)
            respond_text(c, 500, "out of memory\n");
        else
            respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, text, NULL);
        break;
    }
    case ADMIN_EP_SESSIONS:
        /* Its answer grows with the sessions: a bounded number at once. */
        if (a->n_heavy >= ADMIN_HEAVY_MAX) {
            a->stats.overload[ADMIN_OVERLOAD_BUSY]++;
            respond(c, 503, "text/plain; charset=utf-8",
                    "busy: other /sessions answers are being sent\n", NULL, "Retry-After: 1\r\n");
            break;
        }
        c->heavy = 1;
        a->n_heavy++;
        hand_to_backend(c);
        b->sessions(b->ctx, c);
        break;
    case ADMIN_EP_CLOSE:
        hand_to_backend(c);
        b->close_session(b->ctx, c, rt.session_id);
        break;
    case ADMIN_EP_OTHER:
    case ADMIN_EP_COUNT:
        respond_text(c, 404, "not found\n");
        break;
    }
}

/* --- reading ----------------------------------------------------------- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct admin_conn *c = h->data;
    *buf = uv_buf_init(c->in, sizeof(c->in));
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct admin_conn *c = stream->data;
    if (nread < 0 &&
        (c->state == CONN_READING || c->state == CONN_WAITING || c->state == CONN_LINGERING)) {
        conn_close(c); /* the client closed (in LINGERING: as it should) */
        return;
    }
    if (c->state != CONN_READING || nread <= 0)
        return; /* LINGERING and WAITING discard what comes */
    switch (admin_request_feed(&c->req, buf->base, (size_t)nread)) {
    case ADMIN_PARSE_MORE:
        break;
    case ADMIN_PARSE_DONE:
        dispatch(c);
        break;
    case ADMIN_PARSE_BAD:
        c->a->stats.requests[ADMIN_EP_OTHER]++;
        respond_text(c, 400, "bad request\n");
        break;
    case ADMIN_PARSE_TOO_LARGE:
        c->a->stats.requests[ADMIN_EP_OTHER]++;
        respond_text(c, 431, "request too large\n");
        break;
    }
}

static void timeout_cb(uv_timer_t *t)
{
    struct admin_conn *c = t->data;
    if (c->state != CONN_LINGERING)
        c->a->stats.overload[ADMIN_OVERLOAD_TIMEOUT]++;
    conn_close(c);
}

/* --- accepting --------------------------------------------------------- */

static struct admin_conn *oldest(const struct admin *a)
{
    struct admin_conn *c = a->conns;
    while (c != NULL && c->next != NULL)
        c = c->next;
    return c;
}

static void room_cb(uv_timer_t *t) { resume_accepting(t->data); }

static void pause_accepting(struct admin *a, uint64_t retry_ms)
{
    if (a->polling) {
        uv_poll_stop(&a->poll);
        a->polling = 0;
    }
    uv_timer_start(&a->room, room_cb, retry_ms > 0 ? retry_ms : 1, 0);
}

/* All slots taken and someone waits: the oldest connection makes room once
 * it has had ADMIN_EVICT_AFTER_MS. Returns 1 when a slot was freed. */
static int make_room(struct admin *a)
{
    struct admin_conn *c = oldest(a);
    uint64_t age = uv_now(a->loop) - c->accepted_ms;
    if (age < ADMIN_EVICT_AFTER_MS) {
        pause_accepting(a, ADMIN_EVICT_AFTER_MS - age);
        return 0;
    }
    if (c->state != CONN_LINGERING) /* a lingering one has its answer */
        a->stats.overload[ADMIN_OVERLOAD_EVICTED]++;
    conn_close(c);
    return 1;
}

static void conn_open(struct admin *a, int fd)
{
    struct admin_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->a = a;
    c->state = CONN_READING;
    uv_tcp_init(a->loop, &c->tcp);
    uv_timer_init(a->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open_handles = 2;
    c->accepted_ms = uv_now(a->loop);
    admin_request_init(&c->req);
    c->next = a->conns;
    if (a->conns != NULL)
        a->conns->prev = c;
    a->conns = c;
    a->n_conns++;
    a->n_alive++;
    if (uv_tcp_open(&c->tcp, fd) < 0) {
        close(fd); /* not adopted by the handle */
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, timeout_cb, ADMIN_TIMEOUT_MS, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) < 0)
        conn_close(c);
}

static void accept_cb(uv_poll_t *p, int status, int events)
{
    struct admin *a = p->data;
    (void)events;
    for (int i = 0; i < ACCEPT_BATCH && status == 0 && a->polling; i++) {
        if (a->n_conns >= ADMIN_MAX_CONNS && !make_room(a))
            return;
        int fd = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            conn_open(a, fd);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            pause_accepting(a, ACCEPT_RETRY_MS); /* EMFILE, ENOBUFS...: try again soon */
        return;
    }
}

static void handle_closed_cb(uv_handle_t *h)
{
    struct admin *a = h->data;
    if (--a->open_handles == 0)
        close(a->fd);
    free_if_done(a);
}

int admin_start(struct admin **out, uv_loop_t *loop, int fd, const struct admin_backend *b)
{
    struct admin *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        close(fd);
        return UV_ENOMEM;
    }
    a->loop = loop;
    a->fd = fd;
    a->backend = *b;
    int rc = uv_poll_init(loop, &a->poll, fd);
    if (rc < 0) {
        close(fd);
        free(a);
        return rc;
    }
    uv_timer_init(loop, &a->room);
    a->poll.data = a->room.data = a;
    a->open_handles = 2;
    rc = uv_poll_start(&a->poll, UV_READABLE, accept_cb);
    if (rc < 0) {
        admin_stop(a);
        return rc;
    }
    a->polling = 1;
    *out = a;
    return 0;
}

int admin_fd(const struct admin *a) { return a->fd; }

void admin_stop(struct admin *a)
{
    if (a == NULL || a->stopping)
        return;
    a->stopping = 1;
    while (a->conns != NULL)
        conn_close(a->conns);
    uv_close((uv_handle_t *)&a->poll, handle_closed_cb);
    uv_close((uv_handle_t *)&a->room, handle_closed_cb);
}
