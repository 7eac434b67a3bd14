/* Unit tests for probe.c's URL parser: what `lifeline probe` accepts, and why it refuses the rest. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lifeline/probe.h"

#define WHY_HOST "the host must be an IPv4 address, an IPv6 address in brackets or localhost"
#define WHY_PORT "the port must be a number from 1 to 65535"
#define WHY_IPV6_BRACKETS "an IPv6 address goes in brackets: http://[::1]:PORT/"
#define WHY_SCHEME "expected http://HOST:PORT/PATH"
#define WHY_PATH_CHARS "the path may not contain spaces or control characters"

/* Asserts that address i of t is `ip` (IPv4 or IPv6 text) and `port`. */
static void assert_addr(const struct probe_target *t, size_t i, const char *ip, uint16_t port)
{
    const struct sockaddr_storage *ss = &t->addrs[i];
    char buf[INET6_ADDRSTRLEN];

    if (strchr(ip, ':') == NULL) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        assert_int_equal(ss->ss_family, AF_INET);
        assert_int_equal(t->addrlens[i], sizeof(struct sockaddr_in));
        assert_int_equal(ntohs(sin->sin_port), port);
        assert_non_null(inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf)));
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        assert_int_equal(ss->ss_family, AF_INET6);
        assert_int_equal(t->addrlens[i], sizeof(struct sockaddr_in6));
        assert_int_equal(ntohs(sin6->sin6_port), port);
        assert_non_null(inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf)));
    }
    assert_string_equal(buf, ip);
}

/* Parses a URL that must be accepted; *why must stay untouched. */
static void parse_ok(const char *url, struct probe_target *t)
{
    const char *why = "untouched";

    memset(t, 0xAB, sizeof(*t));
    int rc = probe_parse_url(url, t, &why);
    if (rc != 0)
        fail_msg("\"%s\": rc %d (%s)", url, rc, why);
    assert_string_equal(why, "untouched");
}

struct good_case {
    const char *url;
    const char *authority;
    const char *path;
    const char *ip; /* the one address tried */
    uint16_t port;
};

static const struct good_case good[] = {
    { "http://127.0.0.1:9900/healthz", "127.0.0.1:9900", "/healthz", "127.0.0.1", 9900 },
    /* No port: 80. No path: "/". */
    { "http://127.0.0.1/healthz", "127.0.0.1", "/healthz", "127.0.0.1", 80 },
    { "http://127.0.0.1:9900", "127.0.0.1:9900", "/", "127.0.0.1", 9900 },
    { "http://10.1.2.3", "10.1.2.3", "/", "10.1.2.3", 80 },
    /* The query goes to the server, the fragment does not. */
    { "http://127.0.0.1:9900/readyz?verbose=1", "127.0.0.1:9900", "/readyz?verbose=1", "127.0.0.1",
      9900 },
    { "http://127.0.0.1:9900/healthz?a=1#frag", "127.0.0.1:9900", "/healthz?a=1", "127.0.0.1",
      9900 },
    { "http://127.0.0.1:9900/healthz#frag?no", "127.0.0.1:9900", "/healthz", "127.0.0.1", 9900 },
    { "http://127.0.0.1:9900?x=1", "127.0.0.1:9900", "/?x=1", "127.0.0.1", 9900 },
    { "http://127.0.0.1:9900#frag", "127.0.0.1:9900", "/", "127.0.0.1", 9900 },
    { "http://127.0.0.1:9900/", "127.0.0.1:9900", "/", "127.0.0.1", 9900 },
    /* The path is passed on as written: no decoding, no normalising. */
    { "http://127.0.0.1:1/a/../b%20c//", "127.0.0.1:1", "/a/../b%20c//", "127.0.0.1", 1 },
    { "http://127.0.0.1:1/caf\xc3\xa9", "127.0.0.1:1", "/caf\xc3\xa9", "127.0.0.1", 1 },
    /* Port bounds; up to five digits, leading zeros included. */
    { "http://1.2.3.4:1/", "1.2.3.4:1", "/", "1.2.3.4", 1 },
    { "http://1.2.3.4:65535/", "1.2.3.4:65535", "/", "1.2.3.4", 65535 },
    { "http://1.2.3.4:00080/", "1.2.3.4:00080", "/", "1.2.3.4", 80 },
    /* The scheme in any case; the authority kept as written. */
    { "HTTP://127.0.0.1:9900/x", "127.0.0.1:9900", "/x", "127.0.0.1", 9900 },
    { "hTtP://0.0.0.0:5/", "0.0.0.0:5", "/", "0.0.0.0", 5 },
    /* Bracketed IPv6. */
    { "http://[::1]:9900/healthz", "[::1]:9900", "/healthz", "::1", 9900 },
    { "http://[::1]/healthz", "[::1]", "/healthz", "::1", 80 },
    { "http://[::1]", "[::1]", "/", "::1", 80 },
    { "http://[2001:DB8::a:1]:65535/m", "[2001:DB8::a:1]:65535", "/m", "2001:db8::a:1", 65535 },
    { "http://[::ffff:10.0.0.1]:9/", "[::ffff:10.0.0.1]:9", "/", "::ffff:10.0.0.1", 9 },
    /* The longest IPv6 text there is, with the longest port: 53 bytes. */
    { "http://[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535/",
      "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535", "/",
      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535 },
};

static void test_good(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        const struct good_case *g = &good[i];
        struct probe_target t;
        parse_ok(g->url, &t);
        assert_string_equal(t.authority, g->authority);
        assert_string_equal(t.path, g->path);
        assert_int_equal(t.n_addrs, 1);
        assert_addr(&t, 0, g->ip, g->port);
    }
}

/* "localhost", in any case, is both loopbacks: 127.0.0.1 first, then ::1. */
static void test_localhost(void **state)
{
    (void)state;
    static const struct {
        const char *url, *authority, *path;
        uint16_t port;
    } cases[] = {
        { "http://localhost:9900/healthz", "localhost:9900", "/healthz", 9900 },
        { "http://localhost", "localhost", "/", 80 },
        { "http://LocalHost:1/?q", "LocalHost:1", "/?q", 1 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct probe_target t;
        parse_ok(cases[i].url, &t);
        assert_string_equal(t.authority, cases[i].authority);
        assert_string_equal(t.path, cases[i].path);
        assert_int_equal(t.n_addrs, 2);
        assert_addr(&t, 0, "127.0.0.1", cases[i].port);
        assert_addr(&t, 1, "::1", cases[i].port);
    }
}

struct bad_case {
    const char *url;
    const char *why;
};

static const struct bad_case bad[] = {
    /* The scheme. */
    { "https://127.0.0.1:9900/healthz", "https is not supported" },
    { "HTTPS://127.0.0.1/", "https is not supported" },
    { "", WHY_SCHEME },
    { "127.0.0.1:9900/healthz", WHY_SCHEME },
    { "ftp://127.0.0.1/", WHY_SCHEME },
    { "http:/127.0.0.1/", WHY_SCHEME },
    { "http//127.0.0.1/", WHY_SCHEME },
    { " http://127.0.0.1/", WHY_SCHEME },
    /* The host. */
    { "http://", "missing host" },
    { "http:///healthz", "missing host" },
    { "http://?x", "missing host" },
    { "http://#x", "missing host" },
    { "http://:9900/healthz", "missing host" },
    { "http://[]:9900/healthz", "missing host" },
    { "http://user@127.0.0.1/", "user information is not supported" },
    { "http://user:pw@127.0.0.1:9900/", "user information is not supported" },
    { "http://example.com/", WHY_HOST },
    { "http://example.com:9900/healthz", WHY_HOST },
    { "http://localhost.localdomain/", WHY_HOST },
    { "http://localhost./", WHY_HOST },
    { "http://127.1/", WHY_HOST },
    { "http://127.0.0.256/", WHY_HOST },
    { "http://1.2.3.4x:80/", WHY_HOST },
    { "http://127.0.0.1 /", WHY_HOST },
    { "http://127.0.0.1\t:80/", WHY_HOST },
    /* IPv6. */
    { "http://::1/", WHY_IPV6_BRACKETS },
    { "http://::1:9900/healthz", WHY_IPV6_BRACKETS },
    { "http://2001:db8::1/", WHY_IPV6_BRACKETS },
    { "http://127.0.0.1:80:80/", WHY_IPV6_BRACKETS },
    { "http://[::1/", "missing ']' after the IPv6 address" },
    { "http://[::1", "missing ']' after the IPv6 address" },
    { "http://[::1]9900/", "expected ':' and a port after ']'" },
    { "http://[::1]x/", "expected ':' and a port after ']'" },
    { "http://[::1]]:80/", "expected ':' and a port after ']'" },
    { "http://[1.2.3.4]:80/", "invalid IPv6 address" },
    { "http://[::g]/", "invalid IPv6 address" },
    { "http://[localhost]/", "invalid IPv6 address" },
    { "http://[fe80::1%lo]:80/", "invalid IPv6 address" },
    /* The port. */
    { "http://127.0.0.1:0/", WHY_PORT },
    { "http://127.0.0.1:00000/", WHY_PORT },
    { "http://127.0.0.1:65536/", WHY_PORT },
    { "http://127.0.0.1:99999/", WHY_PORT },
    { "http://127.0.0.1:000080/", WHY_PORT }, /* six digits */
    { "http://127.0.0.1:/", WHY_PORT },
    { "http://127.0.0.1:", WHY_PORT },
    { "http://127.0.0.1:http/", WHY_PORT },
    { "http://127.0.0.1:99x/", WHY_PORT },
    { "http://127.0.0.1:9900x/healthz", WHY_PORT },
    { "http://127.0.0.1:-1/", WHY_PORT },
    { "http://127.0.0.1:+80/", WHY_PORT },
    { "http://127.0.0.1: 80/", WHY_PORT },
    { "http://[::1]:/", WHY_PORT },
    { "http://[::1]:0/", WHY_PORT },
    { "http://[::1]:65536/", WHY_PORT },
    { "http://localhost:70000/", WHY_PORT },
    /* The path. */
    { "http://127.0.0.1:9900/health z", WHY_PATH_CHARS },
    { "http://127.0.0.1:9900/healthz HTTP/1.1", WHY_PATH_CHARS },
    { "http://127.0.0.1:9900/healthz\r\nX-Injected: 1", WHY_PATH_CHARS },
    { "http://127.0.0.1:9900/\t", WHY_PATH_CHARS },
    { "http://127.0.0.1:9900/\x7f", WHY_PATH_CHARS },
    { "http://127.0.0.1:9900?a b", WHY_PATH_CHARS },
};

static void test_bad(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct probe_target t;
        const char *why = NULL;
        int rc = probe_parse_url(bad[i].url, &t, &why);
        if (rc != -1)
            fail_msg("\"%s\": rc %d, want -1", bad[i].url, rc);
        if (why == NULL || strcmp(why, bad[i].why) != 0)
            fail_msg("\"%s\": why \"%s\", want \"%s\"", bad[i].url, why ? why : "(null)",
                     bad[i].why);
    }
}

/* Control characters after the fragment mark are never sent, so they pass. */
static void test_fragment_not_checked(void **state)
{
    (void)state;
    struct probe_target t;
    parse_ok("http://127.0.0.1:9900/healthz#a b\tc", &t);
    assert_string_equal(t.path, "/healthz");
}

/* The authority (host and port as written) must fit in 63 bytes. */
static void test_authority_length(void **state)
{
    (void)state;
    char url[128];
    const char *why = NULL;
    struct probe_target t;

    /* 64 bytes: too long, whatever they are. */
    memset(url, 0, sizeof(url));
    strcpy(url, "http://");
    memset(url + 7, '1', 64);
    strcat(url, "/");
    assert_int_equal(strlen(url), 7 + 64 + 1);
    assert_int_equal(probe_parse_url(url, &t, &why), -1);
    assert_string_equal(why, "host and port too long");

    /* 63 bytes pass the length check and fail on what they say. */
    url[7 + 63] = '/';
    url[7 + 64] = '\0';
    assert_int_equal(strlen(url), 7 + 63 + 1);
    why = NULL;
    assert_int_equal(probe_parse_url(url, &t, &why), -1);
    assert_string_equal(why, WHY_HOST);

    /* Too long in brackets too: "[0:0:...:0]:80", 64 bytes. */
    strcpy(url, "http://[");
    for (int i = 0; i < 29; i++)
        strcat(url, "0:");
    strcat(url, "0]:80/");
    assert_int_equal(strlen(url), 7 + 64 + 1);
    why = NULL;
    assert_int_equal(probe_parse_url(url, &t, &why), -1);
    assert_string_equal(why, "host and port too long");
}

/* The path (query included, fragment not) fits in PROBE_PATH_MAX with its
 * terminator and the '/' that may be put in front of it: 2046 bytes. */
static void test_path_length(void **state)
{
    (void)state;
    static const char prefix[] = "http://127.0.0.1:9900";
    const size_t plen = sizeof(prefix) - 1;
    const size_t longest = PROBE_PATH_MAX - 2;
    char *url = malloc(plen + PROBE_PATH_MAX + 16);
    struct probe_target t;
    const char *why;

    assert_non_null(url);
    memcpy(url, prefix, plen);

    /* "/aaa...a", 2046 bytes: accepted as is. */
    url[plen] = '/';
    memset(url + plen + 1, 'a', longest - 1);
    url[plen + longest] = '\0';
    parse_ok(url, &t);
    assert_int_equal(strlen(t.path), longest);
    assert_memory_equal(t.path, url + plen, longest);

    /* A fragment after it is dropped and does not count. */
    strcpy(url + plen + longest, "#fragment");
    parse_ok(url, &t);
    assert_int_equal(strlen(t.path), longest);

    /* "?aaa...a", 2046 bytes: the '/' in front makes 2047, which still fits. */
    url[plen] = '?';
    url[plen + longest] = '\0';
    parse_ok(url, &t);
    assert_int_equal(strlen(t.path), longest + 1);
    assert_int_equal(t.path[0], '/');
    assert_int_equal(t.path[1], '?');

    /* One more byte: too long, with or without the '/'. */
    url[plen] = '/';
    url[plen + longest] = 'a';
    url[plen + longest + 1] = '\0';
    why = NULL;
    assert_int_equal(probe_parse_url(url, &t, &why), -1);
    assert_string_equal(why, "path too long");

    url[plen] = '?';
    why = NULL;
    assert_int_equal(probe_parse_url(url, &t, &why), -1);
    assert_string_equal(why, "path too long");

    /* Far too long. */
    memset(url + plen + 1, 'a', PROBE_PATH_MAX + 8);
    url[plen + PROBE_PATH_MAX + 9] = '\0';
    why = NULL;
    assert_int_equal(probe_parse_url(url, &t, &why), -1);
    assert_string_equal(why, "path too long");

    free(url);
}

/* A target that was used before is reset by the next parse. */
static void test_target_reset(void **state)
{
    (void)state;
    struct probe_target t;
    const char *why = NULL;

    parse_ok("http://localhost:9900/a-rather-long-path", &t);
    assert_int_equal(t.n_addrs, 2);
    assert_int_equal(probe_parse_url("http://[::1]:1", &t, &why), 0);
    assert_int_equal(t.n_addrs, 1);
    assert_string_equal(t.authority, "[::1]:1");
    assert_string_equal(t.path, "/");
    assert_addr(&t, 0, "::1", 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_localhost),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_fragment_not_checked),
        cmocka_unit_test(test_authority_length),
        cmocka_unit_test(test_path_length),
        cmocka_unit_test(test_target_reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
