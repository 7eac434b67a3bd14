/* Client liveness: TCP keepalive and user-timeout options, and telling which one fired. */
#include "lifeline/liveness.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "lifeline/config.h"

uint32_t liveness_ms_to_s(uint32_t ms) { return ms / 1000 + (ms % 1000 != 0); }

static int set_int(int fd, int level, int name, int value)
{
    return setsockopt(fd, level, name, &value, sizeof(value)) < 0 ? -errno : 0;
}

int liveness_apply(int fd, const struct heartbeat_config *hb)
{
    /* Every option, on or off: a listener keeps its socket across reloads,
     * and what it holds is what the next connections inherit. */
    int rc = 0;
    if (hb->keepalive_idle_ms > 0 &&
        ((rc = set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE,
                       (int)liveness_ms_to_s(hb->keepalive_idle_ms))) < 0 ||
         (rc = set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL,
                       (int)liveness_ms_to_s(hb->keepalive_interval_ms))) < 0 ||
         (rc = set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, (int)hb->keepalive_count)) < 0))
        return rc;
    if ((rc = set_int(fd, SOL_SOCKET, SO_KEEPALIVE, hb->keepalive_idle_ms > 0)) < 0)
        return rc;
    return set_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, (int)hb->user_timeout_ms);
}

enum reason liveness_timeout_reason(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return REASON_CLIENT_KEEPALIVE;
    /* Keepalive probes count in tcpi_probes; retransmissions of data the
     * client never acknowledged count in tcpi_retransmits/tcpi_backoff. */
    if (ti.tcpi_probes > 0 && ti.tcpi_retransmits == 0)
        return REASON_CLIENT_KEEPALIVE;
    if (ti.tcpi_retransmits > 0 || ti.tcpi_backoff > 0)
        return REASON_CLIENT_USER_TIMEOUT;
    return REASON_CLIENT_KEEPALIVE;
}
