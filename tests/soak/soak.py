#!/usr/bin/env python3
"""Soak test with chaos for lifeline (`make soak`; not part of `make test`).

One lifeline (LIFELINE_BIN, default build/lifeline; workers 2, admin endpoint
on) runs for --seconds (default 600) under a mix of traffic, all at once, on
loopback only:

- clean sessions (route `main`): a 16-byte token, then 0 B .. 4 MiB of random
  bytes (mostly small), half-close, read the echo to EOF. The echo server
  records per token the length and SHA-256 of what it got before EOF; both
  directions are checked byte-exact, and the `session closed` line must say
  client_eof with both byte counts right;
- server-first half-closes: the server sends a reply and shuts down its write
  side while the client goes on sending (reason upstream_eof);
- client resets mid-stream (SO_LINGER 0, close): the server must have got a
  prefix of what was sent, then EOF;
- takeovers (route `take`, client.identity "address"): clients from
  127.0.0.2 .. 127.0.0.40 open a new connection while the old one is open; the
  old session must end `replaced`, and the server must read the EOF of the
  old upstream connection before it accepts the next one of that client;
- fixed-port returns (route `fixed`, identity "address_port"): bind a fixed
  source port, abort with RST, bind the same port again and reconnect; same
  server-side order check;
- admin kills: about every second GET /sessions, then POST
  /sessions/{id}/close for 1-3 random sessions among the long-lived "victim"
  (trickling echo) sessions, non-readers, flap, takeover and fixed-port
  sessions (never the clean ones, whose byte-exact checks would otherwise
  mean nothing); a killed session must end admin_kill, and a session that
  ends early must have been killed;
- a reload (SIGHUP) every few seconds, alternating between two valid files
  (buffer_bytes, silence_ms, backoff, an extra route added and removed, with
  light clean traffic on it while it exists); each must log `reloaded`;
- a flapping upstream (route `flap`, upstream.on_close "reconnect", small
  retries and backoff): its server cycles about every second between
  accept-and-close, refusing (listener closed), accept-and-reset and echo;
- clients that stop reading: send a lot, never read, close after 2-4 s.

A warm-up (--warmup seconds of the same mix) comes first; then all sessions
end and the descriptor and RSS baselines are taken. After the soak, a short
flap probe measures lifeline's CPU and log rate with only a flapping server
to talk to. Then every session must have ended, the counts, descriptors and
memory must be back to their baselines, no sanitizer may have reported
anything, and SIGTERM must give exit code 0. The summary lists every failure;
the exit code is 1 on failure.

Python standard library only; the daemon wrapper and helpers come from
tests/integration/harness.py and tests/lib/lifeline_testlib.py. Every wait has a deadline; the only sleeps are
the chaos schedule's pacing.
"""

import argparse
import collections
import errno
import hashlib
import heapq
import json
import os
import random
import re
import selectors
import signal
import socket
import struct
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))

import harness  # noqa: E402
from harness import KiB, LOOPBACK, MiB, log_time, write_config  # noqa: E402
from lifeline_testlib import (SANITIZER, TIME_SCALE, parse_log_line,  # noqa: E402
                              proc_cpu_seconds, proc_status_value)

SCALE = TIME_SCALE                  # 3 under ASan: deadlines only, never rates

# --------------------------------------------------------------------------
# payloads

POOL_SIZE = 8 * MiB
POOL = b""                          # random bytes; set in main() from the seed
POOL_MV = None
TOKEN = struct.Struct(">BBHIQ")     # mode, slot (client IP index), port, arg, sid
M_ECHO, M_HALF = 0, 1               # server behaviour chosen by the token
REPLY_MAX = 64 * KiB


def make_pool(seed):
    global POOL, POOL_MV
    POOL = random.Random(seed).randbytes(POOL_SIZE + REPLY_MAX)
    POOL_MV = memoryview(POOL)


def reply_offset(sid):
    return (sid * 2654435761) % (POOL_SIZE - REPLY_MAX)


def sha_of(off, n):
    return hashlib.sha256(POOL_MV[off:off + n]).hexdigest()


def clean_size(rng):
    """0 B .. 4 MiB, mostly small."""
    x = rng.random()
    if x < 0.40:
        return rng.randint(0, 256)
    if x < 0.75:
        return rng.randint(257, 16 * KiB)
    if x < 0.95:
        return rng.randint(16 * KiB, 256 * KiB)
    if x < 0.99:
        return rng.randint(256 * KiB, MiB)
    return rng.randint(MiB, 4 * MiB)


def mono():
    return time.monotonic()


# --------------------------------------------------------------------------
# ports: listeners the test closes and opens again (the flap server, the extra
# route across reloads) must not be in the ephemeral range, where lifeline's
# own upstream connections could take the port in between.

def fixed_range_port(used, lo=20000, hi=29999):
    rng = random.Random()
    for _ in range(5000):
        p = rng.randint(lo, hi)
        if p in used:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((LOOPBACK, p))
        except OSError:
            continue
        used.add(p)
        return p
    raise RuntimeError(f"no free port in {lo}-{hi}")


def listener(port, backlog=4096):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((LOOPBACK, port))
    s.listen(backlog)
    s.setblocking(False)
    return s


LINGER0 = struct.pack("ii", 1, 0)


def abort(sock):
    """Close with RST."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    except OSError:
        pass
    sock.close()


# --------------------------------------------------------------------------
# upstream servers


class SConn:
    __slots__ = ("sock", "hdr", "mode", "sid", "slot", "port", "arg", "n", "h", "out",
                 "reading", "ended", "end", "accept_seq", "eof_seq", "accept_t", "eof_t",
                 "wshut", "echo")

    def __init__(self, sock, seq, echo):
        self.sock = sock
        self.hdr = b""
        self.mode = None
        self.sid = None
        self.slot = self.port = self.arg = 0
        self.n = 0
        self.h = None
        self.out = bytearray()
        self.reading = True
        self.ended = False
        self.end = None
        self.accept_seq = seq
        self.eof_seq = None
        self.accept_t = mono()
        self.eof_t = None
        self.wshut = False
        self.echo = echo


class Upstream(threading.Thread):
    """A selectors echo server. The first 16 bytes of a connection are the
    token: mode M_ECHO echoes everything (token included); M_HALF sends `arg`
    bytes of reply, shuts down its write side and reads on to EOF. At EOF (or
    reset) it appends one record to `records`: the token's fields, the
    payload length and SHA-256 (after the token), how it ended, and the
    sequence numbers of the accept and of the EOF.

    `ordered` (the takeover server): every readable connection is read to
    EAGAIN or EOF before any new connection is accepted in the same loop
    turn, so an EOF the kernel queued before a new connection's handshake is
    always seen first; no read backpressure (small payloads)."""

    def __init__(self, name, port, ordered=False, max_pending=512 * KiB, record=True):
        super().__init__(name=name, daemon=True)
        self.port = port
        self.ordered = ordered
        self.max_pending = max_pending
        self.record = record
        self.sel = selectors.DefaultSelector()
        self.lst = listener(port)
        self.sel.register(self.lst, selectors.EVENT_READ, None)
        self.records = collections.deque()
        self.conns = set()
        self.seq = 0
        self.accepted = 0
        self.error = None
        self._halt = threading.Event()

    # -- loop

    def run(self):
        try:
            while not self._halt.is_set():
                events = self.sel.select(timeout=0.02)
                if self.ordered:
                    events.sort(key=lambda e: e[0].data is None)   # listener last
                for key, mask in events:
                    if key.data is None:
                        self._accept(key.fileobj)
                    else:
                        self._io(key.data, mask)
                self.tick()
        except Exception as e:   # surfaced as a failure by the soak
            self.error = repr(e)
            raise

    def tick(self):
        pass

    def stop(self):
        self._halt.set()
        self.join(timeout=5)
        for c in list(self.conns):
            c.sock.close()
        try:
            self.lst.close()
        except (OSError, AttributeError):
            pass

    def open_conns(self):
        return len(self.conns)

    def _next(self):
        self.seq += 1
        return self.seq

    def _accept(self, lst):
        while True:
            try:
                sock, _ = lst.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.accepted += 1
            self.on_accept(sock)

    def on_accept(self, sock):
        sock.setblocking(False)
        c = SConn(sock, self._next(), echo=True)
        self.conns.add(c)
        self.sel.register(sock, selectors.EVENT_READ, c)

    def _update(self, c):
        if c.ended and not c.out:
            self._close(c)
            return
        ev = (selectors.EVENT_READ if c.reading and not c.ended else 0) | \
             (selectors.EVENT_WRITE if c.out else 0)
        if ev == 0:      # paused reading and nothing to write: cannot happen
            ev = selectors.EVENT_READ
        self.sel.modify(c.sock, ev, c)

    def _close(self, c):
        if c in self.conns:
            self.conns.discard(c)
            self.sel.unregister(c.sock)
            c.sock.close()

    def _io(self, c, mask):
        if mask & selectors.EVENT_READ and c.reading and not c.ended:
            self._read(c)
        if c in self.conns and c.out:
            self._write(c)
        if c in self.conns:
            self._update(c)

    def _read(self, c):
        loops = 0
        while True:
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._finish(c, "reset")
                c.out.clear()
                return
            if not data:
                self._finish(c, "eof")
                return
            self._consume(c, data)
            if not self.ordered:
                loops += 1
                if len(c.out) > self.max_pending:
                    c.reading = False
                    return
                if loops >= 8:
                    return

    def _consume(self, c, data):
        if c.mode is None:
            need = 16 - len(c.hdr)
            c.hdr += data[:need]
            data = data[need:]
            if len(c.hdr) < 16:
                return
            c.mode, c.slot, c.port, c.arg, c.sid = TOKEN.unpack(c.hdr)
            c.h = hashlib.sha256()
            if c.mode == M_HALF:
                c.echo = False
                r = reply_offset(c.sid)
                c.out += POOL_MV[r:r + min(c.arg, REPLY_MAX)]
                if not c.out:
                    self._shut_wr(c)
            elif c.echo:
                c.out += c.hdr
        if data:
            c.n += len(data)
            c.h.update(data)
            if c.echo:
                c.out += data

    def _shut_wr(self, c):
        if not c.wshut:
            c.wshut = True
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _write(self, c):
        try:
            while c.out:
                n = c.sock.send(c.out)
                del c.out[:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            # The peer reset. What it sent before is still in the receive
            # queue (reading may have been paused for backpressure): read and
            # count it. A recv() after send() has taken the error returns 0
            # whether or not a FIN came, so the errno tells: EPIPE is the
            # kernel's answer for a reset in CLOSE_WAIT, i.e. after the FIN.
            c.out.clear()
            if not c.ended:
                while True:
                    try:
                        data = c.sock.recv(65536)
                    except OSError:
                        break
                    if not data:
                        break
                    self._consume(c, data)
                self._finish(c, "eof" if e.errno == errno.EPIPE else "reset")
            return
        if not c.out:
            if c.mode == M_HALF:
                self._shut_wr(c)
            if not c.reading and not c.ended:
                c.reading = True
        elif not c.reading and len(c.out) < self.max_pending // 2 and not c.ended:
            c.reading = True

    def _finish(self, c, how):
        if c.ended:
            return
        c.ended = True
        c.end = how
        c.eof_seq = self._next()
        c.eof_t = mono()
        c.reading = False
        if self.record:
            self.records.append((c.sid, c.mode, c.slot, c.port, c.n,
                                 c.h.hexdigest() if c.h else None, how,
                                 c.accept_seq, c.eof_seq, c.accept_t, c.eof_t))


class FlapServer(Upstream):
    """An upstream that cycles, about every second, through accept-and-close,
    refusing (no listener), accept-and-reset and echo. Leaving echo, it
    closes the connections it has (half with FIN, half with RST)."""

    MODES = ("close", "refuse", "reset", "echo")

    def __init__(self, name, port, rng):
        super().__init__(name, port, record=False)
        self.rng = rng
        self.mode = "echo"
        self.mode_counts = collections.Counter()
        self.rebind_failures = 0
        self.next_change = mono() + 1.0
        self.held = None          # a mode forced by the soak (None: cycle)
        self._want = None
        self._lock = threading.Lock()

    def hold(self, mode):
        """Forces a mode (None: back to cycling); applied by the loop."""
        with self._lock:
            self._want = ("hold", mode)

    def tick(self):
        with self._lock:
            want, self._want = self._want, None
        now = mono()
        if want is not None:
            self.held = want[1]
            if self.held is not None:
                self._set(self.held)
            self.next_change = now + self.rng.uniform(0.7, 1.3)
        elif self.held is None and now >= self.next_change:
            self._set(self.MODES[(self.MODES.index(self.mode) + 1) % len(self.MODES)])
            self.next_change = now + self.rng.uniform(0.7, 1.3)
        if self.mode != "refuse" and self.lst is None:
            self._listen()

    def _listen(self):
        try:
            self.lst = listener(self.port)
        except OSError:
            self.rebind_failures += 1   # tried again next turn
            return
        self.sel.register(self.lst, selectors.EVENT_READ, None)

    def _set(self, mode):
        if mode == self.mode:
            return
        if self.mode == "echo":
            for i, c in enumerate(list(self.conns)):
                self.sel.unregister(c.sock)
                self.conns.discard(c)
                if i % 2:
                    abort(c.sock)
                else:
                    c.sock.close()
        self.mode = mode
        self.mode_counts[mode] += 1
        if mode == "refuse" and self.lst is not None:
            self.sel.unregister(self.lst)
            self.lst.close()
            self.lst = None
        elif mode != "refuse" and self.lst is None:
            self._listen()

    def on_accept(self, sock):
        if self.mode == "close":
            sock.close()
        elif self.mode == "reset":
            abort(sock)
        else:
            super().on_accept(sock)


# --------------------------------------------------------------------------
# client engine: one selectors loop for every client connection


class Engine(threading.Thread):
    def __init__(self, soak):
        super().__init__(name="clients", daemon=True)
        self.soak = soak
        self.rng = random.Random(soak.seed + 1)
        self.sel = selectors.DefaultSelector()
        self.timers = []
        self.tseq = 0
        self.sid = 0
        self.active = set()
        self.active_kind = collections.Counter()
        self.started = collections.Counter()
        self.outcomes = collections.Counter()
        self.results = collections.deque()
        self.killable = {}              # (client address, route) -> session
        self.klock = threading.Lock()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.errors = []                # driver exceptions
        self.failures = collections.deque()   # (kind, message) found by the sessions
        self.spawning = False
        self.extra_enabled = False
        self.credit = collections.Counter()
        self.last_spawn = mono()
        self.slots = []
        self.probe = None               # flap probe clients: (count) or None
        self.takeovers = 0
        self.inversions = 0
        self.fixed_returns = 0
        self._halt = threading.Event()
        self._calls = collections.deque()

    def new_sid(self):
        self.sid += 1
        return self.sid

    def call_later(self, delay, fn):
        self.tseq += 1
        entry = [mono() + delay, self.tseq, fn]
        heapq.heappush(self.timers, entry)
        return entry

    def call_soon_threadsafe(self, fn):
        self._calls.append(fn)

    def fail(self, kind, msg):
        self.failures.append((kind, msg))

    def run(self):
        try:
            self._run()
        except Exception as e:
            import traceback
            self.errors.append(f"client engine died: {e!r}\n{traceback.format_exc()}")
            raise

    def _run(self):
        while not self._halt.is_set():
            timeout = 0.01
            if self.timers:
                timeout = max(0.0, min(timeout, self.timers[0][0] - mono()))
            for key, mask in self.sel.select(timeout):
                sess = key.data
                try:
                    sess.on_io(mask)
                except Exception as e:
                    self._crash(sess, e)
            now = mono()
            while self.timers and self.timers[0][0] <= now:
                entry = heapq.heappop(self.timers)
                fn = entry[2]
                if fn is not None:
                    try:
                        fn()
                    except Exception as e:
                        self._crash(getattr(fn, "__self__", None), e)
            while self._calls:
                self._calls.popleft()()
            self._spawn(now)

    def _crash(self, sess, e):
        import traceback
        self.errors.append(f"{type(sess).__name__}: {e!r}\n{traceback.format_exc()}")
        if isinstance(sess, Client) and not sess.done:
            try:
                sess.finish("driver_error")
            except Exception:
                pass

    def stop(self):
        self._halt.set()
        self.join(timeout=10)

    # -- what runs, and how much

    # kind: (sessions per second, most at once)
    RATES = {
        "clean": (400, 64),
        "halfsrv": (40, 16),
        "reset": (40, 16),
        "victim": (8, 30),
        "nonreader": (1, 3),
        "flap": (8, 20),
        "extra": (10, 8),
    }

    def _spawn(self, now):
        dt = min(0.2, now - self.last_spawn)
        self.last_spawn = now
        probe = self.probe          # set by the main thread
        if probe is not None:
            while self.active_kind["probe"] < probe:
                FlapClient(self, probe=True)
            return
        if not self.spawning:
            return
        for kind, (rate, most) in self.RATES.items():
            if kind == "extra" and not self.extra_enabled:
                continue
            if self.soak.only and kind not in self.soak.only:
                continue
            c = min(self.credit[kind] + rate * self.soak.rate_scale * dt, 1 + rate * 0.05)
            while c >= 1 and self.active_kind[kind] < most:
                c -= 1
                SPAWNERS[kind](self)
            self.credit[kind] = min(c, 1.0)

    def set_spawning(self, on):
        def apply():
            self.spawning = on
            if on:
                only = self.soak.only
                if not only or "take" in only:
                    self.slots += [TakeSlot(self, ip) for ip in range(2, 41)]
                if not only or "fixed" in only:
                    self.slots += [FixedSlot(self, 41 + i // 5, 31001 + i % 5)
                                   for i in range(20)]
                for s in self.slots:
                    s.start()
            else:
                for s in self.slots:
                    s.stopping = True
                self.slots = []
        self.call_soon_threadsafe(apply)


class Client:
    """One client connection, non-blocking, driven by the engine. Subclasses
    decide what is sent, when it half-closes or aborts, and what the session
    must look like in the end."""

    kind = "?"
    verify = "echo"            # echo | reply | none
    route = "main"
    deadline_s = 120

    def __init__(self, eng, port, n=0, mode=M_ECHO, slot=0, sport=0, arg=0, src=None):
        self.eng = eng
        self.sid = eng.new_sid()
        self.n = n
        self.off = eng.rng.randrange(0, POOL_SIZE - n + 1)
        self.token = TOKEN.pack(mode, slot, sport, arg, self.sid)
        self.total = 16 + n
        self.send_limit = self.total
        self.sent = 0
        self.rx = 0
        self.rx_eof = False
        self.rx_reset = False
        self.reading = True
        self.shut = False
        self.done = False
        self.connected = False
        self.outcome = None
        self.mask = 0
        self.t0 = time.time()
        self.m0 = mono()
        self.ended_m = None
        self.addr = None
        self.timers = []
        eng.started[self.kind] += 1
        eng.active.add(self)
        eng.active_kind[self.kind] += 1
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        try:
            if src is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self.sock.bind(src)
            err = self.sock.connect_ex((LOOPBACK, port))
        except OSError as e:
            err = e.errno
        if err not in (0, errno.EINPROGRESS):
            self.on_connect_error(err)
            return
        try:
            host, p = self.sock.getsockname()
            self.addr = f"{host}:{p}"
        except OSError:
            self.addr = None
        self.mask = selectors.EVENT_WRITE
        eng.sel.register(self.sock, self.mask, self)
        self.later(self.deadline_s * SCALE, self._deadline)

    # -- helpers

    def later(self, delay, fn):
        self.timers.append(self.eng.call_later(delay, fn))

    def _deadline(self):
        if not self.done:
            self.eng.fail(self.kind, f"session {self.addr} sid {self.sid} not over after "
                                     f"{self.deadline_s * SCALE:.0f} s (sent {self.sent}/"
                                     f"{self.send_limit}, received {self.rx})")
            self.finish("stuck", rst=True)

    def expected(self, pos, n):
        """Bytes [pos, pos+n) of the stream token + payload."""
        if pos >= 16:
            a = self.off + pos - 16
            return POOL[a:a + n]
        head = self.token[pos:pos + n]
        if len(head) == n:
            return head
        return head + POOL[self.off:self.off + n - len(head)]

    def _set_mask(self):
        if self.done:
            return
        if not self.connected:
            m = selectors.EVENT_WRITE
        else:
            m = (selectors.EVENT_READ if self.reading and not self.rx_eof else 0) | \
                (selectors.EVENT_WRITE if self.sending() else 0)
        if m != self.mask:
            if m == 0:
                self.eng.sel.unregister(self.sock)
            elif self.mask == 0:
                self.eng.sel.register(self.sock, m, self)
            else:
                self.eng.sel.modify(self.sock, m, self)
            self.mask = m

    def sending(self):
        return self.sent < self.send_limit

    def describe(self):
        extra = " replaced" if getattr(self, "replaced", False) else ""
        slot = getattr(self, "slot", None)
        if slot is not None:
            extra += "; its client's last sessions: " + ", ".join(
                f"sid {c.sid} {c.addr} {c.outcome or 'open'}"
                f"{' (replaced)' if getattr(c, 'replaced', False) else ''}"
                for c in list(slot.history)[-4:])
        return (f"{self.kind} {self.addr} sid {self.sid}: connected {self.connected}, "
                f"sent {self.sent}/{self.send_limit} of {self.total}, received {self.rx}, "
                f"half-closed {self.shut}, EOF {self.rx_eof}, "
                f"age {mono() - self.m0:.1f} s{extra}")

    # -- events

    def on_io(self, mask):
        if self.done:
            return
        if not self.connected:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.on_connect_error(err)
                return
            self.connected = True
            self.on_connected()
            if self.done:
                return
        if mask & selectors.EVENT_READ:
            self._read()
        if not self.done and mask & selectors.EVENT_WRITE and self.sending():
            self._send()
        self._set_mask()

    def _read(self):
        for _ in range(16):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.rx_reset = True
                self.on_reset()
                return
            if not data:
                self.rx_eof = True
                self.on_eof()
                return
            n = len(data)
            if self.verify == "echo":
                if data != self.expected(self.rx, n):
                    self.mismatch(f"echo differs within bytes {self.rx}..{self.rx + n}")
                    return
            elif self.verify == "reply":
                r = reply_offset(self.sid)
                if self.rx + n > self.arg_reply or data != POOL[r + self.rx:r + self.rx + n]:
                    self.mismatch(f"reply differs within bytes {self.rx}..{self.rx + n} "
                                  f"(of {self.arg_reply})")
                    return
            self.rx += n
            self.eng.bytes_received += n
            self.on_data(n)
            if self.done:
                return

    def _send(self):
        while self.sent < self.send_limit:
            p = self.sent
            if p < 16:
                chunk = self.token[p:min(16, self.send_limit)]
            else:
                a = self.off + p - 16
                chunk = POOL_MV[a:a + min(self.send_limit - p, 256 * KiB)]
            try:
                k = self.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.on_send_error()
                return
            self.sent += k
            self.eng.bytes_sent += k
        self.on_sent()

    def mismatch(self, what):
        self.eng.fail(self.kind, f"{self.addr} sid {self.sid}: {what}")
        self.finish("mismatch", rst=True)

    def half_close(self):
        if not self.shut:
            self.shut = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def finish(self, outcome, rst=False, result=True):
        if self.done:
            return
        self.done = True
        self.outcome = outcome
        self.ended_m = mono()
        for t in self.timers:
            t[2] = None
        if self.mask:
            self.eng.sel.unregister(self.sock)
            self.mask = 0
        if rst:
            abort(self.sock)
        else:
            self.sock.close()
        eng = self.eng
        eng.active.discard(self)
        eng.active_kind[self.kind] -= 1
        eng.outcomes[(self.kind, outcome)] += 1
        if self.addr is not None:
            with eng.klock:
                if eng.killable.get((self.addr, self.route)) is self:
                    del eng.killable[(self.addr, self.route)]
        if result:
            eng.results.append(self.result())
        self.after_finish()

    def after_finish(self):
        pass

    def result(self):
        """What the verifier checks: the server record rule, the expected
        close reasons (None: not checked), the expected byte counts."""
        return {"kind": self.kind, "sid": self.sid, "addr": self.addr, "t0": self.t0,
                "ended": self.ended_m, "outcome": self.outcome, "off": self.off,
                "n": self.n, "sent": self.sent, "rx": self.rx, "route": self.route,
                "rule": self.rule(), "reasons": self.reasons(), "bytes": self.log_bytes(),
                "early": self.outcome in self.EARLY, "exact": self.exact()}

    def exact(self):
        """Must the server have got exactly what lifeline read from the client
        (bytes_from_client), then EOF? README: a client lifeline gave up on
        (reset, replaced...) or an admin kill -> the server gets every byte
        the client sent, then FIN."""
        return False

    # Outcomes of a session that an admin kill may have ended: the verifier
    # accepts them only for a session a kill closed (reason admin_kill).
    EARLY = ()

    def rule(self):
        return "prefix"

    def reasons(self):
        return None

    def log_bytes(self):
        return None

    def register_killable(self):
        if self.addr is not None:
            with self.eng.klock:
                # By route too: one client port may be in use towards two
                # routes at once.
                self.eng.killable[(self.addr, self.route)] = self

    # -- hooks

    def on_connected(self):
        pass

    def on_connect_error(self, err):
        self.eng.fail(self.kind, f"connect to route {self.route} failed: {os.strerror(err)}")
        self.finish("connect_error", result=False)

    def on_data(self, n):
        pass

    def on_sent(self):
        pass

    def on_eof(self):
        pass

    def on_reset(self):
        self.eng.fail(self.kind, f"{self.addr} sid {self.sid}: reset after {self.rx} bytes "
                                 f"received, {self.sent} sent")
        self.finish("reset", rst=True)

    def on_send_error(self):
        self.rx_reset = True
        self.on_reset()


class CleanClient(Client):
    """Sends token + payload, half-closes, reads the echo to EOF."""

    kind = "clean"

    def __init__(self, eng, port=None):
        super().__init__(eng, port or eng.soak.ports["main"], n=clean_size(eng.rng))

    def on_sent(self):
        self.half_close()

    def on_eof(self):
        if self.rx != self.total or self.sent != self.total:
            self.mismatch(f"EOF after {self.rx} of {self.total} echoed bytes")
        else:
            self.finish("ok")

    def rule(self):
        return "full" if self.outcome == "ok" else "prefix"

    def reasons(self):
        return {"client_eof"} if self.outcome == "ok" else None

    def log_bytes(self):
        return (self.total, self.total) if self.outcome == "ok" else None


class ExtraClient(CleanClient):
    """A clean session on the route that reloads add and remove: a refused
    connection, or one reset before any byte came back (it was still in the
    listen queue of a listener that closed), is fine; once a byte came back,
    it must be a clean session."""

    kind = "extra"
    route = "extra"

    def __init__(self, eng):
        super().__init__(eng, port=eng.soak.ports["extra"])

    def on_connect_error(self, err):
        if err in (errno.ECONNREFUSED, errno.ECONNRESET):
            self.finish("refused")
        else:
            super().on_connect_error(err)

    def on_reset(self):
        if self.rx == 0:
            self.finish("refused", rst=True)
        else:
            super().on_reset()

    def on_eof(self):
        if self.rx == 0 and self.sent < self.total:
            self.finish("refused")
        else:
            super().on_eof()

    def rule(self):
        return "full" if self.outcome == "ok" else ("absent" if self.outcome == "refused"
                                                    else "prefix")


class HalfServerClient(Client):
    """The server half-closes first: it sends a reply and shuts down its
    write side once it has the token; the client sends part of its payload,
    reads the reply to EOF, then sends the rest and half-closes."""

    kind = "halfsrv"
    verify = "reply"

    def __init__(self, eng):
        n = clean_size(eng.rng)
        self.arg_reply = eng.rng.randint(0, REPLY_MAX)
        super().__init__(eng, eng.soak.ports["main"], n=n, mode=M_HALF, arg=self.arg_reply)
        self.send_limit = 16 + eng.rng.randint(0, n)

    def on_sent(self):
        if self.rx_eof:
            self.half_close()
            self.finish("ok")

    def on_eof(self):
        if self.rx != self.arg_reply:
            self.mismatch(f"EOF after {self.rx} of {self.arg_reply} reply bytes")
            return
        self.send_limit = self.total
        if not self.sending():
            self.on_sent()

    def rule(self):
        return "full" if self.outcome == "ok" else "prefix"

    def reasons(self):
        return {"upstream_eof"} if self.outcome == "ok" else None

    def log_bytes(self):
        return (self.total, self.arg_reply) if self.outcome == "ok" else None


class ResetClient(Client):
    """Sends part of its payload, reads the echo for a while, then resets."""

    kind = "reset"

    def __init__(self, eng):
        n = eng.rng.randint(0, 384 * KiB)
        super().__init__(eng, eng.soak.ports["main"], n=n)
        self.send_limit = eng.rng.randint(0, self.total)
        self.wait = eng.rng.choice((0.0, 0.0, 0.005, 0.05, 0.2))
        self.armed = False

    def on_connected(self):
        if self.send_limit == 0:
            self._arm()

    def on_sent(self):
        self._arm()

    def _arm(self):
        if not self.armed:
            self.armed = True
            self.later(self.wait, self._abort)

    def _abort(self):
        self.aborted_at = (mono() - self.m0, self.sent, self.rx)
        self.finish("ok", rst=True)

    def result(self):
        r = super().result()
        a = getattr(self, "aborted_at", None)
        if a is not None:
            r["story"] = (f"; the client reset {a[0] * 1000:.1f} ms after connect() with "
                          f"{a[1]} bytes sent and {a[2]} echoed")
        return r

    def on_eof(self):
        self.eng.fail(self.kind, f"{self.addr} sid {self.sid}: EOF before the client reset")
        self.finish("eof", rst=True)

    def reasons(self):
        return {"client_reset"} if self.outcome == "ok" else None

    def exact(self):
        return self.outcome == "ok"


class VictimClient(Client):
    """A long-lived trickling echo session that admin kills may close: it
    sends a little every 50-150 ms for 2-8 s, then half-closes and reads to
    EOF. An EOF before its own half-close means it was killed (checked
    against the kills the chaos made)."""

    kind = "victim"

    def __init__(self, eng):
        super().__init__(eng, eng.soak.ports["main"], n=256 * KiB)
        self.send_limit = 16
        self.life = eng.rng.uniform(2.0, 8.0)

    def on_connected(self):
        self.register_killable()
        self.later(self.life, self._end)
        self._tick()

    def _tick(self):
        if self.done or self.shut:
            return
        self.send_limit = min(self.total, self.send_limit + self.eng.rng.randint(256, 4096))
        self._set_mask()
        self.later(self.eng.rng.uniform(0.05, 0.15), self._tick)

    def _end(self):
        self.send_limit = self.sent
        self.half_close()
        self._set_mask()

    def on_eof(self):
        if self.shut:
            if self.rx != self.sent:
                self.mismatch(f"EOF after {self.rx} of {self.sent} echoed bytes")
            else:
                self.finish("ok")
        else:
            self.finish("ended_early", rst=True)

    def on_reset(self):
        self.finish("reset", rst=True)

    def rule(self):
        return "full" if self.outcome == "ok" else "prefix"

    EARLY = ("ended_early", "reset")

    def result(self):
        r = super().result()
        r["n"] = self.sent - 16 if self.outcome == "ok" else self.n
        return r

    def reasons(self):
        return {"client_eof"} if self.outcome == "ok" else None

    def exact(self):
        return self.outcome in self.EARLY      # killed

    def log_bytes(self):
        return (self.sent, self.rx) if self.outcome == "ok" else None


class NonReader(Client):
    """Sends a lot, never reads, closes (with unread bytes: a reset) after
    2-4 s."""

    kind = "nonreader"
    verify = "none"

    def __init__(self, eng):
        super().__init__(eng, eng.soak.ports["main"], n=eng.rng.randint(4 * MiB, 8 * MiB))
        self.reading = False

    def on_connected(self):
        self.register_killable()
        self.later(self.eng.rng.uniform(2.0, 4.0), lambda: self.finish("ok"))

    def on_sent(self):
        pass

    def on_send_error(self):
        self.finish("send_error", rst=True)    # killed: checked with the kill list

    EARLY = ("send_error",)

    def reasons(self):
        return {"client_reset"} if self.outcome == "ok" else None


class FlapClient(Client):
    """A session on the flapping route: trickles for 1-4 s, half-closes,
    reads to EOF or reset. Any close reason is fine; only a session that does
    not end is a failure."""

    kind = "flap"
    verify = "none"
    route = "flap"
    deadline_s = 60

    def __init__(self, eng, probe=False):
        if probe:
            self.kind = "probe"
        super().__init__(eng, eng.soak.ports["flap"], n=64 * KiB)
        self.send_limit = 16
        self.probe = probe

    def on_connected(self):
        if not self.probe:
            self.register_killable()
        self.later(self.eng.rng.uniform(1.0, 4.0), self._end)
        self._tick()

    def _tick(self):
        if self.done or self.shut:
            return
        self.send_limit = min(self.total, self.send_limit + 512)
        self._set_mask()
        self.later(0.1, self._tick)

    def _end(self):
        self.send_limit = self.sent
        self.half_close()
        self._set_mask()

    def on_eof(self):
        self.finish("eof" if self.shut else "eof_early")

    def on_reset(self):
        self.finish("reset", rst=True)

    def on_send_error(self):
        self.finish("send_error", rst=True)

    def rule(self):
        return "none"


SPAWNERS = {
    "clean": CleanClient,
    "halfsrv": HalfServerClient,
    "reset": ResetClient,
    "victim": VictimClient,
    "nonreader": NonReader,
    "flap": FlapClient,
    "extra": ExtraClient,
}


class TakeClient(Client):
    kind = "take"
    route = "take"

    def __init__(self, slot):
        self.slot = slot
        eng = slot.eng
        self.replaced = False
        self.prev = slot.last
        self.inv_older = self.inv_newer = None
        slot.last = self
        slot.history.append(self)
        super().__init__(eng, eng.soak.ports["take"], n=eng.rng.randint(0, 8 * KiB),
                         slot=slot.ip, src=(f"127.0.0.{slot.ip}", 0))

    def on_connect_error(self, err):
        if err == errno.ECONNRESET:     # accepted, then reset before we looked
            self.connected = True
            self.on_reset()
            return
        super().on_connect_error(err)
        self.slot.next(0.1)

    EARLY = ("ended_early", "reset_early")

    def on_connected(self):
        self.register_killable()
        self.later(self.eng.rng.choice((0.005, 0.02, 0.05)) if self.eng.rng.random() < 0.2
                   else self.eng.rng.uniform(0.1, 1.5), self._decide)

    def close_clean(self):
        self.send_limit = self.sent
        self.half_close()
        self._set_mask()

    def kill_ok(self):
        """Killed only while it is its client's one session: a kill in the
        middle of a takeover would blur what the takeover checks expect."""
        a = self.prev
        return not self.replaced and (a is None or a.done) and self.slot.last is self

    def _decide(self):
        if self.done:
            return
        if self.replaced:
            return
        if self.slot.stopping or self.eng.rng.random() < 0.25:
            self.close_clean()        # the slot goes on after EOF
        else:
            self.replaced = True      # open the next one while this one is open
            self.eng.takeovers += 1
            self.slot.next(0)

    def on_eof(self):
        if self.replaced:
            self.finish("replaced_eof")
        elif self.shut and self.rx == self.sent:
            self.finish("ok")
            self.slot.next(self.eng.rng.uniform(0, 0.2))
        elif not self.shut:
            # Killed (checked by the verifier): come back at once, while the
            # old upstream connection may still be finishing.
            self.finish("ended_early", rst=True)
            self.slot.next(self.eng.rng.choice((0, 0.005, 0.05)))
        else:
            self.mismatch(f"EOF after {self.rx} of {self.sent} bytes, not replaced")
            self.slot.next(0.1)

    def on_reset(self):
        a = self.prev
        if self.replaced:
            self.finish("replaced", rst=True)
        elif a is not None and a.replaced and not a.done and self.slot.last is self:
            # The README's limit of identity "address": this connection and
            # the one it was to replace were accepted by different workers in
            # the other order, so the older one stays. Checked from the logs
            # (different workers, the older one's session started later).
            self.inv_older, a.inv_newer = a.sid, self.sid
            self.eng.inversions += 1
            self.finish("inverted", rst=True)
            a.replaced = False
            self.slot.last = a
            a.later(self.eng.rng.uniform(0.1, 1.0), a._decide)
        else:
            self.finish("reset_early", rst=True)    # the verifier wants a kill
            self.slot.next(0.05)

    def on_send_error(self):
        self.on_reset()

    def result(self):
        r = super().result()
        r["inv_older"], r["inv_newer"] = self.inv_older, self.inv_newer
        return r

    def exact(self):
        return self.outcome in ("replaced", "replaced_eof", "inverted") + self.EARLY

    def reasons(self):
        if self.outcome in ("replaced", "replaced_eof", "inverted"):
            return {"replaced"}     # (admin_kill added when a kill raced it)
        if self.outcome == "ok":
            return {"client_eof"}
        return None


class TakeSlot:
    """One client IP of the `address` identity route: one session after
    another, the next often opened while the last is still open."""

    def __init__(self, eng, ip):
        self.eng = eng
        self.ip = ip
        self.stopping = False
        self.last = None
        self.history = collections.deque(maxlen=8)

    def start(self):
        self.eng.call_later(self.eng.rng.uniform(0, 0.5), self._open)

    def next(self, delay):
        if not self.stopping:
            self.eng.call_later(delay, self._open)

    def _open(self):
        if not self.stopping:
            TakeClient(self)
            return
        # Stopped while a session waited for its successor: none comes, so
        # it ends cleanly instead.
        a = self.last
        if a is not None and a.replaced and not a.done:
            a.replaced = False
            self.eng.takeovers -= 1
            a.close_clean()


class FixedClient(Client):
    """A fixed-port client that aborts and comes back from the same port."""

    kind = "fixed"
    route = "fixed"

    def __init__(self, slot):
        self.slot = slot
        slot.history.append(self)
        eng = slot.eng
        super().__init__(eng, eng.soak.ports["fixed"], n=eng.rng.randint(0, 8 * KiB),
                         slot=slot.ip, sport=slot.port,
                         src=(f"127.0.0.{slot.ip}", slot.port))

    def on_connect_error(self, err):
        # The port may still be held for a moment (EADDRINUSE/EADDRNOTAVAIL):
        # try again shortly; anything else is a failure.
        if err in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            self.slot.busy += 1
            self.finish("port_busy", result=False)
        else:
            super().on_connect_error(err)
        self.slot.next(0.05)

    EARLY = ("ended_early", "reset_early")

    def on_connected(self):
        self.register_killable()
        self.later(self.eng.rng.uniform(0.02, 1.0), self._abort)

    def _abort(self):
        self.finish("ok", rst=True)
        self.eng.fixed_returns += 1
        self.slot.next(0)

    def on_eof(self):
        self.finish("ended_early", rst=True)    # killed, says the verifier
        self.eng.fixed_returns += 1
        self.slot.next(0)

    def on_reset(self):
        self.finish("reset_early", rst=True)
        self.slot.next(0.05)

    def reasons(self):
        return {"client_reset", "replaced"} if self.outcome == "ok" else None

    def exact(self):
        return True


class FixedSlot(TakeSlot):
    def __init__(self, eng, ip, port):
        super().__init__(eng, ip)
        self.port = port
        self.busy = 0

    def _open(self):
        if not self.stopping:
            FixedClient(self)


# --------------------------------------------------------------------------
# lifeline: the harness's daemon, with a log reader that keeps only what the
# soak needs (hundreds of lines a second for many minutes)

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "WARNING: ThreadSanitizer",
                   "LeakSanitizer", "ERROR: UndefinedBehaviorSanitizer")
UPSTREAM_NOISE = {"upstream connect failed", "upstream closed early",
                  "upstream closed, reconnecting", "log lines suppressed"}


class SoakLifeline(harness.Lifeline):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.n_lines = 0
        self.n_bytes = 0
        self.by_msg = collections.Counter()
        self.closed = collections.defaultdict(list)   # client -> [(start, reason, ...)]
        self.closed_by_route = collections.Counter()
        self.finish_kinds = collections.Counter()
        self.other = []            # stderr lines that are not JSON (first 500)
        self.sanitizer = []        # lines with a sanitizer mark
        self.error_lines = []
        self.tail = collections.deque(maxlen=400)
        self.log_file = None

    def _read_stderr(self, stream):
        for raw in stream:
            text, rec = parse_log_line(raw)
            if self.log_file is not None:
                self.log_file.write(text + "\n")
            with self._cond:
                self.n_lines += 1
                self.n_bytes += len(raw)
                self.tail.append(text)
                if any(m in text for m in SANITIZER_MARKS):
                    self.sanitizer.append(text)
                if not isinstance(rec, dict):
                    if len(self.other) < 500:
                        self.other.append(text)
                else:
                    msg = rec.get("msg")
                    self.by_msg[msg] += 1
                    if rec.get("level") == "error" and len(self.error_lines) < 200:
                        self.error_lines.append(text)
                    if msg == "session closed":
                        route = rec.get("route")
                        self.closed_by_route[(route, rec.get("reason"))] += 1
                        if rec.get("upstream_finish"):
                            self.finish_kinds[(route, rec.get("reason"),
                                               rec["upstream_finish"])] += 1
                        if route != "flap":
                            start = log_time(rec) - rec.get("duration_ms", 0) / 1000.0
                            self.closed[(rec.get("client"), route)].append(
                                (start, rec.get("reason"), route, rec.get("bytes_from_client"),
                                 rec.get("bytes_from_server"), rec.get("upstream_finish"),
                                 rec.get("worker"), rec.get("duration_ms")))
                    elif msg not in UPSTREAM_NOISE:
                        self.records.append(rec)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def take_closed(self, addr, route, t0, tolerance=5.0):
        """Removes and returns the `session closed` record of the route's
        session of this client address that started nearest t0, or None (a
        client port may be in use towards two routes at once)."""
        key = (addr, route)
        with self._cond:
            lst = self.closed.get(key)
            if not lst:
                return None
            best = min(range(len(lst)), key=lambda i: abs(lst[i][0] - t0))
            if abs(lst[best][0] - t0) > tolerance:
                return None
            rec = lst.pop(best)
            if not lst:
                del self.closed[key]
            return rec

    def unmatched_closed(self):
        with self._cond:
            return sum(len(v) for v in self.closed.values())

    def log_tail(self, n=40):
        with self._cond:
            tail = list(self.tail)[-n:]
        return "--- lifeline stderr (last %d lines) ---\n%s" % (len(tail), "\n".join(tail))

    def _tail_locked(self, n=40):
        return "--- lifeline stderr ---\n" + "\n".join(list(self.tail)[-n:])

    def count(self, msg):
        with self._cond:
            return self.by_msg[msg]

    def wait_msg_count(self, msg, n, timeout):
        deadline = mono() + timeout
        with self._cond:
            while self.by_msg[msg] < n:
                left = deadline - mono()
                if left <= 0 or self._eof:
                    return False
                self._cond.wait(left)
            return True


def proc_fds(pid):
    """The targets of the process's open descriptors (one closing while it
    is read is left out)."""
    out = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return out
    for f in names:
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{f}"))
        except FileNotFoundError:
            pass
    return sorted(out)


def proc_status(pid, key):
    v = proc_status_value(pid, key)
    return 0 if v is None else v


# --------------------------------------------------------------------------
# admin endpoint


class AdminError(Exception):
    pass


def http(port, method, path, timeout=5.0):
    """One request on its own connection; (status, body). Every step is
    bounded by `timeout` (AdminError past it)."""
    deadline = mono() + timeout
    req = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if method == "POST":
        req += "Content-Length: 0\r\n"
    req += "\r\n"
    buf = bytearray()
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            s.sendall(req.encode())
            while True:
                left = deadline - mono()
                if left <= 0:
                    raise AdminError(f"{method} {path}: no complete answer within {timeout} s")
                s.settimeout(left)
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except socket.timeout:
        raise AdminError(f"{method} {path}: no complete answer within {timeout} s") from None
    except OSError as e:
        raise AdminError(f"{method} {path}: {e!r}") from None
    head, _, body = bytes(buf).partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise AdminError(f"{method} {path}: bad answer {bytes(buf[:200])!r}") from None
    return status, body


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """[(name, labels dict, value)]"""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


# --------------------------------------------------------------------------
# the soak


class Soak:
    def __init__(self, args):
        self.args = args
        self.seed = args.seed
        self.rate_scale = args.rate_scale
        self.only = set(args.only.split(",")) if args.only else None
        self.rng = random.Random(self.seed)
        self.failures = []
        self.notes = []
        self.tmp = tempfile.TemporaryDirectory(prefix="lifeline-soak-")
        used = set()
        self.ports = {k: fixed_range_port(used) for k in
                      ("main", "take", "fixed", "flap", "extra", "admin",
                       "echo", "track", "flapsrv")}
        self.cfg_a = self.config(True)
        self.cfg_b = self.config(False)
        self.current = "a"
        self.reloads = 0
        self.reload_failures = 0
        self.kills = collections.Counter()
        self.killed_sids = set()
        self.killed_addrs = {}
        self.admin_errors = []
        self.rss_peak = 0
        self.samples = []
        self.verify = None

    def fail(self, msg):
        self.failures.append(msg)

    def log(self, msg):
        print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # -- configuration

    def config(self, a):
        """File A (the one running at start, at the baseline and at the end)
        and file B differ in settings that do not disturb the traffic:
        buffer_bytes, silence_ms (far above any gap in the traffic), the
        flap route's backoff, and B has no `extra` route."""
        p = self.ports
        up = lambda port, **kw: dict({"servers": [f"{LOOPBACK}:{port}"],  # noqa: E731
                                      "connect_timeout_ms": 3000, "retries": 3,
                                      "retry_backoff_ms": 50}, **kw)
        routes = [
            {"name": "main", "listen": f"{LOOPBACK}:{p['main']}",
             "buffer_bytes": MiB if a else 64 * KiB,
             "client": {"identity": "none",
                        "heartbeat": {"silence_ms": 0 if a else 60000}},
             "upstream": up(p["echo"])},
            {"name": "take", "listen": f"{LOOPBACK}:{p['take']}",
             "buffer_bytes": 256 * KiB if a else 32 * KiB,
             "client": {"identity": "address", "on_duplicate": "replace"},
             "upstream": up(p["track"])},
            {"name": "fixed", "listen": f"{LOOPBACK}:{p['fixed']}",
             "client": {"identity": "address_port", "on_duplicate": "replace",
                        "heartbeat": {"silence_ms": 0 if a else 60000}},
             "upstream": up(p["track"])},
            {"name": "flap", "listen": f"{LOOPBACK}:{p['flap']}",
             "upstream": up(p["flapsrv"], retries=2, retry_backoff_ms=20 if a else 30,
                            retry_backoff_max_ms=100, connect_timeout_ms=500,
                            on_close="reconnect")},
        ]
        if a:
            routes.append({"name": "extra", "listen": f"{LOOPBACK}:{p['extra']}",
                           "buffer_bytes": 128 * KiB, "upstream": up(p["echo"])})
        return {"workers": 2,
                "log": {"level": "info", "format": "json"},
                "shutdown": {"drain_timeout_ms": 5000},
                "admin": {"listen": f"{LOOPBACK}:{p['admin']}"},
                "routes": routes}

    # -- admin

    def admin(self, method, path):
        try:
            return http(self.ports["admin"], method, path, timeout=5.0 * SCALE)
        except AdminError as e:
            self.admin_errors.append(str(e))
            return None, b""

    def metrics(self):
        st, body = self.admin("GET", "/metrics")
        if st != 200:
            return None
        return parse_metrics(body.decode("utf-8", "replace"))

    def sessions(self):
        st, body = self.admin("GET", "/sessions")
        if st != 200:
            return None
        try:
            return json.loads(body)
        except ValueError:
            self.admin_errors.append(f"GET /sessions: not JSON: {body[:200]!r}")
            return None

    # -- chaos

    def chaos_loop(self, until):
        """Kills, reloads, sampling and verification, until `until`."""
        now = mono()
        next_kill = now + 1.0
        next_reload = now + self.rng.uniform(2.0, 4.0)
        next_sample = now
        next_verify = now + 1.0
        next_report = now + 10.0
        while True:
            now = mono()
            if now >= until:
                break
            if not self.d.running():
                self.fail(f"lifeline exited during the soak (code {self.d.proc.poll()})")
                return False
            if now >= next_kill and not self.args.no_chaos:
                self.kill_some()
                next_kill = now + self.rng.uniform(0.7, 1.3)
            if now >= next_reload and not self.args.no_chaos:
                self.reload("b" if self.current == "a" else "a")
                next_reload = mono() + self.rng.uniform(2.0, 4.0)
            if now >= next_sample:
                self.sample()
                next_sample = now + 0.5
            if now >= next_verify:
                self.verify.drain()
                next_verify = now + 1.0
            if now >= next_report:
                self.report_progress()
                next_report = now + 10.0
            if not self.eng.is_alive():
                self.fail("the client engine thread died (see the driver error)")
                return False
            for srv in self.servers:
                if srv.error:
                    self.fail(f"upstream server {srv.name} crashed: {srv.error}")
                    return False
            time.sleep(0.02)   # pacing of the chaos schedule
        return True

    def kill_some(self):
        lst = self.sessions()
        if lst is None:
            return
        with self.eng.klock:
            killable = dict(self.eng.killable)
        cands = [s for s in lst if (s.get("client"), s.get("route")) in killable and
                 getattr(killable[(s["client"], s["route"])], "kill_ok", lambda: True)()]
        self.rng.shuffle(cands)
        for s in cands[:self.rng.randint(1, 3)]:
            sess = killable[(s["client"], s["route"])]
            st, body = self.admin("POST", f"/sessions/{s['id']}/close")
            if st == 200:
                self.kills["closed"] += 1
                self.kills["closed_" + sess.kind] += 1
                self.killed_sids.add(sess.sid)
            elif st == 404:
                self.kills["404"] += 1
            else:
                self.kills[f"status_{st}"] += 1
                self.fail(f"POST /sessions/{s['id']}/close answered {st}: {body[:200]!r}")

    def reload(self, to):
        """Writes file `to` over the running path and sends SIGHUP; waits for
        the `reloaded` line (bounded)."""
        if to == "b":
            self.eng.extra_enabled = False   # no new sessions towards a route going away
        n = self.d.count("reloaded")
        write_config(self.tmp.name, self.cfg_a if to == "a" else self.cfg_b)
        self.d.signal(signal.SIGHUP)
        if not self.d.wait_msg_count("reloaded", n + 1, 10 * SCALE):
            self.reload_failures += 1
            self.fail(f"no `reloaded` line within {10 * SCALE:.0f} s of SIGHUP #{self.reloads + 1}"
                      f" (to file {to.upper()})\n{self.d.log_tail(20)}")
            return False
        self.reloads += 1
        self.current = to
        if to == "a":
            self.eng.extra_enabled = True
        return True

    def sample(self):
        try:
            rss = proc_status(self.d.pid, "VmRSS")
        except (FileNotFoundError, ProcessLookupError):
            return
        self.rss_peak = max(self.rss_peak, rss)

    def report_progress(self):
        e = self.eng
        el = mono() - self.phase_start
        total = sum(e.started.values()) - self.phase_started0
        self.log(f"{self.phase} {el:5.0f} s: {total} sessions ({total / max(el, 1e-9):.0f}/s), "
                 f"active {len(e.active)}, RSS {proc_status(self.d.pid, 'VmRSS') // 1024} MiB, "
                 f"fds {len(proc_fds(self.d.pid))}, log lines {self.d.n_lines}, "
                 f"reloads {self.reloads}, kills {self.kills['closed']}, "
                 f"failures {len(self.failures) + len(e.failures) + len(self.verify.failures)}")

    # -- phases

    def run_phase(self, name, seconds):
        self.phase = name
        self.phase_start = mono()
        self.phase_started0 = sum(self.eng.started.values())
        self.eng.extra_enabled = self.current == "a"
        self.flap.hold(None)
        self.eng.set_spawning(True)
        ok = self.chaos_loop(self.phase_start + seconds)
        elapsed = mono() - self.phase_start
        return ok, elapsed

    def quiesce(self, what):
        """Stops the traffic, puts file A back, waits (bounded) for every
        client, every upstream connection and every lifeline session to end."""
        self.eng.set_spawning(False)
        self.eng.extra_enabled = False
        if self.current != "a":
            self.reload("a")
        self.eng.extra_enabled = False
        self.flap.hold("echo")
        deadline = mono() + 60 * SCALE
        while self.eng.active and mono() < deadline and self.eng.is_alive():
            self.verify.drain()
            time.sleep(0.05)
        if self.eng.active:
            stuck = list(self.eng.active)
            kinds = collections.Counter(s.kind for s in stuck)
            lst = self.sessions() or []
            by_client = {s.get("client"): s for s in lst}
            self.fail(f"{what}: {len(stuck)} client sessions still open after "
                      f"{60 * SCALE:.0f} s: {dict(kinds)}\n    " + "\n    ".join(
                          f"{c.describe()}; lifeline: {json.dumps(by_client.get(c.addr))}"
                          for c in stuck[:10]))
            return False
        ok = True
        last = None

        def lifeline_idle():
            nonlocal last
            m = self.metrics()
            s = self.sessions()
            if m is None or s is None:
                return False
            active = {l.get("route"): v for n, l, v in m if n == "lifeline_sessions_active"}
            last = (active, s)
            return all(v == 0 for v in active.values()) and s == []
        try:
            harness.wait_until(lifeline_idle, 20 * SCALE, "no session in lifeline", interval=0.1)
        except AssertionError:
            self.fail(f"{what}: lifeline still has sessions: active {last[0] if last else '?'}, "
                      f"/sessions {json.dumps(last[1][:5]) if last else '?'}")
            ok = False
        try:
            harness.wait_until(lambda: all(s.open_conns() == 0 for s in self.servers),
                               20 * SCALE, "upstream connections closed", interval=0.05)
        except AssertionError:
            self.fail(f"{what}: upstream connections still open: "
                      + ", ".join(f"{s.name} {s.open_conns()}" for s in self.servers))
            ok = False
        self.verify.drain()
        return ok

    def flap_probe(self, seconds_per_mode=3.0, clients=16):
        """Only the flapping route, held in each bad mode in turn with
        `clients` clients connected (each one reconnects when its session
        ends): lifeline's CPU time and log lines per second in each mode."""
        out = {}
        self.eng.probe = clients
        for mode in ("close", "reset", "refuse"):
            self.flap.hold(mode)
            time.sleep(0.5)    # pacing: let the mode take hold
            cpu0, lines0, t0 = proc_cpu_seconds(self.d.pid), self.d.n_lines, mono()
            closed0 = self.d.count("session closed")
            time.sleep(seconds_per_mode)   # pacing: the measuring window
            cpu1, lines1, t1 = proc_cpu_seconds(self.d.pid), self.d.n_lines, mono()
            closed = self.d.count("session closed") - closed0
            dt = t1 - t0
            out[mode] = ((cpu1 - cpu0) / dt, (lines1 - lines0 - closed) / dt, closed / dt)
        self.eng.probe = None
        self.flap.hold("echo")
        return out

    # -- main

    def run(self):
        a = self.args
        self.log(f"lifeline {harness.BIN} ({SANITIZER or 'no sanitizer'}), seed {self.seed}, "
                 f"soak {a.seconds} s after a {a.warmup} s warm-up")
        self.servers = [
            Upstream("echo", self.ports["echo"]),
            Upstream("track", self.ports["track"], ordered=True, max_pending=1 << 40),
        ]
        self.flap = FlapServer("flap", self.ports["flapsrv"], random.Random(self.seed + 2))
        self.servers.append(self.flap)
        for s in self.servers:
            s.start()
        env = {}
        if SANITIZER == "asan":
            env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "detect_leaks=1")
            env["UBSAN_OPTIONS"] = os.environ.get("UBSAN_OPTIONS", "print_stacktrace=1")
        self.d = SoakLifeline(self.cfg_a, self.tmp.name, env=env)
        if a.lifeline_log:
            self.d.log_file = open(a.lifeline_log, "w")
        self.d.start()
        try:
            self.d.wait_ready(15 * SCALE)
        except AssertionError as e:
            self.fail(f"lifeline did not start: {e}")
            return self.finish()
        self.eng = Engine(self)
        self.eng.start()
        self.verify = Verifier(self)
        t_start = mono()

        # Warm-up, then the baselines with nothing open.
        ok, _ = self.run_phase("warm-up", a.warmup)
        ok = ok and self.quiesce("after the warm-up")
        if not ok:
            return self.finish()
        # A descriptor may still be closing (the last admin connection):
        # the baseline is the count once it has not moved for a second.
        try:
            harness.wait_stable(lambda: len(proc_fds(self.d.pid)), 1.0, 10 * SCALE,
                                "lifeline's descriptor count to settle")
        except AssertionError as e:
            self.fail(f"after the warm-up: {e}")
            return self.finish()
        self.fd_base = proc_fds(self.d.pid)
        self.rss_base = proc_status(self.d.pid, "VmRSS")
        self.rss_peak = self.rss_base
        self.cpu0 = proc_cpu_seconds(self.d.pid)
        self.lines0 = self.d.n_lines
        self.msgs0 = collections.Counter(self.d.by_msg)
        self.started0 = collections.Counter(self.eng.started)
        self.bytes0 = (self.eng.bytes_sent, self.eng.bytes_received)
        self.reloads0, self.kills0 = self.reloads, collections.Counter(self.kills)
        self.takeovers0, self.fixed0 = self.eng.takeovers, self.eng.fixed_returns
        m0 = self.metrics() or []
        self.closes0 = collections.Counter()
        for n, l, v in m0:
            if n == "lifeline_session_closes_total":
                self.closes0[l.get("reason")] += v
        self.log(f"baseline after the warm-up: {len(self.fd_base)} fds, RSS "
                 f"{self.rss_base} KiB")

        # The soak.
        ok, self.soak_elapsed = self.run_phase("soak", a.seconds)
        self.soak_cpu = proc_cpu_seconds(self.d.pid) - self.cpu0
        self.soak_lines = self.d.n_lines - self.lines0
        self.soak_msgs = collections.Counter(self.d.by_msg) - self.msgs0
        self.soak_started = collections.Counter(self.eng.started) - self.started0
        self.soak_bytes = (self.eng.bytes_sent - self.bytes0[0],
                           self.eng.bytes_received - self.bytes0[1])
        self.soak_takeovers = self.eng.takeovers - self.takeovers0
        self.soak_fixed = self.eng.fixed_returns - self.fixed0
        if not ok:
            return self.finish()
        self.quiesce("after the soak")
        self.metrics_end = self.metrics() or []
        self.probe = self.flap_probe() if self.d.running() else {}
        self.quiesce("after the flap probe")
        self.verify.drain(final=True)
        self.end_checks()
        self.wall = mono() - t_start
        return self.finish()

    def end_checks(self):
        pid = self.d.pid
        # Descriptors: exactly the baseline once lifeline has nothing open
        # (a closing admin connection may take a moment to go: bounded wait).
        fds = None
        try:
            fds = harness.wait_until(
                lambda: (lambda f: f if len(f) == len(self.fd_base) else None)(proc_fds(pid)),
                5 * SCALE, "descriptors back to the baseline", interval=0.1)
        except AssertionError:
            fds = proc_fds(pid)
            extra = collections.Counter(fds) - collections.Counter(self.fd_base)
            gone = collections.Counter(self.fd_base) - collections.Counter(fds)
            self.fail(f"lifeline has {len(fds)} descriptors, {len(self.fd_base)} at the baseline"
                      f" (new: {dict(extra)}; gone: {dict(gone)})")
        self.fd_final = len(fds)
        # Counters: every session accepted has ended, each with one reason,
        # and every reload counted as applied.
        m = self.metrics() or []
        total = collections.Counter()
        closes = collections.Counter()
        for n, l, v in m:
            if n == "lifeline_sessions_total":
                total[l.get("route")] += v
            elif n == "lifeline_session_closes_total":
                closes[l.get("route")] += v
            elif n == "lifeline_config_reloads_total":
                want = self.reloads if l.get("result") == "ok" else 0
                if v != want:
                    self.fail(f"lifeline_config_reloads_total{{result={l.get('result')}}} is "
                              f"{v:.0f}, expected {want}")
            elif n == "lifeline_sessions_active" and v != 0:
                self.fail(f"lifeline_sessions_active{{route={l.get('route')}}} is {v:.0f}")
        for route in set(total) | set(closes):
            if total[route] != closes[route]:
                self.fail(f"route {route}: lifeline_sessions_total {total[route]:.0f} but "
                          f"{closes[route]:.0f} closes counted")
        # Memory: see RSS_BOUND.
        self.rss_final = proc_status(pid, "VmRSS")
        self.rss_hwm = proc_status(pid, "VmHWM")
        grow = self.rss_final - self.rss_base
        bound_kib = rss_bound_kib(self.rss_base)
        self.rss_bound = bound_kib
        if grow > bound_kib:
            self.fail(f"RSS {self.rss_final} KiB at the end, {self.rss_base} KiB at the baseline: "
                      f"+{grow} KiB, over the bound of +{bound_kib} KiB")
        # The flap probe: see PROBE_*.
        for mode, (cpu, lps, sps) in self.probe.items():
            if cpu > PROBE_CPU:
                self.fail(f"flap probe, server mode {mode}: lifeline used {cpu:.0%} of a core "
                          f"(bound {PROBE_CPU:.0%})")
            if lps > PROBE_LINES:
                self.fail(f"flap probe, server mode {mode}: {lps:.0f} log lines/s besides "
                          f"`session closed` (bound {PROBE_LINES})")

    def finish(self):
        """Stops everything; lifeline must exit 0 on SIGTERM; sanitizer
        reports; summary. Returns the exit code."""
        d = self.d
        code = None
        if getattr(self, "eng", None) is not None:
            self.eng.stop()
        if d.running():
            d.signal(signal.SIGTERM)
            try:
                code = d.wait_exit(15 * SCALE)
            except AssertionError:
                self.fail(f"lifeline still running {15 * SCALE:.0f} s after SIGTERM")
        else:
            code = d.proc.poll()
        d.kill()
        if code != 0:
            self.fail(f"lifeline exit code {code} (expected 0 after SIGTERM)")
        for s in self.servers if hasattr(self, "servers") else []:
            s.stop()
        if d.sanitizer:
            self.fail("sanitizer report in lifeline's stderr:\n  " +
                      "\n  ".join(d.sanitizer[:20]) + "\n  " + "\n  ".join(d.other[:60]))
        elif d.other:
            self.fail("stderr lines that are not JSON log lines:\n  " + "\n  ".join(d.other[:20]))
        for line in d.error_lines[:10]:
            self.fail(f"error logged: {line}")
        if getattr(self, "eng", None) is not None:
            for kind, msg in list(self.eng.failures)[:MAX_LISTED]:
                self.fail(f"[{kind}] {msg}")
            if len(self.eng.failures) > MAX_LISTED:
                self.fail(f"... and {len(self.eng.failures) - MAX_LISTED} more session failures")
            for e in self.eng.errors[:5]:
                self.fail(f"driver error: {e}")
        if self.verify is not None:
            for msg in self.verify.failures[:MAX_LISTED]:
                self.fail(msg)
            if len(self.verify.failures) > MAX_LISTED:
                self.fail(f"... and {len(self.verify.failures) - MAX_LISTED} more verification "
                          f"failures")
        for e in self.admin_errors[:10]:
            self.fail(f"admin endpoint: {e}")
        self.summary()
        self.tmp.cleanup()
        return 1 if self.failures else 0

    def summary(self):
        p = lambda *a: print(*a, flush=True)  # noqa: E731
        p("")
        p("=" * 72)
        p(f"lifeline soak: {harness.BIN} ({SANITIZER or 'no sanitizer'}), seed {self.seed}")
        if hasattr(self, "soak_elapsed"):
            el = self.soak_elapsed
            total = sum(self.soak_started.values())
            p(f"soak: {el:.0f} s, {total} sessions, {total / el:.0f} sessions/s"
              f" (wall time with warm-up and checks {getattr(self, 'wall', 0):.0f} s)")
            p("sessions by kind: " + ", ".join(f"{k} {v}" for k, v in
                                                sorted(self.soak_started.items())))
            outs = collections.Counter()
            for (k, o), v in self.eng.outcomes.items():
                outs[f"{k}:{o}"] += v
            p("client outcomes (whole run): " + ", ".join(f"{k} {v}" for k, v in
                                                        sorted(outs.items())))
            p(f"bytes: {self.soak_bytes[0] / MiB:.0f} MiB sent by clients, "
              f"{self.soak_bytes[1] / MiB:.0f} MiB received "
              f"({(self.soak_bytes[0] + self.soak_bytes[1]) / MiB / el:.1f} MiB/s)")
            closes = collections.Counter()
            for n, l, v in getattr(self, "metrics_end", []):
                if n == "lifeline_session_closes_total":
                    closes[l.get("reason")] += v
            closes = {k: int(v - self.closes0[k]) for k, v in closes.items()
                      if v - self.closes0[k]}
            p("closes by reason (/metrics, soak only): " + ", ".join(
                f"{k} {v}" for k, v in sorted(closes.items(), key=lambda x: -x[1])))
            mt = {n: v for n, l, v in getattr(self, "metrics_end", [])
                  if n == "lifeline_takeovers_total" and l.get("route") == "take"}
            p(f"takeovers: {self.soak_takeovers} opened over a live session (route take), "
              f"lifeline_takeovers_total{{take}} {int(mt.get('lifeline_takeovers_total', 0))} "
              f"(whole run); {self.eng.inversions} inverted by the cross-worker accept order "
              f"(whole run); fixed-port returns {self.soak_fixed}")
            fk = collections.Counter()
            for (route, reason, how), v in self.d.finish_kinds.items():
                fk[f"{route}/{reason}/{how}"] += v
            p("upstream_finish (whole run): " + ", ".join(f"{k} {v}" for k, v in
                                                        sorted(fk.items())))
            p(f"reloads: {self.reloads - self.reloads0} in the soak ({self.reloads} in all), "
              f"`reloaded` lines {self.d.by_msg['reloaded']}, failed {self.reload_failures}")
            kl = collections.Counter(self.kills) - self.kills0
            p("admin kills (soak): " + ", ".join(f"{k} {v}" for k, v in sorted(kl.items())))
            p(f"flap server modes: {dict(self.flap.mode_counts)}, "
              f"rebind retries {self.flap.rebind_failures}")
            p(f"lifeline CPU: {self.soak_cpu:.1f} s in {el:.0f} s ({self.soak_cpu / el:.0%} of "
              f"a core)")
            p(f"log lines: {self.soak_lines} ({self.soak_lines / el:.1f}/s); upstream lines "
              + ", ".join(f"{m} {self.soak_msgs[m]} ({self.soak_msgs[m] / el:.1f}/s)"
                          for m in sorted(UPSTREAM_NOISE)))
            if getattr(self, "probe", None):
                p("flap probe (only the flap route, 16 clients): " + "; ".join(
                    f"{m}: CPU {c:.0%}, {lps:.0f} log lines/s + {sps:.0f} sessions closed/s"
                    for m, (c, lps, sps) in self.probe.items()) +
                  f" (bounds {PROBE_CPU:.0%} CPU, {PROBE_LINES} lines/s)")
            if hasattr(self, "rss_final"):
                p(f"RSS: baseline {self.rss_base} KiB, peak (sampled) {self.rss_peak} KiB, "
                  f"VmHWM {self.rss_hwm} KiB, final {self.rss_final} KiB "
                  f"(+{self.rss_final - self.rss_base} KiB; bound +{self.rss_bound} KiB)")
                p(f"fds: baseline {len(self.fd_base)}, final {self.fd_final}")
            if self.verify is not None:
                v = self.verify
                p(f"verified: {v.checked} server records ({v.full} full, {v.prefix} prefix, "
                  f"{v.exact_checked} of them against bytes_from_client, {v.exact_failed} short), "
                  f"{v.log_checked} close reasons, {v.takeover_pairs} upstream "
                  f"successions in order; server ends {dict(v.server_ends)}; "
                  f"untagged upstream connections {v.untagged}; "
                  f"unmatched session closed lines {self.d.unmatched_closed()}")
                for line in v.reset_details[:8]:
                    p("  server saw a reset: " + line)
        p("PASS" if not self.failures else f"FAIL: {len(self.failures)} failure(s)")
        for f in self.failures:
            p(" - " + f)
        p("=" * 72)


# A broken lifeline can fail thousands of sessions the same way: the summary
# lists this many of each list, then the count of the rest.
MAX_LISTED = 200

# Bounds. RSS: lifeline keeps per-worker read buffers and a pool of 64 KiB
# buffers, and glibc keeps freed memory in its arenas until malloc_trim (after
# 1,024 closes per worker), so the end is compared with a baseline taken after
# a warm-up that has run the same mix. What is left over is allocator
# fragmentation: measured at up to a few MiB (see the summary of a run). The
# bound, 16 MiB or 25 % of the baseline, is well above that and well below
# what one leaked session per second would add. Under ASan, freed memory sits
# in the quarantine (256 MiB by default) and shadow memory grows with it, so
# the bound there is the quarantine plus the same margin.
def rss_bound_kib(base_kib):
    bound = max(16 * 1024, base_kib // 4)
    if SANITIZER == "asan":
        bound += 320 * 1024
    return bound


# The flap probe: with retries 2 and backoff 20..100 ms, 16 clients of a
# server that closes, resets or refuses every connection (each client
# reconnecting as soon as its session gives up) cost lifeline under 10 % of a
# core (measured; ~30 % under ASan), one `session closed` line per session,
# and at most 10 upstream lines a second per worker plus a `log lines
# suppressed` line a second: ~20-25 lines/s besides the closes. A redial loop
# without backoff burns a core per worker and writes thousands of lines a
# second; without the per-worker bound a line per try is ~100-200/s here.
PROBE_CPU = 0.5 if SANITIZER is None else 1.0
PROBE_LINES = 60


# A session's start in the log (ts - duration_ms) is the worker loop's cached
# time when it accepted it, which lags the real time by up to one loop turn
# (tens of ms under load and ASan): two sessions on different workers can
# look out of order by that much.
INVERSION_SLACK = 0.1 * SCALE


class Verifier:
    """Matches client results with server records (by token) and with
    lifeline's `session closed` lines (by client address and start time)."""

    def __init__(self, soak):
        self.soak = soak
        self.failures = []
        self.pending_client = {}
        self.pending_server = {}
        self.pending_log = collections.deque()
        self.track = collections.defaultdict(list)    # identity -> [(accept, eof, end, sid)]
        self.checked = self.full = self.prefix = 0
        self.log_checked = 0
        self.server_ends = collections.Counter()
        self.untagged = 0
        self.takeover_pairs = 0
        self.inv_recs = {}
        self.server_resets = {}   # sid -> server record, of sessions the server saw reset
        self.exact_srv = {}       # sid -> server record, of sessions checked against the log
        self.exact_checked = 0
        self.exact_failed = 0
        self.reset_details = []
        self.inversions = []      # (newer sid, older sid, newer address)

    def f(self, msg):
        if len(self.failures) < 10000:
            self.failures.append(msg)

    def drain(self, final=False):
        eng = self.soak.eng
        while eng.results:
            r = eng.results.popleft()
            if r["rule"] != "none":
                rec = self.pending_server.pop(r["sid"], None)
                if rec is not None:
                    self.check(r, rec)
                else:
                    self.pending_client[r["sid"]] = r
            if (r["reasons"] is not None or r["early"]) and r["addr"] is not None:
                self.pending_log.append(r)
        for srv in self.soak.servers:
            if srv.name == "flap":
                continue
            while srv.records:
                rec = srv.records.popleft()
                sid = rec[0]
                if srv.name == "track":
                    key = (rec[2], rec[3]) if sid is not None else None
                    if key is not None:
                        self.track[key].append((rec[7], rec[8], rec[6], sid))
                if sid is None:
                    self.untagged += 1
                    continue
                r = self.pending_client.pop(sid, None)
                if r is not None:
                    self.check(r, rec)
                else:
                    self.pending_server[sid] = rec
        self.check_logs(final)
        if final:
            for sid, r in list(self.pending_client.items()):
                if r["rule"] == "full":
                    self.f(f"[{r['kind']}] {r['addr']} sid {sid}: the server has no record of "
                           f"this session ({r['n']} bytes sent)")
            self.pending_client.clear()
            if self.pending_server:
                self.f(f"{len(self.pending_server)} server records of sessions the clients "
                       f"never reported (e.g. sid {next(iter(self.pending_server))})")
            self.check_order()
            self.check_inversions()

    def check_inversions(self):
        """A newer connection of an identity-"address" client that was reset
        while the older one lived on: only the README's limit allows that
        (the two were accepted by different workers, the older one last)."""
        for newer, older, addr in self.inversions:
            a, b = self.inv_recs.get(older), self.inv_recs.get(newer)
            if a is None or b is None:
                self.f(f"[take] {addr} sid {newer}: reset while the older sid {older} lived; "
                       f"no `session closed` line to check it with")
            elif a[6] == b[6] or a[0] < b[0] - INVERSION_SLACK:
                self.f(f"[take] {addr} sid {newer}: reset (reason {b[1]}) while the older "
                       f"sid {older} lived on, yet they were on workers {b[6]} and {a[6]} and "
                       f"the older one's session started {(b[0] - a[0]) * 1000:.0f} ms earlier")

    def check(self, r, rec):
        """A server record against what the client sent."""
        sid, mode, slot, port, n, sha, end = rec[:7]
        self.checked += 1
        self.server_ends[(r["kind"], end)] += 1
        rule = r["rule"]
        tag = f"[{r['kind']}] {r['addr']} sid {sid}"
        if rule == "absent":
            self.f(f"{tag}: refused or reset at the client, yet the server got it ({n} bytes)")
            return
        if rule == "full":
            self.full += 1
            if n != r["n"]:
                self.f(f"{tag}: server got {n} bytes, client sent {r['n']}")
            elif sha != sha_of(r["off"], n):
                self.f(f"{tag}: server's SHA-256 differs from what was sent ({n} bytes)")
            if end != "eof":
                self.f(f"{tag}: the server saw a reset, not EOF")
            return
        self.prefix += 1
        if r.get("exact"):
            self.exact_srv[sid] = rec
        if end != "eof":
            self.server_resets[sid] = rec
        sent_payload = max(0, r["sent"] - 16)
        if n > sent_payload:
            self.f(f"{tag}: server got {n} bytes, client sent only {sent_payload}")
        elif sha != sha_of(r["off"], n):
            self.f(f"{tag}: server's {n} bytes are not a prefix of what was sent")

    def check_logs(self, final):
        d = self.soak.d
        now = mono()
        keep = collections.deque()
        while self.pending_log:
            r = self.pending_log.popleft()
            if not final and now - r["ended"] < 3.0:
                keep.append(r)
                continue
            reasons = r["reasons"]
            tag = f"[{r['kind']}] {r['addr']} sid {r['sid']}"
            killed = r["sid"] in self.soak.killed_sids
            rec = d.take_closed(r["addr"], r["route"], r["t0"])
            if rec is None:
                if final or now - r["ended"] > 30 * SCALE:
                    self.f(f"{tag}: no `session closed` line for this client")
                else:
                    keep.append(r)
                continue
            if r["early"]:
                if killed:
                    reasons = {"admin_kill"}
                else:
                    self.f(f"{tag}: ended early ({r['outcome']} after {r['sent']} bytes sent, "
                           f"{r['rx']} received) and no admin kill closed it; lifeline: "
                           f"reason {rec[1]}, bytes_from_client {rec[3]}, bytes_from_server "
                           f"{rec[4]}, upstream_finish {rec[5]}, worker {rec[6]}, "
                           f"duration_ms {rec[7]}")
                    reasons = None
            elif killed and reasons is not None:
                reasons = reasons | {"admin_kill"}   # the kill came too late to matter
            self.log_checked += 1
            start, reason, route, bfc, bfs, finish, worker, duration = rec
            if r.get("inv_older") or r.get("inv_newer"):
                self.inv_recs[r["sid"]] = rec
            srv = self.exact_srv.pop(r["sid"], None)
            if srv is not None:
                self.exact_checked += 1
                if srv[4] + 16 != bfc or srv[6] != "eof":
                    self.exact_failed += 1
                    self.f(f"{tag}: lifeline read {bfc} bytes from the client (reason {reason}, "
                           f"duration_ms {duration}, upstream_finish {finish}), but the server "
                           f"got {srv[4] + 16}, then {'EOF' if srv[6] == 'eof' else 'a reset'} "
                           f"(README: every byte the client sent, then FIN){r.get('story', '')}")
            srv = self.server_resets.pop(r["sid"], None)
            if srv is not None:
                self.reset_details.append(
                    f"{tag}{r.get('story', '')}; server got {srv[4] + 16} then a reset "
                    f"{srv[10] - srv[9]:.3f} s after its accept; lifeline: reason {reason}, "
                    f"bytes_from_client {bfc}, bytes_from_server {bfs}, upstream_finish "
                    f"{finish}, duration_ms {duration}")
            if r.get("inv_older"):
                self.inversions.append((r["sid"], r["inv_older"], r["addr"]))
            if route != r["route"]:
                self.f(f"{tag}: `session closed` line of route {route}, expected {r['route']}")
            if reasons is not None and reason not in reasons:
                self.f(f"{tag}: closed with reason {reason}, expected "
                       f"{' or '.join(sorted(reasons))} (bytes_from_client {bfc}, "
                       f"bytes_from_server {bfs}, client outcome {r['outcome']})")
            if r["bytes"] is not None and (bfc, bfs) != r["bytes"]:
                self.f(f"{tag}: bytes_from_client/server {bfc}/{bfs}, expected "
                       f"{r['bytes'][0]}/{r['bytes'][1]}")
        self.pending_log = keep

    def check_order(self):
        """Per client identity of the takeover routes, the server's upstream
        connections never overlap: each one's EOF was read before the next
        one was accepted."""
        for key, conns in self.track.items():
            conns.sort()
            for (acc, eof, end, sid), (acc2, _, _, sid2) in zip(conns, conns[1:]):
                self.takeover_pairs += 1
                if eof is None or eof > acc2:
                    what = "take" if key[1] == 0 else "fixed"
                    self.f(f"[{what}] client 127.0.0.{key[0]}"
                           f"{':' + str(key[1]) if key[1] else ''}: the server accepted "
                           f"sid {sid2}'s upstream connection before it read the EOF of "
                           f"sid {sid}'s (accept #{acc2}, EOF #{eof})")
            for acc, eof, end, sid in conns:
                if end != "eof":
                    self.f(f"client 127.0.0.{key[0]}:{key[1]} sid {sid}: the server saw a "
                           f"reset, not EOF")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float,
                    default=float(os.environ.get("SOAK_SECONDS") or 600),
                    help="length of the soak, after the warm-up (default 600, or $SOAK_SECONDS)")
    ap.add_argument("--warmup", type=float, default=10.0,
                    help="seconds of the same mix before the baselines are taken (default 10)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    ap.add_argument("--rate-scale", type=float, default=1.0,
                    help="multiplies every kind's session rate (default 1)")
    ap.add_argument("--only", default=None,
                    help="run only these kinds of sessions (comma-separated: clean, halfsrv, "
                         "reset, victim, nonreader, flap, extra, take, fixed), to narrow a "
                         "failure down")
    ap.add_argument("--lifeline-log", metavar="PATH", default=None,
                    help="also write every line lifeline logs to this file")
    ap.add_argument("--no-chaos", action="store_true",
                    help="no reloads and no admin kills (to narrow a failure down)")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 30)
    if not os.access(harness.BIN, os.X_OK):
        print(f"soak: no lifeline binary at {harness.BIN} (set LIFELINE_BIN)", file=sys.stderr)
        return 2
    harness.raise_nofile_to_hard()
    make_pool(args.seed)
    return Soak(args).run()


if __name__ == "__main__":
    sys.exit(main())
