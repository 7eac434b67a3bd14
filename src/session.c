/* One client connection and its upstream connection: state machine, relay, close. */

/*
 *  legacy client                 lifeline (one worker's loop)                 server
 *
 *   fixed port ──▶ s->client ── up:   client ─▶ chunks ─▶ upstream ──▶ s->upstream ──▶
 *              ◀──           ── down: client ◀─ chunks ◀─ upstream ◀──  (ephemeral port)
 *
 *  Each direction (struct half) reads its source into pool chunks, writes
 *  them to its destination, and stops reading while more than buffer_bytes
 *  wait to be written (resuming below half of it). Chunks are held only
 *  while their bytes are in flight.
 *
 *  Session states, moved only by set_state():
 *
 *    CONNECTING ──▶ RELAYING ──▶ CLOSING ──▶ CLOSED
 *        │              │                      ▲
 *        └──────────────┴──────────────────────┘
 *
 *  CONNECTING  resolve, connect (timeout), retry with backoff and failover;
 *              client bytes queue in up.queue (bounded, then backpressure).
 *  RELAYING    both directions; a source's EOF flushes then FINs its
 *              destination while the other direction goes on.
 *  CLOSING     the close policy flushes one direction, then FIN; bounded
 *              by CLOSE_LINGER_MS.
 *  CLOSED      the close is logged; handles are closing; the session is
 *              freed in the last close callback (free_if_unused).
 */
#include "lifeline/session.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lifeline/addr.h"
#include "lifeline/log.h"
#include "lifeline/net.h"

/* How long a closing session may spend flushing before it is cut. */
#define CLOSE_LINGER_MS 5000
#define BACKOFF_CAP_MS 30000

enum session_state {
    SESSION_CONNECTING,
    SESSION_RELAYING,
    SESSION_CLOSING,
    SESSION_CLOSED,
};

/* What the connect machinery is doing while the session is CONNECTING. */
enum connect_step {
    CONNECT_RESOLVING,   /* uv_getaddrinfo in flight (bounded by the resolver) */
    CONNECT_CONNECTING,  /* handshake in flight, timer = connect timeout */
    CONNECT_CLOSING,     /* failed try: waiting for the upstream handle to close */
    CONNECT_BACKOFF,     /* timer = wait before the next try */
};

/* One direction of the relay. */
enum half_state {
    HALF_OPEN,      /* reading the source, writing the destination */
    HALF_FLUSHING,  /* source finished: write what is pending, then FIN */
    HALF_SHUTTING,  /* FIN requested (uv_shutdown in flight) */
    HALF_DONE,      /* FIN sent, or the direction was abandoned */
};

struct half {
    struct session *s;
    uv_tcp_t *src;
    uv_tcp_t *dst;
    enum half_state state;
    int paused;                 /* reading stopped by backpressure */
    size_t pending;             /* bytes read and not yet written */
    struct chunk *queue_head;   /* bytes waiting for the upstream to connect */
    struct chunk *queue_tail;
    uint64_t bytes;             /* bytes read from the source */
    uv_shutdown_t shutdown_req;
};

/* How finish_close() ends the client connection. */
enum client_close {
    CLIENT_CLOSE_FIN,
    CLIENT_CLOSE_RST,
};

struct session {
    struct session *prev, *next;   /* the worker's list */
    uint64_t id;                   /* process-wide, for worker messages */
    struct worker *w;
    const struct route_config *route;
    enum session_state state;
    enum connect_step step;
    enum reason reason;            /* set once, by the first session_close() */
    enum reason eof_reason;        /* the side whose EOF came first */
    int saw_eof;
    enum client_close client_close;

    uv_tcp_t client;
    uv_tcp_t upstream;
    int upstream_open;             /* upstream handle initialised and not yet closing */
    uv_timer_t timer;              /* connect timeout, backoff or close linger, by state */
    uv_connect_t connect_req;
    uv_getaddrinfo_t gai;
    int refs;                      /* handles and requests whose callbacks are due */

    struct half up;                /* client -> upstream */
    struct half down;              /* upstream -> client */

    unsigned tries;                /* connect tries started */
    size_t server;                 /* index of the server of the current try */
    unsigned short upstream_port;  /* our local port of the upstream connection */
    uint64_t started_ms;
    char client_addr[64];
};

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void connect_try(struct session *s);
static void finish_close(struct session *s);

static void set_state(struct session *s, enum session_state next)
{
    /* Only forward moves; anything else is a bug worth stopping for. */
    if (next <= s->state) {
        log_error("illegal session state change", LF_INT("from", s->state),
                  LF_INT("to", next));
        abort();
    }
    s->state = next;
}

struct session *session_next(const struct session *s) { return s->next; }

uint64_t session_id(const struct session *s) { return s->id; }

void session_go(struct session *s) { (void)s; }

static int is_client(const struct session *s, const uv_tcp_t *t) { return t == &s->client; }

/* --- memory: one free point -------------------------------------------- */

static void free_if_unused(struct session *s)
{
    if (s->refs > 0 || s->state != SESSION_CLOSED)
        return;
    struct worker *w = s->w;
    free(s);
    worker_session_freed(w);
}

/* TCP handles point at their reading half, the timer at the session. */
static struct session *session_of(const uv_handle_t *h)
{
    return h->type == UV_TCP ? ((struct half *)h->data)->s : h->data;
}

static void handle_closed_cb(uv_handle_t *h)
{
    struct session *s = session_of(h);
    s->refs--;
    free_if_unused(s);
}

static void close_handle(struct session *s, uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, handle_closed_cb);
}

static void queue_free(struct session *s, struct half *h)
{
    while (h->queue_head != NULL) {
        struct chunk *c = h->queue_head;
        h->queue_head = c->next;
        h->pending -= c->len;
        pool_put(&s->w->pool, c);
    }
    h->queue_tail = NULL;
}

/* --- relay -------------------------------------------------------------- */

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    struct half *h = handle->data;
    struct chunk *c = pool_get(&h->s->w->pool);
    if (c == NULL) {
        *buf = uv_buf_init(NULL, 0); /* read_cb gets UV_ENOBUFS */
        return;
    }
    size_t len = h->s->route->buffer_bytes;
    *buf = uv_buf_init(c->data, (unsigned)(len < POOL_CHUNK_SIZE ? len : POOL_CHUNK_SIZE));
}

static struct chunk *chunk_of(const uv_buf_t *buf)
{
    return (struct chunk *)(buf->base - offsetof(struct chunk, data));
}

static void half_read_start(struct half *h)
{
    h->paused = 0;
    if (uv_read_start((uv_stream_t *)h->src, alloc_cb, read_cb) < 0)
        session_close(h->s, is_client(h->s, h->src) ? REASON_CLIENT_RESET
                                                    : REASON_UPSTREAM_RESET);
}

static void half_pause_if_full(struct half *h)
{
    if (h->pending >= h->s->route->buffer_bytes && !h->paused && h->state == HALF_OPEN) {
        uv_read_stop((uv_stream_t *)h->src);
        h->paused = 1;
    }
}

static enum reason reset_reason(const struct session *s, const uv_tcp_t *t)
{
    return is_client(s, t) ? REASON_CLIENT_RESET : REASON_UPSTREAM_RESET;
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    struct half *h = req->data;
    struct session *s = h->s;

    h->state = HALF_DONE;
    if (status == UV_ECANCELED)
        return;
    if (s->state == SESSION_CLOSING) {
        finish_close(s);
        return;
    }
    if (status < 0) {
        session_close(s, reset_reason(s, h->dst));
        return;
    }
    if (s->up.state == HALF_DONE && s->down.state == HALF_DONE)
        session_close(s, s->eof_reason);
}

/* Sends FIN once everything read from the source has been written. */
static void half_flush_then_fin(struct half *h)
{
    if (h->state != HALF_FLUSHING || h->pending > 0)
        return;
    h->state = HALF_SHUTTING;
    h->shutdown_req.data = h;
    int rc = uv_shutdown(&h->shutdown_req, (uv_stream_t *)h->dst, shutdown_cb);
    if (rc < 0) {
        h->state = HALF_DONE;
        if (h->s->state == SESSION_CLOSING)
            finish_close(h->s);
        else
            session_close(h->s, reset_reason(h->s, h->dst));
    }
}

static void write_cb(uv_write_t *req, int status)
{
    struct chunk *c = req->data;
    struct half *h = c->owner;
    struct session *s = h->s;

    h->pending -= c->len;
    pool_put(&s->w->pool, c);
    if (status == UV_ECANCELED)
        return;
    if (status < 0) {
        if (s->state == SESSION_CLOSING)
            finish_close(s);
        else
            session_close(s, reset_reason(s, h->dst));
        return;
    }
    if (h->paused && h->pending < s->route->buffer_bytes / 2 && s->state == SESSION_RELAYING)
        half_read_start(h);
    half_flush_then_fin(h);
}

/* Writes what the chunk holds: directly when the socket takes it, else
 * queued in libuv with the chunk held until write_cb. */
static void half_write(struct half *h, struct chunk *c)
{
    struct session *s = h->s;
    uv_buf_t buf = uv_buf_init(c->data, (unsigned)c->len);

    int n = uv_try_write((uv_stream_t *)h->dst, &buf, 1);
    if (n == (int)c->len) {
        pool_put(&s->w->pool, c);
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        pool_put(&s->w->pool, c);
        session_close(s, reset_reason(s, h->dst));
        return;
    }
    if (n > 0) {
        c->len -= (size_t)n; /* from here on, len counts what is still pending */
        buf = uv_buf_init(c->data + n, (unsigned)c->len);
    }
    c->owner = h;
    c->req.data = c;
    h->pending += c->len;
    int rc = uv_write(&c->req, (uv_stream_t *)h->dst, &buf, 1, write_cb);
    if (rc < 0) {
        h->pending -= c->len;
        pool_put(&s->w->pool, c);
        session_close(s, reset_reason(s, h->dst));
        return;
    }
    half_pause_if_full(h);
}

static void half_eof(struct half *h)
{
    struct session *s = h->s;
    if (!s->saw_eof) {
        s->saw_eof = 1;
        s->eof_reason = is_client(s, h->src) ? REASON_CLIENT_EOF : REASON_UPSTREAM_EOF;
    }
    h->state = HALF_FLUSHING;
    if (s->state == SESSION_RELAYING)
        half_flush_then_fin(h);
    /* While CONNECTING, the queued bytes and the FIN go out once connected. */
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct half *h = stream->data;
    struct session *s = h->s;
    struct chunk *c = buf->base != NULL ? chunk_of(buf) : NULL;

    if (nread > 0) {
        c->len = (size_t)nread;
        h->bytes += (uint64_t)nread;
        if (s->state == SESSION_RELAYING) {
            half_write(h, c);
            return;
        }
        /* CONNECTING: keep the bytes, in order, until the upstream is up. */
        if (h->queue_tail != NULL)
            h->queue_tail->next = c;
        else
            h->queue_head = c;
        h->queue_tail = c;
        h->pending += c->len;
        half_pause_if_full(h);
        return;
    }
    if (c != NULL)
        pool_put(&s->w->pool, c);
    if (nread == 0)
        return; /* EAGAIN */
    if (nread == UV_EOF) {
        uv_read_stop(stream);
        half_eof(h);
        return;
    }
    session_close(s, reset_reason(s, h->src));
}

/* --- upstream connect: tries, timeout, backoff, failover ----------------- */

static void log_try_failed(struct session *s, int err)
{
    const struct hostport *srv = &s->route->upstream.servers[s->server];
    char server[ADDR_STR_MAX];
    snprintf(server, sizeof(server), strchr(srv->host, ':') ? "[%s]:%u" : "%s:%u", srv->host,
             srv->port);
    log_warn("upstream connect failed", LF_STR("route", s->route->name),
             LF_STR("client", s->client_addr), LF_STR("server", server),
             LF_INT("attempt", s->tries), LF_STR("error", uv_strerror(err)));
}

static void timer_cb(uv_timer_t *t);

/* A try failed and the upstream handle (if any) is closed: retry or give up. */
static void connect_next(struct session *s)
{
    const struct upstream_config *u = &s->route->upstream;
    if (s->tries > u->retries) {
        session_close(s, REASON_UPSTREAM_CONNECT_FAILED);
        return;
    }
    uint64_t backoff = (uint64_t)u->retry_backoff_ms << (s->tries - 1 < 16 ? s->tries - 1 : 16);
    if (backoff > BACKOFF_CAP_MS)
        backoff = BACKOFF_CAP_MS;
    s->step = CONNECT_BACKOFF;
    uv_timer_start(&s->timer, timer_cb, backoff, 0);
}

static void upstream_retry_closed_cb(uv_handle_t *handle)
{
    struct session *s = session_of(handle);
    s->refs--;
    if (s->state == SESSION_CONNECTING && s->step == CONNECT_CLOSING)
        connect_next(s);
    else
        free_if_unused(s);
}

static void connect_failed(struct session *s, int err)
{
    log_try_failed(s, err);
    uv_timer_stop(&s->timer);
    if (s->upstream_open) {
        s->upstream_open = 0;
        s->step = CONNECT_CLOSING;
        uv_close((uv_handle_t *)&s->upstream, upstream_retry_closed_cb);
        return;
    }
    connect_next(s);
}

static void connected(struct session *s)
{
    uv_timer_stop(&s->timer);
    set_state(s, SESSION_RELAYING);
    int fd = -1;
    uv_fileno((uv_handle_t *)&s->upstream, &fd);
    net_set_nodelay(fd);
    s->upstream_port = net_local_port(fd);
    log_debug("upstream connected", LF_STR("route", s->route->name),
              LF_STR("client", s->client_addr), LF_INT("upstream_local_port", s->upstream_port));

    /* Deliver what the client sent meanwhile, in order. */
    struct half *up = &s->up;
    struct chunk *queue = up->queue_head;
    up->queue_head = up->queue_tail = NULL;
    while (queue != NULL) {
        struct chunk *c = queue;
        queue = c->next;
        c->next = NULL;
        up->pending -= c->len;
        if (s->state != SESSION_RELAYING) {
            pool_put(&s->w->pool, c);
            continue;
        }
        half_write(up, c);
    }
    if (s->state != SESSION_RELAYING)
        return;
    if (up->state == HALF_OPEN && up->paused && up->pending < s->route->buffer_bytes / 2)
        half_read_start(up);
    half_flush_then_fin(up);
    if (s->state == SESSION_RELAYING)
        half_read_start(&s->down);
}

static void connect_cb(uv_connect_t *req, int status)
{
    struct session *s = req->data;
    if (status == UV_ECANCELED || s->state != SESSION_CONNECTING)
        return; /* the handle was closed under us: whoever closed it carries on */
    if (status < 0) {
        connect_failed(s, status);
        return;
    }
    connected(s);
}

static void connect_to(struct session *s, const struct sockaddr *sa)
{
    const struct sockaddr *source = NULL;
    if (s->route->upstream.source.ss_family != AF_UNSPEC)
        source = (const struct sockaddr *)&s->route->upstream.source;

    int fd = net_upstream_socket(sa->sa_family, source);
    if (fd < 0) {
        connect_failed(s, fd);
        return;
    }
    uv_tcp_init(&s->w->loop, &s->upstream);
    s->upstream.data = &s->down;
    s->refs++;
    s->upstream_open = 1;
    int rc = uv_tcp_open(&s->upstream, fd);
    if (rc < 0)
        close(fd); /* not adopted by the handle: still ours */
    if (rc == 0) {
        s->connect_req.data = s;
        rc = uv_tcp_connect(&s->connect_req, &s->upstream, sa, connect_cb);
    }
    if (rc < 0) {
        connect_failed(s, rc);
        return;
    }
    s->step = CONNECT_CONNECTING;
    uv_timer_start(&s->timer, timer_cb, s->route->upstream.connect_timeout_ms, 0);
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct session *s = req->data;
    s->refs--;
    if (s->state != SESSION_CONNECTING) {
        uv_freeaddrinfo(res);
        free_if_unused(s);
        return;
    }
    if (status < 0) {
        connect_failed(s, status);
        return;
    }
    struct sockaddr_storage sa;
    memcpy(&sa, res->ai_addr, res->ai_addrlen);
    uv_freeaddrinfo(res);
    uint16_t port = s->route->upstream.servers[s->server].port;
    if (sa.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&sa)->sin6_port = htons(port);
    else
        ((struct sockaddr_in *)&sa)->sin_port = htons(port);
    connect_to(s, (struct sockaddr *)&sa);
}

static void connect_try(struct session *s)
{
    const struct upstream_config *u = &s->route->upstream;
    s->server = s->tries % u->n_servers;
    s->tries++;
    const struct hostport *srv = &u->servers[s->server];
    if (srv->numeric) {
        connect_to(s, (const struct sockaddr *)&srv->sa);
        return;
    }
    /* A configured source address decides the family to resolve. */
    struct addrinfo hints = { .ai_family = u->source.ss_family, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_ADDRCONFIG };
    s->step = CONNECT_RESOLVING;
    s->gai.data = s;
    int rc = uv_getaddrinfo(&s->w->loop, &s->gai, gai_cb, srv->host, NULL, &hints);
    if (rc < 0) {
        connect_failed(s, rc);
        return;
    }
    s->refs++;
}

static void timer_cb(uv_timer_t *t)
{
    struct session *s = t->data;
    switch (s->state) {
    case SESSION_CONNECTING:
        if (s->step == CONNECT_BACKOFF)
            connect_try(s);
        else if (s->step == CONNECT_CONNECTING)
            connect_failed(s, UV_ETIMEDOUT);
        break;
    case SESSION_CLOSING:
        finish_close(s); /* flushing took too long: cut it */
        break;
    default:
        break;
    }
}

/* --- close --------------------------------------------------------------- */

static void log_close(struct session *s)
{
    uint64_t now = uv_now(&s->w->loop);
    log_info("session closed", LF_STR("route", s->route->name),
             LF_STR("client", s->client_addr), LF_INT("upstream_local_port", s->upstream_port),
             LF_INT("bytes_from_client", s->up.bytes), LF_INT("bytes_from_server", s->down.bytes),
             LF_INT("duration_ms", now - s->started_ms), LF_STR("reason", reason_name(s->reason)));
}

/* Closes the client connection, abortively when the policy says so. */
static void close_client(struct session *s)
{
    if (uv_is_closing((uv_handle_t *)&s->client))
        return;
    /* An abortive close leaves no TIME_WAIT on the client's fixed 5-tuple. */
    if (s->client_close != CLIENT_CLOSE_RST ||
        uv_tcp_close_reset(&s->client, handle_closed_cb) < 0)
        uv_close((uv_handle_t *)&s->client, handle_closed_cb);
}

static void close_upstream(struct session *s)
{
    if (!s->upstream_open)
        return;
    s->upstream_open = 0;
    /* FIN before close(): if the server sent bytes we never read, close()
     * alone would send a reset, and the server must see its EOF first. */
    int fd = -1;
    if (uv_fileno((uv_handle_t *)&s->upstream, &fd) == 0)
        shutdown(fd, SHUT_WR);
    close_handle(s, (uv_handle_t *)&s->upstream);
}

/* Logs the close and closes every handle; freed when the last one is closed. */
static void finish_close(struct session *s)
{
    if (s->state == SESSION_CLOSED)
        return;
    int resolving = s->state == SESSION_CONNECTING && s->step == CONNECT_RESOLVING;
    set_state(s, SESSION_CLOSED);
    log_close(s);

    struct worker *w = s->w;
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        w->sessions = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;

    queue_free(s, &s->up);
    close_client(s);
    close_upstream(s);
    close_handle(s, (uv_handle_t *)&s->timer);
    if (resolving)
        uv_cancel((uv_req_t *)&s->gai); /* gai_cb still runs, and frees */
}

/* Which reasons mean "the client is gone": its upstream gets every byte it
 * sent, then FIN, and the client socket is aborted. */
static int client_gone(enum reason r)
{
    switch (r) {
    case REASON_CLIENT_RESET:
    case REASON_CLIENT_SILENCE:
    case REASON_CLIENT_KEEPALIVE:
    case REASON_CLIENT_USER_TIMEOUT:
    case REASON_REPLACED:
        return 1;
    default:
        return 0;
    }
}

static int half_can_flush(const struct half *h)
{
    return h->state == HALF_OPEN || h->state == HALF_FLUSHING;
}

void session_close(struct session *s, enum reason reason)
{
    if (s->state == SESSION_CLOSED)
        return;
    if (s->state == SESSION_CLOSING) {
        if (reason == REASON_SHUTDOWN)
            finish_close(s);
        return;
    }
    s->reason = reason;
    uv_timer_stop(&s->timer);
    if (s->state != SESSION_RELAYING) {
        finish_close(s);
        return;
    }

    /* The side that failed is closed now (its queued writes are cancelled);
     * the other one gets what was read for it, then FIN. */
    struct half *flush = NULL;
    if (client_gone(reason)) {
        s->client_close = CLIENT_CLOSE_RST;
        close_client(s);
        uv_read_stop((uv_stream_t *)&s->upstream);
        if (half_can_flush(&s->up))
            flush = &s->up;
    } else if (reason == REASON_UPSTREAM_RESET) {
        close_upstream(s);
        uv_read_stop((uv_stream_t *)&s->client);
        if (half_can_flush(&s->down))
            flush = &s->down;
    }
    if (flush == NULL) {
        finish_close(s);
        return;
    }
    set_state(s, SESSION_CLOSING);
    flush->state = HALF_FLUSHING;
    uv_timer_start(&s->timer, timer_cb, CLOSE_LINGER_MS, 0);
    half_flush_then_fin(flush);
}

/* --- accept -------------------------------------------------------------- */

int session_accept(struct worker *w, struct listener *l)
{
    struct session *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return UV_ENOMEM;
    static _Atomic uint64_t next_id = 1;
    s->id = atomic_fetch_add(&next_id, 1);
    s->w = w;
    s->route = l->route;
    s->state = SESSION_CONNECTING;
    s->client_close = CLIENT_CLOSE_FIN;
    s->up = (struct half){ .s = s, .src = &s->client, .dst = &s->upstream };
    s->down = (struct half){ .s = s, .src = &s->upstream, .dst = &s->client };

    uv_tcp_init(&w->loop, &s->client);
    s->client.data = &s->up;
    int rc = uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&s->client);
    if (rc < 0) {
        /* Nothing to log or count as a session: close the bare handle. */
        s->state = SESSION_CLOSED;
        s->refs = 1;
        uv_close((uv_handle_t *)&s->client, handle_closed_cb);
        w->n_sessions++; /* balanced by worker_session_freed() */
        return rc;
    }
    s->refs = 2; /* client and timer */
    uv_timer_init(&w->loop, &s->timer);
    s->timer.data = s;
    s->started_ms = uv_now(&w->loop);

    struct sockaddr_storage peer;
    int len = sizeof(peer);
    if (uv_tcp_getpeername(&s->client, (struct sockaddr *)&peer, &len) == 0)
        addr_format((struct sockaddr *)&peer, s->client_addr, sizeof(s->client_addr));
    int fd = -1;
    uv_fileno((uv_handle_t *)&s->client, &fd);
    net_set_nodelay(fd);

    s->next = w->sessions;
    if (w->sessions != NULL)
        w->sessions->prev = s;
    w->sessions = s;
    w->n_sessions++;

    half_read_start(&s->up);
    if (s->state == SESSION_CONNECTING)
        connect_try(s);
    return 0;
}
