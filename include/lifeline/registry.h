/* The registry contract: which session may talk to the server for a client identity, across workers. */
#ifndef LIFELINE_REGISTRY_H
#define LIFELINE_REGISTRY_H

#include <stdint.h>
#include <sys/socket.h>

#include "lifeline/addr.h"

/*
 * A session whose route has an identity claims it before it connects
 * upstream, and releases it once the server has finished with its
 * connection (so that the server sees the old connection's EOF before the
 * next one of that client exists). The registry answers a claim now, or
 * later through `deliver`:
 *
 *   claim ──▶ REGISTRY_GO       nobody held it: connect now
 *         ──▶ REGISTRY_REFUSED  an owner holds it and on_duplicate is reject
 *         ──▶ REGISTRY_WAIT     an owner holds it and is being evicted: GO
 *                               comes once it has released the identity
 *         ──▶ REGISTRY_PENDING  the backend answers later: GO or REFUSED
 *
 *  While a session waits, EVICT may come instead (a newer claimant
 *  displaced it); it then closes and releases, which withdraws its claim.
 *
 * With on_duplicate "replace", a claim on a held identity sends EVICT to
 * the owner (and to a successor that never got to run); the owner closes
 * as `replaced` and releases, which sends GO to the claimant. A release by
 * a session that never owned the identity (it gave up waiting) only
 * withdraws its claim. Messages go through `deliver`, from any thread, to
 * sessions on any worker; one for a session that is gone is dropped.
 *
 * A REFUSED, UNAVAILABLE or FENCE message ends the session, which then
 * releases as any other. The backends: the in-process table
 * (registry_local_new) and etcd, shared by several instances (cluster.h).
 */

/* A session anywhere in the process: its worker and its process-wide id. */
struct session_ref {
    int worker;
    uint64_t id;
};

/* What makes two connections "the same client" on one route. */
struct identity {
    char route[64];         /* NUL-padded: identities compare as bytes */
    struct addr_key client; /* port 0 when the identity is the address alone */
};

enum registry_answer {
    REGISTRY_GO,      /* the identity is the claimant's: connect upstream */
    REGISTRY_WAIT,    /* taking over from a live owner: GO will come */
    REGISTRY_PENDING, /* not known yet: GO or REFUSED will come */
    REGISTRY_REFUSED, /* held by another session, and kept */
};

/* What the registry tells a session later. */
enum registry_msg {
    REGISTRY_MSG_GO,      /* your claim is granted: connect upstream */
    REGISTRY_MSG_REFUSED, /* your claim is refused: close as rejected */
    REGISTRY_MSG_EVICT,   /* a newer connection of your client replaces you: close as replaced */
    REGISTRY_MSG_UNAVAILABLE, /* nobody can decide your claim: close as cluster_unavailable */
    REGISTRY_MSG_FENCE,       /* the identity may be another's by now: close as fenced */
};

/* How the registry reaches a session. Thread-safe. */
typedef void (*registry_deliver_fn)(void *ctx, struct session_ref to, enum registry_msg msg);

struct registry;

struct registry_ops {
    enum registry_answer (*claim)(struct registry *r, const struct identity *id,
                                  struct session_ref self, int replace);
    void (*release)(struct registry *r, const struct identity *id, struct session_ref self);
    void (*adopt)(struct registry *r, const struct identity *id, struct session_ref self);
    void (*destroy)(struct registry *r);
};

/* The common part of every backend. */
struct registry {
    const struct registry_ops *ops;
    registry_deliver_fn deliver;
    void *deliver_ctx;
};

/* Claims `id` for `self` (replace: on_duplicate is "replace"; else a held
 * identity is refused). Thread-safe. */
static inline enum registry_answer registry_claim(struct registry *r, const struct identity *id,
                                                  struct session_ref self, int replace)
{
    return r->ops->claim(r, id, self, replace);
}

/* `self` is done with `id`: it owned it and the server is finished with
 * its connection, or it gives up its claim. Thread-safe. */
static inline void registry_release(struct registry *r, const struct identity *id,
                                    struct session_ref self)
{
    r->ops->release(r, id, self);
}

/* A session a live upgrade handed over: the identity was its session's in
 * the old process and is this one's now (a second adopted session of one
 * client makes the first one's successor). Thread-safe. */
static inline void registry_adopt(struct registry *r, const struct identity *id,
                                  struct session_ref self)
{
    r->ops->adopt(r, id, self);
}

static inline void registry_destroy(struct registry *r) { r->ops->destroy(r); }

/* The in-process backend. Returns 0 and *out, or -ENOMEM. */
int registry_local_new(struct registry **out, registry_deliver_fn deliver, void *ctx);

/* Builds the identity of a client address; with_port=0 keeps the address
 * only. An IPv4-mapped address is the IPv4 address it maps. */
void registry_identity(struct identity *id, const char *route, const struct sockaddr *sa,
                       int with_port);

#endif
