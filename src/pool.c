/* Per-worker pool of relay buffers: held only while bytes are in flight. */
#include "lifeline/pool.h"

#include <stdlib.h>

void pool_init(struct pool *p, size_t max_free)
{
    p->free = NULL;
    p->n_free = 0;
    p->max_free = max_free;
    p->n_out = 0;
    p->read_buf = NULL;
}

struct chunk *pool_get(struct pool *p)
{
    struct chunk *c = p->free;
    if (c != NULL) {
        p->free = c->next;
        p->n_free--;
    } else {
        c = malloc(sizeof(*c));
        if (c == NULL)
            return NULL;
    }
    c->next = NULL;
    c->owner = NULL;
    c->len = 0;
    p->n_out++;
    return c;
}

void pool_put(struct pool *p, struct chunk *c)
{
    p->n_out--;
    if (p->n_free >= p->max_free) {
        free(c);
        return;
    }
    c->next = p->free;
    p->free = c;
    p->n_free++;
}

char *pool_read_buffer(struct pool *p)
{
    /* Large enough to be served by mmap: pages are touched only when a
     * read is that large. */
    if (p->read_buf == NULL)
        p->read_buf = malloc(POOL_READ_SIZE);
    return p->read_buf;
}

void pool_drain(struct pool *p)
{
    free(p->read_buf);
    p->read_buf = NULL;
    while (p->free != NULL) {
        struct chunk *c = p->free;
        p->free = c->next;
        free(c);
    }
    p->n_free = 0;
}
