/* Client identities -> owning session, across workers: who may talk to the server. */
#ifndef LIFELINE_REGISTRY_H
#define LIFELINE_REGISTRY_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "lifeline/addr.h"
#include "lifeline/table.h"

/* A session anywhere in the process: its worker and its process-wide id. */
struct session_ref {
    int worker;
    uint64_t id;
};

/* What makes two connections "the same client" on one route. */
struct identity {
    char route[64];           /* NUL-padded: identities compare as bytes */
    struct addr_key client;   /* port 0 when the identity is the address alone */
};

enum registry_claim {
    REGISTRY_OWNER,       /* nobody held it: go ahead */
    REGISTRY_SUCCESSOR,   /* an owner holds it: it must be evicted; wait for registry_release() */
    REGISTRY_REFUSED,     /* an owner holds it and the policy keeps it */
};

struct registry {
    pthread_mutex_t lock;
    struct table entries;     /* struct registry_entry, by identity */
};

int registry_init(struct registry *r);
void registry_destroy(struct registry *r);

/* Claims `id` for `self`. With replace=1, a held identity makes `self` the
 * successor: *owner is the session to evict, and *displaced (worker -1 when
 * none) a previous successor that never got to run and must be closed. With
 * replace=0, a held identity is REGISTRY_REFUSED. */
enum registry_claim registry_claim(struct registry *r, const struct identity *id,
                                   struct session_ref self, int replace,
                                   struct session_ref *owner, struct session_ref *displaced);

/* `self` is done with the identity (owner finished, or successor gave up).
 * Returns 1 and sets *next when a successor now owns it and must be told to
 * go on; 0 otherwise. */
int registry_release(struct registry *r, const struct identity *id, struct session_ref self,
                     struct session_ref *next);

/* Builds the identity of a client address; with_port=0 keeps the address only. */
void registry_identity(struct identity *id, const char *route, const struct sockaddr *sa,
                       int with_port);

#endif
