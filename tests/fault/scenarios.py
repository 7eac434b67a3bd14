"""The client-crash cases of DESIGN.md section 1, replayable direct or through lifeline.

    run_case(2 | 3, lifeline_bin=None, config=None) -> CaseResult

case 2  client host crash, then the client returns from the same fixed port
case 3  as case 2, but the client host's outgoing RSTs are dropped (stateful firewall)

Direct (lifeline_bin=None): client -> server:6000, routed through the proxy
namespace.  Through lifeline: lifeline runs in the proxy namespace, listening on
proxy_client_ip:5000 and relaying to server:6000; the client connects to it.

Each run builds its own Topology, and everything recorded (server, both client
instances, packets seen by the proxy namespace, lifeline's JSON log) is merged
into one timeline relative to the crash, on the shared monotonic clock.
"""

import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))

from lifeline_testlib import lifeline_argv, parse_log_line, write_config  # noqa: E402
from netns import JsonlTail, Topology, wait_for  # noqa: E402

SERVER_PORT = 6000
CLIENT_PORT = 4000
PROXY_PORT = 5000

CASES = {
    2: "client host crash, then return from the same fixed port",
    3: "client host crash, return from the same fixed port, client's RSTs dropped",
}


# ---------------------------------------------------------------- processes

def start_server(topo, record):
    proc = topo.spawn("server", [sys.executable, os.path.join(HERE, "legacy_server.py"),
                                 "--listen", "%s:%d" % (topo.server_ip, SERVER_PORT),
                                 "--record", record],
                      stdout=subprocess.DEVNULL)
    tail = JsonlTail(record)
    wait_for(lambda: tail.find(lambda r: r["event"] == "listening") or _died(proc, "server"),
             10, "legacy server listening")
    return proc, tail


def start_client(topo, target, record, name, interval_ms=100):
    proc = topo.spawn("client", [sys.executable, os.path.join(HERE, "legacy_client.py"),
                                 "--connect", target, "--source-port", str(CLIENT_PORT),
                                 "--interval-ms", str(interval_ms), "--name", name,
                                 "--record", record],
                      stdout=subprocess.DEVNULL)
    return proc, JsonlTail(record)


def start_sniffer(topo, ifaces, record):
    argv = [sys.executable, os.path.join(HERE, "sniff.py"), "--record", record]
    for i in ifaces:
        argv += ["--iface", i]
    proc = topo.spawn("proxy", argv, stdout=subprocess.DEVNULL)
    tail = JsonlTail(record)
    wait_for(lambda: tail.find(lambda r: r["event"] == "ready") or _died(proc, "sniffer"),
             10, "packet recorder ready")
    return proc, tail


def _died(proc, what):
    if proc.poll() is not None:
        raise RuntimeError("%s exited early with status %s" % (what, proc.returncode))
    return False


def lifeline_config(topo, with_client_keys=True):
    """The demo route: listen on the proxy's client-side address, relay to the server."""
    route = {"name": "demo",
             "listen": "%s:%d" % (topo.proxy_client_ip, PROXY_PORT),
             "upstream": {"servers": ["%s:%d" % (topo.server_ip, SERVER_PORT)]}}
    if with_client_keys:
        route["client"] = {"heartbeat": {"silence_ms": 2000}}   # not implemented yet
    return {"workers": 1, "routes": [route]}


class Lifeline:
    """lifeline running in the proxy namespace; its JSON log lines, timestamped on arrival."""

    def __init__(self, proc, config_path):
        self.proc = proc
        self.config_path = config_path
        self.lines = []                      # (mono, dict-or-str)
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line, rec = parse_log_line(raw)
            with self._lock:
                self.lines.append((time.monotonic(), rec if rec is not None else line))

    def find(self, pred):
        with self._lock:
            for mono, item in self.lines:
                if isinstance(item, dict) and pred(item):
                    return mono, item
        return None

    def text(self):
        with self._lock:
            return "\n".join(json.dumps(i) if isinstance(i, dict) else i for _, i in self.lines)


class LifelineFailed(RuntimeError):
    def __init__(self, status, text):
        RuntimeError.__init__(self, text)
        self.status = status


def start_lifeline(topo, lifeline_bin, config, timeout=10):
    """Start lifeline in the proxy namespace with `config` (a dict), wait for "msg":"ready".

    Runs `<lifeline_bin> -c <tmpdir>/lifeline.json --log-format json`, stdout and
    stderr merged into one pipe read by a thread.  Raises RuntimeError with lifeline's
    output if it exits before logging ready (LifelineFailed, with .status),
    TimeoutError if it never does."""
    path = write_config(topo.tmpdir, config)
    proc = topo.spawn("proxy", lifeline_argv(lifeline_bin, path),
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ll = Lifeline(proc, path)

    def ready():
        if ll.find(lambda r: r.get("msg") == "ready"):
            return True
        if proc.poll() is not None:
            ll._reader.join(2)
            raise LifelineFailed(proc.returncode, "lifeline exited with status %d before "
                                 "ready:\n%s" % (proc.returncode, ll.text()))
        return False
    try:
        wait_for(ready, timeout, "lifeline ready")
    except TimeoutError:
        raise TimeoutError("lifeline not ready after %.0f s:\n%s" % (timeout, ll.text()))
    return ll


# ---------------------------------------------------------------- one case

class CaseResult:
    def __init__(self, case, via):
        self.case, self.via = case, via
        self.timeline = []          # (rel_seconds, who, text)
        self.old_end = None         # "EOF" / "ECONNRESET" / ... / None
        self.old_end_rel = None
        self.new_accept_rel = None
        self.new_accept_peer = None
        self.first_syn_rel = None
        self.new_connected_rel = None
        self.end_before_accept = None
        self.window_s = None
        self.sockets_at_end = {}
        self.dropped_rsts = None
        self.crash = None
        self.notes = []
        self.elapsed = None
        self.client_addr = self.server_addr = None
        self.challenge_acks = self.rsts_on_wire = 0

    def summary(self):
        if self.old_end is None and self.new_accept_rel is None:
            return ("still no EOF, new client not accepted after %.0f s" % self.window_s)
        parts = []
        if self.old_end is None:
            parts.append("old connection never ended (no EOF, no error)")
        else:
            parts.append("old connection ended with %s at %+.3f" % (self.old_end, self.old_end_rel))
        if self.new_accept_rel is None:
            parts.append("new client not accepted after %.0f s" % self.window_s)
        else:
            parts.append("new connection accepted at %+.3f" % self.new_accept_rel)
            if self.old_end_rel is not None:
                parts.append("%.1f ms after the old one ended, %s"
                             % ((self.new_accept_rel - self.old_end_rel) * 1000,
                                "in order" if self.end_before_accept else "OUT OF ORDER"))
        return "; ".join(parts)

    def format(self):
        out = ["case %d (%s): %s" % (self.case, self.via, CASES[self.case])]
        for rel, who, text in self.timeline:
            out.append("  %+8.3f  %-8s %s" % (rel, who, text))
        out.append("  => " + self.summary())
        for host, socks in self.sockets_at_end.items():
            out.append("     %s sockets at end: %s" % (host, ", ".join(
                "%s %s->%s" % (s["state"], s["local"], s["peer"]) for s in socks) or "none"))
        for n in self.notes:
            out.append("     note: " + n)
        return "\n".join(out)


def run_case(case, lifeline_bin=None, config=None, window_s=5.0, down_ms=300,
             interval_ms=100, warmup_heartbeats=3, log=None):
    """Replay case 2 or 3 in a fresh topology; returns a CaseResult.

    lifeline_bin: None for the direct pass; else the binary started in the proxy
    namespace with `config` (a dict, or a callable topo -> dict; default
    lifeline_config(topo)).  window_s bounds the wait for the server to see the old
    connection end and the new one arrive."""
    t_start = time.monotonic()
    via = "direct" if lifeline_bin is None else "through lifeline"
    res = CaseResult(case, via)
    res.window_s = window_s
    say = log or (lambda m: None)
    H = []                                    # harness events: (mono, text)

    with Topology() as topo:
        sniff_ifaces = [topo.iface("proxy", "server")]
        if lifeline_bin:
            sniff_ifaces.insert(0, topo.iface("proxy", "client"))
        _, wire = start_sniffer(topo, sniff_ifaces, topo.path("wire.jsonl"))
        _, srv = start_server(topo, topo.path("server.jsonl"))
        ll = None
        target = "%s:%d" % (topo.server_ip, SERVER_PORT)
        if lifeline_bin:
            cfg = config(topo) if callable(config) else (config or lifeline_config(topo))
            try:
                ll = start_lifeline(topo, lifeline_bin, cfg)
            except LifelineFailed as e:
                routes = cfg.get("routes", [])
                if any("client" in r for r in routes) and e.status == 2:
                    res.notes.append("lifeline rejected the route's \"client\" keys (not "
                                     "implemented yet); retried without them")
                    cfg = json.loads(json.dumps(cfg))
                    for r in cfg["routes"]:
                        r.pop("client", None)
                    ll = start_lifeline(topo, lifeline_bin, cfg)
                else:
                    raise
            target = "%s:%d" % (topo.proxy_client_ip, PROXY_PORT)
        say("  topology %s: client %s, proxy %s/%s, server %s; client -> %s"
            % (topo.name, topo.client_ip, topo.proxy_client_ip, topo.proxy_server_ip,
               topo.server_ip, target))

        # -- the old client, heartbeats flowing
        old_proc, old_cli = start_client(topo, target, topo.path("client-old.jsonl"), "old",
                                         interval_ms)
        acc = wait_for(lambda: srv.find(lambda r: r["event"] == "accept"), 10,
                       "server accepting the first client")
        old_conn = acc["conn"]

        def warmed_up():
            srv.poll()
            return sum(1 for r in srv.records
                       if r["event"] == "recv" and r["conn"] == old_conn) >= warmup_heartbeats
        wait_for(warmed_up, 10, "heartbeats reaching the server")

        # -- crash the client host
        t0 = time.monotonic()
        crash = topo.crash_host("client", [old_proc])
        res.crash = crash
        H.append((t0, "crash client host: nft drops all in/out, client SIGKILLed, "
                      "ss -K %d socket(s)" % len(crash["killed"])))
        H.append((time.monotonic(), "crash done: %d packet(s) leaving the client host dropped "
                  "(its FIN and RST), %d arriving dropped" % (crash["dropped_out"],
                                                              crash["dropped_in"])))

        # -- host down for down_ms: the server must not notice anything
        srv.poll()
        n_before = len(srv.records)

        def server_noticed():
            srv.poll()
            return any(r["event"] in ("eof", "error", "accept") for r in srv.records[n_before:])
        try:
            wait_for(server_noticed, down_ms / 1000.0, "server to notice the crash")
            H.append((time.monotonic(), "UNEXPECTED: server noticed the crash while the host was down"))
        except TimeoutError:
            pass
        est = [s for s in topo.tcp_sockets("server") if s["state"] == "ESTAB"]
        H.append((time.monotonic(), "host down %d ms: server saw nothing; server kernel: %s"
                  % (down_ms, ", ".join("ESTAB %s<-%s" % (s["local"], s["peer"]) for s in est)
                     or "no ESTAB socket")))

        # -- the host returns
        if case == 3:
            topo.drop_outgoing_rst("client")
        topo.restore_host("client")
        H.append((time.monotonic(), "client host back up" +
                  (" (nft drops its outgoing RSTs)" if case == 3 else "")))
        new_proc, new_cli = start_client(topo, target, topo.path("client-new.jsonl"), "new",
                                         interval_ms)
        H.append((time.monotonic(), "new client started, same fixed source port %d" % CLIENT_PORT))

        def settled():
            srv.poll()
            ended = any(r["event"] in ("eof", "error") and r["conn"] == old_conn
                        for r in srv.records)
            accepted = any(r["event"] == "accept" and r["conn"] != old_conn for r in srv.records)
            return ended and accepted
        t_wait = time.monotonic()
        try:
            wait_for(settled, window_s, "old connection end + new accept")
            # let the new connection's first heartbeat land, for the timeline (bounded)
            try:
                wait_for(lambda: srv.find(lambda r: r["event"] == "recv" and r["conn"] != old_conn),
                         2, "first heartbeat on the new connection")
            except TimeoutError:
                pass
        except TimeoutError:
            H.append((time.monotonic(), "observation window over (%.0f s after the new client "
                      "started)" % (time.monotonic() - t_wait)))

        res.sockets_at_end = {h: topo.tcp_sockets(h) for h in ("server", "client")}
        if lifeline_bin:
            res.sockets_at_end["proxy"] = topo.tcp_sockets("proxy")
        if case == 3:
            res.dropped_rsts = topo.dropped_rst_count("client")
            H.append((time.monotonic(), "client host's nft dropped %d outgoing RST(s)"
                      % res.dropped_rsts))
        for p in list(topo.procs):
            topo.stop(p)
        for t in (srv, old_cli, new_cli, wire):
            t.poll()
        _build_timeline(res, topo, t0, H, srv, old_conn, old_cli, new_cli, wire, ll, lifeline_bin)
    res.elapsed = time.monotonic() - t_start
    return res


# ---------------------------------------------------------------- timeline

def _build_timeline(res, topo, t0, H, srv, old_conn, old_cli, new_cli, wire, ll, via_lifeline):
    ev = [(m, "harness", t) for m, t in H]

    acc = next(r for r in srv.records if r["event"] == "accept" and r["conn"] == old_conn)
    ev.append((acc["mono"], "server", "accept conn %d from %s (old client)" % (old_conn, acc["peer"])))
    last_old_recv = [r for r in srv.records if r["event"] == "recv" and r["conn"] == old_conn
                     and r["mono"] < t0]
    if last_old_recv:
        ev.append((last_old_recv[-1]["mono"], "server",
                   "last heartbeat from the old client before the crash (%d received)"
                   % len(last_old_recv)))
    seen_new_recv = set()
    for i, r in enumerate(srv.records):
        e, c = r["event"], r.get("conn")
        if r["mono"] < t0 and e != "error" and e != "eof":
            continue
        if e == "accept" and c != old_conn:
            ev.append((r["mono"], "server", "accept conn %d from %s" % (c, r["peer"])))
            if res.new_accept_rel is None:
                res.new_accept_rel = r["mono"] - t0
                res.new_accept_peer = r["peer"]
                res._accept_idx = i
        elif e == "recv" and c != old_conn and c not in seen_new_recv:
            seen_new_recv.add(c)
            ev.append((r["mono"], "server", "recv: first %d bytes on conn %d" % (r["len"], c)))
        elif e == "recv" and c == old_conn:
            ev.append((r["mono"], "server", "recv: %d bytes on the OLD conn %d" % (r["len"], c)))
        elif e in ("eof", "error"):
            what = "recv: EOF (0 bytes)" if e == "eof" else "%s: %s" % (r.get("op", "recv"), r["errno"])
            ev.append((r["mono"], "server", "%s on %s conn %d" % (
                what, "old" if c == old_conn else "new", c)))
            if c == old_conn and res.old_end is None:
                res.old_end = "EOF" if e == "eof" else r["errno"]
                res.old_end_rel = r["mono"] - t0
                res._end_idx = i
    if res.old_end is not None and res.new_accept_rel is not None:
        res.end_before_accept = res._end_idx < res._accept_idx   # the application's order

    for r in new_cli.records:
        e = r["event"]
        if e == "connect_attempt":
            if r.get("first"):
                res.first_syn_rel = r["mono"] - t0
                ev.append((r["mono"], "client", "new client's first SYN (connect() from :%d)"
                           % CLIENT_PORT))
            else:
                ev.append((r["mono"], "client", "connect() attempt %d" % r["attempt"]))
        elif e == "connect_failed":
            ev.append((r["mono"], "client", "connect() failed: %s" % r["errno"]))
        elif e == "connected":
            if res.new_connected_rel is None:
                res.new_connected_rel = r["mono"] - t0
            ev.append((r["mono"], "client", "connected %s -> %s" % (r["local"], r["peer"])))
        elif e == "send_error":
            ev.append((r["mono"], "client", "send failed: %s" % r["errno"]))

    ev.extend(_wire_events(wire.records, t0, topo, via_lifeline))

    if ll is not None:
        for mono, item in ll.lines:
            if mono < t0 - 0.001 and not (isinstance(item, dict) and "session" in item.get("msg", "")):
                continue
            if isinstance(item, dict):
                fields = " ".join("%s=%s" % (k, v) for k, v in item.items()
                                  if k not in ("ts", "level", "msg"))
                ev.append((mono, "lifeline", "%s %s" % (item.get("msg"), fields)))
            else:
                ev.append((mono, "lifeline", item))

    ev.sort(key=lambda x: x[0])
    res.timeline = [(m - t0, who, text) for m, who, text in ev]
    res.client_addr = "%s:%d" % (topo.client_ip, CLIENT_PORT)
    res.server_addr = "%s:%d" % (topo.server_ip, SERVER_PORT)
    wire_lines = [t for _, who, t in res.timeline if who == "wire"]
    res.challenge_acks = sum(1 for t in wire_lines if "challenge ACK" in t)
    res.rsts_on_wire = sum(1 for t in wire_lines if " RST " in t)


def _wire_events(pkts, t0, topo, via_lifeline):
    """Handshake-relevant packets after the crash: SYN/RST/FIN, and pure ACKs that answer a SYN."""
    names = {topo.client_ip: "client", topo.server_ip: "server",
             topo.proxy_client_ip: "lifeline", topo.proxy_server_ip: "lifeline"}
    last = {}          # 4-tuple -> last packet on it
    syn_seqs = set()
    out = []
    for p in pkts:
        if p.get("event") != "pkt":
            continue
        key = tuple(sorted((p["src"], p["dst"])))
        prev = last.get(key)
        last[key] = p
        if p["mono"] < t0:
            continue
        f = p["flags"]
        src_name = names.get(p["src"].rsplit(":", 1)[0], p["src"])
        dst_name = names.get(p["dst"].rsplit(":", 1)[0], p["dst"])
        arrow = "%s -> %s" % (src_name, dst_name)
        if via_lifeline:
            arrow += " [%s]" % p["iface"]
        desc = None
        if "S" in f and "A" not in f:
            desc = "SYN seq=%d" % p["seq"]
            if (key, p["seq"]) in syn_seqs:
                desc += " (retransmission)"
            syn_seqs.add((key, p["seq"]))
        elif "S" in f:
            desc = "SYN-ACK"
        elif "R" in f:
            desc = "RST seq=%d" % p["seq"]
            if prev is not None and prev["flags"] == "A" and prev["src"] == p["dst"] \
                    and prev["ack"] == p["seq"]:
                desc += " (answers the challenge ACK: kills the old connection)"
        elif "F" in f:
            desc = "FIN (%d data bytes)" % p["len"] if p["len"] else "FIN"
        elif f == "A" and p["len"] == 0 and prev is not None and "S" in prev["flags"]:
            if "A" not in prev["flags"] and prev["src"] == p["dst"]:
                if p["ack"] != (prev["seq"] + 1) & 0xFFFFFFFF:
                    desc = ("ACK ack=%d, not SYN seq+1=%d: challenge ACK (RFC 5961), the old "
                            "connection still lives" % (p["ack"], (prev["seq"] + 1) & 0xFFFFFFFF))
                else:
                    desc = "ACK"
            else:
                desc = "ACK (handshake complete)"
        if desc:
            out.append((p["mono"], "wire", "%-18s %s" % (arrow, desc)))
    return out
