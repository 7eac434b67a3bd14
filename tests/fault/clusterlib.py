"""The rig of the cluster fault tests (test_cluster.py): two lifeline instances
sharing client identities through a 3-member etcd cluster.

    client  --->  proxy namespace                                  --->  server
                    lifeline A  proxy_client_ip:5000  admin 127.0.0.1:9901
                    lifeline B  proxy_client_ip:5001  admin 127.0.0.1:9902
                    etcd m0..m2 clients 127.0.0.1|127.0.0.2:23791..23793,
                                peers 127.0.0.1:23801..23803

    with ClusterRig(checks, "C1", client={...}) as rig:      # a faultlib.Rig
        rig.etcd                      tests/lib/etcd_cluster.EtcdCluster
        rig.lls["A"], rig.lls["B"]    the two lifelines (scenarios.Lifeline); rig.ll is A
        rig.lease["A"]                the lease each logged in "cluster joined" (int)
        rig.client_proc(name, port, via="B")   legacy_client.py through B
        rig.sock(name, port, via="B")          an NsClient through B
        rig.closes("B"), rig.wait_close(pred, t, what, inst="B"), rig.wait_log("B", msg, t)
        rig.metric("A", "lifeline_cluster_up"), rig.admin("A", "/readyz")
        rig.cut_etcd("127.0.0.2")     nft in the proxy namespace: drop every packet to or
                                      from that address (the etcd URLs of an instance
                                      configured with etcd_host="127.0.0.2")
        rig.print_timeline(t0)        server, clients, both lifelines (tagged A / B)
    On leaving: both lifelines get SIGTERM and must exit 0 with JSON lines only and no
    error-level line other than the messages named in allow_errors; then etcd and the
    topology are removed.

Everything else (the recording server, crash_client, srv_wait, srv_end, ...) is
faultlib.Rig's.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import faultlib
import scenarios
from faultlib import (CLIENT_PORT, PROXY_PORT, NsClient, Rig, lifeline_bin, margin,
                      route_config)
from netns import Topology, wait_for

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import etcd_cluster  # noqa: E402
from etcd_cluster import EtcdCluster, http_request  # noqa: E402

INSTANCES = ("A", "B")
LISTEN_PORTS = {"A": PROXY_PORT, "B": PROXY_PORT + 1}
ADMIN_PORTS = {"A": 9901, "B": 9902}
ETCD_CLIENT_PORTS = [23791, 23792, 23793]
ETCD_PEER_PORTS = [23801, 23802, 23803]
ETCD_CUT_TABLE = "ll_etcdcut"
PREFIX = "/lifeline"


class ClusterClient(NsClient):
    """faultlib.NsClient aimed at one instance's listen port."""

    def __init__(self, rig, name, port, via):
        NsClient.__init__(self, rig, name, port)
        self.via = via

    def dest_port(self):
        return LISTEN_PORTS[self.via]

    def dest_label(self):
        return " to %s (:%d)" % (self.via, self.dest_port())


class ClusterRig(Rig):
    def __init__(self, checks, case, client=None, upstream=None, workers=1, ttl_ms=None,
                 on_unavailable=None, etcd_host=None, allow_errors=None, drain_ms=500):
        """on_unavailable, etcd_host, allow_errors: one value for both instances or a
        dict by instance ("A"/"B"); etcd_host: the address of the etcd URLs in that
        instance's config; allow_errors: error-level messages allowed in its log."""
        Rig.__init__(self, checks, case, client=client, upstream=upstream, workers=workers,
                     drain_ms=drain_ms)
        self.ttl_ms = ttl_ms
        self.on_unavailable = self._per(on_unavailable)
        self.etcd_host = self._per(etcd_host or "127.0.0.1")
        self.allow_errors = {k: set(v or ()) for k, v in self._per(allow_errors).items()}
        self.etcd = None
        self.lls = {}
        self.cfgs = {}
        self.lease = {}

    @staticmethod
    def _per(v):
        if isinstance(v, dict):
            return {k: v.get(k) for k in INSTANCES}
        return {k: v for k in INSTANCES}

    # -- set-up

    def instance_config(self, inst):
        r = route_config(self.topo, self.client_cfg, self.upstream_cfg)
        r["listen"] = "%s:%d" % (self.topo.proxy_client_ip, LISTEN_PORTS[inst])
        cl = {"etcd": self.etcd.client_urls(self.etcd_host[inst]), "instance": inst.lower()}
        if self.ttl_ms is not None:
            cl["lease_ttl_ms"] = self.ttl_ms
        if self.on_unavailable[inst] is not None:
            cl["on_unavailable"] = self.on_unavailable[inst]
        return {"workers": self.workers,
                "shutdown": {"drain_timeout_ms": self.drain_ms},
                "admin": {"listen": "127.0.0.1:%d" % ADMIN_PORTS[inst]},
                "cluster": cl,
                "routes": [r]}

    def start_instance(self, inst):
        """lifeline `inst` in the proxy namespace (scenarios.start_lifeline, with a
        config dir of its own), once it has logged "cluster joined"."""
        d = self.topo.path("ll-" + inst)
        os.makedirs(d, exist_ok=True)
        cfg = self.instance_config(inst)
        self.cfgs[inst] = cfg
        ll = scenarios.start_lifeline(types.SimpleNamespace(tmpdir=d, spawn=self.topo.spawn),
                                      lifeline_bin(), cfg, timeout=margin(10))
        self.lls[inst] = ll
        try:
            _, joined = wait_for(lambda: ll.find(lambda r: r.get("msg") == "cluster joined"),
                                 margin(10), "lifeline %s to log cluster joined" % inst)
        except TimeoutError:
            raise TimeoutError("lifeline %s did not log cluster joined:\n%s" % (inst, ll.text()))
        self.lease[inst] = int(str(joined.get("lease")), 16)
        return ll

    def __enter__(self):
        self.topo = Topology()
        try:
            self.etcd = EtcdCluster(3, client_ports=ETCD_CLIENT_PORTS, peer_ports=ETCD_PEER_PORTS,
                                    hosts=("127.0.0.1", "127.0.0.2"), netns=self.topo.ns("proxy"),
                                    timeout=margin(20))
            self.server_proc, self.srv = self.start_server("server")
            for inst in INSTANCES:
                self.start_instance(inst)
            self.ll = self.lls["A"]
            print("  topology %s: client %s, lifeline A %s:%d (admin :%d), B :%d (admin :%d), "
                  "server %s:%d; etcd %s (leases A %x, B %x)"
                  % (self.topo.name, self.topo.client_ip, self.topo.proxy_client_ip,
                     LISTEN_PORTS["A"], ADMIN_PORTS["A"], LISTEN_PORTS["B"], ADMIN_PORTS["B"],
                     self.topo.server_ip, faultlib.SERVER_PORT, ",".join(self.etcd.client_urls()),
                     self.lease["A"], self.lease["B"]))
            print("  route: %s; cluster A: %s; B: %s" % (
                json.dumps({k: v for k, v in self.cfgs["A"]["routes"][0].items()
                            if k in ("client", "upstream")}),
                json.dumps(self.cfgs["A"]["cluster"]), json.dumps(self.cfgs["B"]["cluster"])),
                flush=True)
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if not self.stopped:
                self.stop_lifeline(check=exc_type is None)
        finally:
            self._teardown()
        return False

    def _teardown(self):
        try:
            for ll in self.lls.values():
                if ll.proc.poll() is None:
                    self.topo.stop(ll.proc)
            if self.etcd is not None:
                self.etcd.close()
        finally:
            self.topo.close()

    # -- clients

    def client_proc(self, name, port=CLIENT_PORT, interval_ms=100, extra=(), via="A"):
        # legacy_client.py takes the last --connect given (argparse)
        target = "%s:%d" % (self.topo.proxy_client_ip, LISTEN_PORTS[via])
        return Rig.client_proc(self, name, port, interval_ms, list(extra) + ["--connect", target])

    def sock(self, name, port=CLIENT_PORT, via="A"):
        return ClusterClient(self, name, port, via)

    # -- etcd

    def cut_etcd(self, addr):
        """Drop every packet to or from `addr` in the proxy namespace (loopback
        included): whoever talks to etcd by that address is cut off; raft (on
        127.0.0.1) and the other instance go on."""
        t = self.note("nft: drop every packet to or from %s in the proxy namespace" % addr)
        self.topo._nft("proxy", """
table inet %(t)s {
    chain output { type filter hook output priority -500; policy accept;
                   ip daddr %(a)s counter drop; ip saddr %(a)s counter drop; }
}
""" % {"t": ETCD_CUT_TABLE, "a": addr})
        return t

    def cut_count(self):
        return self.topo._counter("proxy", ETCD_CUT_TABLE, "output")

    def heal_etcd(self):
        self.topo._delete_table("proxy", ETCD_CUT_TABLE)
        return self.note("nft: etcd reachable again")

    def identity_keys(self, route="legacy"):
        """etcd's identity keys of `route`: [{"key", "value", "lease", ...}]."""
        return self.etcd.range("%s/id/%s/" % (PREFIX, route), prefix=True)

    def key_owner(self, client, route="legacy"):
        """Which instance's lease holds the identity key of `client` ("A", "B",
        "lease <hex>" for another lease, None when there is no key)."""
        for kv in self.identity_keys(route):
            if kv["key"] == "%s/id/%s/%s" % (PREFIX, route, client):
                for inst, lease in self.lease.items():
                    if kv["lease"] == lease:
                        return inst
                return "lease %x" % kv["lease"]
        return None

    # -- observation

    def closes(self, inst="A"):
        ll = self.lls[inst]
        with ll._lock:
            return [(m, i) for m, i in ll.lines
                    if isinstance(i, dict) and i.get("msg") == "session closed"]

    def wait_close(self, pred, timeout, what, inst="A"):
        def f():
            for m, r in self.closes(inst):
                if pred(r):
                    return m, r
            return None
        return wait_for(f, timeout, what)

    def wait_log(self, inst, msg, timeout, pred=lambda r: True):
        ll = self.lls[inst]
        return wait_for(lambda: ll.find(lambda r: r.get("msg") == msg and pred(r)),
                        timeout, "lifeline %s to log %r" % (inst, msg))

    def find_log(self, inst, msg, pred=lambda r: True):
        return self.lls[inst].find(lambda r: r.get("msg") == msg and pred(r))

    def logs(self, inst, msg):
        ll = self.lls[inst]
        with ll._lock:
            return [(m, i) for m, i in ll.lines if isinstance(i, dict) and i.get("msg") == msg]

    def admin(self, inst, path, method="GET", timeout=2.0):
        """(status, body) of one admin request to instance `inst`."""
        return http_request(method, "127.0.0.1", ADMIN_PORTS[inst], path, netns=self.topo.ns("proxy"),
                            timeout=timeout)

    def metrics(self, inst):
        """{(name, frozenset(labels.items())): value} from /metrics."""
        st, text = self.admin(inst, "/metrics")
        out = {}
        if st != 200:
            return out
        for line in text.splitlines():
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)", line)
            if not m:
                continue
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            try:
                out[(m.group(1), labels)] = float(m.group(3))
            except ValueError:
                pass
        return out

    def metric(self, inst, name, **labels):
        """The value of one series (0.0 when absent: a counter not yet moved), or
        None when the scrape failed."""
        try:
            ms = self.metrics(inst)
        except OSError:
            return None
        return ms.get((name, frozenset(labels.items())), 0.0)

    # -- shutdown and health

    def stop_lifeline(self, check=True):
        """SIGTERM to both; each must exit 0, print only JSON lines and no error-level
        line other than its allow_errors."""
        self.stopped = True
        for inst in INSTANCES:
            ll = self.lls.get(inst)
            if ll is not None and ll.proc.poll() is None:
                os.kill(ll.proc.pid, signal.SIGTERM)
        for inst in INSTANCES:
            ll = self.lls.get(inst)
            if ll is None:
                continue
            t = time.monotonic()
            try:
                ll.proc.wait(margin(10) + self.drain_ms / 1000.0)
            except subprocess.TimeoutExpired:
                pass
            rc = ll.proc.poll()
            took = time.monotonic() - t
            if rc is None:
                self.topo.stop(ll.proc)
            ll._reader.join(2)
            if not check:
                continue
            with ll._lock:
                lines = list(ll.lines)
            bad = [i for _, i in lines if not isinstance(i, dict)]
            errs = [i for _, i in lines if isinstance(i, dict) and i.get("level") == "error"
                    and i.get("msg") not in self.allow_errors[inst]]
            allowed = sorted(self.allow_errors[inst])
            self.checks.check(rc == 0 and not bad and not errs,
                              "%s: lifeline %s exits 0 on SIGTERM (%.1f s), every output line JSON, no error "
                              "line%s" % (self.case, inst, took,
                                          " but %s" % ", ".join(repr(a) for a in allowed) if allowed else ""),
                              "exit %s; non-JSON: %s; errors: %s" % (
                                  rc if rc is not None else "none (killed)",
                                  "\n".join(bad[:40]) or "none", errs[:5] or "none"))

    # -- timeline

    def print_timeline(self, t0, since=None, label="t0", until=None):
        ev = list(self.events)
        for name, proc, tail in self.servers:
            ev.extend(faultlib._server_events(tail, name))
        for name, tail in self.client_tails:
            ev.extend(faultlib._client_proc_events(tail, name))
        for inst, ll in self.lls.items():
            with ll._lock:
                for mono, item in ll.lines:
                    if isinstance(item, dict):
                        if item.get("msg") in ("starting", "listening", "ready"):
                            continue
                        fields = " ".join("%s=%s" % (k, v) for k, v in item.items()
                                          if k not in ("ts", "level", "msg", "route"))
                        lvl = "" if item.get("level") in ("info", None) else "[%s] " % item.get("level")
                        ev.append((mono, "ll " + inst, "%s%s: %s" % (lvl, item.get("msg"), fields)))
                    else:
                        ev.append((mono, "ll " + inst, str(item)))
        ev.sort(key=lambda x: x[0])
        lo = since if since is not None else -1e18
        hi = until if until is not None else 1e18
        print("  timeline (seconds relative to %s):" % label)
        for m, who, text in ev:
            if lo <= m <= hi:
                print("    %+8.3f  %-8s %s" % (m - t0, who, text))
        sys.stdout.flush()


def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


def main(cases):
    """faultlib.main, after etcd is known to be there (else exit 77)."""
    faultlib.netns.skip_unless_capable()
    why = etcd_cluster.etcd_missing_reason()
    if why:
        print("SKIP: cluster fault tests need etcd: %s" % why, flush=True)
        sys.exit(77)
    print("etcd: %s %s" % (etcd_cluster.ETCD, etcd_cluster.etcd_version()), flush=True)
    return faultlib.main(cases)
