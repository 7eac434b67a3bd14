/* Listen addresses: checked alike by --check, start and reload; bound once per worker. */
#include "lifeline/listen.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lifeline/addr.h"
#include "lifeline/log.h"
#include "lifeline/net.h"

#define LISTEN_BACKLOG 4096
#define ADMIN_BACKLOG 128

void listen_close_fds(int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
        fds[i] = -1;
    }
}

static void log_listen_error(const char *name, const struct hostport *hp, const char *what)
{
    char addr[ADDR_STR_MAX];
    log_error("cannot listen", LF_STR("route", name),
              LF_STR("address", addr_format_hostport(hp, addr, sizeof(addr))),
              LF_STR("error", what));
}

/* Listen address i of cfg: routes first, in order, then the admin's. */
static const struct hostport *listen_at(const struct config *cfg, size_t i, int *dual_stack,
                                        char *path, size_t len)
{
    if (i < cfg->n_routes) {
        snprintf(path, len, "routes[%zu].listen", i);
        *dual_stack = cfg->routes[i].dual_stack;
        return &cfg->routes[i].listen;
    }
    snprintf(path, len, "admin.listen");
    *dual_stack = 0;
    return &cfg->admin.listen;
}

static const char *overlap_why(const struct sockaddr *a, const struct sockaddr *b)
{
    if (addr_equal(a, b))
        return "the same address";
    if (a->sa_family == b->sa_family)
        return "a wildcard address holds its port on every address of its family";
    return "a dual_stack \"[::]\" listener holds its port on IPv4 addresses too";
}

int listen_check(const struct config *cfg, struct sockaddr_storage *addrs,
                 struct sockaddr_storage *admin, struct config_errors *errs)
{
    size_t n = cfg->n_routes + (cfg->admin.enabled ? 1 : 0);
    struct sockaddr_storage all[n + 1];
    unsigned char ok[n + 1];
    size_t before = errs->n;
    char path[48], other[48], text[ADDR_STR_MAX], other_text[ADDR_STR_MAX];
    int dual, other_dual;

    for (size_t i = 0; i < n; i++) {
        const struct hostport *hp = listen_at(cfg, i, &dual, path, sizeof(path));
        const char *why = NULL;
        ok[i] = 0;
        addr_format_hostport(hp, text, sizeof(text));
        if (hp->numeric) {
            all[i] = hp->sa;
        } else if (net_resolve_listen(hp->host, hp->port, &all[i], &why) < 0) {
            config_errors_add(errs, "%s: cannot resolve \"%s\": %s", path, hp->host, why);
            continue;
        }
        if (addr_is_v4_mapped((const struct sockaddr *)&all[i])) {
            /* An IPv6 socket takes it only without IPV6_V6ONLY. */
            config_errors_add(errs,
                              "%s: \"%s\" is an IPv4-mapped address; listen on the IPv4 "
                              "address itself",
                              path, text);
            continue;
        }
        ok[i] = 1;
        for (size_t j = 0; j < i; j++) {
            const struct hostport *o = listen_at(cfg, j, &other_dual, other, sizeof(other));
            if (!ok[j] || !addr_listen_overlap((const struct sockaddr *)&all[i], dual,
                                               (const struct sockaddr *)&all[j], other_dual))
                continue;
            config_errors_add(
                errs, "%s: \"%s\" overlaps %s \"%s\" (%s)", path, text, other,
                addr_format_hostport(o, other_text, sizeof(other_text)),
                overlap_why((const struct sockaddr *)&all[i], (const struct sockaddr *)&all[j]));
            break;
        }
    }
    if (errs->n > before)
        return -EINVAL;
    for (size_t r = 0; r < cfg->n_routes; r++)
        addrs[r] = all[r];
    if (cfg->admin.enabled && admin != NULL)
        *admin = all[cfg->n_routes];
    return 0;
}

/* Checks that nobody holds a listen address, binding it exactly as the
 * listener will be bound. Returns 0 or -errno (logged). */
static int probe_listen(const char *name, const struct hostport *hp,
                        const struct sockaddr_storage *sa, int dual_stack)
{
    int rc = net_probe_bind((const struct sockaddr *)sa, dual_stack);
    if (rc < 0)
        log_listen_error(name, hp, strerror(-rc));
    return rc;
}

static void log_listening(const char *name, const struct sockaddr_storage *sa)
{
    char addr[ADDR_STR_MAX];
    log_info("listening", LF_STR("route", name),
             LF_STR("address", addr_format((const struct sockaddr *)sa, addr, sizeof(addr))));
}

long listen_bound_by(const struct sockaddr_storage *sa, const struct config *old,
                     const struct sockaddr_storage *old_addrs)
{
    for (size_t i = 0; old != NULL && i < old->n_routes; i++)
        if (addr_equal((const struct sockaddr *)sa, (const struct sockaddr *)&old_addrs[i]))
            return (long)i;
    return -1;
}

int listen_open_routes(const struct config *cfg, size_t n_workers, const struct config *old,
                       const struct sockaddr_storage *old_addrs,
                       const struct sockaddr_storage *addrs, int *fds)
{
    for (size_t r = 0; r < cfg->n_routes; r++) {
        const struct route_config *route = &cfg->routes[r];
        const struct sockaddr_storage *sa = &addrs[r];
        long kept = listen_bound_by(sa, old, old_addrs);
        if (kept >= 0) {
            if (old->routes[kept].dual_stack != route->dual_stack) {
                char key[48];
                snprintf(key, sizeof(key), "routes[%zu].dual_stack", r);
                log_warn("config change needs a restart: keeping the running value",
                         LF_STR("key", key));
            }
            continue;
        }
        int rc = listen_open_route(cfg, r, n_workers, sa, fds);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int listen_open_route(const struct config *cfg, size_t r, size_t n_workers,
                      const struct sockaddr_storage *sa, int *fds)
{
    const struct route_config *route = &cfg->routes[r];
    int rc = probe_listen(route->name, &route->listen, sa, route->dual_stack);
    if (rc < 0)
        return rc;
    for (size_t w = 0; w < n_workers; w++) {
        int fd = net_listen_socket((const struct sockaddr *)sa, route->dual_stack, LISTEN_BACKLOG);
        if (fd < 0) {
            log_listen_error(route->name, &route->listen, strerror(-fd));
            return fd;
        }
        fds[w * cfg->n_routes + r] = fd;
    }
    log_listening(route->name, sa);
    return 0;
}

int listen_open_admin(const struct config *cfg, const struct sockaddr_storage *sa, int *fd)
{
    *fd = -1;
    if (!cfg->admin.enabled)
        return 0;
    int rc = probe_listen("admin", &cfg->admin.listen, sa, 0);
    if (rc < 0)
        return rc;
    *fd = net_listen_socket((const struct sockaddr *)sa, 0, ADMIN_BACKLOG);
    if (*fd < 0) {
        rc = *fd;
        log_listen_error("admin", &cfg->admin.listen, strerror(-rc));
        *fd = -1;
        return rc;
    }
    char addr[ADDR_STR_MAX];
    log_info("admin listening",
             LF_STR("address", addr_format((const struct sockaddr *)sa, addr, sizeof(addr))));
    return 0;
}
