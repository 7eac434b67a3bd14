/* Dropping root once every socket is bound, and the capabilities kept. */
#include "lifeline/privileges.h"

#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "lifeline/log.h"

/* Capability sets through the raw system calls (no libcap): one 64-bit set
 * is two 32-bit words. */
struct caps {
    uint64_t effective, permitted;
};

static int caps_get(struct caps *c)
{
    struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) < 0)
        return -errno;
    c->effective = (uint64_t)d[1].effective << 32 | d[0].effective;
    c->permitted = (uint64_t)d[1].permitted << 32 | d[0].permitted;
    return 0;
}

/* Effective, permitted and inheritable all `keep`, and each of them raised
 * in the ambient set: the process a live upgrade executes (same user, no
 * file capabilities) starts with them too, and nothing else. */
static int caps_set(uint64_t keep)
{
    struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
    struct __user_cap_data_struct d[2] = {
        { .effective = (uint32_t)keep, .permitted = (uint32_t)keep, .inheritable = (uint32_t)keep },
        { .effective = (uint32_t)(keep >> 32),
          .permitted = (uint32_t)(keep >> 32),
          .inheritable = (uint32_t)(keep >> 32) },
    };
    if (syscall(SYS_capset, &h, d) < 0)
        return -errno;
    for (int cap = 0; cap < 64; cap++)
        if ((keep >> cap) & 1)
            (void)prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0);
    return 0;
}

#define CAP_BIT(cap) ((uint64_t)1 << (cap))

/* Calls need(key, what) for each key of cfg that needs CAP_NET_ADMIN (when
 * need is not NULL); returns how many there are. */
static size_t net_admin_keys(const struct config *cfg, void (*need)(const char *, const char *))
{
    size_t n = 0;
    char key[64];
    for (size_t i = 0; i < cfg->n_routes; i++) {
        const struct upstream_config *u = &cfg->routes[i].upstream;
        if (u->source.kind == SOURCE_CLIENT) {
            n++;
            if (need != NULL) {
                snprintf(key, sizeof(key), "routes[%zu].upstream.source_address", i);
                need(key, "a transparent source (\"client\")");
            }
        }
        if (u->mark != 0) {
            n++;
            if (need != NULL) {
                snprintf(key, sizeof(key), "routes[%zu].upstream.mark", i);
                need(key, "SO_MARK");
            }
        }
    }
    return n;
}

uint64_t privileges_needed(const struct config *cfg)
{
    return net_admin_keys(cfg, NULL) > 0 ? CAP_BIT(CAP_NET_ADMIN) : 0;
}

static void log_missing(const char *key, const char *what)
{
    log_error("missing capability", LF_STR("capability", "CAP_NET_ADMIN"), LF_STR("key", key),
              LF_STR("needed_for", what));
}

int privileges_check(const struct config *cfg)
{
    struct caps c = { 0 };
    int rc = caps_get(&c);
    if (rc < 0) {
        log_error("cannot read capabilities", LF_STR("error", strerror(-rc)));
        return rc;
    }
    uint64_t need = privileges_needed(cfg);
    if ((c.effective & need) == need)
        return 0;
    net_admin_keys(cfg, log_missing);
    return -EPERM;
}

int privileges_drop(const struct config *cfg)
{
    if (cfg->user[0] == '\0' && cfg->group[0] == '\0')
        return 0;
    gid_t gid = getgid();
    struct passwd *pw = NULL;
    errno = 0;
    if (cfg->user[0] != '\0') {
        pw = getpwnam(cfg->user);
        if (pw == NULL) {
            int err = errno ? -errno : -ENOENT;
            log_error("cannot drop privileges", LF_STR("user", cfg->user),
                      LF_STR("error", errno ? strerror(errno) : "no such user"));
            return err;
        }
        gid = pw->pw_gid;
    }
    if (cfg->group[0] != '\0') {
        struct group *gr = getgrnam(cfg->group);
        if (gr == NULL) {
            int err = errno ? -errno : -ENOENT;
            log_error("cannot drop privileges", LF_STR("group", cfg->group),
                      LF_STR("error", errno ? strerror(errno) : "no such group"));
            return err;
        }
        gid = gr->gr_gid;
    }
    /* Supplementary groups first (needs root), then the group, then the user.
     * PR_SET_KEEPCAPS: leaving uid 0 keeps the permitted set, from which
     * the needed capabilities are raised again below. */
    uint64_t keep = privileges_needed(cfg);
    int leaves_root = pw != NULL && getuid() == 0 && pw->pw_uid != 0;
    if (keep != 0 && leaves_root && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) {
        int err = -errno;
        log_error("cannot drop privileges", LF_STR("error", strerror(-err)));
        return err;
    }
    int rc = 0;
    if (pw != NULL && getuid() == 0)
        rc = initgroups(pw->pw_name, gid);
    else if (getuid() == 0)
        rc = setgroups(1, &gid);
    if (rc < 0 || setgid(gid) < 0) {
        int err = -errno;
        log_error("cannot drop privileges", LF_INT("gid", gid), LF_STR("error", strerror(-err)));
        return err;
    }
    if (pw != NULL && setuid(pw->pw_uid) < 0) {
        int err = -errno;
        log_error("cannot drop privileges", LF_STR("user", cfg->user),
                  LF_STR("error", strerror(-err)));
        return err;
    }
    if (keep != 0 && leaves_root)
        (void)prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
    /* Whatever the switch left (root keeps all of them with only "group",
     * an account switching to itself keeps its ambient ones), only what
     * the configuration needs stays. */
    struct caps c = { 0 };
    if ((rc = caps_get(&c)) < 0 || (rc = caps_set(keep & c.permitted)) < 0) {
        log_error("cannot drop privileges", LF_STR("step", "capabilities"),
                  LF_STR("error", strerror(-rc)));
        return rc;
    }
    log_info("dropped privileges", LF_INT("uid", getuid()), LF_INT("gid", getgid()),
             LF_STR("capabilities", (keep & c.permitted) != 0 ? "CAP_NET_ADMIN" : "none"));
    return 0;
}
