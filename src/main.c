/* Entry point: the command line, then the supervisor. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lifeline/config.h"
#include "lifeline/log.h"
#include "lifeline/probe.h"
#include "lifeline/listen.h"
#include "lifeline/supervisor.h"
#include "lifeline/upgrade.h"

/* " debug info warn error", " text json": from the one list of each. */
#define NAME_WORD_(id, name) " " name
#define LEVEL_NAMES LOG_LEVELS(NAME_WORD_)
#define FORMAT_NAMES LOG_FORMATS(NAME_WORD_)

static const char usage[] =
    "Usage: lifeline [options]\n"
    "       lifeline probe [--timeout MS] URL\n"
    "\n"
    "A TCP proxy that closes a dead or returning client's server connection\n"
    "with FIN, before the client's new connection reaches the server.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE      configuration file (default: $LIFELINE_CONFIG,\n"
    "                         else " CONFIG_DEFAULT_PATH ")\n"
    "      --check            validate the configuration, print ok or every error\n"
    "      --log-level LEVEL  one of" LEVEL_NAMES " (overrides the config)\n"
    "      --log-format FMT   one of" FORMAT_NAMES " (overrides the config)\n"
    "  -h, --help             show this help\n"
    "  -V, --version          show the version\n"
    "\n"
    "lifeline probe GETs an http:// URL and exits 0 on a 2xx answer: a health\n"
    "check for containers ('lifeline probe --help').\n"
    "\n"
    "Signals: SIGTERM/SIGINT drain and stop, SIGHUP reloads the configuration,\n"
    "SIGUSR2 upgrades live (a new process takes every session over).\n"
    "\n"
    "Exit codes: 0 clean shutdown, 1 runtime failure, 2 usage or config error.\n";

enum { OPT_CHECK = 256, OPT_LOG_LEVEL, OPT_LOG_FORMAT };

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lifeline: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry 'lifeline --help'.\n");
    va_end(ap);
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        { "config", required_argument, NULL, 'c' },
        { "check", no_argument, NULL, OPT_CHECK },
        { "log-level", required_argument, NULL, OPT_LOG_LEVEL },
        { "log-format", required_argument, NULL, OPT_LOG_FORMAT },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    const char *path = NULL;
    int check = 0;
    int have_level = 0, have_format = 0;
    enum log_level level = LOG_INFO;
    enum log_format format = LOG_FORMAT_TEXT;
    int opt;

    /* A subcommand with its own options, before lifeline's are parsed. */
    if (argc > 1 && strcmp(argv[1], "probe") == 0)
        return probe_main(argc - 1, argv + 1);

    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":c:hV", options, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case OPT_CHECK:
            check = 1;
            break;
        case OPT_LOG_LEVEL:
            if (log_level_parse(optarg, &level) < 0)
                return usage_error("--log-level: expected one of" LEVEL_NAMES ", got \"%s\"",
                                   optarg);
            have_level = 1;
            break;
        case OPT_LOG_FORMAT:
            if (log_format_parse(optarg, &format) < 0)
                return usage_error("--log-format: expected one of" FORMAT_NAMES ", got \"%s\"",
                                   optarg);
            have_format = 1;
            break;
        case 'h':
            fputs(usage, stdout);
            return EXIT_CLEAN;
        case 'V':
            printf("lifeline %s\n", LIFELINE_VERSION);
            return EXIT_CLEAN;
        case ':':
            return usage_error("%s: missing argument", argv[optind - 1]);
        default:
            return usage_error("%s: unknown option", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("%s: unexpected argument", argv[optind]);
    if (path == NULL)
        path = getenv("LIFELINE_CONFIG");
    if (path == NULL || *path == '\0')
        path = CONFIG_DEFAULT_PATH;

    /* The command line wins over the config, from the first line logged. */
    if (have_level)
        log_set_level(level);
    if (have_format)
        log_set_format(format);

    struct config *cfg = NULL;
    struct config_errors errs = { 0 };
    int rc = config_load(path, &cfg, &errs);
    if (check && rc == 0) {
        /* What the daemon checks before it binds: the listen addresses,
         * resolved, must not overlap. (It does not bind: a running lifeline
         * holds those ports.) */
        struct sockaddr_storage *addrs = calloc(cfg->n_routes, sizeof(*addrs));
        rc = addrs == NULL ? -ENOMEM : listen_check(cfg, addrs, NULL, &errs);
        free(addrs);
    }
    if (check) {
        for (size_t i = 0; rc == 0 && i < cfg->notes.n; i++)
            printf("note: %s\n", cfg->notes.msgs[i]);
        if (rc == 0)
            puts("ok");
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.msgs[i]);
        config_errors_free(&errs);
        config_free(cfg);
        return rc == 0 ? EXIT_CLEAN : EXIT_USAGE;
    }
    if (rc < 0) {
        for (size_t i = 0; i < errs.n; i++)
            log_error("invalid config", LF_STR("file", path), LF_STR("error", errs.msgs[i]),
                      LF_INT("pid", getpid()));
        config_errors_free(&errs);
        return EXIT_USAGE;
    }
    config_errors_free(&errs);
    if (!have_level)
        log_set_level(cfg->log_level);
    if (!have_format)
        log_set_format(cfg->log_format);

    log_info("starting", LF_STR("version", LIFELINE_VERSION), LF_STR("config", path),
             LF_INT("pid", getpid()));
    for (size_t i = 0; i < cfg->notes.n; i++)
        log_warn("config note", LF_STR("note", cfg->notes.msgs[i]));
    /* Read now: a package upgrade replaces the file, and SIGUSR2 starts
     * whatever is at this path then. */
    static struct upgrade_exec exec;
    if (upgrade_exec_init(&exec, argv) < 0)
        exec.exe[0] = '\0';
    struct supervisor_options opts = { .config_path = path,
                                       .exec = &exec,
                                       .log_level_fixed = have_level,
                                       .log_format_fixed = have_format };
    int code = supervisor_run(cfg, &opts);
    config_free(cfg);
    return code;
}
