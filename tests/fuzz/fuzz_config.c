/* libFuzzer target: config_parse() (JSON, ${VAR} substitution, validation) on arbitrary bytes. */
#include <errno.h>
#include <sanitizer/asan_interface.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lifeline/addr.h"
#include "lifeline/config.h"

/* libFuzzer's entry points; declared here for -Wmissing-prototypes. */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* No message can be longer: the path is cut at 512 bytes, echoed values at
 * 200, the enum list at 512. A longer one means a value was not cut. */
#define MSG_MAX 4096

/* Inputs up to this size end right before an inaccessible page (below). */
#define GUARDED_MAX ((size_t)1 << 20)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

/* cJSON is the system library, not instrumented: ASan cannot see it read
 * past the input's length. So the input ends where a PROT_NONE page begins,
 * and any read past it, by any code, faults. The bytes before the input are
 * ASan-poisoned, for instrumented code that reads before the start (except
 * the up to 7 that share its first 8-byte granule: ASan cannot mark those). */
static char *guard; /* GUARDED_MAX bytes end here, then the PROT_NONE page */

static void map_guard(void)
{
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0)
        return;
    size_t span = (GUARDED_MAX + (size_t)page - 1) / (size_t)page * (size_t)page;
    char *m =
        mmap(NULL, span + (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return;
    if (mprotect(m + span, (size_t)page, PROT_NONE) != 0) {
        munmap(m, span + (size_t)page);
        return;
    }
    guard = m + span;
}

/* Set once: the fuzzer finds these names in the dictionary, so both the
 * set, the set-but-empty and the unset branches of ${VAR} are reached. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("FUZZ_PORT", "5000", 1);
    setenv("FUZZ_HOST", "127.0.0.1", 1);
    setenv("FUZZ_EMPTY", "", 1);
    /* A value that looks like a reference: it must not be expanded again. */
    setenv("FUZZ_RAW", "${FUZZ_PORT}", 1);
    unsetenv("FUZZ_UNSET");
    map_guard();
    return 0;
}

/* Every message list: each message present, non-empty, terminated, bounded.
 * strnlen() past the end of an unterminated heap string trips ASan. */
static void check_messages(const struct config_errors *e)
{
    CHECK(e->n == 0 || e->msgs != NULL);
    for (size_t i = 0; i < e->n; i++) {
        CHECK(e->msgs[i] != NULL);
        size_t len = strnlen(e->msgs[i], MSG_MAX);
        CHECK(len > 0 && len < MSG_MAX);
    }
}

static int bounded_string(const char *s, size_t cap) { return memchr(s, '\0', cap) != NULL; }

static void check_endpoint(const struct hostport *hp)
{
    CHECK(bounded_string(hp->host, sizeof(hp->host)) && hp->host[0] != '\0');
    CHECK(hp->port != 0);
    if (hp->numeric)
        CHECK(hp->sa.ss_family == AF_INET || hp->sa.ss_family == AF_INET6);
    else
        CHECK(hp->sa.ss_family == AF_UNSPEC);
}

/* What a config that parsed promises its users (the daemon relies on these
 * without checking again). */
static void check_config(const struct config *cfg)
{
    CHECK(cfg->n_routes >= 1 && cfg->routes != NULL);
    CHECK(bounded_string(cfg->user, sizeof(cfg->user)));
    CHECK(bounded_string(cfg->group, sizeof(cfg->group)));
    CHECK(strlen(cfg->hash) == 16);
    CHECK(cfg->buffer_total_bytes >= 1048576);
    CHECK(cfg->workers <= 256);
    if (cfg->admin.enabled)
        check_endpoint(&cfg->admin.listen);
    check_messages(&cfg->notes);

    for (size_t i = 0; i < cfg->n_routes; i++) {
        const struct route_config *r = &cfg->routes[i];
        CHECK(bounded_string(r->name, sizeof(r->name)) && r->name[0] != '\0');
        check_endpoint(&r->listen);
        CHECK(r->buffer_bytes >= 1024 && r->buffer_bytes <= 67108864);

        const struct upstream_config *u = &r->upstream;
        CHECK(u->n_servers >= 1 && u->n_servers <= 64 && u->servers != NULL);
        for (size_t s = 0; s < u->n_servers; s++)
            check_endpoint(&u->servers[s]);
        CHECK(u->connect_timeout_ms >= 1);
        CHECK(u->retry_backoff_ms <= u->retry_backoff_max_ms);

        const struct client_config *c = &r->client;
        CHECK((c->n_allow == 0) == (c->allow == NULL) && c->n_allow <= 1024);
        for (size_t a = 0; a < c->n_allow; a++) {
            const struct cidr *b = &c->allow[a];
            CHECK((b->family == AF_INET && b->prefix <= 32) ||
                  (b->family == AF_INET6 && b->prefix <= 128));
        }
        CHECK(c->heartbeat.keepalive_count >= 1 && c->heartbeat.keepalive_count <= 127);
        CHECK(c->heartbeat.keepalive_interval_ms >= 1);

        /* Names are unique across routes. */
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(cfg->routes[j].name, r->name) != 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Not NUL-terminated on purpose: config_parse() takes a length. Past the
     * guard's size, an exact-size heap copy still lets ASan see
     * instrumented reads past it. */
    char *json, *heap = NULL;
    if (guard != NULL && size <= GUARDED_MAX) {
        json = guard - size;
        ASAN_POISON_MEMORY_REGION(guard - GUARDED_MAX, GUARDED_MAX - size);
    } else if ((json = heap = malloc(size ? size : 1)) == NULL) {
        return 0;
    }
    if (size)
        memcpy(json, data, size);

    struct config *cfg = (struct config *)&cfg;                         /* must be reset to NULL */
    struct config_errors errs = { .msgs = (char **)&errs, .n = 12345 }; /* must be reset */
    int rc = config_parse(json, size, &cfg, &errs);

    if (rc == 0) {
        CHECK(errs.n == 0);
        CHECK(cfg != NULL);
        check_config(cfg);
        /* A second reference keeps it alive; only the last frees. */
        CHECK(config_ref(cfg) == cfg);
        config_free(cfg);
        CHECK(cfg->n_routes >= 1);
        config_free(cfg);
    } else {
        CHECK(cfg == NULL);
        CHECK(rc == -EINVAL || rc == -ENOMEM);
        CHECK(rc == -ENOMEM || errs.n >= 1);
        check_messages(&errs);
    }
    config_errors_free(&errs);
    CHECK(errs.n == 0 && errs.msgs == NULL);
    if (heap != NULL)
        free(heap);
    else
        ASAN_UNPOISON_MEMORY_REGION(guard - GUARDED_MAX, GUARDED_MAX);
    return 0;
}
