"""The transparent source on loopback: upstream.source_address "client".

Every 127.0.0.0/8 address is this host's, so a client bound to 127.0.0.N
reaches lifeline on 127.0.0.1 and the server's replies to 127.0.0.N come
back without any routing rule: what is left to check here is lifeline's own
part (the gateway and sidecar routing is tests/fault/test_transparent.py):
- the server sees the client's address, from a port that is not the
  client's, and bytes go both ways;
- without CAP_NET_ADMIN lifeline exits 1 before it listens, naming the
  capability and each key that needs it;
- after the drop to an unprivileged `user` it keeps CAP_NET_ADMIN (and only
  it) in every thread, and transparent connects still work;
- a reload switches a route to and from "client" for new sessions, and one
  that needs CAP_NET_ADMIN when the drop did not keep it fails;
- with a dual-stack listener, a client of the other family than the server
  is a logged, counted connect failure.
IP_TRANSPARENT needs CAP_NET_ADMIN: every test skips without root.
"""

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import unittest

from harness import (BIN, EchoServer, LifelineTestCase, config, connect, free_port,
                     have_ipv6_loopback, recv_exact, route, scaled, wait_until, write_config)


def client_from(ip, port):
    """A connection to 127.0.0.1:port from the address ip."""
    s = socket.socket()
    s.bind((ip, 0))
    s.settimeout(scaled(5))
    s.connect(("127.0.0.1", port))
    return s


def has_net_admin():
    with open("/proc/self/status") as f:
        eff = next(line for line in f if line.startswith("CapEff:")).split()[1]
    return bool(int(eff, 16) >> 12 & 1)  # CAP_NET_ADMIN is 12


def fresh_ip():
    return f"127.0.{random.randint(1, 254)}.{random.randint(2, 254)}"


def open_text(path):
    with open(path) as f:
        return f.read()


class Transparent(LifelineTestCase):

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest("needs root: IP_TRANSPARENT and SO_MARK need CAP_NET_ADMIN")
        # The two tests of a missing capability need root only.
        if not has_net_admin() and self._testMethodName not in (
                "test_missing_capability_exits_1_before_listening",
                "test_reload_cannot_gain_the_capability"):
            self.skipTest("root without CAP_NET_ADMIN (a container build, say): "
                          "IP_TRANSPARENT and SO_MARK need it")

    def server(self):
        s = EchoServer()
        self.addCleanup(s.stop)
        return s

    def relay_from(self, ip, port, echo):
        """A session from ip: the bytes come back; returns the server's view
        of its peer."""
        before = len(list(echo.peers))
        c = client_from(ip, port)
        self.addCleanup(c.close)
        msg = os.urandom(4096)
        c.sendall(msg)
        self.assertEqual(recv_exact(c, len(msg)), msg)
        peers = list(echo.peers)
        self.assertEqual(len(peers), before + 1, peers)
        return c, peers[-1]

    def test_server_sees_the_client_address(self):
        """Three clients from three addresses: the server sees each address,
        each from an ephemeral port that is not the client's."""
        echo = self.server()
        port = free_port()
        r = route(port, [echo.port], source_address="client")
        d = self.start_lifeline(config([r]))
        for _ in range(3):
            ip = fresh_ip()
            c, peer = self.relay_from(ip, port, echo)
            self.assertEqual(peer[0], ip)
            self.assertNotEqual(peer[1], c.getsockname()[1])
        self.assertEqual(d.errors(), [])

    def test_missing_capability_exits_1_before_listening(self):
        """Without CAP_NET_ADMIN (dropped from the bounding set): exit 1, one
        `missing capability` line per key that needs it, no listener."""
        if shutil.which("setpriv") is None:
            self.skipTest("setpriv (util-linux) is not installed")
        port = free_port()
        r1 = route(port, [free_port()], name="a", source_address="client")
        r2 = route(free_port(), [free_port()], name="b")
        r2["upstream"]["mark"] = 7
        path = write_config(self.tmpdir, config([r1, r2]))
        p = subprocess.run(["setpriv", "--bounding-set=-net_admin", BIN, "-c", path,
                            "--log-format", "json"], capture_output=True, text=True,
                           timeout=scaled(20))
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn('"msg":"missing capability"', p.stderr)
        self.assertIn('"capability":"CAP_NET_ADMIN"', p.stderr)
        self.assertIn('"key":"routes[0].upstream.source_address"', p.stderr)
        self.assertIn('"key":"routes[1].upstream.mark"', p.stderr)
        self.assertNotIn('"msg":"listening"', p.stderr)
        self.assertNotIn('"msg":"ready"', p.stderr)

    def make_user(self):
        name = f"llx{os.getpid()}"
        r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                            "/usr/sbin/nologin", name], capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            self.skipTest(f"useradd failed: {r.stderr.strip()}")
        self.addCleanup(subprocess.run, ["userdel", name], capture_output=True, timeout=30)
        return pwd.getpwnam(name)

    def test_capability_kept_across_the_privilege_drop(self):
        """"user": an unprivileged account: every thread runs as it with
        CAP_NET_ADMIN as its only capability (effective and permitted), and
        clients still reach the server from their own addresses."""
        pw = self.make_user()
        echo = self.server()
        port = free_port()
        cfg = config([route(port, [echo.port], source_address="client")], workers=2)
        cfg["user"] = pw.pw_name
        d = self.start_lifeline(cfg)
        rec = d.wait_log("dropped privileges")
        self.assertEqual((rec["uid"], rec["capabilities"]), (pw.pw_uid, "CAP_NET_ADMIN"), rec)
        tasks = os.listdir(f"/proc/{d.pid}/task")
        self.assertGreaterEqual(len(tasks), 3)  # the supervisor and two workers
        for t in tasks:
            status = dict(line.split(":\t", 1) for line in
                          open(f"/proc/{d.pid}/task/{t}/status").read().splitlines()
                          if ":\t" in line)
            self.assertEqual(status["Uid"].split()[0], str(pw.pw_uid), t)
            self.assertEqual(int(status["CapEff"], 16), 1 << 12, (t, status["CapEff"]))
            self.assertEqual(int(status["CapPrm"], 16), 1 << 12, (t, status["CapPrm"]))
        for _ in range(4):  # both workers, most likely
            ip = fresh_ip()
            _, peer = self.relay_from(ip, port, echo)
            self.assertEqual(peer[0], ip)

    def test_upgrade_keeps_the_capability(self):
        """After the switch to "user", a live upgrade's new process (the
        same binary, executed as that user) still has CAP_NET_ADMIN, as the
        ambient set carries it, and relays from the clients' own addresses;
        the session opened before the upgrade goes on."""
        pw = self.make_user()
        echo = self.server()
        port = free_port()
        cfg = config([route(port, [echo.port], source_address="client")])
        cfg["user"] = pw.pw_name
        os.chmod(self.tmpdir, 0o755)  # the new process reads the file as the user
        # ... and executes the binary as the user: a copy where it can (a
        # checkout under a private directory, mktemp -d, would refuse it).
        exe = os.path.join(self.tmpdir, "lifeline")
        shutil.copy(BIN, exe)
        os.chmod(exe, 0o755)
        d = self.start_lifeline(cfg, wrapper=["sh", "-c", 'l=$0; shift; exec "$l" "$@"', exe])
        os.chmod(d.path, 0o644)
        before = connect(port, timeout=scaled(10))
        self.addCleanup(before.close)
        before.sendall(b"one")
        self.assertEqual(recv_exact(before, 3, timeout=scaled(10)), b"one")
        d.signal(signal.SIGUSR2)
        new = d.wait_log("upgrade starting")["new_pid"]
        self.addCleanup(lambda: os.path.exists(f"/proc/{new}") and os.kill(new, signal.SIGKILL))
        self.assertEqual(d.wait_exit(scaled(15)), 0, d.log_tail())
        ready = d.wait_log("ready", pid=new)
        self.assertEqual(ready["pid"], new)
        status = dict(line.split(":\t", 1) for line in
                      open_text(f"/proc/{new}/status").splitlines() if ":\t" in line)
        self.assertEqual(status["Uid"].split()[0], str(pw.pw_uid))
        self.assertEqual(int(status["CapEff"], 16), 1 << 12, status["CapEff"])
        before.sendall(b"two")
        self.assertEqual(recv_exact(before, 3, timeout=scaled(10)), b"two")
        ip = fresh_ip()
        _, peer = self.relay_from(ip, port, echo)
        self.assertEqual(peer[0], ip)
        os.kill(new, signal.SIGTERM)
        wait_until(lambda: not os.path.exists(f"/proc/{new}"), scaled(15),
                   what="the new process to exit")

    def reload(self, d, cfg, done):
        before = len(d.find(done))
        os.chmod(write_config(self.tmpdir, cfg), 0o644)
        d.signal(signal.SIGHUP)
        return d.wait_count(before + 1, done, timeout=scaled(10))[-1]

    def test_reload_switches_to_and_from_client(self):
        """A session opened before a reload keeps its upstream connection
        (from 127.0.0.1); new sessions come from the client's address after
        the switch to "client", and from 127.0.0.1 after the switch back."""
        echo = self.server()
        port = free_port()
        plain = config([route(port, [echo.port])])
        d = self.start_lifeline(plain)
        ip = fresh_ip()
        old, peer = self.relay_from(ip, port, echo)
        self.assertEqual(peer[0], "127.0.0.1")
        self.reload(d, config([route(port, [echo.port], source_address="client")]), "reloaded")
        _, peer = self.relay_from(ip, port, echo)
        self.assertEqual(peer[0], ip)
        old.sendall(b"still here")
        self.assertEqual(recv_exact(old, 10), b"still here")
        self.reload(d, plain, "reloaded")
        _, peer = self.relay_from(ip, port, echo)
        self.assertEqual(peer[0], "127.0.0.1")

    def test_reload_cannot_gain_the_capability(self):
        """Started with a `user` and no route that needs CAP_NET_ADMIN, the
        drop keeps none: a reload to "client" fails naming the capability and
        the key, and the running config serves on."""
        pw = self.make_user()
        echo = self.server()
        port = free_port()
        cfg = config([route(port, [echo.port])])
        cfg["user"] = pw.pw_name
        d = self.start_lifeline(cfg, expect_errors=True)
        self.assertEqual(d.wait_log("dropped privileges")["capabilities"], "none")
        os.chmod(self.tmpdir, 0o755)  # the reload reads the file as that user
        bad = dict(cfg, routes=[route(port, [echo.port], source_address="client")])
        self.reload(d, bad, "reload failed: keeping the running config")
        rec = d.wait_log("missing capability")
        self.assertEqual(rec["key"], "routes[0].upstream.source_address", rec)
        _, peer = self.relay_from(fresh_ip(), port, echo)
        self.assertEqual(peer[0], "127.0.0.1")

    def test_dual_stack_family_mismatch_is_a_counted_connect_failure(self):
        """[::]:P with dual_stack, a server on ::1: an IPv4 client cannot
        reach it from its own address. The session ends with
        upstream_connect_failed, the log says why, the failure is counted;
        an IPv6 client is served."""
        if not have_ipv6_loopback():
            self.skipTest("no IPv6 loopback")
        echo = EchoServer(host="::1")
        self.addCleanup(echo.stop)
        port = free_port()
        r = route(port, [f"[::1]:{echo.port}"], listen_host="::", source_address="client")
        r["dual_stack"] = True
        d = self.start_lifeline(config([r]), expect_errors=True)
        c = socket.create_connection(("127.0.0.1", port), timeout=scaled(5))
        self.addCleanup(c.close)
        rec = d.session_closed(f"[::ffff:127.0.0.1]:{c.getsockname()[1]}")
        self.assertEqual(rec["reason"], "upstream_connect_failed", rec)
        fail = d.wait_log("upstream connect failed")
        self.assertIn("family", fail["error"], fail)
        self.assertIn("different address families", fail["hint"], fail)
        note = d.wait_log("config note")
        self.assertIn("IPv4 clients cannot reach the IPv6 servers", str(note), note)
        c6 = socket.create_connection(("::1", port), timeout=scaled(5))
        self.addCleanup(c6.close)
        c6.sendall(b"six")
        self.assertEqual(recv_exact(c6, 3), b"six")


if __name__ == "__main__":
    unittest.main()
