"""Live reload on SIGHUP: a valid file applies to new sessions while the
established ones keep their settings and every byte; an invalid one is
logged as --check reports it and changes nothing; routes come and go;
counters and limits follow a route by name across the reload."""

import json
import shutil
import signal
import socket
import subprocess
import threading
import unittest

from harness import (LOOPBACK, KiB, AcceptServer, EchoServer, addr_str, config, connect,
                     free_port, listening, recv_exact, route, run_cli, scaled, wait_closed,
                     wait_until, write_config)
from test_access import refused
from test_admin import AdminCase, with_admin


def fnv1a64(data):
    """The hash lifeline_config_info names a loaded file by."""
    h = 0xcbf29ce484222325  # the FNV-1a 64 offset basis
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


class Pinger(threading.Thread):
    """Keeps one session busy: sends a block, reads its echo back, checks
    every byte, again and again until stopped."""

    def __init__(self, sock, seed, block=4 * KiB):
        super().__init__(daemon=True)
        self.sock = sock
        self.block = bytes((seed + i) & 0xFF for i in range(block))
        self.stop = threading.Event()
        self.rounds = 0
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set():
                self.sock.sendall(self.block)
                if recv_exact(self.sock, len(self.block), timeout=scaled(10)) != self.block:
                    raise AssertionError("echo differs from what was sent")
                self.rounds += 1
        except Exception as e:  # reported by the test
            self.error = e

    def finish(self, timeout):
        self.stop.set()
        self.join(timeout)
        return self.error


class Reload(AdminCase):

    def reload(self, d, cfg, done="reloaded"):
        """Writes cfg over the running file, sends SIGHUP and waits for the
        outcome line ("reloaded" or "reload failed: ...")."""
        before = len(d.find(done))
        write_config(self.tmpdir, cfg)
        d.signal(signal.SIGHUP)
        recs = d.wait_count(before + 1, done, timeout=scaled(10))
        return recs[-1]

    def test_reload_while_sessions_flow(self):
        """Twenty sessions echo through server A without pause while the
        config switches the route to server B and turns on a 300 ms silence
        limit. Not a byte is lost, no session is closed, the old sessions
        keep running past 300 ms of silence (they keep their settings), and
        new sessions reach B and are held to the new limit."""
        a = self.server(EchoServer)
        b = self.server(EchoServer)
        port = free_port()
        cfg = with_admin(config([route(port, [a.port])], workers=2))
        d = self.start_lifeline(cfg)

        clients = [self.client(port) for _ in range(20)]
        pingers = [Pinger(c, i) for i, c in enumerate(clients)]
        for p in pingers:
            p.start()
        wait_until(lambda: all(p.rounds >= 3 for p in pingers), scaled(10), "traffic flowing")
        self.assertEqual(a.accepted, 20)

        new = json.loads(json.dumps(cfg))
        new["routes"][0]["upstream"]["servers"] = [f"{LOOPBACK}:{b.port}"]
        new["routes"][0]["client"] = {"heartbeat": {"silence_ms": 300}}
        rec = self.reload(d, new)
        with open(d.path, "rb") as f:
            new_hash = fnv1a64(f.read())
        self.assertEqual(rec["hash"], new_hash, rec)

        # Traffic goes on after the reload, on the same connections.
        marks = [p.rounds for p in pingers]
        wait_until(lambda: all(p.rounds >= m + 3 for p, m in zip(pingers, marks)), scaled(10),
                   "traffic flowing after the reload")
        for p in pingers:
            self.assertIsNone(p.finish(scaled(10)))
        self.assertEqual(d.find("session closed"), [], "a session was closed by the reload")

        # New sessions: server B, and the new silence limit.
        fresh = self.client(port)
        fresh.sendall(b"new")
        self.assertEqual(recv_exact(fresh, 3), b"new")
        self.assertEqual(b.accepted, 1)
        self.assertEqual(a.accepted, 20)
        self.assertSessionClosed(d, addr_str(fresh.getsockname()), "client_silence",
                                 timeout=scaled(5))
        self.assertIn(wait_closed(fresh, timeout=scaled(5)), ("eof", "reset"))

        # The old sessions, silent for longer than the fresh one lived, are
        # still there and relay.
        for i, c in enumerate(clients):
            c.sendall(b"still here %d" % i)
            want = b"still here %d" % i
            self.assertEqual(recv_exact(c, len(want)), want)
        self.assertEqual(len(d.find("session closed")), 1)

        m = self.metrics(d)
        self.assertEqual(m.get("lifeline_config_reloads_total", result="ok"), 1)
        self.assertEqual(m.get("lifeline_config_reloads_total", result="failed"), 0)
        self.assertEqual(m.get("lifeline_config_info", hash=new_hash), 1)
        # One route by name across the reload: its counters went on.
        self.assertEqual(m.get("lifeline_sessions_total", route="r"), 21)
        self.assertEqual(m.get("lifeline_sessions_active", route="r"), 20)
        self.assertEqual(m.get("lifeline_upstream_connect_attempts_total", route="r",
                               server=f"{LOOPBACK}:{a.port}"), 20)
        self.assertEqual(m.get("lifeline_upstream_connect_attempts_total", route="r",
                               server=f"{LOOPBACK}:{b.port}"), 1)

        # Each old session ends with every byte counted.
        sent = [sum(len(p.block) for _ in range(p.rounds)) + len(b"still here %d" % i)
                for i, p in enumerate(pingers)]
        for c in clients:
            c.shutdown(socket.SHUT_WR)
        for i, c in enumerate(clients):
            self.assertEqual(wait_closed(c, timeout=scaled(5)), "eof")
            self.assertSessionClosed(d, addr_str(c.getsockname()), "client_eof",
                                     timeout=scaled(5), bytes_from_client=sent[i],
                                     bytes_from_server=sent[i])

    def test_invalid_file_keeps_serving(self):
        """A file with errors: the same lines --check prints are logged, the
        reload counts as failed, and the running config goes on serving."""
        a = self.server(EchoServer)
        port = free_port()
        cfg = with_admin(config([route(port, [a.port])], workers=2))
        d = self.start_lifeline(cfg, expect_errors=True)
        with open(d.path, "rb") as f:
            old_hash = fnv1a64(f.read())

        bad = json.loads(json.dumps(cfg))
        bad["routes"][0]["upstream"]["servers"] = []
        bad["routes"][0]["buffer_bytes"] = "big"
        self.reload(d, bad, done="reload failed: keeping the running config")
        check = run_cli(["--check", "-c", d.path])
        self.assertEqual(check.returncode, 2)
        expected = check.stderr.strip().split("\n")
        self.assertEqual(len(expected), 2, check.stderr)
        logged = [r["error"] for r in d.find("invalid config", file=d.path)]
        self.assertEqual(logged, expected)

        # Unparseable JSON too.
        self.reload(d, "{\"routes\": [", done="reload failed: keeping the running config")
        self.assertEqual(len(d.find("invalid config")), 3)

        c = self.client(port)
        c.sendall(b"old config")
        self.assertEqual(recv_exact(c, 10), b"old config")
        m = self.metrics(d)
        self.assertEqual(m.get("lifeline_config_reloads_total", result="ok"), 0)
        self.assertEqual(m.get("lifeline_config_reloads_total", result="failed"), 2)
        self.assertEqual(m.get("lifeline_config_info", hash=old_hash), 1)

    def test_routes_added_and_removed(self):
        """Route "gone" is dropped and "new" added; "kept" stays on its
        socket. The dropped route refuses new connections at once, and its
        open session relays on until its client ends it."""
        a = self.server(EchoServer)
        p_kept, p_gone, p_new = free_port(), free_port(), free_port()
        cfg = with_admin(config([route(p_kept, [a.port], name="kept"),
                                 route(p_gone, [a.port], name="gone")], workers=2))
        d = self.start_lifeline(cfg)
        old = self.client(p_gone)
        old.sendall(b"before")
        self.assertEqual(recv_exact(old, 6), b"before")

        new = json.loads(json.dumps(cfg))
        new["routes"] = [route(p_new, [a.port], name="new"), route(p_kept, [a.port], name="kept")]
        self.reload(d, new)
        d.wait_log("stopped listening", route="gone", address=f"{LOOPBACK}:{p_gone}")
        self.assertEqual(len(d.find("listening", route="kept")), 1, "the kept route was bound again")
        self.assertTrue(listening(p_new))

        self.assertFalse(listening(p_gone))
        with self.assertRaises(ConnectionRefusedError):
            connect(p_gone, timeout=scaled(5)).close()
        for port in (p_new, p_kept):
            c = self.client(port)
            c.sendall(b"hello")
            self.assertEqual(recv_exact(c, 5), b"hello")

        old.sendall(b"after")
        self.assertEqual(recv_exact(old, 5), b"after")
        sessions = {s["route"] for s in self.sessions(d)}
        self.assertEqual(sessions, {"gone", "new", "kept"})
        old.shutdown(socket.SHUT_WR)
        self.assertEqual(wait_closed(old, timeout=scaled(5)), "eof")
        self.assertSessionClosed(d, addr_str(old.getsockname()), "client_eof",
                                 timeout=scaled(5), route="gone", bytes_from_client=11)

    def test_limit_spans_the_reload(self):
        """max_connections 2 counts the sessions of the route by name: two
        opened before a reload fill it for the connections after it."""
        a = self.server(EchoServer)
        port = free_port()
        cfg = with_admin(config([route(port, [a.port])], workers=2))
        cfg["routes"][0]["client"] = {"max_connections": 2}
        d = self.start_lifeline(cfg)
        held = [self.client(port) for _ in range(2)]
        for c in held:
            c.sendall(b"x")
            self.assertEqual(recv_exact(c, 1), b"x")

        new = json.loads(json.dumps(cfg))
        new["routes"][0]["buffer_bytes"] = 32768
        self.reload(d, new)
        self.assertIn(refused(port)[0], ("eof", "reset"))
        self.assertEqual(self.metrics(d).get("lifeline_denied_total", route="r",
                                             cause="max_connections"), 1)
        self.assertSlotGivenBack(d, held[0], port)

    def assertSlotGivenBack(self, d, held, port):
        """Closing a held session frees its slot: the next connection relays."""
        first = addr_str(held.getsockname())
        held.close()
        self.assertSessionClosed(d, first, "client_eof", timeout=scaled(5))
        again = self.client(port)
        again.sendall(b"y")
        self.assertEqual(recv_exact(again, 1), b"y")

    def test_limits_turned_on_count_open_sessions(self):
        """Sessions opened while the route had no limit count once a reload
        turns the limits on: with two open, max_connections 2 refuses a
        third at once, and so does max_per_address 2 on another route."""
        a = self.server(EchoServer)
        port, port2 = free_port(), free_port()
        cfg = with_admin(config([route(port, [a.port]), route(port2, [a.port], name="r2")],
                                workers=2))
        d = self.start_lifeline(cfg)
        held = [self.client(p) for p in (port, port, port2, port2)]
        for c in held:
            c.sendall(b"x")
            self.assertEqual(recv_exact(c, 1), b"x")

        new = json.loads(json.dumps(cfg))
        new["routes"][0]["client"] = {"max_connections": 2}
        new["routes"][1]["client"] = {"max_per_address": 2}
        self.reload(d, new)
        self.assertIn(refused(port)[0], ("eof", "reset"))
        self.assertIn(refused(port2)[0], ("eof", "reset"))
        m = self.metrics(d)
        self.assertEqual(m.get("lifeline_denied_total", route="r", cause="max_connections"), 1)
        self.assertEqual(m.get("lifeline_denied_total", route="r2", cause="max_per_address"), 1)
        # A slot given back by a session from before the reload is a slot.
        self.assertSlotGivenBack(d, held[0], port)

    def test_takeover_spans_the_reload(self):
        """identity "address": a client that connects again after a reload
        replaces its session from before it, which ends (replaced) before
        the new one reaches the new server."""
        a = self.server(EchoServer)
        b = self.server(AcceptServer)
        port = free_port()
        cfg = with_admin(config([route(port, [a.port])], workers=2))
        cfg["routes"][0]["client"] = {"identity": "address", "on_duplicate": "replace"}
        d = self.start_lifeline(cfg)
        old = self.client(port)
        old.sendall(b"x")
        self.assertEqual(recv_exact(old, 1), b"x")

        new = json.loads(json.dumps(cfg))
        new["routes"][0]["upstream"]["servers"] = [f"{LOOPBACK}:{b.port}"]
        self.reload(d, new)
        fresh = self.client(port)
        self.assertSessionClosed(d, addr_str(old.getsockname()), "replaced", timeout=scaled(5))
        self.assertIn(wait_closed(old, timeout=scaled(5)), ("eof", "reset"))
        conn, _ = b.accept(timeout=scaled(5))
        self.track(conn)
        fresh.sendall(b"to b")
        self.assertEqual(recv_exact(conn, 4), b"to b")
        self.assertEqual(self.metrics(d).get("lifeline_takeovers_total", route="r"), 1)

    def keepalive_on(self, port, client):
        """Does lifeline's socket of this client connection run a keepalive
        timer? (ss -o shows it; the kernel arms it once SO_KEEPALIVE is on.)"""
        cport = client.getsockname()[1]
        out = subprocess.run(["ss", "-tnoH", "state", "established", "sport", "=", f":{port}",
                              "dport", "=", f":{cport}"], capture_output=True, text=True,
                             check=True).stdout
        self.assertIn(f":{cport}", out, "no such connection in ss")
        return "timer:(keepalive" in out

    @unittest.skipIf(shutil.which("ss") is None, "ss (iproute2) is not installed")
    def test_keepalive_follows_the_config_of_the_session(self):
        """Keepalive is set on the listening socket and inherited by the
        connections it accepts: those before a reload that turns it off keep
        it, those after have none."""
        a = self.server(EchoServer)
        port = free_port()
        cfg = with_admin(config([route(port, [a.port])], workers=2))
        cfg["routes"][0]["client"] = {"heartbeat": {"keepalive_idle_ms": 7000,
                                                    "keepalive_interval_ms": 1000,
                                                    "keepalive_count": 3}}
        d = self.start_lifeline(cfg)
        old = [self.client(port) for _ in range(4)]  # both workers, most likely
        for c in old:
            c.sendall(b"o")
            self.assertEqual(recv_exact(c, 1), b"o")
            self.assertTrue(self.keepalive_on(port, c))

        new = json.loads(json.dumps(cfg))
        new["routes"][0]["client"] = {"heartbeat": {"keepalive_idle_ms": 0}}
        self.reload(d, new)
        fresh = [self.client(port) for _ in range(4)]
        for c in fresh:
            c.sendall(b"n")
            self.assertEqual(recv_exact(c, 1), b"n")
            self.assertFalse(self.keepalive_on(port, c))
        for c in old:
            self.assertTrue(self.keepalive_on(port, c))

    def test_restart_only_keys(self):
        """workers, user, group and admin need a restart: a reload that
        changes them says so by key and keeps the running values, and
        applies the rest."""
        a = self.server(EchoServer)
        b = self.server(EchoServer)
        port = free_port()
        cfg = with_admin(config([route(port, [a.port])], workers=2))
        d = self.start_lifeline(cfg)
        new = json.loads(json.dumps(cfg))
        new["workers"] = 3
        new["admin"]["listen"] = f"{LOOPBACK}:{free_port()}"
        new["routes"][0]["upstream"]["servers"] = [f"{LOOPBACK}:{b.port}"]
        self.reload(d, new)
        keys = [r["key"] for r in d.find("config change needs a restart: keeping the running value")]
        self.assertEqual(sorted(keys), ["admin", "workers"])
        # The admin endpoint is still where it was (d.cfg is the old config).
        self.assertEqual(self.metrics(d).get("lifeline_workers"), 2)
        c = self.client(port)
        c.sendall(b"z")
        self.assertEqual(recv_exact(c, 1), b"z")
        self.assertEqual(b.accepted, 1)

    def test_admin_and_reload_hand_offs_under_load(self):
        """For a few seconds at once: /sessions and /metrics in a loop, kills
        of random sessions, a SIGHUP every 100 ms, sessions coming and going,
        on 3 workers. Every answer is well-formed, lifeline exits 0, and (the
        point under ThreadSanitizer) its stderr holds nothing but log lines:
        the hand-off of each answer from the workers to the supervisor is
        ordered where the sanitizer can see it."""
        echo = self.server(EchoServer)
        port = free_port()
        cfg = with_admin(config([route(port, [echo.port])], workers=3))
        d = self.start_lifeline(cfg)
        stop = threading.Event()
        errors = []

        def guard(fn):
            def run():
                try:
                    while not stop.is_set():
                        fn()
                except Exception as e:  # reported below
                    errors.append(repr(e))
            t = threading.Thread(target=run, daemon=True)
            t.start()
            return t

        def sessions_and_metrics():
            doc = self.sessions(d)
            self.assertIsInstance(doc, list)
            self.metrics(d)

        def kills():
            doc = self.sessions(d)
            for rec in doc[:3]:
                r = self.request(d, "POST", f"/sessions/{rec['id']}/close")
                self.assertIn(r.status, (200, 404), r)

        def reloads():
            d.signal(signal.SIGHUP)
            stop.wait(0.1)

        def churn():
            with connect(port, timeout=scaled(10)) as c:
                c.sendall(b"ping")
                try:
                    recv_exact(c, 4, timeout=scaled(10))
                except (AssertionError, OSError):
                    pass  # killed meanwhile

        threads = [guard(sessions_and_metrics), guard(kills), guard(reloads),
                   guard(churn), guard(churn)]
        stop.wait(scaled(4))
        stop.set()
        for t in threads:
            t.join(scaled(20))
        self.assertEqual(errors, [])
        self.assertGreater(len(d.find("reloaded")), 5)
        self.assertEqual(d.stop(), 0, d.log_tail())
        self.assertEqual([l for l in d.lines if not l.startswith("{")], [])

    def test_sighup_storm(self):
        """Ten SIGHUPs back to back: every one is served or folded into the
        next reload, nothing is dropped, and the last file wins."""
        a = self.server(EchoServer)
        b = self.server(EchoServer)
        port = free_port()
        cfg = with_admin(config([route(port, [a.port])], workers=2))
        d = self.start_lifeline(cfg)
        c = self.client(port)
        new = json.loads(json.dumps(cfg))
        new["routes"][0]["upstream"]["servers"] = [f"{LOOPBACK}:{b.port}"]
        write_config(self.tmpdir, new)
        for _ in range(10):
            d.signal(signal.SIGHUP)
        d.wait_log("reloaded", timeout=scaled(10))
        wait_until(lambda: d.find("reloading") and
                   len(d.find("reloading")) == len(d.find("reloaded")), scaled(10),
                   "every reload to finish")
        c.sendall(b"old")
        self.assertEqual(recv_exact(c, 3), b"old")
        fresh = self.client(port)
        fresh.sendall(b"new")
        self.assertEqual(recv_exact(fresh, 3), b"new")
        self.assertEqual((a.accepted, b.accepted), (1, 1))
        ok = self.metrics(d).get("lifeline_config_reloads_total", result="ok")
        self.assertGreaterEqual(ok, 1)
        self.assertLessEqual(ok, 10)


if __name__ == "__main__":
    unittest.main()
