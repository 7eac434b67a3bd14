/* Configuration: JSON text -> validated, immutable struct config. */
#ifndef LIFELINE_CONFIG_H
#define LIFELINE_CONFIG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "lifeline/addr.h"
#include "lifeline/log.h"

#define CONFIG_NAME_MAX 64
#define CONFIG_DEFAULT_PATH "/etc/lifeline/lifeline.json"
/* An account name: up to 32 characters, a trailing '$', and the NUL. */
#define CONFIG_ACCOUNT_MAX 34
/* buffer_total_bytes when the config leaves it out: 16 MiB. */
#define CONFIG_BUFFER_TOTAL_DEFAULT (16u * 1024 * 1024)

/* How lifeline closes one side of a session it ends. */
enum close_mode {
    CLOSE_RST, /* abortive: SO_LINGER 0, no TIME_WAIT */
    CLOSE_FIN, /* graceful: every byte, then FIN */
};

/* What happens to the client when the server closes. */
enum upstream_on_close {
    ON_CLOSE_CLOSE_CLIENT, /* mirror the close to the client */
    ON_CLOSE_RECONNECT,    /* keep the client, connect to the server again */
};

/* What makes two connections "the same client" on a route. */
enum client_identity {
    IDENTITY_ADDRESS_PORT, /* source address and port: the fixed-port legacy client */
    IDENTITY_ADDRESS,      /* source address, any port */
    IDENTITY_NONE,         /* every connection is a client of its own */
};

/* What a new connection of a client that already has a session does. */
enum on_duplicate {
    DUPLICATE_REPLACE, /* close the old session, then serve the new one */
    DUPLICATE_REJECT,  /* keep the old session, close the new one */
    DUPLICATE_ALLOW,   /* serve both */
};

struct heartbeat_config {
    uint32_t silence_ms;        /* 0: off */
    uint32_t keepalive_idle_ms; /* 0: TCP keepalive off */
    uint32_t keepalive_interval_ms;
    uint32_t keepalive_count;
    uint32_t user_timeout_ms; /* 0: the kernel's default */
};

struct client_config {
    enum client_identity identity;
    enum on_duplicate on_duplicate;
    enum close_mode close;
    struct heartbeat_config heartbeat;
    struct cidr *allow; /* NULL (n_allow 0): every address may connect */
    size_t n_allow;
    uint32_t max_connections; /* per route, across workers; 0: no limit */
    uint32_t max_per_address; /* per client IP address; 0: no limit */
};

/* Where upstream connections come from (upstream.source_address). */
enum source_kind {
    SOURCE_KERNEL,  /* unset or a wildcard: the kernel picks the address */
    SOURCE_ADDRESS, /* one configured address of this host */
    SOURCE_CLIENT,  /* each client's own address (transparent: IP_TRANSPARENT) */
};

struct upstream_source {
    enum source_kind kind;
    struct sockaddr_storage addr; /* SOURCE_ADDRESS only; else AF_UNSPEC */
};

struct upstream_config {
    struct hostport *servers; /* at least one */
    size_t n_servers;
    struct upstream_source source; /* the port is always an ephemeral one */
    uint32_t mark;                 /* SO_MARK on upstream sockets; 0: none */
    uint32_t connect_timeout_ms;
    uint32_t retries; /* further tries after the first one */
    uint32_t retry_backoff_ms;
    uint32_t retry_backoff_max_ms; /* the doubled pause never grows past this */
    enum close_mode close;         /* for a client lifeline gave up on */
    enum upstream_on_close on_close;
};

struct route_config {
    char name[CONFIG_NAME_MAX];
    struct hostport listen;
    int dual_stack; /* an IPv6 listener that takes IPv4 clients too */
    uint32_t buffer_bytes;
    struct client_config client;
    struct upstream_config upstream;
};

/* The admin endpoint (HTTP on the supervisor's loop). */
struct admin_config {
    int enabled;            /* the "admin" object is present */
    struct hostport listen; /* loopback unless allow_remote */
    int allow_remote;
};

/* What a claim does when etcd does not answer. */
enum on_unavailable {
    UNAVAILABLE_REFUSE, /* close the newcomer: the order between instances is kept */
    UNAVAILABLE_LOCAL,  /* the in-process registry decides: served, order not guaranteed */
};

#define CONFIG_URL_MAX 256
#define CONFIG_PREFIX_MAX 128

struct etcd_endpoint {
    char url[CONFIG_URL_MAX]; /* "http://host:port" or "https://host:port", no path */
};

/* Several instances sharing client identities through etcd (cluster.h). */
struct cluster_config {
    int enabled; /* the "cluster" object is present */
    struct etcd_endpoint *etcd;
    size_t n_etcd;
    char instance[CONFIG_NAME_MAX];
    char prefix[CONFIG_PREFIX_MAX]; /* "/lifeline": no trailing '/' */
    uint32_t lease_ttl_ms;
    enum on_unavailable on_unavailable;
};

/* Every problem found in one pass, each "json.path: message". */
struct config_errors {
    char **msgs;
    size_t n;
};

struct config {
    uint32_t workers; /* 0 = one per CPU */
    enum log_level log_level;
    enum log_format log_format;
    uint32_t drain_timeout_ms;
    /* Most memory all sessions together may hold in relay buffers (bytes read
     * from one side and not yet written to the other); past it lifeline
     * stops reading instead of buffering more. */
    uint32_t buffer_total_bytes;
    struct admin_config admin;
    struct cluster_config cluster;
    /* Accounts to drop privileges to after binding; "" keeps the one
     * lifeline was started as. Checked for form only: the daemon resolves
     * them when it starts. */
    char user[CONFIG_ACCOUNT_MAX];
    char group[CONFIG_ACCOUNT_MAX];
    struct route_config *routes; /* at least one */
    size_t n_routes;
    /* Advice that is not an error, "json.path: message": values the kernel
     * will round. --check prints them; the daemon logs them. */
    struct config_errors notes;
    char hash[17]; /* hash_bytes() of the JSON text, hex: names the loaded config */
    /* Owners: the supervisor, each worker, each session started under it.
     * A reload leaves established sessions on the config they started with. */
    _Atomic unsigned refs;
};

/* Parses and validates JSON text. In string values, ${VAR}, ${VAR:-default}
 * and $$ are replaced from the environment first. On success returns 0 and
 * sets *out (holding one reference); on failure returns -EINVAL (-ENOMEM when memory ran out), *out
 * stays NULL and errs holds every problem found (invalid JSON is one error
 * naming line and column). */
int config_parse(const char *json, size_t len, struct config **out, struct config_errors *errs);

/* Calls report() with the path of each key that only a restart applies
 * (the key table's RESTART_ONLY rows: "workers", "admin", ...) whose value
 * differs between the running config and the next one. An object is
 * reported once, whatever changed in it. */
void config_restart_changes(const struct config *cur, const struct config *next,
                            void (*report)(const char *path, void *arg), void *arg);

/* One key of the schema, as the README's configuration table shows it. */
struct config_key_doc {
    const char *path;    /* "routes[].client.identity" */
    const char *type;    /* "integer", "boolean", "string", "object", "array" */
    const char *def;     /* "`3000`", "`\"info\"`", "`false`"; NULL: none shown */
    const char *allowed; /* "0 \u2013 100", "`\"rst\"`, `\"fin\"`"; NULL: free form */
    int restart_only;    /* a reload keeps the running value */
};

/* Calls fn for every key of the schema, parents before children, in table
 * order: what the README's reference is checked against. */
void config_describe_keys(void (*fn)(const struct config_key_doc *doc, void *arg), void *arg);

/* Reads the file and calls config_parse(). A file that cannot be read is one
 * error naming the path and strerror, with return value -errno. */
int config_load(const char *path, struct config **out, struct config_errors *errs);

/* Takes one more reference (thread-safe). Returns cfg. */
struct config *config_ref(struct config *cfg);
/* Drops one reference (thread-safe); the last one frees. NULL is a no-op. */
void config_free(struct config *cfg);
void config_errors_free(struct config_errors *errs);
/* Logs each of errs as an `invalid config` error line naming the file (a
 * start or a reload; --check prints the same messages as plain lines). */
void config_errors_log(const char *path, const struct config_errors *errs);
/* Appends one message (printf-style) to errs: for checks made outside the
 * parser. Returns 0 or -ENOMEM. */
int config_errors_add(struct config_errors *errs, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
