/* Per-worker pool of relay buffers: held only while bytes are in flight. */
#ifndef LIFELINE_POOL_H
#define LIFELINE_POOL_H

#include <stddef.h>
#include <uv.h>

#define POOL_CHUNK_SIZE (64 * 1024)
/* The largest single read: one buffer per worker, reused by every read. */
#define POOL_READ_SIZE (1024 * 1024)

/* One relay buffer. The write request lives in the buffer's header, so
 * queueing bytes for a write allocates nothing more. */
struct chunk {
    struct chunk *next; /* free list, or a session's not-yet-written queue */
    uv_write_t req;
    void *owner; /* the relay direction that wrote it */
    size_t len;  /* bytes of data in use */
    char data[POOL_CHUNK_SIZE];
};

/* Not thread-safe: one pool per worker, touched only from its loop. */
struct pool {
    struct chunk *free;
    size_t n_free;
    size_t max_free; /* cached chunks beyond this go back to the allocator */
    size_t n_out;    /* chunks handed out and not yet returned */
    char *read_buf;  /* POOL_READ_SIZE bytes, allocated on first use */
};

void pool_init(struct pool *p, size_t max_free);
/* Returns NULL when memory is exhausted. */
struct chunk *pool_get(struct pool *p);
void pool_put(struct pool *p, struct chunk *c);
/* The worker's read buffer: valid only until the read callback returns,
 * since the next read of any session reuses it. NULL when out of memory. */
char *pool_read_buffer(struct pool *p);
/* Frees the cached chunks and the read buffer (chunks handed out must come
 * back first). */
void pool_drain(struct pool *p);

#endif
