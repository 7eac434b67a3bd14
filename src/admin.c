/* The admin endpoint: HTTP/1.1 on the supervisor's loop (health, readiness, metrics, sessions). */
#include "lifeline/admin.h"

#include <errno.h>
#include <http_parser.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lifeline/log.h"

/* Bounds that keep one client from holding the supervisor: one request per
 * connection, small, and quick. */
#define ADMIN_MAX_CONNS 64
#define ADMIN_URL_MAX 1024
#define ADMIN_HEADERS_MAX 8192
#define ADMIN_BODY_MAX 4096
#define ADMIN_TIMEOUT_MS 5000

enum conn_state {
    CONN_READING,    /* parsing the request */
    CONN_WAITING,    /* the backend holds the request (gathering from workers) */
    CONN_WRITING,    /* the response is on its way */
    CONN_LINGERING,  /* response sent and FIN'd: discarding what the client still sends */
    CONN_CLOSING,    /* handles closing; freed in the last close callback */
};

/* How long a closing connection waits for the client's own close. */
#define ADMIN_LINGER_MS 1000

struct admin_conn {
    struct admin_conn *prev, *next;
    struct admin *a;
    enum conn_state state;
    uv_tcp_t tcp;
    uv_timer_t timer;
    int open_handles;
    int gone;                    /* the client went away while CONN_WAITING */
    http_parser parser;
    size_t header_bytes;
    size_t body_bytes;
    int too_large;               /* 431: headers or URL over the bounds */
    int complete;
    char url[ADMIN_URL_MAX];
    size_t url_len;
    char in[2048];
    uv_write_t write_req;
    uv_shutdown_t shutdown_req;
    char *out;
};

struct admin {
    uv_loop_t *loop;
    uv_tcp_t listener;
    struct admin_backend backend;
    struct admin_conn *conns;
    size_t n_conns;
    int stopping;
    int listener_closed;
};

/* Freed once stopped, with the listener closed and no connection left. */
static void free_if_done(struct admin *a)
{
    if (a->stopping && a->listener_closed && a->n_conns == 0)
        free(a);
}

static const char *status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

/* --- lifetime ----------------------------------------------------------- */

static void conn_closed_cb(uv_handle_t *h)
{
    struct admin_conn *c = h->data;
    if (--c->open_handles > 0)
        return;
    free(c->out);
    free(c);
}

static void conn_close(struct admin_conn *c)
{
    if (c->state == CONN_CLOSING)
        return;
    if (c->state == CONN_WAITING) {
        /* The backend still holds it: close the socket, keep the memory
         * until admin_reply(). */
        c->gone = 1;
        uv_read_stop((uv_stream_t *)&c->tcp);
        return;
    }
    c->state = CONN_CLOSING;
    struct admin *a = c->a;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    a->n_conns--;
    uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
    uv_close((uv_handle_t *)&c->timer, conn_closed_cb);
    free_if_done(a);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void timeout_cb(uv_timer_t *t);

/* Closing with unread request bytes would reset the connection and could
 * destroy the response in flight: FIN first, then read until the client
 * closes too (bounded). */
static void shutdown_cb(uv_shutdown_t *req, int status)
{
    struct admin_conn *c = req->data;
    if (status < 0 || c->state != CONN_WRITING) {
        conn_close(c);
        return;
    }
    c->state = CONN_LINGERING;
    uv_timer_start(&c->timer, timeout_cb, ADMIN_LINGER_MS, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) < 0)
        conn_close(c);
}

static void write_cb(uv_write_t *req, int status)
{
    struct admin_conn *c = req->data;
    c->shutdown_req.data = c;
    if (status < 0 || uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, shutdown_cb) < 0)
        conn_close(c);
}

static void respond(struct admin_conn *c, int status, const char *type, const char *body,
                    const char *extra_headers)
{
    size_t body_len = body != NULL ? strlen(body) : 0;
    /* HEAD: the headers of the GET, without its body. */
    size_t send_len = c->parser.method == HTTP_HEAD ? 0 : body_len;
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                     "Connection: close\r\n\r\n",
                     status, status_text(status), type, body_len, extra_headers ? extra_headers : "");
    c->out = malloc((size_t)n + send_len);
    if (c->out == NULL) {
        conn_close(c);
        return;
    }
    memcpy(c->out, head, (size_t)n);
    if (send_len > 0)
        memcpy(c->out + n, body, send_len);
    c->state = CONN_WRITING;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_buf_t buf = uv_buf_init(c->out, (unsigned)((size_t)n + send_len));
    c->write_req.data = c;
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &buf, 1, write_cb) < 0)
        conn_close(c);
}

static void respond_text(struct admin_conn *c, int status, const char *text)
{
    respond(c, status, "text/plain; charset=utf-8", text, NULL);
}

void admin_reply(struct admin_conn *c, int status, const char *content_type, char *body)
{
    if (c->state != CONN_WAITING) {
        free(body);
        return;
    }
    c->state = CONN_READING; /* so that conn_close() below may free it */
    if (c->gone) {
        free(body);
        conn_close(c);
    } else {
        respond(c, status, content_type, body, NULL);
        free(body);
    }
}

/* --- routing -------------------------------------------------------------- */

/* "/sessions/123/close" -> 123; 0 when the path is not of that form. */
static uint64_t session_close_path(const char *path)
{
    const char *p = path + strlen("/sessions/");
    if (strncmp(path, "/sessions/", strlen("/sessions/")) != 0 || *p < '1' || *p > '9')
        return 0;
    char *end = NULL;
    errno = 0;
    unsigned long long id = strtoull(p, &end, 10);
    if (errno != 0 || strcmp(end, "/close") != 0)
        return 0;
    return id;
}

static void dispatch(struct admin_conn *c)
{
    const struct admin_backend *b = &c->a->backend;
    enum http_method method = (enum http_method)c->parser.method;
    char path[ADMIN_URL_MAX];
    size_t len = strcspn(c->url, "?");
    memcpy(path, c->url, len);
    path[len] = '\0';

    int is_get = method == HTTP_GET || method == HTTP_HEAD;
    uint64_t id = session_close_path(path);
    if (id != 0) {
        if (method != HTTP_POST) {
            respond(c, 405, "text/plain; charset=utf-8", "method not allowed\n", "Allow: POST\r\n");
            return;
        }
        c->state = CONN_WAITING;
        b->close_session(b->ctx, c, id);
        return;
    }
    if (strcmp(path, "/healthz") != 0 && strcmp(path, "/readyz") != 0 &&
        strcmp(path, "/metrics") != 0 && strcmp(path, "/sessions") != 0) {
        respond_text(c, 404, "not found\n");
        return;
    }
    if (!is_get) {
        respond(c, 405, "text/plain; charset=utf-8", "method not allowed\n", "Allow: GET, HEAD\r\n");
        return;
    }
    if (strcmp(path, "/healthz") == 0) {
        int ok = b->healthy(b->ctx);
        respond_text(c, ok ? 200 : 503, ok ? "ok\n" : "a worker loop is not responding\n");
    } else if (strcmp(path, "/readyz") == 0) {
        int ok = b->ready(b->ctx);
        respond_text(c, ok ? 200 : 503, ok ? "ready\n" : "not ready\n");
    } else if (strcmp(path, "/metrics") == 0) {
        char *text = b->metrics(b->ctx);
        if (text == NULL) {
            respond_text(c, 500, "out of memory\n");
            return;
        }
        respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, NULL);
        free(text);
    } else {
        c->state = CONN_WAITING;
        b->sessions(b->ctx, c);
    }
}

/* --- parsing ------------------------------------------------------------- */

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct admin_conn *c = p->data;
    if (c->url_len + len >= sizeof(c->url)) {
        c->too_large = 1;
        return -1;
    }
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    c->url[c->url_len] = '\0';
    return 0;
}

static int on_header(http_parser *p, const char *at, size_t len)
{
    struct admin_conn *c = p->data;
    c->header_bytes += len;
    if (c->header_bytes > ADMIN_HEADERS_MAX) {
        c->too_large = 1;
        return -1;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct admin_conn *c = p->data;
    c->body_bytes += len;
    return c->body_bytes > ADMIN_BODY_MAX ? -1 : 0;
}

static int on_message_complete(http_parser *p)
{
    struct admin_conn *c = p->data;
    c->complete = 1;
    http_parser_pause(p, 1); /* one request per connection */
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_url = on_url,
    .on_header_field = on_header,
    .on_header_value = on_header,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct admin_conn *c = h->data;
    *buf = uv_buf_init(c->in, sizeof(c->in));
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct admin_conn *c = stream->data;
    if (c->state == CONN_LINGERING) {
        if (nread < 0)
            conn_close(c); /* the client closed too */
        return;
    }
    if (c->state != CONN_READING)
        return;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0)
        return;
    size_t used = http_parser_execute(&c->parser, &parser_settings, buf->base, (size_t)nread);
    if (c->complete) {
        uv_timer_stop(&c->timer);
        dispatch(c);
        return;
    }
    if (c->too_large) {
        respond_text(c, 431, "request too large\n");
        return;
    }
    if (HTTP_PARSER_ERRNO(&c->parser) != HPE_OK || used != (size_t)nread) {
        respond_text(c, 400, "bad request\n");
        return;
    }
    if (c->header_bytes + c->url_len > ADMIN_HEADERS_MAX)
        respond_text(c, 431, "request too large\n");
}

static void timeout_cb(uv_timer_t *t)
{
    /* A slow or silent client: give up on it, it holds nothing else. */
    conn_close(t->data);
}

static void connection_cb(uv_stream_t *server, int status)
{
    struct admin *a = server->data;
    if (status < 0)
        return;
    struct admin_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->a = a;
    c->state = CONN_READING;
    uv_tcp_init(a->loop, &c->tcp);
    uv_timer_init(a->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open_handles = 2;
    c->next = a->conns;
    if (a->conns != NULL)
        a->conns->prev = c;
    a->conns = c;
    a->n_conns++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0 || a->n_conns > ADMIN_MAX_CONNS) {
        conn_close(c);
        return;
    }
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    uv_timer_start(&c->timer, timeout_cb, ADMIN_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

static void listener_closed_cb(uv_handle_t *h)
{
    struct admin *a = h->data;
    a->listener_closed = 1;
    free_if_done(a);
}

int admin_start(struct admin **out, uv_loop_t *loop, int fd, const struct admin_backend *b)
{
    struct admin *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return UV_ENOMEM;
    a->loop = loop;
    a->backend = *b;
    uv_tcp_init(loop, &a->listener);
    a->listener.data = a;
    int rc = uv_tcp_open(&a->listener, fd);
    if (rc < 0)
        close(fd); /* not adopted by the handle */
    else
        rc = uv_listen((uv_stream_t *)&a->listener, 128, connection_cb);
    if (rc < 0) {
        a->stopping = 1;
        uv_close((uv_handle_t *)&a->listener, listener_closed_cb);
        return rc;
    }
    *out = a;
    return 0;
}

void admin_stop(struct admin *a)
{
    if (a == NULL || a->stopping)
        return;
    a->stopping = 1;
    struct admin_conn *c = a->conns;
    while (c != NULL) {
        struct admin_conn *next = c->next;
        conn_close(c);
        c = next;
    }
    uv_close((uv_handle_t *)&a->listener, listener_closed_cb);
}
