"""The cluster registry on loopback: the "cluster" configuration as --check
reports it, and two lifelines (different listen ports, the same route name)
sharing client identities through one etcd member.

Needs /usr/bin/etcd (Debian's etcd-server): as root it is installed when
missing; otherwise, without it, the whole file skips (exit 77, as ctest
expects), saying why.  The multi-member and failure cases are in
tests/fault/test_cluster.py.
"""

import os
import socket
import sys
import time
import unittest

from harness import (BIN, LOOPBACK, Lifeline, LifelineTestCase, SinkServer, addr_str, bound_client_socket,
                     config, connect, free_port, route, run_cli, scaled, wait_closed, wait_until, write_config)
from test_upgrade import UpgradeCase

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import etcd_cluster  # noqa: E402
from etcd_cluster import EtcdCluster, http_request  # noqa: E402

# Decided at import, so that `python3 -m unittest test_cluster` (as ctest runs it) exits 77.
_REASON = etcd_cluster.etcd_missing_reason() if os.access(BIN, os.X_OK) else None
if _REASON:
    print(f"SKIP: cluster tests need etcd: {_REASON}", flush=True)
    sys.exit(77)

GOOD_ETCD = ["http://127.0.0.1:23791", "http://127.0.0.1:23792"]


def cluster_cfg(port, server, etcd, instance, admin_port=None, client=None, **cluster):
    cfg = config([route(port, [server], name="legacy", retries=0)])
    if client is not None:
        cfg["routes"][0]["client"] = client
    c = {"etcd": etcd, "instance": instance}
    c.update(cluster)
    cfg["cluster"] = c
    if admin_port is not None:
        cfg["admin"] = {"listen": f"{LOOPBACK}:{admin_port}"}
    return cfg


class ClusterCheckTest(LifelineTestCase):
    """`lifeline --check` on the cluster object: each error names its key."""

    def check(self, cluster):
        cfg = config([route(free_port(), [free_port()], name="legacy")])
        cfg["cluster"] = cluster
        path = write_config(self.tmpdir, cfg, "c.json")
        return run_cli(["--check", "-c", path])

    def assertError(self, r, key, *contains):
        """Exit 2, nothing on stdout, one stderr line: `key: ...` (containing `contains`)."""
        self.assertEqual(r.returncode, 2, r)
        self.assertEqual(r.stdout, "", r)
        lines = r.stderr.splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertTrue(lines[0].startswith(key + ": "), r.stderr)
        for s in contains:
            self.assertIn(s, lines[0])

    def test_good(self):
        r = self.check({"etcd": GOOD_ETCD, "instance": "a-1.x_y", "prefix": "/ll/test",
                        "lease_ttl_ms": 2000, "on_unavailable": "local"})
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "ok\n", ""))

    def test_defaults_only_required(self):
        r = self.check({"etcd": GOOD_ETCD[:1], "instance": "a"})
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "ok\n", ""))

    def test_bad_url(self):
        for bad in ("127.0.0.1:2379", "ftp://127.0.0.1:2379", "http://", "http://127.0.0.1"):
            with self.subTest(url=bad):
                r = self.check({"etcd": [bad, GOOD_ETCD[0]], "instance": "a"})
                self.assertError(r, "cluster.etcd[0]")

    def test_bad_url_second(self):
        r = self.check({"etcd": [GOOD_ETCD[0], "nope"], "instance": "a"})
        self.assertError(r, "cluster.etcd[1]", '"nope"')

    def test_no_endpoints(self):
        r = self.check({"etcd": [], "instance": "a"})
        self.assertError(r, "cluster.etcd")

    def test_instance_missing(self):
        r = self.check({"etcd": GOOD_ETCD})
        self.assertError(r, "cluster.instance", "required key is missing")

    def test_etcd_missing(self):
        r = self.check({"instance": "a"})
        self.assertError(r, "cluster.etcd", "required key is missing")

    def test_instance_bad(self):
        for bad in ("", "a/b", "x" * 64, "a b"):
            with self.subTest(instance=bad):
                r = self.check({"etcd": GOOD_ETCD, "instance": bad})
                self.assertError(r, "cluster.instance")

    def test_on_unavailable_bad(self):
        r = self.check({"etcd": GOOD_ETCD, "instance": "a", "on_unavailable": "maybe"})
        self.assertError(r, "cluster.on_unavailable", '"maybe"')

    def test_lease_ttl_range(self):
        r = self.check({"etcd": GOOD_ETCD, "instance": "a", "lease_ttl_ms": 1999})
        self.assertError(r, "cluster.lease_ttl_ms", "must be between 2000 and 600000, got 1999")
        r = self.check({"etcd": GOOD_ETCD, "instance": "a", "lease_ttl_ms": 600001})
        self.assertError(r, "cluster.lease_ttl_ms", "must be between 2000 and 600000, got 600001")

    def test_unknown_key(self):
        r = self.check({"etcd": GOOD_ETCD, "instance": "a", "ttl": 5})
        self.assertError(r, "cluster.ttl", "unknown key")


class ClusterPair:
    """Two instances, one etcd member (a mixin: no test of its own)."""

    def setUp(self):
        super().setUp()
        self.etcd = EtcdCluster(1, timeout=scaled(20))
        self.addCleanup(self.etcd.close)

    def start_pair(self, server, client=None, **cluster):
        urls = self.etcd.client_urls()
        self.ports = {"A": free_port(), "B": free_port()}
        self.admin = {"A": free_port(), "B": free_port()}
        self.ll = {}
        self.lease = {}
        for inst in ("A", "B"):
            cfg = cluster_cfg(self.ports[inst], server.port, urls, inst.lower(), self.admin[inst],
                              client=client, **cluster)
            d = os.path.join(self.tmpdir, inst)    # one config file each
            os.mkdir(d)
            ll = Lifeline(cfg, d)
            self._daemons.append(ll)
            self.addCleanup(self._finish, ll, False)
            ll.start()
            ll.wait_ready()
            joined = ll.wait_log("cluster joined", scaled(10))
            self.assertEqual(joined.get("instance"), inst.lower(), joined)
            self.lease[inst] = int(joined["lease"], 16)
            self.ll[inst] = ll
        return self.ll["A"], self.ll["B"]

    def get(self, inst, path):
        return http_request("GET", LOOPBACK, self.admin[inst], path, timeout=scaled(2))

    def metric(self, inst, line_start):
        st, text = self.get(inst, "/metrics")
        self.assertEqual(st, 200)
        for line in text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.split()[-1])
        return 0.0

    def owner(self, client):
        key = f"/lifeline/id/legacy/{client}"
        kvs = self.etcd.range(key)
        if not kvs:
            return None
        return {v: k for k, v in self.lease.items()}.get(kvs[0]["lease"], "lease %x" % kvs[0]["lease"])

    def client_via_a(self, sink):
        """A client on a fixed port (reusable, for move_client) connects
        through A and is relayed: returns (its address, its socket, the
        server's record of the connection)."""
        s1 = bound_client_socket()
        s1.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        src = s1.getsockname()
        c1 = self.track(connect(self.ports["A"], sock=s1))
        c1.sendall(b"via A\n")
        r1 = sink.wait_connection(1)
        wait_until(lambda: bytes(r1.data) == b"via A\n", scaled(5), "A's bytes at the server")
        return src, c1, r1

    def move_client(self, sink, src, old_record, n):
        """The client bound to `src` connects again, through B: returns (B's
        client socket, the server's record of B's connection, n-th)."""
        s2 = socket.socket()
        s2.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s2.bind(src)
        c2 = self.track(connect(self.ports["B"], sock=s2))
        c2.sendall(b"via B\n")
        r2 = sink.wait_connection(n, scaled(5))
        wait_until(lambda: bytes(r2.data) == b"via B\n", scaled(5), "B's bytes at the server")
        self.assertTrue(old_record.ended.is_set(),
                        "the old connection had not ended when B's was accepted")
        self.assertEqual(old_record.end, "eof")
        self.assertLess(old_record.ended_at, r2.accepted_at)
        return c2, r2


class ClusterTakeoverTest(ClusterPair, LifelineTestCase):
    """A fixed-port client moving from A to B."""

    def test_joined_ready_metrics(self):
        sink = self.server(SinkServer)
        a, b = self.start_pair(sink)
        for inst in ("A", "B"):
            self.assertEqual(self.get(inst, "/readyz")[0], 200)
            self.assertEqual(self.metric(inst, "lifeline_cluster_up"), 1.0)
            self.assertEqual(self.etcd.lease_ttl(self.lease[inst]) > 0, True)
        self.assertEqual(a.find("cluster joined")[0].get("ttl_ms"), 5000)

    def test_replace_across_instances(self):
        """A fixed-port client through A reconnects through B from the same
        port: A closes its session (replaced), the server reads the old
        connection's EOF before it accepts B's, B relays, the identity key
        moves to B's lease."""
        sink = self.server(SinkServer)
        a, b = self.start_pair(sink)

        src, c1, r1 = self.client_via_a(sink)
        client = addr_str(src)
        self.assertEqual(self.owner(client), "A")

        t0 = time.monotonic()
        c2, r2 = self.move_client(sink, src, r1, 2)
        took = r2.accepted_at - t0
        self.assertEqual(wait_closed(c1, scaled(2)), "reset")
        self.assertSessionClosed(a, client, "replaced")
        ev = a.wait_log("cluster eviction", scaled(2))
        self.assertEqual((ev.get("client"), ev.get("from")), (client, "b"), ev)
        self.assertEqual(self.owner(client), "B")
        self.assertEqual(self.metric("A", 'lifeline_cluster_evictions_total{direction="received"}'), 1.0)
        self.assertEqual(self.metric("B", 'lifeline_cluster_evictions_total{direction="requested"}'), 1.0)
        self.assertLess(took, scaled(1.0), f"takeover through etcd took {took * 1000:.0f} ms")

        # the client leaves: B deletes the key
        c2.close()
        self.assertSessionClosed(b, client, "client_eof")
        wait_until(lambda: self.owner(client) is None, scaled(3), "the identity key to be deleted")

    def test_reject_across_instances(self):
        """on_duplicate reject: a second connection of the client through B is
        closed (rejected) and never reaches the server; A's session goes on."""
        sink = self.server(SinkServer)
        a, b = self.start_pair(sink, client={"identity": "address", "on_duplicate": "reject"})
        c1 = self.client(self.ports["A"])
        c1.sendall(b"first\n")
        r1 = sink.wait_connection(1)
        wait_until(lambda: bytes(r1.data) == b"first\n", scaled(5), "the first client's bytes")
        self.assertEqual(self.owner(LOOPBACK), "A")

        c2 = self.client(self.ports["B"])
        second = addr_str(c2.getsockname())
        try:
            c2.sendall(b"second\n")
        except (ConnectionResetError, BrokenPipeError):
            pass
        self.assertIn(wait_closed(c2, scaled(3)), ("reset", "eof"))
        rec = self.assertSessionClosed(b, second, "rejected")
        self.assertEqual(rec.get("upstream_local_port"), 0, rec)
        c1.sendall(b"later\n")
        wait_until(lambda: bytes(r1.data) == b"first\nlater\n", scaled(5), "the first client's later bytes")
        self.assertEqual(len(sink.connections()), 1)
        self.assertEqual(a.find("session closed"), [])
        self.assertEqual(self.owner(LOOPBACK), "A")


class ClusterUpgradeTest(ClusterPair, UpgradeCase):

    def test_upgrade_hands_the_lease_over(self):
        """A live upgrade of A holding a client: the new process keeps A's
        lease (no new one), renews it past its TTL after the old process
        has gone, and answers B's eviction: the server reads the old
        connection's EOF before it accepts B's."""
        ttl_ms = 2000
        sink = self.server(SinkServer)
        a, b = self.start_pair(sink, lease_ttl_ms=ttl_ms)
        src, c1, r1 = self.client_via_a(sink)
        client = addr_str(src)

        self.upgrade(a, a.pid, expect_sessions=1, others=(b.pid,))
        joined = a.wait_count(2, "cluster joined")[-1]
        self.assertEqual((joined.get("from"), int(joined["lease"], 16)),
                         ("live upgrade", self.lease["A"]), joined)
        # The old process has exited; the lease outlives two TTLs only if the
        # new process renews it. Watched for that long, not slept through.
        deadline = time.monotonic() + 2 * ttl_ms / 1000
        while time.monotonic() < deadline:
            self.assertGreater(self.etcd.lease_ttl(self.lease["A"]), 0, "A's lease expired")
            time.sleep(0.1)
        self.assertEqual(a.find("cluster fenced"), [], a.log_tail())
        self.assertEqual(self.owner(client), "A")
        c1.sendall(b"after\n")
        wait_until(lambda: bytes(r1.data) == b"via A\nafter\n", scaled(5), "the bytes after")

        self.move_client(sink, src, r1, 2)
        self.assertSessionClosed(a, client, "replaced")
        ev = a.wait_log("cluster eviction", scaled(2))
        self.assertEqual((ev.get("client"), ev.get("from")), (client, "b"), ev)
        self.assertEqual(self.owner(client), "B")


class ClusterStartTest(LifelineTestCase):
    """lifeline started before etcd: ready (listening), but not /readyz until
    it holds its lease (on_unavailable refuse); a client meanwhile is closed
    as cluster_unavailable; once etcd is up it joins and serves."""

    def test_starts_before_etcd(self):
        sink = self.server(SinkServer)
        client_port, peer_port = etcd_cluster.free_ports(2)
        etcd = EtcdCluster(1, client_ports=[client_port], peer_ports=[peer_port], start=False)
        self.addCleanup(etcd.close)
        port, admin = free_port(), free_port()
        d = self.start_lifeline(cluster_cfg(port, sink.port, etcd.client_urls(), "a", admin))
        get = lambda path: http_request("GET", LOOPBACK, admin, path, timeout=scaled(2))  # noqa: E731
        self.assertEqual(get("/readyz")[0], 503)
        c = self.client(port)
        me = addr_str(c.getsockname())
        self.assertIn(wait_closed(c, scaled(5)), ("reset", "eof"))
        self.assertSessionClosed(d, me, "cluster_unavailable")
        self.assertEqual(sink.connections(), [])

        etcd.start(scaled(20))
        joined = d.wait_log("cluster joined", scaled(10))
        self.assertEqual(joined.get("instance"), "a")
        wait_until(lambda: get("/readyz")[0] == 200, scaled(3), "/readyz 200 once joined")
        c2 = self.client(port)
        c2.sendall(b"hello\n")
        r = sink.wait_connection(1, scaled(5))
        wait_until(lambda: bytes(r.data) == b"hello\n", scaled(5), "the client's bytes at the server")


if __name__ == "__main__":
    unittest.main()
