/* The registry contract's etcd backend: client identities shared by several lifeline instances. */
#define _GNU_SOURCE /* asprintf */
#include "lifeline/cluster.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "lifeline/etcd.h"
#include "lifeline/identity_table.h"
#include "lifeline/log.h"
#include "lifeline/table.h"

/* Each etcd call, on each member. */
#define CALL_TIMEOUT_MS 1000
/* A claimant waiting for another instance re-tries this often, whatever
 * the watch says. */
#define WAIT_RETRY_MS 500
/* How long a live holder may take to let a client go, past its lease's TTL
 * (a dead one is gone by then): its session's close (up to 5 s flushing to
 * a server that does not read) and the wait for the server (about 1 s),
 * and the calls. Past it the claim is decided as etcd unavailable. */
#define HOLDER_FINISH_MS 10000
/* Pauses before granting a lease again or re-opening the watch. */
#define RETRY_MS 500
/* A failed renewal is tried again after this long. */
#define RENEW_RETRY_MS 250
/* At most one `cluster unavailable` line per this long. */
#define LOG_EVERY_MS 1000
/* While etcd stays away, one `cannot grant a lease` line per this long. */
#define GRANT_LOG_EVERY_MS 30000

const uint32_t cluster_rtt_bounds_us[CLUSTER_RTT_BUCKETS] = { 500,   1000,  2500,   5000,
                                                              10000, 25000, 100000, 1000000 };

static const char *const result_names[CLUSTER_RESULT_COUNT] = {
#define CLUSTER_RESULT_NAME_(id, name) [CLUSTER_##id] = name,
    CLUSTER_RESULTS(CLUSTER_RESULT_NAME_)
#undef CLUSTER_RESULT_NAME_
};

const char *cluster_result_name(enum cluster_result r) { return result_names[r]; }

/*
 * Where this instance stands with one identity in etcd:
 *
 *   CLAIMING ──created──▶ HELD ──last release──▶ RELEASING ──deleted──▶ (gone)
 *      │  └──held by another, replace──▶ WAITING ──its DELETE──▶ CLAIMING
 *      ├──held by another, reject──▶ REFUSED
 *      └──etcd silent──▶ UNAVAILABLE (refuse) or LOCAL (local)
 *   HELD ──evict request──▶ YIELDING ──last release──▶ RELEASING
 *   any ──lease lost──▶ FENCED
 *
 * A session the local table makes owner goes on (GO) only in HELD or
 * LOCAL; otherwise it is the entry's `pending` session until etcd decides.
 * REFUSED, UNAVAILABLE and FENCED entries ask etcd again for the next local
 * owner. The entry lives while local sessions hold it (refs) or a call for
 * it is out (busy).
 */
enum cid_state {
    CID_CLAIMING,
    CID_WAITING,
    CID_HELD,
    CID_YIELDING,
    CID_RELEASING,
    CID_REFUSED,
    CID_UNAVAILABLE,
    CID_LOCAL,
    CID_FENCED,
};

#define NO_SESSION ((struct session_ref){ .worker = -1, .id = 0 })

struct cid {
    struct table_node node; /* first */
    struct cluster *c;
    struct identity id;
    char key[256];   /* <prefix>/id/<route>/<client> */
    char client[64]; /* the client part, for logs and the evict key */
    enum cid_state state;
    unsigned refs;              /* local sessions that claimed and did not release */
    int busy;                   /* a call for it is queued or out */
    int replace;                /* the last claim's on_duplicate */
    int queued;                 /* on the to-do list */
    int waited;                 /* it evicted another instance: counted as replaced */
    int yield;                  /* an evict request came while claiming */
    struct session_ref pending; /* the local owner waiting for etcd */
    int64_t wait_rev;           /* WAITING: the revision the holder was seen at */
    int64_t deleted_rev;        /* the last DELETE of the key the watch saw */
    int64_t holder_lease;       /* WAITING: whose inbox was written */
    uint64_t deadline;          /* WAITING: give up (unavailable) at this uv_now() */
    uint64_t lease_epoch;       /* the lease its call went out under */
    struct cid *next_todo;
};

struct ratelog {
    uint64_t last; /* uv_now() of the last line; 0: none yet */
    uint64_t suppressed;
};

enum lease_state {
    LEASE_GRANTING, /* a grant is out; claims wait for it */
    LEASE_DOWN,     /* none; a grant is tried again soon */
    LEASE_HELD,
};

struct cluster {
    struct registry base; /* first: the contract's part */
    const struct cluster_config *cfg;
    struct config *cfg_owner;

    pthread_mutex_t lock; /* everything below, but the loop's handles */
    struct identity_table table;
    struct table cids; /* struct cid, by etcd key */
    struct cid *todo;  /* entries with a call to make */
    int stopping;
    int detached; /* the lease is another process's (before or after a live upgrade) */
    int attach;   /* the commit came: the handed-over lease is ours now */
    int stopped;  /* the loop was told to stop once */
    enum lease_state lease_state;
    int64_t lease;
    uint64_t lease_epoch;     /* bumped when a lease is lost */
    uint64_t last_renew_sent; /* uv_now() when the last successful renewal was sent */
    uint64_t last_renew_ns;   /* the same, by uv_hrtime(): read by other threads */
    int64_t watch_rev;        /* every event up to this revision has been seen */
    int watch_live;
    unsigned watch_failures; /* in a row */
    struct ratelog unavailable_log, renew_log, grant_log, delete_log;

    struct cluster_stats stats;
    uint64_t ttl_ms, fence_ms; /* fence when no renewal succeeded for fence_ms */
    uint64_t renew_ms;

    pthread_t thread;
    uv_loop_t loop;
    uv_async_t wakeup;
    uv_timer_t renew, fence, grant_retry, watch_retry, wait_sweep;
    struct etcd *etcd;       /* claims, releases, evict requests, the watch */
    struct etcd *lease_etcd; /* grant, renewals, revoke: never queued behind claims */
    struct etcd_watch *watch;
    struct renew *renew_out; /* the renewal out, if any */
    uint64_t inherited_ns;   /* a handed-over lease: uv_hrtime() of its last renewal */
};

static struct cluster *cluster_of(struct registry *r) { return (struct cluster *)(void *)r; }

/* Is a line of this kind due? At most one per `every` ms; the rest are
 * counted, and the next line says how many were left out. */
static int ratelog_due(struct ratelog *l, uint64_t now, uint64_t every)
{
    if (l->last != 0 && now - l->last < every) {
        l->suppressed++;
        return 0;
    }
    l->last = now;
    return 1;
}

static int64_t ratelog_take(struct ratelog *l)
{
    int64_t n = (int64_t)l->suppressed;
    l->suppressed = 0;
    return n;
}

/* --- entries ------------------------------------------------------------ */

static int cid_is(const struct table_node *n, const void *key)
{
    return strcmp(((const struct cid *)n)->key, key) == 0;
}

static uint64_t key_hash(const char *key) { return hash_bytes(HASH_SEED, key, strlen(key)); }

static void identity_key(const struct cluster *c, const struct identity *id, char *key, size_t len,
                         char *client, size_t client_len)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (id->client.family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, id->client.addr, 4);
        in->sin_port = htons(id->client.port);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, id->client.addr, 16);
        in6->sin6_port = htons(id->client.port);
    }
    char buf[ADDR_STR_MAX];
    addr_format((struct sockaddr *)&ss, buf, sizeof(buf));
    /* An identity without the port is the address alone. */
    if (id->client.port == 0) {
        char *colon = strrchr(buf, ':');
        if (colon != NULL)
            *colon = '\0';
        if (buf[0] == '[') {
            memmove(buf, buf + 1, strlen(buf));
            buf[strlen(buf) - 1] = '\0';
        }
    }
    snprintf(client, client_len, "%s", buf);
    snprintf(key, len, "%s/id/%s/%s", c->cfg->prefix, id->route, buf);
}

static struct cid *cid_find(struct cluster *c, const char *key)
{
    return (struct cid *)table_find(&c->cids, key_hash(key), key, cid_is);
}

static void todo(struct cid *e);

/* The entry for an identity, made when there is none: a claim to send
 * (queued for the cluster thread). NULL when out of memory. */
static struct cid *cid_get(struct cluster *c, const struct identity *id, const char *key,
                           const char *client)
{
    struct cid *e = cid_find(c, key);
    if (e != NULL || (e = calloc(1, sizeof(*e))) == NULL)
        return e;
    e->c = c;
    e->id = *id;
    snprintf(e->key, sizeof(e->key), "%s", key);
    snprintf(e->client, sizeof(e->client), "%s", client);
    e->state = CID_CLAIMING;
    e->pending = NO_SESSION;
    table_insert(&c->cids, &e->node, key_hash(key));
    todo(e);
    return e;
}

static void cid_maybe_free(struct cid *e)
{
    if (e->refs > 0 || e->busy || e->queued)
        return;
    table_remove(&e->c->cids, &e->node);
    free(e);
}

static void send_msg(struct cluster *c, struct session_ref to, enum registry_msg msg)
{
    if (to.worker >= 0)
        c->base.deliver(c->base.deliver_ctx, to, msg);
}

static void todo(struct cid *e)
{
    if (!e->queued) {
        e->queued = 1;
        e->next_todo = e->c->todo;
        e->c->todo = e;
        uv_async_send(&e->c->wakeup);
    }
}

static void count(struct cluster *c, enum cluster_result r)
{
    atomic_fetch_add(&c->stats.claims[r], 1);
}

static void log_unavailable(struct cluster *c, const struct cid *e, const char *error)
{
    if (!ratelog_due(&c->unavailable_log, uv_now(&c->loop), LOG_EVERY_MS))
        return;
    log_warn("cluster unavailable", LF_STR("route", e->id.route), LF_STR("client", e->client),
             LF_STR("action", c->cfg->on_unavailable == UNAVAILABLE_LOCAL ? "local" : "refuse"),
             LF_STR("error", error), LF_INT("suppressed", ratelog_take(&c->unavailable_log)));
}

static void ignore_cb(void *arg, const struct etcd_result *res) {}

/* Our request in the last holder's inbox, if any: deleted (the holder
 * deletes it when it lets go, but not when its lease was revoked or
 * expired first, or when the claim is given up). */
static void drop_evict_request(struct cid *e)
{
    struct cluster *c = e->c;
    if (!e->waited || e->holder_lease == 0 || c->lease == 0 || c->detached || c->stopping)
        return;
    char evict[400];
    snprintf(evict, sizeof(evict), "%s/evict/%" PRIx64 "/%s/%s", c->cfg->prefix,
             (uint64_t)e->holder_lease, e->id.route, e->client);
    etcd_delete_if_lease(c->etcd, evict, NULL, c->lease, ignore_cb, NULL);
    e->holder_lease = 0;
}

/* etcd could not decide for the pending session. */
static void unavailable(struct cid *e, const char *error)
{
    struct cluster *c = e->c;
    int waiting = e->pending.worker >= 0;
    if (waiting)
        log_unavailable(c, e, error);
    drop_evict_request(e);
    e->yield = 0;
    e->waited = 0;
    e->deadline = 0;
    if (c->cfg->on_unavailable == UNAVAILABLE_LOCAL) {
        e->state = CID_LOCAL;
        if (waiting)
            count(c, CLUSTER_LOCAL);
        send_msg(c, e->pending, REGISTRY_MSG_GO);
    } else {
        e->state = CID_UNAVAILABLE;
        if (waiting)
            count(c, CLUSTER_UNAVAILABLE);
        send_msg(c, e->pending, REGISTRY_MSG_UNAVAILABLE);
    }
    e->pending = NO_SESSION;
}

/* The local table made `who` the owner: it goes on once etcd agrees.
 * Returns 1 when it may go on now. */
static int grant(struct cid *e, struct session_ref who)
{
    switch (e->state) {
    case CID_HELD:
    case CID_LOCAL:
        return 1;
    case CID_REFUSED:
    case CID_UNAVAILABLE:
    case CID_FENCED:
        e->state = CID_CLAIMING; /* ask again for this one */
        e->pending = who;
        todo(e);
        return 0;
    case CID_YIELDING:
        /* The evicted owner is done with the server: let the key go now;
         * the newcomer claims it again once it is deleted. */
        e->state = CID_RELEASING;
        e->pending = who;
        todo(e);
        return 0;
    case CID_CLAIMING:
    case CID_WAITING:
    case CID_RELEASING:
        e->pending = who;
        return 0;
    }
    return 0;
}

/* --- the registry contract (any thread) --------------------------------- */

static enum registry_answer cluster_claim(struct registry *r, const struct identity *id,
                                          struct session_ref self, int replace)
{
    struct cluster *c = cluster_of(r);
    char key[256], client[64];
    identity_key(c, id, key, sizeof(key), client, sizeof(client));

    pthread_mutex_lock(&c->lock);
    struct session_ref owner, displaced;
    enum identity_claim local =
        identity_table_claim(&c->table, id, self, replace, &owner, &displaced);
    if (local == IDENTITY_REFUSED) {
        pthread_mutex_unlock(&c->lock);
        return REGISTRY_REFUSED;
    }
    struct cid *e = cid_get(c, id, key, client);
    enum registry_answer answer;
    if (e == NULL) {
        answer = local == IDENTITY_OWNER ? REGISTRY_GO : REGISTRY_WAIT; /* out of memory */
    } else {
        e->refs++;
        e->replace = replace;
        if (local == IDENTITY_SUCCESSOR)
            answer = REGISTRY_WAIT;
        else
            answer = grant(e, self) ? REGISTRY_GO : REGISTRY_PENDING;
    }
    if (local == IDENTITY_SUCCESSOR) {
        send_msg(c, owner, REGISTRY_MSG_EVICT);
        send_msg(c, displaced, REGISTRY_MSG_EVICT);
    }
    pthread_mutex_unlock(&c->lock);
    return answer;
}

static void cluster_release(struct registry *r, const struct identity *id, struct session_ref self)
{
    struct cluster *c = cluster_of(r);
    char key[256], client[64];
    identity_key(c, id, key, sizeof(key), client, sizeof(client));

    pthread_mutex_lock(&c->lock);
    struct session_ref next;
    int handed = identity_table_release(&c->table, id, self, &next);
    struct cid *e = cid_find(c, key);
    if (e != NULL) {
        if (e->pending.worker == self.worker && e->pending.id == self.id)
            e->pending = NO_SESSION;
        if (handed && grant(e, next))
            send_msg(c, next, REGISTRY_MSG_GO);
        if (e->refs > 0 && --e->refs == 0) {
            if (e->state == CID_HELD || e->state == CID_YIELDING) {
                e->state = CID_RELEASING;
                todo(e);
            }
            cid_maybe_free(e);
        }
    } else if (handed) {
        send_msg(c, next, REGISTRY_MSG_GO);
    }
    pthread_mutex_unlock(&c->lock);
}

/* A session a live upgrade handed over: its identity is this process's
 * locally at once, and in etcd as soon as its claim is answered. */
static void cluster_adopt(struct registry *r, const struct identity *id, struct session_ref self)
{
    struct cluster *c = cluster_of(r);
    char key[256], client[64];
    identity_key(c, id, key, sizeof(key), client, sizeof(client));
    pthread_mutex_lock(&c->lock);
    struct session_ref owner, displaced;
    enum identity_claim local = identity_table_claim(&c->table, id, self, 1, &owner, &displaced);
    /* Claimed like any other, with nobody waiting, once the lease is this
     * process's (cluster_attach) or granted: with the lease handed over the
     * key is ours already (the create answers so); an identity the old
     * process decided locally, or without a cluster, is registered now. */
    struct cid *e = cid_get(c, id, key, client);
    if (e != NULL) {
        e->refs++;
        e->replace = 1;
    }
    if (local == IDENTITY_SUCCESSOR) {
        send_msg(c, owner, REGISTRY_MSG_EVICT);
        send_msg(c, displaced, REGISTRY_MSG_EVICT);
    }
    pthread_mutex_unlock(&c->lock);
}

/* --- calls and their answers (the cluster thread) ----------------------- */

static void issue(struct cid *e);
static void start_watch(struct cluster *c);
static void fence_cb(uv_timer_t *t);
static void renew_cb(uv_timer_t *t);

static void record_rtt(struct cluster *c, uint64_t us)
{
    size_t b = 0;
    while (b < CLUSTER_RTT_BUCKETS && us > cluster_rtt_bounds_us[b])
        b++;
    atomic_fetch_add(&c->stats.rtt_buckets[b], 1);
    atomic_fetch_add(&c->stats.rtt_sum_us, us);
}

/* A call for an entry came back: takes the lock (the callback drops it),
 * counts the round trip, and the entry may make its next call. */
static struct cluster *answered(struct cid *e, const struct etcd_result *res)
{
    struct cluster *c = e->c;
    pthread_mutex_lock(&c->lock);
    record_rtt(c, res->rtt_us);
    e->busy = 0;
    return c;
}

static void deleted_cb(void *arg, const struct etcd_result *res)
{
    struct cid *e = arg;
    struct cluster *c = answered(e, res);
    if (res->status < 0 && e->state == CID_RELEASING && !c->stopping &&
        ratelog_due(&c->delete_log, uv_now(&c->loop), LOG_EVERY_MS))
        log_warn("cluster: cannot delete an identity (its lease ends it)", LF_STR("key", e->key),
                 LF_STR("error", res->error), LF_INT("suppressed", ratelog_take(&c->delete_log)));
    if (e->state == CID_RELEASING && e->refs > 0)
        e->state = CID_CLAIMING; /* a new local owner came meanwhile: claim for it */
    if (e->state == CID_CLAIMING)
        issue(e); /* also one that waited for this call to end (fenced meanwhile) */
    cid_maybe_free(e);
    pthread_mutex_unlock(&c->lock);
}

static void evict_put_cb(void *arg, const struct etcd_result *res)
{
    struct cid *e = arg;
    struct cluster *c = answered(e, res);
    if (e->state == CID_WAITING) {
        if (res->status < 0) {
            unavailable(e, res->error);
        } else if (!c->watch_live || c->watch_rev > e->wait_rev || e->deleted_rev > e->wait_rev) {
            e->state = CID_CLAIMING; /* the DELETE may have gone by already: ask again now */
            issue(e);
        }
    } else if (e->state == CID_CLAIMING) {
        issue(e); /* fenced meanwhile */
    }
    cid_maybe_free(e);
    pthread_mutex_unlock(&c->lock);
}

static void created_cb(void *arg, const struct etcd_result *res)
{
    struct cid *e = arg;
    struct cluster *c = answered(e, res);
    if (e->state != CID_CLAIMING) {
        /* Fenced meanwhile: what came back was for a lease that is gone. */
    } else if (e->lease_epoch != c->lease_epoch || res->status < 0) {
        unavailable(e, res->status < 0 ? res->error : "the lease was lost");
    } else if (res->succeeded || (res->kv.key != NULL && res->kv.lease == c->lease)) {
        e->state = e->yield ? CID_YIELDING : CID_HELD;
        e->yield = 0;
        e->deadline = 0;
        count(c, e->waited ? CLUSTER_REPLACED : CLUSTER_GRANTED);
        drop_evict_request(e);
        e->waited = 0;
        if (e->refs == 0) {
            e->state = CID_RELEASING; /* everyone gave up meanwhile */
            issue(e);
        } else if (e->state == CID_YIELDING) {
            send_msg(c, e->pending, REGISTRY_MSG_EVICT);
        } else {
            send_msg(c, e->pending, REGISTRY_MSG_GO);
            e->pending = NO_SESSION;
        }
    } else if (res->kv.key == NULL) {
        issue(e); /* gone between compare and read: cannot be, but ask again */
    } else if (!e->replace) {
        e->yield = 0;
        e->state = CID_REFUSED;
        count(c, CLUSTER_REFUSED);
        send_msg(c, e->pending, REGISTRY_MSG_REFUSED);
        e->pending = NO_SESSION;
    } else {
        /* Held by another instance: ask it to let go, then wait for the
         * DELETE. Asked again at each try (every WAIT_RETRY_MS): a request
         * the holder missed (its watch re-opened, a live upgrade) or
         * deleted (it let go, then claimed again) is not waited on. */
        int first = !e->waited || e->holder_lease != res->kv.lease;
        e->state = CID_WAITING;
        e->waited = 1;
        e->wait_rev = res->revision;
        e->holder_lease = res->kv.lease;
        if (e->deadline == 0)
            e->deadline = uv_now(&c->loop) + c->ttl_ms + HOLDER_FINISH_MS;
        if (e->deleted_rev > e->wait_rev) {
            /* The watch saw it deleted after that answer was read, while the
             * answer was on its way: ask again now. */
            e->state = CID_CLAIMING;
            issue(e);
        } else {
            char evict[400];
            snprintf(evict, sizeof(evict), "%s/evict/%" PRIx64 "/%s/%s", c->cfg->prefix,
                     (uint64_t)res->kv.lease, e->id.route, e->client);
            if (first)
                atomic_fetch_add(&c->stats.evictions_requested, 1);
            e->busy = 1;
            if (etcd_put(c->etcd, evict, c->cfg->instance, c->lease, evict_put_cb, e) < 0) {
                e->busy = 0;
                unavailable(e, "out of memory");
            }
        }
    }
    cid_maybe_free(e);
    pthread_mutex_unlock(&c->lock);
}

/* Makes the call an entry's state asks for. Under the lock. */
static void issue(struct cid *e)
{
    struct cluster *c = e->c;
    if (c->stopping || c->detached || e->busy)
        return;
    if (e->state == CID_CLAIMING) {
        if (c->lease_state == LEASE_GRANTING)
            return; /* the grant's answer issues it */
        if (c->lease_state == LEASE_DOWN) {
            unavailable(e, "no lease");
            return;
        }
        e->busy = 1;
        e->lease_epoch = c->lease_epoch;
        if (etcd_create(c->etcd, e->key, c->cfg->instance, c->lease, created_cb, e) < 0) {
            e->busy = 0;
            unavailable(e, "out of memory");
        }
    } else if (e->state == CID_RELEASING) {
        char evict[400];
        snprintf(evict, sizeof(evict), "%s/evict/%" PRIx64 "/%s/%s", c->cfg->prefix,
                 (uint64_t)c->lease, e->id.route, e->client);
        e->busy = 1;
        if (etcd_delete_if_lease(c->etcd, e->key, evict, c->lease, deleted_cb, e) < 0)
            e->busy = 0;
    }
}

static void wakeup_cb(uv_async_t *a)
{
    struct cluster *c = a->data;
    pthread_mutex_lock(&c->lock);
    int attach = c->attach && c->detached && !c->stopping;
    if (attach) {
        /* The fence counts from the old process's last renewal. */
        uint64_t age = (uv_hrtime() - c->inherited_ns) / 1000000, now = uv_now(&c->loop);
        c->detached = 0;
        c->last_renew_sent = now > age ? now - age : 0;
        c->last_renew_ns = c->inherited_ns;
        uv_timer_start(&c->fence, fence_cb, c->fence_ms > age ? c->fence_ms - age : 0, 0);
        for (size_t b = 0; b < c->cids.n_buckets; b++)
            for (struct table_node *n = c->cids.buckets[b]; n != NULL; n = n->next)
                if (((struct cid *)n)->state == CID_CLAIMING)
                    issue((struct cid *)n); /* the adopted identities */
    }
    while (c->todo != NULL) {
        struct cid *e = c->todo;
        c->todo = e->next_todo;
        e->queued = 0;
        issue(e);
        cid_maybe_free(e);
    }
    int stopping = c->stopping && !c->stopped;
    c->stopped = c->stopping;
    pthread_mutex_unlock(&c->lock);
    if (stopping)
        uv_stop(&c->loop);
    if (attach && !stopping) {
        start_watch(c);
        renew_cb(&c->renew); /* is it still alive? */
    }
}

/* Every WAITING entry asks again now and then: a DELETE the watch missed
 * (it was down, or re-opened) is not waited for forever. */
static void wait_sweep_cb(uv_timer_t *t)
{
    struct cluster *c = t->data;
    uint64_t now = uv_now(&c->loop);
    pthread_mutex_lock(&c->lock);
    for (size_t b = 0; b < c->cids.n_buckets; b++)
        for (struct table_node *n = c->cids.buckets[b]; n != NULL; n = n->next) {
            struct cid *e = (struct cid *)n;
            if (e->state != CID_WAITING || e->busy)
                continue;
            if (now >= e->deadline) {
                e->deadline = 0;
                e->waited = 0;
                unavailable(e, "the holder did not let go in time");
            } else {
                e->state = CID_CLAIMING;
                issue(e);
            }
        }
    pthread_mutex_unlock(&c->lock);
}

/* --- the watch: DELETEs for claimants, evict requests for holders -------- */

static void evict_request(struct cluster *c, const char *rest, const char *from)
{
    /* rest: <route>/<client> */
    char key[400];
    snprintf(key, sizeof(key), "%s/id/%s", c->cfg->prefix, rest);
    struct cid *e = cid_find(c, key);
    if (e == NULL || e->state == CID_WAITING || e->state == CID_REFUSED ||
        e->state == CID_UNAVAILABLE || e->state == CID_LOCAL || e->state == CID_FENCED) {
        /* Nothing here holds it, as far as this instance knows: a key left
         * behind (a delete that failed, a create whose answer was lost).
         * Delete it if it is ours, so the claimant need not wait for the
         * lease to end. */
        char evict[400];
        snprintf(evict, sizeof(evict), "%s/evict/%" PRIx64 "/%s", c->cfg->prefix,
                 (uint64_t)c->lease, rest);
        etcd_delete_if_lease(c->etcd, key, evict, c->lease, ignore_cb, NULL);
        return;
    }
    /* Said and counted once per letting go: a claimant asks again while it
     * waits. */
    const char *slash = strchr(rest, '/');
    if (e->state == CID_HELD || (e->state == CID_CLAIMING && !e->yield)) {
        atomic_fetch_add(&c->stats.evictions_received, 1);
        log_info("cluster eviction", LF_STR("route", e->id.route),
                 LF_STR("client", slash ? slash + 1 : rest), LF_STR("from", from));
    }
    if (e->state == CID_HELD) {
        e->state = CID_YIELDING;
        struct session_ref owner, displaced;
        /* Every local session of the client goes: its owner, and a
         * successor waiting behind it (the newest claim is the other
         * instance's). */
        identity_table_holders(&c->table, &e->id, &owner, &displaced);
        send_msg(c, owner, REGISTRY_MSG_EVICT);
        send_msg(c, displaced, REGISTRY_MSG_EVICT);
        send_msg(c, e->pending, REGISTRY_MSG_EVICT);
    } else if (e->state == CID_CLAIMING) {
        e->yield = 1; /* our create went through: it let go as soon as it knows */
    }
}

static void watch_event(void *arg, enum etcd_event_type type, const struct etcd_kv *kv)
{
    struct cluster *c = arg;
    pthread_mutex_lock(&c->lock);
    if (kv->mod_revision > c->watch_rev)
        c->watch_rev = kv->mod_revision;
    size_t plen = strlen(c->cfg->prefix);
    const char *rest = kv->key + plen;
    char inbox[64];
    snprintf(inbox, sizeof(inbox), "/evict/%" PRIx64 "/", (uint64_t)c->lease);
    if (strncmp(kv->key, c->cfg->prefix, plen) != 0 || c->detached) {
        /* not ours */
    } else if (type == ETCD_DELETE && strncmp(rest, "/id/", 4) == 0) {
        struct cid *e = cid_find(c, kv->key);
        if (e != NULL && kv->mod_revision > e->deleted_rev)
            e->deleted_rev = kv->mod_revision; /* a call out for it looks at this */
        if (e != NULL && e->state == CID_WAITING && !e->busy) {
            e->state = CID_CLAIMING;
            issue(e);
        }
    } else if (type == ETCD_PUT && c->lease != 0 && strncmp(rest, inbox, strlen(inbox)) == 0) {
        evict_request(c, rest + strlen(inbox), kv->value ? kv->value : "");
    }
    pthread_mutex_unlock(&c->lock);
}

static void watch_retry_cb(uv_timer_t *t) { start_watch(t->data); }

static void watch_state(void *arg, int status, int64_t revision)
{
    struct cluster *c = arg;
    pthread_mutex_lock(&c->lock);
    /* Established: `watch_rev` moves with the events only (a re-opened
     * watch replays those after it first). */
    if (status == 0) {
        c->watch_live = 1;
        c->watch_failures = 0;
    } else if (status == -ESTALE && revision > 0) {
        /* History before `revision` is gone: go on from there (what was
         * missed: claimants ask again every WAIT_RETRY_MS, and the sweep
         * asks again for ours). */
        c->watch = NULL;
        c->watch_live = 0;
        c->watch_rev = revision - 1;
        c->watch_failures++;
    } else {
        c->watch = NULL;
        c->watch_live = 0;
        c->watch_failures++;
    }
    int again = status < 0 && !c->stopping && !c->detached;
    /* At once on the next member the first time (its member died), then
     * every RETRY_MS. */
    uint64_t delay = c->watch_failures > 1 ? RETRY_MS : 0;
    pthread_mutex_unlock(&c->lock);
    if (again)
        uv_timer_start(&c->watch_retry, watch_retry_cb, delay, 0);
}

static void start_watch(struct cluster *c)
{
    char prefix[200];
    snprintf(prefix, sizeof(prefix), "%s/", c->cfg->prefix);
    pthread_mutex_lock(&c->lock);
    int64_t from = c->watch_rev > 0 ? c->watch_rev + 1 : 0;
    pthread_mutex_unlock(&c->lock);
    if (c->watch == NULL &&
        etcd_watch(c->etcd, prefix, from, watch_event, watch_state, c, &c->watch) < 0) {
        c->watch = NULL;
        uv_timer_start(&c->watch_retry, watch_retry_cb, RETRY_MS, 0);
    }
}

/* --- the lease: grant, renew, fence ------------------------------------- */

static void grant_lease(struct cluster *c);
static void grant_retry_cb(uv_timer_t *t) { grant_lease(t->data); }

/* The lease is gone, or may be: no session may keep an identity on it. */
static void fence(struct cluster *c, const char *why)
{
    uint64_t sessions = 0;
    c->lease_epoch++;
    c->lease = 0;
    c->lease_state = LEASE_DOWN;
    atomic_store(&c->stats.up, 0);
    for (size_t b = 0; b < c->cids.n_buckets; b++)
        for (struct table_node *n = c->cids.buckets[b]; n != NULL; n = n->next) {
            struct cid *e = (struct cid *)n;
            struct session_ref owner, successor;
            switch (e->state) {
            case CID_HELD:
            case CID_YIELDING:
            case CID_RELEASING:
                identity_table_holders(&c->table, &e->id, &owner, &successor);
                sessions += (owner.worker >= 0) + (successor.worker >= 0);
                send_msg(c, owner, REGISTRY_MSG_FENCE);
                send_msg(c, successor, REGISTRY_MSG_FENCE);
                send_msg(c, e->pending, REGISTRY_MSG_FENCE);
                e->pending = NO_SESSION;
                e->state = CID_FENCED;
                break;
            case CID_CLAIMING:
            case CID_WAITING:
                /* Not held yet: a call still out finds the lease changed. */
                e->state = CID_CLAIMING;
                if (!e->busy)
                    unavailable(e, why);
                break;
            default:
                break;
            }
        }
    atomic_fetch_add(&c->stats.fences, 1);
    atomic_fetch_add(&c->stats.fenced_sessions, sessions);
    log_error("cluster fenced", LF_STR("why", why), LF_INT("sessions", sessions),
              LF_INT("ttl_ms", c->ttl_ms));
}

static void fence_cb(uv_timer_t *t)
{
    struct cluster *c = t->data;
    pthread_mutex_lock(&c->lock);
    if (c->lease_state == LEASE_HELD && !c->detached) {
        fence(c, "no renewal succeeded in time");
        uv_timer_start(&c->grant_retry, grant_retry_cb, RETRY_MS, 0);
    }
    pthread_mutex_unlock(&c->lock);
}

/* One keep-alive out: when it was sent, under which lease. */
struct renew {
    struct cluster *c;
    uint64_t sent;    /* uv_now() */
    uint64_t sent_ns; /* uv_hrtime(), for the handover */
    uint64_t epoch;
};

static void renewed_cb(void *arg, const struct etcd_result *res);

static void renew_cb(uv_timer_t *t)
{
    struct cluster *c = t->data;
    pthread_mutex_lock(&c->lock);
    int go = c->lease_state == LEASE_HELD && c->renew_out == NULL && !c->detached;
    int64_t lease = c->lease;
    pthread_mutex_unlock(&c->lock);
    if (!go)
        return;
    /* The send time, not the answer's: the lease was renewed at some point
     * after it, so counting from it errs on the early side. */
    struct renew *rn = malloc(sizeof(*rn));
    if (rn == NULL)
        return;
    rn->c = c;
    rn->sent = uv_now(&c->loop);
    rn->sent_ns = uv_hrtime();
    rn->epoch = c->lease_epoch;
    c->renew_out = rn;
    if (etcd_lease_keepalive(c->lease_etcd, lease, renewed_cb, rn) < 0) {
        c->renew_out = NULL;
        free(rn);
    }
}

static void renewed_cb(void *arg, const struct etcd_result *res)
{
    struct renew *rn = arg;
    struct cluster *c = rn->c;
    c->renew_out = NULL;
    pthread_mutex_lock(&c->lock);
    record_rtt(c, res->rtt_us);
    if (res->status < 0) {
        /* Counted and said even when the lease was given up meanwhile: a
         * renewal that tried every member can outlast the fence. */
        atomic_fetch_add(&c->stats.renew_failures, 1);
        if (ratelog_due(&c->renew_log, uv_now(&c->loop), LOG_EVERY_MS))
            log_warn("cluster lease renewal failed", LF_STR("error", res->error),
                     LF_INT("fence_in_ms", c->lease_state != LEASE_HELD
                                               ? 0
                                               : (int64_t)(c->last_renew_sent + c->fence_ms) -
                                                     (int64_t)uv_now(&c->loop)),
                     LF_INT("suppressed", ratelog_take(&c->renew_log)));
    }
    if (rn->epoch != c->lease_epoch || c->lease_state != LEASE_HELD || c->detached) {
        /* for a lease already given up */
    } else if (res->status == 0 && res->ttl_s > 0) {
        c->last_renew_sent = rn->sent;
        c->last_renew_ns = rn->sent_ns;
        uint64_t due = rn->sent + c->fence_ms, now = uv_now(&c->loop);
        uv_timer_start(&c->fence, fence_cb, due > now ? due - now : 0, 0);
    } else if (res->status == 0) {
        fence(c, "the lease has expired in etcd");
        uv_timer_start(&c->grant_retry, grant_retry_cb, 0, 0);
    } else {
        uv_timer_start(&c->renew, renew_cb, RENEW_RETRY_MS, c->renew_ms);
    }
    pthread_mutex_unlock(&c->lock);
    free(rn);
}

static void granted_cb(void *arg, const struct etcd_result *res)
{
    struct cluster *c = arg;
    pthread_mutex_lock(&c->lock);
    record_rtt(c, res->rtt_us);
    if (c->detached || c->stopping) {
        pthread_mutex_unlock(&c->lock);
        return;
    }
    if (res->status < 0) {
        c->lease_state = LEASE_DOWN;
        if (ratelog_due(&c->grant_log, uv_now(&c->loop), GRANT_LOG_EVERY_MS))
            log_warn("cluster: cannot grant a lease", LF_STR("error", res->error),
                     LF_INT("suppressed", ratelog_take(&c->grant_log)));
        uv_timer_start(&c->grant_retry, grant_retry_cb, RETRY_MS, 0);
    } else {
        c->lease = res->lease;
        c->lease_state = LEASE_HELD;
        c->last_renew_sent = uv_now(&c->loop) - res->rtt_us / 1000;
        c->last_renew_ns = uv_hrtime() - res->rtt_us * 1000;
        atomic_store(&c->stats.up, 1);
        char hex[24];
        snprintf(hex, sizeof(hex), "%" PRIx64, (uint64_t)c->lease);
        log_info("cluster joined", LF_STR("instance", c->cfg->instance), LF_STR("lease", hex),
                 LF_INT("ttl_ms", c->ttl_ms), LF_STR("etcd", etcd_endpoint(c->etcd)));
        /* From when the grant was sent, as for a renewal. */
        uint64_t rtt_ms = res->rtt_us / 1000;
        uv_timer_start(&c->fence, fence_cb, c->fence_ms > rtt_ms ? c->fence_ms - rtt_ms : 0, 0);
    }
    /* Claims that waited for the grant go out now (or are unavailable). */
    for (size_t b = 0; b < c->cids.n_buckets; b++)
        for (struct table_node *n = c->cids.buckets[b]; n != NULL; n = n->next) {
            struct cid *e = (struct cid *)n;
            if (e->state == CID_CLAIMING && !e->busy)
                issue(e);
        }
    if (res->status == 0 && c->watch_rev == 0)
        c->watch_rev = res->revision; /* evict requests for this lease come after it */
    pthread_mutex_unlock(&c->lock);
    if (res->status == 0 && c->watch == NULL)
        start_watch(c);
}

static void grant_lease(struct cluster *c)
{
    pthread_mutex_lock(&c->lock);
    int go = !c->detached && !c->stopping && c->lease_state != LEASE_HELD;
    if (go)
        c->lease_state = LEASE_GRANTING;
    pthread_mutex_unlock(&c->lock);
    if (go &&
        etcd_lease_grant(c->lease_etcd, (int64_t)((c->ttl_ms + 999) / 1000), granted_cb, c) < 0) {
        pthread_mutex_lock(&c->lock);
        c->lease_state = LEASE_DOWN;
        pthread_mutex_unlock(&c->lock);
        uv_timer_start(&c->grant_retry, grant_retry_cb, RETRY_MS, 0);
    }
}

/* --- the thread, and the process's side --------------------------------- */

static void revoked_cb(void *arg, const struct etcd_result *res)
{
    struct cluster *c = arg;
    if (res->status < 0)
        log_warn("cluster: cannot revoke the lease (it expires on its own)",
                 LF_STR("error", res->error));
    uv_stop(&c->loop);
}

static void close_cb(uv_handle_t *h) {}

/* Both etcd clients and every handle of the loop, closed and run out. */
static void close_loop_handles(struct cluster *c)
{
    etcd_free(c->etcd);
    etcd_free(c->lease_etcd);
    uv_handle_t *handles[] = { (uv_handle_t *)&c->wakeup,      (uv_handle_t *)&c->renew,
                               (uv_handle_t *)&c->fence,       (uv_handle_t *)&c->grant_retry,
                               (uv_handle_t *)&c->watch_retry, (uv_handle_t *)&c->wait_sweep };
    for (size_t i = 0; i < sizeof(handles) / sizeof(handles[0]); i++)
        uv_close(handles[i], close_cb);
    uv_run(&c->loop, UV_RUN_DEFAULT);
}

static void *cluster_main(void *arg)
{
    struct cluster *c = arg;
    pthread_mutex_lock(&c->lock);
    int inherited = c->lease != 0;
    if (inherited) {
        /* The old process renews it until the commit (cluster_attach). */
        c->lease_state = LEASE_HELD;
        c->detached = 1;
        atomic_store(&c->stats.up, 1);
    }
    pthread_mutex_unlock(&c->lock);
    if (inherited) {
        char hex[24];
        snprintf(hex, sizeof(hex), "%" PRIx64, (uint64_t)c->lease);
        log_info("cluster joined", LF_STR("instance", c->cfg->instance), LF_STR("lease", hex),
                 LF_INT("ttl_ms", c->ttl_ms), LF_STR("from", "live upgrade"));
    } else {
        grant_lease(c);
    }
    uv_timer_start(&c->renew, renew_cb, c->renew_ms, c->renew_ms);
    uv_timer_start(&c->wait_sweep, wait_sweep_cb, WAIT_RETRY_MS, WAIT_RETRY_MS);
    uv_run(&c->loop, UV_RUN_DEFAULT); /* until cluster_destroy */

    uv_timer_stop(&c->renew);
    uv_timer_stop(&c->fence);
    uv_timer_stop(&c->grant_retry);
    uv_timer_stop(&c->watch_retry);
    uv_timer_stop(&c->wait_sweep);
    if (c->watch != NULL)
        etcd_watch_cancel(c->watch);
    c->watch = NULL;
    /* Gone for good: the keys go with the lease now, not at its expiry.
     * After a live upgrade the lease is the new process's. */
    if (!c->detached && c->lease_state == LEASE_HELD &&
        etcd_lease_revoke(c->lease_etcd, c->lease, revoked_cb, c) == 0)
        uv_run(&c->loop, UV_RUN_DEFAULT); /* bounded: each call is */
    free(c->renew_out);                   /* a renewal still out: cancelled without its callback */
    close_loop_handles(c);
    uv_loop_close(&c->loop);
    return NULL;
}

static void cluster_destroy(struct registry *r)
{
    struct cluster *c = cluster_of(r);
    pthread_mutex_lock(&c->lock);
    c->stopping = 1;
    pthread_mutex_unlock(&c->lock);
    uv_async_send(&c->wakeup);
    pthread_join(c->thread, NULL);
    table_free(&c->cids);
    identity_table_destroy(&c->table);
    pthread_mutex_destroy(&c->lock);
    config_free(c->cfg_owner);
    free(c);
}

static const struct registry_ops cluster_ops = {
    .claim = cluster_claim,
    .release = cluster_release,
    .adopt = cluster_adopt,
    .destroy = cluster_destroy,
};

void cluster_scope(const struct cluster_config *cfg, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "%s %s", cfg->prefix, cfg->instance);
    for (size_t i = 0; i < cfg->n_etcd && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, " %s", cfg->etcd[i].url);
}

int cluster_new(struct cluster **out, struct registry **registry, struct config *config,
                registry_deliver_fn deliver, void *ctx, int64_t lease, uint64_t lease_age_ms)
{
    const struct cluster_config *cfg = &config->cluster;
    struct cluster *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->base = (struct registry){ .ops = &cluster_ops, .deliver = deliver, .deliver_ctx = ctx };
    c->cfg = cfg;
    c->cfg_owner = config;
    c->lease = lease;
    c->inherited_ns = uv_hrtime() - lease_age_ms * 1000000;
    c->lease_state = LEASE_DOWN;
    c->ttl_ms = cfg->lease_ttl_ms;
    uint64_t margin = c->ttl_ms / 5 > 1000 ? c->ttl_ms / 5 : 1000;
    c->fence_ms = c->ttl_ms - margin;
    c->renew_ms = c->ttl_ms / 3;
    int rc = -ENOMEM;
    char *urls[cfg->n_etcd + 1];
    for (size_t i = 0; i < cfg->n_etcd; i++)
        urls[i] = (char *)cfg->etcd[i].url;
    if (table_init(&c->cids) < 0)
        goto fail_table;
    if (identity_table_init(&c->table) < 0)
        goto fail_identities;
    if (pthread_mutex_init(&c->lock, NULL) != 0)
        goto fail_lock;
    if ((rc = uv_loop_init(&c->loop)) < 0)
        goto fail_loop;
    if ((rc = etcd_new(&c->etcd, &c->loop, urls, cfg->n_etcd, CALL_TIMEOUT_MS,
                       ETCD_MAX_CONNECTIONS)) < 0)
        goto fail_etcd;
    if ((rc = etcd_new(&c->lease_etcd, &c->loop, urls, cfg->n_etcd, CALL_TIMEOUT_MS,
                       ETCD_LEASE_CONNECTIONS)) < 0) {
        etcd_free(c->etcd);
        uv_run(&c->loop, UV_RUN_DEFAULT);
        goto fail_etcd;
    }
    uv_async_init(&c->loop, &c->wakeup, wakeup_cb);
    uv_timer_t *timers[] = { &c->renew, &c->fence, &c->grant_retry, &c->watch_retry,
                             &c->wait_sweep };
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
        uv_timer_init(&c->loop, timers[i]);
        timers[i]->data = c;
    }
    c->wakeup.data = c;
    if ((rc = -pthread_create(&c->thread, NULL, cluster_main, c)) < 0) {
        log_error("cluster: cannot start its thread", LF_STR("error", strerror(-rc)));
        close_loop_handles(c);
        goto fail_etcd;
    }
    config_ref(config);
    *out = c;
    *registry = &c->base;
    return 0;
fail_etcd:
    uv_loop_close(&c->loop);
fail_loop:
    pthread_mutex_destroy(&c->lock);
fail_lock:
    identity_table_destroy(&c->table);
fail_identities:
    table_destroy(&c->cids);
fail_table:
    free(c);
    return rc;
}

const struct cluster_stats *cluster_stats(const struct cluster *c) { return &c->stats; }

int cluster_on_unavailable_local(const struct cluster *c)
{
    return c->cfg->on_unavailable == UNAVAILABLE_LOCAL;
}

int64_t cluster_lease(struct cluster *c, char *scope, size_t len, uint64_t *age_ms)
{
    cluster_scope(c->cfg, scope, len);
    pthread_mutex_lock(&c->lock);
    int64_t lease = c->lease_state == LEASE_HELD ? c->lease : 0;
    *age_ms = (uv_hrtime() - c->last_renew_ns) / 1000000;
    pthread_mutex_unlock(&c->lock);
    return lease;
}

void cluster_attach(struct cluster *c)
{
    pthread_mutex_lock(&c->lock);
    c->attach = 1;
    pthread_mutex_unlock(&c->lock);
    uv_async_send(&c->wakeup);
}

void cluster_detach(struct cluster *c)
{
    pthread_mutex_lock(&c->lock);
    c->detached = 1;
    pthread_mutex_unlock(&c->lock);
}
