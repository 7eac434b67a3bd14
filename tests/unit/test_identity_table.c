/* Unit tests for identity_table.c: claim and release of client identities, alone and from many threads. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "lifeline/identity_table.h"

#define NONE_WORKER (-1)

static struct session_ref ref(int worker, uint64_t id)
{
    return (struct session_ref){ .worker = worker, .id = id };
}

static void assert_ref(struct session_ref got, struct session_ref want)
{
    assert_int_equal(got.worker, want.worker);
    assert_int_equal(got.id, want.id);
}

static void assert_no_ref(struct session_ref got) { assert_int_equal(got.worker, NONE_WORKER); }

/* The identity of an IPv4 or IPv6 literal client address. */
static struct identity ident(const char *route, const char *ip, uint16_t port, int with_port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(ip, ':') != NULL) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        assert_int_equal(inet_pton(AF_INET6, ip, &in6->sin6_addr), 1);
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        assert_int_equal(inet_pton(AF_INET, ip, &in->sin_addr), 1);
    }
    struct identity id;
    registry_identity(&id, route, (const struct sockaddr *)&ss, with_port);
    return id;
}

static int setup(void **state)
{
    static struct identity_table r;
    if (identity_table_init(&r) != 0)
        return -1;
    *state = &r;
    return 0;
}

static int teardown(void **state)
{
    identity_table_destroy(*state);
    return 0;
}

static enum identity_claim claim(struct identity_table *r, const struct identity *id,
                                 struct session_ref self, int replace, struct session_ref *owner,
                                 struct session_ref *displaced)
{
    /* The outputs are always written: poison them first. */
    *owner = ref(77, 77);
    *displaced = ref(77, 77);
    return identity_table_claim(r, id, self, replace, owner, displaced);
}

static void test_claim_empty_is_owner(void **state)
{
    struct identity_table *r = *state;
    struct identity id = ident("legacy", "10.0.0.1", 4000, 1);
    struct session_ref owner, displaced;
    assert_int_equal(claim(r, &id, ref(0, 1), 1, &owner, &displaced), IDENTITY_OWNER);
    assert_no_ref(owner);
    assert_no_ref(displaced);
    assert_int_equal(r->entries.n_entries, 1);

    /* Left held: identity_table_destroy() frees it (ASan checks). */
    struct identity other = ident("legacy", "10.0.0.2", 4000, 1);
    assert_int_equal(claim(r, &other, ref(0, 2), 0, &owner, &displaced), IDENTITY_OWNER);
    assert_int_equal(r->entries.n_entries, 2);
}

static void test_successors(void **state)
{
    struct identity_table *r = *state;
    struct identity id = ident("legacy", "10.0.0.1", 4000, 1);
    struct session_ref owner, displaced, next;

    assert_int_equal(claim(r, &id, ref(0, 1), 1, &owner, &displaced), IDENTITY_OWNER);

    /* A second claim with replace waits behind the owner. */
    assert_int_equal(claim(r, &id, ref(1, 2), 1, &owner, &displaced), IDENTITY_SUCCESSOR);
    assert_ref(owner, ref(0, 1));
    assert_no_ref(displaced);

    /* A third displaces the second, which never got to run. */
    assert_int_equal(claim(r, &id, ref(2, 3), 1, &owner, &displaced), IDENTITY_SUCCESSOR);
    assert_ref(owner, ref(0, 1));
    assert_ref(displaced, ref(1, 2));

    /* Without replace, the owner keeps it. */
    assert_int_equal(claim(r, &id, ref(3, 4), 0, &owner, &displaced), IDENTITY_REFUSED);
    assert_ref(owner, ref(0, 1));
    assert_no_ref(displaced);
    assert_int_equal(r->entries.n_entries, 1);

    /* The displaced successor's release changes nothing. */
    next = ref(77, 77);
    assert_int_equal(identity_table_release(r, &id, ref(1, 2), &next), 0);
    assert_ref(next, ref(77, 77));
    /* Nor does the release of a session that was refused. */
    assert_int_equal(identity_table_release(r, &id, ref(3, 4), &next), 0);

    /* The owner's release hands the identity to the waiting successor. */
    assert_int_equal(identity_table_release(r, &id, ref(0, 1), &next), 1);
    assert_ref(next, ref(2, 3));
    assert_int_equal(r->entries.n_entries, 1);

    /* It is now the owner: a new claim waits behind it, or is refused. */
    assert_int_equal(claim(r, &id, ref(0, 5), 0, &owner, &displaced), IDENTITY_REFUSED);
    assert_ref(owner, ref(2, 3));

    /* The old owner's second release is a no-op. */
    next = ref(77, 77);
    assert_int_equal(identity_table_release(r, &id, ref(0, 1), &next), 0);
    assert_ref(next, ref(77, 77));
    assert_int_equal(r->entries.n_entries, 1);

    /* The last owner without a successor removes the entry... */
    assert_int_equal(identity_table_release(r, &id, ref(2, 3), &next), 0);
    assert_int_equal(r->entries.n_entries, 0);

    /* ...so a fresh claim owns it again. */
    assert_int_equal(claim(r, &id, ref(1, 6), 1, &owner, &displaced), IDENTITY_OWNER);
    assert_no_ref(owner);
    assert_no_ref(displaced);
    assert_int_equal(identity_table_release(r, &id, ref(1, 6), &next), 0);
    assert_int_equal(r->entries.n_entries, 0);
}

static void test_successor_gives_up(void **state)
{
    struct identity_table *r = *state;
    struct identity id = ident("legacy", "10.0.0.1", 4000, 1);
    struct session_ref owner, displaced, next;

    assert_int_equal(claim(r, &id, ref(0, 1), 1, &owner, &displaced), IDENTITY_OWNER);
    assert_int_equal(claim(r, &id, ref(1, 2), 1, &owner, &displaced), IDENTITY_SUCCESSOR);

    /* The waiting successor leaves (its client went away): the slot is empty. */
    assert_int_equal(identity_table_release(r, &id, ref(1, 2), &next), 0);
    assert_int_equal(r->entries.n_entries, 1);

    /* A later claim finds no successor to displace. */
    assert_int_equal(claim(r, &id, ref(2, 3), 1, &owner, &displaced), IDENTITY_SUCCESSOR);
    assert_ref(owner, ref(0, 1));
    assert_no_ref(displaced);
    assert_int_equal(identity_table_release(r, &id, ref(2, 3), &next), 0);

    /* The owner then has nobody to hand over to. */
    next = ref(77, 77);
    assert_int_equal(identity_table_release(r, &id, ref(0, 1), &next), 0);
    assert_ref(next, ref(77, 77));
    assert_int_equal(r->entries.n_entries, 0);

    /* Releasing what nobody holds is harmless. */
    assert_int_equal(identity_table_release(r, &id, ref(0, 1), &next), 0);
    assert_int_equal(r->entries.n_entries, 0);
}

/* Each pair differs in one part of the identity only, and both are owners. */
static void test_distinct_identities(void **state)
{
    struct identity_table *r = *state;
    const struct {
        const char *label;
        struct identity a, b;
    } pairs[] = {
        { "route", ident("a", "10.0.0.1", 4000, 1), ident("b", "10.0.0.1", 4000, 1) },
        { "route prefix", ident("legacy", "10.0.0.1", 4000, 1),
          ident("legacy2", "10.0.0.1", 4000, 1) },
        { "port", ident("r", "10.0.0.1", 4000, 1), ident("r", "10.0.0.1", 4001, 1) },
        { "address", ident("r", "10.0.0.1", 4000, 1), ident("r", "10.0.0.2", 4000, 1) },
        { "IPv4 vs IPv6 of the same bytes", ident("r", "10.0.0.1", 4000, 1),
          ident("r", "a00:1::", 4000, 1) },
        { "IPv6 port", ident("r", "2001:db8::1", 4000, 1), ident("r", "2001:db8::1", 4001, 1) },
        { "IPv6 address", ident("r", "2001:db8::1", 4000, 0), ident("r", "2001:db8::2", 4000, 0) },
        { "with and without port", ident("r", "10.0.0.1", 4000, 1),
          ident("r", "10.0.0.1", 4000, 0) },
    };
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        struct session_ref owner, displaced, next;
        uint64_t base = 100 * (i + 1);
        if (claim(r, &pairs[i].a, ref(0, base), 0, &owner, &displaced) != IDENTITY_OWNER ||
            claim(r, &pairs[i].b, ref(1, base + 1), 0, &owner, &displaced) != IDENTITY_OWNER)
            fail_msg("case %s: not two owners", pairs[i].label);
        assert_int_equal(r->entries.n_entries, 2);
        assert_int_equal(identity_table_release(r, &pairs[i].a, ref(0, base), &next), 0);
        assert_int_equal(identity_table_release(r, &pairs[i].b, ref(1, base + 1), &next), 0);
        assert_int_equal(r->entries.n_entries, 0);
    }
}

/* With with_port=0 the port is not part of the identity. */
static void test_address_only(void **state)
{
    struct identity_table *r = *state;
    struct identity a = ident("r", "10.0.0.1", 4000, 0);
    struct identity b = ident("r", "10.0.0.1", 4001, 0);
    struct identity c = ident("r", "2001:db8::1", 1, 0);
    struct identity d = ident("r", "2001:db8::1", 65535, 0);
    struct session_ref owner, displaced, next;

    assert_int_equal(claim(r, &a, ref(0, 1), 1, &owner, &displaced), IDENTITY_OWNER);
    assert_int_equal(claim(r, &b, ref(1, 2), 1, &owner, &displaced), IDENTITY_SUCCESSOR);
    assert_ref(owner, ref(0, 1));
    assert_int_equal(claim(r, &c, ref(0, 3), 1, &owner, &displaced), IDENTITY_OWNER);
    assert_int_equal(claim(r, &d, ref(1, 4), 0, &owner, &displaced), IDENTITY_REFUSED);
    assert_ref(owner, ref(0, 3));
    assert_int_equal(r->entries.n_entries, 2);

    /* Released through the other port's identity: it is the same entry. */
    assert_int_equal(identity_table_release(r, &b, ref(0, 1), &next), 1);
    assert_ref(next, ref(1, 2));
    assert_int_equal(identity_table_release(r, &a, ref(1, 2), &next), 0);
    assert_int_equal(identity_table_release(r, &d, ref(0, 3), &next), 0);
    assert_int_equal(r->entries.n_entries, 0);
}

static void test_identity_ipv4(void **state)
{
    (void)state;
    struct sockaddr_in in;
    memset(&in, 0, sizeof(in));
    in.sin_family = AF_INET;
    in.sin_port = htons(40000);
    in.sin_addr.s_addr = htonl(0xC0000201); /* 192.0.2.1 */

    struct identity id;
    memset(&id, 0xAA, sizeof(id));
    registry_identity(&id, "legacy", (const struct sockaddr *)&in, 1);
    assert_string_equal(id.route, "legacy");
    assert_int_equal(id.client.family, AF_INET);
    const uint8_t want[16] = { 192, 0, 2, 1 };
    assert_memory_equal(id.client.addr, want, sizeof(want));
    assert_int_equal(id.client.port, 40000);

    /* Everything past the route's NUL is zero too: identities compare whole. */
    for (size_t i = strlen(id.route); i < sizeof(id.route); i++)
        assert_int_equal(id.route[i], 0);

    memset(&id, 0xAA, sizeof(id));
    registry_identity(&id, "legacy", (const struct sockaddr *)&in, 0);
    assert_int_equal(id.client.family, AF_INET);
    assert_memory_equal(id.client.addr, want, sizeof(want));
    assert_int_equal(id.client.port, 0);
}

static void test_identity_ipv6(void **state)
{
    (void)state;
    struct sockaddr_in6 in6;
    memset(&in6, 0, sizeof(in6));
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(5000);
    assert_int_equal(inet_pton(AF_INET6, "2001:db8::a:1", &in6.sin6_addr), 1);

    struct identity id;
    memset(&id, 0xAA, sizeof(id));
    registry_identity(&id, "v6", (const struct sockaddr *)&in6, 1);
    assert_string_equal(id.route, "v6");
    assert_int_equal(id.client.family, AF_INET6);
    const uint8_t want[16] = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0, 1 };
    assert_memory_equal(id.client.addr, want, sizeof(want));
    assert_int_equal(id.client.port, 5000);

    registry_identity(&id, "v6", (const struct sockaddr *)&in6, 0);
    assert_int_equal(id.client.family, AF_INET6);
    assert_memory_equal(id.client.addr, want, sizeof(want));
    assert_int_equal(id.client.port, 0);

    /* A route name longer than the field is cut, still NUL-terminated. */
    char long_name[100];
    memset(long_name, 'n', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    registry_identity(&id, long_name, (const struct sockaddr *)&in6, 1);
    assert_int_equal(strlen(id.route), sizeof(id.route) - 1);
}

/* A dual-stack listener's IPv4 client (::ffff:a.b.c.d) is the same client
 * as the IPv4 address: one identity, one owner. */
static void test_identity_v4_mapped(void **state)
{
    struct identity_table *r = *state;
    struct identity v4 = ident("r", "192.0.2.7", 4000, 1);
    struct identity mapped = ident("r", "::ffff:192.0.2.7", 4000, 1);
    assert_memory_equal(&v4, &mapped, sizeof(v4));
    assert_int_equal(mapped.client.family, AF_INET);

    struct session_ref owner, displaced;
    assert_int_equal(claim(r, &v4, ref(0, 1), 0, &owner, &displaced), IDENTITY_OWNER);
    assert_int_equal(claim(r, &mapped, ref(1, 2), 0, &owner, &displaced), IDENTITY_REFUSED);
    assert_ref(owner, ref(0, 1));
}

/* Far more identities than buckets: chains, removal from the middle of a
 * chain, and entries left for identity_table_destroy() to free. */
static void test_many_identities(void **state)
{
    struct identity_table *r = *state;
    enum { N = 20000 };
    struct session_ref owner, displaced, next;
    for (uint32_t i = 0; i < N; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "10.%u.%u.%u", i >> 16, (i >> 8) & 255, i & 255);
        struct identity id = ident("r", ip, (uint16_t)(i % 7 + 1), 1);
        assert_int_equal(claim(r, &id, ref(0, i + 1), 1, &owner, &displaced), IDENTITY_OWNER);
    }
    assert_int_equal(r->entries.n_entries, N);
    /* Every other one released, the rest left held. */
    for (uint32_t i = 0; i < N; i += 2) {
        char ip[32];
        snprintf(ip, sizeof(ip), "10.%u.%u.%u", i >> 16, (i >> 8) & 255, i & 255);
        struct identity id = ident("r", ip, (uint16_t)(i % 7 + 1), 1);
        assert_int_equal(identity_table_release(r, &id, ref(0, i + 1), &next), 0);
    }
    assert_int_equal(r->entries.n_entries, N / 2);
    for (uint32_t i = 1; i < N; i += 2) {
        char ip[32];
        snprintf(ip, sizeof(ip), "10.%u.%u.%u", i >> 16, (i >> 8) & 255, i & 255);
        struct identity id = ident("r", ip, (uint16_t)(i % 7 + 1), 1);
        assert_int_equal(claim(r, &id, ref(1, i + 1), 0, &owner, &displaced), IDENTITY_REFUSED);
        assert_ref(owner, ref(0, i + 1));
    }
}

/* ---- Many threads --------------------------------------------------------
 *
 * Each thread plays one worker and runs one session at a time. A session
 * claims one of a few identities; an owner marks the identity's `holder`
 * (which must have been free), clears it, then releases. A successor waits
 * in its thread's mailbox for the one message that ends its wait: GRANTED,
 * sent by the owner whose release named it as *next, or DISPLACED, sent by
 * the claim that pushed it out. Some successors give up instead of waiting,
 * and some claims do not replace. */

#define N_THREADS 4
#define N_CYCLES 20000
#define N_IDS 3

enum verdict { GRANTED = 1, DISPLACED = 2 };

struct arena {
    struct identity_table reg;
    struct identity ids[N_IDS];
    _Atomic int holder[N_IDS];           /* 0, or the holding thread + 1 */
    _Atomic uint64_t mailbox[N_THREADS]; /* session id << 2 | verdict */
    _Atomic long owned, handed_over, displaced, refused, gave_up;
    _Atomic long failures;
};

struct player {
    struct arena *a;
    int index;
    uint32_t rng;
};

static uint32_t next_rand(uint32_t *s)
{
    /* xorshift32 */
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static void failure(struct arena *a, const char *what)
{
    if (atomic_fetch_add(&a->failures, 1) < 10)
        fprintf(stderr, "registry threads: %s\n", what);
}

/* Delivers a verdict to a session. A session that gave up may still be sent
 * GRANTED (its owner released before it did); that message is older than
 * the thread's current session and must not overwrite a newer one. */
static void post(struct arena *a, struct session_ref to, enum verdict v)
{
    if (to.worker < 0 || to.worker >= N_THREADS) {
        failure(a, "message to no session");
        return;
    }
    _Atomic uint64_t *box = &a->mailbox[to.worker];
    uint64_t cur = atomic_load(box);
    while ((cur >> 2) < to.id)
        if (atomic_compare_exchange_weak(box, &cur, to.id << 2 | (uint64_t)v))
            return;
    if ((cur >> 2) == to.id)
        failure(a, "two verdicts for one session");
}

/* The session owns identity k: nobody else may, and the registry says so
 * (a claim without replace is refused, naming it). */
static void hold(struct arena *a, int k, struct session_ref self)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong(&a->holder[k], &expected, self.worker + 1)) {
        failure(a, "two owners of one identity");
        return;
    }
    atomic_fetch_add(&a->owned, 1);
    struct session_ref owner, displaced;
    struct session_ref probe = ref(self.worker, UINT64_MAX);
    if (identity_table_claim(&a->reg, &a->ids[k], probe, 0, &owner, &displaced) !=
            IDENTITY_REFUSED ||
        owner.worker != self.worker || owner.id != self.id)
        failure(a, "the registry names another owner");
    sched_yield();
    expected = self.worker + 1;
    if (!atomic_compare_exchange_strong(&a->holder[k], &expected, 0))
        failure(a, "holder changed under its owner");
}

/* Releases, and tells a successor that now owns the identity to go on. */
static void release(struct arena *a, int k, struct session_ref self)
{
    struct session_ref next = ref(77, 77);
    if (identity_table_release(&a->reg, &a->ids[k], self, &next)) {
        if (next.worker == self.worker && next.id == self.id)
            failure(a, "handed over to itself");
        atomic_fetch_add(&a->handed_over, 1);
        post(a, next, GRANTED);
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Waits for the one message for session `id`; a lost message fails the
 * test instead of hanging it. */
static int await_verdict(struct arena *a, int index, uint64_t id, uint64_t *m)
{
    double deadline = 0;
    for (unsigned spins = 0;; spins++) {
        *m = atomic_load(&a->mailbox[index]);
        if ((*m >> 2) == id)
            return 1;
        if (spins % 1024 == 1023) {
            if (deadline == 0) {
                deadline = now_s() + 60;
            } else if (now_s() > deadline) {
                failure(a, "a successor waited 60 s for its verdict");
                return 0;
            }
        }
        sched_yield();
    }
}

static void *player_main(void *arg)
{
    struct player *p = arg;
    struct arena *a = p->a;
    uint64_t seq = 0;
    for (int cycle = 0; cycle < N_CYCLES; cycle++) {
        uint32_t rnd = next_rand(&p->rng);
        int k = (int)(rnd % N_IDS);
        int replace = (rnd >> 8) % 8 != 0;
        struct session_ref self = ref(p->index, ++seq);
        struct session_ref owner, displaced;
        switch (identity_table_claim(&a->reg, &a->ids[k], self, replace, &owner, &displaced)) {
        case IDENTITY_OWNER:
            hold(a, k, self);
            release(a, k, self);
            break;
        case IDENTITY_REFUSED:
            if (replace || owner.worker < 0)
                failure(a, "bad refusal");
            atomic_fetch_add(&a->refused, 1);
            break;
        case IDENTITY_SUCCESSOR:
            if (!replace || owner.worker < 0 ||
                (owner.worker == self.worker && owner.id == self.id))
                failure(a, "bad successor");
            if (displaced.worker >= 0) {
                atomic_fetch_add(&a->displaced, 1);
                post(a, displaced, DISPLACED);
            }
            if ((rnd >> 16) % 16 == 0) {
                /* Gives up without waiting; if the owner already handed it
                 * the identity, this release passes it on. */
                atomic_fetch_add(&a->gave_up, 1);
                release(a, k, self);
                break;
            }
            uint64_t m;
            if (!await_verdict(a, p->index, self.id, &m))
                return NULL;
            if ((m & 3) == GRANTED) {
                hold(a, k, self);
                release(a, k, self);
            } else {
                struct session_ref next;
                if (identity_table_release(&a->reg, &a->ids[k], self, &next) != 0)
                    failure(a, "a displaced successor's release handed over");
            }
            break;
        }
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    static struct arena a;
    memset(&a, 0, sizeof(a));
    assert_int_equal(identity_table_init(&a.reg), 0);
    a.ids[0] = ident("r", "10.0.0.1", 4000, 1);
    a.ids[1] = ident("r", "10.0.0.1", 4001, 1);
    a.ids[2] = ident("r", "2001:db8::1", 4000, 0);

    pthread_t threads[N_THREADS];
    struct player players[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        players[i] = (struct player){ .a = &a, .index = i, .rng = 0x9E3779B9u * (uint32_t)(i + 1) };
        assert_int_equal(pthread_create(&threads[i], NULL, player_main, &players[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_join(threads[i], NULL), 0);

    fprintf(stderr,
            "registry threads: %ld owned, %ld handed over, %ld displaced, %ld refused, "
            "%ld gave up\n",
            atomic_load(&a.owned), atomic_load(&a.handed_over), atomic_load(&a.displaced),
            atomic_load(&a.refused), atomic_load(&a.gave_up));
    assert_int_equal(atomic_load(&a.failures), 0);
    /* Every path was taken. */
    assert_true(atomic_load(&a.owned) > 0);
    assert_true(atomic_load(&a.handed_over) > 0);
    assert_true(atomic_load(&a.displaced) > 0);
    assert_true(atomic_load(&a.refused) > 0);
    assert_true(atomic_load(&a.gave_up) > 0);
    /* Every session ended, so every identity is free again. */
    assert_int_equal(a.reg.entries.n_entries, 0);
    for (int k = 0; k < N_IDS; k++)
        assert_int_equal(atomic_load(&a.holder[k]), 0);
    identity_table_destroy(&a.reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_claim_empty_is_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_successors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_successor_gives_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_distinct_identities, setup, teardown),
        cmocka_unit_test_setup_teardown(test_address_only, setup, teardown),
        cmocka_unit_test(test_identity_ipv4),
        cmocka_unit_test(test_identity_ipv6),
        cmocka_unit_test_setup_teardown(test_identity_v4_mapped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_identities, setup, teardown),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
