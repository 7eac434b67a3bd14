/* A small etcd v3 client: the JSON gateway over HTTP (libcurl's multi interface), driven by one libuv loop. */
#ifndef LIFELINE_ETCD_H
#define LIFELINE_ETCD_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/*
 * Only what the cluster registry needs: leases, one conditional create, one
 * conditional delete, a put, and a watch over a prefix. Every call runs on
 * the loop given to etcd_new() and calls back on it, once (a watch: once
 * per event, then once when it ends). Keys and values are byte strings
 * here; the gateway's base64 and int64-as-string forms stay inside.
 *
 * Endpoints fail over: a call that cannot reach a member (connect refused,
 * timed out, no leader) is tried on the next one, each member once, and the
 * member that answered is used first from then on.
 */

struct etcd;
struct etcd_watch;

/* Connections to etcd at most: for claims and the watch, and, on a client
 * of their own so that a burst of claims never delays them, for the lease's
 * renewals. Calls past them queue inside the client (each still bounded by
 * the call timeout). */
#define ETCD_MAX_CONNECTIONS 8
#define ETCD_LEASE_CONNECTIONS 2
/* Descriptors the cluster may hold: those connections, its loop's. */
#define ETCD_MAX_FDS (ETCD_MAX_CONNECTIONS + ETCD_LEASE_CONNECTIONS + 4)

/* The current record of a key (value and key are NUL-terminated copies,
 * valid during the callback). */
struct etcd_kv {
    const char *key;
    const char *value;
    int64_t lease;
    int64_t mod_revision;
};

struct etcd_result {
    int status;        /* 0, or a negative errno: -ETIMEDOUT, -ECONNREFUSED, -EPROTO... */
    const char *error; /* with status < 0: what went wrong, in words */
    int64_t revision;  /* the store's revision when the call was answered */
    int succeeded;     /* a transaction: its compare held */
    int64_t lease;     /* lease grant: the ID */
    int64_t ttl_s;     /* lease grant and keep-alive: the TTL; 0: the lease is gone */
    struct etcd_kv kv; /* create that failed: who holds the key (key NULL: nobody) */
    uint64_t rtt_us;   /* the round trip of the attempt that answered */
};

typedef void (*etcd_done_fn)(void *arg, const struct etcd_result *res);

enum etcd_event_type {
    ETCD_PUT,
    ETCD_DELETE,
};

/* One change under a watched prefix (kv.value NULL for a delete). */
typedef void (*etcd_event_fn)(void *arg, enum etcd_event_type type, const struct etcd_kv *kv);

/* The watch has ended (status < 0; no event comes after this), or, with
 * status 0, is established: events after `revision` will come. -ESTALE:
 * etcd cancelled it; `revision`, when not 0, is where its history starts
 * now (what came before was compacted away). */
typedef void (*etcd_watch_state_fn)(void *arg, int status, int64_t revision);

/* Creates a client for `endpoints` ("http://host:port", copied), each call
 * bounded by timeout_ms, with at most max_connections open. Returns 0 and
 * *out, or -ENOMEM / -EINVAL. */
int etcd_new(struct etcd **out, uv_loop_t *loop, char *const *endpoints, size_t n,
             uint32_t timeout_ms, long max_connections);

/* Cancels every call (no callback) and frees the client once libuv has
 * closed its handles: run the loop until then. */
void etcd_free(struct etcd *e);

/* The endpoint that answered last. */
const char *etcd_endpoint(const struct etcd *e);

int etcd_lease_grant(struct etcd *e, int64_t ttl_s, etcd_done_fn done, void *arg);
int etcd_lease_keepalive(struct etcd *e, int64_t lease, etcd_done_fn done, void *arg);
int etcd_lease_revoke(struct etcd *e, int64_t lease, etcd_done_fn done, void *arg);

/* Creates key = value bound to `lease` if the key does not exist
 * (succeeded = 1); else answers who holds it (kv). */
int etcd_create(struct etcd *e, const char *key, const char *value, int64_t lease,
                etcd_done_fn done, void *arg);

/* Deletes `key` and `also` (NULL: none) if `key` is bound to `lease`. */
int etcd_delete_if_lease(struct etcd *e, const char *key, const char *also, int64_t lease,
                         etcd_done_fn done, void *arg);

/* Puts key = value bound to `lease` (0: none). */
int etcd_put(struct etcd *e, const char *key, const char *value, int64_t lease, etcd_done_fn done,
             void *arg);

/* Watches every key under `prefix` from revision `from` (0: now). */
int etcd_watch(struct etcd *e, const char *prefix, int64_t from, etcd_event_fn event,
               etcd_watch_state_fn state, void *arg, struct etcd_watch **out);

/* Ends a watch without calling it back. */
void etcd_watch_cancel(struct etcd_watch *w);

#endif
