/* The in-process table of client identities: owner and successor per identity, under one lock. */
#ifndef LIFELINE_IDENTITY_TABLE_H
#define LIFELINE_IDENTITY_TABLE_H

#include <pthread.h>

#include "lifeline/registry.h"
#include "lifeline/table.h"

enum identity_claim {
    IDENTITY_OWNER,     /* nobody held it: go ahead */
    IDENTITY_SUCCESSOR, /* an owner holds it: it must be evicted; wait for the release */
    IDENTITY_REFUSED,   /* an owner holds it and the policy keeps it */
};

struct identity_table {
    pthread_mutex_t lock;
    struct table entries; /* struct identity_entry, by identity */
};

int identity_table_init(struct identity_table *t);
void identity_table_destroy(struct identity_table *t);

/* Claims `id` for `self`. With replace=1, a held identity makes `self` the
 * successor: *owner is the session to evict, and *displaced (worker -1 when
 * none) a previous successor that never got to run and must be closed. With
 * replace=0, a held identity is IDENTITY_REFUSED (*owner says whose). */
enum identity_claim identity_table_claim(struct identity_table *t, const struct identity *id,
                                         struct session_ref self, int replace,
                                         struct session_ref *owner, struct session_ref *displaced);

/* `self` is done with the identity (owner finished, or successor gave up).
 * Returns 1 and sets *next when a successor now owns it and must be told to
 * go on; 0 otherwise. */
int identity_table_release(struct identity_table *t, const struct identity *id,
                           struct session_ref self, struct session_ref *next);

/* Who holds `id` now: its owner and successor (worker -1: none). */
void identity_table_holders(struct identity_table *t, const struct identity *id,
                            struct session_ref *owner, struct session_ref *successor);

#endif
