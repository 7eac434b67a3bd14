"""Connecting upstream: retries with backoff, failover, connect timeout,
ephemeral source ports and source_address, and a flapping server with
upstream.on_close "reconnect"."""

import os
import re
import select
import socket
import struct
import threading
import time
import unittest

from harness import (LOOPBACK, KiB, AcceptServer, EchoServer, LifelineTestCase, addr_str,
                     bound_client_socket, config, connect, ephemeral_range, free_port,
                     listen_port, log_time, recv_exact, route, scaled, wait_closed, wait_until)


class UpstreamDown(LifelineTestCase):

    def test_every_try_refused(self):
        """No listener on any server; retries 2, backoff 50 ms: three tries
        (servers[0], servers[1], servers[0]), the client is closed after at
        least 50 + 100 ms, one close line with upstream_connect_failed."""
        dead = [free_port(), free_port()]
        servers = [f"{LOOPBACK}:{p}" for p in dead]
        d = self.start_lifeline(config([route(free_port(), servers, retries=2,
                                              retry_backoff_ms=50)]))
        start = time.monotonic()
        cli = self.client(listen_port(d))
        client = addr_str(cli.getsockname())
        cli.sendall(b"hello?")
        how = wait_closed(cli, timeout=scaled(10))
        elapsed = time.monotonic() - start
        self.assertIn(how, ("eof", "reset"))

        rec = self.assertSessionClosed(d, client, "upstream_connect_failed",
                                       upstream_local_port=0, bytes_from_server=0)
        self.assertGreaterEqual(elapsed, 0.150, "backoff 50 + 100 ms not respected")
        self.assertGreaterEqual(rec["duration_ms"], 150, rec)
        fails = d.find("upstream connect failed", client=client)
        self.assertEqual([f["attempt"] for f in fails], [1, 2, 3], fails)
        self.assertEqual([f["server"] for f in fails], [servers[0], servers[1], servers[0]])
        for f in fails:
            self.assertEqual(f["route"], "r")
            self.assertTrue(f.get("error"), f)
        self.assertEqual(len(d.find("session closed", client=client)), 1)

    def test_backoff_doubles(self):
        """retries 3, backoff 100 ms: waits of 100, 200 and 400 ms between the
        four tries, seen in the timing of the warn lines' arrival."""
        d = self.start_lifeline(config([route(free_port(), [free_port()], retries=3,
                                              retry_backoff_ms=100)]))
        cli = self.client(listen_port(d))
        client = addr_str(cli.getsockname())
        fails = d.wait_count(4, "upstream connect failed", timeout=scaled(10), client=client)
        self.assertIn(wait_closed(cli, timeout=scaled(10)), ("eof", "reset"))
        self.assertEqual([f["attempt"] for f in fails], [1, 2, 3, 4])
        # The lines' own timestamps (ms) show the waits between tries.
        stamps = [log_time(f) for f in fails]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        for gap, want in zip(gaps, (0.1, 0.2, 0.4)):
            self.assertGreaterEqual(gap, want - 0.005, f"gaps {gaps}")
            self.assertLess(gap, want + scaled(0.5), f"gaps {gaps}")
        self.assertSessionClosed(d, client, "upstream_connect_failed")


class Failover(LifelineTestCase):

    def test_dead_then_live(self):
        """servers [dead, live], retries 1: the second try reaches the live
        server and the session relays both ways."""
        dead = free_port()
        echo = self.server(EchoServer)
        d = self.start_lifeline(config([route(free_port(), [dead, echo.port], retries=1,
                                              retry_backoff_ms=50)]))
        cli = self.client(listen_port(d))
        client = addr_str(cli.getsockname())
        msg = os.urandom(100 * KiB)
        cli.sendall(msg)
        self.assertEqual(recv_exact(cli, len(msg), timeout=scaled(10)), msg)
        cli.shutdown(socket.SHUT_WR)
        self.assertEqual(wait_closed(cli, timeout=scaled(10)), "eof")
        rec = self.assertSessionClosed(d, client, "client_eof", bytes_from_client=len(msg),
                                       bytes_from_server=len(msg))
        self.assertNotEqual(rec["upstream_local_port"], 0)
        fails = d.find("upstream connect failed", client=client)
        self.assertEqual([(f["attempt"], f["server"]) for f in fails],
                         [(1, f"{LOOPBACK}:{dead}")])
        self.assertEqual(echo.accepted, 1)

    def test_every_session_starts_at_servers_0(self):
        """Failover is per session: a second session tries servers[0] again."""
        dead = free_port()
        echo = self.server(EchoServer)
        d = self.start_lifeline(config([route(free_port(), [dead, echo.port], retries=1,
                                              retry_backoff_ms=20)]))
        for i in range(2):
            with connect(listen_port(d), timeout=scaled(10)) as cli:
                client = addr_str(cli.getsockname())
                cli.sendall(b"ping %d" % i)
                self.assertEqual(recv_exact(cli, 6), b"ping %d" % i)
            fails = d.wait_count(1, "upstream connect failed", client=client)
            self.assertEqual([(f["attempt"], f["server"]) for f in fails],
                             [(1, f"{LOOPBACK}:{dead}")])


class ConnectTimeout(LifelineTestCase):

    def blackhole(self):
        """A listener with backlog 0 that never accepts, its accept queue
        filled first: further SYNs are dropped, connects hang."""
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.track(srv)
        srv.bind((LOOPBACK, 0))
        srv.listen(0)
        port = srv.getsockname()[1]
        full = False
        for _ in range(8):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.settimeout(0.3)
            try:
                probe.connect((LOOPBACK, port))
                self.track(probe)          # sits in the accept queue
            except socket.timeout:
                probe.close()
                full = True                # this SYN was dropped: the queue is full
                break
        self.assertTrue(full, "could not fill the accept queue of the black hole")
        return port

    def test_black_holed_upstream(self):
        """connect_timeout_ms 300, retries 0: the client is closed about
        300 ms after connecting, the warn line names a timeout."""
        port = self.blackhole()
        d = self.start_lifeline(config([route(free_port(), [port], connect_timeout_ms=300,
                                              retries=0)]))
        start = time.monotonic()
        cli = self.client(listen_port(d))
        client = addr_str(cli.getsockname())
        cli.sendall(b"anyone there?")
        self.assertIn(wait_closed(cli, timeout=scaled(10)), ("eof", "reset"))
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 0.29)
        self.assertLess(elapsed, 0.3 + scaled(1.5), "connect timeout not enforced")
        rec = self.assertSessionClosed(d, client, "upstream_connect_failed",
                                       upstream_local_port=0)
        fails = d.find("upstream connect failed", client=client)
        self.assertEqual(len(fails), 1, fails)
        self.assertEqual(fails[0]["attempt"], 1)
        self.assertEqual(fails[0]["server"], f"{LOOPBACK}:{port}")
        self.assertRegex(fails[0]["error"], re.compile(r"time[ds]?[ _-]?out", re.I))
        self.assertGreaterEqual(rec["duration_ms"], 290, rec)


class SourcePort(LifelineTestCase):

    def test_upstream_uses_ephemeral_port_not_clients(self):
        """A client on a fixed source port (20000-30000): the server sees a
        different, ephemeral peer port, from 127.0.0.1, the one the close
        line reports as upstream_local_port. Same with source_address set."""
        srv_plain = self.server(AcceptServer)
        srv_src = self.server(AcceptServer)
        d = self.start_lifeline(config([
            route(free_port(), [srv_plain.port], name="plain"),
            route(free_port(), [srv_src.port], name="sourced", source_address=LOOPBACK),
        ]))
        rng = ephemeral_range()
        for i, srv in enumerate((srv_plain, srv_src)):
            with self.subTest(route=("plain", "sourced")[i]):
                sock = self.track(bound_client_socket(20000, 30000))
                fixed = sock.getsockname()[1]
                cli = connect(listen_port(d, i), sock=sock, timeout=scaled(10))
                cli.sendall(b"from a fixed port")
                conn, peer = srv.accept()
                self.track(conn)
                self.assertEqual(recv_exact(conn, 17), b"from a fixed port")
                self.assertEqual(peer[0], LOOPBACK)
                self.assertNotEqual(peer[1], fixed)
                if rng:
                    self.assertTrue(rng[0] <= peer[1] <= rng[1],
                                    f"upstream port {peer[1]} outside ephemeral range {rng}")
                cli.close()
                self.assertEqual(wait_closed(conn), "eof")
                conn.close()
                rec = self.assertSessionClosed(d, f"{LOOPBACK}:{fixed}", "client_eof")
                self.assertEqual(rec["upstream_local_port"], peer[1], rec)
                self.assertEqual(rec["route"], ("plain", "sourced")[i])


class FlappingServer:
    """A server whose every connection ends `hold` seconds after it is
    accepted: closed (FIN) or, with reset=True, reset (SO_LINGER 0). Counts
    what it accepted; nothing is read."""

    def __init__(self, hold=0.0, reset=False):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((LOOPBACK, 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.hold = hold
        self.reset = reset
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        held = []  # (deadline, conn)
        while not self._stop.is_set():
            timeout = 0.02 if not held else max(0.0, min(0.02, held[0][0] - time.monotonic()))
            if select.select([self.listener], [], [], timeout)[0]:
                conn, _ = self.listener.accept()
                self.accepted += 1
                if self.reset:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                held.append((time.monotonic() + self.hold, conn))
            now = time.monotonic()
            while held and held[0][0] <= now:
                held.pop(0)[1].close()
        for _, conn in held:
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()


def reconnect_route(port, server_port, retries, backoff_ms, **kw):
    r = route(port, [server_port], retries=retries, retry_backoff_ms=backoff_ms, **kw)
    r["upstream"]["on_close"] = "reconnect"
    return r


class Flapping(LifelineTestCase):
    """upstream.on_close "reconnect" against a server that ends every
    connection at once: each such connection is a failed try, so the
    backoff grows and `retries` ends the session, instead of a redial loop."""

    def check_gives_up(self, reset):
        srv = self.server(FlappingServer, reset=reset)
        d = self.start_lifeline(config([reconnect_route(free_port(), srv.port, 3, 50)]))
        start = time.monotonic()
        cli = self.client(listen_port(d))
        client = addr_str(cli.getsockname())
        cli.sendall(b"are you there?")
        self.assertIn(wait_closed(cli, timeout=scaled(10)), ("eof", "reset"))
        elapsed = time.monotonic() - start
        rec = self.assertSessionClosed(d, client, "upstream_connect_failed")
        # The first try and 3 retries: four connections, not thousands.
        self.assertEqual(srv.accepted, 4, f"{srv.accepted} server connections")
        # Each was a failed try: ended early (or, for a reset that beat the
        # handshake's end, a failed connect), logged with its attempt number.
        tries = sorted(d.find("upstream closed early", client=client) +
                       d.find("upstream connect failed", client=client), key=log_time)
        self.assertEqual([t["attempt"] for t in tries], [1, 2, 3, 4], tries)
        for t in tries:
            self.assertLess(t.get("lived_ms", 0), 1000, t)
            # A server that closes with our bytes unread sends a reset.
            self.assertIn(t["error"], ("connection reset by peer",) if reset else
                          ("end of file", "connection reset by peer"), t)
        # Waits of 50, 100 and 200 ms between the four connections.
        self.assertGreaterEqual(elapsed, 0.35, "backoff not applied")
        self.assertGreaterEqual(rec["duration_ms"], 350, rec)
        stamps = [log_time(t) for t in tries]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        for gap, want in zip(gaps, (0.05, 0.1, 0.2)):
            self.assertGreaterEqual(gap, want - 0.005, f"gaps {gaps}")
        self.assertEqual(d.find("upstream closed, reconnecting"), [])
        self.assertEqual(len(d.find("session closed")), 1)

    def test_server_that_closes_at_once(self):
        """Every connection closed (FIN) right after accept: 4 connections
        with growing pauses, then upstream_connect_failed."""
        self.check_gives_up(reset=False)

    def test_server_that_resets_at_once(self):
        """The same with a reset instead of a FIN."""
        self.check_gives_up(reset=True)

    def test_long_lived_connection_restarts_the_count(self):
        """A connection that lived past the 1 s bound proved the server up:
        the next reconnect starts a fresh count. retries 1, and the server
        ends each connection after 1.2 s: after three such ends the session
        still stands, and each reconnect was immediate."""
        srv = self.server(FlappingServer, hold=1.2)
        d = self.start_lifeline(config([reconnect_route(free_port(), srv.port, 1, 500)]))
        cli = self.client(listen_port(d))
        client = addr_str(cli.getsockname())
        cli.sendall(b"long lived")
        recs = d.wait_count(3, "upstream closed, reconnecting", timeout=scaled(10), client=client)
        wait_until(lambda: srv.accepted >= 4, scaled(5), "the fourth server connection")
        self.assertEqual(d.find("upstream closed early"), [])
        self.assertEqual(d.find("session closed"), [])
        for r in recs:
            self.assertIn(r["error"], ("end of file", "connection reset by peer"), r)
        # Immediate: no backoff after a connection that proved the server up.
        self.assertEqual(d.find("upstream connect failed"), [])

    def test_client_fin_racing_a_server_close(self):
        """A server that reads the client's request and closes at once,
        while the client sends its FIN: whichever lifeline sees first (the
        server's EOF, which starts a reconnect, or the client's FIN), 200
        sessions end client_eof, and the server got every request. (A
        session ends upstream_reset only when the server resets it after
        the client has finished sending: bytes were lost then.)"""
        lst = self.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        lst.bind((LOOPBACK, 0))
        lst.listen(512)
        got = []

        def serve():
            while True:
                try:
                    c, _ = lst.accept()
                except OSError:
                    return
                with c:
                    c.settimeout(scaled(5))
                    try:
                        got.append(recv_exact(c, 5, timeout=scaled(5)))
                    except (AssertionError, OSError):
                        got.append(b"")  # a reconnect after the client finished
        threading.Thread(target=serve, daemon=True).start()
        d = self.start_lifeline(config([reconnect_route(free_port(), lst.getsockname()[1], 3,
                                                        10)], workers=2))
        for i in range(200):
            with connect(listen_port(d), timeout=scaled(10)) as c:
                c.sendall(b"hello")
                if i % 2:
                    time.sleep(0.0002 * (i % 7))  # vary which side lifeline sees first
                c.shutdown(socket.SHUT_WR)
                self.assertEqual(wait_closed(c, timeout=scaled(10)), "eof")
        closes = d.wait_count(200, "session closed", timeout=scaled(10))
        self.assertEqual({r["reason"] for r in closes}, {"client_eof"})
        self.assertEqual(got.count(b"hello"), 200)

    def test_many_sessions_log_within_bound(self):
        """20 sessions against a server that closes at once, retries 30 and
        no backoff: 620 failed tries in a burst, but at most 10 lines a second
        (per worker) tell of them; the rest are counted, and the count is
        logged once the second is over."""
        srv = self.server(FlappingServer)
        d = self.start_lifeline(config([reconnect_route(free_port(), srv.port, 30, 0)]))
        clients = []
        for _ in range(20):
            c = self.client(listen_port(d))
            c.sendall(b"x")
            clients.append(c)
        for c in clients:
            self.assertIn(wait_closed(c, timeout=scaled(20)), ("eof", "reset"))
        d.wait_count(20, "session closed", timeout=scaled(10))
        self.assertEqual(srv.accepted, 20 * 31)
        self.assertEqual({r["reason"] for r in d.find("session closed")}, {"upstream_connect_failed"})
        flushed = d.wait_log("log lines suppressed", timeout=scaled(3), kind="upstream")
        lines = d.find("upstream closed early") + d.find("upstream connect failed")
        # At most 10 in any one-second window.
        stamps = sorted(log_time(r) for r in lines)
        for i in range(len(stamps) - 10):
            self.assertGreaterEqual(stamps[i + 10] - stamps[i], 0.999, stamps)
        # Every failed try is either a line or counted.
        counted = len(lines) + sum(r["suppressed"] for r in lines) + flushed["count"]
        self.assertEqual(counted, 20 * 31, f"{len(lines)} lines, {flushed}")


if __name__ == "__main__":
    unittest.main()
