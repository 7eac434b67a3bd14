"""Black-box test harness for lifeline: the real binary, real sockets, loopback only.

What it offers:

- ``Lifeline``: writes a config to a temporary directory, starts the daemon
  with ``--log-format json`` (stderr piped, parsed line by line by a reader
  thread), waits on log lines, signals, stops, kills, reads its RSS.
- ``run_cli``: one short command-line run (``--check``, ``--version``...).
- ``AcceptServer``: a listener whose accepted sockets are handed to the test,
  which drives the server side itself (half-close, floods, peer ports).
- ``EchoServer``: a selectors-based echo server for many connections at once.
- ``SinkServer``: records what every connection received, its EOF/reset time
  and its peer address; never writes.
- ``FloodServer``: sends a fixed amount of data to each accepted connection as
  fast as it can, and never reads.
- ``Flooder`` / ``Reader``: one thread pushing (or draining) a socket, with a
  running byte count and SHA-256.
- ``free_port()``, ``wait_until()``, ``wait_stable()`` and socket helpers.

Rules the tests follow: wait on events with a deadline (never a bare sleep
as synchronisation), use only 127.0.0.1 and ::1, clean up every process and
socket (``LifelineTestCase`` registers the clean-ups).
"""

import collections
import calendar
import hashlib
import json
import os
import queue
import random
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))

# Shared with the fault tests, the soak and bench/: tests/lib/lifeline_testlib.py.
from lifeline_testlib import (SANITIZER, TIME_SCALE, lifeline_argv, lifeline_bin,  # noqa: E402,F401
                              parse_log_line, proc_status_value, scaled, wait_until,
                              write_config)

LOOPBACK = "127.0.0.1"
LOOPBACK6 = "::1"

_ENV_BIN = os.environ.get("LIFELINE_BIN")
BIN = lifeline_bin()

MiB = 1024 * 1024
KiB = 1024


def require_binary():
    """Under ctest LIFELINE_BIN is set and a missing binary is a failure; run by
    hand without a build, the tests skip with a clear message."""
    if os.access(BIN, os.X_OK):
        return
    if _ENV_BIN:
        raise AssertionError(f"LIFELINE_BIN={_ENV_BIN} is not an executable file")
    raise unittest.SkipTest(f"lifeline binary not built ({BIN}); set LIFELINE_BIN")


# --------------------------------------------------------------------------
# waiting


def wait_stable(value_fn, quiet, timeout, what="value to stop changing"):
    """Waits until value_fn() has not changed for `quiet` seconds (e.g. a byte
    counter of a blocked sender); returns the stable value."""
    deadline = time.monotonic() + timeout
    last = value_fn()
    since = time.monotonic()
    while True:
        time.sleep(0.02)
        now = time.monotonic()
        cur = value_fn()
        if cur != last:
            last, since = cur, now
        elif now - since >= quiet:
            return cur
        if now >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what} "
                                 f"(last value {cur})")


# --------------------------------------------------------------------------
# ports and sockets


_handed_out = collections.deque(maxlen=4096)


def free_port(host=LOOPBACK):
    """A port nothing listens on right now (bind port 0, read it, close),
    and not one this process handed out recently: the kernel may give the
    same free port to two binds in a row, and a test that asks for several
    ports before binding any of them needs them distinct."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.append(port)
            return port
    raise AssertionError("no fresh free port in 100 tries")


def have_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK6, 0))
        return True
    except OSError:
        return False


def ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()
            return int(lo), int(hi)
    except (OSError, ValueError):
        return None


def bound_client_socket(lo=20000, hi=30000, host=LOOPBACK):
    """A client socket bound to a free fixed source port in [lo, hi]."""
    ports = list(range(lo, hi + 1))
    random.shuffle(ports)
    for port in ports[:2000]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
            return s
        except OSError:
            s.close()
    raise AssertionError(f"no free port in {lo}-{hi}")


def listening(port):
    """Is any socket of this process's network namespace listening on the
    TCP port (any address)? Read from /proc/net/tcp and tcp6."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                rows = f.read().split("\n")[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            # local_address is "ADDR:PORT" in hex; state 0A is LISTEN.
            if len(cols) > 3 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def connect(port, host=LOOPBACK, timeout=5.0, sock=None):
    """A connected blocking client socket with a timeout on every operation."""
    if sock is None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def addr_str(addr):
    """('127.0.0.1', 5555) -> '127.0.0.1:5555' (the log's client format)."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def recv_exact(sock, n, timeout=10.0):
    """Exactly n bytes, or AssertionError on EOF/timeout."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out: got {len(buf)} of {n} bytes")
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except socket.timeout:
            raise AssertionError(f"timed out: got {len(buf)} of {n} bytes") from None
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_until_eof(sock, timeout=10.0, limit=1 << 30):
    """Everything until EOF. AssertionError on timeout; a reset propagates."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for EOF after {len(buf)} bytes")
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except socket.timeout:
            raise AssertionError(f"timed out waiting for EOF after {len(buf)} bytes") from None
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise AssertionError(f"more than {limit} bytes before EOF")


def wait_closed(sock, timeout=10.0):
    """Waits until the peer closes: returns 'eof' or 'reset'. Data arriving
    instead is an AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out waiting for the connection to close")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError("timed out waiting for the connection to close") from None
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        if not chunk:
            return "eof"
        raise AssertionError(f"expected the connection to close, got {len(chunk)} bytes")


def pattern_block(seed, size=MiB):
    """Deterministic pseudo-random bytes: cheap to make, different per seed."""
    return random.Random(seed).randbytes(size)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def raise_nofile(n):
    """Raises this process's soft RLIMIT_NOFILE to at least n (within the hard
    limit); returns the resulting soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(n, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def raise_nofile_to_hard():
    """Soft RLIMIT_NOFILE = hard limit, for this process and so for the
    daemons it starts (the daemon needs ~2 fds per session). Done in the
    parent rather than in a preexec_fn, which is unsafe with threads running."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


# --------------------------------------------------------------------------
# configuration


def route(listen_port, servers, name="r", listen_host=LOOPBACK, buffer_bytes=None,
          connect_timeout_ms=3000, retries=0, retry_backoff_ms=50, source_address=None):
    """One route. `servers` are ports (on 127.0.0.1) or "host:port" strings."""
    up = {
        "servers": [s if isinstance(s, str) else f"{LOOPBACK}:{s}" for s in servers],
        "connect_timeout_ms": connect_timeout_ms,
        "retries": retries,
        "retry_backoff_ms": retry_backoff_ms,
    }
    if source_address is not None:
        up["source_address"] = source_address
    listen = f"[{listen_host}]:{listen_port}" if ":" in listen_host else f"{listen_host}:{listen_port}"
    r = {"name": name, "listen": listen, "upstream": up}
    if buffer_bytes is not None:  # else lifeline's default
        r["buffer_bytes"] = buffer_bytes
    return r


def config(routes, workers=1, drain_timeout_ms=5000, log_level="info", log_format="json"):
    return {
        "workers": workers,
        "log": {"level": log_level, "format": log_format},
        "shutdown": {"drain_timeout_ms": drain_timeout_ms},
        "routes": routes,
    }


def log_time(rec):
    """A log record's ts ("2026-11-24T12:00:00.123Z") as seconds since the epoch."""
    ts = rec["ts"]
    t = time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(t) + float("0" + ts[19:].rstrip("Z"))


def listen_port(d, i=0):
    """The listen port of route i of a running Lifeline."""
    return int(d.cfg["routes"][i]["listen"].rsplit(":", 1)[1])


def run_cli(args, env=None, timeout=None):
    """Runs the binary to completion; returns CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env.pop("LIFELINE_CONFIG", None)
    if env:
        full_env.update(env)
    return subprocess.run([BIN] + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=full_env,
                          timeout=timeout or scaled(20))


# --------------------------------------------------------------------------
# the daemon


class Lifeline:
    """One lifeline process. Log lines (stderr) are collected by a reader
    thread: `lines` (raw text) and `records` (parsed JSON lines)."""

    def __init__(self, cfg, directory, args=None, env=None, log_format="json",
                 use_config_flag=True, wrapper=None):
        self.cfg = cfg
        self.wrapper = list(wrapper or [])   # e.g. setpriv/unshare, exec'ing BIN
        self.dir = directory
        self.path = write_config(directory, cfg) if cfg is not None else None
        self.extra_args = list(args or [])
        self.env = env
        self.log_format = log_format
        self.use_config_flag = use_config_flag
        self.proc = None
        self.lines = []
        self.records = []
        self.stdout = []
        self._cond = threading.Condition()
        self._eof = False
        self._threads = []

    # -- process

    def start(self):
        argv = self.wrapper + lifeline_argv(BIN, self.path if self.use_config_flag else None,
                                            self.log_format, self.extra_args)
        env = dict(os.environ)
        env.pop("LIFELINE_CONFIG", None)
        if self.env:
            env.update(self.env)
        raise_nofile_to_hard()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        for stream, fn in ((self.proc.stderr, self._read_stderr),
                           (self.proc.stdout, self._read_stdout)):
            t = threading.Thread(target=fn, args=(stream,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _read_stderr(self, stream):
        for raw in stream:
            text, rec = parse_log_line(raw)
            with self._cond:
                self.lines.append(text)
                if isinstance(rec, dict):
                    self.records.append(rec)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stdout(self, stream):
        for raw in stream:
            with self._cond:
                self.stdout.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def signal(self, sig=signal.SIGTERM):
        if self.running():
            self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        """Exit code, or AssertionError if still running at the deadline.
        Once it has exited, every line it wrote has been collected."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"lifeline (pid {self.pid}) still running after "
                                 f"{timeout:.1f} s\n{self.log_tail()}") from None
        for t in self._threads:
            t.join(timeout=5)
        return code

    def stop(self, timeout=None):
        """SIGTERM, then wait for the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout or scaled(10))

    def kill(self):
        """Clean-up: SIGKILL if still running, reap, close the pipes."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for t in self._threads:
            t.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass

    # -- logs

    def log_tail(self, n=40):
        with self._cond:
            tail = self.lines[-n:]
        return "--- lifeline stderr (last %d lines) ---\n%s" % (len(tail), "\n".join(tail))

    @staticmethod
    def _match(rec, msg, fields):
        if msg is not None and rec.get("msg") != msg:
            return False
        return all(rec.get(k) == v for k, v in fields.items())

    def find(self, msg=None, **fields):
        """Every parsed log record with this msg and these field values."""
        with self._cond:
            return [r for r in self.records if self._match(r, msg, fields)]

    def wait_for(self, pred, timeout, what="log line"):
        """First record (in order) satisfying pred; waits until it appears.
        AssertionError on timeout or if the process exits without it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = 0
            while True:
                while i < len(self.records):
                    if pred(self.records[i]):
                        return self.records[i]
                    i += 1
                if self._eof:
                    raise AssertionError(f"lifeline exited (code {self.proc.poll()}) before "
                                         f"{what}\n{self._tail_locked()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout:.1f} s waiting for "
                                         f"{what}\n{self._tail_locked()}")
                self._cond.wait(left)

    def wait_line(self, pattern, timeout=None):
        """First raw stderr line matching the regex (any log format)."""
        rx = re.compile(pattern)
        timeout = timeout or scaled(10)
        deadline = time.monotonic() + timeout
        with self._cond:
            i = 0
            while True:
                while i < len(self.lines):
                    if rx.search(self.lines[i]):
                        return self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    raise AssertionError(f"no line matching {pattern!r}\n{self._tail_locked()}")
                self._cond.wait(left)

    def _tail_locked(self, n=40):
        return "--- lifeline stderr ---\n" + "\n".join(self.lines[-n:])

    def wait_log(self, msg, timeout=None, **fields):
        return self.wait_for(lambda r: self._match(r, msg, fields), timeout or scaled(10),
                             what=f"log {msg!r} {fields}")

    def wait_count(self, n, msg, timeout=None, **fields):
        """Waits until at least n matching records exist; returns them all."""
        timeout = timeout or scaled(10)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [r for r in self.records if self._match(r, msg, fields)]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "lifeline exited" if self._eof else f"timed out after {timeout:.1f} s"
                    raise AssertionError(f"{why}: expected {n} {msg!r} lines {fields}, "
                                         f"have {len(got)}\n{self._tail_locked()}")
                self._cond.wait(left)

    def wait_ready(self, timeout=None):
        return self.wait_log("ready", timeout or scaled(15))

    def session_closed(self, client, timeout=None):
        """The `session closed` record of the session from this client
        address ('127.0.0.1:5555' or a (host, port) tuple)."""
        if not isinstance(client, str):
            client = addr_str(client)
        return self.wait_log("session closed", timeout, client=client)

    def errors(self):
        return [r for r in self.find() if r.get("level") == "error"]

    # -- memory

    def rss_kib(self):
        """VmRSS in KiB from /proc/PID/status."""
        rss = proc_status_value(self.pid, "VmRSS")
        if rss is None:
            raise AssertionError("no VmRSS in /proc status")
        return rss


# --------------------------------------------------------------------------
# servers


class _Loop:
    """A thread running a selectors loop until stopped."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error = None

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        try:
            while not self._stop.is_set():
                for key, events in self.sel.select(timeout=0.05):
                    key.data(key, events)
                self.tick()
        except Exception as e:  # surfaced by the tests through .error
            self.error = e
            raise

    def tick(self):
        pass

    def stop(self):
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        for key in list(self.sel.get_map().values()):
            try:
                key.fileobj.close()
            except OSError:
                pass
        self.sel.close()


def _listener(host, port, backlog):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.listen(backlog)
    return s


class AcceptServer:
    """Accepts connections in a thread and hands each (blocking) socket to the
    test through accept(). Accepted sockets are closed by close()."""

    def __init__(self, host=LOOPBACK, port=0, backlog=128):
        self.listener = _listener(host, port, backlog)
        self.port = self.listener.getsockname()[1]
        self._q = queue.Queue()
        self._all = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                if not sel.select(timeout=0.05):
                    continue
                try:
                    conn, peer = self.listener.accept()
                except OSError:
                    continue
                conn.setblocking(True)
                self._all.append(conn)
                self._q.put((conn, peer, time.monotonic()))
        finally:
            sel.close()

    def accept(self, timeout=None):
        """(conn, peer): the next accepted connection. AssertionError if none."""
        try:
            conn, peer, _ = self._q.get(timeout=timeout or scaled(10))
        except queue.Empty:
            raise AssertionError("no connection reached the server") from None
        conn.settimeout(scaled(10))
        return conn, peer

    def accepted_count(self):
        return len(self._all)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()
        for c in self._all:
            try:
                c.close()
            except OSError:
                pass


class EchoServer(_Loop):
    """Echoes every byte back; on the client's EOF it finishes writing, then
    closes. Handles many connections in one thread."""

    MAX_PENDING = 1 << 20

    def __init__(self, host=LOOPBACK, port=0, backlog=4096):
        super().__init__()
        self.listener = _listener(host, port, backlog)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.peers = []
        self.sel.register(self.listener, selectors.EVENT_READ, self._on_accept)
        self.start()

    def _on_accept(self, key, events):
        while True:
            try:
                conn, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(False)
            self.accepted += 1
            self.peers.append(peer)
            state = {"out": bytearray(), "eof": False, "reading": True}
            self.sel.register(conn, selectors.EVENT_READ,
                              lambda k, e, st=state: self._on_conn(k, e, st))

    def _update(self, conn, st):
        ev = 0
        if st["reading"]:
            ev |= selectors.EVENT_READ
        if st["out"]:
            ev |= selectors.EVENT_WRITE
        if ev == 0:
            self.sel.unregister(conn)
            conn.close()
        else:
            self.sel.modify(conn, ev, self.sel.get_key(conn).data)

    def _on_conn(self, key, events, st):
        conn = key.fileobj
        try:
            if events & selectors.EVENT_READ and st["reading"]:
                data = conn.recv(65536)
                if data:
                    st["out"] += data
                else:
                    st["reading"] = False
                    st["eof"] = True
            if st["out"]:
                n = conn.send(st["out"])
                del st["out"][:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.sel.unregister(conn)
            conn.close()
            return
        if st["eof"] and not st["out"]:
            st["reading"] = False
        self._update(conn, st)

    def close(self):
        self.stop()


class SinkRecord:
    """What one connection to a SinkServer saw."""

    def __init__(self, peer, local):
        self.peer = peer
        self.local = local
        self.accepted_at = time.monotonic()
        self.data = bytearray()
        self.count = 0
        self.hash = hashlib.sha256()
        self.end = None          # 'eof' or 'reset'
        self.ended_at = None
        self.ended = threading.Event()


class SinkServer(_Loop):
    """Reads every connection to EOF and records it; never writes. Keeps at
    most `keep` bytes of each connection's data (the count and SHA-256 cover
    everything)."""

    def __init__(self, host=LOOPBACK, port=0, backlog=128, keep=16 * MiB, accepting=True):
        super().__init__()
        self.keep = keep
        self.listener = _listener(host, port, backlog)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.records = []
        self._lock = threading.Lock()
        if accepting:
            self.sel.register(self.listener, selectors.EVENT_READ, self._on_accept)
        self.start()

    def start_accepting(self):
        """For a server made with accepting=False, whose connections waited
        in the listen queue until now."""
        self.sel.register(self.listener, selectors.EVENT_READ, self._on_accept)

    def _on_accept(self, key, events):
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            conn.setblocking(False)
            rec = SinkRecord(peer, conn.getsockname())
            with self._lock:
                self.records.append(rec)
            self.sel.register(conn, selectors.EVENT_READ,
                              lambda k, e, r=rec: self._on_conn(k, r))

    def _on_conn(self, key, rec):
        conn = key.fileobj
        try:
            data = conn.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, rec.end = None, "reset"
        if data:
            rec.count += len(data)
            rec.hash.update(data)
            if len(rec.data) < self.keep:
                rec.data += data[: self.keep - len(rec.data)]
            return
        if rec.end is None:
            rec.end = "eof"
        rec.ended_at = time.monotonic()
        rec.ended.set()
        self.sel.unregister(conn)
        conn.close()

    def connections(self):
        with self._lock:
            return list(self.records)

    def wait_connection(self, n=1, timeout=None):
        """The n-th (1-based) connection record, once it exists."""
        wait_until(lambda: len(self.records) >= n, timeout or scaled(10),
                   what=f"connection #{n} at the sink server")
        return self.records[n - 1]

    def close(self):
        self.stop()
        self.listener.close()  # also when it never accepted


class Flooder:
    """A thread sending `total` bytes (a repeated pseudo-random block) on a
    blocking socket as fast as the peer takes them, then shutting down its
    write side. `sent` counts bytes accepted by the kernel so far."""

    def __init__(self, sock, total, seed=1, block=MiB, shutdown=True):
        self.sock = sock
        self.total = total
        self.block = pattern_block(seed, block)
        self.shutdown = shutdown
        self.sent = 0
        self.hash = hashlib.sha256()
        self.error = None
        self.done = threading.Event()
        self.sock.settimeout(None)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        view = memoryview(self.block)
        try:
            while self.sent < self.total:
                off = self.sent % len(self.block)
                end = min(len(self.block), off + (self.total - self.sent), off + 256 * KiB)
                n = self.sock.send(view[off:end])
                self.hash.update(view[off:off + n])
                self.sent += n
            if self.shutdown:
                self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.error = e
        finally:
            self.done.set()

    def join(self, timeout):
        if not self.done.wait(timeout):
            raise AssertionError(f"sender not finished after {timeout:.1f} s: "
                                 f"{self.sent} of {self.total} bytes sent")
        if self.error:
            raise AssertionError(f"sender failed after {self.sent} bytes: {self.error!r}")


class Reader:
    """A thread reading a socket to EOF: running count and SHA-256, how it
    ended ('eof' or 'reset')."""

    def __init__(self, sock, keep=0):
        self.sock = sock
        self.keep = keep
        self.data = bytearray()
        self.count = 0
        self.hash = hashlib.sha256()
        self.end = None
        self.error = None
        self.done = threading.Event()
        self.sock.settimeout(None)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        try:
            while True:
                n = self.sock.recv_into(buf)
                if n == 0:
                    self.end = "eof"
                    break
                self.hash.update(view[:n])
                if len(self.data) < self.keep:
                    self.data += view[: min(n, self.keep - len(self.data))]
                self.count += n
        except (ConnectionResetError, BrokenPipeError):
            self.end = "reset"
        except OSError as e:
            self.error = e
        finally:
            self.done.set()

    def join(self, timeout):
        if not self.done.wait(timeout):
            raise AssertionError(f"reader saw no EOF after {timeout:.1f} s "
                                 f"({self.count} bytes read)")
        if self.error:
            raise AssertionError(f"reader failed after {self.count} bytes: {self.error!r}")


class FloodServer:
    """Sends `total` bytes to every accepted connection as fast as it can,
    never reads. flooders[i] is the Flooder of the i-th connection."""

    def __init__(self, total, seed=7, host=LOOPBACK):
        self.total = total
        self.seed = seed
        self.server = AcceptServer(host)
        self.port = self.server.port
        self.flooders = []

    def accept_and_flood(self, timeout=None):
        conn, _ = self.server.accept(timeout)
        f = Flooder(conn, self.total, seed=self.seed).start()
        self.flooders.append(f)
        return f

    def close(self):
        self.server.close()


# --------------------------------------------------------------------------
# test case base


class LifelineTestCase(unittest.TestCase):
    """Registers clean-ups for everything a test starts: lifeline processes,
    servers, client sockets, temp dirs.

    A daemon started with start_lifeline() that is still running at the end
    of the test is stopped the way an operator would (SIGTERM, then, if open
    sessions still hold the drain after a second, another SIGTERM), and must
    exit 0: under AddressSanitizer this is also where a
    leak shows. Unless the test expects errors, its stderr must hold only
    well-formed JSON lines (a sanitizer report is not) and no error-level
    line. It is SIGKILLed if it does not exit."""

    @classmethod
    def setUpClass(cls):
        require_binary()

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="lifeline-it-")
        self.addCleanup(self._tmp.cleanup)
        self.tmpdir = self._tmp.name
        self._daemons = []

    def tearDown(self):
        # Keep the daemon's log in the output of a failed test run.
        if os.environ.get("LIFELINE_TEST_VERBOSE"):
            for d in self._daemons:
                print(d.log_tail(200))

    def start_lifeline(self, cfg, wait_ready=True, expect_errors=False, **kwargs):
        d = Lifeline(cfg, self.tmpdir, **kwargs)
        self._daemons.append(d)
        self.addCleanup(self._finish, d, expect_errors)
        d.start()
        if wait_ready:
            d.wait_ready()
        return d

    def _finish(self, d, expect_errors):
        problems = []
        try:
            if d.running():
                d.signal(signal.SIGTERM)
                try:
                    code = d.wait_exit(scaled(1))
                except AssertionError:
                    # Sessions still open hold the drain: end it now.
                    d.signal(signal.SIGTERM)
                    code = d.wait_exit(scaled(10))
                if code != 0:
                    problems.append(f"exit code {code} when stopped at clean-up")
            if not expect_errors:
                json_logs = d.log_format == "json" or (
                    d.log_format is None and isinstance(d.cfg, dict)
                    and d.cfg.get("log", {}).get("format") == "json")
                for line in list(d.lines):
                    if json_logs and not line.startswith("{"):
                        problems.append(f"unexpected stderr line: {line}")
                for rec in d.errors():
                    problems.append(f"error logged: {json.dumps(rec)}")
        finally:
            d.kill()
        if problems:
            raise AssertionError("lifeline at clean-up:\n" + "\n".join(problems[:20]) +
                                 "\n" + d.log_tail())

    def server(self, cls, *args, **kwargs):
        s = cls(*args, **kwargs)
        self.addCleanup(s.close)
        return s

    def client(self, port, **kwargs):
        s = connect(port, **kwargs)
        self.addCleanup(s.close)
        return s

    def track(self, sock):
        self.addCleanup(sock.close)
        return sock

    def assertSessionClosed(self, d, client, reason, timeout=None, **fields):
        rec = d.session_closed(client, timeout)
        self.assertEqual(rec.get("reason"), reason, f"session closed: {rec}")
        for k, v in fields.items():
            self.assertEqual(rec.get(k), v, f"session closed field {k}: {rec}")
        return rec
