/* libFuzzer target: the admin request path (http_parser callbacks, bounds, routing, the kill path). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lifeline/admin.h"

/* libFuzzer's entry point; declared here for -Wmissing-prototypes. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

/* What every route of a whole request must be. */
static void check_route(const struct admin_request *r)
{
    CHECK(r->url_len < sizeof(r->url) && memchr(r->url, '\0', sizeof(r->url)) != NULL);
    struct admin_route rt;
    admin_request_route(r, &rt);
    CHECK((int)rt.endpoint >= 0 && rt.endpoint < ADMIN_EP_COUNT);
    CHECK(rt.status == 0 || rt.status == 404 || rt.status == 405);
    CHECK((rt.status == 404) == (rt.endpoint == ADMIN_EP_OTHER));
    CHECK((rt.status == 405) == (rt.allow != NULL));
    /* The kill path: an id exactly when the path names a session to close. */
    CHECK((rt.endpoint == ADMIN_EP_CLOSE) == (rt.session_id != 0));
    CHECK(rt.head == (r->parser.method == HTTP_HEAD));
    CHECK(admin_endpoint_name(rt.endpoint) != NULL);
}

/* Feeds the bytes in pieces whose sizes the input's first bytes choose, as
 * reads from a socket would deliver them; a result other than MORE sticks. */
static void feed_in_pieces(const uint8_t *cuts, size_t n_cuts, const char *req, size_t len)
{
    struct admin_request r;
    admin_request_init(&r);
    enum admin_parse res = ADMIN_PARSE_MORE;
    size_t off = 0, i = 0;
    while (off < len) {
        size_t piece = n_cuts > 0 ? (size_t)cuts[i++ % n_cuts] + 1 : len;
        if (piece > len - off)
            piece = len - off;
        enum admin_parse now = admin_request_feed(&r, req + off, piece);
        CHECK(res == ADMIN_PARSE_MORE || now == res);
        res = now;
        off += piece;
    }
    CHECK(r.header_bytes <= ADMIN_HEADERS_MAX + len); /* counting stops at the bound */
    if (res == ADMIN_PARSE_DONE)
        check_route(&r);
    /* Once finished or failed, more bytes change nothing. */
    if (res != ADMIN_PARSE_MORE)
        CHECK(admin_request_feed(&r, "GET / HTTP/1.1\r\n\r\n", 18) == res);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    /* data[0]: how many of the following bytes set the piece sizes (0-7);
     * its top bit: the rest is a URL to route in a request of each method,
     * rather than a whole request. */
    size_t n_cuts = data[0] & 7;
    int url_only = (data[0] & 0x80) != 0;
    if (size < 1 + n_cuts)
        return 0;
    const uint8_t *cuts = data + 1;
    const char *rest = (const char *)data + 1 + n_cuts;
    size_t len = size - 1 - n_cuts;

    if (!url_only) {
        feed_in_pieces(cuts, n_cuts, rest, len);
        return 0;
    }
    static const char *const methods[] = { "GET", "HEAD", "POST", "DELETE", "PUT" };
    for (size_t m = 0; m < sizeof(methods) / sizeof(methods[0]); m++) {
        char *req = malloc(len + 64);
        if (req == NULL)
            return 0;
        size_t n = (size_t)snprintf(req, 16, "%s ", methods[m]);
        memcpy(req + n, rest, len);
        n += len;
        static const char tail[] = " HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        memcpy(req + n, tail, sizeof(tail) - 1);
        n += sizeof(tail) - 1;
        feed_in_pieces(cuts, n_cuts, req, n);
        free(req);
    }
    return 0;
}
