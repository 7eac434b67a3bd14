"""Shared plumbing for the liveness/takeover fault tests (test_liveness.py,
test_takeover.py, test_server_side.py).

    checks = Checks()                     pass/fail counting, "case N: ..." summaries
    with Rig(checks, "case 4", route_client={...}) as rig:
        rig.topo                          the netns.Topology (client, proxy, server)
        rig.ll                            lifeline in the proxy namespace (scenarios.Lifeline)
        rig.srv                           the legacy server's record (netns.JsonlTail)
        rig.client_proc(name, port)       legacy_client.py in the client namespace
        rig.sock(name, port)              an in-process TCP socket living in the client
                                          namespace (created there via setns in a thread),
                                          for clients that must go quiet, read, or reconnect
        rig.note(text)                    a harness event for the timeline
        rig.print_timeline(t0)            everything recorded, relative to t0
    On leaving the block lifeline gets SIGTERM and must exit 0 with only JSON lines and
    no error-level line on its output (under ASan this is also where leaks show);
    the topology is always torn down.

Timing: bounds on lifeline's own processing are multiplied by TIME_SCALE (3 under
ASan, 5 under TSan, detected from the binary by tests/lib/lifeline_testlib.py, or
LIFELINE_TEST_TIME_SCALE); kernel timers (keepalive, user timeout, SYN retransmission)
and lifeline's configured timers are not scaled, only the margin added to them.
"""

import errno
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))

import netns  # noqa: E402
import scenarios  # noqa: E402
# The binary, its sanitizer and the time scale: tests/lib/lifeline_testlib.py.
from lifeline_testlib import (SANITIZER, TIME_SCALE, lifeline_bin, ns_socket,  # noqa: E402
                              scaled)
from netns import JsonlTail, Topology, wait_for  # noqa: E402

SERVER_PORT = scenarios.SERVER_PORT      # 6000
PROXY_PORT = scenarios.PROXY_PORT        # 5000
CLIENT_PORT = scenarios.CLIENT_PORT      # 4000 (the legacy client's fixed port)


# ---------------------------------------------------------------- binary, time scale

# A bound on lifeline's own processing (not on a kernel or configured timer).
margin = scaled


def require_binary():
    """Under ctest LIFELINE_BIN is set and a missing binary is a failure; by hand
    without a build, skip."""
    b = lifeline_bin()
    if os.access(b, os.X_OK):
        return b
    if os.environ.get("LIFELINE_BIN"):
        print("FAIL: LIFELINE_BIN=%s is not an executable" % b, flush=True)
        print("0 passed, 1 failed", flush=True)
        sys.exit(1)
    print("SKIP: no lifeline binary at %s (build it, or set LIFELINE_BIN)" % b, flush=True)
    sys.exit(77)


# ---------------------------------------------------------------- checks

class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.summaries = []

    def check(self, ok, what, observed=""):
        if ok:
            self.passed += 1
            print("ok    %s" % what, flush=True)
        else:
            self.failed += 1
            print("FAIL  %s%s" % (what, ("  -- observed: %s" % observed) if observed else ""),
                  flush=True)
        return bool(ok)

    def summary(self, line):
        self.summaries.append(line)
        print("  >> " + line, flush=True)

    def run(self, fn):
        """Runs one case; an exception (a bounded wait that timed out, ...) is a failure."""
        print("\n==== %s" % (fn.__doc__ or fn.__name__).strip().splitlines()[0], flush=True)
        t = time.monotonic()
        try:
            fn(self)
        except Exception as e:
            traceback.print_exc()
            self.check(False, "%s ran to completion" % fn.__name__,
                       "%s: %s" % (type(e).__name__, e))
        print("  (%s: %.1f s)" % (fn.__name__, time.monotonic() - t), flush=True)

    def finish(self, t_start):
        print("\n==== summary (time scale %.1f%s)" % (
            TIME_SCALE, ", %s build" % SANITIZER if SANITIZER else ""))
        for s in self.summaries:
            print("  " + s)
        print("runtime %.1f s" % (time.monotonic() - t_start))
        print("%d passed, %d failed" % (self.passed, self.failed), flush=True)
        return 1 if self.failed else 0


def main(cases):
    netns.skip_unless_capable()
    require_binary()
    t = time.monotonic()
    c = Checks()
    print("lifeline: %s (time scale %.1f%s)" % (lifeline_bin(), TIME_SCALE,
          ", %s" % SANITIZER if SANITIZER else ""), flush=True)
    for fn in cases:
        c.run(fn)
    return c.finish(t)


# ---------------------------------------------------------------- sockets in a namespace

# ns_socket(ns_name, family, type): tests/lib/lifeline_testlib.py.


def _ename(e):
    if isinstance(e, socket.timeout):
        return "TIMEOUT"
    return errno.errorcode.get(e.errno, str(e.errno)) if getattr(e, "errno", None) else type(e).__name__


class NsClient:
    """A client whose every step the test drives: a TCP socket in the client namespace,
    bound to a fixed source port (SO_REUSEADDR, as the legacy client does)."""

    def __init__(self, rig, name, port):
        self.rig, self.name, self.port = rig, name, port
        self.s = None
        self.t_connect = self.t_connected = None
        self.sent = b""
        self.ended = None    # the first end this socket showed: a reset is reported once by the
                             # kernel (the reader that gets ECONNRESET consumes it), so keep it

    def dest_port(self):
        """Where connect() goes: lifeline's listen port."""
        return PROXY_PORT

    def dest_label(self):
        return ""

    def connect(self, timeout=5.0, reset_ok=False):
        """reset_ok: lifeline may abort this connection (replaced) before
        connect() returns; the socket then counts as ended by ECONNRESET."""
        topo = self.rig.topo
        s = ns_socket(topo.ns("client"))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((topo.client_ip, self.port))
        s.settimeout(timeout)
        self.t_connect = time.monotonic()
        self.rig.event(self.t_connect, "client", "%s: connect() from :%d%s (first SYN)"
                       % (self.name, self.port, self.dest_label()))
        try:
            s.connect((topo.proxy_client_ip, self.dest_port()))
        except OSError as e:
            self.rig.event(time.monotonic(), "client", "%s: connect() failed: %s"
                           % (self.name, _ename(e)))
            s.close()
            if reset_ok and isinstance(e, ConnectionResetError):
                self.ended = "ECONNRESET"
                return self
            raise
        s.settimeout(None)
        self.t_connected = time.monotonic()
        try:
            peer = s.getpeername()
        except OSError as e:
            # Connected, and reset (replaced) before this line: the same end
            # as a reset during connect().
            self.rig.event(self.t_connected, "client", "%s: connected, then %s"
                           % (self.name, _ename(e)))
            s.close()
            if reset_ok and e.errno == errno.ENOTCONN:
                self.ended = "ECONNRESET"
                return self
            raise
        self.rig.event(self.t_connected, "client", "%s: connected %s:%d -> %s:%d" % (
            (self.name,) + s.getsockname() + peer))
        self.s = s
        return self

    def send(self, text, quiet=False):
        data = text.encode() if isinstance(text, str) else text
        self.s.sendall(data)
        self.sent += data
        if not quiet:
            self.rig.event(time.monotonic(), "client", "%s: sent %r" % (self.name, data))

    def try_send(self, text):
        """send() that reports an error instead of raising: None or the errno name."""
        try:
            self.s.send(text.encode(), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            self.sent += text.encode()
            return None
        except BlockingIOError:
            return None
        except OSError as e:
            if self.ended is None:
                self.ended = _ename(e)
            return _ename(e)

    def state(self):
        """'open' (nothing to read), 'data', 'eof' (FIN received) or the errno name
        (ECONNRESET: reset; also when a send() saw it first).  Never consumes data;
        once ended, it stays ended."""
        if self.ended is not None:
            return self.ended
        try:
            d = self.s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return "open"
        except OSError as e:
            self.ended = _ename(e)
            return self.ended
        if d:
            return "data"
        self.ended = "eof"
        return "eof"

    def wait_ended(self, timeout, what=None):
        """Waits until the socket sees EOF or an error; returns (state, mono)."""
        st = wait_for(lambda: (lambda x: x if x not in ("open", "data") else None)(self.state()),
                      timeout, what or "%s to see its connection end" % self.name, interval=0.002)
        t = time.monotonic()
        self.rig.event(t, "client", "%s: its connection ended: %s" % (self.name, st))
        return st, t

    def close(self):
        if self.s is not None:
            self.s.close()
            self.s = None


# ---------------------------------------------------------------- the rig

def route_config(topo, client=None, upstream=None, name="legacy"):
    r = {"name": name,
         "listen": "%s:%d" % (topo.proxy_client_ip, PROXY_PORT),
         "upstream": {"servers": ["%s:%d" % (topo.server_ip, SERVER_PORT)]}}
    if client is not None:
        r["client"] = client
    if upstream:
        r["upstream"].update(upstream)
    return r


class Rig:
    def __init__(self, checks, case, client=None, upstream=None, workers=1, sniff=False,
                 server_args=(), drain_ms=500, log_level=None):
        self.checks, self.case = checks, case
        self.client_cfg, self.upstream_cfg = client, upstream
        self.workers, self.sniff, self.server_args, self.drain_ms = workers, sniff, server_args, drain_ms
        self.log_level = log_level
        self.topo = None
        self.ll = None
        self.wire = None
        self.events = []                 # (mono, who, text)
        self.client_tails = []           # (name, JsonlTail)
        self.servers = []                # (name, proc, JsonlTail)
        self.stopped = False

    # -- set-up

    def __enter__(self):
        self.topo = Topology()
        try:
            if self.sniff:
                _, self.wire = scenarios.start_sniffer(
                    self.topo, [self.topo.iface("proxy", "client"), self.topo.iface("proxy", "server")],
                    self.topo.path("wire.jsonl"))
            self.server_proc, self.srv = self.start_server("server")
            self.cfg = {"workers": self.workers,
                        "shutdown": {"drain_timeout_ms": self.drain_ms},
                        "routes": [route_config(self.topo, self.client_cfg, self.upstream_cfg)]}
            if self.log_level:
                self.cfg["log"] = {"level": self.log_level}
            self.ll = scenarios.start_lifeline(self.topo, lifeline_bin(), self.cfg,
                                               timeout=margin(10))
            print("  topology %s: client %s, lifeline %s:%d / %s, server %s:%d; workers %d"
                  % (self.topo.name, self.topo.client_ip, self.topo.proxy_client_ip, PROXY_PORT,
                     self.topo.proxy_server_ip, self.topo.server_ip, SERVER_PORT, self.workers))
            print("  route: %s" % json.dumps({k: v for k, v in self.cfg["routes"][0].items()
                                              if k in ("client", "upstream")}), flush=True)
        except BaseException:
            self.topo.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if not self.stopped:
                self.stop_lifeline()
        finally:
            self.topo.close()
        return False

    def start_server(self, name):
        rec = self.topo.path("%s.jsonl" % name)
        proc = self.topo.spawn("server", [sys.executable, os.path.join(HERE, "legacy_server.py"),
                                          "--listen", "%s:%d" % (self.topo.server_ip, SERVER_PORT),
                                          "--record", rec, "--record-data"] + list(self.server_args),
                               stdout=subprocess.DEVNULL)
        tail = JsonlTail(rec)
        wait_for(lambda: tail.find(lambda r: r["event"] == "listening") or
                 scenarios._died(proc, "legacy server"), 10, "legacy server listening")
        self.servers.append((name, proc, tail))
        return proc, tail

    # -- clients

    def client_proc(self, name, port=CLIENT_PORT, interval_ms=100, extra=()):
        rec = self.topo.path("client-%s.jsonl" % name)
        proc = self.topo.spawn("client", [sys.executable, os.path.join(HERE, "legacy_client.py"),
                                          "--connect", "%s:%d" % (self.topo.proxy_client_ip, PROXY_PORT),
                                          "--source-port", str(port), "--interval-ms", str(interval_ms),
                                          "--name", name, "--record", rec] + list(extra),
                               stdout=subprocess.DEVNULL)
        tail = JsonlTail(rec)
        self.client_tails.append((name, tail))
        return proc, tail

    def sock(self, name, port=CLIENT_PORT):
        return NsClient(self, name, port)

    def start_client_and_warm(self):
        """The legacy client ("old") from its fixed port, accepted and three
        heartbeats in at the server. Returns (proc, accept record)."""
        proc, _ = self.client_proc("old")
        _, acc = self.srv_wait(lambda r: r["event"] == "accept", margin(10),
                               "the server accepting the client")

        def warm():
            self.srv.poll()
            return sum(1 for r in self.srv.records
                       if r["event"] == "recv" and r["conn"] == acc["conn"]) >= 3
        wait_for(warm, margin(10), "heartbeats at the server")
        return proc, acc

    def crash_client(self, procs, down_s=0.3):
        """A client host crash (nft drops everything, its processes
        SIGKILLed, ss -K), then `down_s` in which the server must notice
        nothing. Returns (t0, quiet): when the crash began, and whether the
        server saw no EOF, error or accept while the host was down."""
        t0 = self.note("crash the client host: nft drops everything, client SIGKILLed, ss -K")
        crash = self.topo.crash_host("client", procs)
        self.note("crash done: %d packet(s) leaving the client host dropped, %d arriving dropped"
                  % (crash["dropped_out"], crash["dropped_in"]))
        n = len(self.srv.records)
        try:
            wait_for(lambda: self.srv.poll() is not None and
                     any(r["event"] in ("eof", "error", "accept") for r in self.srv.records[n:]),
                     down_s, "the server noticing the crash")
            return t0, False
        except TimeoutError:
            return t0, True

    # -- observation

    def event(self, mono, who, text):
        self.events.append((mono, who, text))

    def note(self, text):
        t = time.monotonic()
        self.events.append((t, "harness", text))
        return t

    def closes(self):
        """lifeline's "session closed" lines: [(mono, record)]."""
        with self.ll._lock:
            return [(m, i) for m, i in self.ll.lines
                    if isinstance(i, dict) and i.get("msg") == "session closed"]

    def wait_close(self, pred, timeout, what):
        def f():
            for m, r in self.closes():
                if pred(r):
                    return m, r
            return None
        return wait_for(f, timeout, what)

    def wait_log(self, msg, timeout, pred=lambda r: True):
        return wait_for(lambda: self.ll.find(lambda r: r.get("msg") == msg and pred(r)),
                        timeout, "lifeline to log %r" % msg)

    def client_addr(self, port=CLIENT_PORT):
        return "%s:%d" % (self.topo.client_ip, port)

    def srv_wait(self, pred, timeout, what, tail=None):
        tail = tail or self.srv

        def f():
            tail.poll()
            for i, r in enumerate(tail.records):
                if pred(r):
                    return i, r
            return None
        return wait_for(f, timeout, what, interval=0.002)

    def srv_accepts(self, tail=None):
        tail = tail or self.srv
        tail.poll()
        return [(i, r) for i, r in enumerate(tail.records) if r["event"] == "accept"]

    def srv_end(self, conn, tail=None):
        """(index, record) of how `conn` ended on the server (eof or error), or None."""
        tail = tail or self.srv
        tail.poll()
        for i, r in enumerate(tail.records):
            if r.get("conn") == conn and r["event"] in ("eof", "error"):
                return i, r
        return None

    def srv_data(self, conn, tail=None):
        tail = tail or self.srv
        tail.poll()
        return "".join(r.get("data", "") for r in tail.records
                       if r["event"] == "recv" and r.get("conn") == conn)

    def srv_bytes(self, conn, tail=None):
        tail = tail or self.srv
        tail.poll()
        return sum(r["len"] for r in tail.records if r["event"] == "recv" and r.get("conn") == conn)

    def proxy_sockets_on(self, local, peer):
        return [s for s in self.topo.tcp_sockets("proxy") if s["local"] == local and s["peer"] == peer]

    # -- shutdown and health

    def stop_lifeline(self, check=True):
        """SIGTERM; lifeline must exit 0, print only JSON lines, none at level error."""
        self.stopped = True
        proc = self.ll.proc
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(margin(10) + self.drain_ms / 1000.0)
        except subprocess.TimeoutExpired:
            pass
        rc = proc.poll()
        if rc is None:
            self.topo.stop(proc)
        self.ll._reader.join(2)
        if not check:
            return
        with self.ll._lock:
            lines = list(self.ll.lines)
        bad = [i for _, i in lines if not isinstance(i, dict)]
        errs = [i for _, i in lines if isinstance(i, dict) and i.get("level") == "error"]
        ok = rc == 0 and not bad and not errs
        self.checks.check(ok, "%s: lifeline exits 0 on SIGTERM, every output line JSON, no error line"
                          % self.case,
                          "exit %s; non-JSON: %s; errors: %s" % (
                              rc if rc is not None else "none (killed)",
                              "\n".join(bad[:40]) or "none", errs[:5] or "none"))

    # -- timeline

    def print_timeline(self, t0, since=None, label="t0"):
        ev = list(self.events)
        for name, proc, tail in self.servers:
            ev.extend(_server_events(tail, name))
        for name, tail in self.client_tails:
            ev.extend(_client_proc_events(tail, name))
        if self.wire is not None:
            self.wire.poll()
            ev.extend(scenarios._wire_events(self.wire.records, since if since is not None else t0 - 0.5,
                                             self.topo, True))
        with self.ll._lock:
            for mono, item in self.ll.lines:
                if isinstance(item, dict):
                    if item.get("msg") in ("starting", "listening", "ready"):
                        continue
                    fields = " ".join("%s=%s" % (k, v) for k, v in item.items()
                                      if k not in ("ts", "level", "msg", "route"))
                    ev.append((mono, "lifeline", "%s: %s" % (item.get("msg"), fields)))
                else:
                    ev.append((mono, "lifeline", str(item)))
        ev.sort(key=lambda x: x[0])
        lo = since if since is not None else -1e18
        print("  timeline (seconds relative to %s):" % label)
        for m, who, text in ev:
            if m >= lo:
                print("    %+8.3f  %-8s %s" % (m - t0, who, text))
        sys.stdout.flush()


def _server_events(tail, name):
    """Server record -> timeline; of the recv lines, only the first and the last per
    connection (heartbeats would drown the rest)."""
    tail.poll()
    recs = tail.records
    first, last, count = {}, {}, {}
    for i, r in enumerate(recs):
        if r["event"] == "recv":
            c = r["conn"]
            first.setdefault(c, i)
            last[c] = i
            count[c] = count.get(c, 0) + 1
    out = []
    tag = "server" if name == "server" else name[:8]
    for i, r in enumerate(recs):
        e, c = r["event"], r.get("conn")
        if e == "accept":
            text = "accept conn %d from %s" % (c, r["peer"])
        elif e == "recv":
            if i not in (first[c], last[c]):
                continue
            text = "recv %d bytes on conn %d%s%s" % (
                r["len"], c, " %r" % r["data"][:40] if "data" in r else "",
                " (first)" if i == first[c] and count[c] > 1 else
                " (last of %d recvs)" % count[c] if i == last[c] and count[c] > 1 else "")
        elif e == "eof":
            text = "recv: EOF (0 bytes) on conn %d" % c
        elif e == "error":
            text = "%s: %s on conn %s" % (r.get("op", "recv"), r["errno"], c)
        elif e == "listening":
            text = "listening on %s" % r["addr"]
        elif e in ("close", "stop"):
            continue
        else:
            text = "%s %s" % (e, {k: v for k, v in r.items() if k not in ("mono", "t", "event")})
        out.append((r["mono"], tag, text))
    return out


def _client_proc_events(tail, name):
    tail.poll()
    out = []
    for r in tail.records:
        e = r["event"]
        if e == "connect_attempt":
            text = "%s: connect() attempt %d from %s%s" % (name, r["attempt"], r["src"],
                                                          " (first SYN)" if r.get("first") else "")
        elif e == "connected":
            text = "%s: connected %s -> %s" % (name, r["local"], r["peer"])
        elif e in ("connect_failed", "send_error", "bind_failed"):
            text = "%s: %s %s" % (name, e, r.get("errno"))
        elif e == "first_send":
            text = "%s: first heartbeat sent" % name
        else:
            continue
        out.append((r["mono"], "client", text))
    return out


def ms(seconds):
    return "%.0f ms" % (seconds * 1000.0) if seconds is not None else "n/a"


def stats_ms(values):
    if not values:
        return "n/a"
    v = sorted(x * 1000.0 for x in values)
    return "min %.1f / median %.1f / max %.1f ms" % (v[0], statistics.median(v), v[-1])
