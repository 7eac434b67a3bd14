/* The in-process table of client identities: owner and successor per identity, under one lock. */
#include "lifeline/identity_table.h"

#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "lifeline/addr.h"

/* The owner talks to the server; the successor waits until the owner's
 * server connection is finished, then becomes the owner.
 *
 * One per identity held, so kept small: the route's name is stored at its
 * length (a struct identity pads it to 64 bytes), and the two session_refs
 * are split so that no padding sits between their fields. */
struct identity_entry {
    struct table_node node; /* first: the table hands nodes back */
    uint64_t owner_id;
    uint64_t successor_id;
    int32_t owner_worker;
    int32_t successor_worker; /* -1: none */
    struct addr_key client;
    uint8_t route_len;
    char route[]; /* route_len bytes, not NUL-terminated */
};

_Static_assert(sizeof(((struct identity *)0)->route) <= UINT8_MAX, "route_len holds a name");

#define NO_SESSION ((struct session_ref){ .worker = -1, .id = 0 })

static int same_ref(struct session_ref a, struct session_ref b)
{
    return a.worker == b.worker && a.id == b.id;
}

static uint64_t hash_identity(const struct identity *id)
{
    return hash_bytes(HASH_SEED, id, sizeof(*id));
}

static size_t route_len(const struct identity *id) { return strnlen(id->route, sizeof(id->route)); }

static int entry_is(const struct table_node *n, const void *key)
{
    const struct identity_entry *e = (const struct identity_entry *)n;
    const struct identity *id = key;
    return memcmp(&e->client, &id->client, sizeof(e->client)) == 0 &&
           e->route_len == route_len(id) && memcmp(e->route, id->route, e->route_len) == 0;
}

static struct session_ref owner_of(const struct identity_entry *e)
{
    return (struct session_ref){ .worker = e->owner_worker, .id = e->owner_id };
}

static struct session_ref successor_of(const struct identity_entry *e)
{
    return (struct session_ref){ .worker = e->successor_worker, .id = e->successor_id };
}

static void set_owner(struct identity_entry *e, struct session_ref r)
{
    e->owner_worker = r.worker;
    e->owner_id = r.id;
}

static void set_successor(struct identity_entry *e, struct session_ref r)
{
    e->successor_worker = r.worker;
    e->successor_id = r.id;
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
        size_t len = route_len(id);
        e = malloc(sizeof(*e) + len);
        if (e != NULL) {
            /* memcpy, not assignment: entry_is compares the bytes, padding too. */
            memcpy(&e->client, &id->client, sizeof(e->client));
            e->route_len = (uint8_t)len;
            memcpy(e->route, id->route, len);
            set_owner(e, self);
            set_successor(e, NO_SESSION);
            table_insert(&r->entries, &e->node, hash);
        }
        /* Without memory for the entry, serve the client untracked rather
         * than refuse it. */
        result = IDENTITY_OWNER;
    } else if (!replace) {
        *owner = owner_of(e);
        result = IDENTITY_REFUSED;
    } else {
        *owner = owner_of(e);
        *displaced = successor_of(e);
        set_successor(e, self);
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
    if (e != NULL && same_ref(owner_of(e), self)) {
        if (e->successor_worker >= 0) {
            *next = successor_of(e);
            set_owner(e, *next);
            set_successor(e, NO_SESSION);
            handed_over = 1;
        } else {
            table_remove(&r->entries, &e->node);
            free(e);
        }
    } else if (e != NULL && same_ref(successor_of(e), self)) {
        set_successor(e, NO_SESSION);
    }
    pthread_mutex_unlock(&r->lock);
    return handed_over;
}

void identity_table_holders(struct identity_table *r, const struct identity *id,
                            struct session_ref *owner, struct session_ref *successor)
{
    pthread_mutex_lock(&r->lock);
    struct identity_entry *e = find(r, id, hash_identity(id));
    *owner = e != NULL ? owner_of(e) : NO_SESSION;
    *successor = e != NULL ? successor_of(e) : NO_SESSION;
    pthread_mutex_unlock(&r->lock);
}
