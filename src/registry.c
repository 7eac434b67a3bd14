/* The registry contract's in-process backend: the identity table, and the messages it sends. */
#include "lifeline/registry.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lifeline/identity_table.h"

struct local_registry {
    struct registry base; /* first: the contract's part */
    struct identity_table table;
};

static struct local_registry *local_of(struct registry *r)
{
    return (struct local_registry *)(void *)r;
}

static enum registry_answer local_claim(struct registry *r, const struct identity *id,
                                        struct session_ref self, int replace)
{
    struct session_ref owner, displaced;
    switch (identity_table_claim(&local_of(r)->table, id, self, replace, &owner, &displaced)) {
    case IDENTITY_OWNER:
        return REGISTRY_GO;
    case IDENTITY_REFUSED:
        return REGISTRY_REFUSED;
    case IDENTITY_SUCCESSOR:
        break;
    }
    r->deliver(r->deliver_ctx, owner, REGISTRY_MSG_EVICT);
    if (displaced.worker >= 0)
        r->deliver(r->deliver_ctx, displaced, REGISTRY_MSG_EVICT);
    return REGISTRY_WAIT;
}

static void local_release(struct registry *r, const struct identity *id, struct session_ref self)
{
    struct session_ref next;
    if (identity_table_release(&local_of(r)->table, id, self, &next))
        r->deliver(r->deliver_ctx, next, REGISTRY_MSG_GO);
}

static void local_adopt(struct registry *r, const struct identity *id, struct session_ref self)
{
    local_claim(r, id, self, 1);
}

static void local_destroy(struct registry *r)
{
    identity_table_destroy(&local_of(r)->table);
    free(local_of(r));
}

static const struct registry_ops local_ops = {
    .claim = local_claim,
    .release = local_release,
    .adopt = local_adopt,
    .destroy = local_destroy,
};

int registry_local_new(struct registry **out, registry_deliver_fn deliver, void *ctx)
{
    struct local_registry *l = calloc(1, sizeof(*l));
    if (l == NULL || identity_table_init(&l->table) < 0) {
        free(l);
        return -ENOMEM;
    }
    l->base = (struct registry){ .ops = &local_ops, .deliver = deliver, .deliver_ctx = ctx };
    *out = &l->base;
    return 0;
}

void registry_identity(struct identity *id, const char *route, const struct sockaddr *sa,
                       int with_port)
{
    memset(id, 0, sizeof(*id));
    strncpy(id->route, route, sizeof(id->route) - 1);
    addr_key_of(&id->client, sa, with_port);
}
