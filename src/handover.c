/* The live-upgrade channel: see handover.h. */
#include "lifeline/handover.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define HANDOVER_MAGIC 0x4c4c484fu /* "LLHO" */

struct header {
    uint32_t magic;
    uint16_t version;
    uint16_t kind;
    uint32_t len;
};

/* Room for HANDOVER_FDS_MAX descriptors, aligned as a cmsghdr must be. */
union control {
    char buf[CMSG_SPACE(sizeof(int) * HANDOVER_FDS_MAX)];
    struct cmsghdr align;
};

int handover_pair(int fds[2])
{
    return socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) < 0 ? -errno : 0;
}

int handover_send(int sock, enum handover_kind kind, const void *payload, size_t len,
                  const int *fds, size_t n_fds)
{
    if (len > HANDOVER_PAYLOAD_MAX || n_fds > HANDOVER_FDS_MAX)
        return -EMSGSIZE;
    struct header h = {
        .magic = HANDOVER_MAGIC, .version = HANDOVER_VERSION, .kind = kind, .len = (uint32_t)len
    };
    struct iovec iov[2] = {
        { .iov_base = &h, .iov_len = sizeof(h) },
        { .iov_base = (void *)payload, .iov_len = len },
    };
    union control ctl;
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = len > 0 ? 2 : 1 };
    if (n_fds > 0) {
        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * n_fds);
    }
    ssize_t n;
    do
        n = sendmsg(sock, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : 0;
}

/* Every descriptor that came with the message goes into m, so that one
 * place (handover_msg_close_fds) closes them whatever else is wrong. */
static void take_fds(struct msghdr *mh, struct handover_msg *m)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c != NULL; c = CMSG_NXTHDR(mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (m->n_fds < HANDOVER_FDS_MAX)
                m->fds[m->n_fds++] = fd;
            else
                close(fd); /* cannot happen with our control buffer; never leak */
        }
    }
}

int handover_recv(int sock, struct handover_msg *m)
{
    struct header h;
    struct iovec iov[2] = {
        { .iov_base = &h, .iov_len = sizeof(h) },
        { .iov_base = m->payload, .iov_len = sizeof(m->payload) },
    };
    union control ctl;
    struct msghdr mh = {
        .msg_iov = iov, .msg_iovlen = 2, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf)
    };
    m->n_fds = 0;
    m->len = 0;
    ssize_t n;
    do
        n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    take_fds(&mh, m);
    if (n == 0 && m->n_fds == 0)
        return -ECONNRESET;
    if ((size_t)n < sizeof(h) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0 ||
        h.magic != HANDOVER_MAGIC || h.version != HANDOVER_VERSION || h.kind == 0 ||
        h.kind >= HANDOVER_KIND_END || h.len != (size_t)n - sizeof(h)) {
        handover_msg_close_fds(m);
        return -EPROTO;
    }
    m->kind = (enum handover_kind)h.kind;
    m->len = h.len;
    return 0;
}

void handover_msg_close_fds(struct handover_msg *m)
{
    for (size_t i = 0; i < m->n_fds; i++)
        if (m->fds[i] >= 0)
            close(m->fds[i]);
    m->n_fds = 0;
}
