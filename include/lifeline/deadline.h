/* Many deadlines on one loop: a pairing heap under one uv_timer_t. */
#ifndef LIFELINE_DEADLINE_H
#define LIFELINE_DEADLINE_H

#include <stdint.h>
#include <uv.h>

/* Embedded in whatever has a deadline (a session): 32 bytes and no handle
 * to open or close, where a uv_timer_t is 152 bytes and a handle. The heap
 * is intrusive, so setting a deadline never allocates and never fails. */
struct deadline {
    uint64_t at; /* uv_now() time it is due */
    struct deadline *child;
    struct deadline *next; /* the next sibling */
    struct deadline *prev; /* the previous sibling, or the parent of a first child */
};

/* Not thread-safe: one per loop, touched only from it. */
struct deadlines {
    uv_timer_t timer;
    struct deadline *root; /* the earliest, or NULL */
    size_t n;
    int closing;
    void (*fire)(struct deadline *d);
};

/* `fire` is called for each deadline that is due, once: it is no longer
 * set when the call is made (set it again to be called again). */
int deadlines_init(struct deadlines *q, uv_loop_t *loop, void (*fire)(struct deadline *d));

/* Closes the timer: nothing fires from now on, though deadlines may still
 * be set and cleared (an owner closing after its loop's handles). */
void deadlines_close(struct deadlines *q);

/* A deadline that is not set. */
void deadline_init(struct deadline *d);

/* Sets d (set already or not) to be due at `at`. */
void deadline_set(struct deadlines *q, struct deadline *d, uint64_t at);

/* Clears d; nothing if it is not set. */
void deadline_clear(struct deadlines *q, struct deadline *d);

int deadline_is_set(const struct deadlines *q, const struct deadline *d);

#endif
