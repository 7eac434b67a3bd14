/* Client identities -> owning session, across workers: who may talk to the server. */
#include "lifeline/registry.h"

#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "lifeline/addr.h"

/* The owner talks to the server; the successor waits until the owner's
 * server connection is finished, then becomes the owner. */
struct registry_entry {
    struct table_node node;   /* first: the table hands nodes back */
    struct identity id;
    struct session_ref owner;
    struct session_ref successor;   /* worker -1: none */
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
    const struct registry_entry *e = (const struct registry_entry *)n;
    return memcmp(&e->id, key, sizeof(e->id)) == 0;
}

int registry_init(struct registry *r)
{
    int rc = table_init(&r->entries);
    if (rc != 0)
        return rc;
    pthread_mutex_init(&r->lock, NULL);
    return 0;
}

static void entry_free(struct table_node *n)
{
    free(n);
}

void registry_destroy(struct registry *r)
{
    table_clear(&r->entries, entry_free);
    table_destroy(&r->entries);
    pthread_mutex_destroy(&r->lock);
}

static struct registry_entry *find(struct registry *r, const struct identity *id, uint64_t hash)
{
    return (struct registry_entry *)table_find(&r->entries, hash, id, entry_is);
}

enum registry_claim registry_claim(struct registry *r, const struct identity *id,
                                   struct session_ref self, int replace,
                                   struct session_ref *owner, struct session_ref *displaced)
{
    enum registry_claim result;
    *owner = NO_SESSION;
    *displaced = NO_SESSION;

    uint64_t hash = hash_identity(id);
    pthread_mutex_lock(&r->lock);
    struct registry_entry *e = find(r, id, hash);
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
        result = REGISTRY_OWNER;
    } else if (!replace) {
        *owner = e->owner;
        result = REGISTRY_REFUSED;
    } else {
        *owner = e->owner;
        *displaced = e->successor;
        e->successor = self;
        result = REGISTRY_SUCCESSOR;
    }
    pthread_mutex_unlock(&r->lock);
    return result;
}

int registry_release(struct registry *r, const struct identity *id, struct session_ref self,
                     struct session_ref *next)
{
    int handed_over = 0;

    uint64_t hash = hash_identity(id);
    pthread_mutex_lock(&r->lock);
    struct registry_entry *e = find(r, id, hash);
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

void registry_identity(struct identity *id, const char *route, const struct sockaddr *sa,
                       int with_port)
{
    memset(id, 0, sizeof(*id));
    strncpy(id->route, route, sizeof(id->route) - 1);
    addr_key_of(&id->client, sa, with_port);
}
