/* Unit tests for addr.c: "host:port" parsing, IP literals, CIDR blocks, formatting, ports. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include "lifeline/addr.h"

struct good_case {
    const char *in;
    const char *host;
    uint16_t port;
    int family;            /* AF_UNSPEC for a host name */
    const char *formatted; /* addr_format() of the parsed sockaddr, or NULL */
};

static const struct good_case good[] = {
    { "1.2.3.4:5", "1.2.3.4", 5, AF_INET, "1.2.3.4:5" },
    { "0.0.0.0:5000", "0.0.0.0", 5000, AF_INET, "0.0.0.0:5000" },
    { "255.255.255.255:65535", "255.255.255.255", 65535, AF_INET, "255.255.255.255:65535" },
    { "127.0.0.1:00080", "127.0.0.1", 80, AF_INET, "127.0.0.1:80" },
    { "[::1]:80", "::1", 80, AF_INET6, "[::1]:80" },
    { "[::]:1", "::", 1, AF_INET6, "[::]:1" },
    { "[::0]:1", "::0", 1, AF_INET6, "[::]:1" },
    { "[2001:DB8::a:1]:6000", "2001:DB8::a:1", 6000, AF_INET6, "[2001:db8::a:1]:6000" },
    { "[::ffff:10.0.0.1]:7", "::ffff:10.0.0.1", 7, AF_INET6, "[::ffff:10.0.0.1]:7" },
    { "localhost:80", "localhost", 80, AF_UNSPEC, NULL },
    { "backup.example:6000", "backup.example", 6000, AF_UNSPEC, NULL },
    { "Db-1_a.Example.COM.:1", "Db-1_a.Example.COM.", 1, AF_UNSPEC, NULL },
    { "1host.example:22", "1host.example", 22, AF_UNSPEC, NULL },
    { "10.0.0.1x:22", "10.0.0.1x", 22, AF_UNSPEC, NULL },
};

static void test_good(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        const struct good_case *g = &good[i];
        struct hostport hp;
        const char *why = "untouched";
        memset(&hp, 0xAB, sizeof(hp));
        int rc = addr_parse_hostport(g->in, &hp, &why);
        if (rc != 0)
            fail_msg("%s: rc %d (%s)", g->in, rc, why);
        assert_string_equal(hp.host, g->host);
        assert_int_equal(hp.port, g->port);
        assert_int_equal(hp.numeric, g->family != AF_UNSPEC);
        assert_int_equal(hp.sa.ss_family, g->family);
        assert_string_equal(why, "untouched");
        if (g->family != AF_UNSPEC) {
            char buf[ADDR_STR_MAX];
            assert_int_equal(addr_port((struct sockaddr *)&hp.sa), g->port);
            assert_string_equal(addr_format((struct sockaddr *)&hp.sa, buf, sizeof(buf)),
                                g->formatted);
        }
    }
}

static void test_longest_host_name(void **state)
{
    (void)state;
    char in[300];
    memset(in, 'a', 253);
    for (int i = 63; i < 253; i += 64)
        in[i] = '.';
    strcpy(in + 253, ":9");
    struct hostport hp;
    assert_int_equal(addr_parse_hostport(in, &hp, NULL), 0);
    assert_int_equal(strlen(hp.host), 253);
    assert_int_equal(hp.port, 9);

    memset(in, 'a', 254);
    strcpy(in + 254, ":9");
    const char *why = NULL;
    assert_int_equal(addr_parse_hostport(in, &hp, &why), -EINVAL);
    assert_string_equal(why, "host name too long");

    memset(in, 'a', 290);
    strcpy(in + 290, ":9");
    assert_int_equal(addr_parse_hostport(in, &hp, &why), -EINVAL);
    assert_string_equal(why, "host name too long");
}

struct bad_case {
    const char *in;
    const char *why;
};

static const struct bad_case bad[] = {
    { "", "empty address" },
    { "10.0.0.1", "missing port" },
    { "10.0.0.1:", "missing port" },
    { "localhost", "missing port" },
    { "10.0.0.1:0", "port must be 1..65535" },
    { "10.0.0.1:65536", "port must be 1..65535" },
    { "10.0.0.1:99999999999999999999", "port must be 1..65535" },
    { "10.0.0.1:http", "port must be 1..65535" },
    { "10.0.0.1:80a", "port must be 1..65535" },
    { "10.0.0.1:-1", "port must be 1..65535" },
    { "10.0.0.1:+80", "port must be 1..65535" },
    { ":80", "empty host" },
    { "[]:80", "empty host" },
    { "[::1]", "missing port" },
    { "[::1]:", "missing port" },
    { "[::1]80", "unexpected text after ']'" },
    { "[::1]x:80", "unexpected text after ']'" },
    { "[::1:80", "unbalanced brackets" },
    { "::1]:80", "unbalanced brackets" },
    { "host]:80", "unbalanced brackets" },
    { "a[b:80", "unbalanced brackets" },
    { "::1:80", "IPv6 address needs brackets" },
    { "2001:db8::1:80", "IPv6 address needs brackets" },
    { "[1.2.3.4]:80", "bad IPv6 address" },
    { "[::g]:80", "bad IPv6 address" },
    { "[db.example]:80", "bad IPv6 address" },
    { "[[::1]]:80", "bad IPv6 address" },
    { "[1:2:3:4:5:6:7:8:9:10:11:12:13:14:15]:80", "bad IPv6 address" },
    { " 10.0.0.1:80", "contains whitespace" },
    { "10.0.0.1 :80", "contains whitespace" },
    { "10.0.0.1:80\n", "contains whitespace" },
    { "db example:80", "contains whitespace" },
    { "\t[::1]:80", "contains whitespace" },
    { "bad!host:80", "invalid character in host name" },
    { "host/x:80", "invalid character in host name" },
    { "a..b:80", "empty label in host name" },
    { ".example:80", "empty label in host name" },
    { "10.0.0.256:80", "bad IPv4 address" },
    { "10.1:80", "bad IPv4 address" },
    { "12345:80", "bad IPv4 address" },
    { "example.123.:80", "bad IPv4 address" },
};

static void test_bad(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct hostport hp;
        memset(&hp, 0x5A, sizeof(hp));
        struct hostport before = hp;
        const char *why = NULL;
        int rc = addr_parse_hostport(bad[i].in, &hp, &why);
        if (rc != -EINVAL)
            fail_msg("\"%s\": rc %d, want -EINVAL", bad[i].in, rc);
        if (why == NULL || strcmp(why, bad[i].why) != 0)
            fail_msg("\"%s\": why \"%s\", want \"%s\"", bad[i].in, why ? why : "(null)",
                     bad[i].why);
        /* A failed parse leaves the output alone. */
        assert_memory_equal(&hp, &before, sizeof(hp));
    }
    /* `why` is optional. */
    struct hostport hp;
    assert_int_equal(addr_parse_hostport("nope", &hp, NULL), -EINVAL);
    assert_int_equal(addr_parse_hostport(NULL, &hp, NULL), -EINVAL);
}

static void test_parse_ip(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    char buf[ADDR_STR_MAX];

    assert_int_equal(addr_parse_ip("10.1.2.3", &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(addr_port((struct sockaddr *)&ss), 0);
    assert_string_equal(addr_format((struct sockaddr *)&ss, buf, sizeof(buf)), "10.1.2.3:0");

    assert_int_equal(addr_parse_ip("2001:db8::1", &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_string_equal(addr_format((struct sockaddr *)&ss, buf, sizeof(buf)), "[2001:db8::1]:0");

    assert_int_equal(addr_parse_ip("::", &ss), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_true(addr_is_any((struct sockaddr *)&ss));

    const char *bad_ips[] = { "",         "foo",   "[::1]",     "1.2.3.4:5", " 1.2.3.4",
                              "1.2.3.4 ", "1.2.3", "256.1.1.1", "::1%lo",    "localhost" };
    for (size_t i = 0; i < sizeof(bad_ips) / sizeof(bad_ips[0]); i++) {
        memset(&ss, 0x11, sizeof(ss));
        if (addr_parse_ip(bad_ips[i], &ss) != -EINVAL)
            fail_msg("\"%s\" accepted", bad_ips[i]);
        assert_int_equal(((unsigned char *)&ss)[0], 0x11);
    }
    assert_int_equal(addr_parse_ip(NULL, &ss), -EINVAL);
}

static struct sockaddr_storage ip(const char *s, uint16_t port)
{
    struct sockaddr_storage ss;
    assert_int_equal(addr_parse_ip(s, &ss), 0);
    if (ss.ss_family == AF_INET)
        ((struct sockaddr_in *)&ss)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons(port);
    return ss;
}

static void test_is_any(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    ss = ip("0.0.0.0", 1);
    assert_true(addr_is_any((struct sockaddr *)&ss));
    ss = ip("::", 0);
    assert_true(addr_is_any((struct sockaddr *)&ss));
    ss = ip("0:0:0:0:0:0:0:0", 0);
    assert_true(addr_is_any((struct sockaddr *)&ss));
    ss = ip("127.0.0.1", 0);
    assert_false(addr_is_any((struct sockaddr *)&ss));
    ss = ip("0.0.0.1", 0);
    assert_false(addr_is_any((struct sockaddr *)&ss));
    ss = ip("::1", 0);
    assert_false(addr_is_any((struct sockaddr *)&ss));
    ss = ip("::ffff:0.0.0.0", 0);
    assert_false(addr_is_any((struct sockaddr *)&ss));
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = AF_UNSPEC;
    assert_false(addr_is_any((struct sockaddr *)&ss));
}

/* A reload keeps a listener whose address is equal: family, IP and port. */
static void test_equal(void **state)
{
    (void)state;
    struct sockaddr_storage a = ip("127.0.0.1", 80), b = ip("127.0.0.1", 80);
    assert_true(addr_equal((struct sockaddr *)&a, (struct sockaddr *)&b));
    b = ip("127.0.0.1", 81);
    assert_false(addr_equal((struct sockaddr *)&a, (struct sockaddr *)&b));
    b = ip("127.0.0.2", 80);
    assert_false(addr_equal((struct sockaddr *)&a, (struct sockaddr *)&b));
    b = ip("::ffff:127.0.0.1", 80);
    assert_false(addr_equal((struct sockaddr *)&a, (struct sockaddr *)&b));
    a = ip("::1", 80);
    b = ip("0:0:0:0:0:0:0:1", 80);
    assert_true(addr_equal((struct sockaddr *)&a, (struct sockaddr *)&b));
    b = ip("::1", 8080);
    assert_false(addr_equal((struct sockaddr *)&a, (struct sockaddr *)&b));
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    assert_false(addr_equal((struct sockaddr *)&a, (struct sockaddr *)&b)); /* AF_UNSPEC */
}

/* Which pairs of listening addresses the kernel would refuse together. */
static void test_listen_overlap(void **state)
{
    (void)state;
    static const struct {
        const char *a;
        int a_dual;
        const char *b;
        int b_dual;
        int port_b;
        int overlap;
    } cases[] = {
        { "0.0.0.0", 0, "127.0.0.1", 0, 5000, 1 },
        { "127.0.0.1", 0, "0.0.0.0", 0, 5000, 1 },
        { "127.0.0.1", 0, "127.0.0.1", 0, 5000, 1 },
        { "127.0.0.1", 0, "127.0.0.2", 0, 5000, 0 },
        { "0.0.0.0", 0, "0.0.0.0", 0, 5001, 0 }, /* another port */
        { "0.0.0.0", 0, "::", 0, 5000, 0 },      /* IPV6_V6ONLY */
        { "::", 0, "0.0.0.0", 0, 5000, 0 },
        { "::", 1, "0.0.0.0", 0, 5000, 1 }, /* dual stack takes IPv4 */
        { "127.0.0.1", 0, "::", 1, 5000, 1 },
        { "::1", 1, "127.0.0.1", 0, 5000, 0 }, /* only the wildcard */
        { "::", 0, "::1", 0, 5000, 1 },
        { "::1", 0, "::2", 0, 5000, 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct sockaddr_storage a = ip(cases[i].a, 5000), b = ip(cases[i].b, cases[i].port_b);
        int got = addr_listen_overlap((struct sockaddr *)&a, cases[i].a_dual, (struct sockaddr *)&b,
                                      cases[i].b_dual);
        if (got != cases[i].overlap)
            fprintf(stderr, "case %zu: %s (dual %d) / %s (dual %d): got %d\n", i, cases[i].a,
                    cases[i].a_dual, cases[i].b, cases[i].b_dual, got);
        assert_int_equal(got, cases[i].overlap);
    }
    struct sockaddr_storage m = ip("::ffff:10.0.0.1", 1), v6 = ip("::1", 1), v4 = ip("10.0.0.1", 1);
    assert_true(addr_is_v4_mapped((struct sockaddr *)&m));
    assert_false(addr_is_v4_mapped((struct sockaddr *)&v6));
    assert_false(addr_is_v4_mapped((struct sockaddr *)&v4));
}

static void test_is_loopback(void **state)
{
    (void)state;
    const char *yes[] = { "127.0.0.1", "127.0.0.0", "127.255.255.255",
                          "127.1.2.3", "::1",       "0:0:0:0:0:0:0:1" };
    const char *no[] = { "126.255.255.255",  "128.0.0.1", "0.0.0.0",    "10.0.0.1", "::", "::2",
                         "::ffff:127.0.0.1", "fe80::1",   "2001:db8::1" };
    struct sockaddr_storage ss;
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        ss = ip(yes[i], 80);
        if (!addr_is_loopback((struct sockaddr *)&ss))
            fail_msg("%s: not loopback", yes[i]);
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        ss = ip(no[i], 80);
        if (addr_is_loopback((struct sockaddr *)&ss))
            fail_msg("%s: loopback", no[i]);
    }
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = AF_UNIX;
    assert_false(addr_is_loopback((struct sockaddr *)&ss));
}

struct cidr_case {
    const char *in;
    int family;
    const char *addr; /* the stored block address, as inet_ntop writes it */
    unsigned prefix;
};

static const struct cidr_case good_cidrs[] = {
    { "10.0.0.0/8", AF_INET, "10.0.0.0", 8 },
    { "192.168.1.7", AF_INET, "192.168.1.7", 32 },
    { "192.168.1.7/32", AF_INET, "192.168.1.7", 32 },
    { "0.0.0.0/0", AF_INET, "0.0.0.0", 0 },
    { "255.255.255.255/0", AF_INET, "0.0.0.0", 0 },
    /* Host bits are masked off, not refused. */
    { "10.1.2.3/8", AF_INET, "10.0.0.0", 8 },
    { "172.31.255.255/12", AF_INET, "172.16.0.0", 12 },
    { "192.168.1.255/25", AF_INET, "192.168.1.128", 25 },
    { "10.0.0.1/31", AF_INET, "10.0.0.0", 31 },
    { "10.0.0.0/08", AF_INET, "10.0.0.0", 8 },
    { "::1/128", AF_INET6, "::1", 128 },
    { "::1", AF_INET6, "::1", 128 },
    { "::/0", AF_INET6, "::", 0 },
    { "2001:db8::/32", AF_INET6, "2001:db8::", 32 },
    { "2001:DB8:ffff::1/33", AF_INET6, "2001:db8:8000::", 33 },
    { "fe80::1:2:3:4/64", AF_INET6, "fe80::", 64 },
    { "2001:db8::ff/121", AF_INET6, "2001:db8::80", 121 },
    /* An IPv4-mapped block is the IPv4 block it maps. */
    { "::ffff:10.0.0.0/104", AF_INET, "10.0.0.0", 8 },
    { "::ffff:192.168.1.7", AF_INET, "192.168.1.7", 32 },
    { "::ffff:0:0/96", AF_INET, "0.0.0.0", 0 },
    /* A shorter one stays IPv6 (and so matches only IPv6 clients). */
    { "::ffff:0:0/95", AF_INET6, "::fffe:0:0", 95 },
};

static void test_parse_cidr(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(good_cidrs) / sizeof(good_cidrs[0]); i++) {
        const struct cidr_case *g = &good_cidrs[i];
        struct cidr c;
        memset(&c, 0xAB, sizeof(c));
        if (addr_parse_cidr(g->in, &c) != 0)
            fail_msg("\"%s\" refused", g->in);
        char text[INET6_ADDRSTRLEN];
        assert_int_equal(c.family, g->family);
        assert_non_null(inet_ntop(c.family, c.addr, text, sizeof(text)));
        if (strcmp(text, g->addr) != 0 || c.prefix != g->prefix)
            fail_msg("\"%s\": got %s/%u, want %s/%u", g->in, text, c.prefix, g->addr, g->prefix);
        if (c.family == AF_INET)
            for (size_t j = 4; j < 16; j++)
                assert_int_equal(c.addr[j], 0);
    }

    const char *bad_cidrs[] = {
        "",
        "/8",
        "10.0.0.0/",
        "10.0.0.0/33",
        "10.0.0.0/-1",
        "10.0.0.0/+8",
        "10.0.0.0/8/8",
        "10.0.0.0/ 8",
        "10.0.0.0 /8",
        " 10.0.0.0/8",
        "10.0.0.0/8 ",
        "10.0.0.0/x",
        "10.0.0.0/99999999999999999999",
        "10.0.0/8",
        "10.0.0.256/8",
        "010.0.0.0/8",
        "::/129",
        "::1/1000",
        "[::1]/128",
        "[::1]",
        "fe80::1%eth0/64",
        "10.0.0.1:80",
        "localhost",
        "localhost/8",
        "1:2:3:4:5:6:7:8:9/64",
        "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255x/1",
    };
    for (size_t i = 0; i < sizeof(bad_cidrs) / sizeof(bad_cidrs[0]); i++) {
        struct cidr c;
        memset(&c, 0x5A, sizeof(c));
        struct cidr before = c;
        if (addr_parse_cidr(bad_cidrs[i], &c) != -EINVAL)
            fail_msg("\"%s\" accepted", bad_cidrs[i]);
        assert_memory_equal(&c, &before, sizeof(c));
    }
    struct cidr c;
    assert_int_equal(addr_parse_cidr(NULL, &c), -EINVAL);
}

struct match_case {
    const char *cidr;
    const char *client;
    int match;
};

static const struct match_case matches[] = {
    { "10.0.0.0/8", "10.0.0.0", 1 },
    { "10.0.0.0/8", "10.255.255.255", 1 },
    { "10.0.0.0/8", "11.0.0.0", 0 },
    { "10.0.0.0/8", "9.255.255.255", 0 },
    { "192.168.1.7", "192.168.1.7", 1 },
    { "192.168.1.7", "192.168.1.6", 0 },
    { "192.168.1.128/25", "192.168.1.200", 1 },
    { "192.168.1.128/25", "192.168.1.127", 0 },
    { "172.16.0.0/12", "172.31.0.1", 1 },
    { "172.16.0.0/12", "172.32.0.1", 0 },
    { "0.0.0.0/0", "203.0.113.9", 1 },
    { "0.0.0.0/0", "2001:db8::1", 0 },
    { "::/0", "2001:db8::1", 1 },
    { "::/0", "203.0.113.9", 0 },
    { "::1/128", "::1", 1 },
    { "::1/128", "::2", 0 },
    { "::1/128", "127.0.0.1", 0 },
    { "2001:db8::/32", "2001:db8:ffff::1", 1 },
    { "2001:db8::/32", "2001:db9::1", 0 },
    { "2001:db8::80/121", "2001:db8::ff", 1 },
    { "2001:db8::80/121", "2001:db8::7f", 0 },
    /* A dual-stack listener's IPv4 client is matched as IPv4. */
    { "10.0.0.0/8", "::ffff:10.1.2.3", 1 },
    { "10.0.0.0/8", "::ffff:11.1.2.3", 0 },
    { "192.168.1.7", "::ffff:192.168.1.7", 1 },
    { "0.0.0.0/0", "::ffff:1.2.3.4", 1 },
    { "::/0", "::ffff:1.2.3.4", 0 },
    { "::ffff:10.0.0.0/104", "10.9.9.9", 1 },
    { "::ffff:10.0.0.0/104", "::ffff:10.9.9.9", 1 },
    /* IPv4-compatible (::a.b.c.d) is plain IPv6. */
    { "10.0.0.0/8", "::10.1.2.3", 0 },
    { "::/96", "::10.1.2.3", 1 },
};

static void test_cidr_match(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(matches) / sizeof(matches[0]); i++) {
        const struct match_case *m = &matches[i];
        struct cidr c;
        assert_int_equal(addr_parse_cidr(m->cidr, &c), 0);
        struct sockaddr_storage ss = ip(m->client, 40000);
        if (addr_cidr_match(&c, (struct sockaddr *)&ss) != m->match)
            fail_msg("%s in %s: want %d", m->client, m->cidr, m->match);
    }
    struct cidr c;
    assert_int_equal(addr_parse_cidr("0.0.0.0/0", &c), 0);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = AF_UNIX;
    assert_int_equal(addr_cidr_match(&c, (struct sockaddr *)&ss), 0);
    ss.ss_family = AF_UNSPEC;
    assert_int_equal(addr_cidr_match(&c, (struct sockaddr *)&ss), 0);
}

static void test_port_and_len(void **state)
{
    (void)state;
    struct sockaddr_storage ss = ip("192.0.2.1", 65535);
    assert_int_equal(addr_port((struct sockaddr *)&ss), 65535);
    assert_int_equal(addr_len((struct sockaddr *)&ss), sizeof(struct sockaddr_in));
    ss = ip("2001:db8::2", 443);
    assert_int_equal(addr_port((struct sockaddr *)&ss), 443);
    assert_int_equal(addr_len((struct sockaddr *)&ss), sizeof(struct sockaddr_in6));
    memset(&ss, 0, sizeof(ss));
    ss.ss_family = AF_UNIX;
    assert_int_equal(addr_port((struct sockaddr *)&ss), 0);
    assert_int_equal(addr_len((struct sockaddr *)&ss), sizeof(struct sockaddr_un));
    ss.ss_family = AF_UNSPEC;
    assert_int_equal(addr_port((struct sockaddr *)&ss), 0);
    assert_int_equal(addr_len((struct sockaddr *)&ss), 0);
}

static void test_format(void **state)
{
    (void)state;
    char buf[ADDR_STR_MAX];
    struct sockaddr_storage ss;

    ss = ip("fe80::1", 53);
    ((struct sockaddr_in6 *)&ss)->sin6_scope_id = 2;
    assert_string_equal(addr_format((struct sockaddr *)&ss, buf, sizeof(buf)), "[fe80::1%2]:53");

    /* The longest possible text fits ADDR_STR_MAX. */
    ss = ip("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", 65535);
    assert_string_equal(addr_format((struct sockaddr *)&ss, buf, sizeof(buf)),
                        "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");

    /* A short buffer truncates and stays terminated. */
    ss = ip("10.20.30.40", 5000);
    char small[8];
    assert_ptr_equal(addr_format((struct sockaddr *)&ss, small, sizeof(small)), small);
    assert_string_equal(small, "10.20.3");

    memset(&ss, 0, sizeof(ss));
    assert_string_equal(addr_format((struct sockaddr *)&ss, buf, sizeof(buf)), "(unset)");
    ss.ss_family = AF_UNIX;
    assert_string_equal(addr_format((struct sockaddr *)&ss, buf, sizeof(buf)), "(family 1)");
}

/* Text written in canonical form survives parse -> format unchanged. */
static void test_round_trip(void **state)
{
    (void)state;
    const char *canonical[] = { "1.2.3.4:5",         "0.0.0.0:65535",     "255.255.255.255:65535",
                                "[::1]:5",           "[::]:80",           "[2001:db8::1]:6000",
                                "[fe80::1:2:3:4]:1", "[::ffff:1.2.3.4]:9" };
    for (size_t i = 0; i < sizeof(canonical) / sizeof(canonical[0]); i++) {
        struct hostport hp;
        char buf[ADDR_STR_MAX];
        assert_int_equal(addr_parse_hostport(canonical[i], &hp, NULL), 0);
        assert_string_equal(addr_format((struct sockaddr *)&hp.sa, buf, sizeof(buf)), canonical[i]);
        /* And the formatted text parses back to the same address. */
        struct hostport again;
        assert_int_equal(addr_parse_hostport(buf, &again, NULL), 0);
        assert_memory_equal(&again.sa, &hp.sa, sizeof(hp.sa));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_longest_host_name),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_parse_ip),
        cmocka_unit_test(test_is_any),
        cmocka_unit_test(test_equal),
        cmocka_unit_test(test_listen_overlap),
        cmocka_unit_test(test_is_loopback),
        cmocka_unit_test(test_parse_cidr),
        cmocka_unit_test(test_cidr_match),
        cmocka_unit_test(test_port_and_len),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
