/* Unit tests for addr.c: "host:port" parsing, IP literals, formatting, ports. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

#include "lifeline/addr.h"

struct good_case {
    const char *in;
    const char *host;
    uint16_t port;
    int family; /* AF_UNSPEC for a host name */
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

    const char *bad_ips[] = { "", "foo", "[::1]", "1.2.3.4:5", " 1.2.3.4", "1.2.3.4 ",
                              "1.2.3", "256.1.1.1", "::1%lo", "localhost" };
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
    const char *canonical[] = { "1.2.3.4:5", "0.0.0.0:65535", "[::1]:5", "[::]:80",
                                "[2001:db8::1]:6000", "[fe80::1:2:3:4]:1", "[::ffff:1.2.3.4]:9" };
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
        cmocka_unit_test(test_port_and_len),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
