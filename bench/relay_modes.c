/* A minimal relay for comparing copy and splice(2) on this machine's loopback. */

/*
 *   relay_modes copy|splice SIZE LISTEN_PORT TARGET_PORT
 *
 * Accepts on 127.0.0.1:LISTEN_PORT, connects to 127.0.0.1:TARGET_PORT, and
 * relays each direction in its own thread with blocking calls:
 *   copy    read() up to SIZE bytes, then write() them all;
 *   splice  splice() from the socket into a pipe of SIZE bytes (F_SETPIPE_SZ),
 *           then from the pipe into the other socket.
 * It is the upper bound of each method without any event loop: what lifeline
 * would gain from a splice engine. bench/PROFILE.md has the commands and what
 * they measured. Runs until killed; not part of `make bench`.
 */

#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum mode { MODE_COPY, MODE_SPLICE };

struct direction {
    int src, dst;
    enum mode mode;
    size_t size;
};

static int copy_all(const struct direction *d)
{
    char *buf = malloc(d->size);
    if (buf == NULL)
        return -ENOMEM;
    ssize_t n;
    while ((n = read(d->src, buf, d->size)) > 0)
        for (ssize_t off = 0; off < n;) {
            ssize_t m = write(d->dst, buf + off, (size_t)(n - off));
            if (m < 0) {
                free(buf);
                return -errno;
            }
            off += m;
        }
    free(buf);
    return n < 0 ? -errno : 0;
}

static int splice_all(const struct direction *d)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    if (fcntl(p[1], F_SETPIPE_SZ, (int)d->size) < 0)
        fprintf(stderr, "relay_modes: F_SETPIPE_SZ %zu: %s\n", d->size, strerror(errno));
    ssize_t n;
    int rc = 0;
    while ((n = splice(d->src, NULL, p[1], NULL, d->size, SPLICE_F_MOVE)) > 0)
        while (n > 0) {
            ssize_t m = splice(p[0], NULL, d->dst, NULL, (size_t)n, SPLICE_F_MOVE);
            if (m < 0) {
                rc = -errno;
                goto out;
            }
            n -= m;
        }
    rc = n < 0 ? -errno : 0;
out:
    close(p[0]);
    close(p[1]);
    return rc;
}

static void *relay(void *arg)
{
    struct direction *d = arg;
    int rc = d->mode == MODE_COPY ? copy_all(d) : splice_all(d);
    if (rc < 0 && rc != -ECONNRESET && rc != -EPIPE)
        fprintf(stderr, "relay_modes: %s\n", strerror(-rc));
    shutdown(d->dst, SHUT_WR);
    free(d);
    return NULL;
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sa;
}

static int start(int src, int dst, enum mode mode, size_t size)
{
    struct direction *d = malloc(sizeof(*d));
    if (d == NULL)
        return -ENOMEM;
    *d = (struct direction){ src, dst, mode, size };
    pthread_t t;
    int rc = pthread_create(&t, NULL, relay, d);
    if (rc != 0) {
        free(d);
        return -rc;
    }
    pthread_detach(t);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[1], "copy") != 0 && strcmp(argv[1], "splice") != 0)) {
        fprintf(stderr, "usage: relay_modes copy|splice SIZE LISTEN_PORT TARGET_PORT\n");
        return 2;
    }
    enum mode mode = strcmp(argv[1], "copy") == 0 ? MODE_COPY : MODE_SPLICE;
    size_t size = strtoul(argv[2], NULL, 10);
    int listen_port = atoi(argv[3]), target_port = atoi(argv[4]);
    if (size == 0) {
        fprintf(stderr, "relay_modes: SIZE must be a positive number of bytes\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    int one = 1;
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = loopback(listen_port);
    if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(l, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(l, 64) < 0) {
        perror("relay_modes: listen");
        return 1;
    }
    printf("listening port=%d\n", listen_port);
    fflush(stdout);
    for (;;) {
        int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        int u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in ta = loopback(target_port);
        if (u < 0 || connect(u, (struct sockaddr *)&ta, sizeof(ta)) < 0) {
            perror("relay_modes: connect");
            close(c);
            if (u >= 0)
                close(u);
            continue;
        }
        /* A thread that cannot start leaves the other one with its fds: stop. */
        if (start(c, u, mode, size) < 0 || start(u, c, mode, size) < 0) {
            fprintf(stderr, "relay_modes: cannot start a relay thread\n");
            return 1;
        }
    }
}
