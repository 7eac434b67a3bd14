/* systemd readiness and watchdog notifications: sd_notify written straight to $NOTIFY_SOCKET. */
#include "lifeline/notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "lifeline/num.h"

/* The module keeps no state: every call reads the environment (which nothing
 * in lifeline changes after start, so getenv() is safe from any thread) and
 * uses a socket of its own, so calls from several threads never interfere. */

/* Fills `sun` from $NOTIFY_SOCKET's value. Returns the address length, or a
 * negative errno. */
static int notify_address(const char *name, struct sockaddr_un *sun)
{
    size_t len = strlen(name);

    memset(sun, 0, sizeof(*sun));
    sun->sun_family = AF_UNIX;
    if (name[0] == '@') {
        /* Abstract namespace: a leading NUL, then the name, not terminated. */
        if (len > sizeof(sun->sun_path))
            return -ENAMETOOLONG;
        memcpy(sun->sun_path + 1, name + 1, len - 1);
        return (int)(offsetof(struct sockaddr_un, sun_path) + len);
    }
    if (name[0] != '/')
        return -EAFNOSUPPORT; /* e.g. systemd's "vsock:" form, which lifeline does not speak */
    if (len >= sizeof(sun->sun_path))
        return -ENAMETOOLONG;
    memcpy(sun->sun_path, name, len + 1);
    return (int)(offsetof(struct sockaddr_un, sun_path) + len + 1);
}

int notify_send(const char *state)
{
    const char *name = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sun;
    int addrlen, fd, err = 0;
    size_t len;
    ssize_t n;

    if (name == NULL || name[0] == '\0')
        return 0;
    if (state == NULL || state[0] == '\0')
        return -EINVAL;
    addrlen = notify_address(name, &sun);
    if (addrlen < 0)
        return addrlen;

    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    len = strlen(state);
    /* MSG_DONTWAIT: a manager that is slow to read must never stall a
     * caller (the watchdog ping comes from the supervisor's loop). */
    do
        n = sendto(fd, state, len, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&sun,
                   (socklen_t)addrlen);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        err = -errno;
    else if ((size_t)n != len)
        err = -EMSGSIZE; /* a datagram goes whole or not at all; be explicit anyway */
    close(fd);
    return err < 0 ? err : 1;
}

/* A positive decimal integer with nothing around it; 0 when `s` is not one. */
static uint64_t parse_positive(const char *s)
{
    uint64_t v;
    return s != NULL && num_parse(s, strlen(s), UINT64_MAX, &v) == 0 ? v : 0;
}

uint64_t notify_watchdog_usec(void)
{
    const char *pid = getenv("WATCHDOG_PID");
    uint64_t usec = parse_positive(getenv("WATCHDOG_USEC"));

    if (usec == 0)
        return 0;
    /* Set by the manager when the watchdog is meant for one process only: a
     * child that inherited the environment must not ping on our behalf. */
    if (pid != NULL && parse_positive(pid) != (uint64_t)getpid())
        return 0;
    return usec;
}

uint64_t notify_monotonic_usec(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
