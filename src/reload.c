/* Reloading the config on SIGHUP: check it as a start would, bind what is new, hand it to every worker. */
#include "lifeline/reload.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lifeline/privileges.h"
#include "lifeline/addr.h"
#include "lifeline/listen.h"
#include "lifeline/log.h"
#include "lifeline/notify.h"
#include "lifeline/request.h"

/* A key that only a restart changes (the worker threads, the privileges
 * already dropped, the admin socket): the running value stays. */
static void warn_restart_only_cb(const char *path, void *arg)
{
    (void)arg;
    log_warn("config change needs a restart: keeping the running value", LF_STR("key", path));
}

static void finished(struct reload *rl, int ok)
{
    rl->busy = 0;
    if (ok)
        rl->ps->reloads_ok++;
    else
        rl->ps->reloads_failed++;
    rl->finished(rl, ok);
}

static void failed(struct reload *rl)
{
    log_error("reload failed: keeping the running config", LF_STR("config", rl->opts->config_path),
              LF_STR("hash", rl->ps->config_hash));
    finished(rl, 0);
}

/* Every worker serves the new config (a draining one ignored it). */
static void reload_done(struct request *r)
{
    struct reload_request *req = (struct reload_request *)(void *)r;
    struct reload *rl = r->owner;
    struct config *cfg = req->cfg, *prev = rl->cfg;
    size_t n_workers = rl->workers->n;
    /* Sockets no worker adopted: a worker had ended or was draining. */
    listen_close_fds(req->fds, n_workers * cfg->n_routes);
    free(req->fds);
    for (size_t i = 0; i < prev->n_routes; i++) {
        if (listen_bound_by(&rl->addrs[i], cfg, req->addrs) >= 0)
            continue;
        /* Each worker closes its socket for it. */
        budget_adjust_fds(rl->budget, -(int64_t)n_workers);
        char addr[ADDR_STR_MAX];
        log_info("stopped listening", LF_STR("route", prev->routes[i].name),
                 LF_STR("address",
                        addr_format((const struct sockaddr *)&rl->addrs[i], addr, sizeof(addr))));
    }
    free(rl->addrs);
    rl->addrs = (struct sockaddr_storage *)req->addrs;
    rl->cfg = cfg; /* the reference reload_start() took */
    config_free(prev);
    budget_set_buf_max(rl->budget, cfg->buffer_total_bytes);
    memcpy(rl->ps->config_hash, cfg->hash, sizeof(rl->ps->config_hash));
    int ok = !req->failed;
    if (ok)
        log_info("reloaded", LF_INT("routes", cfg->n_routes), LF_STR("hash", cfg->hash));
    else
        log_error("reloaded with errors: a worker could not serve every route",
                  LF_STR("hash", cfg->hash));
    request_free(r);
    finished(rl, ok);
}

/* Exactly the checks of --check and of a start: the file, then its listen
 * addresses. Returns 0 with the config and its addresses, or -errno. */
static int load(struct reload *rl, struct config **cfg, struct sockaddr_storage **addrs)
{
    const char *path = rl->opts->config_path;
    struct config_errors errs = { 0 };
    *addrs = NULL;
    int rc = config_load(path, cfg, &errs);
    if (rc == 0 && (*addrs = calloc((*cfg)->n_routes, sizeof(**addrs))) == NULL)
        rc = -ENOMEM;
    if (rc == 0)
        rc = listen_check(*cfg, *addrs, NULL, &errs);
    config_errors_log(path, &errs);
    config_errors_free(&errs);
    /* What the privilege drop kept is all there is until a restart. */
    if (rc == 0)
        rc = privileges_check(*cfg);
    if (rc < 0) {
        free(*addrs);
        config_free(*cfg);
        *cfg = NULL;
        *addrs = NULL;
    }
    return rc;
}

void reload_start(struct reload *rl)
{
    char monotonic[64];
    snprintf(monotonic, sizeof(monotonic), "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=%" PRIu64,
             notify_monotonic_usec());
    notify_send(monotonic);
    rl->busy = 1;
    log_info("reloading", LF_STR("config", rl->opts->config_path));

    struct config *cfg;
    struct sockaddr_storage *addrs;
    if (load(rl, &cfg, &addrs) < 0) {
        failed(rl);
        return;
    }
    size_t n_fds = rl->workers->n * cfg->n_routes;
    int *fds = malloc(n_fds * sizeof(*fds));
    struct request *r = request_new(REQUEST_RELOAD, rl->workers->n, reload_done, rl);
    int rc = fds != NULL && r != NULL ? 0 : -ENOMEM;
    if (rc < 0)
        log_error("out of memory");
    for (size_t i = 0; rc == 0 && i < n_fds; i++)
        fds[i] = -1;
    if (rc == 0)
        rc = listen_open_routes(cfg, rl->workers->n, rl->cfg, rl->addrs, addrs, fds);
    if (rc < 0) {
        if (fds != NULL)
            listen_close_fds(fds, n_fds);
        free(fds);
        free(addrs);
        if (r != NULL)
            request_free(r);
        config_free(cfg);
        failed(rl);
        return;
    }
    /* New listening sockets stay open: sessions get that many fewer. */
    int64_t opened = 0;
    for (size_t i = 0; i < n_fds; i++)
        opened += fds[i] >= 0;
    budget_adjust_fds(rl->budget, opened);
    config_restart_changes(rl->cfg, cfg, warn_restart_only_cb, NULL);
    for (size_t i = 0; i < cfg->notes.n; i++)
        log_warn("config note", LF_STR("note", cfg->notes.msgs[i]));
    if (!rl->opts->log_level_fixed)
        log_set_level(cfg->log_level);
    if (!rl->opts->log_format_fixed)
        log_set_format(cfg->log_format);

    struct reload_request *req = (struct reload_request *)(void *)r;
    req->cfg = cfg; /* ours until reload_done(): the workers only look during their answer */
    req->addrs = addrs;
    req->fds = fds;
    rc = worker_set_ask(rl->workers, rl->loop, r);
    if (rc < 0) {
        /* Could not even ask: nothing changed but the new sockets. */
        log_error("cannot reach the workers", LF_STR("error", uv_strerror(rc)));
        listen_close_fds(fds, n_fds);
        budget_adjust_fds(rl->budget, -opened);
        free(fds);
        free(addrs);
        request_free(r);
        config_free(cfg);
        failed(rl);
    }
}
