/* Unit tests for handover.c: messages and descriptors over a real socket
 * pair, and what a receiver does with messages that are not ours. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lifeline/handover.h"

static int open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n;
}

struct pair {
    int old, new;
    struct handover_msg *m;
};

static int setup(void **state)
{
    struct pair *p = calloc(1, sizeof(*p));
    int fds[2];
    assert_int_equal(handover_pair(fds), 0);
    p->old = fds[0];
    p->new = fds[1];
    p->m = calloc(1, sizeof(*p->m)); /* 64 KiB: not on the stack */
    *state = p;
    return 0;
}

static int teardown(void **state)
{
    struct pair *p = *state;
    if (p->old >= 0)
        close(p->old);
    close(p->new);
    free(p->m);
    free(p);
    return 0;
}

/* A pipe's write end crosses over: what the receiver writes to its copy
 * comes out of the sender's read end. The copy is close-on-exec. */
static void test_payload_and_descriptor(void **state)
{
    struct pair *p = *state;
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    const char hello[] = "route legacy";
    assert_int_equal(handover_send(p->old, HANDOVER_LISTENER, hello, sizeof(hello), &pipefd[1], 1),
                     0);
    close(pipefd[1]);

    assert_int_equal(handover_recv(p->new, p->m), 0);
    assert_int_equal(p->m->kind, HANDOVER_LISTENER);
    assert_int_equal(p->m->len, sizeof(hello));
    assert_memory_equal(p->m->payload, hello, sizeof(hello));
    assert_int_equal(p->m->n_fds, 1);
    int fd = p->m->fds[0];
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    assert_int_equal(write(fd, "x", 1), 1);
    char c = 0;
    assert_int_equal(read(pipefd[0], &c, 1), 1);
    assert_int_equal(c, 'x');
    handover_msg_close_fds(p->m);
    assert_int_equal(fcntl(fd, F_GETFD), -1); /* closed */
    close(pipefd[0]);
}

/* A kind with no payload and no descriptor; the biggest allowed payload. */
static void test_empty_and_largest(void **state)
{
    struct pair *p = *state;
    assert_int_equal(handover_send(p->old, HANDOVER_SENT, NULL, 0, NULL, 0), 0);
    assert_int_equal(handover_recv(p->new, p->m), 0);
    assert_int_equal(p->m->kind, HANDOVER_SENT);
    assert_int_equal(p->m->len, 0);
    assert_int_equal(p->m->n_fds, 0);

    unsigned char *big = malloc(HANDOVER_PAYLOAD_MAX);
    for (size_t i = 0; i < HANDOVER_PAYLOAD_MAX; i++)
        big[i] = (unsigned char)(i * 7);
    assert_int_equal(handover_send(p->old, HANDOVER_SESSION, big, HANDOVER_PAYLOAD_MAX, NULL, 0),
                     0);
    assert_int_equal(handover_recv(p->new, p->m), 0);
    assert_int_equal(p->m->len, HANDOVER_PAYLOAD_MAX);
    assert_memory_equal(p->m->payload, big, HANDOVER_PAYLOAD_MAX);
    free(big);
}

static void test_bounds_on_send(void **state)
{
    struct pair *p = *state;
    int fds[HANDOVER_FDS_MAX + 1];
    for (size_t i = 0; i < HANDOVER_FDS_MAX + 1; i++)
        fds[i] = 0;
    assert_int_equal(handover_send(p->old, HANDOVER_SESSION, "", HANDOVER_PAYLOAD_MAX + 1, NULL, 0),
                     -EMSGSIZE);
    assert_int_equal(handover_send(p->old, HANDOVER_SESSION, "", 0, fds, HANDOVER_FDS_MAX + 1),
                     -EMSGSIZE);
}

/* The peer's end closed: a 0-length read, said as -ECONNRESET; a send to a
 * gone peer is -EPIPE, not SIGPIPE. */
static void test_peer_gone(void **state)
{
    struct pair *p = *state;
    close(p->old);
    p->old = -1;
    assert_int_equal(handover_recv(p->new, p->m), -ECONNRESET);
    assert_int_equal(handover_send(p->new, HANDOVER_ABORT, NULL, 0, NULL, 0), -EPIPE);
}

/* Raw bytes with descriptors attached, as a confused or hostile peer might. */
static void send_raw(int sock, const void *buf, size_t len, const int *fds, size_t n_fds)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    char ctl[CMSG_SPACE(sizeof(int) * 16)];
    memset(ctl, 0, sizeof(ctl));
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (n_fds > 0) {
        mh.msg_control = ctl;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * n_fds);
    }
    assert_true(sendmsg(sock, &mh, 0) >= 0);
}

/* Whatever is wrong with a message, every descriptor that came with it is
 * closed: the count of open descriptors is back where it was. */
static void test_not_ours_leaks_nothing(void **state)
{
    struct pair *p = *state;
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    int many[12];
    for (size_t i = 0; i < 12; i++)
        many[i] = pipefd[i % 2];
    int before = open_fds();

    /* Bad magic. */
    send_raw(p->old, "not a header, not ours", 22, many, 2);
    assert_int_equal(handover_recv(p->new, p->m), -EPROTO);
    assert_int_equal(open_fds(), before);
    /* Shorter than a header. */
    send_raw(p->old, "abc", 3, many, 1);
    assert_int_equal(handover_recv(p->new, p->m), -EPROTO);
    assert_int_equal(open_fds(), before);
    /* More descriptors than the control buffer takes (MSG_CTRUNC). */
    uint32_t hdr[3] = { 0x4c4c484fu, HANDOVER_VERSION | (HANDOVER_SESSION << 16), 0 };
    send_raw(p->old, hdr, sizeof(hdr), many, 12);
    assert_int_equal(handover_recv(p->new, p->m), -EPROTO);
    assert_int_equal(open_fds(), before);
    /* A length that is not the payload's; an unknown kind; another version. */
    uint32_t lie[3] = { 0x4c4c484fu, HANDOVER_VERSION | (HANDOVER_SESSION << 16), 5 };
    send_raw(p->old, lie, sizeof(lie), many, 1);
    assert_int_equal(handover_recv(p->new, p->m), -EPROTO);
    uint32_t kind[3] = { 0x4c4c484fu, HANDOVER_VERSION | (HANDOVER_KIND_END << 16), 0 };
    send_raw(p->old, kind, sizeof(kind), many, 1);
    assert_int_equal(handover_recv(p->new, p->m), -EPROTO);
    uint32_t ver[3] = { 0x4c4c484fu, (HANDOVER_VERSION + 1) | (HANDOVER_SESSION << 16), 0 };
    send_raw(p->old, ver, sizeof(ver), many, 1);
    assert_int_equal(handover_recv(p->new, p->m), -EPROTO);
    /* Longer than any message of ours (MSG_TRUNC). */
    size_t huge = sizeof(hdr) + HANDOVER_PAYLOAD_MAX + 100;
    unsigned char *buf = calloc(1, huge);
    memcpy(buf, hdr, sizeof(hdr));
    send_raw(p->old, buf, huge, many, 3);
    free(buf);
    assert_int_equal(handover_recv(p->new, p->m), -EPROTO);
    assert_int_equal(open_fds(), before);

    /* And the channel still works after all that. */
    assert_int_equal(handover_send(p->old, HANDOVER_ADOPTED, "ok", 2, NULL, 0), 0);
    assert_int_equal(handover_recv(p->new, p->m), 0);
    assert_int_equal(p->m->kind, HANDOVER_ADOPTED);
    close(pipefd[0]);
    close(pipefd[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_payload_and_descriptor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_and_largest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounds_on_send, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_ours_leaks_nothing, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
