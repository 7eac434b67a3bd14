/* Address parsing and formatting: "host:port" strings, IP literals, sockaddrs. */
#ifndef LIFELINE_ADDR_H
#define LIFELINE_ADDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define ADDR_HOST_MAX 256                /* a DNS name is at most 253 characters */
#define ADDR_STR_MAX (ADDR_HOST_MAX + 8) /* "[host]:65535" */

/* One "host:port" endpoint as written in the config. When the host is an IP
 * literal, `sa` holds it with the port already set and `numeric` is 1; a
 * host name is resolved later, by whoever uses it. */
struct hostport {
    char host[ADDR_HOST_MAX]; /* without brackets: "::1", "10.0.0.1", "db.example" */
    uint16_t port;
    int numeric;
    struct sockaddr_storage sa;
};

/* Parses "1.2.3.4:5", "[::1]:5" or "name.example:5". The port must be 1..65535.
 * Returns 0, or -EINVAL with a short reason in `why` (a static string such as
 * "missing port"). */
int addr_parse_hostport(const char *s, struct hostport *out, const char **why);

/* Parses an IP literal (no port, IPv6 without brackets) into `out` with port 0.
 * Returns 0 or -EINVAL. */
int addr_parse_ip(const char *s, struct sockaddr_storage *out);

/* Is the address the wildcard (0.0.0.0 or ::)? */
int addr_is_any(const struct sockaddr *sa);

/* Same family, address and port (IPv4 or IPv6; anything else is unequal)? */
int addr_equal(const struct sockaddr *a, const struct sockaddr *b);

/* Is it an IPv4-mapped IPv6 address (::ffff:a.b.c.d)? */
int addr_is_v4_mapped(const struct sockaddr *sa);

/* The address of sa with port 0, an IPv4-mapped one as plain IPv4: what a
 * socket binds to for a connection from that host. */
void addr_host_of(const struct sockaddr *sa, struct sockaddr_storage *out);

/* Would listening sockets bound to a and b take the same connections, so
 * that the second bind fails? Same port, and the same address, or a
 * wildcard of the other's family; an IPv6 wildcard with dual_stack (no
 * IPV6_V6ONLY) covers every IPv4 address too. */
int addr_listen_overlap(const struct sockaddr *a, int a_dual_stack, const struct sockaddr *b,
                        int b_dual_stack);

/* Is the address a loopback address (127.0.0.0/8 or ::1)? An IPv4-mapped
 * IPv6 address is not: only the two forms above count. */
int addr_is_loopback(const struct sockaddr *sa);

/* A block of addresses: "10.0.0.0/8", "2001:db8::/32". `addr` holds 4
 * (AF_INET) or 16 (AF_INET6) bytes in network order with every bit past
 * `prefix` zero. */
struct cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned prefix; /* 0..32 or 0..128 */
};

/* Parses "10.0.0.0/8", "2001:db8::/32" or a bare address, which is /32 or
 * /128. Host bits are masked off ("10.1.2.3/8" is 10.0.0.0/8). An IPv4-mapped
 * block ("::ffff:10.0.0.0/104") is stored as the IPv4 block it maps
 * (10.0.0.0/8). The prefix is decimal digits, at most 32 or 128. Returns 0, or
 * -EINVAL and leaves `out` alone. */
int addr_parse_cidr(const char *s, struct cidr *out);

/* Is the AF_INET/AF_INET6 address in the block? An IPv4-mapped IPv6 address
 * (a dual-stack listener's IPv4 client, "::ffff:a.b.c.d") is matched as the
 * IPv4 address it maps, so it matches IPv4 blocks and no IPv6 block. Any
 * other family matches nothing. Returns 1 or 0. */
int addr_cidr_match(const struct cidr *c, const struct sockaddr *sa);

/* A client's address as a key for tables and matching: an IPv4-mapped IPv6
 * address (a dual-stack listener's IPv4 client) is the IPv4 address it
 * maps, everywhere. Every byte is set (padding included), so keys compare
 * and hash as bytes. */
struct addr_key {
    uint8_t family;   /* AF_INET, AF_INET6, or AF_UNSPEC for anything else */
    uint8_t addr[16]; /* 4 or 16 bytes in network order, the rest zero */
    uint16_t port;    /* host order; 0 when made without the port */
};

/* Makes the key of an AF_INET/AF_INET6 address, with its port or without. */
void addr_key_of(struct addr_key *k, const struct sockaddr *sa, int with_port);

/* Formats "1.2.3.4:5" or "[::1]:5" into buf (ADDR_STR_MAX is enough for any
 * sockaddr). Returns buf. */
char *addr_format(const struct sockaddr *sa, char *buf, size_t len);

/* Formats a config endpoint as written: "name.example:5", "1.2.3.4:5",
 * "[::1]:5". Returns buf. */
char *addr_format_hostport(const struct hostport *hp, char *buf, size_t len);

/* Port of an AF_INET/AF_INET6 sockaddr in host order, 0 for anything else. */
uint16_t addr_port(const struct sockaddr *sa);

/* Length to pass to bind()/connect() for this sockaddr. */
socklen_t addr_len(const struct sockaddr *sa);

#endif
