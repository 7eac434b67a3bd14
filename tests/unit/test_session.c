/* Unit tests for session.c: the relay on a real uv_loop, through a test host, over loopback TCP. */
#define _GNU_SOURCE /* accept4 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "lifeline/budget.h"
#include "lifeline/config.h"
#include "lifeline/log.h"
#include "lifeline/metrics.h"
#include "lifeline/pool.h"
#include "lifeline/reason.h"
#include "lifeline/registry.h"
#include "lifeline/session.h"

/*
 *   test client ──▶ front listener ──accept4──▶ fd ──▶ session_new()
 *   (non-blocking)   (stands in for a worker's)        │  relays on the test loop
 *                                                      ▼
 *   test server ◀──accept4── server listener ◀── the session's upstream connect
 *
 * The test's sockets are plain non-blocking descriptors, pumped between
 * steps of the loop (one uv_run(UV_RUN_NOWAIT) each). Every wait has a
 * deadline and fails the test when it passes.
 */

#define STEP_MS 2          /* the longest one step waits for an event */
#define WAIT_MS 10000      /* the deadline of any one wait */
#define STALL_QUIET_MS 300 /* no progress this long: the sender is blocked */
#define IO_SLICE 65536     /* bytes a pump moves per system call */
#define BUDGET_FDS 1000
#define UNSET UINT64_MAX

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* --- the bytes: each stream's byte at offset i is a function of i ------- */

static uint8_t pattern(uint32_t seed, uint64_t i)
{
    uint64_t x = (i ^ ((uint64_t)seed << 40)) * 0x9E3779B97F4A7C15ull;
    return (uint8_t)(x >> 56);
}

/* One end of a TCP connection the test drives. */
struct stream {
    const char *name;
    int fd; /* -1 once closed */
    uint32_t tx_seed, rx_seed;
    uint64_t to_send; /* bytes to send in all (UNSET: without end) */
    uint64_t sent;
    int blocked;    /* the last send got EAGAIN */
    int shut_after; /* shutdown(SHUT_WR) once to_send is sent */
    int shut;
    int send_err;
    int reading;     /* pumped reads are on */
    size_t read_max; /* per pump; 0: as much as there is */
    uint64_t rcvd;
    uint64_t bad_at; /* first byte received that is not the pattern's, or UNSET */
    int eof;         /* recv returned 0 */
    int err;         /* recv failed with this errno (ECONNRESET...) */
};

static void stream_init(struct stream *s, const char *name, int fd, uint32_t tx_seed,
                        uint32_t rx_seed)
{
    *s = (struct stream){ .name = name,
                          .fd = fd,
                          .tx_seed = tx_seed,
                          .rx_seed = rx_seed,
                          .reading = 1,
                          .bad_at = UNSET };
}

static void pump_send(struct stream *s)
{
    static char buf[IO_SLICE];
    while (s->fd >= 0 && s->send_err == 0 && s->sent < s->to_send) {
        uint64_t left = s->to_send - s->sent;
        size_t n = left < sizeof(buf) ? (size_t)left : sizeof(buf);
        for (size_t k = 0; k < n; k++)
            buf[k] = (char)pattern(s->tx_seed, s->sent + k);
        ssize_t w = send(s->fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                s->blocked = 1;
            else
                s->send_err = errno;
            break;
        }
        s->blocked = 0;
        s->sent += (uint64_t)w;
    }
    if (s->fd >= 0 && s->shut_after && !s->shut && s->sent == s->to_send) {
        assert_int_equal(shutdown(s->fd, SHUT_WR), 0);
        s->shut = 1;
    }
}

static void pump_recv(struct stream *s)
{
    static char buf[IO_SLICE];
    size_t allowed = s->read_max > 0 ? s->read_max : SIZE_MAX;
    while (s->fd >= 0 && s->reading && !s->eof && s->err == 0 && allowed > 0) {
        size_t n = allowed < sizeof(buf) ? allowed : sizeof(buf);
        ssize_t r = recv(s->fd, buf, n, MSG_DONTWAIT);
        if (r == 0) {
            s->eof = 1;
            break;
        }
        if (r < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                s->err = errno;
            break;
        }
        for (ssize_t k = 0; k < r && s->bad_at == UNSET; k++)
            if ((uint8_t)buf[k] != pattern(s->rx_seed, s->rcvd + (uint64_t)k))
                s->bad_at = s->rcvd + (uint64_t)k;
        s->rcvd += (uint64_t)r;
        allowed -= (size_t)r;
    }
}

static void stream_close(struct stream *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

/* Received every byte of the other end's pattern, in order, nothing else. */
static void assert_intact(const struct stream *s, uint64_t want)
{
    if (s->bad_at != UNSET)
        fail_msg("%s: byte %" PRIu64 " is not what was sent", s->name, s->bad_at);
    if (s->rcvd != want)
        fail_msg("%s: received %" PRIu64 " bytes, want %" PRIu64, s->name, s->rcvd, want);
}

/* --- the test host: what a worker lends its sessions --------------------- */

#define MAX_EVENTS 16
#define MAX_MSGS 16
#define N_STREAMS 4
enum host_event { EV_CLOSED = 1, EV_FREED };

/* The test's sockets: a client and its server connection, twice (a second
 * connection of the same client, for takeovers). */
enum { CLIENT, SERVER, CLIENT2, SERVER2 };

struct posted {
    struct session_ref to;
    enum registry_msg msg;
};

/* The registry the sessions see: the in-process backend, wrapped so that
 * the test sees every claim and release. */
#define MAX_IDS 4
struct test_registry {
    struct registry base;   /* first: what the sessions hold */
    struct registry *local; /* registry_local_new(), delivering to the host */
    int n_claim, n_release;
    int n_answer[REGISTRY_REFUSED + 1]; /* by enum registry_answer */
    int pending;                        /* answer PENDING, as a remote backend would */
    int refused_later;            /* claims refused by a later message (released all the same) */
    struct session_ref last_self; /* the last claimant */
    struct identity ids[MAX_IDS]; /* every identity claimed */
    int n_ids;
};

struct host {
    struct session_host h; /* first: the callbacks get &h */
    uv_loop_t loop;
    struct pool pool;
    struct budget budget;
    struct test_registry reg;
    struct log_limit upstream_log;
    struct budget_waiters waiters; /* readers waiting for memory, oldest first */
    uv_timer_t budget_retry;
    struct deadlines deadlines;
    struct session_list sessions; /* made and not yet closed */
    uv_async_t wakeup;            /* the registry's messages are delivered from here */
    struct posted inbox[MAX_MSGS];
    int n_inbox;

    struct config *cfg;
    struct worker_stats ws;
    struct route_stats *rs;

    int front_fd;         /* where the test client connects */
    int server_listen_fd; /* the route's upstream server */
    struct sockaddr_storage front_addr, server_addr;
    socklen_t front_len, server_len;

    struct stream streams[N_STREAMS]; /* CLIENT, SERVER, ...; fd -1 until there */
    int n_streams;

    int made;
    int n_evict, n_go, n_refused; /* the registry's messages, by kind */
    int n_deliver, n_wait_budget, n_leave_budget, n_fds_exhausted, n_closed, n_freed;
    enum host_event events[MAX_EVENTS]; /* closed/freed, in the order they came */
    int n_events;
    size_t max_out;        /* the most relay chunks held at once, between steps */
    char closed_json[512]; /* the last closed session, as the admin sees it */
};

static struct host *host_of(struct session_host *h)
{
    return (struct host *)(void *)h; /* h is the first member */
}

static void note_event(struct host *t, enum host_event e)
{
    if (t->n_events < MAX_EVENTS)
        t->events[t->n_events] = e;
    t->n_events++;
}

/* The registry's way to a session (registry_deliver_fn), as the worker
 * does it: queued, and delivered on the loop later (never inside the
 * caller), to the session with that id if it is still listed. One thread
 * here, so the queue needs no lock. */
static void host_deliver(void *ctx, struct session_ref to, enum registry_msg msg)
{
    struct host *t = ctx;
    t->n_deliver++;
    if (msg == REGISTRY_MSG_EVICT)
        t->n_evict++;
    else if (msg == REGISTRY_MSG_GO)
        t->n_go++;
    else
        t->n_refused++;
    assert_int_equal(to.worker, t->h.id);
    assert_true(t->n_inbox < MAX_MSGS);
    t->inbox[t->n_inbox++] = (struct posted){ to, msg };
    assert_int_equal(uv_async_send(&t->wakeup), 0);
}

static void wakeup_cb(uv_async_t *a)
{
    struct host *t = a->data;
    struct posted msgs[MAX_MSGS];
    int n = t->n_inbox;
    memcpy(msgs, t->inbox, sizeof(msgs[0]) * (size_t)n);
    t->n_inbox = 0;
    for (int i = 0; i < n; i++) {
        struct session_link *l;
        LIST_FOREACH (l, &t->sessions, list) {
            if (session_id(session_of_link(l)) == msgs[i].to.id) {
                session_deliver(session_of_link(l), msgs[i].msg);
                break;
            }
        }
    }
}

static struct test_registry *test_registry_of(struct registry *r)
{
    return (struct test_registry *)(void *)r; /* base is the first member */
}

static enum registry_answer test_claim(struct registry *r, const struct identity *id,
                                       struct session_ref self, int replace)
{
    struct test_registry *tr = test_registry_of(r);
    tr->n_claim++;
    int known = 0;
    for (int i = 0; i < tr->n_ids; i++)
        known |= memcmp(&tr->ids[i], id, sizeof(*id)) == 0;
    if (!known && tr->n_ids < MAX_IDS)
        tr->ids[tr->n_ids++] = *id;
    tr->last_self = self;
    enum registry_answer a =
        tr->pending ? REGISTRY_PENDING : registry_claim(tr->local, id, self, replace);
    tr->n_answer[a]++;
    return a;
}

static void test_release(struct registry *r, const struct identity *id, struct session_ref self)
{
    struct test_registry *tr = test_registry_of(r);
    tr->n_release++;
    registry_release(tr->local, id, self);
}

static void test_destroy(struct registry *r) { registry_destroy(test_registry_of(r)->local); }

static const struct registry_ops test_registry_ops = {
    .claim = test_claim,
    .release = test_release,
    .destroy = test_destroy,
};

static void budget_retry_cb(uv_timer_t *timer)
{
    struct host *t = timer->data;
    /* As the worker does: as many as were waiting, from the head. */
    size_t n = 0;
    struct budget_waiter *bw;
    TAILQ_FOREACH (bw, &t->waiters, link)
        n++;
    while (n-- > 0 && (bw = TAILQ_FIRST(&t->waiters)) != NULL) {
        TAILQ_REMOVE(&t->waiters, bw, link);
        budget_waiter_unqueued(bw);
        session_budget_retry(bw);
    }
    if (TAILQ_EMPTY(&t->waiters))
        uv_timer_stop(&t->budget_retry);
}

static void host_wait_budget(struct session_host *h, struct budget_waiter *bw)
{
    struct host *t = host_of(h);
    t->n_wait_budget++;
    if (budget_waiter_queued(bw))
        return;
    TAILQ_INSERT_TAIL(&t->waiters, bw, link);
    if (!uv_is_active((uv_handle_t *)&t->budget_retry))
        uv_timer_start(&t->budget_retry, budget_retry_cb, 10, 10);
}

static void host_leave_budget(struct session_host *h, struct budget_waiter *bw)
{
    struct host *t = host_of(h);
    t->n_leave_budget++;
    if (!budget_waiter_queued(bw))
        return;
    TAILQ_REMOVE(&t->waiters, bw, link);
    budget_waiter_unqueued(bw);
}

static void host_fds_exhausted(struct session_host *h, const char *route, int err)
{
    (void)route;
    (void)err;
    host_of(h)->n_fds_exhausted++;
}

static void host_closed(struct session_host *h, struct session *s)
{
    struct host *t = host_of(h);
    t->n_closed++;
    note_event(t, EV_CLOSED);
    cJSON *o = session_describe(s);
    char *text = o != NULL ? cJSON_PrintUnformatted(o) : NULL;
    assert_non_null(text);
    snprintf(t->closed_json, sizeof(t->closed_json), "%s", text);
    cJSON_free(text);
    cJSON_Delete(o);
    LIST_REMOVE(session_link(s), list);
}

static void host_freed(struct session_host *h)
{
    struct host *t = host_of(h);
    t->n_freed++;
    note_event(t, EV_FREED);
    budget_give_fds(&t->budget, BUDGET_FDS_PER_SESSION);
}

/* --- sockets --------------------------------------------------------------- */

static void set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    assert_true(fl >= 0);
    assert_int_equal(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

static void set_buf(int fd, int opt, int bytes)
{
    if (bytes > 0)
        assert_int_equal(setsockopt(fd, SOL_SOCKET, opt, &bytes, sizeof(bytes)), 0);
}

/* A listening socket on the loopback address of `family`, port 0 (the
 * kernel's pick, read back into *addr), non-blocking. rcvbuf > 0 sets the
 * receive buffer its connections inherit. With do_listen 0 the socket is
 * only bound: it holds the port (no connect picks it as its own port)
 * while connections to it are refused. Returns -1 when the family has no
 * loopback here. */
static int bind_loopback(int family, int rcvbuf, int do_listen, struct sockaddr_storage *addr,
                         socklen_t *len)
{
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(addr, 0, sizeof(*addr));
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)addr;
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        *len = sizeof(*in);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)addr;
        in6->sin6_family = AF_INET6;
        in6->sin6_addr = in6addr_loopback;
        *len = sizeof(*in6);
    }
    set_buf(fd, SO_RCVBUF, rcvbuf);
    if (bind(fd, (struct sockaddr *)addr, *len) < 0 || (do_listen && listen(fd, 16) < 0) ||
        getsockname(fd, (struct sockaddr *)addr, len) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
    return ss->ss_family == AF_INET ? ntohs(((const struct sockaddr_in *)ss)->sin_port)
                                    : ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

/* --- the loop, in small steps -------------------------------------------- */

/* Pumps the test's sockets, waits up to STEP_MS for the loop or them, and
 * runs the loop once without blocking. */
static void step(struct host *t)
{
    struct pollfd p[1 + N_STREAMS];
    nfds_t n = 0;
    p[n++] = (struct pollfd){ .fd = uv_backend_fd(&t->loop), .events = POLLIN };
    for (int i = 0; i < t->n_streams; i++) {
        struct stream *s = &t->streams[i];
        pump_send(s);
        pump_recv(s);
        if (s->fd < 0)
            continue;
        short ev = 0;
        if (s->sent < s->to_send && s->send_err == 0)
            ev |= POLLOUT;
        if (s->reading && !s->eof && s->err == 0)
            ev |= POLLIN;
        if (ev != 0)
            p[n++] = (struct pollfd){ .fd = s->fd, .events = ev };
    }
    int timeout = uv_backend_timeout(&t->loop);
    if (timeout < 0 || timeout > STEP_MS)
        timeout = STEP_MS;
    poll(p, n, timeout);
    uv_run(&t->loop, UV_RUN_NOWAIT);
    if (t->pool.n_out > t->max_out)
        t->max_out = t->pool.n_out;
    for (int i = 0; i < t->n_streams; i++) {
        pump_send(&t->streams[i]);
        pump_recv(&t->streams[i]);
    }
}

/* What the test saw, for a wait that timed out. */
static void dump_state(const struct host *t)
{
    for (int i = 0; i < t->n_streams; i++) {
        const struct stream *s = &t->streams[i];
        fprintf(stderr, "  %-7s fd %d sent %" PRIu64 "%s%s rcvd %" PRIu64 "%s err %d\n", s->name,
                s->fd, s->sent, s->blocked ? " (blocked)" : "", s->shut ? " (shut)" : "", s->rcvd,
                s->eof ? " (eof)" : "", s->err);
    }
    fprintf(stderr,
            "  sessions made %d closed %d freed %d; wait_budget %d leave_budget %d, "
            "%s queued; registry messages %d; chunks out %zu\n",
            t->made, t->n_closed, t->n_freed, t->n_wait_budget, t->n_leave_budget,
            TAILQ_EMPTY(&t->waiters) ? "none" : "some", t->n_deliver, t->pool.n_out);
}

/* Steps until cond holds; fails the test at the deadline. */
#define WAIT_UNTIL(t, cond, what)                                                                  \
    do {                                                                                           \
        uint64_t deadline_ = now_ms() + WAIT_MS;                                                   \
        while (!(cond)) {                                                                          \
            if (now_ms() > deadline_) {                                                            \
                dump_state(t);                                                                     \
                fail_msg("%s:%d: no %s within %d ms", __FILE__, __LINE__, (what), WAIT_MS);        \
            }                                                                                      \
            step(t);                                                                               \
        }                                                                                          \
    } while (0)

/* Steps until s has sent nothing for STALL_QUIET_MS while its sends get
 * EAGAIN: the receiving side stopped taking bytes. */
static void wait_send_stalled(struct host *t, struct stream *s)
{
    uint64_t deadline = now_ms() + WAIT_MS;
    uint64_t last = s->sent, since = now_ms();
    for (;;) {
        step(t);
        uint64_t now = now_ms();
        if (s->sent != last || !s->blocked) {
            last = s->sent;
            since = now;
        } else if (now - since >= STALL_QUIET_MS) {
            return;
        }
        if (now > deadline)
            fail_msg("%s never stalled: %" PRIu64 " bytes sent in %d ms", s->name, s->sent,
                     WAIT_MS);
    }
}

/* Steps for ms milliseconds whatever happens. */
static void run_for(struct host *t, uint64_t ms)
{
    uint64_t end = now_ms() + ms;
    while (now_ms() < end)
        step(t);
}

/* --- setup and teardown ---------------------------------------------------- */

struct route_opts {
    int family; /* of both loopback listeners */
    unsigned buffer_bytes;
    int server_rcvbuf; /* SO_RCVBUF of the server's connections; 0: the kernel's */
    int no_server;     /* nobody listens on the server's port: connects are refused */
    unsigned retries;
    const char *identity; /* client.identity; NULL: the default */
};

static void host_init(struct host *t, const struct route_opts *o)
{
    memset(t, 0, sizeof(*t));
    t->front_fd = t->server_listen_fd = -1;
    t->front_fd = bind_loopback(o->family, 0, 1, &t->front_addr, &t->front_len);
    assert_true(t->front_fd >= 0);
    t->server_listen_fd =
        bind_loopback(o->family, o->server_rcvbuf, !o->no_server, &t->server_addr, &t->server_len);
    assert_true(t->server_listen_fd >= 0);

    const char *host = o->family == AF_INET ? "127.0.0.1" : "[::1]";
    char json[1024];
    snprintf(json, sizeof(json),
             "{\"buffer_total_bytes\":16777216,\"routes\":[{\"name\":\"r\","
             "\"listen\":\"%s:%u\",\"buffer_bytes\":%u,"
             "\"client\":{\"identity\":\"%s\"},"
             "\"upstream\":{\"servers\":[\"%s:%u\"],\"connect_timeout_ms\":2000,"
             "\"retries\":%u,\"retry_backoff_ms\":10}}]}",
             host, port_of(&t->front_addr), o->buffer_bytes,
             o->identity != NULL ? o->identity : "address_port", host, port_of(&t->server_addr),
             o->retries);
    struct config_errors errs = { 0 };
    int rc = config_parse(json, strlen(json), &t->cfg, &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "config: %s\n", errs.msgs[i]);
    config_errors_free(&errs);
    assert_int_equal(rc, 0);

    worker_stats_init(&t->ws);
    t->rs = metrics_route(&t->ws, &t->cfg->routes[0]);
    assert_non_null(t->rs);

    assert_int_equal(uv_loop_init(&t->loop), 0);
    pool_init(&t->pool, 64);
    budget_init(&t->budget, BUDGET_FDS, t->cfg->buffer_total_bytes);
    assert_int_equal(registry_local_new(&t->reg.local, host_deliver, t), 0);
    t->reg.base =
        (struct registry){ .ops = &test_registry_ops, .deliver = host_deliver, .deliver_ctx = t };
    log_limit_init(&t->upstream_log, "upstream", 10);
    TAILQ_INIT(&t->waiters);
    LIST_INIT(&t->sessions);
    assert_int_equal(uv_timer_init(&t->loop, &t->budget_retry), 0);
    t->budget_retry.data = t;
    assert_int_equal(uv_async_init(&t->loop, &t->wakeup, wakeup_cb), 0);
    t->wakeup.data = t;
    assert_int_equal(deadlines_init(&t->deadlines, &t->loop, session_deadline_fire), 0);
    t->loop.data = &t->h;
    t->h = (struct session_host){
        .loop = &t->loop,
        .deadlines = &t->deadlines,
        .pool = &t->pool,
        .budget = &t->budget,
        .registry = &t->reg.base,
        .upstream_log = &t->upstream_log,
        .id = 0,
        .wait_budget = host_wait_budget,
        .leave_budget = host_leave_budget,
        .fds_exhausted = host_fds_exhausted,
        .closed = host_closed,
        .freed = host_freed,
    };
    t->n_streams = N_STREAMS;
    stream_init(&t->streams[CLIENT], "client", -1, 0xC11E, 0x5E7F);
    stream_init(&t->streams[SERVER], "server", -1, 0x5E7F, 0xC11E);
    stream_init(&t->streams[CLIENT2], "client2", -1, 0xC22E, 0x5E8F);
    stream_init(&t->streams[SERVER2], "server2", -1, 0x5E8F, 0xC22E);
}

/* A client connects to the front listener; the accepted connection
 * becomes a session, as a worker's take_connection() does it. client_rcvbuf
 * > 0 sets the client's receive buffer before it connects. */
static struct stream *start_session(struct host *t, int which, int client_rcvbuf)
{
    int c = socket(t->front_addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c >= 0);
    set_buf(c, SO_RCVBUF, client_rcvbuf);
    /* Loopback and a listening socket: the handshake completes in connect(). */
    assert_int_equal(connect(c, (struct sockaddr *)&t->front_addr, t->front_len), 0);
    set_nonblocking(c);
    t->streams[which].fd = c;

    struct sockaddr_storage peer;
    socklen_t peer_len = sizeof(peer);
    int fd =
        accept4(t->front_fd, (struct sockaddr *)&peer, &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    assert_true(fd >= 0);

    assert_int_equal(budget_take_fds(&t->budget, BUDGET_FDS_PER_SESSION), 0);
    struct session_params p = { .cfg = t->cfg,
                                .route = &t->cfg->routes[0],
                                .stats = t->rs,
                                .fd = fd,
                                .peer = (struct sockaddr *)&peer,
                                .peer_len = peer_len };
    struct session *s = NULL;
    assert_int_equal(session_new(&t->h, &p, &s), 0);
    assert_non_null(s);
    LIST_INSERT_HEAD(&t->sessions, session_link(s), list);
    t->made++;
    session_run(s);
    return &t->streams[which];
}

/* Steps until the session's upstream connection is there to accept. */
static struct stream *accept_server(struct host *t, int which)
{
    int fd = -1;
    WAIT_UNTIL(t,
               (fd = accept4(t->server_listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0,
               "upstream connection");
    t->streams[which].fd = fd;
    return &t->streams[which];
}

static uint64_t route_stat(struct host *t, int slot) { return metric_get(&t->rs->c[slot]); }

/* Exactly one close, for this reason; the session is gone from the counts. */
static void assert_closed_once(struct host *t, enum reason want)
{
    for (int r = 0; r < REASON_COUNT; r++) {
        uint64_t n = route_stat(t, RC_CLOSES + r);
        if (n != (r == (int)want ? 1u : 0u))
            fail_msg("closes{reason=%s} = %" PRIu64 ", want %d (expected the one close to be %s)",
                     reason_name((enum reason)r), n, r == (int)want, reason_name(want));
    }
    assert_int_equal(route_stat(t, RC_SESSIONS_ACTIVE), 0);
    assert_int_equal(route_stat(t, RC_SESSIONS_TOTAL), 1);
    assert_int_equal(t->n_closed, 1);
    assert_int_equal(t->n_freed, 1);
    /* One session per client: one claim, granted, released; no messages. */
    assert_int_equal(t->reg.n_claim, 1);
    assert_int_equal(t->reg.n_answer[REGISTRY_GO], 1);
    assert_int_equal(t->reg.n_release, 1);
    assert_int_equal(t->n_deliver, 0);
    assert_int_equal(t->n_events, 2);
    assert_int_equal(t->events[0], EV_CLOSED);
    assert_int_equal(t->events[1], EV_FREED);
    assert_non_null(strstr(t->closed_json, "\"state\":\"closed\""));
}

/* Closes everything the test opened, lets every handle finish closing, and
 * checks that nothing is left: handles, sessions, buffers, descriptors,
 * identities. */
static void host_finish(struct host *t)
{
    for (int i = 0; i < t->n_streams; i++)
        stream_close(&t->streams[i]);
    if (t->front_fd >= 0)
        close(t->front_fd);
    if (t->server_listen_fd >= 0)
        close(t->server_listen_fd);
    t->front_fd = t->server_listen_fd = -1;
    uv_close((uv_handle_t *)&t->budget_retry, NULL);
    uv_close((uv_handle_t *)&t->wakeup, NULL);
    uint64_t deadline = now_ms() + WAIT_MS;
    /* The sessions' timers run until the last session is gone, as on a
     * worker, which closes its deadlines only then. */
    while (t->n_freed < t->made) {
        if (now_ms() > deadline)
            fail_msg("sessions still open %d ms after the test closed its own", WAIT_MS);
        step(t);
    }
    deadlines_close(&t->deadlines);
    while (uv_loop_alive(&t->loop)) {
        if (now_ms() > deadline)
            fail_msg("handles still open %d ms after the test closed its own", WAIT_MS);
        step(t);
    }
    assert_int_equal(uv_loop_close(&t->loop), 0);

    assert_int_equal(t->n_freed, t->made);
    assert_int_equal(t->n_closed, t->made);
    assert_true(LIST_EMPTY(&t->sessions));
    assert_true(TAILQ_EMPTY(&t->waiters));
    assert_int_equal(t->n_inbox, 0);
    assert_int_equal(t->n_fds_exhausted, 0);
    assert_int_equal(t->pool.n_out, 0);
    assert_int_equal(atomic_load(&t->budget.buf_used), 0);
    assert_int_equal(atomic_load(&t->budget.fds_used), 0);
    /* Every claim was released: each identity is free for a newcomer. */
    assert_int_equal(t->reg.n_release, t->reg.n_claim);
    for (int i = 0; i < t->reg.n_ids; i++) {
        struct session_ref probe = { .worker = t->h.id, .id = UINT64_MAX };
        assert_int_equal(registry_claim(t->reg.local, &t->reg.ids[i], probe, 0), REGISTRY_GO);
        registry_release(t->reg.local, &t->reg.ids[i], probe);
    }

    pool_drain(&t->pool);
    registry_destroy(&t->reg.base);
    worker_stats_destroy(&t->ws);
    config_free(t->cfg);
}

/* --- cases ------------------------------------------------------------------ */

#define MiB (1024u * 1024u)

/* 1 MiB each way; the client's half-close reaches the server as EOF while
 * the server still sends; the server's close reaches the client as EOF.
 * The first EOF names the close: client_eof. */
static void test_relay_both_ways_then_half_close(void **state)
{
    (void)state;
    static struct host t;
    host_init(&t, &(struct route_opts){ .family = AF_INET, .buffer_bytes = 1048576 });
    struct stream *client = start_session(&t, CLIENT, 0);
    struct stream *server = accept_server(&t, SERVER);

    client->to_send = MiB;
    client->shut_after = 1;
    server->to_send = MiB;
    WAIT_UNTIL(&t, server->eof && client->rcvd == MiB && server->sent == MiB,
               "1 MiB each way and the client's EOF at the server");
    assert_intact(server, MiB);
    assert_intact(client, MiB);
    assert_int_equal(server->err, 0);
    assert_int_equal(route_stat(&t, RC_BYTES_FROM_CLIENT), MiB);
    assert_int_equal(route_stat(&t, RC_BYTES_FROM_SERVER), MiB);
    /* Half-closed: the session lives on, the client has not seen an EOF. */
    assert_int_equal(client->eof, 0);
    assert_int_equal(client->err, 0);
    assert_int_equal(t.n_closed, 0);
    assert_int_equal(route_stat(&t, RC_SESSIONS_ACTIVE), 1);
    assert_int_equal(t.closed_json[0], '\0');

    /* The server still talks to the half-closed client. */
    server->to_send = MiB + 256 * 1024;
    WAIT_UNTIL(&t, client->rcvd == server->to_send, "the server's bytes after the client's EOF");
    assert_intact(client, MiB + 256 * 1024);
    assert_int_equal(client->eof, 0);
    assert_int_equal(t.n_closed, 0);

    /* The server closes: the client sees EOF and the session ends. */
    stream_close(server);
    WAIT_UNTIL(&t, client->eof && t.n_freed == 1, "the client's EOF and the session freed");
    assert_int_equal(client->err, 0);
    assert_intact(client, MiB + 256 * 1024);
    assert_int_equal(route_stat(&t, RC_BYTES_FROM_SERVER), MiB + 256 * 1024);
    assert_int_equal(route_stat(&t, RC_BYTES_FROM_CLIENT), MiB);
    assert_closed_once(&t, REASON_CLIENT_EOF);
    assert_non_null(strstr(t.closed_json, "\"bytes_from_client\":1048576,"));
    assert_non_null(strstr(t.closed_json, "\"bytes_from_server\":1310720,"));
    host_finish(&t);
}

/* The client stops reading while the server writes without end: lifeline
 * stops reading the server (its writes stall, its bytes sit in its own
 * send queue), holds one read's worth, and goes on once the client reads.
 * (Once stalled, the kernels may still let a few bytes through as they
 * compact their receive queues: the stall is the server's, seen as no
 * progress for STALL_QUIET_MS; what lifeline holds is exact.) */
static void test_backpressure(void **state)
{
    (void)state;
    static struct host t;
    const unsigned buffer_bytes = POOL_CHUNK_SIZE;
    host_init(&t, &(struct route_opts){ .family = AF_INET, .buffer_bytes = buffer_bytes });
    struct stream *client = start_session(&t, CLIENT, 64 * 1024);
    struct stream *server = accept_server(&t, SERVER);
    set_buf(server->fd, SO_SNDBUF, 64 * 1024);

    client->reading = 0;
    server->to_send = UNSET;
    uint64_t t0 = now_ms();
    wait_send_stalled(&t, server);
    uint64_t stalled_at = server->sent;
    uint64_t relayed = route_stat(&t, RC_BYTES_FROM_SERVER);
    int outq = 0;
    assert_int_equal(ioctl(server->fd, SIOCOUTQ, &outq), 0);
    fprintf(stderr,
            "backpressure: server stalled after %" PRIu64 " bytes (%" PRIu64 " ms), %" PRIu64
            " read by lifeline, %d in the server's send queue, "
            "%zu chunk(s) held\n",
            stalled_at, now_ms() - t0, relayed, outq, t.pool.n_out);
    /* Lifeline's receive window is shut: the server's bytes wait in its queue. */
    assert_true(outq > 0);
    assert_true(relayed < stalled_at);
    /* What lifeline holds is one read that the client did not take: within
     * buffer_bytes, one chunk, and counted in the buffer budget; never more. */
    assert_int_equal(t.pool.n_out, 1);
    assert_int_equal(t.max_out, 1);
    assert_int_equal(atomic_load(&t.budget.buf_used), (int64_t)sizeof(struct chunk));
    assert_int_equal(client->rcvd, 0);
    assert_int_equal(t.n_wait_budget, 0);

    /* The client reads: everything arrives, and the server writes 8 MiB more. */
    client->reading = 1;
    server->to_send = stalled_at + 8 * MiB;
    WAIT_UNTIL(&t, client->rcvd == server->to_send, "every byte at the client");
    assert_intact(client, stalled_at + 8 * MiB);
    assert_int_equal(route_stat(&t, RC_BYTES_FROM_SERVER), stalled_at + 8 * MiB);
    assert_int_equal(t.max_out, 1);

    /* The server closes first (upstream_eof), then the client. */
    stream_close(server);
    WAIT_UNTIL(&t, client->eof, "the server's EOF at the client");
    assert_int_equal(t.n_closed, 0);
    assert_int_equal(shutdown(client->fd, SHUT_WR), 0);
    WAIT_UNTIL(&t, t.n_freed == 1, "the session freed");
    assert_closed_once(&t, REASON_UPSTREAM_EOF);
    assert_int_equal(client->err, 0);
    host_finish(&t);
}

/* The client sends while the server does not read, then resets its
 * connection (SO_LINGER 0). Every byte lifeline had read from the client
 * still reaches the server, then an EOF, not a reset. */
static void test_client_reset_flushes_then_fin(void **state)
{
    (void)state;
    static struct host t;
    host_init(&t, &(struct route_opts){
                      .family = AF_INET, .buffer_bytes = 1048576, .server_rcvbuf = 16 * 1024 });
    struct stream *client = start_session(&t, CLIENT, 0);
    struct stream *server = accept_server(&t, SERVER);

    server->reading = 0;
    client->to_send = UNSET;
    wait_send_stalled(&t, client);
    uint64_t from_client = route_stat(&t, RC_BYTES_FROM_CLIENT);
    fprintf(stderr,
            "flush: client stalled after %" PRIu64 " bytes, %" PRIu64
            " read by lifeline, %zu chunk(s) held\n",
            client->sent, from_client, t.pool.n_out);
    assert_true(from_client > 0);
    assert_true(t.pool.n_out > 0);                       /* bytes in flight in lifeline itself */
    assert_true(t.max_out <= 1048576 / POOL_CHUNK_SIZE); /* never past buffer_bytes */
    assert_int_equal(server->rcvd, 0);

    struct linger lg = { .l_onoff = 1, .l_linger = 0 };
    assert_int_equal(setsockopt(client->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    stream_close(client);
    run_for(&t, 50);
    assert_int_equal(t.n_freed, 0); /* the flush waits for the server */

    /* A slow server: 16 KiB per step. */
    server->reading = 1;
    server->read_max = 16 * 1024;
    WAIT_UNTIL(&t, (server->eof || server->err != 0) && t.n_freed == 1,
               "the server's EOF and the session freed");
    if (server->err != 0)
        fail_msg("the server got %s after %" PRIu64 " bytes, not an EOF", strerror(server->err),
                 server->rcvd);
    uint64_t final_from_client = route_stat(&t, RC_BYTES_FROM_CLIENT);
    fprintf(stderr,
            "flush: server read %" PRIu64 " bytes, lifeline read %" PRIu64
            " from the client, which sent %" PRIu64 "\n",
            server->rcvd, final_from_client, client->sent);
    assert_intact(server, final_from_client);
    assert_true(final_from_client >= from_client);
    assert_true(final_from_client <= client->sent);
    assert_closed_once(&t, REASON_CLIENT_RESET);
    host_finish(&t);
}

/* The same relay over ::1, with both closes at once: the client's EOF,
 * the server's answer, the server's EOF. */
static void test_relay_ipv6(void **state)
{
    (void)state;
    static struct host t;
    struct sockaddr_storage probe;
    socklen_t probe_len;
    int fd = bind_loopback(AF_INET6, 0, 1, &probe, &probe_len);
    if (fd < 0) {
        fprintf(stderr, "no ::1 here: skipped\n");
        skip();
    }
    close(fd);
    host_init(&t, &(struct route_opts){ .family = AF_INET6, .buffer_bytes = 1048576 });
    struct stream *client = start_session(&t, CLIENT, 0);
    struct stream *server = accept_server(&t, SERVER);
    client->to_send = 300000;
    client->shut_after = 1;
    server->to_send = 200000;
    server->shut_after = 1;
    WAIT_UNTIL(&t, server->eof && client->eof && t.n_freed == 1, "both EOFs and the session freed");
    assert_intact(server, 300000);
    assert_intact(client, 200000);
    assert_int_equal(route_stat(&t, RC_BYTES_FROM_CLIENT), 300000);
    assert_int_equal(route_stat(&t, RC_BYTES_FROM_SERVER), 200000);
    assert_non_null(strstr(t.closed_json, "\"client\":\"[::1]:"));
    /* Whichever EOF lifeline read first names the close. */
    assert_int_equal(route_stat(&t, RC_CLOSES + REASON_CLIENT_EOF) +
                         route_stat(&t, RC_CLOSES + REASON_UPSTREAM_EOF),
                     1);
    assert_closed_once(&t, route_stat(&t, RC_CLOSES + REASON_CLIENT_EOF) ? REASON_CLIENT_EOF
                                                                         : REASON_UPSTREAM_EOF);
    host_finish(&t);
}

/* Nobody listens on the server's port: one try and one retry, both
 * counted as failed, then the client gets an EOF (client.close applies
 * only to clients lifeline gave up on). */
static void test_connect_refused(void **state)
{
    (void)state;
    static struct host t;
    host_init(&t, &(struct route_opts){
                      .family = AF_INET, .buffer_bytes = 1048576, .no_server = 1, .retries = 1 });
    struct stream *client = start_session(&t, CLIENT, 0);
    client->to_send = 1000; /* queued while connecting, then dropped */
    WAIT_UNTIL(&t, t.n_freed == 1 && (client->eof || client->err != 0),
               "the session given up and the client's EOF");
    assert_int_equal(client->err, 0);
    assert_int_equal(client->rcvd, 0);
    assert_closed_once(&t, REASON_UPSTREAM_CONNECT_FAILED);
    struct server_stats *sv = metrics_server(t.rs, &t.cfg->routes[0].upstream.servers[0]);
    assert_non_null(sv);
    assert_int_equal(metric_get(&sv->c[SC_ATTEMPTS]), 2);
    assert_int_equal(metric_get(&sv->c[SC_FAILURES]), 2);
    host_finish(&t);
}

/* A second connection of the same client address (identity "address",
 * on_duplicate "replace"): the old session is told to go (EVICT, through
 * the host), its client is cut (client.close "rst"), its server gets every
 * byte and an EOF; only then is the new session told to go on (GO) and
 * connects, with the bytes its client sent meanwhile. */
static void takeover(struct host *t, int budget_spent_while_waiting)
{
    struct stream *a = start_session(t, CLIENT, 0);
    struct stream *sa = accept_server(t, SERVER);
    a->to_send = 100000;
    sa->to_send = 50000;
    WAIT_UNTIL(t, sa->rcvd == 100000 && a->rcvd == 50000, "the first session's bytes");

    if (budget_spent_while_waiting)
        budget_set_buf_max(&t->budget, 0);
    struct stream *b = start_session(t, CLIENT2, 0);
    assert_int_equal(t->n_evict, 1);
    assert_int_equal(route_stat(t, RC_TAKEOVERS), 1);
    b->to_send = 70000; /* read and held while the session waits */
    WAIT_UNTIL(t, a->err != 0 || a->eof, "the first client cut off");
    assert_int_equal(a->err, ECONNRESET);
    /* The old server connection ends with every byte and an EOF while the
     * new session still waits: no GO yet, no new connection at the server
     * (lifeline gives the server AWAIT_GRACE_MS after its FIN is acked). */
    WAIT_UNTIL(t, sa->eof || sa->err != 0, "the old server connection's EOF");
    assert_int_equal(sa->err, 0);
    assert_intact(sa, 100000);
    assert_int_equal(t->n_go, 0);
    assert_int_equal(accept4(t->server_listen_fd, NULL, NULL, SOCK_NONBLOCK), -1);
    assert_int_equal(errno, EAGAIN);
    WAIT_UNTIL(t, t->n_freed == 1, "the first session freed");
    assert_int_equal(route_stat(t, RC_CLOSES + REASON_REPLACED), 1);

    struct stream *sb = accept_server(t, SERVER2);
    assert_int_equal(t->n_go, 1);
    if (budget_spent_while_waiting) {
        assert_true(t->n_wait_budget > 0);
        budget_set_buf_max(&t->budget, 16 * 1024 * 1024); /* memory again */
    }
    sb->to_send = 40000;
    b->shut_after = 1;
    WAIT_UNTIL(t, sb->eof && b->rcvd == 40000, "the second session's bytes and its client's EOF");
    assert_intact(sb, 70000);
    assert_intact(b, 40000);
    stream_close(sb);
    WAIT_UNTIL(t, b->eof && t->n_freed == 2, "the second session freed");
    assert_int_equal(b->err, 0);

    assert_int_equal(route_stat(t, RC_SESSIONS_TOTAL), 2);
    assert_int_equal(route_stat(t, RC_SESSIONS_ACTIVE), 0);
    assert_int_equal(route_stat(t, RC_CLOSES + REASON_REPLACED), 1);
    assert_int_equal(route_stat(t, RC_CLOSES + REASON_CLIENT_EOF), 1);
    assert_int_equal(route_stat(t, RC_BYTES_FROM_CLIENT), 170000);
    assert_int_equal(route_stat(t, RC_BYTES_FROM_SERVER), 90000);
    assert_int_equal(t->n_deliver, 2);
    assert_int_equal(t->n_refused, 0);
    assert_int_equal(t->reg.n_claim, 2);
    assert_int_equal(t->reg.n_answer[REGISTRY_GO], 1);
    assert_int_equal(t->reg.n_answer[REGISTRY_WAIT], 1);
    assert_int_equal(t->reg.n_release, 2);
    assert_int_equal(t->reg.n_ids, 1); /* one client address: one identity */
    assert_int_equal(t->n_evict, 1);
    assert_int_equal(t->n_go, 1);
    assert_int_equal(t->n_events, 4);
    assert_int_equal(t->events[0], EV_CLOSED);
    assert_int_equal(t->events[1], EV_FREED);
    assert_int_equal(t->events[2], EV_CLOSED);
    assert_int_equal(t->events[3], EV_FREED);
}

static void test_takeover(void **state)
{
    (void)state;
    static struct host t;
    host_init(&t, &(struct route_opts){
                      .family = AF_INET, .buffer_bytes = 1048576, .identity = "address" });
    takeover(&t, 0);
    host_finish(&t);
}

/* A session WAITING for its client identity reads its client; with the
 * buffer budget spent, the read waits for memory on the host's queue. When
 * the host asks it to retry it must read again (or wait again), so that
 * every byte the client sent reaches the server once it connects. (It used
 * to drop off the queue for good while WAITING.) */
static void test_takeover_budget_spent_while_waiting(void **state)
{
    (void)state;
    static struct host t;
    host_init(&t, &(struct route_opts){
                      .family = AF_INET, .buffer_bytes = 1048576, .identity = "address" });
    takeover(&t, 1);
    host_finish(&t);
}

/* An asynchronous backend (a registry shared between machines) answers a
 * claim PENDING and decides later. Until it does the session waits and
 * reaches no server; REFUSED closes it as rejected, and it releases its
 * claim as any closing session does; GO lets it connect, and its client's
 * early bytes arrive. */
static void pending_then(struct host *t, enum registry_msg answer)
{
    t->reg.pending = 1;
    struct stream *c = start_session(t, CLIENT, 0);
    c->to_send = 5000; /* held while the session waits */
    assert_int_equal(t->reg.n_answer[REGISTRY_PENDING], 1);
    for (int i = 0; i < 50; i++) /* a while: no server connection, no close */
        step(t);
    int fd = accept4(t->server_listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    assert_int_equal(fd, -1);
    assert_int_equal(t->n_closed, 0);
    host_deliver(t, t->reg.last_self, answer);
    if (answer == REGISTRY_MSG_REFUSED) {
        WAIT_UNTIL(t, t->n_freed == 1 && (c->eof || c->err != 0), "the refused session gone");
        assert_int_equal(route_stat(t, RC_CLOSES + REASON_REJECTED), 1);
        assert_int_equal(t->reg.n_release, 1); /* the claim is withdrawn as any other */
        t->reg.refused_later++;
        return;
    }
    struct stream *s = accept_server(t, SERVER);
    WAIT_UNTIL(t, s->rcvd == 5000, "the client's early bytes at the server");
    stream_close(c);
    stream_close(s);
    WAIT_UNTIL(t, t->n_freed == 1, "the session gone");
    assert_int_equal(t->reg.n_release, 1);
}

static void test_pending_then_refused(void **state)
{
    (void)state;
    static struct host t;
    host_init(&t, &(struct route_opts){
                      .family = AF_INET, .buffer_bytes = 1048576, .identity = "address" });
    pending_then(&t, REGISTRY_MSG_REFUSED);
    host_finish(&t);
}

static void test_pending_then_go(void **state)
{
    (void)state;
    static struct host t;
    host_init(&t, &(struct route_opts){
                      .family = AF_INET, .buffer_bytes = 1048576, .identity = "address" });
    pending_then(&t, REGISTRY_MSG_GO);
    host_finish(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_relay_both_ways_then_half_close),
        cmocka_unit_test(test_backpressure),
        cmocka_unit_test(test_client_reset_flushes_then_fin),
        cmocka_unit_test(test_relay_ipv6),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_takeover),
        cmocka_unit_test(test_takeover_budget_spent_while_waiting),
        cmocka_unit_test(test_pending_then_refused),
        cmocka_unit_test(test_pending_then_go),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
