/* libFuzzer target: addr.c parsing ("host:port", IP literals, CIDRs), CIDR matching, listen overlap, formatting. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "lifeline/addr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input is split on '\n' so one input drives several calls and the
 * corpus stays readable; a field may not hold a '\n', but the whitespace
 * checks still see ' ', '\t', '\r', '\v' and '\f'. */
#define SEP '\n'
#define MAX_FIELDS 16
/* Longer fields are cut: no address comes near, and a host name past
 * 253 characters is already the "too long" case. */
#define FIELD_MAX 1024

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

static const uint8_t v4_mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

/* What the fields parsed to, for the checks across fields. */
struct seen {
    struct cidr cidrs[MAX_FIELDS];
    size_t n_cidrs;
    struct sockaddr_storage addrs[MAX_FIELDS];
    size_t n_addrs;
};

/* The family and bytes an address is matched as: an IPv4-mapped IPv6
 * address counts as the IPv4 address it maps (addr.h). */
static int effective(const struct sockaddr_storage *ss, uint8_t out[16])
{
    memset(out, 0, 16);
    if (ss->ss_family == AF_INET) {
        struct sockaddr_in sin;
        memcpy(&sin, ss, sizeof(sin));
        memcpy(out, &sin.sin_addr, 4);
        return AF_INET;
    }
    struct sockaddr_in6 sin6;
    memcpy(&sin6, ss, sizeof(sin6));
    if (memcmp(&sin6.sin6_addr, v4_mapped, sizeof(v4_mapped)) == 0) {
        memcpy(out, (const uint8_t *)&sin6.sin6_addr + 12, 4);
        return AF_INET;
    }
    memcpy(out, &sin6.sin6_addr, 16);
    return AF_INET6;
}

/* Bit i (from the most significant bit of byte 0). */
static int bit(const uint8_t *a, unsigned i) { return (a[i / 8] >> (7 - i % 8)) & 1; }

/* addr_cidr_match() written the slow, obvious way, to compare against. */
static int reference_match(const struct cidr *c, const struct sockaddr_storage *ss)
{
    uint8_t a[16];
    if (effective(ss, a) != c->family)
        return 0;
    for (unsigned i = 0; i < c->prefix; i++)
        if (bit(a, i) != bit(c->addr, i))
            return 0;
    return 1;
}

static void make_sockaddr(struct sockaddr_storage *ss, int family, const uint8_t *addr,
                          uint16_t port)
{
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
        memcpy(&sin.sin_addr, addr, 4);
        memcpy(ss, &sin, sizeof(sin));
    } else {
        struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_port = htons(port) };
        memcpy(&sin6.sin6_addr, addr, 16);
        memcpy(ss, &sin6, sizeof(sin6));
    }
}

/* addr_format() must leave a terminated string within ADDR_STR_MAX; the
 * buffer is sized exactly so a write past it is an ASan report. */
static void check_format(const struct sockaddr_storage *ss, size_t len)
{
    char *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return;
    buf[0] = 'x';
    CHECK(addr_format((const struct sockaddr *)ss, buf, len) == buf);
    if (len == 0)
        CHECK(buf[0] == 'x'); /* nothing written */
    else
        CHECK(memchr(buf, '\0', len) != NULL);
    free(buf);
}

static void check_hostport(const char *s, struct seen *seen)
{
    struct hostport hp, again;
    const char *why = NULL;
    int rc = addr_parse_hostport(s, &hp, &why);
    if (rc != 0) {
        CHECK(rc == -EINVAL);
        CHECK(why != NULL && why[0] != '\0');
        return;
    }
    CHECK(why == NULL); /* only set on failure */
    CHECK(memchr(hp.host, '\0', sizeof(hp.host)) != NULL && hp.host[0] != '\0');
    CHECK(hp.port != 0);
    if (hp.numeric) {
        CHECK(hp.sa.ss_family == AF_INET || hp.sa.ss_family == AF_INET6);
        CHECK(addr_port((const struct sockaddr *)&hp.sa) == hp.port);
    } else {
        CHECK(hp.sa.ss_family == AF_UNSPEC);
    }

    /* Written back as in a config, it reads the same. */
    char buf[ADDR_STR_MAX];
    addr_format_hostport(&hp, buf, sizeof(buf));
    CHECK(memchr(buf, '\0', sizeof(buf)) != NULL);
    CHECK(addr_parse_hostport(buf, &again, NULL) == 0);
    CHECK(strcmp(again.host, hp.host) == 0);
    CHECK(again.port == hp.port && again.numeric == hp.numeric);

    if (hp.numeric) {
        CHECK(addr_equal((const struct sockaddr *)&again.sa, (const struct sockaddr *)&hp.sa));
        /* addr_format() gives the canonical form, which parses to the same sockaddr. */
        addr_format((const struct sockaddr *)&hp.sa, buf, sizeof(buf));
        CHECK(memchr(buf, '\0', sizeof(buf)) != NULL);
        CHECK(addr_parse_hostport(buf, &again, NULL) == 0);
        CHECK(again.numeric);
        CHECK(addr_equal((const struct sockaddr *)&again.sa, (const struct sockaddr *)&hp.sa));
        (void)addr_is_any((const struct sockaddr *)&hp.sa);
        (void)addr_is_loopback((const struct sockaddr *)&hp.sa);
        CHECK(addr_len((const struct sockaddr *)&hp.sa) > 0);
        if (seen->n_addrs < MAX_FIELDS)
            seen->addrs[seen->n_addrs++] = hp.sa;
    }
}

static void check_ip(const char *s, struct seen *seen)
{
    struct sockaddr_storage ss;
    int rc = addr_parse_ip(s, &ss);
    struct cidr bare;
    int bare_rc = addr_parse_cidr(s, &bare);
    /* Without a '/', a CIDR is a bare address: the same strings parse. */
    if (strchr(s, '/') == NULL)
        CHECK((rc == 0) == (bare_rc == 0));
    if (rc != 0) {
        CHECK(rc == -EINVAL);
        return;
    }
    CHECK(ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
    CHECK(addr_port((const struct sockaddr *)&ss) == 0);
    check_format(&ss, ADDR_STR_MAX);

    /* It is in its own /32 or /128, written out or built, and in the /0 of
     * the family it is matched as (IPv4 for an IPv4-mapped address), and in
     * no block of the other family. */
    uint8_t a[16];
    int fam = effective(&ss, a);
    char text[FIELD_MAX + 8];
    snprintf(text, sizeof(text), "%s/%u", s, ss.ss_family == AF_INET ? 32u : 128u);
    struct cidr c;
    CHECK(addr_parse_cidr(text, &c) == 0);
    CHECK(c.family == fam && c.prefix == (fam == AF_INET ? 32u : 128u));
    CHECK(addr_cidr_match(&c, (const struct sockaddr *)&ss));
    CHECK(bare_rc == 0 && memcmp(&bare, &c, sizeof(c)) == 0);

    struct cidr own = { .family = fam, .prefix = fam == AF_INET ? 32 : 128 };
    memcpy(own.addr, a, 16);
    CHECK(addr_cidr_match(&own, (const struct sockaddr *)&ss));
    struct cidr all = { .family = fam, .prefix = 0 };
    CHECK(addr_cidr_match(&all, (const struct sockaddr *)&ss));
    struct cidr other = { .family = fam == AF_INET ? AF_INET6 : AF_INET, .prefix = 0 };
    CHECK(!addr_cidr_match(&other, (const struct sockaddr *)&ss));

    if (seen->n_addrs < MAX_FIELDS)
        seen->addrs[seen->n_addrs++] = ss;
}

static void check_cidr(const char *s, struct seen *seen)
{
    struct cidr c, untouched;
    memset(&c, 0xA5, sizeof(c));
    memcpy(&untouched, &c, sizeof(c));
    int rc = addr_parse_cidr(s, &c);
    if (rc != 0) {
        CHECK(rc == -EINVAL);
        CHECK(memcmp(&c, &untouched, sizeof(c)) == 0); /* left alone */
        return;
    }
    unsigned max = c.family == AF_INET ? 32 : 128;
    CHECK(c.family == AF_INET || c.family == AF_INET6);
    CHECK(c.prefix <= max);
    /* No host bits: every bit past the prefix is zero, in all 16 bytes. */
    for (unsigned i = c.prefix; i < 128; i++)
        CHECK(bit(c.addr, i) == 0);

    /* The block holds its first address (never IPv4-mapped: a mapped block
     * of /96 or more is stored as IPv4). Its last address, and that with the
     * last prefix bit flipped, match as the reference says: the last one of
     * "::/80" is "::ffff:255.255.255.255", which is matched as IPv4. */
    uint8_t a[16];
    struct sockaddr_storage ss;
    memcpy(a, c.addr, 16);
    make_sockaddr(&ss, c.family, a, 1);
    CHECK(addr_cidr_match(&c, (const struct sockaddr *)&ss));
    check_format(&ss, ADDR_STR_MAX);
    for (unsigned i = c.prefix; i < max; i++)
        a[i / 8] |= (uint8_t)(0x80u >> (i % 8));
    make_sockaddr(&ss, c.family, a, 1);
    CHECK(addr_cidr_match(&c, (const struct sockaddr *)&ss) == reference_match(&c, &ss));
    if (c.family == AF_INET)
        CHECK(addr_cidr_match(&c, (const struct sockaddr *)&ss));
    if (c.prefix > 0) {
        unsigned i = c.prefix - 1;
        a[i / 8] ^= (uint8_t)(0x80u >> (i % 8));
        make_sockaddr(&ss, c.family, a, 1);
        CHECK(!addr_cidr_match(&c, (const struct sockaddr *)&ss));
    }

    /* Written back in canonical form, it parses to the same block. */
    char ip[INET6_ADDRSTRLEN], text[INET6_ADDRSTRLEN + 8];
    CHECK(inet_ntop(c.family, c.addr, ip, sizeof(ip)) != NULL);
    snprintf(text, sizeof(text), "%s/%u", ip, c.prefix);
    struct cidr again;
    CHECK(addr_parse_cidr(text, &again) == 0);
    CHECK(memcmp(&again, &c, sizeof(c)) == 0);

    if (seen->n_cidrs < MAX_FIELDS)
        seen->cidrs[seen->n_cidrs++] = c;
}

/* The field's bytes as a raw sockaddr of a chosen family, formatted into a
 * buffer of a chosen size: addr_format() on anything the kernel might hand
 * back, including families it does not know. */
static void check_raw_format(const uint8_t *f, size_t n)
{
    static const int families[] = { AF_INET, AF_INET6, AF_UNSPEC, AF_UNIX, AF_INET6 };
    if (n < 2)
        return;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    size_t body = n - 2 < sizeof(ss) ? n - 2 : sizeof(ss);
    memcpy(&ss, f + 2, body);
    ss.ss_family = (sa_family_t)(f[0] < 250 ? families[f[0] % 5] : f[0]);
    check_format(&ss, (size_t)f[1] % (ADDR_STR_MAX + 1));
    (void)addr_port((const struct sockaddr *)&ss);
    (void)addr_len((const struct sockaddr *)&ss);
    (void)addr_is_any((const struct sockaddr *)&ss);
    (void)addr_is_loopback((const struct sockaddr *)&ss);

    /* Any host of up to ADDR_HOST_MAX - 1 characters fits, "[host]:65535"
     * at worst, uncut. */
    struct hostport hp;
    memset(&hp, 0, sizeof(hp));
    size_t hl = n - 2 < sizeof(hp.host) - 1 ? n - 2 : sizeof(hp.host) - 1;
    memcpy(hp.host, f + 2, hl);
    hp.port = (uint16_t)(f[0] << 8 | f[1]);
    char buf[ADDR_STR_MAX];
    addr_format_hostport(&hp, buf, sizeof(buf));
    char want[ADDR_STR_MAX + 16];
    int wl = snprintf(want, sizeof(want), strchr(hp.host, ':') ? "[%s]:%u" : "%s:%u", hp.host,
                      (unsigned)hp.port);
    CHECK(wl > 0 && (size_t)wl < sizeof(buf) && strcmp(buf, want) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct seen seen = { .n_cidrs = 0 };
    size_t start = 0;
    for (size_t field = 0; field < MAX_FIELDS && start <= size; field++) {
        const uint8_t *f = data + start;
        const uint8_t *sep = memchr(f, SEP, size - start);
        size_t n = sep != NULL ? (size_t)(sep - f) : size - start;
        start += n + 1;

        /* The input is not NUL-terminated: each field goes into an exact-size
         * terminated copy, so reading past the NUL is an ASan report. */
        size_t len = n < FIELD_MAX ? n : FIELD_MAX;
        char *s = malloc(len + 1);
        if (s == NULL)
            return 0;
        memcpy(s, f, len);
        s[len] = '\0';

        check_hostport(s, &seen);
        check_ip(s, &seen);
        check_cidr(s, &seen);
        check_raw_format(f, len);
        free(s);
        if (sep == NULL)
            break;
    }

    /* Every block against every address seen, against the slow reference. */
    for (size_t i = 0; i < seen.n_cidrs; i++)
        for (size_t j = 0; j < seen.n_addrs; j++)
            CHECK(addr_cidr_match(&seen.cidrs[i], (const struct sockaddr *)&seen.addrs[j]) ==
                  reference_match(&seen.cidrs[i], &seen.addrs[j]));

    /* Listen overlap is a relation between two binds: each overlaps itself,
     * and the order of the pair does not matter. dual_stack comes from the
     * indexes so that both values are tried. */
    for (size_t i = 0; i < seen.n_addrs; i++) {
        const struct sockaddr *a = (const struct sockaddr *)&seen.addrs[i];
        uint8_t bytes[16];
        CHECK(addr_is_v4_mapped(a) == (effective(&seen.addrs[i], bytes) != a->sa_family));
        CHECK(addr_listen_overlap(a, (int)(i & 1), a, (int)(i & 1)));
        for (size_t j = 0; j < seen.n_addrs; j++) {
            const struct sockaddr *b = (const struct sockaddr *)&seen.addrs[j];
            int da = (int)(i & 1), db = (int)((j >> 1) & 1);
            CHECK(addr_listen_overlap(a, da, b, db) == addr_listen_overlap(b, db, a, da));
        }
    }
    return 0;
}
