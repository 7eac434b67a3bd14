/* The registry contract's etcd backend: client identities shared by several lifeline instances. */
#ifndef LIFELINE_CLUSTER_H
#define LIFELINE_CLUSTER_H

#include <stdatomic.h>
#include <stdint.h>

#include "lifeline/config.h"
#include "lifeline/registry.h"

/*
 * Local decisions stay with the in-process identity table (an owner and a
 * successor per identity, as without a cluster); etcd decides between
 * instances. An instance holds an identity in etcd while any of its own
 * sessions holds it:
 *
 *   <prefix>/id/<route>/<client>           = instance name, bound to its lease
 *   <prefix>/evict/<lease hex>/<route>/<client>
 *                                          = the claimant's name, bound to the
 *                                            claimant's lease: "let it go"
 *
 * A claim for an identity this instance does not hold yet is a transaction
 * (create if absent, else read the holder). Held by another instance:
 * with replace, the claimant writes into the holder's evict inbox and
 * waits for the key's DELETE (a watch over the prefix, and a re-try every
 * 500 ms); the holder closes its sessions of that client as `replaced`,
 * waits for the server as it does locally, and deletes the key when the
 * last one released. With reject, the newcomer is refused.
 *
 * One thread of its own runs a libuv loop with the etcd client: renewals
 * every ttl/3, the watch, every transaction. Workers only take the lock;
 * the relay path never waits on etcd, only a session being admitted does.
 *
 * Fencing: when no renewal has succeeded for ttl − margin (margin: a fifth
 * of the TTL, at least 1 s), counted from the moment the last successful
 * renewal was sent, every session holding an identity through etcd is told
 * to close (REGISTRY_MSG_FENCE), before the lease can expire in etcd.
 */

/* How a claim ended, for lifeline_cluster_claims_total{result}. */
#define CLUSTER_RESULTS(X)                                                                         \
    X(GRANTED, "granted")         /* nobody else held it */                                        \
    X(REPLACED, "replaced")       /* another instance held it and let it go */                     \
    X(REFUSED, "refused")         /* another instance holds it: on_duplicate reject */             \
    X(UNAVAILABLE, "unavailable") /* etcd did not answer: refused */                               \
    X(LOCAL, "local")             /* etcd did not answer: the local table decided */

enum cluster_result {
#define CLUSTER_RESULT_ENUM_(id, name) CLUSTER_##id,
    CLUSTER_RESULTS(CLUSTER_RESULT_ENUM_)
#undef CLUSTER_RESULT_ENUM_
        CLUSTER_RESULT_COUNT
};

const char *cluster_result_name(enum cluster_result r);

/* Bucket bounds of the etcd round-trip histogram, in microseconds. */
#define CLUSTER_RTT_BUCKETS 8
extern const uint32_t cluster_rtt_bounds_us[CLUSTER_RTT_BUCKETS];

/* Counters for /metrics and /readyz; written by the cluster thread. */
struct cluster_stats {
    _Atomic int up; /* a lease is held */
    _Atomic uint64_t claims[CLUSTER_RESULT_COUNT];
    _Atomic uint64_t evictions_requested; /* this instance asked another to let go */
    _Atomic uint64_t evictions_received;  /* another instance asked this one */
    _Atomic uint64_t renew_failures;
    _Atomic uint64_t fences;
    _Atomic uint64_t fenced_sessions;
    _Atomic uint64_t rtt_buckets[CLUSTER_RTT_BUCKETS + 1]; /* the last: +Inf */
    _Atomic uint64_t rtt_sum_us;
};

struct cluster;

/* Starts the backend and its thread. `lease`: one handed over by a live
 * upgrade (0: none), kept instead of granting a new one. Returns 0 with
 * *out and *registry (the same object), or a negative errno (logged). */
int cluster_new(struct cluster **out, struct registry **registry, struct config *cfg,
                registry_deliver_fn deliver, void *ctx, int64_t lease, uint64_t lease_age_ms);

const struct cluster_stats *cluster_stats(const struct cluster *c);
int cluster_on_unavailable_local(const struct cluster *c);

/* What a live upgrade hands over: the lease (0: none held), the scope it
 * belongs to (prefix, instance and endpoints, as one string), and how long
 * ago its last successful renewal was sent (the new process fences from
 * there). */
int64_t cluster_lease(struct cluster *c, char *scope, size_t len, uint64_t *age_ms);
void cluster_scope(const struct cluster_config *cfg, char *buf, size_t len);

/* The old process, at a live upgrade's commit: the new process owns the
 * lease and the keys; this one stops every etcd call and will not revoke
 * the lease. */
void cluster_detach(struct cluster *c);

/* The new process, at the commit: a lease handed over is this process's
 * from now on (until then it neither renews, watches nor revokes it). */
void cluster_attach(struct cluster *c);

#endif
