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
    struct registry_entry *next;
    struct identity id;
    struct session_ref owner;
    struct session_ref successor;   /* worker -1: none */
};

#define NO_SESSION ((struct session_ref){ .worker = -1, .id = 0 })

static int same_ref(struct session_ref a, struct session_ref b)
{
    return a.worker == b.worker && a.id == b.id;
}

static int same_identity(const struct identity *a, const struct identity *b)
{
    return a->family == b->family && a->port == b->port &&
           memcmp(a->addr, b->addr, sizeof(a->addr)) == 0 && strcmp(a->route, b->route) == 0;
}

/* FNV-1a over the identity's bytes. */
static size_t hash_identity(const struct identity *id, size_t n_buckets)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = id->route; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    for (size_t i = 0; i < sizeof(id->addr); i++)
        h = (h ^ id->addr[i]) * 1099511628211ull;
    h = (h ^ id->port) * 1099511628211ull;
    return (size_t)(h % n_buckets);
}

int registry_init(struct registry *r)
{
    r->n_buckets = 4096;
    r->n_entries = 0;
    r->buckets = calloc(r->n_buckets, sizeof(*r->buckets));
    if (r->buckets == NULL)
        return -ENOMEM;
    pthread_mutex_init(&r->lock, NULL);
    return 0;
}

void registry_destroy(struct registry *r)
{
    for (size_t i = 0; i < r->n_buckets; i++) {
        while (r->buckets[i] != NULL) {
            struct registry_entry *e = r->buckets[i];
            r->buckets[i] = e->next;
            free(e);
        }
    }
    free(r->buckets);
    r->buckets = NULL;
    pthread_mutex_destroy(&r->lock);
}

static struct registry_entry **find(struct registry *r, const struct identity *id)
{
    struct registry_entry **p = &r->buckets[hash_identity(id, r->n_buckets)];
    while (*p != NULL && !same_identity(&(*p)->id, id))
        p = &(*p)->next;
    return p;
}

enum registry_claim registry_claim(struct registry *r, const struct identity *id,
                                   struct session_ref self, int replace,
                                   struct session_ref *owner, struct session_ref *displaced)
{
    enum registry_claim result;
    *owner = NO_SESSION;
    *displaced = NO_SESSION;

    pthread_mutex_lock(&r->lock);
    struct registry_entry **p = find(r, id);
    struct registry_entry *e = *p;
    if (e == NULL) {
        e = malloc(sizeof(*e));
        if (e == NULL) {
            /* Without memory for the entry, serve the client untracked
             * rather than refuse it. */
            result = REGISTRY_OWNER;
        } else {
            e->next = NULL;
            e->id = *id;
            e->owner = self;
            e->successor = NO_SESSION;
            *p = e;
            r->n_entries++;
            result = REGISTRY_OWNER;
        }
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

    pthread_mutex_lock(&r->lock);
    struct registry_entry **p = find(r, id);
    struct registry_entry *e = *p;
    if (e != NULL && same_ref(e->owner, self)) {
        if (e->successor.worker >= 0) {
            e->owner = e->successor;
            e->successor = NO_SESSION;
            *next = e->owner;
            handed_over = 1;
        } else {
            *p = e->next;
            r->n_entries--;
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
    id->family = sa->sa_family;
    /* Copied by offset: a struct sockaddr need not be aligned as the
     * family's own struct. */
    if (sa->sa_family == AF_INET)
        memcpy(id->addr, (const char *)sa + offsetof(struct sockaddr_in, sin_addr), 4);
    else if (sa->sa_family == AF_INET6)
        memcpy(id->addr, (const char *)sa + offsetof(struct sockaddr_in6, sin6_addr), 16);
    id->port = with_port ? addr_port(sa) : 0;
}
