/* A small etcd v3 client: the JSON gateway over HTTP (libcurl's multi interface), driven by one libuv loop. */
#define _GNU_SOURCE /* vasprintf */
#include "lifeline/etcd.h"

#include <cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "lifeline/config.h"
#include "lifeline/liveness.h"
#include "lifeline/net.h"

/* A reply bigger than this is not one of ours: the call fails. */
#define REPLY_MAX (1u << 20)

enum op {
    OP_GRANT,
    OP_KEEPALIVE,
    OP_REVOKE,
    OP_CREATE,
    OP_DELETE,
    OP_PUT,
    OP_WATCH,
};

struct call {
    LIST_ENTRY(call) link;
    struct etcd *e;
    enum op op;
    CURL *easy;
    const char *path; /* "/v3/kv/txn" */
    char *body;       /* the request, JSON text */
    size_t tries;     /* endpoints tried so far */
    size_t endpoint;  /* the one being tried */
    uint64_t started_ns;
    char *reply; /* what came back; for a watch, the part of a message not yet parsed */
    size_t len, cap;
    etcd_done_fn done;
    etcd_event_fn event;
    etcd_watch_state_fn state;
    void *arg;
    int created;       /* a watch: its first message came */
    int64_t compacted; /* a watch etcd cancelled: where history starts now (0: not cancelled) */
};

struct etcd_watch {
    struct call c;
};

struct socket_ctx {
    uv_poll_t poll;
    struct etcd *e;
    curl_socket_t fd;
};

struct etcd {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    char **endpoints;
    size_t n;
    size_t current; /* the member tried first */
    uint32_t timeout_ms;
    LIST_HEAD(, call) calls;
    int freeing;
};

/* --- base64 (the gateway's form of keys and values) -------------------- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const char *s, size_t n)
{
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)(unsigned char)s[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)(unsigned char)s[i + 1] << 8;
        if (i + 2 < n)
            v |= (unsigned char)s[i + 2];
        *o++ = b64[v >> 18];
        *o++ = b64[(v >> 12) & 63];
        *o++ = i + 1 < n ? b64[(v >> 6) & 63] : '=';
        *o++ = i + 2 < n ? b64[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* Decodes into a NUL-terminated copy; NULL when `s` is not base64. */
static char *b64_decode(const char *s)
{
    size_t n = strlen(s);
    char *out = malloc(n / 4 * 3 + 3), *o = out; /* + 2: input without its padding */
    if (out == NULL)
        return NULL;
    uint32_t v = 0;
    int bits = 0;
    for (size_t i = 0; i < n && s[i] != '='; i++) {
        const char *p = strchr(b64, s[i]);
        if (p == NULL || s[i] == '\0') {
            free(out);
            return NULL;
        }
        v = (v << 6) | (uint32_t)(p - b64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *o++ = (char)((v >> bits) & 0xff);
        }
    }
    *o = '\0';
    return out;
}

/* The gateway writes int64 as a JSON string. */
static int64_t json_i64(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (cJSON_IsString(v))
        return strtoll(v->valuestring, NULL, 10);
    if (cJSON_IsNumber(v))
        return (int64_t)v->valuedouble;
    return 0;
}

static uint64_t now_ns(void) { return uv_hrtime(); }

/* --- the libuv side of libcurl's multi interface ------------------------- */

static void check_done(struct etcd *e);
static void flush(struct etcd *e);

static void poll_cb(uv_poll_t *p, int status, int events)
{
    struct socket_ctx *s = p->data;
    struct etcd *e = s->e;
    int flags = status < 0 ? CURL_CSELECT_ERR : 0;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(e->multi, s->fd, flags, &running);
    flush(e);
    check_done(e);
}

static void socket_closed_cb(uv_handle_t *h) { free(h->data); }

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct etcd *e = userp;
    struct socket_ctx *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, socket_closed_cb);
            curl_multi_assign(e->multi, fd, NULL);
        }
        return 0;
    }
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL)
            return -1;
        s->e = e;
        s->fd = fd;
        if (uv_poll_init_socket(e->loop, &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        curl_multi_assign(e->multi, fd, s);
    }
    int events = (what & CURL_POLL_IN ? UV_READABLE : 0) | (what & CURL_POLL_OUT ? UV_WRITABLE : 0);
    uv_poll_start(&s->poll, events, poll_cb);
    return 0;
}

static void timer_cb(uv_timer_t *t)
{
    struct etcd *e = t->data;
    int running;
    curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    flush(e);
    check_done(e);
}

static int timer_fn(CURLM *multi, long timeout_ms, void *userp)
{
    struct etcd *e = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&e->timer);
    else
        uv_timer_start(&e->timer, timer_cb, (uint64_t)timeout_ms, 0);
    return 0;
}

/* A member that stopped answering on an open stream is found by keepalive
 * within about three seconds, not by the kernel's two hours. */
static int sockopt_cb(void *clientp, curl_socket_t fd, curlsocktype purpose)
{
    static const struct heartbeat_config etcd_liveness = {
        .keepalive_idle_ms = 1000,
        .keepalive_interval_ms = 1000,
        .keepalive_count = 2,
        .user_timeout_ms = 3000,
    };
    (void)liveness_apply(fd, &etcd_liveness);
    net_set_nodelay(fd);
    return CURL_SOCKOPT_OK;
}

/* --- calls ------------------------------------------------------------- */

static void call_free(struct call *c)
{
    if (c->easy != NULL) {
        curl_multi_remove_handle(c->e->multi, c->easy);
        curl_easy_cleanup(c->easy);
    }
    LIST_REMOVE(c, link);
    free(c->body);
    free(c->reply);
    free(c);
}

static int append(struct call *c, const char *data, size_t n)
{
    if (c->len + n + 1 > c->cap) {
        size_t cap = c->cap ? c->cap : 1024;
        while (cap < c->len + n + 1)
            cap *= 2;
        if (cap > REPLY_MAX)
            return -1;
        char *r = realloc(c->reply, cap);
        if (r == NULL)
            return -1;
        c->reply = r;
        c->cap = cap;
    }
    memcpy(c->reply + c->len, data, n);
    c->len += n;
    c->reply[c->len] = '\0';
    return 0;
}

static void watch_message(struct call *c, const char *text);

/* Each gateway stream message is one JSON object on its own line. */
static void watch_lines(struct call *c)
{
    char *start = c->reply, *nl;
    while ((nl = memchr(start, '\n', c->len - (size_t)(start - c->reply))) != NULL) {
        *nl = '\0';
        watch_message(c, start);
        start = nl + 1;
    }
    c->len -= (size_t)(start - c->reply);
    memmove(c->reply, start, c->len);
    if (c->reply != NULL)
        c->reply[c->len] = '\0';
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    struct call *c = userp;
    size_t n = size * nmemb;
    if (append(c, data, n) < 0)
        return 0; /* too big: the transfer fails */
    return n;     /* a watch's messages are handed out after libcurl returns (flush) */
}

/* Hands out the watch messages that came in. Not from inside libcurl's
 * callbacks: a callback may start a call, which libcurl refuses there. */
static void flush(struct etcd *e)
{
    struct call *c, *next;
    for (c = LIST_FIRST(&e->calls); c != NULL; c = next) {
        next = LIST_NEXT(c, link);
        if (c->op == OP_WATCH && c->len > 0)
            watch_lines(c);
        if (c->op == OP_WATCH && c->compacted != 0) {
            int64_t compacted = c->compacted;
            etcd_watch_state_fn state = c->state;
            void *arg = c->arg;
            e->current = (c->endpoint + 1) % e->n;
            call_free(c);
            state(arg, -ESTALE, compacted > 0 ? compacted : 0);
            next = LIST_FIRST(&e->calls); /* the callback may have started calls */
        }
    }
}

static int start_attempt(struct call *c)
{
    struct etcd *e = c->e;
    char url[512];
    c->endpoint = (e->current + c->tries) % e->n;
    snprintf(url, sizeof(url), "%s%s", e->endpoints[c->endpoint], c->path);
    c->len = 0;
    c->started_ns = now_ns();
    curl_easy_setopt(c->easy, CURLOPT_URL, url);
    return curl_multi_add_handle(e->multi, c->easy) == CURLM_OK ? 0 : -ENOMEM;
}

static struct call *call_new(struct etcd *e, enum op op, const char *path, char *body)
{
    struct call *c = calloc(1, op == OP_WATCH ? sizeof(struct etcd_watch) : sizeof(*c));
    if (c == NULL || body == NULL || (c->easy = curl_easy_init()) == NULL) {
        free(body);
        free(c);
        return NULL;
    }
    c->e = e;
    c->op = op;
    c->path = path;
    c->body = body;
    LIST_INSERT_HEAD(&e->calls, c, link);
    curl_easy_setopt(c->easy, CURLOPT_PRIVATE, c);
    curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)e->timeout_ms);
    if (op != OP_WATCH)
        curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, (long)e->timeout_ms);
    curl_easy_setopt(c->easy, CURLOPT_SOCKOPTFUNCTION, sockopt_cb);
    curl_easy_setopt(c->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    /* An etcd member that comes back at a new address (a rescheduled Pod)
     * is found within a second, not after libcurl's default 60 s. */
    curl_easy_setopt(c->easy, CURLOPT_DNS_CACHE_TIMEOUT, 1L);
    return c;
}

static int submit(struct call *c)
{
    int rc = start_attempt(c);
    if (rc < 0)
        call_free(c);
    return rc;
}

/* Fills `res` from a unary reply. Returns 0, or -EPROTO with res->error. */
static int parse_reply(struct call *c, const cJSON *root, struct etcd_result *res, char **key,
                       char **value)
{
    const cJSON *header = cJSON_GetObjectItemCaseSensitive(root, "header");
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(root, "result");
    if (c->op == OP_KEEPALIVE && result != NULL) /* a stream's one message */
        root = result, header = cJSON_GetObjectItemCaseSensitive(root, "header");
    res->revision = json_i64(header, "revision");
    switch (c->op) {
    case OP_GRANT:
        res->lease = json_i64(root, "ID");
        res->ttl_s = json_i64(root, "TTL");
        if (res->lease == 0) {
            res->error = "no lease in the reply";
            return -EPROTO;
        }
        break;
    case OP_KEEPALIVE:
        res->ttl_s = json_i64(root, "TTL");
        break;
    case OP_CREATE: {
        res->succeeded = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "succeeded"));
        if (res->succeeded)
            break;
        const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "responses");
        const cJSON *range =
            cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(rs, 0), "response_range");
        const cJSON *kv = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(range, "kvs"), 0);
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(kv, "key");
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(kv, "value");
        if (cJSON_IsString(k)) {
            *key = b64_decode(k->valuestring);
            *value = b64_decode(cJSON_IsString(v) ? v->valuestring : "");
            if (*key == NULL || *value == NULL) {
                res->error = "a key or value that is not base64";
                return -EPROTO;
            }
            res->kv = (struct etcd_kv){ .key = *key,
                                        .value = *value,
                                        .lease = json_i64(kv, "lease"),
                                        .mod_revision = json_i64(kv, "mod_revision") };
        }
        break;
    }
    case OP_DELETE:
        res->succeeded = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "succeeded"));
        break;
    case OP_REVOKE:
    case OP_PUT:
    case OP_WATCH:
        break;
    }
    return 0;
}

/* A failure worth trying on another member: it says nothing about etcd's data. */
static int retryable(CURLcode cc, long http) { return cc != CURLE_OK || http >= 500; }

static void unary_done(struct call *c, CURLcode cc)
{
    struct etcd *e = c->e;
    long http = 0;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &http);
    struct etcd_result res = { .rtt_us = (now_ns() - c->started_ns) / 1000 };
    char *key = NULL, *value = NULL;
    char errbuf[160];
    cJSON *root = NULL;
    if (retryable(cc, http)) {
        curl_multi_remove_handle(e->multi, c->easy);
        if (++c->tries < e->n && start_attempt(c) == 0)
            return;
        res.status = cc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT
                     : cc == CURLE_COULDNT_CONNECT  ? -ECONNREFUSED
                                                    : -EIO;
        snprintf(errbuf, sizeof(errbuf), "%s", cc != CURLE_OK ? curl_easy_strerror(cc) : "");
        if (cc == CURLE_OK)
            snprintf(errbuf, sizeof(errbuf), "HTTP %ld: %.100s", http, c->reply ? c->reply : "");
        res.error = errbuf;
        e->current = (c->endpoint + 1) % e->n;
    } else {
        e->current = c->endpoint;
        root = c->reply != NULL ? cJSON_Parse(c->reply) : NULL;
        if (http != 200 || root == NULL) {
            snprintf(errbuf, sizeof(errbuf), "HTTP %ld: %.100s", http, c->reply ? c->reply : "");
            res.status = -EPROTO;
            res.error = errbuf;
        } else {
            res.status = parse_reply(c, root, &res, &key, &value);
        }
    }
    etcd_done_fn done = c->done;
    void *arg = c->arg;
    call_free(c);
    done(arg, &res);
    cJSON_Delete(root);
    free(key);
    free(value);
}

static void watch_message(struct call *c, const char *text)
{
    cJSON *root = cJSON_Parse(text);
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(root, "result");
    if (result == NULL) {
        cJSON_Delete(root);
        return; /* an error object: the stream ends next */
    }
    int64_t revision = json_i64(cJSON_GetObjectItemCaseSensitive(result, "header"), "revision");
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(result, "canceled"))) {
        /* etcd ended the watch but keeps the stream open (a start revision
         * compacted away, for one): end it here. */
        int64_t compact = json_i64(result, "compact_revision");
        c->compacted = compact > 0 ? compact : -1;
        cJSON_Delete(root);
        return;
    }
    if (!c->created) {
        c->created = 1;
        c->e->current = c->endpoint;
        c->state(c->arg, 0, revision);
    }
    const cJSON *ev;
    cJSON_ArrayForEach(ev, cJSON_GetObjectItemCaseSensitive(result, "events"))
    {
        const cJSON *kv = cJSON_GetObjectItemCaseSensitive(ev, "kv");
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(ev, "type");
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(kv, "key");
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(kv, "value");
        int del = cJSON_IsString(type) && strcmp(type->valuestring, "DELETE") == 0;
        char *key = cJSON_IsString(k) ? b64_decode(k->valuestring) : NULL;
        char *value = !del && cJSON_IsString(v) ? b64_decode(v->valuestring) : NULL;
        if (key != NULL) {
            struct etcd_kv e = { .key = key,
                                 .value = value,
                                 .lease = json_i64(kv, "lease"),
                                 .mod_revision = json_i64(kv, "mod_revision") };
            c->event(c->arg, del ? ETCD_DELETE : ETCD_PUT, &e);
        }
        free(key);
        free(value);
    }
    cJSON_Delete(root);
}

static void watch_done(struct call *c, CURLcode cc)
{
    struct etcd *e = c->e;
    if (c->len > 0)
        watch_lines(c);
    if (!c->created) {
        /* Never established: try the next member, each once. */
        curl_multi_remove_handle(e->multi, c->easy);
        if (++c->tries < e->n && start_attempt(c) == 0)
            return;
    }
    e->current = (c->endpoint + 1) % e->n;
    etcd_watch_state_fn state = c->state;
    void *arg = c->arg;
    call_free(c);
    state(arg, cc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -EPIPE, 0);
}

static void check_done(struct etcd *e)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(e->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        struct call *c;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        CURLcode cc = m->data.result;
        if (c->op == OP_WATCH)
            watch_done(c, cc);
        else
            unary_done(c, cc);
    }
}

/* --- the operations ---------------------------------------------------- */

static int unary(struct etcd *e, enum op op, const char *path, char *body, etcd_done_fn done,
                 void *arg)
{
    struct call *c = call_new(e, op, path, body);
    if (c == NULL)
        return -ENOMEM;
    c->done = done;
    c->arg = arg;
    return submit(c);
}

/* printf into a new string; NULL on ENOMEM. */
__attribute__((format(printf, 1, 2))) static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    if (vasprintf(&s, f, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

int etcd_lease_grant(struct etcd *e, int64_t ttl_s, etcd_done_fn done, void *arg)
{
    return unary(e, OP_GRANT, "/v3/lease/grant", fmt("{\"TTL\":\"%" PRId64 "\"}", ttl_s), done,
                 arg);
}

int etcd_lease_keepalive(struct etcd *e, int64_t lease, etcd_done_fn done, void *arg)
{
    return unary(e, OP_KEEPALIVE, "/v3/lease/keepalive", fmt("{\"ID\":\"%" PRId64 "\"}", lease),
                 done, arg);
}

int etcd_lease_revoke(struct etcd *e, int64_t lease, etcd_done_fn done, void *arg)
{
    return unary(e, OP_REVOKE, "/v3/lease/revoke", fmt("{\"ID\":\"%" PRId64 "\"}", lease), done,
                 arg);
}

int etcd_create(struct etcd *e, const char *key, const char *value, int64_t lease,
                etcd_done_fn done, void *arg)
{
    char *k = b64_encode(key, strlen(key)), *v = b64_encode(value, strlen(value));
    char *body = k && v ? fmt("{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\","
                              "\"create_revision\":\"0\"}],"
                              "\"success\":[{\"request_put\":{\"key\":\"%s\",\"value\":\"%s\","
                              "\"lease\":\"%" PRId64 "\"}}],"
                              "\"failure\":[{\"request_range\":{\"key\":\"%s\"}}]}",
                              k, k, v, lease, k)
                        : NULL;
    free(k);
    free(v);
    return unary(e, OP_CREATE, "/v3/kv/txn", body, done, arg);
}

int etcd_delete_if_lease(struct etcd *e, const char *key, const char *also, int64_t lease,
                         etcd_done_fn done, void *arg)
{
    char *k = b64_encode(key, strlen(key));
    char *a = also != NULL ? b64_encode(also, strlen(also)) : NULL;
    char *body = NULL;
    if (k != NULL && (also == NULL || a != NULL))
        body = fmt("{\"compare\":[{\"key\":\"%s\",\"target\":\"LEASE\",\"lease\":\"%" PRId64
                   "\"}],\"success\":[{\"request_delete_range\":{\"key\":\"%s\"}}%s%s%s]}",
                   k, lease, k, a ? ",{\"request_delete_range\":{\"key\":\"" : "", a ? a : "",
                   a ? "\"}}" : "");
    free(k);
    free(a);
    return unary(e, OP_DELETE, "/v3/kv/txn", body, done, arg);
}

int etcd_put(struct etcd *e, const char *key, const char *value, int64_t lease, etcd_done_fn done,
             void *arg)
{
    char *k = b64_encode(key, strlen(key)), *v = b64_encode(value, strlen(value));
    char *body =
        k && v ? fmt("{\"key\":\"%s\",\"value\":\"%s\",\"lease\":\"%" PRId64 "\"}", k, v, lease)
               : NULL;
    free(k);
    free(v);
    return unary(e, OP_PUT, "/v3/kv/put", body, done, arg);
}

int etcd_watch(struct etcd *e, const char *prefix, int64_t from, etcd_event_fn event,
               etcd_watch_state_fn state, void *arg, struct etcd_watch **out)
{
    /* The end of a prefix range: the prefix with its last byte plus one. */
    size_t n = strlen(prefix);
    char *end = strdup(prefix);
    if (end == NULL || n == 0) {
        free(end);
        return -ENOMEM;
    }
    end[n - 1]++;
    char *k = b64_encode(prefix, n), *r = b64_encode(end, n);
    free(end);
    /* fragment: a message past etcd's size limit (every key of an expired
     * lease deleted at once) comes in parts rather than not at all. */
    char *body = k && r ? fmt("{\"create_request\":{\"key\":\"%s\",\"range_end\":\"%s\","
                              "\"start_revision\":\"%" PRId64 "\",\"fragment\":true}}",
                              k, r, from)
                        : NULL;
    free(k);
    free(r);
    struct call *c = call_new(e, OP_WATCH, "/v3/watch", body);
    if (c == NULL)
        return -ENOMEM;
    c->event = event;
    c->state = state;
    c->arg = arg;
    *out = (struct etcd_watch *)(void *)c;
    return submit(c);
}

void etcd_watch_cancel(struct etcd_watch *w) { call_free(&w->c); }

/* --- lifetime ---------------------------------------------------------- */

int etcd_new(struct etcd **out, uv_loop_t *loop, char *const *endpoints, size_t n,
             uint32_t timeout_ms, long max_connections)
{
    struct etcd *e = calloc(1, sizeof(*e));
    if (e == NULL || n == 0)
        goto fail;
    e->loop = loop;
    e->timeout_ms = timeout_ms;
    e->n = n;
    LIST_INIT(&e->calls);
    if ((e->endpoints = calloc(n, sizeof(char *))) == NULL)
        goto fail;
    for (size_t i = 0; i < n; i++)
        if ((e->endpoints[i] = strdup(endpoints[i])) == NULL)
            goto fail;
    if ((e->multi = curl_multi_init()) == NULL)
        goto fail;
    uv_timer_init(loop, &e->timer);
    e->timer.data = e;
    curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, e);
    curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, timer_fn);
    curl_multi_setopt(e->multi, CURLMOPT_TIMERDATA, e);
    curl_multi_setopt(e->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, max_connections);
    curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, max_connections);
    *out = e;
    return 0;
fail:
    if (e != NULL) {
        for (size_t i = 0; e->endpoints != NULL && i < n; i++)
            free(e->endpoints[i]);
        free(e->endpoints);
    }
    free(e);
    return -ENOMEM;
}

const char *etcd_endpoint(const struct etcd *e) { return e->endpoints[e->current]; }

static void timer_closed_cb(uv_handle_t *h)
{
    struct etcd *e = h->data;
    for (size_t i = 0; i < e->n; i++)
        free(e->endpoints[i]);
    free(e->endpoints);
    free(e);
}

void etcd_free(struct etcd *e)
{
    while (!LIST_EMPTY(&e->calls))
        call_free(LIST_FIRST(&e->calls));
    /* Removing the last handles closed their sockets through socket_cb. */
    curl_multi_cleanup(e->multi);
    uv_close((uv_handle_t *)&e->timer, timer_closed_cb);
}
