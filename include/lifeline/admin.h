/* The admin endpoint: HTTP/1.1 on the supervisor's loop (health, readiness, metrics, sessions). */
#ifndef LIFELINE_ADMIN_H
#define LIFELINE_ADMIN_H

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct admin;
struct admin_conn;

/* What the endpoint asks of the process. The two that need the workers
 * answer later, through admin_reply(). All run on the admin loop. */
struct admin_backend {
    void *ctx;
    int (*healthy)(void *ctx);               /* 1: every worker loop is responsive */
    int (*ready)(void *ctx);                 /* 1: listeners bound, not draining */
    char *(*metrics)(void *ctx);             /* malloc'd Prometheus text, NULL on ENOMEM */
    void (*sessions)(void *ctx, struct admin_conn *c);
    void (*close_session)(void *ctx, struct admin_conn *c, uint64_t id);
};

/* Listens on `sa` with the socket `fd` already bound (bound before any
 * privilege drop). Returns 0 or a negative UV error. */
int admin_start(struct admin **out, uv_loop_t *loop, int fd, const struct admin_backend *b);

/* Answers a request the backend kept; takes `body` (malloc'd, may be NULL). */
void admin_reply(struct admin_conn *c, int status, const char *content_type, char *body);

/* Stops listening and closes idle connections; requests the backend still
 * holds are answered (or dropped) when it replies. */
void admin_stop(struct admin *a);

#endif
