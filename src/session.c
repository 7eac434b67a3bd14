/* One client connection and its upstream connection: state machine, relay, close. */

/*
 *  legacy client                 lifeline (one worker's loop)                 server
 *
 *   fixed port ──▶ s->client ── up:   client ─▶ read buffer ─▶ upstream ──▶ s->upstream ──▶
 *              ◀──           ── down: client ◀─ read buffer ◀─ upstream ◀──  (ephemeral port)
 *
 *  Each direction (struct half) reads its source into the worker's read
 *  buffer (up to buffer_bytes at a time, at most POOL_READ_SIZE) and writes
 *  the bytes to its destination at once. What the destination does not take
 *  is copied into pool chunks and queued, and reading stops until it is
 *  written: the destination is the bottleneck then, and reading on would
 *  only copy more. So a direction holds at most one read, buffer_bytes.
 *  Chunks are held only while their bytes are in flight.
 *
 *  Session states, moved only by set_state() (see `transitions`; every
 *  state and what its timer does is listed in SESSION_STATES):
 *
 *    WAITING, BACKOFF ──▶ (RESOLVING ──▶) CONNECTING ──▶ RELAYING
 *    a failed try, or the server leaving a RELAYING session whose
 *    upstream.on_close is "reconnect" ──▶ RECONNECTING ──▶ BACKOFF
 *    CONNECTING ──▶ AWAIT_CONNECT ──▶ FLUSHING ──▶ AWAIT_SERVER
 *    RELAYING ──▶ FLUSHING or AWAIT_SERVER
 *    any state ──▶ CLOSED
 *
 *  WAITING        another session of the same client identity still owns
 *                 the server side; it is being evicted. The registry says
 *                 when it is done (REGISTRY_MSG_GO), so the server sees the old
 *                 connection's EOF before the new connection exists.
 *  RESOLVING,     a try: resolve the server's name, connect (timeout);
 *  CONNECTING     client bytes queue on the session (bounded, then backpressure).
 *  RECONNECTING,  a failed try: its handle closes, then the next try waits
 *  BACKOFF        retry_backoff_ms (doubling), or `retries` ends it. Also
 *                 entered from RELAYING when the server closes and
 *                 upstream.on_close is "reconnect".
 *  RELAYING       both directions; a source's EOF flushes then FINs its
 *                 destination while the other direction goes on.
 *  FLUSHING       one side is gone and closed; the other gets what was read
 *                 for it, then FIN (bounded by CLOSE_LINGER_MS).
 *  AWAIT_CONNECT  a client given up on while its upstream handshake was in
 *                 flight: wait for that to end, then flush to the server.
 *  AWAIT_SERVER   after the FIN to the server, wait until the server has
 *                 finished with the connection (bounded by AWAIT_SERVER_MS),
 *                 reading and dropping what it still sends: closing with
 *                 unread input would reset the connection and destroy what
 *                 is still queued for it, and the identity (if the session
 *                 owns one) passes on only then.
 *  CLOSED         the close is logged, the identity released; handles are
 *                 closing and the session is freed in the last close
 *                 callback (free_if_unused), never earlier.
 */
#include "lifeline/session.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lifeline/addr.h"
#include "lifeline/budget.h"
#include "lifeline/liveness.h"
#include "lifeline/log.h"
#include "lifeline/metrics.h"
#include "lifeline/net.h"
#include "lifeline/pool.h"
#include "lifeline/registry.h"

/* How long a closing session may spend flushing before it is cut. */
#define CLOSE_LINGER_MS 5000
/* How long a replaced session waits for the server to finish with the old
 * connection, how often it looks, and the grace after the FIN is acked. */
#define AWAIT_SERVER_MS 1000
#define AWAIT_POLL_MS 5
#define AWAIT_GRACE_MS 50
/* due_ms of a state without a deadline. */
#define NO_DEADLINE UINT64_MAX
/* With upstream.on_close "reconnect", a server connection that ends sooner
 * than this after it was established counts as a failed try: a server that
 * accepts and closes (or resets) at once is retried with backoff and given
 * up on after `retries`, instead of being redialled in a tight loop. */
#define UPSTREAM_STABLE_MS 1000
/* The smallest read, when the direction is close to buffer_bytes. */
#define READ_MIN 1024
/* Unread input read and dropped before a graceful close, at most. */
#define DRAIN_BYTES_MAX (4 * POOL_READ_SIZE)

/* Every step of a session is a state of its own, moved only by
 * set_state(); its timer (a deadline on the host's heap) serves the state
 * it is in, as the comments say.
 * Each belongs to a phase, which is what /sessions shows and what the
 * code asks (is_connecting, is_closing). */
#define SESSION_STATES(X)                                                                          \
    X(WAITING, "waiting", WAITING)              /* the registry decides: no timer */               \
    X(RESOLVING, "resolving", CONNECTING)       /* uv_getaddrinfo in flight: no timer */           \
    X(CONNECTING, "connecting", CONNECTING)     /* handshake; timer: connect timeout */            \
    X(RECONNECTING, "reconnecting", CONNECTING) /* the last try's handle closing */                \
    X(BACKOFF, "backoff", CONNECTING)           /* timer: the pause before the next try */         \
    X(RELAYING, "relaying", RELAYING)           /* no deadline (the timer watches silence) */      \
    X(FLUSHING, "flushing", CLOSING)            /* timer: CLOSE_LINGER_MS, then cut */             \
    X(AWAIT_CONNECT, "await_connect", CLOSING)  /* given up mid-handshake; timer: connect */       \
    X(AWAIT_SERVER, "await_server", CLOSING)    /* FIN sent upstream; timer: polls the server */   \
    X(CLOSED, "closed", CLOSED)                 /* handles closing; freed by the last */

enum session_state {
#define STATE_ENUM_(id, name, phase) SESSION_##id,
    SESSION_STATES(STATE_ENUM_)
#undef STATE_ENUM_
};

enum session_phase { PHASE_WAITING, PHASE_CONNECTING, PHASE_RELAYING, PHASE_CLOSING, PHASE_CLOSED };

static const char *const phase_names[] = {
    [PHASE_WAITING] = "waiting", [PHASE_CONNECTING] = "connecting", [PHASE_RELAYING] = "relaying",
    [PHASE_CLOSING] = "closing", [PHASE_CLOSED] = "closed",
};

static const enum session_phase state_phase[] = {
#define STATE_PHASE_(id, name, phase) [SESSION_##id] = PHASE_##phase,
    SESSION_STATES(STATE_PHASE_)
#undef STATE_PHASE_
};

#define BIT(state) (1u << (state))
#define TRYING (BIT(SESSION_RESOLVING) | BIT(SESSION_CONNECTING) | BIT(SESSION_RECONNECTING))
static const unsigned transitions[] = {
    [SESSION_WAITING] = TRYING | BIT(SESSION_CLOSED),
    [SESSION_RESOLVING] = BIT(SESSION_CONNECTING) | BIT(SESSION_RECONNECTING) | BIT(SESSION_CLOSED),
    [SESSION_CONNECTING] = BIT(SESSION_RELAYING) | BIT(SESSION_RECONNECTING) |
                           BIT(SESSION_AWAIT_CONNECT) | BIT(SESSION_CLOSED),
    [SESSION_RECONNECTING] = BIT(SESSION_BACKOFF) | BIT(SESSION_CLOSED),
    [SESSION_BACKOFF] = TRYING | BIT(SESSION_CLOSED),
    [SESSION_RELAYING] = BIT(SESSION_RECONNECTING) | BIT(SESSION_FLUSHING) |
                         BIT(SESSION_AWAIT_SERVER) | BIT(SESSION_CLOSED),
    [SESSION_FLUSHING] = BIT(SESSION_AWAIT_SERVER) | BIT(SESSION_CLOSED),
    [SESSION_AWAIT_CONNECT] = BIT(SESSION_FLUSHING) | BIT(SESSION_CLOSED),
    [SESSION_AWAIT_SERVER] = BIT(SESSION_CLOSED),
    [SESSION_CLOSED] = 0,
};

/* Trying to reach a server. */
static int is_connecting(enum session_state st) { return state_phase[st] == PHASE_CONNECTING; }

/* One side is gone. */
static int is_closing(enum session_state st) { return state_phase[st] == PHASE_CLOSING; }

/* How the server was seen to finish with a replaced session's connection. */
enum upstream_finish {
    FINISH_NOT_AWAITED,
    FINISH_SERVER_EOF, /* the server closed its side: it has read our EOF */
    FINISH_FIN_ACKED,  /* our FIN was acknowledged, plus a grace period */
    FINISH_TIMEOUT,    /* neither within AWAIT_SERVER_MS */
};

static const char *const finish_names[] = {
    [FINISH_NOT_AWAITED] = "",
    [FINISH_SERVER_EOF] = "server_eof",
    [FINISH_FIN_ACKED] = "fin_acked",
    [FINISH_TIMEOUT] = "timeout",
};

/* One direction of the relay. */
enum half_state {
    HALF_OPEN,     /* reading the source, writing the destination */
    HALF_FLUSHING, /* source finished: write what is pending, then FIN */
    HALF_DONE,     /* FIN sent, or the direction was abandoned */
};

/* Whether an open direction reads its source. */
enum half_read {
    READ_ON,     /* reading (or not started yet) */
    READ_HELD,   /* stopped until what it holds is written: the destination
                     * is slow, or not connected yet */
    READ_BUDGET, /* stopped: buffer_total_bytes is spent; on its worker's
                     * budget list until there is room (session_budget_retry) */
    READ_FROZEN, /* stopped for a live upgrade (session_hold): reads again at
                     * session_thaw, or moves to the new process */
};

/* One direction of the relay: up reads the client and writes the server,
 * down the other way (half_src, half_dst). */
struct half {
    struct session *s;
    enum half_state state;
    enum half_read read;
    struct budget_waiter waiter; /* READ_BUDGET: on the worker's list */
    size_t pending;              /* bytes read and not yet written */
    uint64_t bytes;              /* bytes read from the source */
};

/* Fields are ordered by size: one struct per live connection, so padding
 * shows in every idle session's memory. */
struct session {
    struct session_link link;         /* its host's: list, index, limit slot */
    uint64_t id;                      /* process-wide, for messages */
    struct config *cfg;               /* a reference: the config the session started with */
    const struct route_config *route; /* in cfg */
    struct route_stats *stats;        /* the route's counters on this worker */
    enum session_state state;
    enum upstream_finish finish;
    enum reason reason;           /* set once, by the first session_close() */
    enum reason eof_reason;       /* the side whose EOF came first */
    enum close_mode client_close; /* how finish_close() ends the client side */
    int refs;                     /* handles and requests whose callbacks are due */
    unsigned tries;               /* connect tries since the last success */
    uint32_t server;              /* index of the server of the current try */
    uint16_t upstream_port;       /* our local port of the upstream connection */
    unsigned saw_eof : 1;
    unsigned registered : 1;      /* owns (or waits for) its client identity */
    unsigned adopted : 1;         /* from a live upgrade, not thawed yet */
    unsigned upstream_open : 1;   /* upstream handle initialised and not yet closing */
    unsigned silence_watched : 1; /* heartbeat.silence_ms is on and the client may still speak */
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } peer; /* the client's address and port */

    uv_tcp_t client;
    uv_tcp_t upstream;
    /* One deadline on the host's heap for two: the state's (connect
     * timeout, backoff, linger or await) and the client's silence; set for
     * the nearer. */
    struct deadline deadline;
    uint64_t due_ms; /* the state's deadline (uv_now() time), or NO_DEADLINE */
    /* What one state needs, in memory the others share: the resolve
     * request while RESOLVING (to cancel it: the requests of a connect try
     * are allocated for their step and freed by their callbacks, so a
     * relaying session carries neither), the wait for the server while
     * AWAIT_SERVER. */
    union {
        uv_getaddrinfo_t *gai;
        struct {
            uint64_t since_ms;
            uint64_t fin_acked_ms; /* 0 until seen */
        } await;
    };
    /* Client bytes read before the upstream connection was up, in order. */
    struct chunk *queue_head;
    struct chunk *queue_tail;

    struct half up;   /* client -> upstream */
    struct half down; /* upstream -> client */

    uint64_t started_ms;
    uint64_t connected_ms; /* when the current server connection was established */
    uint64_t last_rx_ms;   /* when the client last sent a byte */
};

/* Its host, as the loop of its client handle says: one pointer fewer in
 * every session (session.h: the host's loop points at it). */
static struct session_host *host_of(const struct session *s) { return s->client.loop->data; }

/* The stream a half reads, and the one it writes. */
static uv_tcp_t *half_src(struct half *h)
{
    return h == &h->s->up ? &h->s->client : &h->s->upstream;
}
static uv_tcp_t *half_dst(struct half *h)
{
    return h == &h->s->up ? &h->s->upstream : &h->s->client;
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void connect_try(struct session *s);
static void finish_close(struct session *s);
static void await_server(struct session *s);

static const char *const state_names[] = {
#define STATE_NAME_(id, name, phase) [SESSION_##id] = name,
    SESSION_STATES(STATE_NAME_)
#undef STATE_NAME_
};

static void set_state(struct session *s, enum session_state next)
{
    /* An illegal move is a bug worth stopping for. */
    if (!(transitions[s->state] & BIT(next))) {
        log_error("illegal session state change", LF_STR("from", state_names[s->state]),
                  LF_STR("to", state_names[next]));
        abort();
    }
    s->state = next;
}

/* Adds a member under a constant key (not copied: one allocation fewer). */
static int add(cJSON *o, const char *key, cJSON *item)
{
    if (item == NULL || !cJSON_AddItemToObjectCS(o, key, item)) {
        cJSON_Delete(item);
        return 0;
    }
    return 1;
}

cJSON *session_describe(const struct session *s)
{
    char client[ADDR_STR_MAX];
    uint64_t now = uv_now(host_of(s)->loop);
    cJSON *o = cJSON_CreateObject();
    /* Numbers are doubles in cJSON: exact up to 2^53, far beyond any count here. */
    if (o == NULL || !add(o, "id", cJSON_CreateNumber((double)s->id)) ||
        !add(o, "route", cJSON_CreateString(s->route->name)) ||
        !add(o, "worker", cJSON_CreateNumber(host_of(s)->id)) ||
        !add(o, "client", cJSON_CreateString(addr_format(&s->peer.sa, client, sizeof(client)))) ||
        !add(o, "upstream_local_port", cJSON_CreateNumber(s->upstream_port)) ||
        !add(o, "state", cJSON_CreateString(phase_names[state_phase[s->state]])) ||
        !add(o, "bytes_from_client", cJSON_CreateNumber((double)s->up.bytes)) ||
        !add(o, "bytes_from_server", cJSON_CreateNumber((double)s->down.bytes)) ||
        !add(o, "age_ms", cJSON_CreateNumber((double)(now - s->started_ms))) ||
        !add(o, "client_idle_ms", cJSON_CreateNumber((double)(now - s->last_rx_ms)))) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

uint64_t session_id(const struct session *s) { return s->id; }

static int is_client(const struct session *s, const uv_tcp_t *t) { return t == &s->client; }

static int client_fd(const struct session *s)
{
    int fd = -1;
    uv_fileno((const uv_handle_t *)&s->client, &fd);
    return fd;
}

/* The reason for a failed read or write on one side. A client socket that
 * timed out was ended by keepalive or by the user timeout; TCP_INFO says which. */
static enum reason failure_reason(const struct session *s, const uv_tcp_t *t, int err)
{
    if (!is_client(s, t))
        return REASON_UPSTREAM_RESET;
    if (err == UV_ETIMEDOUT)
        return liveness_timeout_reason(client_fd(s));
    return REASON_CLIENT_RESET;
}

/* --- memory: one free point -------------------------------------------- */

static void free_if_unused(struct session *s)
{
    if (s->refs > 0 || s->state != SESSION_CLOSED)
        return;
    struct session_host *h = host_of(s);
    config_free(s->cfg);
    free(s);
    h->freed(h);
}

/* A session's handles (its two TCP handles) point at their reading half. */
static struct session *session_of(const uv_handle_t *h) { return ((struct half *)h->data)->s; }

static void handle_closed_cb(uv_handle_t *h)
{
    struct session *s = session_of(h);
    s->refs--;
    free_if_unused(s);
}

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, handle_closed_cb);
}

/* Relay buffers come from the worker's pool and count against the
 * process-wide buffer budget while a session holds them. */
static struct chunk *chunk_get(struct session *s)
{
    struct chunk *c = pool_get(host_of(s)->pool);
    if (c != NULL)
        budget_take_buf(host_of(s)->budget, sizeof(*c));
    return c;
}

static void chunk_put(struct session *s, struct chunk *c)
{
    pool_put(host_of(s)->pool, c);
    budget_give_buf(host_of(s)->budget, sizeof(*c));
}

static void queue_free(struct session *s)
{
    while (s->queue_head != NULL) {
        struct chunk *c = s->queue_head;
        s->queue_head = c->next;
        s->up.pending -= c->len;
        chunk_put(s, c);
    }
    s->queue_tail = NULL;
}

/* --- liveness: silence ---------------------------------------------------- */

/* Bytes the client sent that nobody has read yet: reading is stopped
 * (backpressure, a live upgrade), not the client silent. */
static int client_has_input(const struct session *s)
{
    int fd = -1, n = 0;
    return uv_fileno((const uv_handle_t *)&s->client, &fd) == 0 && ioctl(fd, FIONREAD, &n) == 0 &&
           n > 0;
}

/* Sets the session's deadline for the nearer of the state's and the end of
 * the client's allowed silence. Reads only note the time (last_rx_ms): the
 * deadline moves when it comes, not on every read. */
static void timer_arm(struct session *s)
{
    if (s->state == SESSION_CLOSED) {
        /* Its memory goes with its last handle: it must not be on the heap. */
        deadline_clear(host_of(s)->deadlines, &s->deadline);
        return;
    }
    uint64_t at = s->due_ms;
    if (s->silence_watched) {
        uint64_t quiet_end = s->last_rx_ms + s->route->client.heartbeat.silence_ms;
        if (quiet_end < at)
            at = quiet_end;
    }
    if (at == NO_DEADLINE)
        deadline_clear(host_of(s)->deadlines, &s->deadline);
    else
        deadline_set(host_of(s)->deadlines, &s->deadline, at);
}

/* The state's deadline, `ms` from now. */
static void state_timer(struct session *s, uint64_t ms)
{
    s->due_ms = uv_now(host_of(s)->loop) + ms;
    timer_arm(s);
}

static void state_timer_stop(struct session *s)
{
    s->due_ms = NO_DEADLINE;
    timer_arm(s);
}

/* Watches the client's silence from now on, if the route asks for it. */
static void silence_watch(struct session *s)
{
    s->silence_watched = s->route->client.heartbeat.silence_ms > 0;
    timer_arm(s);
}

/* A client that said goodbye, or a session that is closing or moving, is
 * not silent. */
static void silence_unwatch(struct session *s)
{
    s->silence_watched = 0;
    timer_arm(s);
}

/* Whether the client has been silent for too long: then the session closes
 * and the caller does nothing more. */
static int silence_expired(struct session *s)
{
    uint64_t now = uv_now(host_of(s)->loop);
    if (!s->silence_watched || now - s->last_rx_ms < s->route->client.heartbeat.silence_ms)
        return 0;
    if (client_has_input(s)) {
        s->last_rx_ms = now;
        return 0;
    }
    session_close(s, REASON_CLIENT_SILENCE);
    return 1;
}

/* --- relay -------------------------------------------------------------- */

/* The most a read of this direction may take now, as the process-wide
 * buffer budget allows: whatever of it the destination does not take at
 * once is held in chunks. A relaying direction that holds nothing may
 * always read one chunk's worth, so that sessions whose destinations keep
 * up go on moving (in smaller reads) while stalled ones have spent the
 * budget. 0: wait for memory. */
static size_t budget_allows(const struct half *h, size_t want)
{
    size_t room = budget_buf_room(host_of(h->s)->budget);
    if (room >= want + sizeof(struct chunk))
        return want; /* the common case: far from the bound */
    size_t allowed = room / sizeof(struct chunk) * POOL_CHUNK_SIZE;
    if (allowed < POOL_CHUNK_SIZE && h->pending == 0 && h->s->state == SESSION_RELAYING)
        allowed = POOL_CHUNK_SIZE;
    return allowed < want ? allowed : want;
}

/* Reads as much as the direction may still hold: large reads mean few
 * system calls per byte when the destination keeps up. */
static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    struct half *h = handle->data;
    char *base = pool_read_buffer(host_of(h->s)->pool);
    if (base == NULL) {
        *buf = uv_buf_init(NULL, 0); /* read_cb gets UV_ENOBUFS */
        return;
    }
    size_t limit = h->s->route->buffer_bytes;
    size_t room = h->pending + READ_MIN < limit ? limit - h->pending : READ_MIN;
    if (room > POOL_READ_SIZE)
        room = POOL_READ_SIZE;
    /* A closing session reads the server only for its EOF, holding nothing. */
    if (!is_closing(h->s->state) && (room = budget_allows(h, room)) < READ_MIN)
        room = 0; /* read_cb gets UV_ENOBUFS: wait for memory */
    *buf = uv_buf_init(room > 0 ? base : NULL, (unsigned)room);
}

static void half_read_start(struct half *h)
{
    if (h->read == READ_BUDGET)
        host_of(h->s)->leave_budget(host_of(h->s), &h->waiter);
    h->read = READ_ON;
    int rc = uv_read_start((uv_stream_t *)half_src(h), alloc_cb, read_cb);
    if (rc < 0)
        session_close(h->s, failure_reason(h->s, half_src(h), rc));
}

/* Reading stops until what the direction holds is written. */
static void half_pause(struct half *h)
{
    if (h->read == READ_ON && h->state == HALF_OPEN) {
        uv_read_stop((uv_stream_t *)half_src(h));
        h->read = READ_HELD;
    }
}

/* Reading stops until the buffer budget has room. */
static void half_wait_budget(struct half *h)
{
    uv_read_stop((uv_stream_t *)half_src(h));
    h->read = READ_BUDGET;
    host_of(h->s)->wait_budget(host_of(h->s), &h->waiter);
}

/* The direction will not read again, or starts over (a new server connection). */
static void half_read_reset(struct half *h)
{
    if (h->read == READ_BUDGET)
        host_of(h->s)->leave_budget(host_of(h->s), &h->waiter);
    h->read = READ_ON;
}

void session_budget_retry(struct budget_waiter *bw)
{
    struct half *h = (struct half *)(void *)((char *)bw - offsetof(struct half, waiter));
    struct session *s = h->s;
    /* A waiting session reads its client too (its bytes queue for the
     * server it will have), so it waits for memory like the others. */
    if (h->read != READ_BUDGET || h->state != HALF_OPEN ||
        (s->state != SESSION_RELAYING && s->state != SESSION_WAITING && !is_connecting(s->state)))
        return;
    if (budget_allows(h, READ_MIN) < READ_MIN) {
        host_of(s)->wait_budget(host_of(s), bw); /* still no room */
        return;
    }
    half_read_start(h);
}

static void reconnect(struct session *s, int err);

/* upstream.on_close "reconnect" keeps a live client when the server goes. */
static int should_reconnect(const struct session *s)
{
    return s->route->upstream.on_close == ON_CLOSE_RECONNECT && s->state == SESSION_RELAYING &&
           s->up.state == HALF_OPEN;
}

/* Writing to one side failed. While closing, that was the surviving side:
 * stop now. */
static void half_failed(struct half *h, int err)
{
    struct session *s = h->s;
    if (is_closing(s->state))
        finish_close(s);
    else if (half_dst(h) == &s->upstream && should_reconnect(s))
        reconnect(s, err);
    else
        session_close(s, failure_reason(s, half_dst(h), err));
}

/* The FIN of this direction went out (or failed): what comes next. */
static void half_fin_done(struct half *h, int status)
{
    struct session *s = h->s;

    h->state = HALF_DONE;
    if (status < 0) {
        half_failed(h, status);
        return;
    }
    if (is_closing(s->state)) {
        if (s->state == SESSION_AWAIT_SERVER)
            return; /* waiting already */
        if (h == &s->up)
            await_server(s);
        else
            finish_close(s);
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
    /* Nothing of this half is queued in libuv (pending counts it until
     * write_cb), and no other half writes to dst: shutdown(2) now is what
     * uv_shutdown() would do later, minus an epoll round for POLLOUT. */
    int fd = -1;
    int rc = uv_fileno((uv_handle_t *)half_dst(h), &fd);
    if (rc == 0 && shutdown(fd, SHUT_WR) < 0)
        rc = uv_translate_sys_error(errno);
    half_fin_done(h, rc);
}

static void write_cb(uv_write_t *req, int status)
{
    struct chunk *c = req->data;
    struct half *h = c->owner;
    struct session *s = h->s;

    h->pending -= c->len;
    chunk_put(s, c);
    if (status == UV_ECANCELED)
        return;
    if (status < 0) {
        half_failed(h, status);
        return;
    }
    if (h->read == READ_HELD && h->pending == 0 && s->state == SESSION_RELAYING)
        half_read_start(h);
    half_flush_then_fin(h);
}

/* Queues a write of c's bytes in libuv; the chunk is held until write_cb.
 * Returns 0, or a negative UV error once the half has failed. */
static int half_write_queued(struct half *h, struct chunk *c)
{
    uv_buf_t buf = uv_buf_init(c->data, (unsigned)c->len);
    c->owner = h;
    c->req.data = c;
    h->pending += c->len;
    int rc = uv_write(&c->req, (uv_stream_t *)half_dst(h), &buf, 1, write_cb);
    if (rc < 0) {
        h->pending -= c->len;
        chunk_put(h->s, c);
        half_failed(h, rc);
    }
    return rc;
}

/* Copies bytes into chunks, which the caller queues.
 * Returns the first chunk of the list, or NULL when out of memory. */
static struct chunk *copy_to_chunks(struct half *h, const char *data, size_t len)
{
    struct chunk *head = NULL, **tail = &head;
    while (len > 0) {
        struct chunk *c = chunk_get(h->s);
        if (c == NULL) {
            while (head != NULL) {
                struct chunk *next = head->next;
                chunk_put(h->s, head);
                head = next;
            }
            return NULL;
        }
        c->len = len < POOL_CHUNK_SIZE ? len : POOL_CHUNK_SIZE;
        memcpy(c->data, data, c->len);
        data += c->len;
        len -= c->len;
        *tail = c;
        tail = &c->next;
    }
    return head;
}

/* Writes bytes (from the read buffer, or a queued chunk): directly when the
 * socket takes them, else the rest is copied into chunks and queued in libuv. */
static void half_send(struct half *h, const char *data, size_t len)
{
    uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)half_dst(h), &buf, 1);
    if (n == (int)len)
        return;
    if (n < 0 && n != UV_EAGAIN) {
        half_failed(h, n);
        return;
    }
    if (n > 0) {
        data += n;
        len -= (size_t)n;
    }
    struct chunk *c = copy_to_chunks(h, data, len);
    if (c == NULL) {
        half_failed(h, UV_ENOBUFS);
        return;
    }
    while (c != NULL) {
        struct chunk *next = c->next;
        c->next = NULL;
        if (half_write_queued(h, c) < 0) {
            for (c = next; c != NULL; c = next) {
                next = c->next;
                chunk_put(h->s, c);
            }
            return;
        }
        c = next;
    }
    half_pause(h);
}

/* Keeps client bytes, in order, until the upstream connection is up.
 * Returns 0, or UV_ENOBUFS when out of memory. */
static int queue_add(struct session *s, const char *data, size_t len)
{
    struct half *h = &s->up;
    /* Fill the last chunk first: a client that sends a byte at a time must
     * not cost a chunk per read. */
    struct chunk *tail = s->queue_tail;
    if (tail != NULL && tail->len < POOL_CHUNK_SIZE) {
        size_t n = POOL_CHUNK_SIZE - tail->len < len ? POOL_CHUNK_SIZE - tail->len : len;
        memcpy(tail->data + tail->len, data, n);
        tail->len += n;
        h->pending += n;
        data += n;
        len -= n;
    }
    if (len == 0) {
        if (h->pending >= s->route->buffer_bytes)
            half_pause(h);
        return 0;
    }
    struct chunk *c = copy_to_chunks(h, data, len);
    if (c == NULL)
        return UV_ENOBUFS;
    if (s->queue_tail != NULL)
        s->queue_tail->next = c;
    else
        s->queue_head = c;
    for (; c != NULL; c = c->next) {
        h->pending += c->len;
        s->queue_tail = c;
    }
    if (h->pending >= s->route->buffer_bytes)
        half_pause(h);
    return 0;
}

static void half_eof(struct half *h)
{
    struct session *s = h->s;
    if (h == &s->down && should_reconnect(s)) {
        reconnect(s, UV_EOF);
        return;
    }
    if (!s->saw_eof) {
        s->saw_eof = 1;
        s->eof_reason = h == &s->up ? REASON_CLIENT_EOF : REASON_UPSTREAM_EOF;
    }
    if (h == &s->up)
        silence_unwatch(s);
    h->state = HALF_FLUSHING;
    if (s->state == SESSION_RELAYING)
        half_flush_then_fin(h);
    /* Before RELAYING, the queued bytes and the FIN go out once connected. */
}

static void await_done(struct session *s, enum upstream_finish how);

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct half *h = stream->data;
    struct session *s = h->s;

    if (is_closing(s->state)) {
        /* Only the server is read while closing (drop_server_input): for
         * its EOF, not its bytes. */
        if (nread < 0 && h == &s->down) {
            uv_read_stop(stream);
            h->state = HALF_DONE;
            if (s->state == SESSION_AWAIT_SERVER)
                await_done(s, FINISH_SERVER_EOF);
        }
        return;
    }
    if (nread > 0) {
        h->bytes += (uint64_t)nread;
        if (h == &s->up) {
            s->last_rx_ms = uv_now(host_of(s)->loop);
            metric_add(&s->stats->c[RC_BYTES_FROM_CLIENT], (uint64_t)nread);
        } else {
            metric_add(&s->stats->c[RC_BYTES_FROM_SERVER], (uint64_t)nread);
        }
        if (s->state == SESSION_RELAYING)
            half_send(h, buf->base, (size_t)nread);
        else if (queue_add(s, buf->base, (size_t)nread) < 0) /* only the client reads yet */
            session_close(s, failure_reason(s, half_src(h), UV_ENOBUFS));
        return;
    }
    if (nread == 0)
        return; /* EAGAIN */
    if (nread == UV_ENOBUFS) {
        half_wait_budget(h); /* alloc_cb found no memory to read into */
        return;
    }
    int fd = -1;
    if (nread == UV_EOF && uv_fileno((uv_handle_t *)stream, &fd) == 0 && !net_was_reset(fd)) {
        uv_read_stop(stream);
        half_eof(h);
        return;
    }
    if (nread == UV_EOF)
        nread = UV_ECONNRESET;
    if (h == &s->down && should_reconnect(s)) {
        reconnect(s, (int)nread);
        return;
    }
    session_close(s, failure_reason(s, half_src(h), (int)nread));
}

/* --- upstream connect: tries, timeout, backoff, failover ----------------- */

static const char *server_name(const struct session *s, char *buf, size_t len)
{
    return addr_format_hostport(&s->route->upstream.servers[s->server], buf, len);
}

/* Failed tries and reconnects are logged within the worker's bound, so that
 * a flapping server cannot flood the log: what is dropped is counted in the
 * next line's `suppressed` field. */
static int upstream_log_allowed(struct session *s, enum log_level level, uint64_t *suppressed)
{
    return log_enabled(level) &&
           log_limit_allow(host_of(s)->upstream_log, uv_now(host_of(s)->loop), suppressed);
}

static void log_try_failed(struct session *s, int err)
{
    uint64_t suppressed;
    if (!upstream_log_allowed(s, LOG_WARN, &suppressed))
        return;
    char server[ADDR_STR_MAX], client[ADDR_STR_MAX];
    addr_format(&s->peer.sa, client, sizeof(client));
    server_name(s, server, sizeof(server));
    /* With the client's address as the source, a timeout nearly always means
     * the server's replies went to the client instead of back to lifeline. */
    const char *hint =
        s->route->upstream.source.kind != SOURCE_CLIENT ? NULL
        : err == UV_ETIMEDOUT    ? "source_address \"client\": are the server's replies routed "
                                   "back to lifeline? (transparent-routing.sh status; in a sidecar "
                                   "upstream.mark must be its MARK)"
        : err == UV_EAFNOSUPPORT ? "source_address \"client\": the client and the server are of "
                                   "different address families"
                                 : NULL;
    if (hint != NULL)
        log_warn("upstream connect failed", LF_STR("route", s->route->name),
                 LF_STR("client", client), LF_STR("server", server), LF_INT("attempt", s->tries),
                 LF_STR("error", uv_strerror(err)), LF_STR("hint", hint),
                 LF_INT("suppressed", suppressed));
    else
        log_warn("upstream connect failed", LF_STR("route", s->route->name),
                 LF_STR("client", client), LF_STR("server", server), LF_INT("attempt", s->tries),
                 LF_STR("error", uv_strerror(err)), LF_INT("suppressed", suppressed));
}

static void count_try_failed(struct session *s)
{
    struct server_stats *sv = metrics_server(s->stats, &s->route->upstream.servers[s->server]);
    if (sv != NULL)
        metric_add(&sv->c[SC_FAILURES], 1);
}

static uint64_t backoff_ms(const struct session *s)
{
    uint64_t base = s->route->upstream.retry_backoff_ms;
    unsigned shift = s->tries <= 1 ? 0 : s->tries - 1;
    uint64_t ms = base << (shift < 16 ? shift : 16);
    uint64_t cap = s->route->upstream.retry_backoff_max_ms;
    return ms < cap ? ms : cap;
}

/* The previous try failed and its handle is closed: retry or give up. */
static void connect_next(struct session *s)
{
    if (s->tries > s->route->upstream.retries) {
        session_close(s, REASON_UPSTREAM_CONNECT_FAILED);
        return;
    }
    set_state(s, SESSION_BACKOFF);
    state_timer(s, s->tries == 0 ? 0 : backoff_ms(s));
}

static void upstream_retry_closed_cb(uv_handle_t *handle)
{
    struct session *s = session_of(handle);
    s->refs--;
    if (s->state == SESSION_RECONNECTING)
        connect_next(s);
    else
        free_if_unused(s);
}

/* Closes the upstream handle, then connect_next() decides what comes next. */
static void close_upstream_then_retry(struct session *s)
{
    state_timer_stop(s);
    set_state(s, SESSION_RECONNECTING);
    if (!s->upstream_open) {
        connect_next(s);
        return;
    }
    s->upstream_open = 0;
    uv_close((uv_handle_t *)&s->upstream, upstream_retry_closed_cb);
}

static void connect_failed(struct session *s, int err)
{
    count_try_failed(s);
    log_try_failed(s, err);
    close_upstream_then_retry(s);
}

/* upstream.on_close "reconnect": the server closed (err UV_EOF) or reset the
 * connection, but the client is still here. A connection that lived less
 * than UPSTREAM_STABLE_MS was a failed try: the count goes on, and with it
 * the backoff and the `retries` bound. One that lived longer proved the
 * server up: the next try starts a fresh count, at once. Bytes queued for
 * the old connection are lost with it; what the client sends from now on
 * waits for the new one. */
static void reconnect(struct session *s, int err)
{
    char client[ADDR_STR_MAX], server[ADDR_STR_MAX];
    uint64_t lived = uv_now(host_of(s)->loop) - s->connected_ms;
    uint64_t suppressed;
    if (lived < UPSTREAM_STABLE_MS) {
        count_try_failed(s);
        if (upstream_log_allowed(s, LOG_WARN, &suppressed))
            log_warn("upstream closed early", LF_STR("route", s->route->name),
                     LF_STR("client", addr_format(&s->peer.sa, client, sizeof(client))),
                     LF_STR("server", server_name(s, server, sizeof(server))),
                     LF_INT("attempt", s->tries), LF_INT("lived_ms", lived),
                     LF_STR("error", uv_strerror(err)), LF_INT("suppressed", suppressed));
    } else {
        s->tries = 0;
        if (upstream_log_allowed(s, LOG_INFO, &suppressed))
            log_info("upstream closed, reconnecting", LF_STR("route", s->route->name),
                     LF_STR("client", addr_format(&s->peer.sa, client, sizeof(client))),
                     LF_INT("upstream_local_port", s->upstream_port),
                     LF_STR("error", uv_strerror(err)), LF_INT("suppressed", suppressed));
    }
    s->upstream_port = 0;
    s->down.state = HALF_OPEN;
    half_read_reset(&s->down);
    close_upstream_then_retry(s);
}

/* Writes what the client sent before the upstream was up, in order, for as
 * long as the session stays in `state` (a failed write ends it). */
static void deliver_queue(struct session *s, enum session_state state)
{
    struct half *up = &s->up;
    struct chunk *queue = s->queue_head;
    s->queue_head = s->queue_tail = NULL;
    while (queue != NULL) {
        struct chunk *c = queue;
        queue = c->next;
        c->next = NULL;
        up->pending -= c->len;
        if (s->state == state)
            half_send(up, c->data, c->len);
        chunk_put(s, c);
    }
}

static void connected(struct session *s)
{
    state_timer_stop(s);
    set_state(s, SESSION_RELAYING);
    s->connected_ms = uv_now(host_of(s)->loop);
    int fd = -1;
    uv_fileno((uv_handle_t *)&s->upstream, &fd);
    net_set_nodelay(fd);
    s->upstream_port = net_local_port(fd);
    if (log_enabled(LOG_DEBUG)) {
        char client[ADDR_STR_MAX];
        log_debug("upstream connected", LF_STR("route", s->route->name),
                  LF_STR("client", addr_format(&s->peer.sa, client, sizeof(client))),
                  LF_INT("upstream_local_port", s->upstream_port));
    }

    deliver_queue(s, SESSION_RELAYING);
    if (s->state != SESSION_RELAYING)
        return;
    struct half *up = &s->up;
    if (up->state == HALF_OPEN && up->read == READ_HELD && up->pending == 0)
        half_read_start(up);
    half_flush_then_fin(up);
    if (s->state == SESSION_RELAYING)
        half_read_start(&s->down);
}

static void flush_then_fin(struct session *s, struct half *h);

/* While lifeline flushes the client's bytes to the server and then waits
 * for it, it reads what the server sends and drops it: a server that cannot
 * write may stop reading, which would stall the flush, and close() with
 * unread input sends a reset. The server's EOF ends the reading. */
static void drop_server_input(struct session *s)
{
    if (!s->upstream_open || s->down.state != HALF_OPEN)
        return;
    half_read_reset(&s->down);
    int rc = uv_read_start((uv_stream_t *)&s->upstream, alloc_cb, read_cb);
    if (rc < 0 && rc != UV_EALREADY)
        s->down.state = HALF_DONE; /* nothing more will come from it */
}

/* The handshake of a session given up on while connecting has ended: if the
 * server has the connection, it gets the client's bytes and its EOF. */
static void connect_resolved_while_closing(struct session *s, int status)
{
    if (status < 0) {
        finish_close(s);
        return;
    }
    int fd = -1;
    uv_fileno((uv_handle_t *)&s->upstream, &fd);
    s->upstream_port = net_local_port(fd);
    drop_server_input(s);
    deliver_queue(s, SESSION_AWAIT_CONNECT);
    if (s->state == SESSION_AWAIT_CONNECT)
        flush_then_fin(s, &s->up);
}

static void connect_cb(uv_connect_t *req, int status)
{
    struct session *s = req->data;
    free(req);
    if (status == UV_ECANCELED)
        return; /* the handle was closed under us: whoever closed it carries on */
    if (s->state == SESSION_AWAIT_CONNECT) {
        connect_resolved_while_closing(s, status);
        return;
    }
    if (s->state != SESSION_CONNECTING)
        return;
    if (status < 0) {
        connect_failed(s, status);
        return;
    }
    connected(s);
}

/* The family a route's upstream sockets must have, or AF_UNSPEC for any:
 * a source address's, or with "client" the client's (IPv4-mapped is IPv4). */
static int source_family(const struct session *s)
{
    const struct upstream_source *src = &s->route->upstream.source;
    if (src->kind == SOURCE_ADDRESS)
        return src->addr.ss_family;
    if (src->kind == SOURCE_CLIENT)
        return addr_is_v4_mapped(&s->peer.sa) ? AF_INET : s->peer.sa.sa_family;
    return AF_UNSPEC;
}

static void connect_to(struct session *s, const struct sockaddr *sa)
{
    const struct upstream_config *u = &s->route->upstream;
    struct sockaddr_storage client_host;
    struct upstream_bind b = { .mark = u->mark };
    if (u->source.kind == SOURCE_ADDRESS) {
        b.source = (const struct sockaddr *)&u->source.addr;
    } else if (u->source.kind == SOURCE_CLIENT) {
        addr_host_of(&s->peer.sa, &client_host);
        b.source = (const struct sockaddr *)&client_host;
        b.transparent = 1;
        b.avoid_port = addr_port(&s->peer.sa);
    }

    /* Its descriptor was counted when the client was accepted: EMFILE here
     * means something outside the budget took it (ENFILE: the whole
     * system is out). A failed try, and no more accepting for now.
     * EAFNOSUPPORT: a server of the other family than the source. */
    int fd = net_upstream_socket(sa->sa_family, &b);
    if (fd == UV_EMFILE || fd == UV_ENFILE)
        host_of(s)->fds_exhausted(host_of(s), s->route->name, fd);
    if (fd < 0) {
        connect_failed(s, fd);
        return;
    }
    int rc = uv_tcp_init(host_of(s)->loop, &s->upstream);
    if (rc < 0) { /* only for bad flags: no handle to close */
        close(fd);
        connect_failed(s, rc);
        return;
    }
    s->upstream.data = &s->down;
    s->refs++;
    s->upstream_open = 1;
    rc = uv_tcp_open(&s->upstream, fd);
    if (rc < 0)
        close(fd); /* not adopted by the handle: still ours */
    uv_connect_t *req = NULL;
    if (rc == 0) {
        req = malloc(sizeof(*req));
        rc = req == NULL ? UV_ENOMEM : 0;
    }
    if (rc == 0) {
        req->data = s;
        rc = uv_tcp_connect(req, &s->upstream, sa, connect_cb);
    }
    if (rc < 0) {
        free(req);
        connect_failed(s, rc);
        return;
    }
    set_state(s, SESSION_CONNECTING);
    state_timer(s, s->route->upstream.connect_timeout_ms);
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct session *s = req->data;
    free(req);
    s->gai = NULL;
    s->refs--;
    if (s->state != SESSION_RESOLVING) {
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
    struct server_stats *sv = metrics_server(s->stats, srv);
    if (sv != NULL)
        metric_add(&sv->c[SC_ATTEMPTS], 1);
    if (srv->numeric) {
        connect_to(s, (const struct sockaddr *)&srv->sa);
        return;
    }
    /* A source address, or the client's with "client", decides the family. */
    struct addrinfo hints = { .ai_family = source_family(s),
                              .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_ADDRCONFIG };
    uv_getaddrinfo_t *req = malloc(sizeof(*req));
    int rc = UV_ENOMEM;
    if (req != NULL) {
        req->data = s;
        rc = uv_getaddrinfo(host_of(s)->loop, req, gai_cb, srv->host, NULL, &hints);
    }
    if (rc < 0) {
        free(req);
        connect_failed(s, rc);
        return;
    }
    s->gai = req;
    s->refs++;
    set_state(s, SESSION_RESOLVING);
}

static void session_go(struct session *s)
{
    if (s->state != SESSION_WAITING)
        return;
    connect_try(s);
}

/* --- close --------------------------------------------------------------- */

/* After our FIN to the server: the server must be done with the old
 * connection before the identity passes to the returning client. */
static void await_server(struct session *s)
{
    if (s->down.state != HALF_OPEN || !s->upstream_open) { /* its EOF came already */
        await_done(s, FINISH_SERVER_EOF);
        return;
    }
    set_state(s, SESSION_AWAIT_SERVER);
    s->await.since_ms = uv_now(host_of(s)->loop);
    s->await.fin_acked_ms = 0;
    drop_server_input(s); /* reading already, unless the close began elsewhere */
    state_timer(s, AWAIT_POLL_MS);
}

static void await_done(struct session *s, enum upstream_finish how)
{
    s->finish = how;
    finish_close(s);
}

/* Polled while AWAIT_SERVER: has the server acknowledged our FIN? */
static void await_poll(struct session *s)
{
    uint64_t now = uv_now(host_of(s)->loop);
    if (s->await.fin_acked_ms == 0) {
        struct tcp_info ti;
        socklen_t len = sizeof(ti);
        int fd = -1;
        if (uv_fileno((uv_handle_t *)&s->upstream, &fd) == 0 &&
            getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
            (ti.tcpi_state == TCP_FIN_WAIT2 || ti.tcpi_state == TCP_TIME_WAIT ||
             ti.tcpi_state == TCP_CLOSE))
            s->await.fin_acked_ms = now;
    }
    if (s->await.fin_acked_ms != 0 && now - s->await.fin_acked_ms >= AWAIT_GRACE_MS)
        await_done(s, FINISH_FIN_ACKED);
    else if (now - s->await.since_ms >= AWAIT_SERVER_MS)
        await_done(s, FINISH_TIMEOUT);
    else
        state_timer(s, AWAIT_POLL_MS);
}

void session_deadline_fire(struct deadline *d)
{
    struct session *s = (struct session *)(void *)((char *)d - offsetof(struct session, deadline));
    if (silence_expired(s))
        return;
    if (s->due_ms > uv_now(host_of(s)->loop)) {
        timer_arm(s); /* silence was nearer, and the client spoke since */
        return;
    }
    s->due_ms = NO_DEADLINE;
    switch (s->state) {
    case SESSION_BACKOFF:
        connect_try(s);
        break;
    case SESSION_CONNECTING:
        connect_failed(s, UV_ETIMEDOUT);
        break;
    case SESSION_AWAIT_SERVER:
        await_poll(s);
        break;
    case SESSION_FLUSHING:
    case SESSION_AWAIT_CONNECT:
        finish_close(s); /* flushing or connecting took too long: cut it */
        break;
    default:
        break;
    }
    if (s->state != SESSION_CLOSED)
        timer_arm(s); /* silence, while it is watched */
}

static void log_close(struct session *s)
{
    if (!log_enabled(LOG_INFO))
        return;
    char client[ADDR_STR_MAX];
    uint64_t now = uv_now(host_of(s)->loop);
    struct log_field f[10];
    size_t n = 0;
    f[n++] = LF_STR("route", s->route->name);
    f[n++] = LF_INT("worker", host_of(s)->id);
    f[n++] = LF_STR("client", addr_format(&s->peer.sa, client, sizeof(client)));
    f[n++] = LF_INT("upstream_local_port", s->upstream_port);
    f[n++] = LF_INT("bytes_from_client", s->up.bytes);
    f[n++] = LF_INT("bytes_from_server", s->down.bytes);
    f[n++] = LF_INT("duration_ms", now - s->started_ms);
    f[n++] = LF_STR("reason", reason_name(s->reason));
    if (s->finish != FINISH_NOT_AWAITED)
        f[n++] = LF_STR("upstream_finish", finish_names[s->finish]);
    log_write(LOG_INFO, "session closed", f, n);
}

/* Reads and drops what the peer sent and nobody will read any more:
 * close() on a socket with unread input sends a reset instead of a FIN, and
 * the reset destroys what is still queued for the peer. Bounded: a peer
 * that keeps sending gets its reset. */
static void drain_input(struct session *s, uv_tcp_t *t)
{
    int fd = -1;
    char *buf = pool_read_buffer(host_of(s)->pool);
    if (buf == NULL || uv_fileno((uv_handle_t *)t, &fd) != 0)
        return;
    net_drain_input(fd, buf, POOL_READ_SIZE, DRAIN_BYTES_MAX);
}

/* Both directions ended with their FINs: each side's EOF was read (so
 * nothing is left unread, nor can come) and ours went out. */
static int both_ended(const struct session *s)
{
    return s->up.state == HALF_DONE && s->down.state == HALF_DONE &&
           (s->reason == REASON_CLIENT_EOF || s->reason == REASON_UPSTREAM_EOF);
}

/* Closes the client connection, abortively when the policy says so. */
static void close_client(struct session *s)
{
    if (uv_is_closing((uv_handle_t *)&s->client))
        return;
    /* An abortive close leaves no TIME_WAIT on the client's fixed 5-tuple. */
    if (s->client_close == CLOSE_RST && uv_tcp_close_reset(&s->client, handle_closed_cb) == 0)
        return;
    if (!both_ended(s))
        drain_input(s, &s->client);
    uv_close((uv_handle_t *)&s->client, handle_closed_cb);
}

static void close_upstream(struct session *s, enum close_mode mode)
{
    if (!s->upstream_open)
        return;
    s->upstream_open = 0;
    if (mode == CLOSE_RST && uv_tcp_close_reset(&s->upstream, handle_closed_cb) == 0)
        return;
    /* FIN before close(): if the server sent bytes we never read, close()
     * alone would send a reset, and the server must see its EOF first. */
    int fd = -1;
    if (!both_ended(s)) {
        if (uv_fileno((uv_handle_t *)&s->upstream, &fd) == 0)
            shutdown(fd, SHUT_WR);
        drain_input(s, &s->upstream);
    }
    close_handle((uv_handle_t *)&s->upstream);
}

static void release_identity(struct session *s)
{
    if (!s->registered)
        return;
    s->registered = 0;
    struct identity id;
    registry_identity(&id, s->route->name, &s->peer.sa,
                      s->route->client.identity == IDENTITY_ADDRESS_PORT);
    registry_release(host_of(s)->registry, &id, (struct session_ref){ host_of(s)->id, s->id });
}

/* Logs the close, hands the identity on, and closes every handle. */
static void finish_close(struct session *s)
{
    if (s->state == SESSION_CLOSED)
        return;
    int resolving = s->state == SESSION_RESOLVING;
    set_state(s, SESSION_CLOSED);
    /* Counted, unlisted and its limit slot given back before the line is
     * logged: whoever reads the line and then asks the admin endpoint, or
     * connects again, sees the session gone. */
    metric_add(&s->stats->c[RC_CLOSES + s->reason], 1);
    metric_sub(&s->stats->c[RC_SESSIONS_ACTIVE], 1);
    host_of(s)->closed(host_of(s), s);
    log_close(s);

    queue_free(s);
    half_read_reset(&s->up);
    half_read_reset(&s->down);
    close_client(s);
    close_upstream(s, CLOSE_FIN);
    deadline_clear(host_of(s)->deadlines, &s->deadline);
    if (resolving)
        uv_cancel((uv_req_t *)s->gai); /* gai_cb still runs, and frees */
    /* Last: the next owner of the identity may connect from now on. */
    release_identity(s);
}

/* Reasons that mean lifeline gave up on the client (dead, replaced, refused):
 * its socket is closed as client.close says. */
static int gave_up_on_client(enum reason r)
{
    switch (r) {
    case REASON_CLIENT_RESET:
    case REASON_CLIENT_SILENCE:
    case REASON_CLIENT_KEEPALIVE:
    case REASON_CLIENT_USER_TIMEOUT:
    case REASON_REPLACED:
    case REASON_REJECTED:
    case REASON_CLUSTER_UNAVAILABLE:
    case REASON_DENIED:
        return 1;
    default:
        return 0;
    }
}

/* Reasons that end the client side at once while the server gets every
 * byte the client sent, then FIN; a session that owns a client identity then
 * waits until the server is done before the identity passes on. An admin
 * kill is one: a successor may already be waiting for this identity. */
static int ends_client_first(enum reason r)
{
    return gave_up_on_client(r) || r == REASON_ADMIN_KILL || r == REASON_FENCED;
}

/* How the server side of such a close ends: `upstream.close` for a client
 * lifeline gave up on; FIN for an admin kill. */
static enum close_mode upstream_close_mode(const struct session *s, enum reason r)
{
    return gave_up_on_client(r) ? s->route->upstream.close : CLOSE_FIN;
}

static int half_can_flush(const struct half *h)
{
    return h->state == HALF_OPEN || h->state == HALF_FLUSHING;
}

void session_close(struct session *s, enum reason reason)
{
    if (s->state == SESSION_CLOSED)
        return;
    if (is_closing(s->state)) {
        if (reason == REASON_SHUTDOWN)
            finish_close(s);
        return;
    }
    s->reason = reason;
    silence_unwatch(s);
    /* A fenced client is alive, but it will come back (through another
     * instance, or this one): no TIME_WAIT on its fixed 5-tuple either. */
    if (gave_up_on_client(reason) || reason == REASON_FENCED)
        s->client_close = s->route->client.close;
    if (s->state == SESSION_CONNECTING && ends_client_first(reason) &&
        upstream_close_mode(s, reason) == CLOSE_FIN) {
        /* The server may have accepted the connection already; its EOF must
         * still come before any successor connects. The connect timeout
         * keeps running and bounds the wait. */
        close_client(s);
        uv_read_stop((uv_stream_t *)&s->client);
        set_state(s, SESSION_AWAIT_CONNECT);
        return;
    }
    state_timer_stop(s);
    if (s->state != SESSION_RELAYING) {
        finish_close(s);
        return;
    }

    struct half *flush = NULL;
    if (ends_client_first(reason)) {
        /* The client is gone (or is being cut off): close it now, and give
         * the server every byte the client sent, then FIN (or a reset, if
         * so configured for a dead client). */
        close_client(s);
        if (upstream_close_mode(s, reason) == CLOSE_RST) {
            close_upstream(s, CLOSE_RST);
            finish_close(s);
            return;
        }
        if (!half_can_flush(&s->up)) {
            await_server(s); /* FIN went out earlier, with the client's own EOF */
            return;
        }
        set_state(s, SESSION_FLUSHING);
        drop_server_input(s);
        flush = &s->up;
    } else if (reason == REASON_UPSTREAM_RESET) {
        /* The server is gone: the client gets what the server sent, then FIN. */
        close_upstream(s, CLOSE_FIN);
        uv_read_stop((uv_stream_t *)&s->client);
        if (half_can_flush(&s->down))
            flush = &s->down;
    }
    if (flush == NULL) {
        finish_close(s);
        return;
    }
    flush_then_fin(s, flush);
}

/* The surviving side gets what was read for it, then FIN. */
static void flush_then_fin(struct session *s, struct half *h)
{
    if (s->state != SESSION_FLUSHING)
        set_state(s, SESSION_FLUSHING);
    h->state = HALF_FLUSHING;
    state_timer(s, CLOSE_LINGER_MS);
    half_flush_then_fin(h);
}

/* --- accept -------------------------------------------------------------- */

/* Decides who talks to the server for this client: the registry's answer
 * (GO when the route tracks no identity). */
static enum registry_answer claim_identity(struct session *s)
{
    const struct client_config *cc = &s->route->client;
    if (cc->identity == IDENTITY_NONE || cc->on_duplicate == DUPLICATE_ALLOW ||
        s->peer.sa.sa_family == AF_UNSPEC)
        return REGISTRY_GO;

    struct identity id;
    registry_identity(&id, s->route->name, &s->peer.sa, cc->identity == IDENTITY_ADDRESS_PORT);
    enum registry_answer answer =
        registry_claim(host_of(s)->registry, &id, (struct session_ref){ host_of(s)->id, s->id },
                       cc->on_duplicate == DUPLICATE_REPLACE);
    if (answer == REGISTRY_WAIT)
        metric_add(&s->stats->c[RC_TAKEOVERS], 1);
    /* Owned, or a claim to withdraw should the session end before GO. */
    s->registered = answer != REGISTRY_REFUSED;
    return answer;
}

/* The client handle of a session that never ran: only memory to free. */
static void unopened_closed_cb(uv_handle_t *h) { free(((struct half *)h->data)->s); }

static _Atomic uint64_t next_id = 1;

uint64_t session_next_id(void) { return atomic_load(&next_id); }

void session_ids_above(uint64_t id)
{
    uint64_t cur = atomic_load(&next_id);
    while (cur <= id && !atomic_compare_exchange_weak(&next_id, &cur, id + 1))
        ;
}

int session_new(struct session_host *h, const struct session_params *p, struct session **out)
{
    assert(h->loop->data == h); /* host_of() finds the host through it */
    *out = NULL;
    struct session *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        close(p->fd);
        return UV_ENOMEM;
    }
    s->id = atomic_fetch_add(&next_id, 1);
    s->route = p->route;
    s->stats = p->stats;
    s->state = SESSION_WAITING;
    s->client_close = CLOSE_FIN;
    s->up = (struct half){ .s = s };
    s->down = (struct half){ .s = s };

    int rc = uv_tcp_init(h->loop, &s->client);
    if (rc < 0) {
        close(p->fd);
        free(s);
        return rc;
    }
    s->client.data = &s->up;
    rc = uv_tcp_open(&s->client, p->fd);
    if (rc < 0) {
        close(p->fd);
        uv_close((uv_handle_t *)&s->client, unopened_closed_cb);
        return rc;
    }
    s->cfg = config_ref(p->cfg);
    s->refs = 1; /* client */
    s->due_ms = NO_DEADLINE;
    s->started_ms = s->last_rx_ms = uv_now(h->loop);
    if (p->peer_len > 0 && p->peer_len <= sizeof(s->peer))
        memcpy(&s->peer, p->peer, p->peer_len);
    else
        s->peer.sa.sa_family = AF_UNSPEC;
    /* TCP_NODELAY, keepalive and the user timeout came with the socket:
     * accepted sockets inherit them from the listener. */
    metric_add(&s->stats->c[RC_SESSIONS_TOTAL], 1);
    metric_add(&s->stats->c[RC_SESSIONS_ACTIVE], 1);
    *out = s;
    return 0;
}

void session_run(struct session *s)
{
    enum registry_answer answer = claim_identity(s);
    if (answer == REGISTRY_REFUSED) {
        session_close(s, REASON_REJECTED);
        return;
    }
    silence_watch(s);
    half_read_start(&s->up);
    if (answer == REGISTRY_GO)
        session_go(s);
}

void session_deliver(struct session *s, enum registry_msg msg)
{
    switch (msg) {
    case REGISTRY_MSG_EVICT:
        session_close(s, REASON_REPLACED);
        break;
    case REGISTRY_MSG_GO:
        session_go(s);
        break;
    case REGISTRY_MSG_REFUSED:
        if (s->state == SESSION_WAITING)
            session_close(s, REASON_REJECTED);
        break;
    case REGISTRY_MSG_UNAVAILABLE:
        if (s->state == SESSION_WAITING)
            session_close(s, REASON_CLUSTER_UNAVAILABLE);
        break;
    case REGISTRY_MSG_FENCE:
        session_close(s, REASON_FENCED);
        break;
    }
}

/* --- live upgrade ------------------------------------------------------- */

static void half_hold(struct half *h)
{
    if (h->state != HALF_OPEN || h->read == READ_FROZEN)
        return;
    if (h->read == READ_BUDGET)
        host_of(h->s)->leave_budget(host_of(h->s), &h->waiter);
    uv_read_stop((uv_stream_t *)half_src(h));
    h->read = READ_FROZEN;
}

void session_hold(struct session *s)
{
    if (s->state != SESSION_RELAYING)
        return;
    half_hold(&s->up);
    half_hold(&s->down);
}

static int half_settled(const struct half *h)
{
    return h->pending == 0 &&
           (h->state == HALF_DONE || (h->state == HALF_OPEN && h->read == READ_FROZEN));
}

enum session_settle session_settle(const struct session *s, uint64_t *unwritten)
{
    *unwritten = 0;
    if (s->state != SESSION_RELAYING)
        return SETTLE_BUSY;
    if (half_settled(&s->up) && half_settled(&s->down))
        return SETTLE_READY;
    *unwritten = s->up.pending + s->down.pending;
    return SETTLE_WRITING;
}

void session_export(struct session *s, struct session_record *rec, int fds[2])
{
    memset(rec, 0, sizeof(*rec));
    memcpy(rec->route, s->route->name, strnlen(s->route->name, sizeof(rec->route) - 1));
    rec->id = s->id;
    rec->bytes_from_client = s->up.bytes;
    rec->bytes_from_server = s->down.bytes;
    rec->started_ms = s->started_ms;
    rec->connected_ms = s->connected_ms;
    /* Bytes waiting unread came after the last read: the client spoke. */
    rec->last_rx_ms = client_has_input(s) ? uv_now(host_of(s)->loop) : s->last_rx_ms;
    memcpy(&rec->peer, &s->peer, sizeof(s->peer));
    rec->server = s->server;
    rec->upstream_port = s->upstream_port;
    rec->up_open = s->up.state == HALF_OPEN;
    rec->down_open = s->down.state == HALF_OPEN;
    rec->eof_reason = (uint8_t)s->eof_reason;
    silence_unwatch(s);
    fds[0] = fds[1] = -1;
    uv_fileno((uv_handle_t *)&s->client, &fds[0]);
    uv_fileno((uv_handle_t *)&s->upstream, &fds[1]);
}

static void half_thaw(struct half *h)
{
    if (h->state != HALF_OPEN || h->read != READ_FROZEN)
        return;
    if (h->pending > 0)
        h->read = READ_HELD; /* write_cb reads again once it is written */
    else
        half_read_start(h);
}

void session_thaw(struct session *s)
{
    if (s->state != SESSION_RELAYING)
        return;
    if (s->adopted) {
        /* Keepalive and the user timeout as the new route says: an accepted
         * socket took them from its listener, an adopted one from the old
         * process. Only now, after COMMIT: the socket is shared until then,
         * and a failed upgrade must leave the old process's settings. */
        s->adopted = 0;
        (void)liveness_apply(client_fd(s), &s->route->client.heartbeat);
    }
    half_thaw(&s->up);
    if (s->state == SESSION_RELAYING)
        half_thaw(&s->down);
    if (s->state == SESSION_RELAYING && s->up.state == HALF_OPEN)
        silence_watch(s);
}

void session_release(struct session *s)
{
    if (s->state == SESSION_CLOSED)
        return;
    set_state(s, SESSION_CLOSED);
    s->registered = 0; /* the identity goes with the session */
    metric_sub(&s->stats->c[RC_SESSIONS_ACTIVE], 1);
    host_of(s)->closed(host_of(s), s);
    half_read_reset(&s->up);
    half_read_reset(&s->down);
    /* A plain close(): the new process holds the same sockets, so the
     * connections live on. No shutdown(), no SO_LINGER, no draining. */
    uv_close((uv_handle_t *)&s->client, handle_closed_cb);
    s->upstream_open = 0;
    close_handle((uv_handle_t *)&s->upstream);
    deadline_clear(host_of(s)->deadlines, &s->deadline);
}

/* An adopted session's handle that could not be opened: only memory to free. */
static void adopt_failed_cb(uv_handle_t *h)
{
    struct session *s = session_of(h);
    if (--s->refs == 0) {
        config_free(s->cfg);
        free(s);
    }
}

static int adopt_handle(uv_loop_t *loop, struct session *s, uv_tcp_t *t, struct half *reader,
                        int fd)
{
    int rc = uv_tcp_init(loop, t);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    t->data = reader;
    s->refs++;
    rc = uv_tcp_open(t, fd);
    if (rc < 0)
        close(fd); /* not adopted by the handle: still ours */
    return rc;
}

int session_adopt(struct session_host *h, const struct session_adopt_params *p,
                  struct session **out)
{
    assert(h->loop->data == h); /* host_of() finds the host through it */
    const struct session_record *rec = p->rec;
    *out = NULL;
    struct session *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        close(p->client_fd);
        close(p->upstream_fd);
        return UV_ENOMEM;
    }
    s->id = rec->id;
    session_ids_above(rec->id);
    s->cfg = config_ref(p->cfg);
    s->route = p->route;
    s->stats = p->stats;
    s->state = SESSION_RELAYING;
    s->client_close = CLOSE_FIN;
    s->up = (struct half){ .s = s, .read = READ_FROZEN };
    s->down = (struct half){ .s = s, .read = READ_FROZEN };
    int rc = adopt_handle(h->loop, s, &s->client, &s->up, p->client_fd);
    if (rc < 0)
        close(p->upstream_fd);
    else
        rc = adopt_handle(h->loop, s, &s->upstream, &s->down, p->upstream_fd);
    if (rc < 0) {
        /* Freed once the handles that were made are closed. */
        if (s->refs == 0) {
            config_free(s->cfg);
            free(s);
            return rc;
        }
        int both = s->refs == 2;
        uv_close((uv_handle_t *)&s->client, adopt_failed_cb);
        if (both)
            uv_close((uv_handle_t *)&s->upstream, adopt_failed_cb);
        return rc;
    }
    s->upstream_open = 1;
    s->adopted = 1;
    s->due_ms = NO_DEADLINE;
    s->started_ms = rec->started_ms;
    s->connected_ms = rec->connected_ms;
    s->last_rx_ms = rec->last_rx_ms;
    memcpy(&s->peer, &rec->peer, sizeof(s->peer));
    s->server = rec->server < s->route->upstream.n_servers ? rec->server : 0;
    s->upstream_port = rec->upstream_port;
    s->up.bytes = rec->bytes_from_client;
    s->down.bytes = rec->bytes_from_server;
    s->up.state = rec->up_open ? HALF_OPEN : HALF_DONE;
    s->down.state = rec->down_open ? HALF_OPEN : HALF_DONE;
    if (!rec->up_open || !rec->down_open) {
        s->saw_eof = 1;
        s->eof_reason = rec->eof_reason < REASON_COUNT ? (enum reason)rec->eof_reason
                        : rec->up_open                 ? REASON_UPSTREAM_EOF
                                                       : REASON_CLIENT_EOF;
    }
    /* The identity was the old process's session's: it is this one's now.
     * Replace, whatever the route says: two adopted sessions of one client
     * (a stricter identity than before) end as a reconnect would. */
    const struct client_config *cc = &s->route->client;
    if (cc->identity != IDENTITY_NONE && cc->on_duplicate != DUPLICATE_ALLOW &&
        s->peer.sa.sa_family != AF_UNSPEC) {
        struct identity id;
        registry_identity(&id, s->route->name, &s->peer.sa, cc->identity == IDENTITY_ADDRESS_PORT);
        registry_adopt(h->registry, &id, (struct session_ref){ h->id, s->id });
        s->registered = 1;
    }
    metric_add(&s->stats->c[RC_SESSIONS_TOTAL], 1);
    metric_add(&s->stats->c[RC_SESSIONS_ACTIVE], 1);
    *out = s;
    return 0;
}

const struct sockaddr *session_peer(const struct session *s) { return &s->peer.sa; }

struct session_link *session_link(struct session *s) { return &s->link; }

struct session *session_of_link(struct session_link *l)
{
    return (struct session *)(void *)((char *)l - offsetof(struct session, link));
}
