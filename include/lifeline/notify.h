/* systemd's sd_notify protocol, spoken directly to $NOTIFY_SOCKET (no libsystemd). */
#ifndef LIFELINE_NOTIFY_H
#define LIFELINE_NOTIFY_H

#include <stdint.h>

/* Sends `state` ("READY=1", "STOPPING=1", "WATCHDOG=1", or several
 * "KEY=value" lines joined by '\n') as one datagram to the AF_UNIX socket that
 * $NOTIFY_SOCKET names: a file system path ("/run/systemd/notify") or an
 * abstract name ("@name"). Never blocks (MSG_DONTWAIT) and leaks no descriptor
 * into children (SOCK_CLOEXEC). Safe to call from any thread.
 *
 * Returns 0 when $NOTIFY_SOCKET is unset or empty (not run by systemd: nothing
 * to do), 1 when the datagram was sent, or a negative errno: -EINVAL for a
 * NULL or empty state, -EAFNOSUPPORT for a $NOTIFY_SOCKET that is neither a
 * path nor an abstract name, -ENAMETOOLONG when it does not fit in a
 * sockaddr_un, -EAGAIN when the receiver's queue is full, and whatever
 * socket() or sendto() report (-ENOENT, -ECONNREFUSED, ...). */
int notify_send(const char *state);

/* The watchdog period systemd asks for, in microseconds: $WATCHDOG_USEC when
 * it is a positive decimal integer and, if $WATCHDOG_PID is set, that is this
 * process's pid. 0 otherwise (no watchdog, or it is meant for another
 * process). Send "WATCHDOG=1" at least every half of it. Thread-safe. */
uint64_t notify_watchdog_usec(void);

/* CLOCK_MONOTONIC in microseconds: the value of the MONOTONIC_USEC= field
 * that goes with RELOADING=1. */
uint64_t notify_monotonic_usec(void);

#endif
