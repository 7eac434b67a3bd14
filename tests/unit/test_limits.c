/* Unit tests for limits.c: open sessions per route and per client address,
 * alone and from many threads. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "lifeline/limits.h"

#define N_ROUTES 3

/* A client address: an IPv4 or IPv6 literal and a port. */
static struct sockaddr_storage client(const char *ip, uint16_t port)
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
    return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

/* Routes are counted by name; the tests number them. */
static struct limit_route *RT(struct limits *l, size_t route)
{
    static const char *const names[N_ROUTES] = { "alpha", "beta", "gamma" };
    struct limit_route *r = limits_route(l, names[route]);
    assert_non_null(r);
    return r;
}

/* limits_take() as 0, -1 (route full) or -2 (address full). */
static int take_sa(struct limits *l, struct limit_route *route, const struct sockaddr *sa,
                   uint64_t max_route, uint64_t max_addr)
{
    enum limits_full full = (enum limits_full) - 1;
    int rc = limits_take(l, route, sa, max_route, max_addr, &full);
    if (rc == 0)
        return 0;
    assert_int_equal(rc, -EBUSY);
    return full == LIMITS_ROUTE_FULL ? -1 : full == LIMITS_ADDRESS_FULL ? -2 : -3;
}

static int take(struct limits *l, size_t route, const char *ip, uint16_t port, uint64_t max_route,
                uint64_t max_addr)
{
    struct sockaddr_storage ss = client(ip, port);
    return take_sa(l, RT(l, route), SA(ss), max_route, max_addr);
}

static void give(struct limits *l, size_t route, const char *ip, uint16_t port)
{
    struct sockaddr_storage ss = client(ip, port);
    limits_give(l, RT(l, route), SA(ss));
}

static uint64_t route_open(struct limits *l, size_t route)
{
    return atomic_load(&RT(l, route)->open);
}

/* No per-address entry is left in the table. */
static int table_empty(const struct limits *l) { return l->addresses.n_entries == 0; }

static void assert_empty(struct limits *l)
{
    for (size_t r = 0; r < N_ROUTES; r++)
        assert_int_equal(route_open(l, r), 0);
    assert_true(table_empty(l));
}

static int setup(void **state)
{
    static struct limits l;
    if (limits_init(&l) != 0)
        return -1;
    *state = &l;
    return 0;
}

static int teardown(void **state)
{
    limits_destroy(*state);
    return 0;
}

/* --------------------------------------------------------------------------
 * single thread */

static void test_init_empty(void **state)
{
    struct limits *l = *state;
    assert_non_null(l->addresses.buckets);
    assert_true(l->addresses.n_buckets > 0);
    assert_empty(l);
}

/* A route is its name: a reload that keeps the name keeps the count, so
 * sessions from before and after it share one max_connections. */
static void test_route_by_name(void **state)
{
    struct limits *l = *state;
    struct limit_route *a = limits_route(l, "alpha");
    assert_non_null(a);
    assert_ptr_equal(limits_route(l, "alpha"), a);
    assert_ptr_not_equal(limits_route(l, "alphabet"), a);
    assert_int_equal(take(l, 0, "10.0.0.1", 1000, 2, 0), 0);
    assert_int_equal(atomic_load(&a->open), 1);
    struct sockaddr_storage ss = client("10.0.0.2", 1000);
    assert_int_equal(take_sa(l, limits_route(l, "alpha"), SA(ss), 2, 0), 0);
    assert_int_equal(take(l, 0, "10.0.0.3", 1000, 2, 0), -1);
    assert_int_equal(route_open(l, 1), 0);
    give(l, 0, "10.0.0.1", 1000);
    limits_give(l, a, SA(ss));
    assert_empty(l);
}

static void test_route_max(void **state)
{
    struct limits *l = *state;
    /* Three different addresses: only the route's max can refuse. */
    assert_int_equal(take(l, 0, "10.0.0.1", 1000, 3, 0), 0);
    assert_int_equal(take(l, 0, "10.0.0.2", 1000, 3, 0), 0);
    assert_int_equal(take(l, 0, "10.0.0.3", 1000, 3, 0), 0);
    assert_int_equal(route_open(l, 0), 3);
    assert_int_equal(take(l, 0, "10.0.0.4", 1000, 3, 0), -1);
    assert_int_equal(take(l, 0, "10.0.0.1", 1001, 3, 0), -1);
    /* A refusal counts nothing, neither for the route nor for the address. */
    assert_int_equal(route_open(l, 0), 3);

    /* One given back: one more fits, and only one. */
    give(l, 0, "10.0.0.2", 1000);
    assert_int_equal(route_open(l, 0), 2);
    assert_int_equal(take(l, 0, "10.0.0.4", 1000, 3, 0), 0);
    assert_int_equal(take(l, 0, "10.0.0.5", 1000, 3, 0), -1);

    /* A higher max (as another config would have) admits more. */
    assert_int_equal(take(l, 0, "10.0.0.5", 1000, 4, 0), 0);
    assert_int_equal(route_open(l, 0), 4);

    give(l, 0, "10.0.0.1", 1000);
    give(l, 0, "10.0.0.3", 1000);
    give(l, 0, "10.0.0.4", 1000);
    give(l, 0, "10.0.0.5", 1000);
    assert_empty(l);
}

static void test_per_address_max(void **state)
{
    struct limits *l = *state;
    /* The port is not part of the key: one address, many ports. */
    assert_int_equal(take(l, 0, "192.0.2.7", 40001, 0, 2), 0);
    assert_int_equal(take(l, 0, "192.0.2.7", 40002, 0, 2), 0);
    assert_int_equal(take(l, 0, "192.0.2.7", 40003, 0, 2), -2);
    assert_int_equal(take(l, 0, "192.0.2.7", 40001, 0, 2), -2);
    /* The refusal gave back its route count. */
    assert_int_equal(route_open(l, 0), 2);

    /* Another address is not affected. */
    assert_int_equal(take(l, 0, "192.0.2.8", 40001, 0, 2), 0);
    assert_int_equal(route_open(l, 0), 3);

    /* Given back from a different port than it was taken from: same key. */
    give(l, 0, "192.0.2.7", 50000);
    assert_int_equal(take(l, 0, "192.0.2.7", 40004, 0, 2), 0);
    assert_int_equal(take(l, 0, "192.0.2.7", 40005, 0, 2), -2);

    give(l, 0, "192.0.2.7", 40002);
    give(l, 0, "192.0.2.7", 40004);
    give(l, 0, "192.0.2.8", 40001);
    assert_empty(l);
}

static void test_route_max_checked_first(void **state)
{
    struct limits *l = *state;
    /* Route full and address full at once: the route's cause wins (-1). */
    assert_int_equal(take(l, 0, "10.1.1.1", 1, 2, 2), 0);
    assert_int_equal(take(l, 0, "10.1.1.1", 2, 2, 2), 0);
    assert_int_equal(take(l, 0, "10.1.1.1", 3, 2, 2), -1);
    /* Route has room, address is full: -2. */
    assert_int_equal(take(l, 0, "10.1.1.1", 3, 3, 2), -2);
    assert_int_equal(route_open(l, 0), 2);
    give(l, 0, "10.1.1.1", 1);
    give(l, 0, "10.1.1.1", 2);
    assert_empty(l);
}

static void test_ipv4_ipv6_distinct(void **state)
{
    struct limits *l = *state;
    /* 1.2.3.4 and 102:304:: have the same first 16 key bytes; the family
     * keeps them apart. */
    assert_int_equal(take(l, 0, "1.2.3.4", 1, 0, 1), 0);
    assert_int_equal(take(l, 0, "1.2.3.4", 2, 0, 1), -2);
    assert_int_equal(take(l, 0, "102:304::", 1, 0, 1), 0);
    assert_int_equal(take(l, 0, "102:304::", 2, 0, 1), -2);
    /* An IPv4-mapped IPv6 address is the IPv4 address: full already. */
    assert_int_equal(take(l, 0, "::ffff:1.2.3.4", 1, 0, 1), -2);
    assert_int_equal(take(l, 0, "::1", 1, 0, 1), 0);
    assert_int_equal(take(l, 0, "::1", 2, 0, 1), -2);
    assert_int_equal(route_open(l, 0), 3);

    /* Giving back the IPv6 one leaves the IPv4 one counted. */
    give(l, 0, "102:304::", 1);
    assert_int_equal(take(l, 0, "1.2.3.4", 3, 0, 1), -2);
    assert_int_equal(take(l, 0, "102:304::", 3, 0, 1), 0);

    give(l, 0, "102:304::", 3);
    give(l, 0, "1.2.3.4", 1);
    give(l, 0, "::1", 1);
    assert_empty(l);
}

static void test_routes_separate(void **state)
{
    struct limits *l = *state;
    /* Route 0 full, for the route and for the address. */
    assert_int_equal(take(l, 0, "10.9.9.9", 1, 1, 1), 0);
    assert_int_equal(take(l, 0, "10.9.9.9", 2, 1, 1), -1);
    assert_int_equal(take(l, 0, "10.9.9.9", 2, 2, 1), -2);
    /* The same address on the other routes is counted apart. */
    assert_int_equal(take(l, 1, "10.9.9.9", 1, 1, 1), 0);
    assert_int_equal(take(l, 2, "10.9.9.9", 1, 1, 1), 0);
    assert_int_equal(take(l, 1, "10.9.9.9", 2, 1, 1), -1);
    assert_int_equal(take(l, 2, "10.9.9.9", 2, 2, 1), -2);
    assert_int_equal(route_open(l, 0), 1);
    assert_int_equal(route_open(l, 1), 1);
    assert_int_equal(route_open(l, 2), 1);

    /* Giving back on route 1 frees route 1 only. */
    give(l, 1, "10.9.9.9", 1);
    assert_int_equal(route_open(l, 0), 1);
    assert_int_equal(route_open(l, 1), 0);
    assert_int_equal(route_open(l, 2), 1);
    assert_int_equal(take(l, 0, "10.9.9.9", 3, 1, 1), -1);
    assert_int_equal(take(l, 1, "10.9.9.9", 3, 1, 1), 0);

    give(l, 0, "10.9.9.9", 1);
    give(l, 1, "10.9.9.9", 3);
    give(l, 2, "10.9.9.9", 1);
    assert_empty(l);
}

static void test_zero_means_unlimited(void **state)
{
    struct limits *l = *state;
    enum { N = 5000 };
    for (int i = 0; i < N; i++)
        assert_int_equal(take(l, 0, "10.2.2.2", (uint16_t)(1 + i), 0, 0), 0);
    assert_int_equal(route_open(l, 0), N);
    /* Unlimited per address, limited per route. */
    for (int i = 0; i < 10; i++)
        assert_int_equal(take(l, 1, "10.2.2.2", (uint16_t)(1 + i), 10, 0), 0);
    assert_int_equal(take(l, 1, "10.2.2.2", 11, 10, 0), -1);
    /* Unlimited per route, limited per address. */
    for (int i = 0; i < 10; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "10.3.3.%d", i);
        assert_int_equal(take(l, 2, ip, 1, 0, 1), 0);
        assert_int_equal(take(l, 2, ip, 2, 0, 1), -2);
    }
    assert_int_equal(route_open(l, 2), 10);

    for (int i = 0; i < N; i++)
        give(l, 0, "10.2.2.2", (uint16_t)(1 + i));
    for (int i = 0; i < 10; i++)
        give(l, 1, "10.2.2.2", (uint16_t)(1 + i));
    for (int i = 0; i < 10; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "10.3.3.%d", i);
        give(l, 2, ip, 1);
    }
    assert_empty(l);
}

/* A dual-stack listener's IPv4 client (::ffff:a.b.c.d) counts as the IPv4
 * address it maps. */
static void test_v4_mapped_is_the_ipv4_address(void **state)
{
    struct limits *l = *state;
    assert_int_equal(take(l, 0, "192.0.2.9", 1, 0, 2), 0);
    assert_int_equal(take(l, 0, "::ffff:192.0.2.9", 2, 0, 2), 0);
    assert_int_equal(take(l, 0, "192.0.2.9", 3, 0, 2), -2);
    assert_int_equal(take(l, 0, "::ffff:192.0.2.9", 4, 0, 2), -2);
    give(l, 0, "::ffff:192.0.2.9", 1);
    assert_int_equal(take(l, 0, "192.0.2.9", 5, 0, 2), 0);
    give(l, 0, "192.0.2.9", 2);
    give(l, 0, "::ffff:192.0.2.9", 5);
    assert_empty(l);
}

/* More addresses than buckets, so chains form; given back in an order
 * unrelated to the order taken, every entry goes and no memory remains
 * (AddressSanitizer's leak check would name what did). */
static void test_give_frees_entries(void **state)
{
    struct limits *l = *state;
    enum { N = 4096 };
    assert_true(N > l->addresses.n_buckets); /* it grows as they come */
    char ip[64];
    for (int i = 0; i < N; i++) {
        if (i % 2)
            snprintf(ip, sizeof(ip), "10.%d.%d.1", i / 256, i % 256);
        else
            snprintf(ip, sizeof(ip), "2001:db8::%x", i);
        assert_int_equal(take(l, (size_t)(i % N_ROUTES), ip, 7, 0, 2), 0);
        assert_int_equal(take(l, (size_t)(i % N_ROUTES), ip, 8, 0, 2), 0);
    }
    /* One of the two given back: the entry stays. */
    for (int i = 0; i < N; i++) {
        int j = (i * 2003) % N; /* 2003 is prime to 4096: a permutation */
        if (j % 2)
            snprintf(ip, sizeof(ip), "10.%d.%d.1", j / 256, j % 256);
        else
            snprintf(ip, sizeof(ip), "2001:db8::%x", j);
        give(l, (size_t)(j % N_ROUTES), ip, 7);
    }
    for (int i = 0; i < N; i++) {
        int j = (N - 1 - i) * 1031 % N;
        if (j % 2)
            snprintf(ip, sizeof(ip), "10.%d.%d.1", j / 256, j % 256);
        else
            snprintf(ip, sizeof(ip), "2001:db8::%x", j);
        /* Still counted once: a second one is admitted, a third is not. */
        assert_int_equal(take(l, (size_t)(j % N_ROUTES), ip, 9, 0, 2), 0);
        assert_int_equal(take(l, (size_t)(j % N_ROUTES), ip, 10, 0, 2), -2);
        give(l, (size_t)(j % N_ROUTES), ip, 9);
        give(l, (size_t)(j % N_ROUTES), ip, 8);
    }
    assert_empty(l);
}

/* --------------------------------------------------------------------------
 * threads */

#define HAMMER_THREADS 4
#define HAMMER_ITERS 20000
#define HAMMER_ADDRS 6
/* Slots each thread holds at most: more than HAMMER_MAX_ROUTE, so that the
 * route fills even when the scheduler runs the threads one after another. */
#define HAMMER_HOLD 8
#define HAMMER_MAX_ROUTE 6
#define HAMMER_MAX_ADDR 2

static const char *const hammer_ips[HAMMER_ADDRS] = {
    "127.0.0.1", "127.0.0.2", "10.0.0.1", "::1", "2001:db8::1", "1.0.0.0",
};

struct hammer {
    struct limits *l;
    struct sockaddr_storage addrs[HAMMER_ADDRS];
    /* What the threads hold right now, per route and per (route, address):
     * raised after a successful take, lowered before the give, so it is never
     * more than what limits.c counts. */
    _Atomic int64_t cur_route[2];
    _Atomic int64_t cur_addr[2][HAMMER_ADDRS];
    _Atomic int64_t peak_route[2];
    _Atomic int64_t peak_addr;
    _Atomic uint64_t ok, full_route, full_addr, bad_rc;
    pthread_barrier_t start;
};

struct held {
    int route, addr;
};

static void raise_peak(_Atomic int64_t *peak, int64_t v)
{
    int64_t cur = atomic_load(peak);
    while (v > cur && !atomic_compare_exchange_weak(peak, &cur, v))
        ;
}

static void hammer_give(struct hammer *h, struct held *slot)
{
    atomic_fetch_sub(&h->cur_addr[slot->route][slot->addr], 1);
    atomic_fetch_sub(&h->cur_route[slot->route], 1);
    limits_give(h->l, RT(h->l, (size_t)slot->route), SA(h->addrs[slot->addr]));
}

static void *hammer_thread(void *arg)
{
    struct hammer *h = arg;
    /* A per-thread xorshift generator: no shared state, no locks. */
    static _Atomic uint32_t seeds = 0x9e3779b9u;
    uint32_t x = atomic_fetch_add(&seeds, 0x6d2b79f5u) | 1u;
    struct held held[HAMMER_HOLD];
    int n_held = 0;
    pthread_barrier_wait(&h->start); /* all threads at once */
    for (int i = 0; i < HAMMER_ITERS; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        /* Give back a random held slot a quarter of the time, or when the
         * thread holds all it may. */
        if (n_held == HAMMER_HOLD || (n_held > 0 && (x & 3) == 0)) {
            int k = (int)((x >> 2) % (uint32_t)n_held);
            hammer_give(h, &held[k]);
            held[k] = held[--n_held];
            continue;
        }
        int route = (int)((x >> 8) & 1);
        int addr = (int)((x >> 9) % HAMMER_ADDRS);
        /* Route 0 has both maxima; route 1 only the per-address one. */
        uint64_t max_route = route == 0 ? HAMMER_MAX_ROUTE : 0;
        int rc =
            take_sa(h->l, RT(h->l, (size_t)route), SA(h->addrs[addr]), max_route, HAMMER_MAX_ADDR);
        if (rc == 0) {
            raise_peak(&h->peak_route[route], atomic_fetch_add(&h->cur_route[route], 1) + 1);
            raise_peak(&h->peak_addr, atomic_fetch_add(&h->cur_addr[route][addr], 1) + 1);
            held[n_held++] = (struct held){ route, addr };
            atomic_fetch_add(&h->ok, 1);
        } else if (rc == -1) {
            atomic_fetch_add(&h->full_route, 1);
        } else if (rc == -2) {
            atomic_fetch_add(&h->full_addr, 1);
        } else {
            atomic_fetch_add(&h->bad_rc, 1);
        }
    }
    while (n_held > 0)
        hammer_give(h, &held[--n_held]);
    return NULL;
}

static void test_threads_never_exceed(void **state)
{
    struct limits *l = *state;
    static struct hammer h;
    memset(&h, 0, sizeof(h));
    h.l = l;
    for (int i = 0; i < HAMMER_ADDRS; i++)
        h.addrs[i] = client(hammer_ips[i], (uint16_t)(10000 + i));

    assert_int_equal(pthread_barrier_init(&h.start, NULL, HAMMER_THREADS), 0);
    pthread_t t[HAMMER_THREADS];
    for (int i = 0; i < HAMMER_THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, hammer_thread, &h), 0);
    for (int i = 0; i < HAMMER_THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    pthread_barrier_destroy(&h.start);

    printf("# hammer: %llu admitted, %llu route full, %llu address full; "
           "peaks route0 %lld route1 %lld address %lld\n",
           (unsigned long long)atomic_load(&h.ok), (unsigned long long)atomic_load(&h.full_route),
           (unsigned long long)atomic_load(&h.full_addr), (long long)atomic_load(&h.peak_route[0]),
           (long long)atomic_load(&h.peak_route[1]), (long long)atomic_load(&h.peak_addr));
    assert_int_equal(atomic_load(&h.bad_rc), 0);
    /* The maxima were never passed... */
    assert_true(atomic_load(&h.peak_route[0]) <= HAMMER_MAX_ROUTE);
    assert_true(atomic_load(&h.peak_addr) <= HAMMER_MAX_ADDR);
    /* ...and the run did push against them: up to 32 slots held at once
     * against a route max of 6 and 12 address slots per route. */
    assert_true(atomic_load(&h.ok) > 1000);
    assert_true(atomic_load(&h.full_route) > 0);
    assert_true(atomic_load(&h.full_addr) > 0);
    for (int r = 0; r < 2; r++) {
        assert_int_equal(atomic_load(&h.cur_route[r]), 0);
        for (int a = 0; a < HAMMER_ADDRS; a++)
            assert_int_equal(atomic_load(&h.cur_addr[r][a]), 0);
    }
    /* Everything given back: no count, no entry. */
    assert_empty(l);
}

/* A take refused for its address must not make another client's take see
 * the route full: the route count is what is open, never what is tried.
 * Route max 2; "10.0.0.1" holds one session and its max per address is 1.
 * One thread keeps trying "10.0.0.1" again (always refused); another
 * takes and gives back "10.0.0.2", for which one session is always room
 * (1 open < 2): it must never be refused. */
struct spurious {
    struct limits *l;
    struct sockaddr_storage full, other;
    atomic_int stop;
    _Atomic uint64_t tries, refused, bad;
    pthread_barrier_t start;
};

static void *spurious_prober(void *arg)
{
    struct spurious *sp = arg;
    pthread_barrier_wait(&sp->start);
    while (!atomic_load(&sp->stop)) {
        /* -2, or -1 while the other thread holds the second slot; never 0. */
        int rc = take_sa(sp->l, RT(sp->l, 0), SA(sp->full), 2, 1);
        if (rc == 0) {
            atomic_fetch_add(&sp->bad, 1);
            limits_give(sp->l, RT(sp->l, 0), SA(sp->full));
        }
    }
    return NULL;
}

static void *spurious_taker(void *arg)
{
    struct spurious *sp = arg;
    pthread_barrier_wait(&sp->start);
    for (int i = 0; i < 200000; i++) {
        atomic_fetch_add(&sp->tries, 1);
        int rc = take_sa(sp->l, RT(sp->l, 0), SA(sp->other), 2, 1);
        if (rc == 0)
            limits_give(sp->l, RT(sp->l, 0), SA(sp->other));
        else
            atomic_fetch_add(&sp->refused, 1);
    }
    atomic_store(&sp->stop, 1);
    return NULL;
}

static void test_threads_no_spurious_route_full(void **state)
{
    struct limits *l = *state;
    static struct spurious sp;
    memset(&sp, 0, sizeof(sp));
    sp.l = l;
    sp.full = client("10.0.0.1", 1);
    sp.other = client("10.0.0.2", 1);
    assert_int_equal(take_sa(l, RT(l, 0), SA(sp.full), 2, 1), 0);
    assert_int_equal(pthread_barrier_init(&sp.start, NULL, 2), 0);
    pthread_t prober, taker;
    assert_int_equal(pthread_create(&prober, NULL, spurious_prober, &sp), 0);
    assert_int_equal(pthread_create(&taker, NULL, spurious_taker, &sp), 0);
    assert_int_equal(pthread_join(taker, NULL), 0);
    assert_int_equal(pthread_join(prober, NULL), 0);
    pthread_barrier_destroy(&sp.start);
    printf("# %llu takes with room for them, %llu refused\n",
           (unsigned long long)atomic_load(&sp.tries),
           (unsigned long long)atomic_load(&sp.refused));
    assert_int_equal(atomic_load(&sp.bad), 0);
    assert_int_equal(atomic_load(&sp.refused), 0);
    limits_give(l, RT(l, 0), SA(sp.full));
    assert_empty(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_init_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_route_by_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_route_max, setup, teardown),
        cmocka_unit_test_setup_teardown(test_per_address_max, setup, teardown),
        cmocka_unit_test_setup_teardown(test_route_max_checked_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipv4_ipv6_distinct, setup, teardown),
        cmocka_unit_test_setup_teardown(test_routes_separate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zero_means_unlimited, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v4_mapped_is_the_ipv4_address, setup, teardown),
        cmocka_unit_test_setup_teardown(test_give_frees_entries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_never_exceed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_no_spurious_route_full, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
