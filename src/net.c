/* Socket helpers: listening sockets, upstream sockets, socket options. */
#include "lifeline/net.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "lifeline/addr.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

int net_resolve_listen(const char *host, unsigned short port, struct sockaddr_storage *out,
                       const char **why)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC,
                              .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_ADDRCONFIG };
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0) {
        *why = rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc);
        return -ENOENT;
    }
    memcpy(out, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (out->ss_family == AF_INET)
        ((struct sockaddr_in *)out)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)out)->sin6_port = htons(port);
    return 0;
}

static int tcp_socket(int family)
{
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    return fd < 0 ? -errno : fd;
}

static int fail_close(int fd)
{
    int err = -errno;
    close(fd);
    return err;
}

/* IPv6 sockets take IPv6 only unless dual_stack: set explicitly, since the
 * kernel's default (net.ipv6.bindv6only) varies between hosts. The probe
 * and the listener set it alike, so the probe fails exactly when the
 * listener would. */
static int set_v6only(int fd, const struct sockaddr *sa, int dual_stack)
{
    int v6only = !dual_stack;
    if (sa->sa_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only)) < 0)
        return -errno;
    return 0;
}

int net_probe_bind(const struct sockaddr *sa, int dual_stack)
{
    int one = 1;
    int fd = tcp_socket(sa->sa_family);
    if (fd < 0)
        return fd;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        set_v6only(fd, sa, dual_stack) < 0 || bind(fd, sa, addr_len(sa)) < 0)
        return fail_close(fd);
    close(fd);
    return 0;
}

int net_listen_socket(const struct sockaddr *sa, int dual_stack, int backlog)
{
    int one = 1;
    int fd = tcp_socket(sa->sa_family);
    if (fd < 0)
        return fd;
    /* SO_REUSEADDR: restart while old connections sit in TIME_WAIT.
     * SO_REUSEPORT: one listening socket per worker, balanced by the kernel. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        set_v6only(fd, sa, dual_stack) < 0)
        return fail_close(fd);
    if (bind(fd, sa, addr_len(sa)) < 0 || listen(fd, backlog) < 0)
        return fail_close(fd);
    return fd;
}

/* One socket as net_upstream_socket() makes it; with port_at_bind the
 * kernel picks the port at bind() instead of at connect(). */
static int upstream_socket_once(int family, const struct upstream_bind *b, int port_at_bind)
{
    int one = 1;
    int fd = tcp_socket(family);
    if (fd < 0)
        return fd;
    if (b->mark != 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &b->mark, sizeof(b->mark)) < 0)
        return fail_close(fd);
    if (b->source == NULL)
        return fd;
    if (b->source->sa_family != family) {
        close(fd);
        return -EAFNOSUPPORT;
    }
    if (b->transparent) {
        int rc = family == AF_INET6
                     ? setsockopt(fd, IPPROTO_IPV6, IPV6_TRANSPARENT, &one, sizeof(one))
                     : setsockopt(fd, IPPROTO_IP, IP_TRANSPARENT, &one, sizeof(one));
        if (rc < 0)
            return fail_close(fd);
    }
    /* Otherwise the port is chosen at connect() time, per destination, so
     * that ephemeral ports are not used up by bind(). */
    if (!port_at_bind)
        (void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    if (bind(fd, b->source, addr_len(b->source)) < 0)
        return fail_close(fd);
    return fd;
}

int net_upstream_socket(int family, const struct upstream_bind *b)
{
    if (b->avoid_port == 0)
        return upstream_socket_once(family, b, 0);
    /* The port is picked at bind() so that it can be checked before any
     * packet leaves: should the kernel pick the client's own port, a second
     * socket, bound while the first still holds that port, gets another. */
    int fd = upstream_socket_once(family, b, 1);
    if (fd < 0 || net_local_port(fd) != b->avoid_port)
        return fd;
    int other = upstream_socket_once(family, b, 1);
    close(fd);
    return other;
}

void net_set_nodelay(int fd)
{
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void net_drain_input(int fd, char *buf, size_t len, size_t max)
{
    for (size_t got = 0; got < max;) {
        ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
        if (n <= 0)
            return;
        got += (size_t)n;
    }
}

int net_was_reset(int fd)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return 0;
    return err != 0;
}

unsigned short net_local_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return 0;
    return addr_port((struct sockaddr *)&ss);
}
