"""Three-host fault-test harness built from network namespaces (stdlib + ip/nft/ss).

    client  <--veth-->  proxy  <--veth-->  server
    .A.2             .A.1   .B.1           .B.2        (A, B picked per run in 10.200.0.0/16)

Every run creates its own namespaces, named "ll<pid>-<n>-client|proxy|server",
links them with veth pairs created directly inside the namespaces (nothing is
ever created in, or changed on, the host's own network namespace), brings up
loopback everywhere, gives client and server a default route through the proxy
namespace and sets ip_forward=1 there, so a client can reach the server
"directly" (proxy namespace as a plain router) or through lifeline running in
the proxy namespace.

API
    skip_unless_capable()          root, ip/nft/ss present, netns + nft + `ss -K` work;
                                   otherwise print "SKIP: ..." and exit 77.
    with Topology() as topo:       build; always torn down on exit, exception,
                                   SIGTERM/SIGINT/SIGHUP (signal -> SystemExit) and atexit.
        topo.client_ip / topo.proxy_client_ip / topo.proxy_server_ip / topo.server_ip
        topo.ns("client")          namespace name of a host
        topo.iface(host, peer)     interface name on `host` facing `peer`
        topo.tmpdir                per-run scratch dir (removed on close; LL_FAULT_KEEP=1 keeps it)
        topo.run(host, argv)       `ip netns exec` and wait -> CompletedProcess (check=True)
        topo.spawn(host, argv)     background Popen in the namespace; killed on close
        topo.stop(proc)            SIGCONT+SIGKILL and reap one spawned process
        topo.crash_host(host, procs)  the DESIGN.md crash: nft drop all in/out/forward in
                                   `host`, SIGKILL `procs` (their FIN is lost), then
                                   `ss -K` every TCP socket there (its RST is lost too).
                                   Returns {"dropped_out": n, "dropped_in": n, "killed": [...]}.
        topo.isolate(host) / topo.forget_sockets(host)   the two halves of crash_host
        topo.crash_counters(host)  packets the crash table has dropped so far
        topo.restore_host(host)    delete the drop-everything table
        topo.drop_outgoing_rst(host)  nft: drop TCP packets with RST leaving `host`
        topo.allow_outgoing_rst(host) delete that rule
        topo.dropped_rst_count(host)  packets dropped by drop_outgoing_rst so far
        topo.tcp_sockets(host)     parsed `ss -tanH` lines: dicts state/local/peer
    freeze(pid) / thaw(pid)        SIGSTOP / SIGCONT
    wait_for(pred, timeout, what)  bounded poll; returns pred()'s truthy value or raises
    JsonlTail(path)                incremental reader of a JSON-lines record file
    reap_stale()                   delete ll<pid>-* namespaces (and scratch dirs) whose
                                   creating pid is dead; every Topology() calls it first

Processes from spawn() get PR_SET_PDEATHSIG=SIGKILL, so they die with the harness
even when it is SIGKILLed (e.g. a ctest timeout); the namespaces of such a run are
then removed by the next run's reap_stale() (or by hand: `ip netns del ll<pid>-...`).

Only addresses inside the namespaces are used.  Root is required.

Alongside (tests/fault/): legacy_server.py (never writes, records accept/recv/EOF/
errors as JSON lines), legacy_client.py (fixed source port, heartbeats, never
reads), sniff.py (AF_PACKET TCP recorder for the proxy namespace), scenarios.py
(run_case(2|3, lifeline_bin=None, config=None) and start_lifeline(topo, bin, cfg)),
demo.py (`make demo`), test_*.py (ctest "fault" label: exit 0/1/77).
faultlib.py is the shared rig of the liveness/takeover tests (test_liveness.py,
test_takeover.py, test_server_side.py): lifeline + recording server per case, clients
as legacy_client.py processes or as sockets created in the client namespace, timelines,
and the exit-0-on-SIGTERM health check.
"""

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import lifeline_testlib  # noqa: E402

HOSTS = ("client", "proxy", "server")
NS_RE = re.compile(r"^ll(\d+)-(\d+)-(client|proxy|server|probe)$")
CRASH_TABLE = "ll_crash"
RST_TABLE = "ll_droprst"

_live = []                 # Topology objects not yet closed
_live_lock = threading.RLock()
_seq = [0]
_handlers_installed = [False]
_closing = [False]


# ---------------------------------------------------------------- helpers

def _sh(argv, check=True, timeout=10, input=None):
    return subprocess.run(argv, check=check, timeout=timeout, input=input,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(pred, timeout, what="condition", interval=0.005):
    """Poll pred() until it returns something truthy; raise TimeoutError after `timeout` s."""
    return lifeline_testlib.wait_until(pred, timeout, what, interval, error=TimeoutError)


def freeze(pid):
    os.kill(pid, signal.SIGSTOP)


def thaw(pid):
    os.kill(pid, signal.SIGCONT)


class JsonlTail:
    """Reads a JSON-lines file written by another process, only complete lines."""

    def __init__(self, path):
        self.path = path
        self._buf = b""
        self._pos = 0
        self.records = []

    def poll(self):
        """Read what was appended since the last call; returns the new records."""
        new = []
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                chunk = f.read()
        except FileNotFoundError:
            return new
        self._pos += len(chunk)
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line.strip():
                new.append(json.loads(line))
        self.records.extend(new)
        return new

    def find(self, pred):
        self.poll()
        for r in self.records:
            if pred(r):
                return r
        return None


_pid_alive = lifeline_testlib.pid_alive


def _netns_list():
    r = _sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _kill_ns_pids(ns):
    """SIGKILL processes inside one of our namespaces (all started by this harness)."""
    r = _sh(["ip", "netns", "pids", ns], check=False)
    pids = [int(p) for p in r.stdout.split() if p.isdigit()]
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def _delete_ns(ns):
    _kill_ns_pids(ns)
    r = _sh(["ip", "netns", "del", ns], check=False)
    return r.returncode == 0


def reap_stale():
    """Remove what a harness run left behind when it could not clean up (SIGKILL): its
    namespaces (and the processes in them) and its scratch dir, if its pid is dead."""
    gone = []
    for ns in _netns_list():
        m = NS_RE.match(ns)
        if m and not _pid_alive(int(m.group(1))):
            if _delete_ns(ns):
                gone.append(ns)
    tmp = tempfile.gettempdir()
    for d in os.listdir(tmp):
        m = re.match(r"^lifeline-fault-ll(\d+)-\d+-", d)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(tmp, d), ignore_errors=True)
    return gone


# ---------------------------------------------------------------- skip check

def _skip(why):
    print("SKIP: fault tests need root and network namespaces: %s" % why, flush=True)
    sys.exit(77)


def skip_unless_capable():
    if os.geteuid() != 0:
        _skip("not running as root (euid %d)" % os.geteuid())
    for tool in ("ip", "nft", "ss"):
        if shutil.which(tool) is None:
            _skip("`%s` not found in PATH (install iproute2 and nftables)" % tool)
    ns = "ll%d-0-probe" % os.getpid()
    r = _sh(["ip", "netns", "add", ns], check=False)
    if r.returncode != 0:
        _skip("`ip netns add` failed: %s" % (r.stderr.strip() or "exit %d" % r.returncode))
    try:
        _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        r = _sh(["ip", "netns", "exec", ns, "nft", "add", "table", "inet", "llprobe"], check=False)
        if r.returncode != 0:
            _skip("nft does not work in a namespace: %s" % r.stderr.strip())
        # ss -K needs CONFIG_INET_DIAG_DESTROY: kill a loopback connection and see it die.
        probe = (
            "import socket,subprocess,sys\n"
            "l=socket.socket();l.bind(('127.0.0.1',0));l.listen()\n"
            "c=socket.create_connection(l.getsockname());s,_=l.accept()\n"
            "subprocess.run(['ss','-K','-tanH','state','all'],capture_output=True)\n"
            "try:\n s.settimeout(2);s.recv(1);sys.exit(1)\n"
            "except (ConnectionAbortedError, ConnectionResetError): sys.exit(0)\n"
            "except OSError: sys.exit(1)\n")
        r = _sh(["ip", "netns", "exec", ns, sys.executable, "-c", probe], check=False, timeout=10)
        if r.returncode != 0:
            _skip("`ss -K` cannot destroy sockets (kernel without CONFIG_INET_DIAG_DESTROY?)")
    finally:
        _delete_ns(ns)


# ---------------------------------------------------------------- cleanup plumbing

def _close_all():
    with _live_lock:
        for topo in list(_live):
            topo.close()


def _on_signal(signum, frame):
    if _closing[0]:
        return                      # already tearing down: finish that first
    raise SystemExit(128 + signum)  # unwinds `with` blocks; atexit covers the rest


def _install_handlers():
    if _handlers_installed[0]:
        return
    _handlers_installed[0] = True
    atexit.register(_close_all)
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            if signal.getsignal(s) in (signal.SIG_DFL, signal.default_int_handler):
                signal.signal(s, _on_signal)


# ---------------------------------------------------------------- topology

class Topology:
    def __init__(self, name=None):
        _install_handlers()
        reap_stale()
        _seq[0] += 1
        self.prefix = "ll%d-%d-" % (os.getpid(), _seq[0])
        self.name = name or self.prefix.rstrip("-")
        self.namespaces = {h: self.prefix + h for h in HOSTS}
        self.procs = []
        self.created = []
        self.closed = False
        a = self._pick_subnets()
        self.client_net = "10.200.%d.0/24" % a
        self.server_net = "10.200.%d.0/24" % (a + 1)
        self.client_ip = "10.200.%d.2" % a
        self.proxy_client_ip = "10.200.%d.1" % a
        self.proxy_server_ip = "10.200.%d.1" % (a + 1)
        self.server_ip = "10.200.%d.2" % (a + 1)
        self._ifaces = {("client", "proxy"): "veth-p", ("proxy", "client"): "veth-c",
                        ("proxy", "server"): "veth-s", ("server", "proxy"): "veth-p"}
        self.tmpdir = tempfile.mkdtemp(prefix="lifeline-fault-%s-" % self.name)
        with _live_lock:
            _live.append(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # -- construction

    @staticmethod
    def _used_third_octets():
        used = set()
        out = _sh(["ip", "-4", "-o", "addr", "show"], check=False).stdout
        out += _sh(["ip", "-4", "route", "show", "table", "all"], check=False).stdout
        for ns in _netns_list():
            if NS_RE.match(ns):
                out += _sh(["ip", "-n", ns, "-4", "-o", "addr", "show"], check=False).stdout
        for m in re.finditer(r"\b10\.200\.(\d+)\.", out):
            used.add(int(m.group(1)))
        return used

    def _pick_subnets(self):
        """Pick A (odd, 1..251) so that 10.200.A/24 and 10.200.A+1/24 are not seen on the
        host or in another live harness run.  Namespaces are isolated anyway; this keeps
        concurrent runs and logs unambiguous."""
        used = self._used_third_octets()
        start = (os.getpid() + 7 * _seq[0]) % 126
        for i in range(126):
            a = 1 + 2 * ((start + i) % 126)
            if a not in used and a + 1 not in used:
                return a
        raise RuntimeError("no free /24 pair left in 10.200.0.0/16")

    def _ip(self, host, *args):
        return _sh(["ip", "-n", self.namespaces[host]] + list(args))

    def _build(self):
        for h in HOSTS:
            _sh(["ip", "netns", "add", self.namespaces[h]])
            self.created.append(self.namespaces[h])
            self._ip(h, "link", "set", "lo", "up")
            # no IPv6 chatter (DAD, RS) on the test links
            self.run(h, ["sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
                                     "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"],
                     check=False)
        # veth pairs created inside the proxy namespace, peer moved straight into the other
        # namespace: the host's own namespace never sees them.
        for peer in ("client", "server"):
            self._ip("proxy", "link", "add", self.iface("proxy", peer), "type", "veth",
                     "peer", "name", self.iface(peer, "proxy"), "netns", self.namespaces[peer])
        self._ip("client", "addr", "add", self.client_ip + "/24", "dev", self.iface("client", "proxy"))
        self._ip("proxy", "addr", "add", self.proxy_client_ip + "/24", "dev", self.iface("proxy", "client"))
        self._ip("proxy", "addr", "add", self.proxy_server_ip + "/24", "dev", self.iface("proxy", "server"))
        self._ip("server", "addr", "add", self.server_ip + "/24", "dev", self.iface("server", "proxy"))
        for h, p in (("client", "proxy"), ("proxy", "client"), ("proxy", "server"), ("server", "proxy")):
            self._ip(h, "link", "set", self.iface(h, p), "up")
        self._ip("client", "route", "add", "default", "via", self.proxy_client_ip)
        self._ip("server", "route", "add", "default", "via", self.proxy_server_ip)
        self.run("proxy", ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        # every veth end reports carrier before anyone uses the links
        def links_up():
            for h, p in (("client", "proxy"), ("proxy", "client"), ("proxy", "server"),
                         ("server", "proxy")):
                out = self._ip(h, "-o", "link", "show", self.iface(h, p)).stdout
                if "LOWER_UP" not in out:
                    return False
            return True
        wait_for(links_up, 5, "veth links up")

    # -- basics

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def ns(self, host):
        return self.namespaces[host]

    def iface(self, host, peer):
        return self._ifaces[(host, peer)]

    def path(self, name):
        return os.path.join(self.tmpdir, name)

    def run(self, host, argv, check=True, timeout=10, input=None):
        return _sh(["ip", "netns", "exec", self.namespaces[host]] + list(argv),
                   check=check, timeout=timeout, input=input)

    def spawn(self, host, argv, **popen_kw):
        """Start argv in `host`'s namespace; `ip netns exec` execs it, so proc.pid is argv's pid."""
        popen_kw.setdefault("stdin", subprocess.DEVNULL)
        if threading.current_thread() is threading.main_thread():
            popen_kw.setdefault("preexec_fn", lifeline_testlib.die_with_parent)
        proc = subprocess.Popen(["ip", "netns", "exec", self.namespaces[host]] + list(argv),
                                **popen_kw)
        proc.host = host
        self.procs.append(proc)
        return proc

    def stop(self, proc, sig=signal.SIGKILL, timeout=5):
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        return proc.returncode

    # -- nft

    def _nft(self, host, script):
        return self.run(host, ["nft", "-f", "-"], input=script)

    def _table_exists(self, host, table):
        return self.run(host, ["nft", "list", "table", "inet", table], check=False).returncode == 0

    def _delete_table(self, host, table):
        if self._table_exists(host, table):
            self.run(host, ["nft", "delete", "table", "inet", table])

    def _counter(self, host, table, chain):
        r = self.run(host, ["nft", "-j", "list", "chain", "inet", table, chain], check=False)
        if r.returncode != 0:
            return 0
        total = 0
        for item in json.loads(r.stdout).get("nftables", []):
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    total += expr["counter"]["packets"]
        return total

    def isolate(self, host):
        """Drop every packet into, out of and through `host` (loopback included)."""
        self._delete_table(host, CRASH_TABLE)
        self._nft(host, """
table inet %(t)s {
    chain input   { type filter hook input   priority -500; policy drop; counter drop; }
    chain output  { type filter hook output  priority -500; policy drop; counter drop; }
    chain forward { type filter hook forward priority -500; policy drop; counter drop; }
}
""" % {"t": CRASH_TABLE})

    def forget_sockets(self, host):
        """`ss -K` every TCP socket in `host` (the kernel forgets them, as after a reboot)."""
        before = self.tcp_sockets(host)
        self.run(host, ["ss", "-K", "-tanH", "state", "all"], check=False)
        left = self.tcp_sockets(host)
        if left:
            raise RuntimeError("ss -K left sockets in %s: %r" % (host, left))
        return before

    def crash_host(self, host, procs=()):
        """The DESIGN.md crash: isolate, SIGKILL procs (FIN lost), ss -K (RST lost)."""
        self.isolate(host)
        for p in procs:
            self.stop(p, signal.SIGKILL)
        killed = self.forget_sockets(host)
        return {"killed": killed,
                "dropped_out": self._counter(host, CRASH_TABLE, "output"),
                "dropped_in": self._counter(host, CRASH_TABLE, "input")}

    def crash_counters(self, host):
        return {"dropped_out": self._counter(host, CRASH_TABLE, "output"),
                "dropped_in": self._counter(host, CRASH_TABLE, "input")}

    def restore_host(self, host):
        self._delete_table(host, CRASH_TABLE)

    def drop_outgoing_rst(self, host):
        self._delete_table(host, RST_TABLE)
        self._nft(host, """
table inet %(t)s {
    chain output { type filter hook output priority -500; policy accept;
                   tcp flags & rst == rst counter drop; }
}
""" % {"t": RST_TABLE})

    def allow_outgoing_rst(self, host):
        self._delete_table(host, RST_TABLE)

    def dropped_rst_count(self, host):
        return self._counter(host, RST_TABLE, "output")

    # -- observation

    def tcp_sockets(self, host):
        r = self.run(host, ["ss", "-tanH", "state", "all"], check=False)
        socks = []
        for line in r.stdout.splitlines():
            f = line.split()
            if len(f) >= 5:
                socks.append({"state": f[0], "local": f[3], "peer": f[4]})
        return socks

    # -- teardown

    def close(self):
        if self.closed:
            return
        _closing[0] = True
        try:
            for p in self.procs:
                try:
                    self.stop(p, signal.SIGKILL, timeout=5)
                except Exception:
                    pass
            # by name, not only self.created: a signal may land between `ip netns add`
            # and the bookkeeping
            existing = set(_netns_list())
            for ns in reversed(list(self.namespaces.values())):
                for _ in range(3):
                    if ns not in existing or _delete_ns(ns) or ns not in _netns_list():
                        break
            if os.environ.get("LL_FAULT_KEEP") != "1":
                shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.closed = True
            with _live_lock:
                if self in _live:
                    _live.remove(self)
        finally:
            _closing[0] = False


if __name__ == "__main__":
    # Smoke test: build, show, tear down.
    skip_unless_capable()
    with Topology() as t:
        for h in HOSTS:
            print(h, t.ns(h), t.run(h, ["ip", "-4", "-o", "addr"]).stdout.replace("\n", " | "))
        print(t.run("client", ["ip", "route"]).stdout.strip())
    print("namespaces left:", [n for n in _netns_list() if NS_RE.match(n)])
