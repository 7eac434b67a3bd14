/* Unit tests for admin.c's request path, no socket: parsing, bounds, routing, the kill path's ids. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lifeline/admin.h"

static enum admin_parse feed_str(struct admin_request *r, const char *s)
{
    return admin_request_feed(r, s, strlen(s));
}

/* Parses a whole request given in one piece, which must complete, and routes it. */
static void route_of(const char *req, struct admin_route *rt)
{
    struct admin_request r;
    admin_request_init(&r);
    enum admin_parse res = feed_str(&r, req);
    if (res != ADMIN_PARSE_DONE)
        fail_msg("\"%s\": parse result %d, want DONE", req, (int)res);
    memset(rt, 0xAB, sizeof(*rt));
    admin_request_route(&r, rt);
}

/* "METHOD TARGET HTTP/1.1" with a Host header, in one buffer. */
static void route_line(const char *method, const char *target, struct admin_route *rt)
{
    char req[2048];
    int n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: 127.0.0.1:9900\r\n\r\n", method,
                     target);
    assert_true(n > 0 && (size_t)n < sizeof(req));
    route_of(req, rt);
}

static void assert_serve(const struct admin_route *rt, enum admin_endpoint e, int head)
{
    assert_int_equal(rt->endpoint, e);
    assert_int_equal(rt->status, 0);
    assert_null(rt->allow);
    assert_int_equal(rt->head, head);
    if (e != ADMIN_EP_CLOSE)
        assert_int_equal(rt->session_id, 0);
}

static void assert_not_found(const struct admin_route *rt)
{
    assert_int_equal(rt->endpoint, ADMIN_EP_OTHER);
    assert_int_equal(rt->status, 404);
    assert_null(rt->allow);
    assert_int_equal(rt->session_id, 0);
}

static void assert_not_allowed(const struct admin_route *rt, enum admin_endpoint e,
                               const char *allow)
{
    assert_int_equal(rt->endpoint, e);
    assert_int_equal(rt->status, 405);
    assert_non_null(rt->allow);
    assert_string_equal(rt->allow, allow);
}

/* --- routing -------------------------------------------------------------- */

static void test_get_endpoints(void **state)
{
    (void)state;
    static const struct {
        const char *target;
        enum admin_endpoint endpoint;
    } cases[] = {
        { "/healthz", ADMIN_EP_HEALTHZ },
        { "/readyz", ADMIN_EP_READYZ },
        { "/metrics", ADMIN_EP_METRICS },
        { "/sessions", ADMIN_EP_SESSIONS },
        /* The query is not part of the path. */
        { "/healthz?verbose=1", ADMIN_EP_HEALTHZ },
        { "/metrics?", ADMIN_EP_METRICS },
        { "/sessions?route=db&x=%20", ADMIN_EP_SESSIONS },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct admin_route rt;
        route_line("GET", cases[i].target, &rt);
        assert_serve(&rt, cases[i].endpoint, 0);
        /* HEAD works wherever GET does, and says it is a HEAD. */
        route_line("HEAD", cases[i].target, &rt);
        assert_serve(&rt, cases[i].endpoint, 1);
    }
}

/* HTTP/1.0, no headers at all, and a lowercase Host make no difference. */
static void test_request_forms(void **state)
{
    (void)state;
    struct admin_route rt;
    route_of("GET /healthz HTTP/1.0\r\n\r\n", &rt);
    assert_serve(&rt, ADMIN_EP_HEALTHZ, 0);
    route_of("GET /metrics HTTP/1.1\r\nhost: x\r\naccept: */*\r\nuser-agent: test\r\n\r\n", &rt);
    assert_serve(&rt, ADMIN_EP_METRICS, 0);
    /* Bare LF line ends, as http_parser allows. */
    route_of("GET /readyz HTTP/1.1\nHost: x\n\n", &rt);
    assert_serve(&rt, ADMIN_EP_READYZ, 0);
}

static void test_close_path(void **state)
{
    (void)state;
    struct admin_route rt;

    route_of("POST /sessions/42/close HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", &rt);
    assert_serve(&rt, ADMIN_EP_CLOSE, 0);
    assert_int_equal(rt.session_id, 42);

    /* No Content-Length: a request without a body. */
    route_line("POST", "/sessions/7/close", &rt);
    assert_serve(&rt, ADMIN_EP_CLOSE, 0);
    assert_int_equal(rt.session_id, 7);

    /* A body is allowed, and ignored. */
    route_of("POST /sessions/9/close HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", &rt);
    assert_serve(&rt, ADMIN_EP_CLOSE, 0);
    assert_int_equal(rt.session_id, 9);

    /* The query is not part of the path. */
    route_line("POST", "/sessions/123/close?now=1", &rt);
    assert_serve(&rt, ADMIN_EP_CLOSE, 0);
    assert_int_equal(rt.session_id, 123);

    /* Only POST closes: DELETE, GET and HEAD are 405 with "Allow: POST", the
     * id still parsed and the endpoint still "close". */
    static const char *const others[] = { "DELETE", "GET", "HEAD", "PUT", "PATCH" };
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        route_line(others[i], "/sessions/42/close", &rt);
        assert_not_allowed(&rt, ADMIN_EP_CLOSE, "POST");
        assert_int_equal(rt.session_id, 42);
        assert_int_equal(rt.head, strcmp(others[i], "HEAD") == 0);
    }

    /* There is no DELETE /sessions/{id}: that path does not exist. */
    route_line("DELETE", "/sessions/42", &rt);
    assert_not_found(&rt);
    route_line("POST", "/sessions/42", &rt);
    assert_not_found(&rt);
}

/* A known GET path with another method: 405, "Allow: GET, HEAD", counted
 * under its own endpoint (not "other"). */
static void test_wrong_method(void **state)
{
    (void)state;
    static const struct {
        const char *method, *target;
        enum admin_endpoint endpoint;
    } cases[] = {
        { "POST", "/healthz", ADMIN_EP_HEALTHZ },   { "DELETE", "/healthz", ADMIN_EP_HEALTHZ },
        { "PUT", "/readyz", ADMIN_EP_READYZ },      { "OPTIONS", "/metrics", ADMIN_EP_METRICS },
        { "POST", "/metrics", ADMIN_EP_METRICS },   { "DELETE", "/sessions", ADMIN_EP_SESSIONS },
        { "POST", "/sessions", ADMIN_EP_SESSIONS }, { "PATCH", "/sessions?x", ADMIN_EP_SESSIONS },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct admin_route rt;
        route_line(cases[i].method, cases[i].target, &rt);
        assert_not_allowed(&rt, cases[i].endpoint, "GET, HEAD");
        assert_int_equal(rt.head, 0);
        assert_int_equal(rt.session_id, 0);
    }
}

/* Any other path is 404, whatever the method. */
static void test_unknown_path(void **state)
{
    (void)state;
    static const char *const targets[] = {
        "/",
        "/healthz/",
        "/healthz.json",
        "/HEALTHZ",
        "/Healthz",
        "//healthz",
        "/healthz#top",
        "/metrics/",
        "/sessions/",
        "/sessions/42/close/",
        "/sessions/42/closed",
        "/sessions/42/kill",
        "/sessions/close",
        "/sessions//close",
        "/session/42/close",
        "/api/sessions/42/close",
        "/healthz%3F",
        "*",
        "http://127.0.0.1:9900/healthz", /* absolute form: not recognised */
    };
    static const char *const methods[] = { "GET", "HEAD", "POST", "DELETE" };
    for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
        for (size_t m = 0; m < sizeof(methods) / sizeof(methods[0]); m++) {
            struct admin_route rt;
            route_line(methods[m], targets[i], &rt);
            if (rt.status != 404)
                fail_msg("%s %s: status %d, want 404", methods[m], targets[i], rt.status);
            assert_not_found(&rt);
        }
    }
}

/* --- the kill path's session ids ------------------------------------------ */

static void test_session_id_bounds(void **state)
{
    (void)state;
    static const struct {
        const char *id;
        uint64_t want; /* 0: not a close path, so 404 */
    } cases[] = {
        { "1", 1 },
        { "9", 9 },
        { "10", 10 },
        { "4294967296", 4294967296ULL },
        { "18446744073709551614", UINT64_MAX - 1 },
        { "18446744073709551615", UINT64_MAX },
        /* Over 2^64 - 1. */
        { "18446744073709551616", 0 },
        { "18446744073709551620", 0 },
        { "99999999999999999999", 0 },
        { "184467440737095516150", 0 },
        { "100000000000000000000000000000000000000", 0 },
        /* Zero is never an id; neither are leading zeros or signs. */
        { "0", 0 },
        { "00", 0 },
        { "01", 0 },
        { "000000000000000000001", 0 },
        { "-1", 0 },
        { "+1", 0 },
        { "%31", 0 },
        /* Not digits, or digits followed by something else. */
        { "", 0 },
        { "abc", 0 },
        { "1a", 0 },
        { "a1", 0 },
        { "0x10", 0 },
        { "1.0", 0 },
        { "1e3", 0 },
        { "12%20", 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char target[128];
        struct admin_route rt;
        snprintf(target, sizeof(target), "/sessions/%s/close", cases[i].id);
        route_line("POST", target, &rt);
        if (cases[i].want == 0) {
            if (rt.status != 404)
                fail_msg("%s: status %d, want 404", target, rt.status);
            assert_not_found(&rt);
        } else {
            if (rt.endpoint != ADMIN_EP_CLOSE || rt.status != 0)
                fail_msg("%s: endpoint %d status %d, want close", target, (int)rt.endpoint,
                         rt.status);
            assert_serve(&rt, ADMIN_EP_CLOSE, 0);
            assert_true(rt.session_id == cases[i].want);
        }
    }
}

/* --- parsing: pieces, completion, malformed input ------------------------- */

/* Every byte fed alone: MORE until the last one, then DONE. */
static void test_one_byte_at_a_time(void **state)
{
    (void)state;
    static const char *const reqs[] = {
        "GET /sessions?route=db HTTP/1.1\r\nHost: 127.0.0.1:9900\r\nAccept: */*\r\n\r\n",
        "POST /sessions/18446744073709551615/close HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 11\r\n\r\nhello world",
        "POST /sessions/5/close HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n0\r\n\r\n",
    };
    static const uint64_t ids[] = { 0, UINT64_MAX, 5 };
    static const char *const urls[] = {
        "/sessions?route=db",
        "/sessions/18446744073709551615/close",
        "/sessions/5/close",
    };
    for (size_t k = 0; k < sizeof(reqs) / sizeof(reqs[0]); k++) {
        struct admin_request r;
        size_t len = strlen(reqs[k]);
        admin_request_init(&r);
        for (size_t i = 0; i + 1 < len; i++) {
            enum admin_parse res = admin_request_feed(&r, reqs[k] + i, 1);
            if (res != ADMIN_PARSE_MORE)
                fail_msg("request %zu, byte %zu: result %d, want MORE", k, i, (int)res);
        }
        assert_int_equal(admin_request_feed(&r, reqs[k] + len - 1, 1), ADMIN_PARSE_DONE);
        assert_string_equal(r.url, urls[k]);
        assert_int_equal(r.url_len, strlen(urls[k]));

        struct admin_route rt;
        admin_request_route(&r, &rt);
        if (ids[k] == 0) {
            assert_serve(&rt, ADMIN_EP_SESSIONS, 0);
        } else {
            assert_serve(&rt, ADMIN_EP_CLOSE, 0);
            assert_true(rt.session_id == ids[k]);
        }
    }
}

/* Zero bytes are the end of the stream to http_parser: harmless before a
 * request starts or after it is done, malformed in the middle of one. (The
 * endpoint never feeds an empty read.) */
static void test_empty_feed(void **state)
{
    (void)state;
    struct admin_request r;
    admin_request_init(&r);
    assert_int_equal(admin_request_feed(&r, "", 0), ADMIN_PARSE_MORE);
    assert_int_equal(feed_str(&r, "GET /healthz HTTP/1.1\r\n\r\n"), ADMIN_PARSE_DONE);
    assert_int_equal(admin_request_feed(&r, "", 0), ADMIN_PARSE_DONE);

    admin_request_init(&r);
    assert_int_equal(feed_str(&r, "GET /healthz HTTP/1.1\r\n"), ADMIN_PARSE_MORE);
    assert_int_equal(admin_request_feed(&r, "", 0), ADMIN_PARSE_BAD);
    assert_int_equal(feed_str(&r, "\r\n"), ADMIN_PARSE_BAD);
}

/* One request per connection: after DONE, further bytes (a pipelined second
 * request) change nothing. */
static void test_done_is_final(void **state)
{
    (void)state;
    struct admin_request r;
    struct admin_route rt;
    admin_request_init(&r);
    assert_int_equal(feed_str(&r, "GET /healthz HTTP/1.1\r\n\r\n"
                                  "POST /sessions/1/close HTTP/1.1\r\n\r\n"),
                     ADMIN_PARSE_DONE);
    assert_string_equal(r.url, "/healthz");
    assert_int_equal(feed_str(&r, "GET /metrics HTTP/1.1\r\n\r\n"), ADMIN_PARSE_DONE);
    assert_int_equal(feed_str(&r, "garbage \x01\x02"), ADMIN_PARSE_DONE);
    assert_string_equal(r.url, "/healthz");
    admin_request_route(&r, &rt);
    assert_serve(&rt, ADMIN_EP_HEALTHZ, 0);
}

static void test_malformed(void **state)
{
    (void)state;
    static const char *const reqs[] = {
        "BREW /healthz HTTP/1.1\r\n\r\n", /* unknown method */
        "get /healthz HTTP/1.1\r\n\r\n",  /* methods are upper case */
        "GET\r\n\r\n",                    /* no target, no version */
        "GET healthz HTTP/1.1\r\n\r\n",   /* a target without '/' */
        "GET /heal thz HTTP/1.1\r\n\r\n", /* a space in the target */
        "GET /healthz QTTP/1.1\r\n\r\n",  /* not HTTP */
        "GET /healthz HTTP/x.1\r\n\r\n",  /* no version number */
        "GET /healthz HTTP/11\r\n\r\n",
        "GET /healthz HTTP/1.\r\n\r\n",
        "GET /healthz HTTP/1000.1\r\n\r\n",
        "GET /healthz HTTP/1.1 extra\r\n\r\n", /* trailing garbage */
        "GET /healthz HTTP/1.1\rX\r\n\r\n",    /* CR without LF */
        "\x01GET /healthz HTTP/1.1\r\n\r\n",   /* a control byte first */
        "GET /health\x01z HTTP/1.1\r\n\r\n",   /* a control byte in the target */
        "GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
        "GET /healthz HTTP/1.1\r\n: x\r\n\r\n", /* an empty header name */
        "GET /healthz HTTP/1.1\r\n\x01X: y\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a\rb\r\n\r\n",
        "POST /sessions/1/close HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        "POST /sessions/1/close HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "POST /sessions/1/close HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    };
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
        struct admin_request r;
        admin_request_init(&r);
        enum admin_parse res = feed_str(&r, reqs[i]);
        if (res != ADMIN_PARSE_BAD)
            fail_msg("request %zu: result %d, want BAD", i, (int)res);
        /* A failed request takes no more bytes. */
        assert_int_equal(feed_str(&r, "GET /healthz HTTP/1.1\r\n\r\n"), ADMIN_PARSE_BAD);
    }
}

/* A request line that goes bad after a good start fails when the bad byte comes. */
static void test_malformed_in_pieces(void **state)
{
    (void)state;
    struct admin_request r;
    admin_request_init(&r);
    assert_int_equal(feed_str(&r, "GET /hea"), ADMIN_PARSE_MORE);
    assert_int_equal(feed_str(&r, "lthz HT"), ADMIN_PARSE_MORE);
    assert_int_equal(feed_str(&r, "TP/1"), ADMIN_PARSE_MORE);
    assert_int_equal(feed_str(&r, "x1\r\n\r\n"), ADMIN_PARSE_BAD);
    assert_string_equal(r.url, "/healthz");
}

/* --- bounds --------------------------------------------------------------- */

/* A request line "GET /aaa...a HTTP/1.1" with a target of `target_len` bytes. */
static char *long_target_request(size_t target_len)
{
    char *req = malloc(target_len + 64);
    assert_non_null(req);
    memcpy(req, "GET /", 5);
    memset(req + 5, 'a', target_len - 1);
    strcpy(req + 4 + target_len, " HTTP/1.1\r\n\r\n");
    return req;
}

/* The URL holds at most ADMIN_URL_MAX - 1 bytes. */
static void test_url_bound(void **state)
{
    (void)state;
    struct admin_request r;
    struct admin_route rt;

    char *req = long_target_request(ADMIN_URL_MAX - 1);
    admin_request_init(&r);
    assert_int_equal(feed_str(&r, req), ADMIN_PARSE_DONE);
    assert_int_equal(r.url_len, ADMIN_URL_MAX - 1);
    assert_int_equal(strlen(r.url), ADMIN_URL_MAX - 1);
    admin_request_route(&r, &rt);
    assert_not_found(&rt);
    free(req);

    req = long_target_request(ADMIN_URL_MAX);
    admin_request_init(&r);
    assert_int_equal(feed_str(&r, req), ADMIN_PARSE_TOO_LARGE);
    assert_true(r.url_len < ADMIN_URL_MAX);
    assert_int_equal(feed_str(&r, "GET /healthz HTTP/1.1\r\n\r\n"), ADMIN_PARSE_TOO_LARGE);
    free(req);

    /* The same URL one byte at a time: TOO_LARGE on its 1024th byte. */
    req = long_target_request(ADMIN_URL_MAX);
    admin_request_init(&r);
    for (size_t i = 0; i < 4 + ADMIN_URL_MAX - 1; i++)
        assert_int_equal(admin_request_feed(&r, req + i, 1), ADMIN_PARSE_MORE);
    assert_int_equal(admin_request_feed(&r, req + 4 + ADMIN_URL_MAX - 1, 1), ADMIN_PARSE_TOO_LARGE);
    free(req);
}

/* "GET / HTTP/1.1\r\n" and headers "X-Fill: vvv..." whose names and values
 * add up to `header_bytes`, then the blank line. */
static char *big_headers_request(size_t header_bytes)
{
    static const char line[] = "GET / HTTP/1.1\r\n";
    char *req = malloc(header_bytes * 2 + 256);
    size_t off = sizeof(line) - 1, left = header_bytes;

    assert_non_null(req);
    memcpy(req, line, off);
    while (left > 0) {
        /* "X-Fill" (6) and up to 1000 bytes of value per header, leaving
         * either nothing or room for a last header with a value. */
        size_t v = left - 6;
        assert_true(left >= 7);
        if (v > 1000)
            v = left - 6 - 1000 >= 7 ? 1000 : left - 13;
        memcpy(req + off, "X-Fill: ", 8);
        off += 8;
        memset(req + off, 'v', v);
        off += v;
        memcpy(req + off, "\r\n", 2);
        off += 2;
        left -= 6 + v;
    }
    strcpy(req + off, "\r\n");
    return req;
}

/* Header names and values add up to at most ADMIN_HEADERS_MAX bytes. */
static void test_header_bound(void **state)
{
    (void)state;
    struct admin_request r;

    char *req = big_headers_request(ADMIN_HEADERS_MAX - 1);
    admin_request_init(&r);
    assert_int_equal(feed_str(&r, req), ADMIN_PARSE_DONE);
    assert_int_equal(r.header_bytes, ADMIN_HEADERS_MAX - 1);
    free(req);

    req = big_headers_request(ADMIN_HEADERS_MAX + 1);
    admin_request_init(&r);
    assert_int_equal(feed_str(&r, req), ADMIN_PARSE_TOO_LARGE);
    assert_int_equal(feed_str(&r, "GET /healthz HTTP/1.1\r\n\r\n"), ADMIN_PARSE_TOO_LARGE);
    free(req);

    /* Far over the bound, one byte at a time: it stops at the bound, long
     * before the end of the headers. */
    req = big_headers_request(4 * ADMIN_HEADERS_MAX);
    size_t len = strlen(req), i;
    admin_request_init(&r);
    enum admin_parse res = ADMIN_PARSE_MORE;
    for (i = 0; i < len && res == ADMIN_PARSE_MORE; i++)
        res = admin_request_feed(&r, req + i, 1);
    assert_int_equal(res, ADMIN_PARSE_TOO_LARGE);
    /* The target "/" and the header bytes together reach the bound first. */
    assert_int_equal(r.url_len + r.header_bytes, ADMIN_HEADERS_MAX + 1);
    assert_true(i < 16 + ADMIN_HEADERS_MAX + 10 * 16);
    free(req);
}

/* The URL and the headers together may not pass ADMIN_HEADERS_MAX either,
 * whether the request arrives in pieces or in one read. */
static void test_url_and_headers_bound(void **state)
{
    (void)state;
    struct admin_request r;
    char *req = big_headers_request(ADMIN_HEADERS_MAX - 1);
    size_t len = strlen(req);

    /* Target "/" (1 byte) + 8191 header bytes = 8192: within the bound. */
    admin_request_init(&r);
    assert_int_equal(admin_request_feed(&r, req, len - 2), ADMIN_PARSE_MORE);
    assert_int_equal(admin_request_feed(&r, req + len - 2, 2), ADMIN_PARSE_DONE);
    free(req);

    /* Target "/ab" (3 bytes) + 8191 = 8194: over it. */
    req = big_headers_request(ADMIN_HEADERS_MAX - 1);
    len = strlen(req);
    char *longer = malloc(len + 3);
    assert_non_null(longer);
    memcpy(longer, "GET /ab", 7);
    strcpy(longer + 7, req + 5);
    admin_request_init(&r);
    assert_int_equal(admin_request_feed(&r, longer, len), ADMIN_PARSE_TOO_LARGE);
    assert_int_equal(r.url_len, 3);
    assert_int_equal(feed_str(&r, "\r\n"), ADMIN_PARSE_TOO_LARGE);

    /* The whole of it in one read: judged the same, not served. */
    admin_request_init(&r);
    assert_int_equal(admin_request_feed(&r, longer, strlen(longer)), ADMIN_PARSE_TOO_LARGE);
    free(longer);
    free(req);
}

/* "POST /sessions/1/close" with a Content-Length body of `n` bytes. */
static char *body_request(size_t n, size_t *len)
{
    char *req = malloc(n + 128);
    assert_non_null(req);
    int h = snprintf(req, 128, "POST /sessions/1/close HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", n);
    assert_true(h > 0 && h < 128);
    memset(req + h, 'b', n);
    *len = (size_t)h + n;
    return req;
}

/* A body of at most ADMIN_BODY_MAX bytes; one over it is malformed (400),
 * not too large (431). */
static void test_body_bound(void **state)
{
    (void)state;
    struct admin_request r;
    size_t len;

    char *req = body_request(ADMIN_BODY_MAX, &len);
    admin_request_init(&r);
    assert_int_equal(admin_request_feed(&r, req, len), ADMIN_PARSE_DONE);
    assert_int_equal(r.body_bytes, ADMIN_BODY_MAX);
    free(req);

    req = body_request(ADMIN_BODY_MAX + 1, &len);
    admin_request_init(&r);
    assert_int_equal(admin_request_feed(&r, req, len), ADMIN_PARSE_BAD);
    free(req);

    /* Announced but not yet sent, a large body is not refused... */
    req = body_request(1000000, &len);
    size_t head = len - 1000000;
    admin_request_init(&r);
    assert_int_equal(admin_request_feed(&r, req, head), ADMIN_PARSE_MORE);
    /* ...until its bytes pass the bound: the 4097th, fed one at a time. */
    for (size_t i = 0; i < ADMIN_BODY_MAX; i++)
        assert_int_equal(admin_request_feed(&r, req + head + i, 1), ADMIN_PARSE_MORE);
    assert_int_equal(admin_request_feed(&r, req + head + ADMIN_BODY_MAX, 1), ADMIN_PARSE_BAD);
    assert_int_equal(admin_request_feed(&r, req + head + ADMIN_BODY_MAX + 1, 1), ADMIN_PARSE_BAD);
    free(req);
}

#define CHUNKED_CLOSE "POST /sessions/3/close HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"

/* A chunked body counts towards the same bound, and the headers that come
 * after it (trailers) count towards the header bound. */
static void test_chunked_body_and_trailers(void **state)
{
    (void)state;
    struct admin_request r;
    struct admin_route rt;
    char chunk[5000];
    int n;

    /* A body and a trailer within their bounds. */
    admin_request_init(&r);
    assert_int_equal(feed_str(&r, CHUNKED_CLOSE "5\r\nhello\r\n0\r\nX-Trailer: v\r\n\r\n"),
                     ADMIN_PARSE_DONE);
    assert_int_equal(r.body_bytes, 5);
    assert_int_equal(r.header_bytes, strlen("Transfer-Encoding") + strlen("chunked") +
                                         strlen("X-Trailer") + strlen("v"));
    admin_request_route(&r, &rt);
    assert_serve(&rt, ADMIN_EP_CLOSE, 0);
    assert_int_equal(rt.session_id, 3);

    /* Chunks adding up to one byte over the body bound: BAD. */
    admin_request_init(&r);
    assert_int_equal(feed_str(&r, CHUNKED_CLOSE), ADMIN_PARSE_MORE);
    memset(chunk, 'c', sizeof(chunk));
    n = snprintf(chunk, sizeof(chunk), "%x\r\n", ADMIN_BODY_MAX);
    chunk[n] = 'c';
    assert_int_equal(admin_request_feed(&r, chunk, (size_t)n + ADMIN_BODY_MAX), ADMIN_PARSE_MORE);
    assert_int_equal(feed_str(&r, "\r\n1\r\nc"), ADMIN_PARSE_BAD);

    /* Trailers after the body passing the header bound: TOO_LARGE. */
    char *trailer = malloc(ADMIN_HEADERS_MAX + 64);
    assert_non_null(trailer);
    admin_request_init(&r);
    assert_int_equal(feed_str(&r, CHUNKED_CLOSE "5\r\nhello\r\n0\r\n"), ADMIN_PARSE_MORE);
    assert_int_equal(r.body_bytes, 5);
    assert_int_equal(r.header_bytes, strlen("Transfer-Encoding") + strlen("chunked"));
    memcpy(trailer, "X-T: ", 5);
    memset(trailer + 5, 't', ADMIN_HEADERS_MAX);
    strcpy(trailer + 5 + ADMIN_HEADERS_MAX, "\r\n\r\n");
    assert_int_equal(feed_str(&r, trailer), ADMIN_PARSE_TOO_LARGE);
    free(trailer);
}

/* --- names ---------------------------------------------------------------- */

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(admin_endpoint_name(ADMIN_EP_HEALTHZ), "healthz");
    assert_string_equal(admin_endpoint_name(ADMIN_EP_READYZ), "readyz");
    assert_string_equal(admin_endpoint_name(ADMIN_EP_METRICS), "metrics");
    assert_string_equal(admin_endpoint_name(ADMIN_EP_SESSIONS), "sessions");
    assert_string_equal(admin_endpoint_name(ADMIN_EP_CLOSE), "close");
    assert_string_equal(admin_endpoint_name(ADMIN_EP_OTHER), "other");
    assert_string_equal(admin_overload_name(ADMIN_OVERLOAD_TIMEOUT), "timeout");
    assert_string_equal(admin_overload_name(ADMIN_OVERLOAD_EVICTED), "evicted");
    assert_string_equal(admin_overload_name(ADMIN_OVERLOAD_BUSY), "busy");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_endpoints),
        cmocka_unit_test(test_request_forms),
        cmocka_unit_test(test_close_path),
        cmocka_unit_test(test_wrong_method),
        cmocka_unit_test(test_unknown_path),
        cmocka_unit_test(test_session_id_bounds),
        cmocka_unit_test(test_one_byte_at_a_time),
        cmocka_unit_test(test_empty_feed),
        cmocka_unit_test(test_done_is_final),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_malformed_in_pieces),
        cmocka_unit_test(test_url_bound),
        cmocka_unit_test(test_header_bound),
        cmocka_unit_test(test_url_and_headers_bound),
        cmocka_unit_test(test_body_bound),
        cmocka_unit_test(test_chunked_body_and_trailers),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
