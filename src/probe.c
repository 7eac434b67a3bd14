/* `lifeline probe`: GET one http:// URL and turn its status into an exit code. */
#include "lifeline/probe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lifeline/exit.h"
#include "lifeline/num.h"

/* Container images ship no curl; HEALTHCHECK and exec probes need something
 * that speaks just enough HTTP to read a status line. This is a separate,
 * short-lived process, so plain sockets and poll() are enough: one total
 * deadline bounds connect, send and the status line together, and only the
 * first line of the answer is ever read (into a fixed buffer). */

#define PROBE_TIMEOUT_MAX 600000 /* 10 minutes */
#define PROBE_STATUS_MAX 1024    /* longest status line read */

static const char probe_usage[] =
    "Usage: lifeline probe [--timeout MS] URL\n"
    "\n"
    "GET URL and exit 0 if the status is 2xx: a health check for container\n"
    "HEALTHCHECKs and Kubernetes exec probes, with no curl in the image.\n"
    "URL is http://HOST:PORT/PATH, HOST an IPv4 address, an IPv6 address in\n"
    "brackets or localhost (no https).\n"
    "\n"
    "Options:\n"
    "      --timeout MS   give up after MS milliseconds in all (default 2000)\n"
    "  -h, --help         show this help\n"
    "\n"
    "Exit codes: 0 a 2xx answer, 1 any other answer or none (the reason on\n"
    "stderr), 2 usage error.\n";

static int probe_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int probe_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("probe: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\nUsage: lifeline probe [--timeout MS] URL\n", stderr);
    va_end(ap);
    return EXIT_USAGE;
}

static void add_addr(struct probe_target *t, int family, const void *ip, uint16_t port)
{
    struct sockaddr_storage *ss = &t->addrs[t->n_addrs];

    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        memcpy(&sin->sin_addr, ip, sizeof(sin->sin_addr));
        t->addrlens[t->n_addrs] = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        memcpy(&sin6->sin6_addr, ip, sizeof(sin6->sin6_addr));
        t->addrlens[t->n_addrs] = sizeof(*sin6);
    }
    t->n_addrs++;
}

/* Parses "1..65535" (digits only). Returns the port or 0. */
static uint16_t parse_port(const char *s, size_t len)
{
    uint64_t v;
    return len <= 5 && num_parse(s, len, 65535, &v) == 0 ? (uint16_t)v : 0;
}

int probe_parse_url(const char *url, struct probe_target *t, const char **why)
{
    static const char scheme[] = "http://";
    const char *auth, *auth_end, *host, *host_end, *port_s = NULL, *path, *path_end;
    char hostbuf[INET6_ADDRSTRLEN];
    uint16_t port = 80;
    size_t host_len;

    memset(t, 0, sizeof(*t));
    if (strncasecmp(url, "https://", 8) == 0)
        return *why = "https is not supported", -1;
    if (strncasecmp(url, scheme, sizeof(scheme) - 1) != 0)
        return *why = "expected http://HOST:PORT/PATH", -1;

    auth = url + sizeof(scheme) - 1;
    auth_end = auth + strcspn(auth, "/?#");
    if (auth_end == auth)
        return *why = "missing host", -1;
    if (memchr(auth, '@', (size_t)(auth_end - auth)) != NULL)
        return *why = "user information is not supported", -1;
    if ((size_t)(auth_end - auth) >= sizeof(t->authority))
        return *why = "host and port too long", -1;

    if (auth[0] == '[') {
        host = auth + 1;
        host_end = memchr(host, ']', (size_t)(auth_end - host));
        if (host_end == NULL)
            return *why = "missing ']' after the IPv6 address", -1;
        if (host_end + 1 < auth_end) {
            if (host_end[1] != ':')
                return *why = "expected ':' and a port after ']'", -1;
            port_s = host_end + 2;
        }
    } else {
        host = auth;
        host_end = memchr(auth, ':', (size_t)(auth_end - auth));
        if (host_end == NULL) {
            host_end = auth_end;
        } else {
            port_s = host_end + 1;
            if (memchr(port_s, ':', (size_t)(auth_end - port_s)) != NULL)
                return *why = "an IPv6 address goes in brackets: http://[::1]:PORT/", -1;
        }
    }
    if (port_s != NULL && (port = parse_port(port_s, (size_t)(auth_end - port_s))) == 0)
        return *why = "the port must be a number from 1 to 65535", -1;

    host_len = (size_t)(host_end - host);
    if (host_len == 0)
        return *why = "missing host", -1;
    if (host_len >= sizeof(hostbuf))
        return *why = "the host must be an IPv4 address, an IPv6 address in brackets or localhost",
               -1;
    memcpy(hostbuf, host, host_len);
    hostbuf[host_len] = '\0';

    if (auth[0] == '[') {
        struct in6_addr a6;
        if (inet_pton(AF_INET6, hostbuf, &a6) != 1)
            return *why = "invalid IPv6 address", -1;
        add_addr(t, AF_INET6, &a6, port);
    } else {
        struct in_addr a4;
        if (strcasecmp(hostbuf, "localhost") == 0) {
            /* What "localhost" means here, without a resolver: both loopbacks. */
            a4.s_addr = htonl(INADDR_LOOPBACK);
            add_addr(t, AF_INET, &a4, port);
            add_addr(t, AF_INET6, &in6addr_loopback, port);
        } else if (inet_pton(AF_INET, hostbuf, &a4) == 1) {
            add_addr(t, AF_INET, &a4, port);
        } else {
            return *why = "the host must be an IPv4 address, an IPv6 address in brackets "
                          "or localhost",
                   -1;
        }
    }
    memcpy(t->authority, auth, (size_t)(auth_end - auth));

    /* The fragment stays with the client; the query goes to the server. */
    path = auth_end;
    path_end = path + strcspn(path, "#");
    if ((size_t)(path_end - path) + 2 > sizeof(t->path))
        return *why = "path too long", -1;
    for (const char *p = path; p < path_end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c == 0x7f)
            return *why = "the path may not contain spaces or control characters", -1;
    }
    if (path == path_end || path[0] != '/')
        t->path[0] = '/'; /* "http://h:1" and "http://h:1?x" ask for "/" */
    memcpy(t->path + strlen(t->path), path, (size_t)(path_end - path));
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for `events` on fd until the deadline. Returns 1 when ready, 0 on
 * timeout, or a negative errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        struct pollfd pfd = { .fd = fd, .events = events };
        int n;

        if (left <= 0)
            return 0;
        n = poll(&pfd, 1, (int)left);
        if (n > 0)
            return 1; /* errors and hang-ups show in the next call on fd */
        if (n == 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

/* A connected non-blocking socket, or a negative errno (-ETIMEDOUT at the
 * deadline). */
static int connect_one(const struct sockaddr_storage *sa, socklen_t len, int64_t deadline)
{
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int err = 0, rc;
    socklen_t errlen = sizeof(err);

    if (fd < 0)
        return -errno;
    if (connect(fd, (const struct sockaddr *)sa, len) == 0)
        return fd;
    if (errno != EINPROGRESS && errno != EINTR) { /* an interrupted connect goes on */
        err = -errno;
        close(fd);
        return err;
    }
    rc = wait_fd(fd, POLLOUT, deadline);
    if (rc <= 0) {
        close(fd);
        return rc == 0 ? -ETIMEDOUT : rc;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) < 0)
        err = errno;
    if (err != 0) {
        close(fd);
        return -err;
    }
    return fd;
}

/* The outcome of one probe, before it becomes an exit code and a message. */
struct probe_result {
    int status;       /* the HTTP status, or 0 when there is none */
    const char *step; /* "connect", "send", "recv": what failed, or NULL */
    int err;          /* its errno; ETIMEDOUT for the deadline */
    const char *why;  /* or a protocol problem */
    char line[64];    /* a printable excerpt of an invalid status line */
};

/* "HTTP/1.1 200 OK" -> 200; -1 if the line is not a status line. */
static int parse_status_line(const char *line, size_t len)
{
    size_t i = 5;

    if (len < 10 || strncmp(line, "HTTP/", 5) != 0)
        return -1;
    while (i < len && line[i] != ' ') {
        if (!((line[i] >= '0' && line[i] <= '9') || line[i] == '.'))
            return -1;
        i++;
    }
    if (i == 5 || i + 4 > len || line[i] != ' ')
        return -1;
    i++;
    for (size_t k = 0; k < 3; k++)
        if (line[i + k] < '0' || line[i + k] > '9')
            return -1;
    if (i + 3 < len && line[i + 3] != ' ')
        return -1;
    return (line[i] - '0') * 100 + (line[i + 1] - '0') * 10 + (line[i + 2] - '0');
}

static void keep_excerpt(struct probe_result *r, const char *s, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; i < len && j + 1 < sizeof(r->line); i++) {
        unsigned char c = (unsigned char)s[i];
        r->line[j++] = (c >= ' ' && c < 0x7f) ? (char)c : '?';
    }
    r->line[j] = '\0';
}

/* Sends the request on a connected socket and reads the status line. */
static void exchange(int fd, const struct probe_target *t, int64_t deadline, struct probe_result *r)
{
    char req[PROBE_PATH_MAX + PROBE_HOST_MAX + 64];
    char buf[PROBE_STATUS_MAX];
    size_t len = 0, sent = 0;
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                     t->path, t->authority);

    while (sent < (size_t)n) {
        ssize_t w = send(fd, req + sent, (size_t)n - sent, MSG_NOSIGNAL);
        if (w >= 0) {
            sent += (size_t)w;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            r->step = "send", r->err = errno;
            return;
        }
        int rc = wait_fd(fd, POLLOUT, deadline);
        if (rc <= 0) {
            r->step = "send", r->err = rc == 0 ? ETIMEDOUT : -rc;
            return;
        }
    }

    for (;;) {
        char *nl = memchr(buf, '\n', len);
        if (nl != NULL) {
            size_t line_len = (size_t)(nl - buf);
            if (line_len > 0 && buf[line_len - 1] == '\r')
                line_len--;
            r->status = parse_status_line(buf, line_len);
            if (r->status < 0) {
                r->status = 0;
                r->why = "invalid status line";
                keep_excerpt(r, buf, line_len);
            }
            return;
        }
        if (len == sizeof(buf)) {
            r->why = "status line too long";
            return;
        }
        ssize_t got = recv(fd, buf + len, sizeof(buf) - len, 0);
        if (got > 0) {
            len += (size_t)got;
            continue;
        }
        if (got == 0) {
            r->why = "connection closed before the status line";
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            r->step = "recv", r->err = errno;
            return;
        }
        int rc = wait_fd(fd, POLLIN, deadline);
        if (rc <= 0) {
            r->step = "recv", r->err = rc == 0 ? ETIMEDOUT : -rc;
            return;
        }
    }
}

static void run_probe(const struct probe_target *t, int timeout_ms, struct probe_result *r)
{
    int64_t deadline = now_ms() + timeout_ms;
    int fd = -ECONNREFUSED;

    memset(r, 0, sizeof(*r));
    for (size_t i = 0; i < t->n_addrs; i++) {
        fd = connect_one(&t->addrs[i], t->addrlens[i], deadline);
        if (fd >= 0 || fd == -ETIMEDOUT)
            break;
    }
    if (fd < 0) {
        r->step = "connect", r->err = -fd;
        return;
    }
    exchange(fd, t, deadline, r);
    close(fd);
}

/* Parses --timeout's value: 1..PROBE_TIMEOUT_MAX milliseconds, or -1. */
static int parse_timeout(const char *s)
{
    uint64_t v;
    size_t len = strlen(s);
    return len <= 7 && num_parse(s, len, PROBE_TIMEOUT_MAX, &v) == 0 && v >= 1 ? (int)v : -1;
}

int probe_main(int argc, char **argv)
{
    const char *url = NULL, *timeout_s = NULL, *why = NULL;
    int timeout_ms = PROBE_DEFAULT_TIMEOUT_MS, options_done = 0;
    struct probe_target target;
    struct probe_result res;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!options_done && a[0] == '-' && a[1] != '\0') {
            if (strcmp(a, "--") == 0) {
                options_done = 1;
            } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
                fputs(probe_usage, stdout);
                return EXIT_CLEAN;
            } else if (strcmp(a, "--timeout") == 0) {
                if (i + 1 >= argc)
                    return probe_usage_error("--timeout: missing argument");
                timeout_s = argv[++i];
            } else if (strncmp(a, "--timeout=", 10) == 0) {
                timeout_s = a + 10;
            } else {
                return probe_usage_error("%s: unknown option", a);
            }
            if (timeout_s != NULL && (timeout_ms = parse_timeout(timeout_s)) < 0)
                return probe_usage_error("--timeout: expected milliseconds from 1 to %d, "
                                         "got \"%s\"",
                                         PROBE_TIMEOUT_MAX, timeout_s);
            continue;
        }
        if (url != NULL)
            return probe_usage_error("%s: unexpected argument", a);
        url = a;
    }
    if (url == NULL)
        return probe_usage_error("missing URL");
    if (probe_parse_url(url, &target, &why) < 0)
        return probe_usage_error("invalid URL \"%s\": %s", url, why);

    run_probe(&target, timeout_ms, &res);
    if (res.status >= 200 && res.status <= 299)
        return EXIT_CLEAN;
    if (res.status > 0)
        fprintf(stderr, "probe: HTTP %d\n", res.status);
    else if (res.err == ETIMEDOUT && res.step != NULL && strcmp(res.step, "recv") == 0)
        fprintf(stderr, "probe: %s: no status line within %d ms\n", url, timeout_ms);
    else if (res.err == ETIMEDOUT && res.step != NULL)
        fprintf(stderr, "probe: %s: %s: timed out after %d ms\n", url, res.step, timeout_ms);
    else if (res.step != NULL)
        fprintf(stderr, "probe: %s: %s: %s\n", url, res.step, strerror(res.err));
    else if (res.line[0] != '\0')
        fprintf(stderr, "probe: %s: %s \"%s\"\n", url, res.why, res.line);
    else
        fprintf(stderr, "probe: %s: %s\n", url, res.why);
    return EXIT_RUNTIME;
}
