/* Load tool for bench/run.py: an echo server; ping-pong, connection-rate and idle clients. */

/*
 * Every socket is on 127.0.0.1: the port is the only address argument.
 *
 *   load echo PORT            epoll echo server; prints "listening port=PORT", runs until killed
 *   load pingpong PORT COUNT  COUNT 64-byte round trips over one connection (after a warm-up);
 *                             prints "pingpong count=N p50_us=X p99_us=Y"
 *   load connrate PORT SECS   for SECS seconds: connect, send 64 bytes, read them back, close;
 *                             prints "connrate conns=N errors=E seconds=S rate=R"
 *   load idle PORT COUNT      opens COUNT connections one after the other, each checked end to
 *                             end with a 1-byte echo, stopping at the first that fails; prints
 *                             "established=N failed=0|1" and holds them open until standard
 *                             input reaches end-of-file or a line, then closes them all and
 *                             prints "closed=N"
 *
 * Output is one "key=value" line per result, for the driver to parse. Errors go to stderr,
 * and the exit status is 0 on success, 1 on failure, 2 on a usage error.
 */

#define _GNU_SOURCE

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG_SIZE 64
#define ECHO_BUF 4096
#define IO_TIMEOUT_S 5
#define IDLE_TIMEOUT_S 2

/* One accepted connection of the echo server: buf[off, len) still has to be written back. */
struct echo_conn {
    int fd;
    uint32_t events; /* what epoll watches: EPOLLIN, or EPOLLOUT while an echo is pending */
    size_t off;
    size_t len;
    char buf[ECHO_BUF];
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int parse_uint(const char *s, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 1 || v > max)
        return -1;
    *out = v;
    return 0;
}

/* The echo server and the idle mode hold one descriptor per connection: take the hard limit. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sa;
}

static void set_nodelay(int fd)
{
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* A blocking client socket connected to 127.0.0.1:port, or -errno. Reads and writes
 * time out after timeout_s seconds, so a stuck proxy cannot hang the benchmark. */
static int connect_to(int port, int timeout_s)
{
    struct sockaddr_in sa = loopback(port);
    struct timeval tv = { .tv_sec = timeout_s, .tv_usec = 0 };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    set_nodelay(fd);
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

/* 0 once all n bytes are sent, else -errno. */
static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* 0 once all n bytes are read, -ECONNRESET on end-of-file, else -errno. */
static int recv_all(int fd, char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = recv(fd, p, n, 0);
        if (r == 0)
            return -ECONNRESET;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* One round trip of n bytes on a connected socket: 0 or -errno. */
static int round_trip(int fd, char *buf, size_t n)
{
    int rc = send_all(fd, buf, n);
    return rc != 0 ? rc : recv_all(fd, buf, n);
}

/* ---------------------------------------------------------------- echo server */

static void echo_close(int ep, struct echo_conn *c)
{
    (void)epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

static void echo_accept(int ep, int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or out of descriptors: the rest wait in the backlog. */
        set_nodelay(fd);
        struct echo_conn *c = malloc(sizeof *c);
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->events = EPOLLIN;
        c->off = c->len = 0;
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            free(c);
        }
    }
}

/* Writes back what is pending. Returns 1 when all of it went out, 0 when the socket is full,
 * -1 on an error. */
static int echo_flush(struct echo_conn *c)
{
    while (c->off < c->len) {
        ssize_t w = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (w < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        c->off += (size_t)w;
    }
    c->off = c->len = 0;
    return 1;
}

/* A readable or writable connection. Reading stops while an echo is pending, so a client that
 * does not read cannot make the server buffer without bound. */
static void echo_event(int ep, struct echo_conn *c, uint32_t events)
{
    if (c->len == 0) {
        ssize_t r = recv(c->fd, c->buf, sizeof c->buf, 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            echo_close(ep, c);
            return;
        }
        if (r < 0)
            return;
        c->len = (size_t)r;
    } else if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        return;
    }
    int done = echo_flush(c);
    if (done < 0) {
        echo_close(ep, c);
        return;
    }
    uint32_t want = done ? EPOLLIN : EPOLLOUT;
    if (want != c->events) {
        struct epoll_event ev = { .events = want, .data.ptr = c };
        c->events = want;
        (void)epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    }
}

static int run_echo(int port)
{
    struct sockaddr_in sa = loopback(port);
    int one = 1;

    raise_nofile();
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, SOMAXCONN) != 0) {
        fprintf(stderr, "load echo: listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0) {
        fprintf(stderr, "load echo: epoll: %s\n", strerror(errno));
        return 1;
    }
    printf("listening port=%d\n", port);
    fflush(stdout);

    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "load echo: epoll_wait: %s\n", strerror(errno));
            return 1;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL)
                echo_accept(ep, lfd);
            else
                echo_event(ep, evs[i].data.ptr, evs[i].events);
        }
    }
}

/* ---------------------------------------------------------------- clients */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int run_pingpong(int port, long count)
{
    long warmup = count / 10 < 100 ? 100 : count / 10;
    uint64_t *lat = malloc((size_t)count * sizeof *lat);
    char buf[MSG_SIZE];
    int fd = connect_to(port, IO_TIMEOUT_S);
    if (lat == NULL || fd < 0) {
        fprintf(stderr, "load pingpong: connect to 127.0.0.1:%d: %s\n", port,
                strerror(fd < 0 ? -fd : ENOMEM));
        return 1;
    }
    memset(buf, 'p', sizeof buf);
    for (long i = 0; i < warmup + count; i++) {
        uint64_t t0 = now_ns();
        int rc = round_trip(fd, buf, sizeof buf);
        if (rc != 0) {
            fprintf(stderr, "load pingpong: round trip %ld: %s\n", i, strerror(-rc));
            return 1;
        }
        if (i >= warmup)
            lat[i - warmup] = now_ns() - t0;
    }
    close(fd);
    qsort(lat, (size_t)count, sizeof *lat, cmp_u64);
    printf("pingpong count=%ld p50_us=%.1f p99_us=%.1f\n", count, lat[count * 50 / 100] / 1e3,
           lat[count * 99 / 100] / 1e3);
    free(lat);
    return 0;
}

static int run_connrate(int port, long seconds)
{
    char buf[MSG_SIZE];
    long conns = 0, errors = 0;
    int last_err = 0;
    uint64_t start = now_ns(), end = start + (uint64_t)seconds * 1000000000u, t;

    memset(buf, 'c', sizeof buf);
    while ((t = now_ns()) < end) {
        int fd = connect_to(port, IO_TIMEOUT_S);
        int rc = fd < 0 ? fd : round_trip(fd, buf, sizeof buf);
        if (fd >= 0)
            close(fd);
        if (rc == 0) {
            conns++;
            continue;
        }
        last_err = -rc;
        /* A proxy that refuses everything would otherwise spin here for the whole run. */
        if (++errors > 1000)
            break;
    }
    double secs = (now_ns() - start) / 1e9;
    printf("connrate conns=%ld errors=%ld seconds=%.3f rate=%.0f\n", conns, errors, secs,
           conns / secs);
    if (errors > 0)
        fprintf(stderr, "load connrate: %ld errors, the last: %s\n", errors, strerror(last_err));
    return conns > 0 ? 0 : 1;
}

static int run_idle(int port, long count)
{
    int *fds = malloc((size_t)count * sizeof *fds);
    long open_n = 0, failed = 0;
    int last_err = 0;
    char byte = 'i', line[64];

    if (fds == NULL)
        return 1;
    raise_nofile();
    for (long i = 0; i < count; i++) {
        int fd = connect_to(port, IDLE_TIMEOUT_S);
        int rc = fd < 0 ? fd : round_trip(fd, &byte, 1);
        if (rc == 0) {
            fds[open_n++] = fd;
            continue;
        }
        /* A proxy at its connection limit leaves the next ones in its backlog unanswered:
         * stop at the first failure rather than wait for each of them. */
        if (fd >= 0)
            close(fd);
        failed = 1;
        last_err = -rc;
        break;
    }
    /* The reason first: the driver reads it as soon as it sees the count. */
    if (failed > 0)
        fprintf(stderr, "load idle: connection %ld failed: %s\n", open_n + 1, strerror(last_err));
    printf("established=%ld failed=%ld\n", open_n, failed);
    fflush(stdout);

    /* Hold them until the driver has measured: it writes a line or closes our stdin. */
    (void)read(STDIN_FILENO, line, sizeof line);
    for (long i = 0; i < open_n; i++)
        close(fds[i]);
    printf("closed=%ld\n", open_n);
    free(fds);
    return 0;
}

static int usage(void)
{
    fputs("usage: load echo PORT\n"
          "       load pingpong PORT COUNT\n"
          "       load connrate PORT SECONDS\n"
          "       load idle PORT COUNT\n",
          stderr);
    return 2;
}

int main(int argc, char **argv)
{
    long port, n = 0;

    if (argc < 3 || parse_uint(argv[2], 65535, &port) != 0)
        return usage();
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(argv[1], "echo") == 0 && argc == 3)
        return run_echo((int)port);
    if (argc != 4 || parse_uint(argv[3], 100000000, &n) != 0)
        return usage();
    if (strcmp(argv[1], "pingpong") == 0)
        return run_pingpong((int)port, n);
    if (strcmp(argv[1], "connrate") == 0)
        return run_connrate((int)port, n);
    if (strcmp(argv[1], "idle") == 0)
        return run_idle((int)port, n);
    return usage();
}
