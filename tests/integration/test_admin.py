"""Admin endpoint: HTTP/1.1 health, readiness, Prometheus metrics, the session
list and closing one session; its bounds (slow clients, big requests,
malformed requests); the loopback-only rule of `admin.listen`.

Every request is written on a raw socket, so the tests control each byte and
see each byte of the answer (and whether the server closed the connection)."""

import ctypes
import json
import os
import random
import re
import signal
import socket
import struct
import threading
import time
import unittest

from harness import (LOOPBACK, SANITIZER, KiB, AcceptServer, EchoServer, LifelineTestCase,
                     SinkServer,
                     addr_str, config, connect, free_port, listen_port, raise_nofile, recv_exact,
                     route, run_cli, scaled, wait_closed, wait_until, write_config)

REASONS = ("client_eof", "client_reset", "client_silence", "client_keepalive",
           "client_user_timeout", "replaced", "rejected", "upstream_eof", "upstream_reset",
           "upstream_connect_failed", "admin_kill", "shutdown", "denied")

# family -> Prometheus type
FAMILIES = {
    "lifeline_sessions_active": "gauge",
    "lifeline_sessions_total": "counter",
    "lifeline_session_closes_total": "counter",
    "lifeline_bytes_total": "counter",
    "lifeline_upstream_connect_attempts_total": "counter",
    "lifeline_upstream_connect_failures_total": "counter",
    "lifeline_takeovers_total": "counter",
    "lifeline_rejections_total": "counter",
    "lifeline_liveness_expiries_total": "counter",
    "lifeline_denied_total": "counter",
    "lifeline_accept_errors_total": "counter",
    "lifeline_config_reloads_total": "counter",
    "lifeline_config_info": "gauge",
    "lifeline_process_start_time_seconds": "gauge",
    "lifeline_workers": "gauge",
}

# Families whose samples are all zero in these tests: a series that was never
# incremented may be left out (the close reasons may not: every one is listed).
MAY_BE_EMPTY = {"lifeline_denied_total", "lifeline_accept_errors_total",
                "lifeline_config_reloads_total"}

ADMIN_TIMEOUT = 5.0  # the endpoint's limit for a client without a complete request


# --------------------------------------------------------------------------
# HTTP on a raw socket


class Response:
    """One HTTP response as read off the wire, up to the server's close."""

    def __init__(self, raw, end):
        self.raw = raw
        self.end = end  # 'eof' or 'reset': how the server ended the connection
        head, sep, self.body = raw.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"incomplete HTTP response ({end}): {raw[:300]!r}")
        lines = head.decode("latin-1").split("\r\n")
        m = re.match(r"^HTTP/1\.[01] (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise AssertionError(f"bad status line: {lines[0]!r}")
        self.status = int(m.group(1))
        self.reason = m.group(2) or ""
        self.headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise AssertionError(f"bad header line {line!r} in {raw[:300]!r}")
            name = name.strip().lower()
            if name in self.headers:
                raise AssertionError(f"header {name} twice in {raw[:300]!r}")
            self.headers[name] = value.strip()

    def text(self):
        return self.body.decode("utf-8")

    def __repr__(self):
        return f"<Response {self.status} {self.headers} {self.body[:200]!r} ({self.end})>"


def read_response(sock, timeout):
    """Everything the server sends until it closes the connection (EOF, or a
    reset after some bytes: a server that closes with unread request bytes
    resets, but what it sent before is still delivered)."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the admin server did not close the connection within "
                                 f"{timeout:.1f} s; got {bytes(buf[:300])!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            if not buf:
                raise
            return Response(bytes(buf), "reset")
        if not chunk:
            return Response(bytes(buf), "eof")
        buf += chunk


def http_request(port, raw, timeout=None):
    """Sends raw bytes on a new connection to 127.0.0.1:port and reads the
    response up to the server's close. Returns (status, headers, body) with
    header names in lower case. The default timeout is well under the
    endpoint's 5 s request timeout, so a server that answers but does not
    close is caught."""
    r = http_exchange(port, raw, timeout)
    return r.status, r.headers, r.body


def http_exchange(port, raw, timeout=None):
    """As http_request, but returns the Response (with .end)."""
    with connect(port, timeout=scaled(5)) as s:
        s.sendall(raw)
        return read_response(s, timeout or scaled(3))


def request_bytes(method, path, headers=(), body=b""):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------
# Prometheus text exposition


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+(-?\d+))?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def _unescape(v):
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def _labels(text):
    out = {}
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if not m or m.end() == pos:
            raise AssertionError(f"bad label set {{{text}}}")
        if m.group(1) in out:
            raise AssertionError(f"label {m.group(1)} twice in {{{text}}}")
        out[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return out


class Metrics:
    """A parsed exposition: samples[(name, frozenset(labels))] = value, and
    the # HELP / # TYPE lines by family name."""

    def __init__(self, text):
        self.text = text
        self.samples = {}
        self.help = {}
        self.types = {}
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] == "HELP":
                    self.help[parts[2]] = parts[3] if len(parts) > 3 else ""
                elif len(parts) >= 4 and parts[1] == "TYPE":
                    if parts[2] in self.types:
                        raise AssertionError(f"line {n}: second # TYPE for {parts[2]}")
                    self.types[parts[2]] = parts[3].strip()
                continue
            m = _SAMPLE.match(line)
            if not m:
                raise AssertionError(f"line {n}: not a sample: {line!r}")
            name, labels, value = m.group(1), _labels(m.group(2) or ""), m.group(3)
            key = (name, frozenset(labels.items()))
            if key in self.samples:
                raise AssertionError(f"line {n}: sample twice: {line!r}")
            try:
                self.samples[key] = float(value)
            except ValueError:
                raise AssertionError(f"line {n}: bad value: {line!r}") from None
        if not text.endswith("\n"):
            raise AssertionError("exposition does not end with a newline")

    def get(self, name, **labels):
        """The value of exactly this sample; AssertionError if absent."""
        key = (name, frozenset(labels.items()))
        if key not in self.samples:
            raise AssertionError(f"no sample {name}{labels} in:\n" + self.family_text(name))
        return self.samples[key]

    def value(self, name, default=0.0, **labels):
        return self.samples.get((name, frozenset(labels.items())), default)

    def series(self, name):
        """[(labels dict, value)] of one metric name."""
        return [(dict(k[1]), v) for k, v in self.samples.items() if k[0] == name]

    def family_text(self, name):
        return "\n".join(line for line in self.text.split("\n") if name in line)


# --------------------------------------------------------------------------


def counter(m, name, expected_nonzero, **labels):
    """A sample's value: it must exist when a non-zero value is expected; a
    zero may also be an absent series."""
    if expected_nonzero:
        return m.get(name, **labels)
    return m.value(name, **labels)


def with_admin(cfg, port=None):
    cfg["admin"] = {"listen": f"{LOOPBACK}:{port or free_port()}"}
    return cfg


def admin_port(d):
    return int(d.cfg["admin"]["listen"].rsplit(":", 1)[1])


class AdminCase(LifelineTestCase):

    def request(self, d, method, path, headers=(), body=b"", timeout=None):
        """One request; checks the framing every response must have
        (Connection: close, a Content-Length that matches the body, the
        server's close). Returns the Response."""
        r = http_exchange(admin_port(d), request_bytes(method, path, headers, body), timeout)
        self.assertFraming(r, head=(method == "HEAD"))
        return r

    def assertFraming(self, r, head=False):
        self.assertEqual(r.headers.get("connection", "").lower(), "close", r)
        self.assertIn("content-length", r.headers, r)
        if head:
            self.assertEqual(r.body, b"", f"HEAD response with a body: {r}")
        else:
            self.assertEqual(int(r.headers["content-length"]), len(r.body), r)

    def get(self, d, path, **kw):
        return self.request(d, "GET", path, **kw)

    def metrics(self, d):
        r = self.get(d, "/metrics")
        self.assertEqual(r.status, 200, r)
        ctype = r.headers.get("content-type", "")
        self.assertTrue(ctype.startswith("text/plain; version=0.0.4"), ctype)
        return Metrics(r.text())

    def sessions(self, d):
        r = self.get(d, "/sessions")
        self.assertEqual(r.status, 200, r)
        doc = json.loads(r.text())
        self.assertIsInstance(doc, list, r)
        return doc

    def echo_round_trip(self, sock, data):
        sock.sendall(data)
        self.assertEqual(recv_exact(sock, len(data), timeout=scaled(10)), data)

    def connect_rejected(self, port):
        """A connection lifeline is expected to reset at once: bound first, so
        its address is known even when the reset beats connect() (SO_ERROR
        ECONNRESET). Returns (socket, or None when connect() already saw the
        reset, and its address)."""
        s = self.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        s.bind((LOOPBACK, 0))
        addr = s.getsockname()
        try:
            connect(port, timeout=scaled(10), sock=s)  # closes s when it raises
        except ConnectionResetError:
            return None, addr
        return s, addr

    def end_client(self, sock):
        """Client-side close of an echo session: FIN, then the echo server's
        and lifeline's FIN back (reason client_eof)."""
        sock.shutdown(socket.SHUT_WR)
        self.assertEqual(wait_closed(sock, timeout=scaled(10)), "eof")
        sock.close()


# --------------------------------------------------------------------------


class Protocol(AdminCase):

    def test_endpoints_and_errors(self):
        """/healthz and /readyz 200; HEAD like GET without the body; 404 for
        an unknown path; 405 with Allow for a wrong method; a malformed
        request line 400 and the connection closed; a 10 KiB header and a
        2 KiB URL 431."""
        echo = self.server(EchoServer)
        d = self.start_lifeline(with_admin(config([route(free_port(), [echo.port])],
                                                  workers=2)))
        port = admin_port(d)
        # The endpoint is logged as itself, not as a route named "admin".
        self.assertEqual([x["address"] for x in d.find("admin listening")],
                         [f"{LOOPBACK}:{port}"])
        self.assertEqual([x["route"] for x in d.find("listening")], ["r"])

        r = self.get(d, "/healthz")
        self.assertEqual((r.status, r.body), (200, b"ok\n"), r)
        self.assertEqual(r.end, "eof", r)

        r = self.get(d, "/readyz")
        self.assertEqual((r.status, r.body), (200, b"ready\n"), r)

        h = self.request(d, "HEAD", "/healthz")
        self.assertEqual(h.status, 200, h)
        self.assertEqual(h.body, b"", h)
        get = self.get(d, "/healthz")
        self.assertEqual(h.headers, get.headers, "HEAD headers differ from GET's")
        self.assertEqual(h.headers["content-length"], "3", h)

        for path in ("/", "/nope", "/healthzz", "/metrics/x", "/sessions/1", "/sessions/abc/close"):
            with self.subTest(path=path):
                r = self.get(d, path)
                self.assertEqual(r.status, 404, r)

        r = self.request(d, "POST", "/healthz")
        self.assertEqual(r.status, 405, r)
        self.assertIn("allow", r.headers, r)
        allow = {m.strip() for m in r.headers["allow"].split(",")}
        self.assertIn("GET", allow, r)
        self.assertNotIn("POST", allow, r)

        r = self.get(d, "/sessions/1/close")
        self.assertEqual(r.status, 405, r)
        self.assertIn("allow", r.headers, r)
        self.assertEqual({m.strip() for m in r.headers["allow"].split(",")}, {"POST"}, r)

        # Malformed request line: 400, then the server closes (well before
        # its 5 s request timeout: read_response's default bound is 3 s).
        start = time.monotonic()
        r = http_exchange(port, b"THIS IS NOT HTTP\r\n\r\n")
        self.assertEqual(r.status, 400, r)
        self.assertFraming(r)
        self.assertLess(time.monotonic() - start, scaled(2),
                        "connection not closed promptly after the 400")
        r = http_exchange(port, b"GET /healthz HTTP/9.x\r\n\r\n")
        self.assertEqual(r.status, 400, r)
        self.assertFraming(r)

        # A 10 KiB header: 431.
        r = http_exchange(port, request_bytes("GET", "/healthz", ["X-Big: " + "a" * (10 * KiB)]))
        self.assertEqual(r.status, 431, r)
        self.assertFraming(r)

        # Many headers adding up to more than 8 KiB: 431.
        many = [f"X-H{i}: " + "b" * 100 for i in range(100)]
        r = http_exchange(port, request_bytes("GET", "/healthz", many))
        self.assertEqual(r.status, 431, r)
        self.assertFraming(r)

        # A 2 KiB URL: 431.
        r = http_exchange(port, request_bytes("GET", "/healthz?x=" + "c" * (2 * KiB)))
        self.assertEqual(r.status, 431, r)
        self.assertFraming(r)

        # The endpoint still answers after all that.
        r = self.get(d, "/healthz")
        self.assertEqual((r.status, r.body), (200, b"ok\n"), r)

    def test_slow_clients_stall_nothing(self):
        """10 admin connections each send a partial request and stall. Meanwhile
        relaying works and a fresh GET /healthz answers 200 at once; each
        stalled connection is closed by the server (EOF, no bytes) about 5 s
        after it was opened."""
        echo = self.server(EchoServer)
        d = self.start_lifeline(with_admin(config([route(free_port(), [echo.port])],
                                                  workers=2)))
        port = admin_port(d)

        stalled = []
        for i in range(10):
            opened = time.monotonic()
            s = self.track(connect(port, timeout=scaled(5)))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Partial: " +
                      str(i).encode())
            stalled.append((s, opened))

        # Relaying is unaffected.
        cli = self.client(listen_port(d), timeout=scaled(5))
        start = time.monotonic()
        self.echo_round_trip(cli, os.urandom(64 * KiB))
        self.assertLess(time.monotonic() - start, scaled(2), "relay slow while admin stalled")

        # A fresh request is answered at once.
        start = time.monotonic()
        r = self.get(d, "/healthz", timeout=scaled(2))
        took = time.monotonic() - start
        self.assertEqual((r.status, r.body), (200, b"ok\n"), r)
        self.assertLess(took, scaled(1), f"GET /healthz took {took:.2f} s with stalled clients")

        # The stalled ones are still open at this point (not closed at once)...
        for s, _ in stalled:
            s.setblocking(False)
            try:
                data = s.recv(1)
            except BlockingIOError:
                data = None
            self.assertIsNone(data, f"a stalled connection got {data!r} before its timeout")
            s.setblocking(True)

        # ... and each one is closed, with nothing sent, about 5 s after it opened.
        for i, (s, opened) in enumerate(stalled):
            deadline = opened + ADMIN_TIMEOUT + scaled(2)
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = s.recv(4096)
            except socket.timeout:
                self.fail(f"stalled connection #{i} still open "
                          f"{time.monotonic() - opened:.2f} s after it opened")
            except ConnectionResetError:
                data = b""
            closed_after = time.monotonic() - opened
            self.assertEqual(data, b"", f"stalled connection #{i} got bytes instead of EOF")
            self.assertGreaterEqual(closed_after, ADMIN_TIMEOUT - 0.5,
                                    f"stalled connection #{i} closed after {closed_after:.2f} s")

        # Relay and endpoint still fine.
        self.echo_round_trip(cli, b"after")
        r = self.get(d, "/healthz")
        self.assertEqual(r.status, 200, r)
        self.end_client(cli)


class Overload(AdminCase):
    """Admin clients that never read, never finish a request, or arrive in a
    crowd: every connection has a deadline and a memory bound, and /healthz
    is answered within seconds whatever they do."""

    SESSIONS = 2000

    def idle_sessions(self, d, echo, n):
        soft = raise_nofile(4 * n + 500)
        if soft < 2 * n + 500:
            # A container's 1,024: the answers would be too small to stall.
            self.skipTest(f"needs {2 * n + 500} descriptors for {n} sessions; the limit is {soft}")
        port = listen_port(d)
        socks = [self.client(port, timeout=scaled(10)) for _ in range(n)]
        wait_until(lambda: self.metrics(d).get("lifeline_sessions_active", route="r") == n,
                   scaled(20), f"{n} sessions open")
        return socks

    def test_slow_readers_cannot_lock_out_healthz(self):
        """2,000 sessions make /sessions about half a MiB. 40 clients send
        half a request and stall, and 40 more, with a 4 KiB receive buffer,
        ask for /sessions and never read (80 clients: more than the old 64
        slots, and five times today's 16): /healthz, asked three times
        meanwhile, answers 200 within a few seconds each time. At most two
        /sessions answers are built at once (the rest get 503 busy), stalled
        connections are evicted to make room, and every slow connection is
        closed within its deadline."""
        echo = self.server(EchoServer)
        d = self.start_lifeline(with_admin(config([route(free_port(), [echo.port])],
                                                  workers=2)))
        self.idle_sessions(d, echo, self.SESSIONS)
        port = admin_port(d)
        rss_before = d.rss_kib()

        slow = []
        for i in range(40):
            s = self.track(connect(port, timeout=scaled(5)))
            s.sendall(b"GET /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
            slow.append((s, time.monotonic()))
        for i in range(40):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s = self.track(connect(port, sock=s, timeout=scaled(5)))
            s.sendall(request_bytes("GET", "/sessions"))
            slow.append((s, time.monotonic()))

        for i in range(3):
            start = time.monotonic()
            r = http_exchange(port, request_bytes("GET", "/healthz"), timeout=scaled(8))
            took = time.monotonic() - start
            self.assertEqual((r.status, r.body), (200, b"ok\n"), r)
            self.assertLess(took, scaled(5), f"/healthz #{i} took {took:.2f} s")

        m = self.metrics(d)
        self.assertGreaterEqual(m.get("lifeline_admin_overload_total", action="busy"), 1)
        self.assertGreaterEqual(m.get("lifeline_admin_overload_total", action="evicted"), 1)
        self.assertGreaterEqual(m.get("lifeline_admin_requests_total", endpoint="healthz"), 3)
        # Two answers of half a MiB at most, and the connections' own memory.
        # Under AddressSanitizer freed memory waits in its quarantine (up to
        # 256 MiB) instead of being reused, so RSS there counts every
        # allocation the answers made: the bound is the plain build's.
        bound = 16 * 1024 if SANITIZER is None else 96 * 1024
        self.assertLess(d.rss_kib() - rss_before, bound, "admin memory not bounded")

        # Every slow connection is closed: evicted, or at its deadline.
        for i, (s, opened) in enumerate(slow):
            s.settimeout(max(0.01, opened + ADMIN_TIMEOUT + scaled(3) - time.monotonic()))
            try:
                while s.recv(65536):
                    pass
            except socket.timeout:
                self.fail(f"slow connection #{i} still open "
                          f"{time.monotonic() - opened:.2f} s after it opened")
            except ConnectionResetError:
                pass
        r = self.get(d, "/sessions", timeout=scaled(10))
        self.assertEqual(r.status, 200)
        self.assertEqual(len(json.loads(r.text())), self.SESSIONS)

    def test_waiting_answer_has_the_deadline_too(self):
        """A /sessions request whose answer waits for a worker that does not
        turn (held with ptrace) is closed at the 5 s deadline, with nothing
        sent; once the worker runs again the late answer is dropped and the
        endpoint serves /sessions as before."""
        if os.geteuid() != 0:
            self.skipTest("holding one thread with ptrace needs root")
        echo = self.server(EchoServer)
        d = self.start_lifeline(with_admin(config([route(free_port(), [echo.port])],
                                                  workers=1)), expect_errors=True)
        cli = self.client(listen_port(d))
        self.echo_round_trip(cli, b"one session")
        release = KillDuringTakeover.hold_thread(self, d, "worker-0")
        try:
            opened = time.monotonic()
            s = self.track(connect(admin_port(d), timeout=scaled(5)))
            s.sendall(request_bytes("GET", "/sessions"))
            s.settimeout(ADMIN_TIMEOUT + scaled(3))
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
            closed_after = time.monotonic() - opened
            self.assertEqual(data, b"", "an answer came from a worker that was held")
            self.assertGreaterEqual(closed_after, ADMIN_TIMEOUT - 0.5)
            self.assertEqual(self.metrics(d).get("lifeline_admin_overload_total",
                                                 action="timeout"), 1)
        finally:
            release()
        wait_until(lambda: self.get(d, "/healthz").status == 200, scaled(5),
                   "/healthz 200 with the worker running", interval=0.1)
        doc = self.sessions(d)
        self.assertEqual(len(doc), 1, doc)
        self.echo_round_trip(cli, b"still relaying")
        self.end_client(cli)


class MetricValues(AdminCase):

    N = 10000

    def test_metric_values_after_scripted_traffic(self):
        """Exact counter values after scripted traffic on five routes (two
        workers, so the sums over workers are exercised): plain echo
        sessions, failover past a dead server, reject, replace, silence."""
        echo = self.server(EchoServer)
        dead = free_port()
        live = f"{LOOPBACK}:{echo.port}"
        dead_s = f"{LOOPBACK}:{dead}"

        r_echo = route(free_port(), [echo.port], name="echo")
        r_fail = route(free_port(), [dead, echo.port], name="failover", retries=1,
                       retry_backoff_ms=20)
        r_reject = route(free_port(), [echo.port], name="reject")
        r_reject["client"] = {"identity": "address", "on_duplicate": "reject"}
        r_replace = route(free_port(), [echo.port], name="replace")
        r_replace["client"] = {"identity": "address", "on_duplicate": "replace"}
        r_silence = route(free_port(), [echo.port], name="silence")
        r_silence["client"] = {"heartbeat": {"silence_ms": 300}}
        routes = [r_echo, r_fail, r_reject, r_replace, r_silence]
        names = [r["name"] for r in routes]
        t_before = time.time()
        d = self.start_lifeline(with_admin(config(routes, workers=2)))

        sent = {n: 0 for n in names}

        # --- echo: 5 sessions of N bytes each way, all open at once.
        port = listen_port(d, 0)
        clients = [self.client(port, timeout=scaled(10)) for _ in range(5)]
        for c in clients:
            self.echo_round_trip(c, os.urandom(self.N))
            sent["echo"] += self.N
        m = self.metrics(d)
        self.assertEqual(m.get("lifeline_sessions_active", route="echo"), 5)
        for c in clients:
            self.end_client(c)
        d.wait_count(5, "session closed", route="echo")

        # --- failover: the dead server first, then the live one.
        c = self.client(listen_port(d, 1), timeout=scaled(10))
        self.echo_round_trip(c, b"failover")
        sent["failover"] += 8
        self.end_client(c)
        d.wait_count(1, "session closed", route="failover")

        # --- reject: a second connection from 127.0.0.1 is closed at once.
        c1 = self.client(listen_port(d, 2), timeout=scaled(10))
        self.echo_round_trip(c1, b"first")
        sent["reject"] += 5
        c2, c2_addr = self.connect_rejected(listen_port(d, 2))
        self.assertSessionClosed(d, c2_addr, "rejected")
        if c2 is not None:
            self.assertIn(wait_closed(c2, timeout=scaled(5)), ("eof", "reset"))
        self.echo_round_trip(c1, b"still")
        sent["reject"] += 5
        self.end_client(c1)
        d.wait_count(2, "session closed", route="reject")

        # --- replace: a second connection from 127.0.0.1 takes over.
        c1 = self.client(listen_port(d, 3), timeout=scaled(10))
        self.echo_round_trip(c1, b"old one")
        sent["replace"] += 7
        c2 = self.client(listen_port(d, 3), timeout=scaled(10))
        self.assertSessionClosed(d, c1.getsockname(), "replaced")
        self.assertIn(wait_closed(c1, timeout=scaled(5)), ("eof", "reset"))
        self.echo_round_trip(c2, b"new one")
        sent["replace"] += 7
        self.end_client(c2)
        d.wait_count(2, "session closed", route="replace")

        # --- silence: one byte, then nothing for 300 ms.
        c = self.client(listen_port(d, 4), timeout=scaled(10))
        self.echo_round_trip(c, b"x")
        sent["silence"] += 1
        self.assertSessionClosed(d, c.getsockname(), "client_silence", timeout=scaled(5))
        self.assertIn(wait_closed(c, timeout=scaled(5)), ("eof", "reset"))

        t_after = time.time()
        m = self.metrics(d)

        # Every family is announced, with its type.
        for fam, typ in FAMILIES.items():
            with self.subTest(family=fam):
                self.assertIn(fam, m.help, f"no # HELP {fam}")
                self.assertEqual(m.types.get(fam), typ, f"# TYPE of {fam}")
                if fam not in MAY_BE_EMPTY:
                    self.assertTrue(m.series(fam), f"no sample of {fam}")
        for (name, _) in m.samples:
            self.assertIn(name, m.types, f"sample without a # TYPE line: {name}")

        # Process-wide.
        self.assertEqual(m.get("lifeline_workers"), 2)
        info = m.series("lifeline_config_info")
        self.assertEqual(len(info), 1, info)
        labels, value = info[0]
        self.assertEqual(value, 1)
        self.assertEqual(set(labels), {"hash"}, info)
        self.assertRegex(labels["hash"], r"^[0-9a-f]{16}$")
        start_time = m.get("lifeline_process_start_time_seconds")
        self.assertLess(abs(start_time - time.time()), 60, start_time)
        self.assertGreaterEqual(start_time, t_before - 2)
        self.assertLessEqual(start_time, t_after)
        self.assertEqual(m.value("lifeline_config_reloads_total", result="ok"), 0)
        self.assertEqual(m.value("lifeline_config_reloads_total", result="failed"), 0)

        expected_total = {"echo": 5, "failover": 1, "reject": 2, "replace": 2, "silence": 1}
        expected_closes = {
            "echo": {"client_eof": 5},
            "failover": {"client_eof": 1},
            "reject": {"client_eof": 1, "rejected": 1},
            "replace": {"client_eof": 1, "replaced": 1},
            "silence": {"client_silence": 1},
        }
        # connect attempts / failures per (route, server)
        expected_attempts = {
            ("echo", live): (5, 0),
            ("failover", dead_s): (1, 1),
            ("failover", live): (1, 0),
            ("reject", live): (1, 0),
            ("replace", live): (2, 0),
            ("silence", live): (1, 0),
        }
        for name in names:
            with self.subTest(route=name):
                # Read after every `session closed` line of the route: the
                # counters must already include those sessions.
                self.assertEqual(m.get("lifeline_sessions_active", route=name), 0,
                                 "sessions_active after every session closed line")
                self.assertEqual(m.get("lifeline_sessions_total", route=name),
                                 expected_total[name])
                closes = {reason: m.get("lifeline_session_closes_total", route=name,
                                        reason=reason) for reason in REASONS}
                want = {reason: expected_closes[name].get(reason, 0) for reason in REASONS}
                self.assertEqual(closes, want, "closes after every session closed line")
                self.assertEqual(m.get("lifeline_bytes_total", route=name,
                                       direction="from_client"), sent[name])
                self.assertEqual(m.get("lifeline_bytes_total", route=name,
                                       direction="from_server"), sent[name])
                self.assertEqual(counter(m, "lifeline_takeovers_total", name == "replace",
                                         route=name), name == "replace")
                self.assertEqual(counter(m, "lifeline_rejections_total", name == "reject",
                                         route=name), name == "reject")
                for kind in ("silence", "keepalive", "user_timeout"):
                    hit = (name, kind) == ("silence", "silence")
                    self.assertEqual(counter(m, "lifeline_liveness_expiries_total", hit,
                                             route=name, kind=kind), hit, kind)
                for cause in ("allow", "max_connections", "max_per_address"):
                    self.assertEqual(m.value("lifeline_denied_total", route=name,
                                             cause=cause), 0, cause)
                self.assertEqual(m.value("lifeline_accept_errors_total", route=name), 0)

        attempts = {(lb["route"], lb["server"]): v
                    for lb, v in m.series("lifeline_upstream_connect_attempts_total")}
        failures = {(lb["route"], lb["server"]): v
                    for lb, v in m.series("lifeline_upstream_connect_failures_total")}
        for key, (att, fail) in expected_attempts.items():
            with self.subTest(upstream=key):
                self.assertEqual(attempts.get(key), att, f"attempts {key}: {attempts}")
                self.assertEqual(failures.get(key, 0), fail, f"failures {key}: {failures}")
        for key, v in attempts.items():
            self.assertEqual(v, expected_attempts.get(key, (0, 0))[0], f"attempts {key}")
        for key, v in failures.items():
            self.assertEqual(v, expected_attempts.get(key, (0, 0))[1], f"failures {key}")

        # The log agrees with the counters.
        closed = d.find("session closed")
        self.assertEqual(len(closed), sum(expected_total.values()))


class Sessions(AdminCase):

    def test_list_and_close_sessions(self):
        """Three open sessions (one idle) are listed with their clients,
        state, upstream port and byte counts; POST /sessions/{id}/close ends
        one (its client and server see the close; reason admin_kill); the
        list then has two; a bogus id is 404."""
        srv = self.server(AcceptServer)
        d = self.start_lifeline(with_admin(config([route(free_port(), [srv.port], name="s")],
                                                  workers=2)))
        port = listen_port(d)

        opened = time.monotonic()
        conns = []
        for _ in range(3):
            cli = self.client(port, timeout=scaled(10))
            conn, peer = srv.accept()
            self.track(conn)
            conns.append((cli, conn, peer))

        # Session 0: 300 bytes up, 120 down. Session 1: 2000 up, nothing down.
        # Session 2: idle.
        plan = [(300, 120), (2000, 0), (0, 0)]
        for (cli, conn, _), (up, down) in zip(conns, plan):
            if up:
                data = os.urandom(up)
                cli.sendall(data)
                self.assertEqual(recv_exact(conn, up), data)
            if down:
                data = os.urandom(down)
                conn.sendall(data)
                self.assertEqual(recv_exact(cli, down), data)

        by_client = {}

        def all_relaying():
            lst = self.sessions(d)
            by_client.clear()
            by_client.update({s.get("client"): s for s in lst})
            return len(lst) == 3 and all(s.get("state") == "relaying" for s in lst)

        try:
            wait_until(all_relaying, scaled(5), "3 sessions relaying", interval=0.05)
        except AssertionError as e:
            self.fail(f"{e}; last /sessions: {list(by_client.values())}")
        lst = self.sessions(d)
        elapsed_ms = (time.monotonic() - opened) * 1000
        self.assertEqual(len(lst), 3, lst)
        keys = {"id", "route", "worker", "client", "upstream_local_port", "state",
                "bytes_from_client", "bytes_from_server", "age_ms", "client_idle_ms"}
        ids = set()
        for s in lst:
            self.assertEqual(set(s), keys, s)
            for k in keys - {"route", "client", "state"}:
                self.assertIsInstance(s[k], int, f"{k} in {s}")
                self.assertNotIsInstance(s[k], bool, f"{k} in {s}")
            ids.add(s["id"])
            self.assertIn(s["worker"], (0, 1), s)
            self.assertEqual(s["route"], "s", s)
            self.assertGreaterEqual(s["age_ms"], 0, s)
            self.assertLessEqual(s["age_ms"], elapsed_ms + 50, s)
            self.assertGreaterEqual(s["client_idle_ms"], 0, s)
            self.assertLessEqual(s["client_idle_ms"], s["age_ms"] + 50, s)
        self.assertEqual(len(ids), 3, f"ids not unique: {lst}")

        listed = {s["client"]: s for s in lst}
        for (cli, conn, peer), (up, down) in zip(conns, plan):
            client = addr_str(cli.getsockname())
            self.assertIn(client, listed, lst)
            s = listed[client]
            self.assertEqual(s["state"], "relaying", s)
            self.assertEqual(s["upstream_local_port"], peer[1], s)
            self.assertEqual(s["bytes_from_client"], up, s)
            self.assertEqual(s["bytes_from_server"], down, s)

        # Close session 1 by id.
        cli, conn, _ = conns[1]
        victim = listed[addr_str(cli.getsockname())]
        r = self.request(d, "POST", f"/sessions/{victim['id']}/close")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(json.loads(r.text()), {"closed": victim["id"]}, r)
        self.assertIn(wait_closed(cli, timeout=scaled(5)), ("eof", "reset"))
        self.assertIn(wait_closed(conn, timeout=scaled(5)), ("eof", "reset"))
        self.assertSessionClosed(d, cli.getsockname(), "admin_kill", bytes_from_client=2000,
                                 bytes_from_server=0)

        left = wait_until(lambda: (lambda l: l if len(l) == 2 else None)(self.sessions(d)),
                          scaled(2), "2 sessions listed", interval=0.05)
        self.assertEqual({s["client"] for s in left},
                         {addr_str(conns[i][0].getsockname()) for i in (0, 2)}, left)
        self.assertNotIn(victim["id"], {s["id"] for s in left})

        # The other two still relay.
        for i in (0, 2):
            cli, conn, _ = conns[i]
            cli.sendall(b"alive")
            self.assertEqual(recv_exact(conn, 5), b"alive")

        # Ids no worker has: 404. (Also the one just closed.)
        bogus = max(ids) + 1000
        for sid in (bogus, victim["id"]):
            with self.subTest(id=sid):
                r = self.request(d, "POST", f"/sessions/{sid}/close")
                self.assertEqual(r.status, 404, r)
        self.assertEqual(len(self.sessions(d)), 2)

        m = self.metrics(d)
        self.assertEqual(m.get("lifeline_session_closes_total", route="s",
                               reason="admin_kill"), 1)
        self.assertEqual(m.get("lifeline_sessions_active", route="s"), 2)

        # End the remaining two cleanly.
        for i in (0, 2):
            cli, conn, _ = conns[i]
            cli.shutdown(socket.SHUT_WR)
            self.assertEqual(wait_closed(conn, timeout=scaled(5)), "eof")
            conn.close()
            self.assertEqual(wait_closed(cli, timeout=scaled(5)), "eof")
        d.wait_count(3, "session closed", route="s")


PTRACE_ATTACH, PTRACE_DETACH = 16, 17
WAIT_ALL_THREADS = 0x40000000  # __WALL: wait for a thread of another process


class Watchdog(AdminCase):

    def test_stuck_worker_makes_healthz_503(self):
        """A worker loop that stops turning (its one thread held by ptrace,
        the rest of the process running) makes /healthz 503 once the 2 s
        bound has passed, and is logged; released, /healthz is 200 again and
        the recovery is logged."""
        if os.geteuid() != 0:
            self.skipTest("holding one thread with ptrace needs root")
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        echo = self.server(EchoServer)
        d = self.start_lifeline(with_admin(config([route(free_port(), [echo.port])], workers=1)),
                                expect_errors=True)
        tids = []
        for t in os.listdir(f"/proc/{d.pid}/task"):
            with open(f"/proc/{d.pid}/task/{t}/comm") as f:
                if f.read().strip() == "worker-0":
                    tids.append(int(t))
        self.assertEqual(len(tids), 1, f"expected one thread named worker-0, got {tids}")
        self.assertEqual(self.get(d, "/healthz").status, 200)

        if libc.ptrace(PTRACE_ATTACH, tids[0], None, None) != 0:
            self.skipTest(f"ptrace refused: {os.strerror(ctypes.get_errno())}")
        try:
            os.waitpid(tids[0], WAIT_ALL_THREADS)
            held = time.monotonic()

            def unhealthy():
                r = http_exchange(admin_port(d), request_bytes("GET", "/healthz"))
                return r if r.status == 503 else None
            r = wait_until(unhealthy, scaled(2) + 3, "/healthz 503 with the worker held",
                           interval=0.1)
            self.assertGreaterEqual(time.monotonic() - held, 2.0, "503 before the 2 s bound")
            self.assertFraming(r)
            rec = d.wait_log("worker loop not responding", worker=0)
            self.assertEqual(rec["level"], "error")
        finally:
            libc.ptrace(PTRACE_DETACH, tids[0], None, None)

        wait_until(lambda: http_exchange(admin_port(d), request_bytes("GET", "/healthz")).status
                   == 200, scaled(5), "/healthz 200 after the worker was released", interval=0.1)
        d.wait_log("worker loop responding again", worker=0)
        self.assertEqual(d.stop(), 0, d.log_tail())


class KillDuringTakeover(AdminCase):

    def hold_thread(self, d, name):
        """Stops one thread of lifeline (ptrace); returns the function that
        lets it go."""
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        tids = []
        for t in os.listdir(f"/proc/{d.pid}/task"):
            with open(f"/proc/{d.pid}/task/{t}/comm") as f:
                if f.read().strip() == name:
                    tids.append(int(t))
        self.assertEqual(len(tids), 1, f"threads named {name}: {tids}")
        if libc.ptrace(PTRACE_ATTACH, tids[0], None, None) != 0:
            self.skipTest(f"ptrace refused: {os.strerror(ctypes.get_errno())}")
        os.waitpid(tids[0], WAIT_ALL_THREADS)
        return lambda: libc.ptrace(PTRACE_DETACH, tids[0], None, None)

    def client_from(self, port, src_port):
        """A client bound to 127.0.0.1:src_port whose close is a reset (no
        TIME_WAIT: the port can be used again at once)."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.bind((LOOPBACK, src_port))
        return self.track(connect(port, sock=s, timeout=scaled(10)))

    def test_kill_before_the_eviction_waits_for_the_server(self):
        """identity "address", 2 workers. The old session's worker is held
        (ptrace) while an admin kill of that session is posted to it, and
        then the client returns from another port, on the other worker, and
        claims the identity: the worker, released, finds the kill first and
        the eviction second. The kill must hand the identity over the way an
        eviction does: the server sees the old connection's EOF, and only
        then the new connection; the close line says how the server
        finished."""
        if os.geteuid() != 0:
            self.skipTest("holding one thread with ptrace needs root")
        sink = self.server(SinkServer)
        r = route(free_port(), [sink.port])
        r["client"] = {"identity": "address", "on_duplicate": "replace"}
        d = self.start_lifeline(with_admin(config([r], workers=2)))
        port = listen_port(d)

        # Which worker each source port lands on (SO_REUSEPORT hashes the
        # 4-tuple: the same tuple always reaches the same worker).
        by_worker = {}
        for src in random.sample(range(30000, 40000), 64):
            try:
                c = self.client_from(port, src)
            except OSError:
                continue
            c.sendall(b"probe")
            rec = wait_until(lambda: next((x for x in self.sessions(d)
                                           if x["client"] == f"{LOOPBACK}:{src}"), None),
                             scaled(5), "the probe's session")
            by_worker.setdefault(rec["worker"], src)
            c.close()
            if len(by_worker) == 2:
                break
        self.assertEqual(len(by_worker), 2, f"no source port for each worker: {by_worker}")
        wait_until(lambda: self.sessions(d) == [], scaled(5), "the probes to end")
        n_probes = len(sink.connections())

        old = self.client_from(port, by_worker[0])
        old.sendall(b"old session")
        old_up = sink.wait_connection(n_probes + 1)
        wait_until(lambda: old_up.count == 11, scaled(5), "the old session's bytes")
        (sess,) = [x for x in self.sessions(d) if x["client"] == f"{LOOPBACK}:{by_worker[0]}"]

        takeovers = self.metrics(d).get("lifeline_takeovers_total", route="r")  # probes too
        release = self.hold_thread(d, "worker-0")
        try:
            answer = []
            killer = threading.Thread(target=lambda: answer.append(
                self.request(d, "POST", f"/sessions/{sess['id']}/close",
                             timeout=scaled(20))), daemon=True)
            killer.start()
            # The kill is posted to both workers (worker 0 holds it unread)...
            wait_until(lambda: self.metrics(d).get("lifeline_admin_requests_total",
                                                   endpoint="close") == 1,
                       scaled(5), "the kill dispatched", interval=0.02)
            # ...then the client returns, on worker 1, and claims the identity:
            # worker 0's eviction is queued behind the kill.
            new = self.client_from(port, by_worker[1])
            new.sendall(b"new session")
            wait_until(lambda: self.metrics(d).get("lifeline_takeovers_total", route="r") ==
                       takeovers + 1,
                       scaled(5), "the new session to claim the identity", interval=0.02)
        finally:
            release()
        killer.join(scaled(10))
        self.assertEqual(answer and answer[0].status, 200, answer)

        new_up = sink.wait_connection(n_probes + 2)
        # The probe from the same port closed first (client_reset).
        rec = d.wait_count(2, "session closed", timeout=scaled(5),
                           client=f"{LOOPBACK}:{by_worker[0]}")[-1]
        self.assertEqual(rec["reason"], "admin_kill", rec)
        self.assertIn(rec.get("upstream_finish"), ("server_eof", "fin_acked"), rec)
        self.assertTrue(old_up.ended.wait(scaled(5)), "the old connection's EOF")
        self.assertEqual(old_up.end, "eof")
        self.assertLess(old_up.ended_at, new_up.accepted_at,
                        "the server accepted the new connection before the old one's EOF")
        wait_until(lambda: new_up.count == 11, scaled(5), "the new session's bytes")
        self.assertEqual(bytes(new_up.data), b"new session")

class Readiness(AdminCase):

    def test_readyz_503_while_draining(self):
        """A session open, drain_timeout_ms 3000, SIGTERM: /readyz answers 503
        during the drain; once the session ends lifeline exits 0."""
        srv = self.server(AcceptServer)
        d = self.start_lifeline(with_admin(config([route(free_port(), [srv.port])],
                                                  drain_timeout_ms=3000)))
        cli = self.client(listen_port(d), timeout=scaled(10))
        conn, _ = srv.accept()
        self.track(conn)
        cli.sendall(b"hello")
        self.assertEqual(recv_exact(conn, 5), b"hello")
        client = addr_str(cli.getsockname())

        r = self.get(d, "/readyz")
        self.assertEqual((r.status, r.body), (200, b"ready\n"), r)

        signalled = time.monotonic()
        d.signal(signal.SIGTERM)
        d.wait_log("shutting down", signal="SIGTERM")

        seen = []

        def not_ready():
            try:
                r = http_exchange(admin_port(d), request_bytes("GET", "/readyz"))
            except (OSError, AssertionError) as e:
                seen.append(repr(e))
                return None
            seen.append((r.status, r.body))
            return r if r.status == 503 else None

        try:
            r = wait_until(not_ready, scaled(2), "/readyz 503 during the drain", interval=0.05)
        except AssertionError as e:
            self.fail(f"{e}; answers seen: {seen[-5:]}\n{d.log_tail()}")
        self.assertFraming(r)
        self.assertLess(time.monotonic() - signalled, 3.0, "503 seen only after the drain")
        self.assertTrue(d.running(), "lifeline exited with a session open")
        self.assertFalse(d.find("session closed"), "the session ended before the check")

        cli.shutdown(socket.SHUT_WR)
        self.assertEqual(wait_closed(conn, timeout=scaled(5)), "eof")
        conn.close()
        self.assertEqual(wait_closed(cli, timeout=scaled(5)), "eof")
        self.assertEqual(d.wait_exit(scaled(5)), 0, d.log_tail())
        self.assertSessionClosed(d, client, "client_eof")
        self.assertTrue(d.find("stopped"), d.log_tail())


class ListenCheck(AdminCase):

    MESSAGE = re.compile(r"^admin\.listen: .*0\.0\.0\.0.* is not a loopback address; "
                         r"set admin\.allow_remote to true to serve it$")

    def test_non_loopback_needs_allow_remote(self):
        """--check: admin.listen on 0.0.0.0 is rejected (exit 2, the message
        naming admin.allow_remote); with allow_remote true it is accepted.
        The daemon is never started on it."""
        cfg = with_admin(config([route(free_port(), [free_port()])]))
        cfg["admin"]["listen"] = f"0.0.0.0:{free_port()}"
        path = write_config(self.tmpdir, cfg, "remote.json")
        r = run_cli(["--check", "-c", path])
        self.assertEqual(r.returncode, 2, r)
        self.assertEqual(r.stdout, "", r)
        lines = r.stderr.splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertRegex(lines[0], self.MESSAGE)

        cfg["admin"]["allow_remote"] = True
        path = write_config(self.tmpdir, cfg, "remote-allowed.json")
        r = run_cli(["--check", "-c", path])
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "ok\n", ""), r)

        # Loopback needs nothing more.
        cfg = with_admin(config([route(free_port(), [free_port()])]))
        path = write_config(self.tmpdir, cfg, "loopback.json")
        r = run_cli(["--check", "-c", path])
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "ok\n", ""), r)


if __name__ == "__main__":
    unittest.main()
