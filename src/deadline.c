/* A pairing heap of deadlines under one libuv timer, armed for the root.
 *
 * Insert is a meld with the root, O(1); removing a node melds its
 * children pairwise, then right to left, O(log n) amortised. A worker with
 * thousands of idle sessions keeps one libuv timer instead of thousands. */
#include <stddef.h>

#include "lifeline/deadline.h"

/* Makes b a child of a (a is due first, or as soon); returns a. */
static struct deadline *link_under(struct deadline *a, struct deadline *b)
{
    b->prev = a;
    b->next = a->child;
    if (a->child != NULL)
        a->child->prev = b;
    a->child = b;
    return a;
}

static struct deadline *meld(struct deadline *a, struct deadline *b)
{
    if (a == NULL)
        return b;
    if (b == NULL)
        return a;
    a->prev = a->next = b->prev = b->next = NULL;
    return b->at < a->at ? link_under(b, a) : link_under(a, b);
}

/* The siblings from `first` on as one heap: pairs left to right, then the
 * pairs right to left. */
static struct deadline *meld_siblings(struct deadline *first)
{
    struct deadline *pairs = NULL; /* melded pairs, in reverse order through next */
    while (first != NULL) {
        struct deadline *a = first, *b = a->next;
        first = b != NULL ? b->next : NULL;
        struct deadline *m = meld(a, b);
        m->next = pairs;
        pairs = m;
    }
    struct deadline *root = NULL;
    while (pairs != NULL) {
        struct deadline *m = pairs;
        pairs = m->next;
        root = meld(root, m);
    }
    if (root != NULL)
        root->prev = root->next = NULL;
    return root;
}

int deadline_is_set(const struct deadlines *q, const struct deadline *d)
{
    return d == q->root || d->prev != NULL;
}

void deadline_init(struct deadline *d) { *d = (struct deadline){ 0 }; }

static void arm(struct deadlines *q);
static void take_out(struct deadlines *q, struct deadline *d);

static void timer_cb(uv_timer_t *t)
{
    struct deadlines *q = t->data;
    uint64_t now = uv_now(t->loop);
    /* At most as many as were set on entry: a fire that keeps setting its
     * deadline for now cannot hold this loop forever. */
    size_t budget = q->n;
    while (!q->closing && q->root != NULL && q->root->at <= now && budget-- > 0) {
        struct deadline *d = q->root;
        take_out(q, d);
        q->fire(d);
    }
    arm(q);
}

static void arm(struct deadlines *q)
{
    if (q->closing)
        return;
    if (q->root == NULL) {
        uv_timer_stop(&q->timer);
        return;
    }
    /* At least 1 ms: libuv 1.44 runs a timer started at 0 from its own
     * callback again before it polls, so a deadline set again for now
     * would keep I/O waiting. */
    uint64_t now = uv_now(q->timer.loop);
    uv_timer_start(&q->timer, timer_cb, q->root->at > now ? q->root->at - now : 1, 0);
}

int deadlines_init(struct deadlines *q, uv_loop_t *loop, void (*fire)(struct deadline *d))
{
    *q = (struct deadlines){ .fire = fire };
    int rc = uv_timer_init(loop, &q->timer);
    q->timer.data = q;
    return rc;
}

void deadlines_close(struct deadlines *q)
{
    q->closing = 1;
    if (!uv_is_closing((uv_handle_t *)&q->timer))
        uv_close((uv_handle_t *)&q->timer, NULL);
}

/* Takes d out of the heap, or does nothing if it is not in it. */
static void take_out(struct deadlines *q, struct deadline *d)
{
    if (d == q->root) {
        q->root = meld_siblings(d->child);
    } else if (d->prev != NULL) {
        if (d->prev->child == d)
            d->prev->child = d->next;
        else
            d->prev->next = d->next;
        if (d->next != NULL)
            d->next->prev = d->prev;
        q->root = meld(q->root, meld_siblings(d->child));
    } else {
        return;
    }
    q->n--;
    d->child = d->next = d->prev = NULL;
}

void deadline_set(struct deadlines *q, struct deadline *d, uint64_t at)
{
    struct deadline *old_root = q->root;
    uint64_t old_at = old_root != NULL ? old_root->at : 0;
    take_out(q, d);
    d->at = at;
    d->child = d->next = d->prev = NULL;
    q->root = meld(q->root, d);
    q->n++;
    if (q->root != old_root || q->root->at != old_at)
        arm(q);
}

void deadline_clear(struct deadlines *q, struct deadline *d)
{
    if (!deadline_is_set(q, d))
        return;
    struct deadline *old_root = q->root;
    take_out(q, d);
    if (q->root != old_root)
        arm(q);
}
