/* Questions the supervisor asks every worker at once, each a typed message with its own completion. */
#include "lifeline/request.h"

#include <stdlib.h>

struct request *request_new(enum request_type type, size_t n_workers,
                            void (*complete)(struct request *r), void *owner)
{
    struct request *r = NULL;
    switch (type) {
    case REQUEST_LIST: {
        struct list_request *l = calloc(1, sizeof(*l));
        if (l != NULL && (l->parts = calloc(n_workers + 1, sizeof(*l->parts))) == NULL) {
            free(l);
            l = NULL;
        }
        if (l != NULL)
            l->n_parts = n_workers;
        r = l != NULL ? &l->base : NULL;
        break;
    }
    case REQUEST_KILL: {
        struct kill_request *k = calloc(1, sizeof(*k));
        r = k != NULL ? &k->base : NULL;
        break;
    }
    case REQUEST_RELOAD: {
        struct reload_request *rl = calloc(1, sizeof(*rl));
        r = rl != NULL ? &rl->base : NULL;
        break;
    }
    case REQUEST_FREEZE: {
        struct freeze_request *f = calloc(1, sizeof(*f));
        if (f != NULL && (f->parts = calloc(n_workers + 1, sizeof(*f->parts))) == NULL) {
            free(f);
            f = NULL;
        }
        if (f != NULL)
            f->n_parts = n_workers;
        r = f != NULL ? &f->base : NULL;
        break;
    }
    case REQUEST_THAW:
    case REQUEST_RELEASE:
        r = calloc(1, sizeof(*r));
        break;
    }
    if (r != NULL) {
        r->type = type;
        r->complete = complete;
        r->owner = owner;
    }
    return r;
}

static void done_cb(uv_async_t *a)
{
    struct request *r = a->data;
    /* Each worker wrote its answer and then released the lock; the last
     * one's wakeup brought us here. That order also holds through
     * uv_async_send, but by atomics that ThreadSanitizer does not see:
     * taking the lock makes it visible. */
    uv_mutex_lock(&r->lock);
    uv_mutex_unlock(&r->lock);
    r->complete(r);
}

int request_begin(struct request *r, uv_loop_t *loop, size_t n_posted)
{
    int rc = uv_mutex_init(&r->lock);
    if (rc < 0)
        return rc;
    rc = uv_async_init(loop, &r->done, done_cb);
    if (rc < 0) {
        uv_mutex_destroy(&r->lock);
        return rc;
    }
    r->done.data = r;
    /* One more than posted, dropped by the asker once every post is made,
     * so that answers racing the posting cannot complete it early. */
    r->pending = n_posted + 1;
    return 0;
}

void request_answered(struct request *r)
{
    uv_mutex_lock(&r->lock);
    int last = --r->pending == 0;
    uv_mutex_unlock(&r->lock);
    if (last)
        uv_async_send(&r->done);
}

static void free_now(struct request *r)
{
    if (r->type == REQUEST_LIST) {
        struct list_request *l = (struct list_request *)r;
        for (size_t i = 0; l->parts != NULL && i < l->n_parts; i++)
            free(l->parts[i]);
        free(l->parts);
    } else if (r->type == REQUEST_FREEZE) {
        struct freeze_request *f = (struct freeze_request *)r;
        for (size_t i = 0; f->parts != NULL && i < f->n_parts; i++) {
            free(f->parts[i].recs);
            free(f->parts[i].fds);
            free(f->parts[i].listen_fds);
        }
        free(f->parts);
    }
    free(r);
}

static void closed_cb(uv_handle_t *h)
{
    struct request *r = h->data;
    uv_mutex_destroy(&r->lock);
    free_now(r);
}

void request_free(struct request *r)
{
    if (r->done.data == r)
        uv_close((uv_handle_t *)&r->done, closed_cb);
    else
        free_now(r);
}
