"""Access control, connection limits and the privilege drop.

Per route, `client.allow` refuses clients outside its CIDRs, `max_connections`
caps the route's open sessions across workers and `max_per_address` those of
one client IP. A refused connection is closed at once (RST by default), never
reaches the server, is counted in lifeline_denied_total{cause} and
lifeline_session_closes_total{reason="denied"}, gets no `session closed` line,
and is logged as `connection denied` at most once a second per worker.
Top-level `user`/`group`: lifeline binds every socket, then switches account.

Every address is loopback: 127.0.0.0/8 is all loopback on Linux, so a client
socket bound to 127.0.0.2 or 127.0.0.3 before connect() is a second and third
client host."""

import json
import os
import pwd
import re
import socket
import subprocess
import time
import unittest

from harness import (LOOPBACK, LOOPBACK6, AcceptServer, EchoServer, LifelineTestCase,
                     addr_str, config, connect, free_port, have_ipv6_loopback, listen_port,
                     log_time, recv_exact, route, scaled, wait_closed, wait_until)

DENY_CAUSES = ("allow", "max_connections", "max_per_address")


# --------------------------------------------------------------------------
# helpers


def with_admin(cfg):
    """Adds an admin endpoint on a free loopback port; returns the port."""
    port = free_port()
    cfg["admin"] = {"listen": f"{LOOPBACK}:{port}"}
    return port


def client_opts(r, **opts):
    """Sets keys of routes[].client; returns the route."""
    r.setdefault("client", {}).update(opts)
    return r


def http_get(port, path, timeout=None):
    """GET on a raw socket (no proxy settings can interfere); returns the body
    of a 200 answer, else AssertionError."""
    timeout = timeout or scaled(5)
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                raise AssertionError(f"GET {path}: no complete answer in {timeout:.1f} s: "
                                     f"{bytes(buf[:200])!r}") from None
            if not chunk:
                break
            buf += chunk
    head, _, body = bytes(buf).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not re.match(rb"HTTP/1\.[01] 200 ", status):
        raise AssertionError(f"GET {path}: {status!r}")
    return body.decode()


_SAMPLE = re.compile(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$')


def metrics(port):
    """{(name, frozenset(labels.items())): value} from GET /metrics."""
    out = {}
    for line in http_get(port, "/metrics").splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise AssertionError(f"bad metrics line {line!r}")
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(3))
    return out


def sample(ms, name, **labels):
    """One sample's value; a series that is not there is 0."""
    return ms.get((name, frozenset(labels.items())), 0.0)


def family_sum(ms, name, **labels):
    """Sum of a family's samples that carry these labels."""
    want = set(labels.items())
    return sum(v for (n, ls), v in ms.items() if n == name and want <= ls)


def sessions(port):
    return json.loads(http_get(port, "/sessions"))


def client_from(port, src, host=LOOPBACK, timeout=None):
    """A client connected from source address `src` (any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((src, 0))
    except OSError:
        s.close()
        raise
    return connect(port, host=host, timeout=timeout or scaled(5), sock=s)


def refused(port, host=LOOPBACK, src=None):
    """Connects and waits for lifeline to close the connection. Returns (how,
    client address string): 'reset' or 'eof'. The socket is bound before
    connect() so its address is known even when lifeline's RST is processed
    before connect() returns (then connect() itself fails with ECONNRESET)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((src or host, 0))
        me = addr_str(s.getsockname())
        s.settimeout(scaled(5))
        try:
            s.connect((host, port))
        except ConnectionResetError:
            return "reset", me
        return wait_closed(s, timeout=scaled(5)), me
    finally:
        s.close()


def ping(cli, conn, tag):
    """A round trip through the relay: client -> server, server -> client."""
    msg = f"ping {tag}\n".encode()
    cli.sendall(msg)
    got = recv_exact(conn, len(msg), timeout=scaled(5))
    if got != msg:
        raise AssertionError(f"server got {got!r}, expected {msg!r}")
    back = f"pong {tag}\n".encode()
    conn.sendall(back)
    got = recv_exact(cli, len(back), timeout=scaled(5))
    if got != back:
        raise AssertionError(f"client got {got!r}, expected {back!r}")


def echo_ok(cli, tag):
    msg = f"echo {tag}\n".encode()
    cli.sendall(msg)
    got = recv_exact(cli, len(msg), timeout=scaled(5))
    if got != msg:
        raise AssertionError(f"echo: got {got!r}, expected {msg!r}")


class AccessCase(LifelineTestCase):

    def open_session(self, d, srv, port, tag, src=None, host=LOOPBACK):
        """A client whose session is confirmed at the server: accepted there
        and relaying both ways. Returns (client, server-side socket). When it
        is not, the failure says whether lifeline counted it as denied."""
        try:
            cli = self.track(client_from(port, src, host) if src else
                             self.client(port, host=host))
            conn, _ = srv.accept(timeout=scaled(5))
            ping(cli, conn, tag)
        except (AssertionError, OSError) as e:
            why = ""
            if "admin" in d.cfg:
                ms = metrics(int(d.cfg["admin"]["listen"].rsplit(":", 1)[1]))
                why = "; lifeline_denied_total now " + ", ".join(
                    f"{c}={sample(ms, 'lifeline_denied_total', route=r['name'], cause=c):g}"
                    for r in d.cfg["routes"] for c in DENY_CAUSES)
            raise AssertionError(f"session {tag!r} not admitted: {e!r}{why}\n"
                                 f"{d.log_tail()}") from e
        return cli, conn

    def close_session(self, d, cli, conn):
        """The client closes; once its EOF has reached the server, the server
        closes too; the session's `session closed` line (client_eof)."""
        name = addr_str(cli.getsockname())
        cli.close()
        self.assertEqual(wait_closed(conn, timeout=scaled(5)), "eof")
        conn.close()
        return self.assertSessionClosed(d, name, "client_eof")

    def assertRefused(self, d, port, cause, host=LOOPBACK, src=None, route_name="r"):
        """One refused connection: closed by lifeline (RST or EOF), and its
        `connection denied` line (the first denial of a worker in this test,
        or one more than a second after the last: never rate-limited here)."""
        how, me = refused(port, host, src)
        self.assertIn(how, ("reset", "eof"))
        rec = d.wait_log("connection denied", client=me)
        self.assertEqual(rec["level"], "warn", rec)
        self.assertEqual(rec["route"], route_name, rec)
        self.assertEqual(rec["cause"], cause, rec)
        self.assertIsInstance(rec["suppressed"], int, rec)
        return me, rec

    def assertDeniedMetrics(self, admin, route_name="r", closes_denied=None, **causes):
        """lifeline_denied_total by cause exactly (causes not named: 0), the
        denied close reason equal to their sum, and the session counters
        consistent: total = active + every close."""
        ms = metrics(admin)
        for cause in DENY_CAUSES:
            self.assertEqual(sample(ms, "lifeline_denied_total", route=route_name, cause=cause),
                             causes.get(cause, 0), f"denied{{cause={cause}}}")
        want = sum(causes.values()) if closes_denied is None else closes_denied
        self.assertEqual(sample(ms, "lifeline_session_closes_total", route=route_name,
                                reason="denied"), want, "closes{reason=denied}")
        total = sample(ms, "lifeline_sessions_total", route=route_name)
        active = sample(ms, "lifeline_sessions_active", route=route_name)
        closes = family_sum(ms, "lifeline_session_closes_total", route=route_name)
        self.assertEqual(total, active + closes, f"total {total} active {active} closes {closes}")
        return ms

    def assertNoCloseLine(self, d, client):
        self.assertEqual(d.find("session closed", client=client), [],
                         f"a denied connection got a session closed line ({client})")


# --------------------------------------------------------------------------
# client.allow


class Allow(AccessCase):

    def test_allow_refuses_other_addresses_and_admits_listed(self):
        """allow ["127.0.0.2/32"]: a client from 127.0.0.1 is refused (closed,
        never at the server, one `connection denied` line, cause allow, no
        `session closed`); a client bound to 127.0.0.2 is relayed."""
        srv = self.server(AcceptServer)
        cfg = config([client_opts(route(free_port(), [srv.port]), allow=["127.0.0.2/32"])])
        admin = with_admin(cfg)
        d = self.start_lifeline(cfg)
        port = listen_port(d)

        me, rec = self.assertRefused(d, port, "allow")
        self.assertTrue(me.startswith("127.0.0.1:"), me)
        self.assertEqual(rec["suppressed"], 0, rec)

        cli, conn = self.open_session(d, srv, port, "from .2", src="127.0.0.2")
        self.assertEqual(conn.getpeername()[0], LOOPBACK)  # lifeline's own connection
        # The denied connection never reached the server: the one it accepted
        # is the allowed client's.
        self.assertEqual(srv.accepted_count(), 1)
        self.close_session(d, cli, conn)
        self.assertEqual(srv.accepted_count(), 1)

        self.assertEqual(len(d.find("connection denied")), 1, d.log_tail())
        self.assertNoCloseLine(d, me)
        self.assertDeniedMetrics(admin, allow=1)

    def test_allow_cidr_admits_whole_block(self):
        """allow ["127.0.0.0/8"] admits 127.0.0.1 (and 127.0.0.5): no denial."""
        echo = self.server(EchoServer)
        cfg = config([client_opts(route(free_port(), [echo.port]), allow=["127.0.0.0/8"])])
        admin = with_admin(cfg)
        d = self.start_lifeline(cfg)
        port = listen_port(d)
        a = self.client(port)
        echo_ok(a, "127.0.0.1")
        b = self.track(client_from(port, "127.0.0.5"))
        echo_ok(b, "127.0.0.5")
        for c in (a, b):
            name = addr_str(c.getsockname())
            c.close()
            self.assertSessionClosed(d, name, "client_eof")
        self.assertEqual(d.find("connection denied"), [])
        self.assertDeniedMetrics(admin)

    def test_ipv6_allow(self):
        """On a [::1] listener: allow ["::1/128"] admits a [::1] client;
        allow ["127.0.0.0/8"] refuses it (an IPv6 client matches IPv6 entries
        only)."""
        if not have_ipv6_loopback():
            self.skipTest("no IPv6 loopback (::1) on this host")
        echo = self.server(EchoServer)
        r6 = client_opts(route(free_port(LOOPBACK6), [echo.port], name="v6",
                               listen_host=LOOPBACK6), allow=["::1/128"])
        r4 = client_opts(route(free_port(LOOPBACK6), [echo.port], name="v6only4",
                               listen_host=LOOPBACK6), allow=["127.0.0.0/8"])
        cfg = config([r6, r4])
        admin = with_admin(cfg)
        d = self.start_lifeline(cfg)

        cli = self.client(listen_port(d, 0), host=LOOPBACK6)
        echo_ok(cli, "v6")
        name = addr_str(cli.getsockname())
        self.assertTrue(name.startswith("[::1]:"), name)
        cli.close()
        self.assertSessionClosed(d, name, "client_eof", route="v6")

        me, _ = self.assertRefused(d, listen_port(d, 1), "allow", host=LOOPBACK6,
                                   route_name="v6only4")
        self.assertTrue(me.startswith("[::1]:"), me)
        self.assertNoCloseLine(d, me)
        self.assertEqual(echo.accepted, 1)
        self.assertDeniedMetrics(admin, route_name="v6")
        self.assertDeniedMetrics(admin, route_name="v6only4", allow=1)

    def test_ipv4_client_refused_by_ipv6_only_allow(self):
        """allow ["::1"] on a 127.0.0.1 route: an IPv4 client matches no entry."""
        srv = self.server(AcceptServer)
        cfg = config([client_opts(route(free_port(), [srv.port]), allow=["::1"])])
        admin = with_admin(cfg)
        d = self.start_lifeline(cfg)
        me, _ = self.assertRefused(d, listen_port(d), "allow")
        self.assertNoCloseLine(d, me)
        self.assertDeniedMetrics(admin, allow=1)
        self.assertEqual(srv.accepted_count(), 0)


# --------------------------------------------------------------------------
# max_connections, max_per_address


class Limits(AccessCase):

    def test_max_connections_across_workers(self):
        """max_connections 3 with 2 workers: 3 sessions open (each confirmed at
        the server, spread over both workers), the 4th is refused with cause
        max_connections although its worker holds at most 2 of them; once one
        session has closed, a new client is admitted."""
        srv = self.server(AcceptServer)
        cfg = config([client_opts(route(free_port(), [srv.port]), max_connections=3)],
                     workers=2)
        admin = with_admin(cfg)
        d = self.start_lifeline(cfg)
        port = listen_port(d)

        # The kernel spreads connections over the workers' listeners by hash
        # (SO_REUSEPORT). Replace sessions until the 3 open ones are on both
        # workers, so the refusal below can only come from the shared count.
        # Each try lands on a given worker with probability ~1/2.
        open_ = [self.open_session(d, srv, port, i) for i in range(3)]
        n = 3
        for _ in range(40):
            workers = {s["worker"] for s in sessions(admin)}
            if len(workers) == 2:
                break
            self.close_session(d, *open_.pop(0))
            open_.append(self.open_session(d, srv, port, n))
            n += 1
        else:
            self.fail("the 3 sessions never spread over both workers in 40 tries")
        listed = sessions(admin)
        self.assertEqual(len(listed), 3, listed)
        accepted = srv.accepted_count()
        self.assertEqual(accepted, n)

        me, rec = self.assertRefused(d, port, "max_connections")
        self.assertEqual(rec["suppressed"], 0, rec)
        self.assertNoCloseLine(d, me)
        self.assertEqual(len(sessions(admin)), 3)
        self.assertDeniedMetrics(admin, max_connections=1)
        self.assertEqual(sample(metrics(admin), "lifeline_sessions_active", route="r"), 3)

        # Give one back: its slot is free once its session has closed.
        self.close_session(d, *open_.pop(0))
        open_.append(self.open_session(d, srv, port, "after close"))
        self.assertEqual(srv.accepted_count(), accepted + 1)
        # Full again: refused (its line may be rate-limited: a second denial
        # on the same worker within a second is only counted).
        how, me2 = refused(port)
        self.assertIn(how, ("reset", "eof"))
        wait_until(lambda: sample(metrics(admin), "lifeline_denied_total", route="r",
                                  cause="max_connections") == 2,
                   scaled(5), what="the second denial counted")
        self.assertEqual(srv.accepted_count(), accepted + 1)

        ms = self.assertDeniedMetrics(admin, max_connections=2)
        self.assertEqual(sample(ms, "lifeline_sessions_active", route="r"), 3)
        self.assertEqual(sample(ms, "lifeline_session_closes_total", route="r",
                                reason="client_eof"), n - 3 + 1)
        self.assertIn(len(d.find("connection denied")), (1, 2))
        self.assertNoCloseLine(d, me2)
        for cli, conn in open_:
            cli.close()

    def test_max_per_address(self):
        """max_per_address 2: two clients from 127.0.0.1 admitted, a third
        refused (cause max_per_address) while a client from 127.0.0.3 is
        admitted; when one of the two closes, 127.0.0.1 may connect again."""
        srv = self.server(AcceptServer)
        cfg = config([client_opts(route(free_port(), [srv.port]), max_per_address=2)],
                     workers=2)
        admin = with_admin(cfg)
        d = self.start_lifeline(cfg)
        port = listen_port(d)

        a1, c1 = self.open_session(d, srv, port, "a1")
        a2, _ = self.open_session(d, srv, port, "a2")
        me, rec = self.assertRefused(d, port, "max_per_address")
        self.assertTrue(me.startswith("127.0.0.1:"), me)
        self.assertEqual(srv.accepted_count(), 2)
        b1, _ = self.open_session(d, srv, port, "b1", src="127.0.0.3")
        self.assertEqual(srv.accepted_count(), 3)
        self.assertNoCloseLine(d, me)
        self.assertDeniedMetrics(admin, max_per_address=1)

        self.close_session(d, a1, c1)
        self.open_session(d, srv, port, "a3")
        self.assertEqual(srv.accepted_count(), 4)
        ms = self.assertDeniedMetrics(admin, max_per_address=1)
        self.assertEqual(sample(ms, "lifeline_sessions_active", route="r"), 3)
        self.assertEqual(len(d.find("connection denied")), 1)


# --------------------------------------------------------------------------
# the rate-limited log line


class DeniedLog(AccessCase):

    N = 200

    def flood(self, port, n):
        """n refused connections, one after another, each waited for until
        lifeline has closed it (so every one is accepted, judged and counted)."""
        for i in range(n):
            how, _ = refused(port)
            self.assertIn(how, ("reset", "eof"), f"connection {i}")

    def trickle(self, port, seconds, every=0.01):
        """Refused connections one every `every` seconds for `seconds`: a
        flood that lasts long enough for the one-a-second limit to show.
        Returns how many were made."""
        n = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            how, _ = refused(port)
            self.assertIn(how, ("reset", "eof"), f"connection {n}")
            n += 1
            time.sleep(every)
        return n

    def denied_count(self, admin, cause):
        return sample(metrics(admin), "lifeline_denied_total", route="r", cause=cause)

    def test_flood_gives_few_lines(self):
        """200 refused connections in a tight loop on one worker: a handful of
        `connection denied` lines at least ~1 s apart, lifeline_denied_total
        exactly 200, no `session closed` line; once the second is over, a
        `log lines suppressed` line counts the rest. Then 2.5 s of steady
        denials: one line a second. Lines + suppressed account for every
        denial."""
        srv = self.server(AcceptServer)
        cfg = config([client_opts(route(free_port(), [srv.port]), allow=["127.0.0.2"])],
                     workers=1)
        admin = with_admin(cfg)
        d = self.start_lifeline(cfg)
        port = listen_port(d)

        t0 = time.monotonic()
        self.flood(port, self.N)
        elapsed = time.monotonic() - t0
        wait_until(lambda: self.denied_count(admin, "allow") >= self.N,
                   scaled(5), what=f"{self.N} denials counted")
        lines = d.find("connection denied")
        # One line when the flood starts, then at most one a second.
        self.assertGreaterEqual(len(lines), 1)
        self.assertLessEqual(len(lines), min(10, int(elapsed) + 2),
                             f"{len(lines)} lines in {elapsed:.2f} s")
        self.assertEqual(lines[0]["suppressed"], 0, lines[0])
        self.assertSpacing(lines, workers=1)
        self.assertDeniedMetrics(admin, allow=self.N)
        self.assertEqual(d.find("session closed"), [])
        self.assertEqual(srv.accepted_count(), 0)

        # The rest are counted: once the second is over, one line says how
        # many were not logged.
        flushed = d.wait_log("log lines suppressed", timeout=scaled(3), kind="connection denied")
        self.assertEqual(flushed["count"], self.N - len(lines), flushed)
        # A second on the daemon's loop clock (cached per loop turn), read
        # off wall-clock log stamps written later in their turns: a few ms
        # of slack.
        self.assertGreaterEqual(self.ts(flushed) - self.ts(lines[0]), 0.95, (lines[0], flushed))
        self.assertEqual(self.accounted(d), self.N, "logged + suppressed must account for every denial")

        # Steady denials for 2.5 s: a line at ~1 s and ~2 s, none in between.
        before = len(d.find("connection denied"))
        n = self.trickle(port, 2.5)
        wait_until(lambda: self.denied_count(admin, "allow") >= self.N + n,
                   scaled(5), what="the trickle counted")
        lines = d.find("connection denied")
        self.assertIn(len(lines) - before, (2, 3, 4), lines[before - 1:])
        self.assertSpacing(lines, workers=1)
        # Every denial is a line, or counted in one.
        wait_until(lambda: self.accounted(d) == self.N + n, scaled(3),
                   what="every denial logged or counted")
        self.assertDeniedMetrics(admin, allow=self.N + n)
        self.assertEqual(d.find("session closed"), [])
        self.assertEqual(srv.accepted_count(), 0)

    def accounted(self, d):
        lines = d.find("connection denied")
        flushes = d.find("log lines suppressed", kind="connection denied")
        return len(lines) + sum(r["suppressed"] for r in lines) + sum(r["count"] for r in flushes)

    def test_flood_two_workers(self):
        """The same on 2 workers (cause max_connections: the route is held
        full): each worker limits its own lines, so among any 3 consecutive
        lines two come from one worker and span at least ~1 s; every denial
        is counted."""
        srv = self.server(AcceptServer)
        cfg = config([client_opts(route(free_port(), [srv.port]), max_connections=1)],
                     workers=2)
        admin = with_admin(cfg)
        d = self.start_lifeline(cfg)
        port = listen_port(d)
        holder, conn = self.open_session(d, srv, port, "holder")  # the route is now full

        t0 = time.monotonic()
        self.flood(port, self.N)
        n = self.N + self.trickle(port, 2.5)  # the loop clock shows over a longer flood
        elapsed = time.monotonic() - t0
        wait_until(lambda: self.denied_count(admin, "max_connections") >= n,
                   scaled(5), what=f"{n} denials counted")
        lines = d.find("connection denied")
        self.assertGreaterEqual(len(lines), 2)
        self.assertLessEqual(len(lines), 2 * (int(elapsed) + 1),
                             f"{len(lines)} lines in {elapsed:.2f} s")
        self.assertSpacing(lines, workers=2)
        for r in lines:
            self.assertEqual(r["cause"], "max_connections", r)
        self.assertLessEqual(self.accounted(d), n)
        self.assertDeniedMetrics(admin, max_connections=n)
        self.assertEqual(srv.accepted_count(), 1)
        self.assertEqual(d.find("session closed"), [])
        self.close_session(d, holder, conn)

    def assertSpacing(self, lines, workers):
        """With one line a second per worker, among any workers+1 consecutive
        lines two share a worker, so the group spans at least ~1 s (log
        timestamps are wall-clock ms; the daemon measures on its loop clock,
        so allow some slack)."""
        times = [self.ts(r) for r in lines]
        for i in range(len(times) - workers):
            self.assertGreaterEqual(times[i + workers] - times[i], 0.9,
                                    f"lines {i} and {i + workers} too close: {lines}")

    @staticmethod
    def ts(rec):
        return log_time(rec)


# --------------------------------------------------------------------------
# privilege drop


def _proc_ids(pid, key):
    """The four ids (real, effective, saved, filesystem) of a Uid:/Gid: line."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return [int(x) for x in line.split()[1:5]]
    raise AssertionError(f"no {key} line in /proc/{pid}/status")


def _free_low_port():
    """A port in 900-999 that 127.0.0.1 can bind now (we are root), or None."""
    for p in range(900, 1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, p))
                return p
            except OSError:
                continue
    return None


class Privileges(AccessCase):

    def make_user(self):
        name = f"llt{os.getpid()}"
        r = subprocess.run(["useradd", "--system", "--no-create-home",
                            "--shell", "/usr/sbin/nologin", name],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            self.skipTest(f"useradd failed: {r.stderr.strip()}")
        self.addCleanup(subprocess.run, ["userdel", name], capture_output=True, timeout=30)
        return pwd.getpwnam(name)

    def drop_and_relay(self, low):
        """As root with "user": a temporary system user: lifeline binds its
        listeners (one on port `low` when given), logs `dropped privileges`
        with that uid and gid, runs with that uid (and gid) as real,
        effective and saved id in every thread, and still relays on every
        route."""
        if os.geteuid() != 0:
            self.skipTest("needs root: the privilege drop is a switch from root")
        pw = self.make_user()
        echo = self.server(EchoServer)
        routes = [route(free_port(), [echo.port], name="high")]
        if low is not None:
            routes.append(route(low, [echo.port], name="low"))
        cfg = config(routes, workers=2)
        cfg["user"] = pw.pw_name
        admin = with_admin(cfg)
        d = self.start_lifeline(cfg)

        rec = d.wait_log("dropped privileges")
        self.assertEqual(rec["level"], "info", rec)
        self.assertEqual(rec["uid"], pw.pw_uid, rec)
        self.assertEqual(rec["gid"], pw.pw_gid, rec)
        # Every socket was bound before the drop, which came before `ready`.
        msgs = [r["msg"] for r in d.find()]
        last_listening = max(i for i, m in enumerate(msgs) if m == "listening")
        self.assertLess(last_listening, msgs.index("dropped privileges"), msgs)
        self.assertLess(msgs.index("dropped privileges"), msgs.index("ready"), msgs)
        self.assertEqual(_proc_ids(d.pid, "Uid"), [pw.pw_uid] * 4)
        self.assertEqual(_proc_ids(d.pid, "Gid"), [pw.pw_gid] * 4)
        tasks = os.listdir(f"/proc/{d.pid}/task")
        self.assertGreaterEqual(len(tasks), 3)  # main + 2 workers
        for tid in tasks:
            self.assertEqual(_proc_ids(f"{d.pid}/task/{tid}", "Uid"), [pw.pw_uid] * 4, tid)

        for i, r in enumerate(routes):
            cli = self.client(listen_port(d, i))
            echo_ok(cli, r["name"])
            name = addr_str(cli.getsockname())
            cli.close()
            self.assertSessionClosed(d, name, "client_eof", route=r["name"])
        self.assertIn("lifeline_workers", http_get(admin, "/metrics"))

    def test_drop_to_user(self):
        self.drop_and_relay(low=None)

    def test_low_port_then_drop(self):
        """A listener on a port below 1024 (bound as root), then the drop."""
        if os.geteuid() != 0:
            self.skipTest("needs root: the privilege drop is a switch from root")
        low = _free_low_port()
        if low is None:
            self.skipTest("no free port in 900-999 on 127.0.0.1")
        self.drop_and_relay(low)

    def test_unknown_user(self):
        """"user": "no-such-user-xyz": `cannot drop privileges`, exit 1, never
        ready."""
        srv = self.server(AcceptServer)
        cfg = config([route(free_port(), [srv.port])])
        cfg["user"] = "no-such-user-xyz"
        d = self.start_lifeline(cfg, wait_ready=False, expect_errors=True)
        self.assertEqual(d.wait_exit(scaled(10)), 1, d.log_tail())
        errs = d.find("cannot drop privileges")
        self.assertEqual(len(errs), 1, d.log_tail())
        self.assertEqual(errs[0]["level"], "error", errs[0])
        self.assertEqual(errs[0].get("user"), "no-such-user-xyz", errs[0])
        self.assertEqual(d.find("ready"), [])
        self.assertEqual(d.find("dropped privileges"), [])


if __name__ == "__main__":
    unittest.main()
