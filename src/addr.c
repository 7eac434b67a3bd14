/* Address parsing and formatting: "host:port" strings, IP literals, sockaddrs. */
#include "lifeline/addr.h"
#include "lifeline/num.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#define HOSTNAME_MAX 253

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int is_alnum(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Ports are written as plain decimal digits; no sign, no spaces. */
static int parse_port(const char *s, uint16_t *out)
{
    uint64_t v;
    if (num_parse(s, strlen(s), 65535, &v) < 0 || v == 0)
        return -EINVAL;
    *out = (uint16_t)v;
    return 0;
}

/* A name that could be resolved: the usual host name characters plus '_'
 * (service records and container names use it), no empty label except a
 * trailing dot, and not something that only looks like a mistyped IPv4
 * address ("10.0.0.256", "10.1"), which the resolver would read in
 * surprising ways. */
static const char *check_hostname(const char *h, size_t len)
{
    if (len == 0)
        return "empty host";
    if (len > HOSTNAME_MAX)
        return "host name too long";
    size_t label = 0;
    size_t last_label_start = 0;
    for (size_t i = 0; i < len; i++) {
        char c = h[i];
        if (c == '.') {
            if (label == 0)
                return "empty label in host name";
            label = 0;
            if (i + 1 < len)
                last_label_start = i + 1;
            continue;
        }
        if (!is_alnum(c) && c != '-' && c != '_')
            return "invalid character in host name";
        label++;
    }
    size_t end = h[len - 1] == '.' ? len - 1 : len;
    int numeric_tld = 1;
    for (size_t i = last_label_start; i < end; i++)
        if (!is_digit(h[i]))
            numeric_tld = 0;
    if (numeric_tld)
        return "bad IPv4 address";
    return NULL;
}

static int fail(const char **why, const char *reason)
{
    if (why != NULL)
        *why = reason;
    return -EINVAL;
}

int addr_parse_hostport(const char *s, struct hostport *out, const char **why)
{
    struct hostport hp;
    memset(&hp, 0, sizeof(hp));
    if (s == NULL || *s == '\0')
        return fail(why, "empty address");
    for (const char *p = s; *p; p++)
        if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\v' || *p == '\f')
            return fail(why, "contains whitespace");

    const char *host;
    size_t host_len;
    const char *port;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL)
            return fail(why, "unbalanced brackets");
        host = s + 1;
        host_len = (size_t)(close - host);
        if (host_len == 0)
            return fail(why, "empty host");
        if (host_len >= INET6_ADDRSTRLEN)
            return fail(why, "bad IPv6 address");
        memcpy(hp.host, host, host_len);
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&hp.sa;
        if (inet_pton(AF_INET6, hp.host, &sin6->sin6_addr) != 1)
            return fail(why, "bad IPv6 address");
        sin6->sin6_family = AF_INET6;
        hp.numeric = 1;
        if (close[1] != ':')
            return fail(why, close[1] == '\0' ? "missing port" : "unexpected text after ']'");
        port = close + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (colon == NULL)
            return fail(why, "missing port");
        host = s;
        host_len = (size_t)(colon - s);
        port = colon + 1;
        if (memchr(host, '[', host_len) != NULL || memchr(host, ']', host_len) != NULL)
            return fail(why, "unbalanced brackets");
        if (memchr(host, ':', host_len) != NULL)
            return fail(why, "IPv6 address needs brackets");
        if (host_len == 0)
            return fail(why, "empty host");
        if (host_len >= sizeof(hp.host))
            return fail(why, "host name too long");
        memcpy(hp.host, host, host_len);
        struct sockaddr_in *sin = (struct sockaddr_in *)&hp.sa;
        if (inet_pton(AF_INET, hp.host, &sin->sin_addr) == 1) {
            sin->sin_family = AF_INET;
            hp.numeric = 1;
        } else {
            const char *bad = check_hostname(host, host_len);
            if (bad != NULL)
                return fail(why, bad);
        }
    }

    if (parse_port(port, &hp.port) < 0)
        return fail(why, *port == '\0' ? "missing port" : "port must be 1..65535");
    if (hp.sa.ss_family == AF_INET)
        ((struct sockaddr_in *)&hp.sa)->sin_port = htons(hp.port);
    else if (hp.sa.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&hp.sa)->sin6_port = htons(hp.port);
    *out = hp;
    return 0;
}

int addr_parse_ip(const char *s, struct sockaddr_storage *out)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (s == NULL)
        return -EINVAL;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, s, &sin->sin_addr) == 1)
        sin->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, s, &sin6->sin6_addr) == 1)
        sin6->sin6_family = AF_INET6;
    else
        return -EINVAL;
    *out = ss;
    return 0;
}

/* The sockaddr is copied out rather than cast: the caller's pointer may be
 * less aligned than sockaddr_in6 requires. */
static void copy_in(const struct sockaddr *sa, struct sockaddr_in *out)
{
    memcpy(out, sa, sizeof(*out));
}

static void copy_in6(const struct sockaddr *sa, struct sockaddr_in6 *out)
{
    memcpy(out, sa, sizeof(*out));
}

int addr_is_any(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in sin;
        copy_in(sa, &sin);
        return sin.sin_addr.s_addr == htonl(INADDR_ANY);
    }
    if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        copy_in6(sa, &sin6);
        return IN6_IS_ADDR_UNSPECIFIED(&sin6.sin6_addr);
    }
    return 0;
}

int addr_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in sin;
        copy_in(sa, &sin);
        return (ntohl(sin.sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        copy_in6(sa, &sin6);
        return IN6_IS_ADDR_LOOPBACK(&sin6.sin6_addr);
    }
    return 0;
}

int addr_equal(const struct sockaddr *a, const struct sockaddr *b)
{
    if (a->sa_family != b->sa_family)
        return 0;
    if (a->sa_family == AF_INET) {
        struct sockaddr_in x, y;
        copy_in(a, &x);
        copy_in(b, &y);
        return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
    }
    if (a->sa_family == AF_INET6) {
        struct sockaddr_in6 x, y;
        copy_in6(a, &x);
        copy_in6(b, &y);
        return x.sin6_port == y.sin6_port && x.sin6_scope_id == y.sin6_scope_id &&
               memcmp(&x.sin6_addr, &y.sin6_addr, sizeof(x.sin6_addr)) == 0;
    }
    return 0;
}

static const uint8_t v4_mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

/* Zeroes every bit of `a` (len bytes) past the first `prefix`. */
static void mask_host_bits(uint8_t *a, size_t len, unsigned prefix)
{
    for (size_t i = 0; i < len; i++) {
        unsigned first = (unsigned)i * 8;
        if (prefix >= first + 8)
            continue;
        a[i] = prefix <= first ? 0 : (uint8_t)(a[i] & (0xFFu << (8 - (prefix - first))));
    }
}

int addr_parse_cidr(const char *s, struct cidr *out)
{
    if (s == NULL)
        return -EINVAL;
    const char *slash = strchr(s, '/');
    size_t text_len = slash != NULL ? (size_t)(slash - s) : strlen(s);
    char text[INET6_ADDRSTRLEN];
    if (text_len == 0 || text_len >= sizeof(text))
        return -EINVAL;
    memcpy(text, s, text_len);
    text[text_len] = '\0';

    struct cidr c;
    memset(&c, 0, sizeof(c));
    unsigned max;
    if (inet_pton(AF_INET, text, c.addr) == 1) {
        c.family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, text, c.addr) == 1) {
        c.family = AF_INET6;
        max = 128;
    } else {
        return -EINVAL;
    }

    unsigned prefix = max;
    if (slash != NULL) {
        uint64_t v;
        if (num_parse(slash + 1, strlen(slash + 1), max, &v) < 0)
            return -EINVAL;
        prefix = (unsigned)v;
    }

    /* A client is matched by the address it maps (see addr_cidr_match()), so
     * a mapped block must be an IPv4 block to match anything. */
    if (c.family == AF_INET6 && prefix >= 96 &&
        memcmp(c.addr, v4_mapped_prefix, sizeof(v4_mapped_prefix)) == 0) {
        memmove(c.addr, c.addr + 12, 4);
        memset(c.addr + 4, 0, 12);
        c.family = AF_INET;
        prefix -= 96;
    }
    mask_host_bits(c.addr, c.family == AF_INET ? 4 : 16, prefix);
    c.prefix = prefix;
    *out = c;
    return 0;
}

int addr_cidr_match(const struct cidr *c, const struct sockaddr *sa)
{
    struct addr_key k;
    addr_key_of(&k, sa, 0);
    const uint8_t *a = k.addr;
    int family = k.family;
    if (family != c->family)
        return 0;
    size_t whole = c->prefix / 8;
    unsigned rest = c->prefix % 8;
    if (memcmp(a, c->addr, whole) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xFFu << (8 - rest));
    return (a[whole] & mask) == c->addr[whole];
}

char *addr_format_hostport(const struct hostport *hp, char *buf, size_t len)
{
    snprintf(buf, len, strchr(hp->host, ':') != NULL ? "[%s]:%u" : "%s:%u", hp->host,
             (unsigned)hp->port);
    return buf;
}

/* Appends the decimal digits of v at p; returns the end. */
static char *put_decimal(char *p, unsigned v)
{
    char digits[10];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        *p++ = digits[--n];
    return p;
}

char *addr_format(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];
    if (len == 0)
        return buf;
    if (sa->sa_family == AF_INET) {
        /* By hand, not inet_ntop() and snprintf(): every closed session's
         * log line formats one, and glibc formats IPv4 with sprintf. */
        struct sockaddr_in sin;
        copy_in(sa, &sin);
        const unsigned char *b = (const unsigned char *)&sin.sin_addr;
        char text[sizeof("255.255.255.255:65535")];
        char *p = text;
        for (int i = 0; i < 4; i++) {
            p = put_decimal(p, b[i]);
            *p++ = i < 3 ? '.' : ':';
        }
        p = put_decimal(p, ntohs(sin.sin_port));
        size_t n = (size_t)(p - text) < len - 1 ? (size_t)(p - text) : len - 1;
        memcpy(buf, text, n);
        buf[n] = '\0';
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        copy_in6(sa, &sin6);
        inet_ntop(AF_INET6, &sin6.sin6_addr, ip, sizeof(ip));
        /* A link-local peer is ambiguous without its interface; the numeric
         * zone id keeps it short and needs no lookup. */
        if (sin6.sin6_scope_id != 0)
            snprintf(buf, len, "[%s%%%u]:%u", ip, (unsigned)sin6.sin6_scope_id,
                     (unsigned)ntohs(sin6.sin6_port));
        else
            snprintf(buf, len, "[%s]:%u", ip, (unsigned)ntohs(sin6.sin6_port));
    } else if (sa->sa_family == AF_UNSPEC) {
        snprintf(buf, len, "(unset)");
    } else {
        snprintf(buf, len, "(family %d)", (int)sa->sa_family);
    }
    return buf;
}

uint16_t addr_port(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in sin;
        copy_in(sa, &sin);
        return ntohs(sin.sin_port);
    }
    if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        copy_in6(sa, &sin6);
        return ntohs(sin6.sin6_port);
    }
    return 0;
}

socklen_t addr_len(const struct sockaddr *sa)
{
    switch (sa->sa_family) {
    case AF_INET:
        return sizeof(struct sockaddr_in);
    case AF_INET6:
        return sizeof(struct sockaddr_in6);
    case AF_UNIX:
        return sizeof(struct sockaddr_un);
    default:
        return 0;
    }
}

void addr_key_of(struct addr_key *k, const struct sockaddr *sa, int with_port)
{
    memset(k, 0, sizeof(*k));
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in sin;
        copy_in(sa, &sin);
        k->family = AF_INET;
        memcpy(k->addr, &sin.sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        copy_in6(sa, &sin6);
        k->family = AF_INET6;
        memcpy(k->addr, &sin6.sin6_addr, 16);
        if (memcmp(k->addr, v4_mapped_prefix, sizeof(v4_mapped_prefix)) == 0) {
            k->family = AF_INET;
            memmove(k->addr, k->addr + 12, 4);
            memset(k->addr + 4, 0, 12);
        }
    } else {
        k->family = AF_UNSPEC;
        return;
    }
    k->port = with_port ? addr_port(sa) : 0;
}

int addr_is_v4_mapped(const struct sockaddr *sa)
{
    if (sa->sa_family != AF_INET6)
        return 0;
    struct sockaddr_in6 sin6;
    copy_in6(sa, &sin6);
    return memcmp(&sin6.sin6_addr, v4_mapped_prefix, sizeof(v4_mapped_prefix)) == 0;
}

void addr_host_of(const struct sockaddr *sa, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof(*out));
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)out;
        memcpy(in, sa, sizeof(*in));
        in->sin_port = 0;
    } else if (addr_is_v4_mapped(sa)) {
        struct sockaddr_in6 sin6;
        copy_in6(sa, &sin6);
        struct sockaddr_in *in = (struct sockaddr_in *)out;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, (const unsigned char *)&sin6.sin6_addr + 12, 4);
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
        copy_in6(sa, in6);
        in6->sin6_port = 0;
        in6->sin6_flowinfo = 0;
    } else {
        out->ss_family = AF_UNSPEC;
    }
}

int addr_listen_overlap(const struct sockaddr *a, int a_dual_stack, const struct sockaddr *b,
                        int b_dual_stack)
{
    if (addr_port(a) != addr_port(b))
        return 0;
    if (a->sa_family == b->sa_family) {
        return addr_is_any(a) || addr_is_any(b) || addr_equal(a, b);
    }
    /* One IPv4, one IPv6: only a dual-stack IPv6 wildcard takes IPv4's. */
    if (a->sa_family == AF_INET6)
        return a_dual_stack && addr_is_any(a);
    return b_dual_stack && addr_is_any(b);
}
