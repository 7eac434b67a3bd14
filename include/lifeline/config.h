/* Configuration: JSON text -> validated, immutable struct config. */
#ifndef LIFELINE_CONFIG_H
#define LIFELINE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "lifeline/addr.h"
#include "lifeline/log.h"

#define CONFIG_NAME_MAX 64
#define CONFIG_DEFAULT_PATH "/etc/lifeline/lifeline.json"

struct upstream_config {
    struct hostport *servers;      /* at least one */
    size_t n_servers;
    struct sockaddr_storage source; /* ss_family == AF_UNSPEC when unset or wildcard */
    uint32_t connect_timeout_ms;
    uint32_t retries;              /* further tries after the first one */
    uint32_t retry_backoff_ms;
};

struct route_config {
    char name[CONFIG_NAME_MAX];
    struct hostport listen;
    uint32_t buffer_bytes;
    struct upstream_config upstream;
};

struct config {
    uint32_t workers;              /* 0 = one per CPU */
    enum log_level log_level;
    enum log_format log_format;
    uint32_t drain_timeout_ms;
    struct route_config *routes;   /* at least one */
    size_t n_routes;
};

/* Every problem found in one pass, each "json.path: message". */
struct config_errors {
    char **msgs;
    size_t n;
};

/* Parses and validates JSON text. On success returns 0 and sets *out; on
 * failure returns -EINVAL, *out stays NULL and errs holds every problem found
 * (invalid JSON is one error naming line and column). */
int config_parse(const char *json, size_t len, struct config **out,
                 struct config_errors *errs);

/* Reads the file and calls config_parse(). A file that cannot be read is one
 * error naming the path and strerror, with return value -errno. */
int config_load(const char *path, struct config **out, struct config_errors *errs);

void config_free(struct config *cfg);
void config_errors_free(struct config_errors *errs);

#endif
