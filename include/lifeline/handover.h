/* The live-upgrade channel: typed messages with descriptors attached,
 * between a running lifeline and the new process that takes its sockets
 * over, on an AF_UNIX SOCK_SEQPACKET socket pair (one message per record:
 * no framing to get wrong, and a peer that dies is a 0-length read).
 *
 * Each message is a fixed header (magic, protocol version, kind, payload
 * length) and a payload of at most HANDOVER_PAYLOAD_MAX bytes, with at most
 * HANDOVER_FDS_MAX descriptors as SCM_RIGHTS. What the payload of each kind
 * holds is the upgrade's business; this module only moves messages and
 * makes sure no received descriptor leaks, whatever the peer sends. */
#ifndef LIFELINE_HANDOVER_H
#define LIFELINE_HANDOVER_H

#include <stddef.h>
#include <stdint.h>

#define HANDOVER_VERSION 3
#define HANDOVER_PAYLOAD_MAX 65536
#define HANDOVER_FDS_MAX 8

/* Message kinds, in the order an upgrade sends them. */
enum handover_kind {
    HANDOVER_HELLO = 1, /* new -> old: its pid, and that it read its config */
    HANDOVER_LISTENER,  /* old -> new: one listening socket and its route */
    HANDOVER_SESSION,   /* old -> new: one established session, its two sockets */
    HANDOVER_SENT,      /* old -> new: nothing more to come */
    HANDOVER_ADOPTED,   /* new -> old: everything adopted, nothing started */
    HANDOVER_COMMIT,    /* old -> new: serve; the old one relays no more */
    HANDOVER_RELEASED,  /* old -> new: its copies of the sockets are closed */
    HANDOVER_ABORT,     /* either way: give up, the old one keeps serving */
    HANDOVER_KIND_END,
};

struct handover_msg {
    enum handover_kind kind;
    size_t len; /* bytes in payload */
    unsigned char payload[HANDOVER_PAYLOAD_MAX];
    size_t n_fds;
    int fds[HANDOVER_FDS_MAX]; /* owned by the receiver: handover_msg_close_fds() */
};

/* A connected SOCK_SEQPACKET pair, close-on-exec both. 0 or -errno. */
int handover_pair(int fds[2]);

/* Sends one message of `kind` with `len` bytes of payload and `n_fds`
 * descriptors (duplicated into the peer; the caller keeps its own).
 * Blocks until it is queued. 0, -EMSGSIZE when len or n_fds is over the
 * bounds, or -errno (-EPIPE: the peer is gone). */
int handover_send(int sock, enum handover_kind kind, const void *payload, size_t len,
                  const int *fds, size_t n_fds);

/* Receives one message into *m. Blocks. 0; -ECONNRESET when the peer closed
 * (a 0-length read); -EPROTO for a message that is not one of ours (bad
 * magic, version, kind or length, or cut short), with every descriptor that
 * came with it closed; or -errno. */
int handover_recv(int sock, struct handover_msg *m);

/* Closes the descriptors of m that the receiver did not take (set an entry
 * to -1 to take it). */
void handover_msg_close_fds(struct handover_msg *m);

#endif
