"""An etcd cluster for lifeline's cluster tests (Python standard library +
Debian's /usr/bin/etcd 3.4, package etcd-server).

    from etcd_cluster import EtcdCluster, require_etcd

    require_etcd()                       # etcd present (installed when root), else exit 77
    with EtcdCluster(3, client_ports=[23791, 23792, 23793],
                     peer_ports=[23801, 23802, 23803],
                     hosts=("127.0.0.1", "127.0.0.2"),    # client listeners
                     netns="ll123-1-proxy") as etcd:      # or None: this namespace
        etcd.client_urls()               # ["http://127.0.0.1:23791", ...]
        etcd.client_urls("127.0.0.2")    # the same members by their second address
        etcd.move_leader(0)              # member 0 leads (transfer-leadership)
        etcd.kill(0)                     # SIGKILL member 0 (the others keep a quorum)
        etcd.wait_healthy(members=[1, 2])
        etcd.range("/lifeline/id/", prefix=True)   # [{"key", "value", "lease"}, ...]
        etcd.stop_all()                  # every member SIGKILLed
    # left: no process, no data dir

Members listen for clients on every address of `hosts` (all on the same port)
and for peers on 127.0.0.1 only, so an nftables rule dropping packets to
127.0.0.2 cuts off whoever talks to the cluster by that address while raft
and the clients using 127.0.0.1 go on.  With `netns` every member runs under
`ip netns exec NAME`, and this module's own HTTP requests (health, range) are
made from a socket created inside that namespace.

Settings are for tests: --heartbeat-interval 100 --election-timeout 1000, data
dirs in /dev/shm when it is writable and has 512 MB free (fsync is then
cheap; else the temp dir), logs of each
member in its dir (printed by describe() for a failure report).

Ports are the caller's: in a fresh network namespace any fixed ports are free;
in the host's namespace free_ports(n) picks loopback ports nothing listens on.

Clean-up: close() (also on leaving the `with` block and at exit) SIGKILLs every
member and removes the data dirs.  Members get PR_SET_PDEATHSIG=SIGKILL, so they
die with the test even when it is SIGKILLed; data dirs of such a run (named
lifeline-etcd-<pid>-...) are removed by the next EtcdCluster() whose pid differs.

Also: http_request() (one HTTP/1.1 request, optionally from inside a network
namespace: for lifeline's admin endpoint too), b64()/unb64(), prefix_end().
"""

import atexit
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from lifeline_testlib import die_with_parent, ns_socket, pid_alive, wait_until  # noqa: E402

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
DIR_RE = re.compile(r"^lifeline-etcd-(\d+)-")

_live = []
_atexit = [False]


# ---------------------------------------------------------------- availability

def etcd_missing_reason():
    """None when /usr/bin/etcd runs; else why not.  As root, a missing etcd is
    installed first (apt-get install etcd-server etcd-client)."""
    if not os.access(ETCD, os.X_OK) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["apt-get", "install", "-y", "-qq", "etcd-server", "etcd-client"],
                     ["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "etcd-server", "etcd-client"]):
            try:
                subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=600)
            except (OSError, subprocess.TimeoutExpired):
                pass
            if os.access(ETCD, os.X_OK):
                break
    if not os.access(ETCD, os.X_OK):
        if os.geteuid() != 0:
            return "%s not found and not root to install it (apt-get install etcd-server)" % ETCD
        return "%s not found and `apt-get install etcd-server` did not provide it" % ETCD
    try:
        r = subprocess.run([ETCD, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "%s --version failed: %s" % (ETCD, e)
    m = re.search(r"etcd Version: (\d+)\.(\d+)", r.stdout)
    if r.returncode != 0 or not m:
        return "%s --version did not say its version: %s" % (ETCD, r.stdout.strip()[:200])
    if (int(m.group(1)), int(m.group(2))) < (3, 4):
        return "%s is %s.%s; the v3 JSON gateway at /v3/ needs etcd >= 3.4" % (ETCD, m.group(1), m.group(2))
    return None


def require_etcd():
    """Exit 77 with a message when etcd cannot be had (see etcd_missing_reason)."""
    why = etcd_missing_reason()
    if why:
        print("SKIP: cluster tests need etcd: %s" % why, flush=True)
        sys.exit(77)


def etcd_version():
    r = subprocess.run([ETCD, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=20)
    m = re.search(r"etcd Version: (\S+)", r.stdout)
    return m.group(1) if m else "?"


# ---------------------------------------------------------------- encoding

def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def unb64(s):
    return base64.b64decode(s or "").decode("utf-8", "replace")


def prefix_end(prefix):
    """The range_end that covers every key starting with `prefix` (etcd's rule:
    the prefix with its last byte below 0xff incremented)."""
    b = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"


# ---------------------------------------------------------------- sockets, HTTP

# ns_socket(netns): lifeline_testlib.py.


class _NsConnection(http.client.HTTPConnection):
    def __init__(self, host, port, netns, timeout):
        http.client.HTTPConnection.__init__(self, host, port, timeout=timeout)
        self._netns = netns

    def connect(self):
        s = ns_socket(self._netns)
        s.settimeout(self.timeout)
        try:
            s.connect((self.host, self.port))
        except BaseException:
            s.close()
            raise
        self.sock = s


def http_request(method, host, port, path, body=None, netns=None, timeout=2.0, headers=None):
    """One HTTP request (a new connection, closed after) -> (status, body text).
    `body`: str, bytes or a dict/list sent as JSON.  Raises OSError
    (ConnectionRefusedError, socket.timeout...) when no answer comes."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    conn = _NsConnection(host, port, netns, timeout)
    try:
        h = {"Connection": "close"}
        if body is not None:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def free_ports(n, host="127.0.0.1"):
    """n distinct ports nothing listens on now, in this process's namespace."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


# ---------------------------------------------------------------- the cluster

    return True


def reap_stale_dirs():
    """Remove data dirs left by runs whose pid is dead (they were SIGKILLed)."""
    for base in {_scratch_base(), tempfile.gettempdir()}:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for d in names:
            m = DIR_RE.match(d)
            if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
                shutil.rmtree(os.path.join(base, d), ignore_errors=True)


# A member writes a 64 MB WAL and its db at start; a container's /dev/shm is
# 64 MB by default, where etcd dies with "no space left on device".
SHM_NEEDED = 512 << 20


def _scratch_base():
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize >= SHM_NEEDED:
            return shm
    return tempfile.gettempdir()


def _close_all():
    for c in list(_live):
        c.close()


class Member:
    def __init__(self, index, name, client_port, peer_port, data_dir, log_path):
        self.index, self.name = index, name
        self.client_port, self.peer_port = client_port, peer_port
        self.data_dir, self.log_path = data_dir, log_path
        self.proc = None

    def running(self):
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    def __init__(self, size=3, client_ports=None, peer_ports=None, hosts=("127.0.0.1",),
                 netns=None, token=None, heartbeat_ms=100, election_ms=1000, start=True,
                 timeout=20.0):
        if size < 1:
            raise ValueError("size must be >= 1")
        if client_ports is None or peer_ports is None:
            if netns is not None:
                raise ValueError("in a namespace, give client_ports and peer_ports")
            ports = free_ports(2 * size)
            client_ports = client_ports or ports[:size]
            peer_ports = peer_ports or ports[size:]
        if len(client_ports) != size or len(peer_ports) != size:
            raise ValueError("one client port and one peer port per member")
        if not _atexit[0]:
            _atexit[0] = True
            atexit.register(_close_all)
        reap_stale_dirs()
        self.size = size
        self.hosts = tuple(hosts)
        self.netns = netns
        self.heartbeat_ms, self.election_ms = heartbeat_ms, election_ms
        self.token = token or "ll-etcd-%d-%d" % (os.getpid(), int(time.time() * 1000) % 1000000)
        self.dir = tempfile.mkdtemp(prefix="lifeline-etcd-%d-" % os.getpid(), dir=_scratch_base())
        self.members = []
        for i in range(size):
            d = os.path.join(self.dir, "m%d" % i)
            os.mkdir(d)
            self.members.append(Member(i, "m%d" % i, client_ports[i], peer_ports[i],
                                       os.path.join(d, "data"), os.path.join(d, "etcd.log")))
        self.closed = False
        _live.append(self)
        if start:
            try:
                self.start(timeout)
            except BaseException:
                self.close()
                raise

    # -- addresses

    def client_urls(self, host=None, members=None):
        host = host or self.hosts[0]
        idx = range(self.size) if members is None else members
        return ["http://%s:%d" % (host, self.members[i].client_port) for i in idx]

    def _peer_url(self, m):
        return "http://127.0.0.1:%d" % m.peer_port

    # -- processes

    def _argv(self, m):
        initial = ",".join("%s=%s" % (x.name, self._peer_url(x)) for x in self.members)
        listen = ",".join("http://%s:%d" % (h, m.client_port) for h in self.hosts)
        argv = [ETCD,
                "--name", m.name,
                "--data-dir", m.data_dir,
                "--listen-client-urls", listen,
                "--advertise-client-urls", "http://%s:%d" % (self.hosts[0], m.client_port),
                "--listen-peer-urls", self._peer_url(m),
                "--initial-advertise-peer-urls", self._peer_url(m),
                "--initial-cluster", initial,
                "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new",
                "--heartbeat-interval", str(self.heartbeat_ms),
                "--election-timeout", str(self.election_ms),
                "--snapshot-count", "10000",
                "--logger", "zap",
                "--log-outputs", m.log_path,
                "--log-level", "info"]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns] + argv
        return argv

    def start_member(self, i):
        """Start member i (again: with the data dir it has, as a restart)."""
        m = self.members[i]
        if m.running():
            return
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("ETCD"):
                del env[k]         # no stray ETCD_* setting changes the flags above
        log = open(m.log_path + ".stderr", "ab")
        try:
            m.proc = subprocess.Popen(self._argv(m), stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
        finally:
            log.close()

    def start(self, timeout=20.0):
        for i in range(self.size):
            self.start_member(i)
        self.wait_healthy(timeout)
        return self

    def kill(self, i, sig=signal.SIGKILL):
        """Kill member i (SIGKILL: it vanishes as a crashed host's process would)."""
        m = self.members[i]
        if m.proc is None:
            return None
        if m.proc.poll() is None:
            try:
                os.kill(m.proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            m.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(m.proc.pid, signal.SIGKILL)
            m.proc.wait(10)
        return m.proc.returncode

    def stop_all(self):
        for i in range(self.size):
            self.kill(i)

    def close(self):
        if self.closed:
            return
        try:
            self.stop_all()
        finally:
            if os.environ.get("LL_ETCD_KEEP") != "1":
                shutil.rmtree(self.dir, ignore_errors=True)
            self.closed = True
            if self in _live:
                _live.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- health

    def request(self, i, method, path, body=None, timeout=1.0, host=None):
        """One HTTP request to member i -> (status, parsed JSON or text)."""
        st, text = http_request(method, host or self.hosts[0], self.members[i].client_port, path,
                                body=body, netns=self.netns, timeout=timeout)
        try:
            return st, json.loads(text)
        except ValueError:
            return st, text

    def healthy(self, i):
        """Member i answers /health with health "true" (it has a leader)."""
        if not self.members[i].running():
            return False
        try:
            st, body = self.request(i, "GET", "/health", timeout=1.0)
        except OSError:
            return False
        return st == 200 and isinstance(body, dict) and body.get("health") == "true"

    def wait_healthy(self, timeout=20.0, members=None):
        idx = list(range(self.size)) if members is None else list(members)

        def ok():
            for i in idx:
                m = self.members[i]
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError("etcd member %s exited with %s:\n%s"
                                       % (m.name, m.proc.returncode, self.log_tail(i)))
                if not self.healthy(i):
                    return False
            return True
        try:
            wait_until(ok, timeout, "etcd members %s healthy" % idx, interval=0.05, error=TimeoutError)
        except TimeoutError as e:
            raise TimeoutError("%s\n%s" % (e, self.describe()))

    def alive(self):
        return [m.index for m in self.members if m.running()]

    # -- leadership

    def status(self, i, timeout=1.0):
        """Member i's /v3/maintenance/status answer (a dict), or None."""
        try:
            st, r = self.request(i, "POST", "/v3/maintenance/status", {}, timeout=timeout)
        except OSError:
            return None
        return r if st == 200 and isinstance(r, dict) else None

    def member_id(self, i):
        s = self.status(i)
        return int(s["header"]["member_id"]) if s else None

    def leader(self):
        """Index of the member that the running members agree leads, or None."""
        ids, leaders = {}, set()
        for i in self.alive():
            s = self.status(i)
            if s is None:
                continue
            ids[int(s["header"]["member_id"])] = i
            leaders.add(int(s.get("leader", 0)))
        if len(leaders) != 1:
            return None
        return ids.get(leaders.pop())

    def move_leader(self, to, timeout=10.0):
        """Make member `to` the leader (transfer-leadership, asked of the
        current leader); waits until every running member agrees."""
        target = self.member_id(to)
        if target is None:
            raise OSError("etcd member %d does not answer" % to)

        def moved():
            cur = self.leader()
            if cur == to:
                return True
            if cur is not None:
                try:
                    self.request(cur, "POST", "/v3/maintenance/transfer-leadership",
                                 {"targetID": str(target)}, timeout=3.0)
                except OSError:
                    pass
            return False
        wait_until(moved, timeout, "etcd member %d to lead" % to, interval=0.1, error=TimeoutError)

    # -- reading the store

    def _any(self, method, path, body, members=None, timeout=1.0):
        errors = []
        for i in (members if members is not None else self.alive()):
            try:
                st, r = self.request(i, method, path, body, timeout=timeout)
            except OSError as e:
                errors.append("%s: %s" % (self.members[i].name, e))
                continue
            if st == 200 and isinstance(r, dict):
                return r
            errors.append("%s: HTTP %d %s" % (self.members[i].name, st, str(r)[:200]))
        raise OSError("no etcd member answered %s: %s" % (path, "; ".join(errors) or "none running"))

    def range(self, key, prefix=False, members=None):
        """The keys at `key` (prefix=True: under it), read through the v3 JSON
        gateway: [{"key", "value", "lease" (int), "create_revision", "mod_revision"}]."""
        body = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        r = self._any("POST", "/v3/kv/range", body, members)
        out = []
        for kv in r.get("kvs", []):
            out.append({"key": unb64(kv.get("key")), "value": unb64(kv.get("value")),
                        "lease": int(kv.get("lease", 0)),
                        "create_revision": int(kv.get("create_revision", 0)),
                        "mod_revision": int(kv.get("mod_revision", 0))})
        return out

    def get(self, key, members=None):
        """The value at `key`, or None."""
        kvs = self.range(key, members=members)
        return kvs[0]["value"] if kvs else None

    def put(self, key, value, lease=0, members=None):
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return self._any("POST", "/v3/kv/put", body, members)

    def delete(self, key, prefix=False, members=None):
        body = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        return int(self._any("POST", "/v3/kv/deleterange", body, members).get("deleted", 0))

    def lease_ttl(self, lease, members=None):
        """TTL left (s) of a lease (int or hex string); -1 when it is gone."""
        if isinstance(lease, str):
            lease = int(lease, 16)
        r = self._any("POST", "/v3/lease/timetolive", {"ID": str(lease)}, members)
        return int(r.get("TTL", -1))

    def leases(self, members=None):
        r = self._any("POST", "/v3/lease/leases", {}, members)
        return [int(x["ID"]) for x in r.get("leases", [])]

    # -- reporting

    def log_tail(self, i, n=15):
        m = self.members[i]
        lines = []
        for p in (m.log_path + ".stderr", m.log_path):
            try:
                with open(p, errors="replace") as f:
                    lines += f.read().splitlines()[-n:]
            except OSError:
                pass
        return "\n".join("      " + ln for ln in lines[-n:])

    def describe(self):
        out = ["  etcd cluster (%s), netns %s:" % (self.dir, self.netns or "-")]
        for m in self.members:
            state = ("running" if m.running() else
                     "not started" if m.proc is None else "exited %s" % m.proc.returncode)
            out.append("    %s client :%d peer :%d %s" % (m.name, m.client_port, m.peer_port, state))
            if m.proc is not None and m.proc.poll() is not None:
                out.append(self.log_tail(m.index))
        return "\n".join(out)


if __name__ == "__main__":
    # Smoke test: a 3-member cluster in this namespace; write, read, kill one, read again.
    require_etcd()
    t = time.monotonic()
    with EtcdCluster(3, hosts=("127.0.0.1", "127.0.0.2")) as c:
        print("healthy after %.2f s: %s" % (time.monotonic() - t, c.client_urls()))
        c.put("/lifeline/test/a", "one")
        print("range:", c.range("/lifeline/test/", prefix=True))
        c.move_leader(0)
        print("leader:", c.leader())
        c.kill(0)
        t1 = time.monotonic()
        c.wait_healthy(members=[1, 2])
        print("leader 0 killed; 1 and 2 healthy again after %.2f s, leader %s"
              % (time.monotonic() - t1, c.leader()))
        print("member 0 killed; health of 1, 2:", c.healthy(1), c.healthy(2))
        print("get via 127.0.0.2:", c.request(1, "POST", "/v3/kv/range",
                                                {"key": b64("/lifeline/test/a")}, host="127.0.0.2")[0])
        print("get:", c.get("/lifeline/test/a"))
        c.stop_all()
        print("all stopped; alive:", c.alive())
    print("done in %.2f s" % (time.monotonic() - t))
