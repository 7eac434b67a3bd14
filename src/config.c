/* Configuration: JSON text -> validated, immutable struct config, driven by key tables. */
#include "lifeline/config.h"

#include "lifeline/jsonstr.h"
#include "lifeline/liveness.h"
#include "lifeline/log.h"
#include "lifeline/table.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* A config file larger than this is a mistake, not a config. */
#define CONFIG_FILE_MAX ((size_t)16 * 1024 * 1024)
/* Long enough for any real path; a longer one (a huge unknown key) is cut. */
#define PATH_BUF 512
/* Values echoed in messages are cut so one bad string cannot flood the log. */
#define ECHO_MAX 200

/* ---- The schema ----------------------------------------------------------
 *
 * Each JSON object is described by one table of `struct key` rows. Parsing,
 * defaults, validation, error messages and freeing all walk these tables, so a
 * new key is a new row, and a new nested object is a new table plus an
 * OBJECT_KEY row pointing at it. Offsets are relative to the C struct that
 * holds the enclosing JSON object; a JSON object may map onto its parent's
 * struct (offset 0), as "log" does onto struct config.
 *
 * Before a string value is checked, ${VAR}, ${VAR:-default} and $$ in it are
 * replaced (see substitute()), so every message quotes the value as used.
 * Rules that span keys (the admin address against the routes') run once the
 * whole document is parsed, in check_admin(). */

enum key_kind {
    KEY_U32,    /* JSON integer in [min, max], stored in a uint32_t */
    KEY_BOOL,   /* JSON true or false, stored as an int 0 or 1 */
    KEY_ENUM,   /* JSON string, one of `choices`, stored in an int-sized enum */
    KEY_STRING, /* JSON string checked and stored by `parse` */
    KEY_OBJECT, /* nested JSON object described by `keys` */
    KEY_ARRAY,  /* JSON array of `elem`, stored as a calloc'd C array + count */
};

enum { OPTIONAL = 0, REQUIRED = 1 };

struct choice {
    const char *name;
    int value;
};

/* What a reload does with a key's new value. */
enum key_reload {
    RELOADABLE,   /* applied to new connections at once */
    RESTART_ONLY, /* kept at its running value until a restart (logged) */
};

struct key {
    const char *name;
    enum key_kind kind;
    int required;
    size_t offset;
    enum key_reload reload;
    size_t size; /* the field's size in bytes: what a restart-only check compares */

    /* KEY_U32, and the default of KEY_ENUM (an enum value) and KEY_BOOL. */
    int64_t min, max, def;

    /* KEY_ENUM: the allowed names, ended by a NULL name. */
    const struct choice *choices;

    /* KEY_STRING: the value used when the key is left out (NULL: none). */
    const char *sdef;
    /* KEY_STRING: stores the parsed string at the field, 0 or -EINVAL; on
     * failure the message is "expected <expect>, got <the string>". */
    int (*parse)(const char *s, void *field);
    const char *expect;
    /* KEY_STRING directly in an array's element object: the value must differ
     * between elements, as decided by `same`; `unique` names it in the error. */
    const char *unique;
    int (*same)(const void *a, const void *b);

    /* KEY_OBJECT, and KEY_ARRAY elements that are objects. */
    const struct key *keys;
    size_t n_keys;
    /* KEY_OBJECT whose presence turns a feature on: an int at switch_offset
     * (from the same base as `offset`) is set to 1 when the object is given. */
    int has_switch;
    size_t switch_offset;

    /* KEY_ARRAY: the element (a row with offset 0), its C size, where the
     * count lives, bounds on the count (max 0: no bound), and the noun for
     * "must hold at least one <noun>". */
    const struct key *elem;
    size_t elem_size;
    size_t count_offset;
    size_t min_items, max_items;
    const char *noun;
};

#define N_KEYS(table) (sizeof(table) / sizeof((table)[0]))
#define FIELD_SIZE(type, field) sizeof(((type *)0)->field)

#define U32_KEY(key, type, field, lo, hi, dflt, rl)                                                \
    {                                                                                              \
        .name = (key), .kind = KEY_U32, .offset = offsetof(type, field), .min = (lo), .max = (hi), \
        .def = (dflt), .reload = (rl), .size = FIELD_SIZE(type, field)                             \
    }

#define BOOL_KEY(key, type, field, dflt, rl)                                                       \
    {                                                                                              \
        .name = (key), .kind = KEY_BOOL, .offset = offsetof(type, field), .def = (dflt),           \
        .reload = (rl), .size = FIELD_SIZE(type, field)                                            \
    }

#define ENUM_KEY(key, type, field, choice_table, dflt, rl)                                         \
    {                                                                                              \
        .name = (key), .kind = KEY_ENUM, .offset = offsetof(type, field),                          \
        .choices = (choice_table), .def = (dflt), .reload = (rl), .size = FIELD_SIZE(type, field)  \
    }

#define STRING_KEY(key, type, field, req, parse_fn, expect_words, rl)                              \
    {                                                                                              \
        .name = (key), .kind = KEY_STRING, .required = (req), .offset = offsetof(type, field),     \
        .parse = (parse_fn), .expect = (expect_words), .reload = (rl),                             \
        .size = FIELD_SIZE(type, field)                                                            \
    }

#define UNIQUE_STRING_KEY(key, type, field, req, parse_fn, expect_words, what, same_fn, rl)        \
    {                                                                                              \
        .name = (key), .kind = KEY_STRING, .required = (req), .offset = offsetof(type, field),     \
        .parse = (parse_fn), .expect = (expect_words), .unique = (what), .same = (same_fn),        \
        .reload = (rl), .size = FIELD_SIZE(type, field)                                            \
    }

#define OBJECT_KEY(key, req, off, table, rl)                                                       \
    {                                                                                              \
        .name = (key), .kind = KEY_OBJECT, .required = (req), .offset = (off), .keys = (table),    \
        .n_keys = N_KEYS(table), .reload = (rl)                                                    \
    }

/* An optional object that, when present, sets `switch_field` of `type` to 1. */
#define SWITCH_OBJECT_KEY(key, off, table, type, switch_field, rl)                                 \
    {                                                                                              \
        .name = (key), .kind = KEY_OBJECT, .offset = (off), .keys = (table),                       \
        .n_keys = N_KEYS(table), .has_switch = 1, .switch_offset = offsetof(type, switch_field),   \
        .reload = (rl)                                                                             \
    }

#define ARRAY_KEY(key, type, field, count_field, req, elem_row, lo, hi, what, rl)                  \
    {                                                                                              \
        .name = (key), .kind = KEY_ARRAY, .required = (req), .offset = offsetof(type, field),      \
        .elem = (elem_row), .elem_size = FIELD_SIZE(type, field[0]),                               \
        .count_offset = offsetof(type, count_field), .min_items = (lo), .max_items = (hi),         \
        .noun = (what), .reload = (rl)                                                             \
    }

/* Enum fields are written through an int. */
_Static_assert(sizeof(enum log_level) == sizeof(int), "enum log_level is int-sized");
_Static_assert(sizeof(enum log_format) == sizeof(int), "enum log_format is int-sized");
_Static_assert(sizeof(enum close_mode) == sizeof(int), "enum close_mode is int-sized");
_Static_assert(sizeof(enum upstream_on_close) == sizeof(int),
               "enum upstream_on_close is int-sized");
_Static_assert(sizeof(enum client_identity) == sizeof(int), "enum client_identity is int-sized");
_Static_assert(sizeof(enum on_duplicate) == sizeof(int), "enum on_duplicate is int-sized");
_Static_assert(sizeof(enum on_unavailable) == sizeof(int), "enum on_unavailable is int-sized");
_Static_assert(CONFIG_NAME_MAX == 64, "route name message says 1-63 characters");
_Static_assert(CONFIG_ACCOUNT_MAX == 34, "account names are 1-32 characters and a '$'");

static int parse_route_name(const char *s, void *field);
static int parse_endpoint(const char *s, void *field);
static int parse_source_address(const char *s, void *field);
static int parse_account(const char *s, void *field);
static int parse_cidr(const char *s, void *field);
static int parse_etcd_url(const char *s, void *field);
static int parse_prefix(const char *s, void *field);
static int same_name(const void *a, const void *b);
static int same_endpoint(const void *a, const void *b);

static const struct choice log_level_choices[] = {
#define LEVEL_CHOICE_(id, name) { name, LOG_##id },
    LOG_LEVELS(LEVEL_CHOICE_)
#undef LEVEL_CHOICE_
        { NULL, 0 },
};

static const struct choice log_format_choices[] = {
#define FORMAT_CHOICE_(id, name) { name, LOG_FORMAT_##id },
    LOG_FORMATS(FORMAT_CHOICE_)
#undef FORMAT_CHOICE_
        { NULL, 0 },
};

static const struct key server_elem = {
    .name = "server",
    .kind = KEY_STRING,
    .parse = parse_endpoint,
    .expect = "\"host:port\"",
};

static const struct key allow_elem = {
    .name = "allow",
    .kind = KEY_STRING,
    .parse = parse_cidr,
    .expect = "an address or CIDR",
};

static const struct choice close_choices[] = {
    { "rst", CLOSE_RST },
    { "fin", CLOSE_FIN },
    { NULL, 0 },
};

static const struct choice on_close_choices[] = {
    { "close_client", ON_CLOSE_CLOSE_CLIENT },
    { "reconnect", ON_CLOSE_RECONNECT },
    { NULL, 0 },
};

static const struct choice identity_choices[] = {
    { "address_port", IDENTITY_ADDRESS_PORT },
    { "address", IDENTITY_ADDRESS },
    { "none", IDENTITY_NONE },
    { NULL, 0 },
};

static const struct choice on_duplicate_choices[] = {
    { "replace", DUPLICATE_REPLACE },
    { "reject", DUPLICATE_REJECT },
    { "allow", DUPLICATE_ALLOW },
    { NULL, 0 },
};

/* TCP_KEEPIDLE and TCP_KEEPINTVL take at most 32767 s, TCP_KEEPCNT 127. */
static const struct key heartbeat_keys[] = {
    U32_KEY("silence_ms", struct heartbeat_config, silence_ms, 0, 86400000, 0, RELOADABLE),
    U32_KEY("keepalive_idle_ms", struct heartbeat_config, keepalive_idle_ms, 0, 32767000, 10000,
            RELOADABLE),
    U32_KEY("keepalive_interval_ms", struct heartbeat_config, keepalive_interval_ms, 1, 32767000,
            2000, RELOADABLE),
    U32_KEY("keepalive_count", struct heartbeat_config, keepalive_count, 1, 127, 3, RELOADABLE),
    U32_KEY("user_timeout_ms", struct heartbeat_config, user_timeout_ms, 0, 86400000, 20000,
            RELOADABLE),
};

static const struct key client_keys[] = {
    ENUM_KEY("identity", struct client_config, identity, identity_choices, IDENTITY_ADDRESS_PORT,
             RELOADABLE),
    ENUM_KEY("on_duplicate", struct client_config, on_duplicate, on_duplicate_choices,
             DUPLICATE_REPLACE, RELOADABLE),
    ENUM_KEY("close", struct client_config, close, close_choices, CLOSE_RST, RELOADABLE),
    OBJECT_KEY("heartbeat", OPTIONAL, offsetof(struct client_config, heartbeat), heartbeat_keys,
               RELOADABLE),
    ARRAY_KEY("allow", struct client_config, allow, n_allow, OPTIONAL, &allow_elem, 1, 1024, "CIDR",
              RELOADABLE),
    U32_KEY("max_connections", struct client_config, max_connections, 0, 10000000, 0, RELOADABLE),
    U32_KEY("max_per_address", struct client_config, max_per_address, 0, 10000000, 0, RELOADABLE),
};

static const struct key upstream_keys[] = {
    ARRAY_KEY("servers", struct upstream_config, servers, n_servers, REQUIRED, &server_elem, 1, 64,
              "server", RELOADABLE),
    STRING_KEY("source_address", struct upstream_config, source, OPTIONAL, parse_source_address,
               "an IP address or \"client\"", RELOADABLE),
    U32_KEY("mark", struct upstream_config, mark, 0, UINT32_MAX, 0, RELOADABLE),
    U32_KEY("connect_timeout_ms", struct upstream_config, connect_timeout_ms, 1, 600000, 3000,
            RELOADABLE),
    U32_KEY("retries", struct upstream_config, retries, 0, 100, 3, RELOADABLE),
    U32_KEY("retry_backoff_ms", struct upstream_config, retry_backoff_ms, 0, 600000, 200,
            RELOADABLE),
    U32_KEY("retry_backoff_max_ms", struct upstream_config, retry_backoff_max_ms, 0, 3600000, 30000,
            RELOADABLE),
    ENUM_KEY("close", struct upstream_config, close, close_choices, CLOSE_FIN, RELOADABLE),
    ENUM_KEY("on_close", struct upstream_config, on_close, on_close_choices, ON_CLOSE_CLOSE_CLIENT,
             RELOADABLE),
};

static const struct key route_keys[] = {
    UNIQUE_STRING_KEY("name", struct route_config, name, REQUIRED, parse_route_name,
                      "1-63 characters of A-Z a-z 0-9 _ . -", "route name", same_name, RELOADABLE),
    UNIQUE_STRING_KEY("listen", struct route_config, listen, REQUIRED, parse_endpoint,
                      "\"host:port\"", "listen address", same_endpoint, RELOADABLE),
    /* A reload applies it to a new listening socket; one that stays keeps
     * its own (the supervisor warns). */
    BOOL_KEY("dual_stack", struct route_config, dual_stack, 0, RELOADABLE),
    U32_KEY("buffer_bytes", struct route_config, buffer_bytes, 1024, 67108864, 1048576, RELOADABLE),
    OBJECT_KEY("client", OPTIONAL, offsetof(struct route_config, client), client_keys, RELOADABLE),
    OBJECT_KEY("upstream", REQUIRED, offsetof(struct route_config, upstream), upstream_keys,
               RELOADABLE),
};

static const struct key route_elem = {
    .name = "route",
    .kind = KEY_OBJECT,
    .keys = route_keys,
    .n_keys = N_KEYS(route_keys),
};

/* "log" and "shutdown" are JSON objects whose fields live in struct config. */
static const struct key log_keys[] = {
    ENUM_KEY("level", struct config, log_level, log_level_choices, LOG_INFO, RELOADABLE),
    ENUM_KEY("format", struct config, log_format, log_format_choices, LOG_FORMAT_TEXT, RELOADABLE),
};

static const struct key shutdown_keys[] = {
    U32_KEY("drain_timeout_ms", struct config, drain_timeout_ms, 0, 3600000, 10000, RELOADABLE),
};

static const struct key etcd_elem = {
    .name = "etcd",
    .kind = KEY_STRING,
    .parse = parse_etcd_url,
    .expect = "an etcd client URL \"http://host:port\" or \"https://host:port\"",
};

static const struct choice on_unavailable_choices[] = {
    { "refuse", UNAVAILABLE_REFUSE },
    { "local", UNAVAILABLE_LOCAL },
    { NULL, 0 },
};

/* "cluster" is off unless the object is given. */
static const struct key cluster_keys[] = {
    ARRAY_KEY("etcd", struct cluster_config, etcd, n_etcd, REQUIRED, &etcd_elem, 1, 16, "endpoint",
              RESTART_ONLY),
    STRING_KEY("instance", struct cluster_config, instance, REQUIRED, parse_route_name,
               "1-63 letters, digits, '_', '.' or '-'", RESTART_ONLY),
    { .name = "prefix",
      .kind = KEY_STRING,
      .offset = offsetof(struct cluster_config, prefix),
      .parse = parse_prefix,
      .expect = "a key prefix: '/' then up to 126 characters, not ending in '/'",
      .sdef = "/lifeline",
      .reload = RESTART_ONLY,
      .size = FIELD_SIZE(struct cluster_config, prefix) },
    U32_KEY("lease_ttl_ms", struct cluster_config, lease_ttl_ms, 2000, 600000, 5000, RESTART_ONLY),
    ENUM_KEY("on_unavailable", struct cluster_config, on_unavailable, on_unavailable_choices,
             UNAVAILABLE_REFUSE, RESTART_ONLY),
};

/* "admin" is off unless the object is given; then it needs an address. */
static const struct key admin_keys[] = {
    STRING_KEY("listen", struct admin_config, listen, REQUIRED, parse_endpoint, "\"host:port\"",
               RESTART_ONLY),
    BOOL_KEY("allow_remote", struct admin_config, allow_remote, 0, RESTART_ONLY),
};

static const struct key root_keys[] = {
    U32_KEY("workers", struct config, workers, 0, 256, 0, RESTART_ONLY),
    U32_KEY("buffer_total_bytes", struct config, buffer_total_bytes, 1048576, 4294967295,
            CONFIG_BUFFER_TOTAL_DEFAULT, RELOADABLE),
    OBJECT_KEY("log", OPTIONAL, 0, log_keys, RELOADABLE),
    OBJECT_KEY("shutdown", OPTIONAL, 0, shutdown_keys, RELOADABLE),
    SWITCH_OBJECT_KEY("admin", offsetof(struct config, admin), admin_keys, struct config,
                      admin.enabled, RESTART_ONLY),
    SWITCH_OBJECT_KEY("cluster", offsetof(struct config, cluster), cluster_keys, struct config,
                      cluster.enabled, RESTART_ONLY),
    STRING_KEY("user", struct config, user, OPTIONAL, parse_account, "an account name",
               RESTART_ONLY),
    STRING_KEY("group", struct config, group, OPTIONAL, parse_account, "an account name",
               RESTART_ONLY),
    ARRAY_KEY("routes", struct config, routes, n_routes, REQUIRED, &route_elem, 1, 0, "route",
              RELOADABLE),
};

/* ---- Value parsers named by the tables ------------------------------------ */

static int parse_route_name(const char *s, void *field)
{
    size_t len = strlen(s);
    if (len == 0 || len >= CONFIG_NAME_MAX)
        return -EINVAL;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '.' || c == '-';
        if (!ok)
            return -EINVAL;
    }
    memcpy(field, s, len + 1);
    return 0;
}

/* An etcd member's client URL: the scheme, a host and a port, nothing else
 * (the client adds the API's paths). */
static int parse_etcd_url(const char *s, void *field)
{
    const char *rest = strncmp(s, "http://", 7) == 0    ? s + 7
                       : strncmp(s, "https://", 8) == 0 ? s + 8
                                                        : NULL;
    struct hostport hp;
    if (rest == NULL || strlen(s) >= CONFIG_URL_MAX || strchr(rest, '/') != NULL ||
        addr_parse_hostport(rest, &hp, NULL) < 0)
        return -EINVAL;
    memcpy(field, s, strlen(s) + 1);
    return 0;
}

static int parse_prefix(const char *s, void *field)
{
    size_t len = strlen(s);
    if (len < 2 || len >= CONFIG_PREFIX_MAX || s[0] != '/' || s[len - 1] == '/')
        return -EINVAL;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p < 0x21 || *p == 0x7f)
            return -EINVAL;
    memcpy(field, s, len + 1);
    return 0;
}

static int parse_endpoint(const char *s, void *field)
{
    return addr_parse_hostport(s, field, NULL);
}

/* "client": the client's own address. The wildcard means "let the kernel
 * choose", the same as no source at all. */
static int parse_source_address(const char *s, void *field)
{
    struct upstream_source src = { .kind = SOURCE_KERNEL };
    src.addr.ss_family = AF_UNSPEC;
    if (strcmp(s, "client") == 0) {
        src.kind = SOURCE_CLIENT;
    } else {
        if (addr_parse_ip(s, &src.addr) < 0)
            return -EINVAL;
        if (addr_is_any((struct sockaddr *)&src.addr)) {
            memset(&src.addr, 0, sizeof(src.addr));
            src.addr.ss_family = AF_UNSPEC;
        } else {
            src.kind = SOURCE_ADDRESS;
        }
    }
    memcpy(field, &src, sizeof(src));
    return 0;
}

/* The portable form of a user or group name, as useradd and groupadd take it:
 * 1-32 characters of [a-z_][a-z0-9_.-]*, and a trailing '$' for a machine
 * account. Whether the account exists is the daemon's question. */
static int parse_account(const char *s, void *field)
{
    size_t len = strlen(s);
    size_t body = len > 0 && s[len - 1] == '$' ? len - 1 : len;
    if (body == 0 || body > CONFIG_ACCOUNT_MAX - 2)
        return -EINVAL;
    for (size_t i = 0; i < body; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || c == '_' ||
                 (i > 0 && ((c >= '0' && c <= '9') || c == '.' || c == '-'));
        if (!ok)
            return -EINVAL;
    }
    memcpy(field, s, len + 1);
    return 0;
}

static int parse_cidr(const char *s, void *field) { return addr_parse_cidr(s, field); }

static int same_name(const void *a, const void *b)
{
    const char *x = a, *y = b;
    return x[0] != '\0' && strcmp(x, y) == 0;
}

/* IP literals compare by value ("[::0]:1" is "[::]:1"); names by text,
 * ignoring case as DNS does. An endpoint that failed to parse is empty and
 * equals nothing. */
static int same_endpoint(const void *a, const void *b)
{
    const struct hostport *x = a, *y = b;
    if (x->host[0] == '\0' || y->host[0] == '\0' || x->port != y->port || x->numeric != y->numeric)
        return 0;
    if (!x->numeric)
        return strcasecmp(x->host, y->host) == 0;
    if (x->sa.ss_family != y->sa.ss_family)
        return 0;
    if (x->sa.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&x->sa)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)&y->sa)->sin_addr.s_addr;
    return memcmp(&((const struct sockaddr_in6 *)&x->sa)->sin6_addr,
                  &((const struct sockaddr_in6 *)&y->sa)->sin6_addr, sizeof(struct in6_addr)) == 0;
}

/* ---- Error collection ----------------------------------------------------- */

struct ctx {
    char **msgs;
    size_t n, cap;
    int oom; /* once set, parsing goes on but the result is -ENOMEM */
};

/* The JSON path of the value being looked at, e.g. "routes[0].upstream". */
struct path {
    char buf[PATH_BUF];
    size_t len;
};

static size_t path_push(struct path *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static size_t path_push(struct path *p, const char *fmt, ...)
{
    size_t saved = p->len;
    size_t room = sizeof(p->buf) - p->len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(p->buf + p->len, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        p->len += (size_t)n < room ? (size_t)n : room - 1;
    return saved;
}

static size_t path_key(struct path *p, const char *name)
{
    return p->len == 0 ? path_push(p, "%s", name) : path_push(p, ".%s", name);
}

static void path_pop(struct path *p, size_t saved)
{
    p->len = saved;
    p->buf[saved] = '\0';
}

static void add_error(struct ctx *c, const struct path *p, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void add_error(struct ctx *c, const struct path *p, const char *fmt, ...)
{
    if (c->oom)
        return;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        char **msgs = realloc(c->msgs, cap * sizeof(*msgs));
        if (msgs == NULL) {
            c->oom = 1;
            return;
        }
        c->msgs = msgs;
        c->cap = cap;
    }
    const char *where = p == NULL ? NULL : p->len ? p->buf : "(root)";
    va_list ap;
    va_start(ap, fmt);
    int body = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    size_t prefix = where ? strlen(where) + 2 : 0;
    char *msg = body < 0 ? NULL : malloc(prefix + (size_t)body + 1);
    if (msg == NULL) {
        c->oom = 1;
        return;
    }
    if (where)
        snprintf(msg, prefix + 1, "%s: ", where);
    va_start(ap, fmt);
    vsnprintf(msg + prefix, (size_t)body + 1, fmt, ap);
    va_end(ap);
    c->msgs[c->n++] = msg;
}

static void errors_free(char **msgs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(msgs[i]);
    free(msgs);
}

/* Hands the collected messages to the caller (or drops them if unwanted). */
static void errors_give(struct ctx *c, struct config_errors *errs)
{
    if (errs != NULL) {
        errs->msgs = c->msgs;
        errs->n = c->n;
    } else {
        errors_free(c->msgs, c->n);
    }
    c->msgs = NULL;
    c->n = c->cap = 0;
}

/* A string as it appears in a message: quoted, JSON-escaped, cut if long. */
static const char *quote(const char *s, char *buf, size_t len)
{
    jsonstr_quote(buf, len, s, ECHO_MAX);
    return buf;
}

/* ---- Type checks ---------------------------------------------------------- */

/* cJSON keeps every number as a double, so "integer" means integral value. */
static int is_integral(double d)
{
    if (!isfinite(d))
        return 0;
    if (d >= 9007199254740992.0 || d <= -9007199254740992.0) /* 2^53: all integral */
        return 1;
    return d == (double)(int64_t)d;
}

static const char *type_word(const cJSON *v)
{
    if (cJSON_IsString(v))
        return "string";
    if (cJSON_IsNumber(v))
        return is_integral(v->valuedouble) ? "integer" : "number";
    if (cJSON_IsBool(v))
        return "boolean";
    if (cJSON_IsObject(v))
        return "object";
    if (cJSON_IsArray(v))
        return "array";
    if (cJSON_IsNull(v))
        return "null";
    return "invalid";
}

static const char *expected_word(enum key_kind kind)
{
    switch (kind) {
    case KEY_U32:
        return "integer";
    case KEY_BOOL:
        return "boolean";
    case KEY_ENUM:
    case KEY_STRING:
        return "string";
    case KEY_OBJECT:
        return "object";
    case KEY_ARRAY:
        return "array";
    }
    return "?";
}

static int has_type(const struct key *k, const cJSON *v)
{
    switch (k->kind) {
    case KEY_U32:
        return cJSON_IsNumber(v) && is_integral(v->valuedouble);
    case KEY_BOOL:
        return cJSON_IsBool(v);
    case KEY_ENUM:
    case KEY_STRING:
        return cJSON_IsString(v);
    case KEY_OBJECT:
        return cJSON_IsObject(v);
    case KEY_ARRAY:
        return cJSON_IsArray(v);
    }
    return 0;
}

/* ---- Environment substitution --------------------------------------------- */

static int is_var_start(char ch)
{
    return ch == '_' || (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z');
}

static int is_var_char(char ch) { return is_var_start(ch) || (ch >= '0' && ch <= '9'); }

/* Replaces, in the tree, a string value's ${VAR} with the variable's value,
 * ${VAR:-default} with the value or, when VAR is unset or empty, the default
 * (taken literally, up to the first '}'), and $$ with '$'. Any other '$' is
 * kept. Values are not scanned again. Returns 0, or -1 after adding the error
 * (or setting oom): the value must then not be used. */
static int substitute(struct ctx *c, cJSON *v, const struct path *p)
{
    const char *s = v->valuestring;
    if (strchr(s, '$') == NULL)
        return 0;
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    if (out == NULL) {
        c->oom = 1;
        return -1;
    }
    char q[ECHO_MAX + 16];
    const char *at = s;
    for (const char *dollar; (dollar = strchr(at, '$')) != NULL;) {
        fwrite(at, 1, (size_t)(dollar - at), out);
        at = dollar + 1;
        if (*at == '$') {
            fputc('$', out);
            at++;
            continue;
        }
        if (*at != '{') {
            fputc('$', out);
            continue;
        }
        const char *name = at + 1;
        const char *close = strchr(name, '}');
        if (close == NULL) {
            add_error(c, p, "unterminated ${ in %s", quote(s, q, sizeof(q)));
            goto fail;
        }
        const char *end = name;
        if (is_var_start(*end))
            while (is_var_char(*++end))
                ;
        if (end == name || (end != close && strncmp(end, ":-", 2) != 0)) {
            add_error(c, p, "invalid variable name in %s", quote(s, q, sizeof(q)));
            goto fail;
        }
        char *var = strndup(name, (size_t)(end - name));
        if (var == NULL) {
            c->oom = 1;
            goto fail;
        }
        const char *val = getenv(var);
        if (end != close && (val == NULL || *val == '\0')) {
            fwrite(end + 2, 1, (size_t)(close - (end + 2)), out);
        } else if (val == NULL) {
            add_error(c, p, "environment variable %.*s is not set", ECHO_MAX, var);
            free(var);
            goto fail;
        } else {
            fputs(val, out);
        }
        free(var);
        at = close + 1;
    }
    fputs(at, out);
    if (fclose(out) != 0 || cJSON_SetValuestring(v, buf) == NULL) {
        c->oom = 1;
        free(buf);
        return -1;
    }
    free(buf);
    return 0;
fail:
    fclose(out);
    free(buf);
    return -1;
}

/* ---- The walk ------------------------------------------------------------- */

/* The array around an object being parsed, for keys whose values must differ
 * between elements. */
struct siblings {
    const char *base;
    size_t elem_size;
    size_t index;
    const char *array_path;
};

static void parse_object(struct ctx *c, const struct key *keys, size_t n_keys, cJSON *obj,
                         char *base, struct path *p, const struct siblings *sib);

static void apply_defaults(const struct key *keys, size_t n_keys, char *base)
{
    for (size_t i = 0; i < n_keys; i++) {
        const struct key *k = &keys[i];
        char *field = base + k->offset;
        if (k->kind == KEY_U32) {
            uint32_t v = (uint32_t)k->def;
            memcpy(field, &v, sizeof(v));
        } else if (k->kind == KEY_ENUM || k->kind == KEY_BOOL) {
            int v = (int)k->def;
            memcpy(field, &v, sizeof(v));
        } else if (k->kind == KEY_OBJECT) {
            apply_defaults(k->keys, k->n_keys, field);
        } else if (k->kind == KEY_STRING && k->sdef != NULL) {
            k->parse(k->sdef, field);
        }
    }
}

static void free_object(const struct key *keys, size_t n_keys, char *base)
{
    for (size_t i = 0; i < n_keys; i++) {
        const struct key *k = &keys[i];
        if (k->kind == KEY_OBJECT) {
            free_object(k->keys, k->n_keys, base + k->offset);
        } else if (k->kind == KEY_ARRAY) {
            char *items;
            size_t count;
            memcpy(&items, base + k->offset, sizeof(items));
            memcpy(&count, base + k->count_offset, sizeof(count));
            if (items != NULL && k->elem->kind == KEY_OBJECT)
                for (size_t j = 0; j < count; j++)
                    free_object(k->elem->keys, k->elem->n_keys, items + j * k->elem_size);
            free(items);
        }
    }
}

static void check_unique(struct ctx *c, const struct key *k, const cJSON *v, const char *field,
                         const struct path *p, const struct siblings *sib)
{
    for (size_t j = 0; j < sib->index; j++) {
        const char *other = sib->base + j * sib->elem_size + k->offset;
        if (k->same(field, other)) {
            char q[ECHO_MAX + 16];
            add_error(c, p, "duplicate %s %s (also %s[%zu].%s)", k->unique,
                      quote(v->valuestring, q, sizeof(q)), sib->array_path, j, k->name);
            return;
        }
    }
}

static void parse_enum(struct ctx *c, const struct key *k, const cJSON *v, char *field,
                       const struct path *p)
{
    for (const struct choice *ch = k->choices; ch->name; ch++) {
        if (strcmp(ch->name, v->valuestring) == 0) {
            memcpy(field, &ch->value, sizeof(int));
            return;
        }
    }
    char list[512];
    size_t o = 0;
    for (const struct choice *ch = k->choices; ch->name && o < sizeof(list); ch++)
        o += (size_t)snprintf(list + o, sizeof(list) - o, "%s\"%s\"", o ? ", " : "", ch->name);
    char q[ECHO_MAX + 16];
    add_error(c, p, "expected one of %s, got %s", list, quote(v->valuestring, q, sizeof(q)));
}

static void parse_array(struct ctx *c, const struct key *k, cJSON *v, char *base, struct path *p)
{
    size_t count = (size_t)cJSON_GetArraySize(v);
    if (count < k->min_items) {
        if (k->min_items == 1)
            add_error(c, p, "must hold at least one %s", k->noun);
        else
            add_error(c, p, "must hold at least %zu %ss", k->min_items, k->noun);
        return;
    }
    if (k->max_items != 0 && count > k->max_items) {
        add_error(c, p, "must hold at most %zu %s%s", k->max_items, k->noun,
                  k->max_items == 1 ? "" : "s");
        return;
    }
    if (count == 0)
        return;
    char *items = calloc(count, k->elem_size);
    if (items == NULL) {
        c->oom = 1;
        return;
    }
    /* Stored before the elements are parsed so that free_object() finds it
     * whatever happens next. */
    memcpy(base + k->offset, &items, sizeof(items));
    memcpy(base + k->count_offset, &count, sizeof(count));

    const struct key *e = k->elem;
    /* A copy: p grows by "[i]" while the elements are parsed. */
    char array_path[PATH_BUF];
    memcpy(array_path, p->buf, p->len + 1);
    struct siblings sib = { .base = items, .elem_size = k->elem_size, .array_path = array_path };

    size_t i = 0;
    for (cJSON *item = v->child; item != NULL; item = item->next, i++) {
        char *elem_base = items + i * k->elem_size;
        size_t saved = path_push(p, "[%zu]", i);
        if (!has_type(e, item)) {
            add_error(c, p, "expected %s, got %s", expected_word(e->kind), type_word(item));
        } else if (e->kind == KEY_OBJECT) {
            apply_defaults(e->keys, e->n_keys, elem_base);
            sib.index = i;
            parse_object(c, e->keys, e->n_keys, item, elem_base, p, &sib);
        } else if (e->kind == KEY_STRING) {
            if (substitute(c, item, p) < 0) {
                /* Reported; the value as written means nothing. */
            } else if (e->parse(item->valuestring, elem_base) < 0) {
                char q[ECHO_MAX + 16];
                add_error(c, p, "expected %s, got %s", e->expect,
                          quote(item->valuestring, q, sizeof(q)));
            }
        }
        path_pop(p, saved);
    }
}

/* Parses one member value; `p` already names it. */
static void parse_value(struct ctx *c, const struct key *k, cJSON *v, char *base, struct path *p,
                        const struct siblings *sib)
{
    char *field = base + k->offset;
    if (!has_type(k, v)) {
        add_error(c, p, "expected %s, got %s", expected_word(k->kind), type_word(v));
        return;
    }
    if ((k->kind == KEY_STRING || k->kind == KEY_ENUM) && substitute(c, v, p) < 0)
        return;
    switch (k->kind) {
    case KEY_U32: {
        double d = v->valuedouble;
        if (d < (double)k->min || d > (double)k->max) {
            /* Digits for anything a person would type; 1e+300 stays short. */
            add_error(c, p,
                      d > -1e15 && d < 1e15 ? "must be between %lld and %lld, got %.0f"
                                            : "must be between %lld and %lld, got %g",
                      (long long)k->min, (long long)k->max, d);
            return;
        }
        uint32_t u = (uint32_t)d;
        memcpy(field, &u, sizeof(u));
        break;
    }
    case KEY_BOOL: {
        int b = cJSON_IsTrue(v) ? 1 : 0;
        memcpy(field, &b, sizeof(b));
        break;
    }
    case KEY_ENUM:
        parse_enum(c, k, v, field, p);
        break;
    case KEY_STRING:
        if (k->parse(v->valuestring, field) < 0) {
            char q[ECHO_MAX + 16];
            add_error(c, p, "expected %s, got %s", k->expect, quote(v->valuestring, q, sizeof(q)));
        } else if (k->unique != NULL && sib != NULL) {
            check_unique(c, k, v, field, p, sib);
        }
        break;
    case KEY_OBJECT:
        if (k->has_switch) {
            int on = 1;
            memcpy(base + k->switch_offset, &on, sizeof(on));
        }
        parse_object(c, k->keys, k->n_keys, v, field, p, NULL);
        break;
    case KEY_ARRAY:
        parse_array(c, k, v, base, p);
        break;
    }
}

static const struct key *find_key(const struct key *keys, size_t n_keys, const char *name)
{
    for (size_t i = 0; i < n_keys; i++)
        if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

/* cJSON_GetObjectItem() ignores case and finds only the first of duplicate
 * keys, so members are matched here by exact name. */
static const cJSON *find_member(const cJSON *obj, const char *name, const cJSON *stop)
{
    for (const cJSON *m = obj->child; m != NULL && m != stop; m = m->next)
        if (m->string != NULL && strcmp(m->string, name) == 0)
            return m;
    return NULL;
}

/* Members in document order, then the required keys that are missing. */
static void parse_object(struct ctx *c, const struct key *keys, size_t n_keys, cJSON *obj,
                         char *base, struct path *p, const struct siblings *sib)
{
    for (cJSON *m = obj->child; m != NULL; m = m->next) {
        size_t saved = path_key(p, m->string);
        const struct key *k = find_key(keys, n_keys, m->string);
        if (find_member(obj, m->string, m) != NULL)
            add_error(c, p, "duplicate key");
        else if (k == NULL)
            add_error(c, p, "unknown key");
        else
            parse_value(c, k, m, base, p, sib);
        path_pop(p, saved);
    }
    for (size_t i = 0; i < n_keys; i++) {
        if (keys[i].required && find_member(obj, keys[i].name, NULL) == NULL) {
            size_t saved = path_key(p, keys[i].name);
            add_error(c, p, "required key is missing");
            path_pop(p, saved);
        }
    }
}

/* ---- Rules across keys ---------------------------------------------------- */

static int is_localhost(const char *host)
{
    return strcasecmp(host, "localhost") == 0 || strcasecmp(host, "localhost.") == 0;
}

/* The admin endpoint serves sessions and can close them, so it stays on the
 * loopback interface unless the config says otherwise; and it needs a socket
 * of its own. Runs after the whole document, as "admin" may come before
 * "routes". An address that failed to parse was reported already. */
static void check_admin(struct ctx *c, const struct config *cfg, const cJSON *root)
{
    const struct hostport *l = &cfg->admin.listen;
    if (!cfg->admin.enabled || l->host[0] == '\0')
        return;
    const cJSON *admin = find_member(root, "admin", NULL);
    const cJSON *v = admin != NULL ? find_member(admin, "listen", NULL) : NULL;
    if (!cJSON_IsString(v))
        return;
    char q[ECHO_MAX + 16];
    quote(v->valuestring, q, sizeof(q));
    struct path p = { .len = 0 };
    path_push(&p, "admin.listen");
    if (!cfg->admin.allow_remote) {
        if (l->numeric && !addr_is_loopback((const struct sockaddr *)&l->sa))
            add_error(c, &p,
                      "%s is not a loopback address; set admin.allow_remote to true to "
                      "serve it",
                      q);
        else if (!l->numeric && !is_localhost(l->host))
            add_error(c, &p,
                      "%s is a host name other than \"localhost\"; set admin.allow_remote "
                      "to true to serve it",
                      q);
    }
    for (size_t i = 0; i < cfg->n_routes; i++) {
        if (same_endpoint(l, &cfg->routes[i].listen)) {
            add_error(c, &p, "duplicate listen address %s (also routes[%zu].listen)", q, i);
            break;
        }
    }
}

static const char *family_word(int family) { return family == AF_INET6 ? "IPv6" : "IPv4"; }

/* Rules within one route that span keys: what would make every connection
 * fail, or a value that another key silently overrides. */
static void check_route(struct ctx *c, const struct route_config *r, size_t i)
{
    const struct upstream_config *u = &r->upstream;
    char q[ADDR_STR_MAX + 16], addr[ADDR_STR_MAX];
    struct path p = { .len = 0 };

    if (u->retry_backoff_ms > u->retry_backoff_max_ms) {
        path_push(&p, "routes[%zu].upstream.retry_backoff_ms", i);
        add_error(c, &p, "must not exceed retry_backoff_max_ms (%u), got %u",
                  u->retry_backoff_max_ms, u->retry_backoff_ms);
        path_pop(&p, 0);
    }
    /* A source address picks the family of every upstream socket: a literal
     * server of the other family can never be reached from it. */
    const struct sockaddr *source = (const struct sockaddr *)&u->source.addr;
    if (addr_is_v4_mapped(source)) {
        /* An IPv6 socket bound to it cannot reach IPv6 servers, nor an IPv4
         * socket be bound to it: only the IPv4 form means anything. */
        path_push(&p, "routes[%zu].upstream.source_address", i);
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&u->source.addr;
        inet_ntop(AF_INET6, &in6->sin6_addr, addr, sizeof(addr));
        add_error(c, &p, "an IPv4-mapped address: write the IPv4 address itself, got %s",
                  quote(addr, q, sizeof(q)));
        path_pop(&p, 0);
    } else if (u->source.kind == SOURCE_ADDRESS) {
        for (size_t s = 0; s < u->n_servers; s++) {
            const struct hostport *srv = &u->servers[s];
            if (!srv->numeric || srv->sa.ss_family == source->sa_family)
                continue;
            path_push(&p, "routes[%zu].upstream.source_address", i);
            add_error(c, &p, "an %s source cannot reach the %s server servers[%zu] %s",
                      family_word(source->sa_family), family_word(srv->sa.ss_family), s,
                      quote(addr_format_hostport(srv, addr, sizeof(addr)), q, sizeof(q)));
            path_pop(&p, 0);
        }
    }
    /* A loopback server only ever sees loopback sources: the address of a
     * client of a listener on another address cannot reach it. (A wildcard
     * or host-name listener may take loopback clients too: a note, below.) */
    if (u->source.kind == SOURCE_CLIENT && r->listen.numeric &&
        !addr_is_loopback((const struct sockaddr *)&r->listen.sa) &&
        !addr_is_any((const struct sockaddr *)&r->listen.sa)) {
        for (size_t s = 0; s < u->n_servers; s++) {
            const struct hostport *srv = &u->servers[s];
            if (!srv->numeric || !addr_is_loopback((const struct sockaddr *)&srv->sa))
                continue;
            path_push(&p, "routes[%zu].upstream.servers[%zu]", i, s);
            add_error(c, &p,
                      "a loopback server cannot be reached from client addresses "
                      "(source_address \"client\"): use an address of this host, got %s",
                      quote(addr_format_hostport(srv, addr, sizeof(addr)), q, sizeof(q)));
            path_pop(&p, 0);
        }
    }
    if (u->source.kind == SOURCE_CLIENT && r->listen.numeric && !r->dual_stack) {
        /* The listen address decides the clients' family; a dual-stack
         * listener takes both, which only a connect can tell apart. */
        int family = r->listen.sa.ss_family;
        char srv_addr[ADDR_STR_MAX], srv_q[ADDR_STR_MAX + 16];
        for (size_t s = 0; s < u->n_servers; s++) {
            const struct hostport *srv = &u->servers[s];
            if (!srv->numeric || srv->sa.ss_family == family)
                continue;
            quote(addr_format_hostport(srv, srv_addr, sizeof(srv_addr)), srv_q, sizeof(srv_q));
            path_push(&p, "routes[%zu].upstream.source_address", i);
            add_error(c, &p,
                      "\"client\": the clients of listen %s are %s and cannot reach the %s "
                      "server servers[%zu] %s from their own addresses",
                      quote(addr_format_hostport(&r->listen, addr, sizeof(addr)), q, sizeof(q)),
                      family_word(family), family_word(srv->sa.ss_family), s, srv_q);
            path_pop(&p, 0);
        }
    }
    /* Only the wildcard takes both families: a specific IPv6 address
     * never sees an IPv4 client. */
    if (r->dual_stack && !(r->listen.numeric && r->listen.sa.ss_family == AF_INET6 &&
                           addr_is_any((const struct sockaddr *)&r->listen.sa))) {
        path_push(&p, "routes[%zu].dual_stack", i);
        add_error(c, &p, "needs the listen address \"[::]:%u\" (the IPv6 wildcard), got %s",
                  r->listen.port,
                  quote(addr_format_hostport(&r->listen, addr, sizeof(addr)), q, sizeof(q)));
    }
}

/* ---- Entry points --------------------------------------------------------- */

static void add_json_error(struct ctx *c, const char *json, size_t len, const char *at)
{
    size_t pos = at != NULL && json != NULL && at >= json ? (size_t)(at - json) : 0;
    if (pos > len)
        pos = len;
    size_t line = 1, col = 1;
    for (size_t i = 0; i < pos; i++) {
        if (json[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    add_error(c, NULL, "invalid JSON at line %zu, column %zu", line, col);
}

static int is_json_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'; }

static void errs_reset(struct config_errors *errs)
{
    if (errs != NULL) {
        errs->msgs = NULL;
        errs->n = 0;
    }
}

/* The kernel takes keepalive times in whole seconds: say so when a value
 * will be rounded up, so nobody is surprised by a slower detection. */
static void note_whole_seconds(struct ctx *c, size_t route, const char *key, uint32_t ms)
{
    if (ms % 1000 == 0)
        return;
    struct path p = { .len = 0 };
    path_push(&p, "routes[%zu].client.heartbeat.%s", route, key);
    add_error(c, &p,
              "%u ms is rounded up to %u s (the kernel counts keepalive time in whole "
              "seconds)",
              ms, liveness_ms_to_s(ms));
}

/* A dual-stack listener with "client": a client of a family no server
 * has fails its connects. Said, not refused: only some clients fail. */
static void note_dual_stack_client(struct ctx *c, size_t i, const struct route_config *r)
{
    const struct upstream_config *u = &r->upstream;
    if (u->source.kind != SOURCE_CLIENT || !r->dual_stack)
        return;
    int v4 = 0, v6 = 0;
    for (size_t s = 0; s < u->n_servers; s++) {
        if (!u->servers[s].numeric)
            return; /* a host name is resolved in each client's family */
        if (u->servers[s].sa.ss_family == AF_INET6)
            v6 = 1;
        else
            v4 = 1;
    }
    if (v4 && v6)
        return;
    struct path p = { .len = 0 };
    path_push(&p, "routes[%zu].upstream.source_address", i);
    add_error(c, &p,
              "\"client\" with dual_stack: %s clients cannot reach the %s servers from their "
              "own addresses and will fail to connect",
              v6 ? "IPv4" : "IPv6", v6 ? "IPv6" : "IPv4");
}

/* "client" with a loopback server behind a listener that takes outside
 * clients as well as loopback ones. */
static void note_loopback_client(struct ctx *c, size_t i, const struct route_config *r)
{
    const struct upstream_config *u = &r->upstream;
    if (u->source.kind != SOURCE_CLIENT ||
        (r->listen.numeric && !addr_is_any((const struct sockaddr *)&r->listen.sa)))
        return;
    char q[ADDR_STR_MAX + 16], addr[ADDR_STR_MAX];
    for (size_t s = 0; s < u->n_servers; s++) {
        const struct hostport *srv = &u->servers[s];
        if (!srv->numeric || !addr_is_loopback((const struct sockaddr *)&srv->sa))
            continue;
        struct path p = { .len = 0 };
        path_push(&p, "routes[%zu].upstream.servers[%zu]", i, s);
        add_error(c, &p,
                  "a loopback server, with source_address \"client\": only clients on this "
                  "host can reach it, others will fail to connect (%s)",
                  quote(addr_format_hostport(srv, addr, sizeof(addr)), q, sizeof(q)));
    }
}

static int add_notes(struct config *cfg)
{
    struct ctx c = { 0 };
    for (size_t i = 0; i < cfg->n_routes; i++) {
        const struct heartbeat_config *hb = &cfg->routes[i].client.heartbeat;
        if (hb->keepalive_idle_ms == 0)
            continue;
        note_whole_seconds(&c, i, "keepalive_idle_ms", hb->keepalive_idle_ms);
        note_whole_seconds(&c, i, "keepalive_interval_ms", hb->keepalive_interval_ms);
    }
    for (size_t i = 0; i < cfg->n_routes; i++) {
        note_dual_stack_client(&c, i, &cfg->routes[i]);
        note_loopback_client(&c, i, &cfg->routes[i]);
    }
    if (cfg->cluster.enabled && cfg->cluster.lease_ttl_ms % 1000 != 0) {
        struct path p = { .len = 0 };
        path_push(&p, "cluster.lease_ttl_ms");
        add_error(&c, &p,
                  "etcd counts a lease in whole seconds: it lasts %u s; lifeline fences as for "
                  "%u ms",
                  (cfg->cluster.lease_ttl_ms + 999) / 1000, cfg->cluster.lease_ttl_ms);
    }
    errors_give(&c, &cfg->notes);
    return c.oom ? -ENOMEM : 0;
}

/* ---- Restart-only keys ------------------------------------------------------ */

/* Does the value of key k (an object: anything in it) differ between the
 * structs at a and b? */
static int key_differs(const struct key *k, const char *a, const char *b)
{
    if (k->has_switch && memcmp(a + k->switch_offset, b + k->switch_offset, sizeof(int)) != 0)
        return 1;
    if (k->kind == KEY_OBJECT) {
        for (size_t i = 0; i < k->n_keys; i++)
            if (key_differs(&k->keys[i], a + k->offset, b + k->offset))
                return 1;
        return 0;
    }
    if (k->kind == KEY_ARRAY) {
        /* An array of plain values (cluster.etcd): its count and items. */
        size_t na, nb;
        char *ia, *ib;
        memcpy(&na, a + k->count_offset, sizeof(na));
        memcpy(&nb, b + k->count_offset, sizeof(nb));
        memcpy(&ia, a + k->offset, sizeof(ia));
        memcpy(&ib, b + k->offset, sizeof(ib));
        if (na != nb)
            return 1;
        return k->elem->kind != KEY_OBJECT && na > 0 && memcmp(ia, ib, na * k->elem_size) != 0;
    }
    return memcmp(a + k->offset, b + k->offset, k->size) != 0;
}

static void walk_restart_only(const struct key *keys, size_t n_keys, const char *a, const char *b,
                              struct path *p, void (*report)(const char *path, void *arg),
                              void *arg)
{
    for (size_t i = 0; i < n_keys; i++) {
        const struct key *k = &keys[i];
        size_t saved = path_key(p, k->name);
        if (k->reload == RESTART_ONLY) {
            if (key_differs(k, a, b))
                report(p->buf, arg);
        } else if (k->kind == KEY_OBJECT) {
            walk_restart_only(k->keys, k->n_keys, a + k->offset, b + k->offset, p, report, arg);
        }
        path_pop(p, saved);
    }
}

void config_restart_changes(const struct config *cur, const struct config *next,
                            void (*report)(const char *path, void *arg), void *arg)
{
    struct path p = { .len = 0 };
    p.buf[0] = '\0';
    walk_restart_only(root_keys, N_KEYS(root_keys), (const char *)cur, (const char *)next, &p,
                      report, arg);
}

/* ---- The key tables, described ------------------------------------------ */

static void describe(const struct key *k, struct path *p, int restart_only,
                     void (*fn)(const struct config_key_doc *doc, void *arg), void *arg)
{
    struct config_key_doc d = { .path = p->buf, .restart_only = restart_only };
    char def[64] = "", allowed[256] = "";
    switch (k->kind) {
    case KEY_U32:
        d.type = "integer";
        snprintf(def, sizeof(def), "`%lld`", (long long)k->def);
        snprintf(allowed, sizeof(allowed), "%lld \u2013 %lld", (long long)k->min,
                 (long long)k->max);
        break;
    case KEY_BOOL:
        d.type = "boolean";
        snprintf(def, sizeof(def), "`%s`", k->def ? "true" : "false");
        snprintf(allowed, sizeof(allowed), "`true`, `false`");
        break;
    case KEY_ENUM: {
        d.type = "string";
        size_t o = 0;
        for (const struct choice *c = k->choices; c->name != NULL; c++) {
            if (c->value == k->def)
                snprintf(def, sizeof(def), "`\"%s\"`", c->name);
            o += (size_t)snprintf(allowed + o, sizeof(allowed) - o, "%s`\"%s\"`", o ? ", " : "",
                                  c->name);
        }
        break;
    }
    case KEY_STRING:
        d.type = "string";
        if (k->sdef != NULL)
            snprintf(def, sizeof(def), "`\"%s\"`", k->sdef);
        break;
    case KEY_OBJECT:
        d.type = "object";
        break;
    case KEY_ARRAY:
        d.type = "array";
        break;
    }
    d.def = def[0] ? def : NULL;
    d.allowed = allowed[0] ? allowed : NULL;
    fn(&d, arg);

    const struct key *keys = k->kind == KEY_OBJECT                                 ? k->keys
                             : k->kind == KEY_ARRAY && k->elem->kind == KEY_OBJECT ? k->elem->keys
                                                                                   : NULL;
    size_t n = k->kind == KEY_OBJECT ? k->n_keys : keys != NULL ? k->elem->n_keys : 0;
    size_t saved = p->len;
    if (k->kind == KEY_ARRAY)
        path_push(p, "[]");
    for (size_t i = 0; i < n; i++) {
        size_t at = path_key(p, keys[i].name);
        describe(&keys[i], p, restart_only || keys[i].reload == RESTART_ONLY, fn, arg);
        path_pop(p, at);
    }
    path_pop(p, saved);
}

void config_describe_keys(void (*fn)(const struct config_key_doc *doc, void *arg), void *arg)
{
    for (size_t i = 0; i < N_KEYS(root_keys); i++) {
        struct path p = { .len = 0 };
        p.buf[0] = '\0';
        path_key(&p, root_keys[i].name);
        describe(&root_keys[i], &p, root_keys[i].reload == RESTART_ONLY, fn, arg);
    }
}

int config_parse(const char *json, size_t len, struct config **out, struct config_errors *errs)
{
    struct ctx c = { 0 };
    *out = NULL;
    errs_reset(errs);

    cJSON *root = NULL;
    if (json != NULL && len > 0) {
        const char *end = NULL;
        /* Not require_null_terminated: with an explicit length cJSON 1.7.15
         * then fails every input, so trailing text is checked here. */
        root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
        if (root == NULL) {
            add_json_error(&c, json, len, end);
        } else {
            while (end < json + len && is_json_space(*end))
                end++;
            if (end < json + len) {
                add_json_error(&c, json, len, end);
                cJSON_Delete(root);
                root = NULL;
            }
        }
    } else {
        add_json_error(&c, json, 0, NULL);
    }

    struct config *cfg = NULL;
    if (root != NULL) {
        if (!cJSON_IsObject(root)) {
            struct path p = { .len = 0 };
            add_error(&c, &p, "expected object, got %s", type_word(root));
        } else if ((cfg = calloc(1, sizeof(*cfg))) == NULL) {
            c.oom = 1;
        } else {
            struct path p = { .len = 0 };
            apply_defaults(root_keys, N_KEYS(root_keys), (char *)cfg);
            parse_object(&c, root_keys, N_KEYS(root_keys), root, (char *)cfg, &p, NULL);
            check_admin(&c, cfg, root);
            for (size_t i = 0; i < cfg->n_routes; i++)
                check_route(&c, &cfg->routes[i], i);
        }
        cJSON_Delete(root);
    }

    int rc = c.oom ? -ENOMEM : c.n > 0 ? -EINVAL : 0;
    errors_give(&c, errs);
    if (rc == 0)
        rc = add_notes(cfg);
    if (rc < 0) {
        config_free(cfg);
        return rc;
    }
    snprintf(cfg->hash, sizeof(cfg->hash), "%016" PRIx64, hash_bytes(HASH_SEED, json, len));
    atomic_init(&cfg->refs, 1);
    *out = cfg;
    return 0;
}

/* Reads a whole file into a NUL-terminated buffer; 0 or -errno. */
static int read_file(const char *path, char **out, size_t *out_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (cap - len < 4096) {
            size_t ncap = cap ? cap * 2 : 16384;
            if (ncap > CONFIG_FILE_MAX + 1) {
                rc = -EFBIG;
                break;
            }
            char *nbuf = realloc(buf, ncap);
            if (nbuf == NULL) {
                rc = -ENOMEM;
                break;
            }
            buf = nbuf;
            cap = ncap;
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > CONFIG_FILE_MAX) {
            rc = -EFBIG;
            break;
        }
    }
    close(fd);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
}

int config_load(const char *path, struct config **out, struct config_errors *errs)
{
    *out = NULL;
    errs_reset(errs);
    char *buf = NULL;
    size_t len = 0;
    int rc = read_file(path, &buf, &len);
    if (rc < 0) {
        struct ctx c = { 0 };
        add_error(&c, NULL, "cannot read %s: %s", path, strerror(-rc));
        errors_give(&c, errs);
        return rc;
    }
    rc = config_parse(buf, len, out, errs);
    free(buf);
    return rc;
}

struct config *config_ref(struct config *cfg)
{
    atomic_fetch_add_explicit(&cfg->refs, 1, memory_order_relaxed);
    return cfg;
}

void config_free(struct config *cfg)
{
    if (cfg == NULL)
        return;
    /* A config that failed validation was never shared: refs is still 0. */
    unsigned refs = atomic_load(&cfg->refs);
    if (refs > 0 && atomic_fetch_sub_explicit(&cfg->refs, 1, memory_order_acq_rel) != 1)
        return;
    free_object(root_keys, N_KEYS(root_keys), (char *)cfg);
    errors_free(cfg->notes.msgs, cfg->notes.n);
    free(cfg);
}

void config_errors_log(const char *path, const struct config_errors *errs)
{
    for (size_t i = 0; i < errs->n; i++)
        log_error("invalid config", LF_STR("file", path), LF_STR("error", errs->msgs[i]));
}

void config_errors_free(struct config_errors *errs)
{
    if (errs == NULL)
        return;
    errors_free(errs->msgs, errs->n);
    errs->msgs = NULL;
    errs->n = 0;
}

int config_errors_add(struct config_errors *errs, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *msg = len < 0 ? NULL : malloc((size_t)len + 1);
    char **msgs = msg == NULL ? NULL : realloc(errs->msgs, (errs->n + 1) * sizeof(*msgs));
    if (msgs == NULL) {
        free(msg);
        return -ENOMEM;
    }
    va_start(ap, fmt);
    vsnprintf(msg, (size_t)len + 1, fmt, ap);
    va_end(ap);
    errs->msgs = msgs;
    errs->msgs[errs->n++] = msg;
    return 0;
}
