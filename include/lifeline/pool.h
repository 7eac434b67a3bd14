/* Per-worker pool of relay buffers: held only while bytes are in flight. */
#ifndef LIFELINE_POOL_H
#define LIFELINE_POOL_H

#include <stddef.h>
#include <uv.h>

#define POOL_CHUNK_SIZE (64 * 1024)

/* One relay buffer. The write request lives in the buffer's header, so
 * queueing bytes for a write allocates nothing more. */
struct chunk {
    struct chunk *next;   /* free list, or a session's not-yet-written queue */
    uv_write_t req;
    void *owner;          /* the relay direction that wrote it */
    size_t len;           /* bytes of data in use */
    char data[POOL_CHUNK_SIZE];
};

/* Not thread-safe: one pool per worker, touched only from its loop. */
struct pool {
    struct chunk *free;
    size_t n_free;
    size_t max_free;      /* cached chunks beyond this go back to the allocator */
    size_t n_out;         /* chunks handed out and not yet returned */
};

void pool_init(struct pool *p, size_t max_free);
/* Returns NULL when memory is exhausted. */
struct chunk *pool_get(struct pool *p);
void pool_put(struct pool *p, struct chunk *c);
/* Frees every cached chunk (the ones handed out must come back first). */
void pool_drain(struct pool *p);

#endif
