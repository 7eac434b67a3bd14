/* The in-process table of client identities: owner and successor per identity, under one lock. */
#include "lifeline/identity_table.h"

#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "lifeline/addr.h"

/* The owner talks to the server; the successor waits until the owner's
 * server connection is finished, then becomes the owner. */
struct identity_entry {
    struct table_node node; /* first: the table hands nodes back */
    struct identity id;
    struct session_ref owner;
    struct session_ref successor; /* worker -1: none */
};

#define NO_SESSION ((struct session_ref){ .worker = -1, .id = 0 })

static int same_ref(struct session_ref a, struct session_ref b)
{
    return a.worker == b.worker && a.id == b.id;
}

static uint64_t hash_identity(const struct identity *id)
{
    return hash_bytes(HASH_SEED, id, sizeof(*id));
}

static int entry_is(const struct table_node *n, const void *key)
{
    const struct identity_entry *e = (const struct identity_entry *)n;
    return memcmp(&e->id, key, sizeof(e->id)) == 0;
}

int identity_table_init(struct identity_table *r)
{
    int rc = table_init(&r->entries);
    if (rc != 0)
        return rc;
    rc = -pthread_mutex_init(&r->lock, NULL);
    if (rc != 0)
        table_destroy(&r->entries);
    return rc;
}

void identity_table_destroy(struct identity_table *r)
{
    table_free(&r->entries);
    pthread_mutex_destroy(&r->lock);
}

static struct identity_entry *find(struct identity_table *r, const struct identity *id,
                                   uint64_t hash)
{
    return (struct identity_entry *)table_find(&r->entries, hash, id, entry_is);
}

enum identity_claim identity_table_claim(struct identity_table *r, const struct identity *id,
                                         struct session_ref self, int replace,
                                         struct session_ref *owner, struct session_ref *displaced)
{
    enum identity_claim result;
    *owner = NO_SESSION;
    *displaced = NO_SESSION;

    uint64_t hash = hash_identity(id);
    pthread_mutex_lock(&r->lock);
    struct identity_entry *e = find(r, id, hash);
    if (e == NULL) {
        e = malloc(sizeof(*e));
        if (e != NULL) {
            e->id = *id;
            e->owner = self;
            e->successor = NO_SESSION;
            table_insert(&r->entries, &e->node, hash);
        }
        /* Without memory for the entry, serve the client untracked rather
         * than refuse it. */
        result = IDENTITY_OWNER;
    } else if (!replace) {
        *owner = e->owner;
        result = IDENTITY_REFUSED;
    } else {
        *owner = e->owner;
        *displaced = e->successor;
        e->successor = self;
        result = IDENTITY_SUCCESSOR;
    }
    pthread_mutex_unlock(&r->lock);
    return result;
}

int identity_table_release(struct identity_table *r, const struct identity *id,
                           struct session_ref self, struct session_ref *next)
{
    int handed_over = 0;

    uint64_t hash = hash_identity(id);
    pthread_mutex_lock(&r->lock);
    struct identity_entry *e = find(r, id, hash);
    if (e != NULL && same_ref(e->owner, self)) {
        if (e->successor.worker >= 0) {
            e->owner = e->successor;
            e->successor = NO_SESSION;
            *next = e->owner;
            handed_over = 1;
        } else {
            table_remove(&r->entries, &e->node);
            free(e);
        }
    } else if (e != NULL && same_ref(e->successor, self)) {
        e->successor = NO_SESSION;
    }
    pthread_mutex_unlock(&r->lock);
    return handed_over;
}

void identity_table_holders(struct identity_table *r, const struct identity *id,
                            struct session_ref *owner, struct session_ref *successor)
{
    pthread_mutex_lock(&r->lock);
    struct identity_entry *e = find(r, id, hash_identity(id));
    *owner = e != NULL ? e->owner : NO_SESSION;
    *successor = e != NULL ? e->successor : NO_SESSION;
    pthread_mutex_unlock(&r->lock);
}
