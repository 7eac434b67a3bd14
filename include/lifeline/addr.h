/* Address parsing and formatting: "host:port" strings, IP literals, sockaddrs. */
#ifndef LIFELINE_ADDR_H
#define LIFELINE_ADDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define ADDR_HOST_MAX 256 /* a DNS name is at most 253 characters */
#define ADDR_STR_MAX  (ADDR_HOST_MAX + 8) /* "[host]:65535" */

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
