/* `lifeline probe URL`: a tiny HTTP/1.1 health check client for containers. */
#ifndef LIFELINE_PROBE_H
#define LIFELINE_PROBE_H

#include <stddef.h>
#include <sys/socket.h>

#define PROBE_DEFAULT_TIMEOUT_MS 2000
#define PROBE_PATH_MAX 2048
#define PROBE_HOST_MAX 64 /* "[" + the longest IPv6 text + "]:65535" fits */

/* Where a probe goes: the parsed URL, the addresses to try in order and
 * what the request line and Host header carry. */
struct probe_target {
    char authority[PROBE_HOST_MAX]; /* as written, for the Host header: "127.0.0.1:9900" */
    char path[PROBE_PATH_MAX];      /* "/healthz", the query kept, the fragment dropped */
    struct sockaddr_storage addrs[2];
    socklen_t addrlens[2];
    size_t n_addrs; /* "localhost" tries 127.0.0.1, then ::1 */
};

/* http://HOST[:PORT][/PATH][?QUERY][#FRAGMENT] -> *t (PORT 80 and PATH "/"
 * when absent). Returns 0, or -1 with a short reason in *why. */
int probe_parse_url(const char *url, struct probe_target *t, const char **why);

/* Runs `lifeline probe [--timeout MS] URL`; argv[0] is "probe". GETs URL
 * (http://HOST[:PORT][/PATH], HOST an IPv4 literal, a bracketed IPv6 literal
 * or "localhost") and returns the process exit code: 0 on a 2xx status,
 * printing nothing; 1 on any other status ("probe: HTTP 503" on stderr) or
 * when the server cannot be reached or answers nothing valid in time
 * ("probe: URL: reason"); 2 on a usage error. Blocking: meant for its own
 * short-lived process (a container HEALTHCHECK, a Kubernetes exec probe). */
int probe_main(int argc, char **argv);

#endif
