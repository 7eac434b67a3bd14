/* Dropping root once every socket is bound. */
#include "lifeline/privileges.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <string.h>
#include <unistd.h>

#include "lifeline/log.h"

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
    /* Supplementary groups first (needs root), then the group, then the user. */
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
    log_info("dropped privileges", LF_INT("uid", getuid()), LF_INT("gid", getgid()));
    return 0;
}
