/* Unit tests for notify.c: datagrams on a socket the test owns, and $WATCHDOG_* parsing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "lifeline/notify.h"

/* One receiving datagram socket, bound to a temp path or an abstract name. */
struct receiver {
    int fd;
    char dir[64];   /* temp directory holding the path socket, or "" */
    char name[128]; /* what NOTIFY_SOCKET is set to */
};

static void receiver_open_path(struct receiver *r)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };

    strcpy(r->dir, "/tmp/lifeline-notify-XXXXXX");
    assert_non_null(mkdtemp(r->dir));
    snprintf(r->name, sizeof(r->name), "%s/notify", r->dir);
    assert_true(strlen(r->name) < sizeof(sun.sun_path));
    strcpy(sun.sun_path, r->name);
    r->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(r->fd >= 0);
    assert_int_equal(bind(r->fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
}

static void receiver_open_abstract(struct receiver *r)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    r->dir[0] = '\0';
    snprintf(r->name, sizeof(r->name), "@lifeline-test-notify-%ld-%ld", (long)getpid(),
             (long)ts.tv_nsec);
    size_t len = strlen(r->name); /* the '@' becomes the leading NUL */
    memcpy(sun.sun_path + 1, r->name + 1, len - 1);
    r->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(r->fd >= 0);
    assert_int_equal(bind(r->fd, (struct sockaddr *)&sun,
                          (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)),
                     0);
}

static void receiver_close(struct receiver *r)
{
    close(r->fd);
    if (r->dir[0] != '\0') {
        unlink(r->name);
        rmdir(r->dir);
    }
    unsetenv("NOTIFY_SOCKET");
}

/* The next datagram, which must already be queued (a local AF_UNIX send is
 * delivered before sendto() returns), NUL-terminated. Returns its length. */
static ssize_t receiver_take(struct receiver *r, char *buf, size_t size)
{
    ssize_t n = recv(r->fd, buf, size - 1, MSG_DONTWAIT);
    if (n >= 0)
        buf[n] = '\0';
    return n;
}

static void assert_nothing_queued(struct receiver *r)
{
    char buf[64];
    errno = 0;
    assert_int_equal(recv(r->fd, buf, sizeof(buf), MSG_DONTWAIT), -1);
    assert_int_equal(errno, EAGAIN);
}

static void send_and_expect(struct receiver *r, const char *state)
{
    char buf[1024];

    assert_int_equal(setenv("NOTIFY_SOCKET", r->name, 1), 0);
    assert_int_equal(notify_send(state), 1);
    ssize_t n = receiver_take(r, buf, sizeof(buf));
    assert_int_equal(n, (ssize_t)strlen(state));
    assert_memory_equal(buf, state, strlen(state));
    assert_nothing_queued(r); /* exactly one datagram per call */
}

static void test_send_path(void **state)
{
    (void)state;
    struct receiver r;
    receiver_open_path(&r);
    send_and_expect(&r, "READY=1");
    send_and_expect(&r, "READY=1\nSTATUS=listening on 1 route");
    send_and_expect(&r, "RELOADING=1\nMONOTONIC_USEC=123456789");
    send_and_expect(&r, "STOPPING=1");
    send_and_expect(&r, "WATCHDOG=1");
    receiver_close(&r);
}

static void test_send_abstract(void **state)
{
    (void)state;
    struct receiver r;
    receiver_open_abstract(&r);
    send_and_expect(&r, "READY=1\nSTATUS=ready");
    send_and_expect(&r, "WATCHDOG=1");
    receiver_close(&r);
}

static void test_unset_is_noop(void **state)
{
    (void)state;
    struct receiver r;
    receiver_open_path(&r);
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(notify_send("READY=1"), 0);
    assert_int_equal(setenv("NOTIFY_SOCKET", "", 1), 0);
    assert_int_equal(notify_send("READY=1"), 0);
    assert_nothing_queued(&r);
    receiver_close(&r);
}

static void test_errors(void **state)
{
    (void)state;
    char longname[200];

    /* No such directory. */
    assert_int_equal(setenv("NOTIFY_SOCKET", "/nonexistent-lifeline-dir/notify", 1), 0);
    assert_int_equal(notify_send("READY=1"), -ENOENT);

    /* A path where nobody listens any more. */
    struct receiver r;
    receiver_open_path(&r);
    close(r.fd);
    r.fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_int_equal(setenv("NOTIFY_SOCKET", r.name, 1), 0);
    assert_int_equal(notify_send("READY=1"), -ECONNREFUSED);
    receiver_close(&r);

    /* An abstract name nobody bound. */
    assert_int_equal(setenv("NOTIFY_SOCKET", "@lifeline-test-nobody-binds-this", 1), 0);
    assert_int_equal(notify_send("READY=1"), -ECONNREFUSED);

    /* Neither a path nor an abstract name. */
    assert_int_equal(setenv("NOTIFY_SOCKET", "relative/notify", 1), 0);
    assert_int_equal(notify_send("READY=1"), -EAFNOSUPPORT);
    assert_int_equal(setenv("NOTIFY_SOCKET", "vsock:2:1234", 1), 0);
    assert_int_equal(notify_send("READY=1"), -EAFNOSUPPORT);

    /* Longer than a sockaddr_un can hold. */
    memset(longname, 'a', sizeof(longname) - 1);
    longname[0] = '/';
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(setenv("NOTIFY_SOCKET", longname, 1), 0);
    assert_int_equal(notify_send("READY=1"), -ENAMETOOLONG);
    longname[0] = '@';
    assert_int_equal(setenv("NOTIFY_SOCKET", longname, 1), 0);
    assert_int_equal(notify_send("READY=1"), -ENAMETOOLONG);

    /* No state. */
    assert_int_equal(setenv("NOTIFY_SOCKET", "/nonexistent-lifeline-dir/notify", 1), 0);
    assert_int_equal(notify_send(NULL), -EINVAL);
    assert_int_equal(notify_send(""), -EINVAL);
    unsetenv("NOTIFY_SOCKET");
}

/* A receiver that never reads: once its queue is full, notify_send() must
 * fail with -EAGAIN at once rather than wait. */
static void test_never_blocks(void **state)
{
    (void)state;
    struct receiver r;
    int rc = 1;

    receiver_open_path(&r);
    assert_int_equal(setenv("NOTIFY_SOCKET", r.name, 1), 0);
    for (int i = 0; i < 100000 && rc == 1; i++)
        rc = notify_send("WATCHDOG=1");
    assert_int_equal(rc, -EAGAIN);
    receiver_close(&r);
}

/* No descriptor is left open behind a call. */
static void test_no_fd_leak(void **state)
{
    (void)state;
    struct receiver r;
    char buf[64];

    receiver_open_path(&r);
    assert_int_equal(setenv("NOTIFY_SOCKET", r.name, 1), 0);
    int before = open("/dev/null", O_RDONLY | O_CLOEXEC);
    assert_true(before >= 0);
    close(before);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(notify_send("WATCHDOG=1"), 1);
        assert_int_equal(receiver_take(&r, buf, sizeof(buf)), 10);
    }
    int after = open("/dev/null", O_RDONLY | O_CLOEXEC);
    assert_int_equal(after, before); /* the lowest free descriptor did not move */
    close(after);
    receiver_close(&r);
}

static void set_watchdog(const char *usec, const char *pid)
{
    if (usec)
        assert_int_equal(setenv("WATCHDOG_USEC", usec, 1), 0);
    else
        unsetenv("WATCHDOG_USEC");
    if (pid)
        assert_int_equal(setenv("WATCHDOG_PID", pid, 1), 0);
    else
        unsetenv("WATCHDOG_PID");
}

static void test_watchdog_usec(void **state)
{
    (void)state;
    char mypid[32], otherpid[32];

    snprintf(mypid, sizeof(mypid), "%ld", (long)getpid());
    snprintf(otherpid, sizeof(otherpid), "%ld", (long)getpid() + 1);

    set_watchdog(NULL, NULL);
    assert_int_equal(notify_watchdog_usec(), 0);

    set_watchdog("10000000", NULL);
    assert_int_equal(notify_watchdog_usec(), 10000000);

    set_watchdog("10000000", mypid);
    assert_int_equal(notify_watchdog_usec(), 10000000);

    set_watchdog("18446744073709551615", mypid); /* UINT64_MAX */
    assert_true(notify_watchdog_usec() == UINT64_MAX);

    /* Meant for another process. */
    set_watchdog("10000000", otherpid);
    assert_int_equal(notify_watchdog_usec(), 0);
    set_watchdog("10000000", "");
    assert_int_equal(notify_watchdog_usec(), 0);
    set_watchdog("10000000", "abc");
    assert_int_equal(notify_watchdog_usec(), 0);
    set_watchdog("10000000", "0");
    assert_int_equal(notify_watchdog_usec(), 0);

    /* Not a positive decimal integer. */
    static const char *const bad[] = {
        "",
        "0",
        "-1",
        "+5",
        " 5",
        "5 ",
        "5s",
        "0x10",
        "1e6",
        "10.5",
        "18446744073709551616",
        "99999999999999999999999",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        set_watchdog(bad[i], NULL);
        if (notify_watchdog_usec() != 0)
            fail_msg("WATCHDOG_USEC=\"%s\" accepted", bad[i]);
    }
    set_watchdog(NULL, NULL);
}

static void test_monotonic_usec(void **state)
{
    (void)state;
    struct timespec ts;
    uint64_t a = notify_monotonic_usec();
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    uint64_t b = notify_monotonic_usec();
    assert_true(a <= now && now <= b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_send_path),     cmocka_unit_test(test_send_abstract),
        cmocka_unit_test(test_unset_is_noop), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_never_blocks),  cmocka_unit_test(test_no_fd_leak),
        cmocka_unit_test(test_watchdog_usec), cmocka_unit_test(test_monotonic_usec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
