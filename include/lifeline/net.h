/* Socket helpers: listening sockets, upstream sockets, socket options. */
#ifndef LIFELINE_NET_H
#define LIFELINE_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Resolves a listen "host" (IP literal or name) with getaddrinfo(). Blocking:
 * only for the supervisor before any loop runs. Returns 0, or -ENOENT with
 * the resolver's message in `why`. */
int net_resolve_listen(const char *host, unsigned short port, struct sockaddr_storage *out,
                       const char **why);

/* Checks that nobody else listens on the address: a bind without
 * SO_REUSEPORT fails when any socket holds it. IPV6_V6ONLY is set as
 * net_listen_socket() sets it. Returns 0 or -errno. */
int net_probe_bind(const struct sockaddr *sa, int dual_stack);

/* Creates a non-blocking, bound, listening TCP socket with SO_REUSEPORT (one
 * per worker share the port); an IPv6 one takes IPv4 clients too only with
 * dual_stack. Returns the fd or -errno. */
int net_listen_socket(const struct sockaddr *sa, int dual_stack, int backlog);

/* How an upstream socket is set up before connect(). */
struct upstream_bind {
    const struct sockaddr *source; /* NULL: the kernel picks the address */
    int transparent;               /* source may be another host's (IP_TRANSPARENT) */
    uint32_t mark;                 /* SO_MARK; 0: none */
    uint16_t avoid_port;           /* a port the socket must not get (the client's); 0: none */
};

/* Creates a non-blocking TCP socket for an upstream connection of this
 * family, marked and bound as `b` says (an address only: the kernel picks
 * an ephemeral port, never avoid_port). Returns the fd or -errno:
 * -EAFNOSUPPORT for a source of the other family, -EPERM without
 * CAP_NET_ADMIN for a transparent source or a mark. */
int net_upstream_socket(int family, const struct upstream_bind *b);

/* TCP_NODELAY on; errors ignored (a socket that refuses it still relays). */
void net_set_nodelay(int fd);

/* Reads and drops up to `max` bytes the peer sent and nobody will read, in
 * reads of up to `len` into buf, without blocking: close() on a socket with
 * unread input sends a reset instead of a FIN. */
void net_drain_input(int fd, char *buf, size_t len, size_t max);

/* Did the peer reset this connection? After a reset, read() can report a
 * plain EOF while the error is still pending on the socket (SO_ERROR). */
int net_was_reset(int fd);

/* Local port of a connected socket, 0 if unknown. */
unsigned short net_local_port(int fd);

#endif
