/* `lifeline probe URL`: a tiny HTTP/1.1 health check client for containers. */
#ifndef LIFELINE_PROBE_H
#define LIFELINE_PROBE_H

#define PROBE_DEFAULT_TIMEOUT_MS 2000

/* Runs `lifeline probe [--timeout MS] URL`; argv[0] is "probe". GETs URL
 * (http://HOST[:PORT][/PATH], HOST an IPv4 literal, a bracketed IPv6 literal
 * or "localhost") and returns the process exit code: 0 on a 2xx status,
 * printing nothing; 1 on any other status ("probe: HTTP 503" on stderr) or
 * when the server cannot be reached or answers nothing valid in time
 * ("probe: URL: reason"); 2 on a usage error. Blocking: meant for its own
 * short-lived process (a container HEALTHCHECK, a Kubernetes exec probe). */
int probe_main(int argc, char **argv);

#endif
