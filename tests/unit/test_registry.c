/* Unit tests for registry.c: the claim/release contract of the in-process backend, and its messages. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "lifeline/registry.h"

/* What the registry delivered, in order. */
struct sent {
    struct {
        struct session_ref to;
        enum registry_msg msg;
    } m[16];
    int n;
};

static void record(void *ctx, struct session_ref to, enum registry_msg msg)
{
    struct sent *s = ctx;
    assert_true(s->n < 16);
    s->m[s->n].to = to;
    s->m[s->n].msg = msg;
    s->n++;
}

static struct session_ref ref(int worker, uint64_t id)
{
    return (struct session_ref){ .worker = worker, .id = id };
}

static void assert_sent(const struct sent *s, int i, struct session_ref to, enum registry_msg msg)
{
    assert_true(i < s->n);
    assert_int_equal(s->m[i].to.worker, to.worker);
    assert_int_equal(s->m[i].to.id, to.id);
    assert_int_equal(s->m[i].msg, msg);
}

static struct identity client(const char *ip, uint16_t port)
{
    struct sockaddr_in in;
    memset(&in, 0, sizeof(in));
    in.sin_family = AF_INET;
    in.sin_port = htons(port);
    assert_int_equal(inet_pton(AF_INET, ip, &in.sin_addr), 1);
    struct identity id;
    registry_identity(&id, "legacy", (const struct sockaddr *)&in, 1);
    return id;
}

struct fixture {
    struct registry *r;
    struct sent sent;
};

static int setup(void **state)
{
    static struct fixture f;
    memset(&f, 0, sizeof(f));
    if (registry_local_new(&f.r, record, &f.sent) != 0)
        return -1;
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    registry_destroy(f->r);
    return 0;
}

/* A free identity is granted at once, and nobody is told anything. */
static void test_free_identity_goes(void **state)
{
    struct fixture *f = *state;
    struct identity id = client("10.0.0.1", 4000);
    assert_int_equal(registry_claim(f->r, &id, ref(0, 1), 1), REGISTRY_GO);
    assert_int_equal(f->sent.n, 0);
    registry_release(f->r, &id, ref(0, 1));
    assert_int_equal(f->sent.n, 0);
    /* Released: free again. */
    assert_int_equal(registry_claim(f->r, &id, ref(1, 2), 1), REGISTRY_GO);
    registry_release(f->r, &id, ref(1, 2));
}

/* replace: the claimant waits, the owner is told to go; its release sends
 * GO to the claimant, and only then. */
static void test_takeover(void **state)
{
    struct fixture *f = *state;
    struct identity id = client("10.0.0.1", 4000);
    assert_int_equal(registry_claim(f->r, &id, ref(0, 1), 1), REGISTRY_GO);
    assert_int_equal(registry_claim(f->r, &id, ref(1, 2), 1), REGISTRY_WAIT);
    assert_int_equal(f->sent.n, 1);
    assert_sent(&f->sent, 0, ref(0, 1), REGISTRY_MSG_EVICT);
    registry_release(f->r, &id, ref(0, 1));
    assert_int_equal(f->sent.n, 2);
    assert_sent(&f->sent, 1, ref(1, 2), REGISTRY_MSG_GO);
    registry_release(f->r, &id, ref(1, 2));
    assert_int_equal(f->sent.n, 2);
}

/* A third connection while the second still waits: the owner and the
 * waiting one are both told to go; the third gets GO when the owner is done,
 * and the displaced one's release changes nothing. */
static void test_displaced_successor(void **state)
{
    struct fixture *f = *state;
    struct identity id = client("10.0.0.1", 4000);
    assert_int_equal(registry_claim(f->r, &id, ref(0, 1), 1), REGISTRY_GO);
    assert_int_equal(registry_claim(f->r, &id, ref(1, 2), 1), REGISTRY_WAIT);
    assert_int_equal(registry_claim(f->r, &id, ref(0, 3), 1), REGISTRY_WAIT);
    assert_int_equal(f->sent.n, 3);
    assert_sent(&f->sent, 1, ref(0, 1), REGISTRY_MSG_EVICT);
    assert_sent(&f->sent, 2, ref(1, 2), REGISTRY_MSG_EVICT);
    registry_release(f->r, &id, ref(1, 2)); /* withdraws: nobody is told */
    assert_int_equal(f->sent.n, 3);
    registry_release(f->r, &id, ref(0, 1));
    assert_int_equal(f->sent.n, 4);
    assert_sent(&f->sent, 3, ref(0, 3), REGISTRY_MSG_GO);
    registry_release(f->r, &id, ref(0, 3));
}

/* reject: a held identity is refused, and the owner is left alone. */
static void test_reject(void **state)
{
    struct fixture *f = *state;
    struct identity id = client("10.0.0.1", 4000);
    assert_int_equal(registry_claim(f->r, &id, ref(0, 1), 0), REGISTRY_GO);
    assert_int_equal(registry_claim(f->r, &id, ref(1, 2), 0), REGISTRY_REFUSED);
    assert_int_equal(f->sent.n, 0);
    registry_release(f->r, &id, ref(1, 2)); /* never held: nothing happens */
    assert_int_equal(registry_claim(f->r, &id, ref(1, 3), 0), REGISTRY_REFUSED);
    registry_release(f->r, &id, ref(0, 1));
    assert_int_equal(registry_claim(f->r, &id, ref(1, 4), 0), REGISTRY_GO);
    registry_release(f->r, &id, ref(1, 4));
    assert_int_equal(f->sent.n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_free_identity_goes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_takeover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_displaced_successor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reject, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
