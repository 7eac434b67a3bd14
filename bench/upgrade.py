#!/usr/bin/env python3
"""Live upgrade hand-over time: lifeline with N idle sessions, then SIGUSR2.

What it does, on 127.0.0.1 only, for each session count (10,000 and 1,000 unless told) and
each round (interleaved: round 1 of every count, then round 2, ...):

  - starts `load echo` (bench/load.c) and lifeline on the shipped config/lifeline.json, with
    only its addresses changed (listen, upstream, admin on 127.0.0.1 ports picked here) and
    `--log-format json`; RLIMIT_NOFILE 65536 for every process, as config/lifeline.service
    sets (or, without the privilege to raise the hard limit, the hard limit, and the session
    counts cut to what fits: two descriptors per session);
  - opens N client connections through lifeline, each checked with a 1-byte echo, and leaves
    them idle for 1 s;
  - sends SIGUSR2 to the lifeline and at once opens a fresh connection that sends a byte;
    from then until the new process says `ready`, another every PROBE_MS ms (each held open);
    once the new process logs `upgrade: taking over` (the sessions are in flight, nobody
    reads them), sends a byte on RESUME_SAMPLE of the idle sessions;
  - records:
      took_over_ms   lifeline's own duration_ms from `upgrade: took over`
      ready_ms       SIGUSR2 until the new process logs `ready` (the line's own timestamp)
      fresh_echo_ms  SIGUSR2 until the fresh connection's byte comes back
      resume_ms      SIGUSR2 until the last of the sampled sessions' bytes comes back: when
                     the new process relays the sessions it took over
      probe_max_ms   the longest a connection opened during the upgrade waited for its echo:
                     the accept gap (the old process stops accepting at the freeze, the new
                     one accepts once its workers run)
    and where the time went, from each log line's timestamp, with both processes' CPU time;
  - after `ready`, sends one byte on every one of the N sessions and expects it back from
    the echo server through the new process; a session that does not relay is a problem.

Every process it starts is stopped at the end of its round, the new lifeline too (its pid
from `upgrade starting`; the driver is a child subreaper, so the new process, orphaned when
the old one exits, becomes its child and is waited for). The figures are medians over the
rounds. The section "Live upgrade hand-over" of bench/RESULTS.md (or --results) is replaced,
or added at the end; the rest of the file is left as it is (bench/run.py rewrites the whole
file: run this one after it). Python 3 standard library only.

    python3 bench/upgrade.py [--sessions 10000,1000] [--rounds 3] [--results PATH]
                             [--lifeline BIN] [--no-write] [--keep]
"""

import argparse
import ctypes
import datetime
import errno
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))

# The benchmark driver's helpers (bench/run.py), and the test suites' (tests/lib).
import run as bench  # noqa: E402
from lifeline_testlib import (die_with_parent, lifeline_bin, parse_log_line,  # noqa: E402
                              proc_cpu_seconds)

LOOPBACK = bench.LOOPBACK
SHIPPED_CONFIG = os.path.join(REPO, "config", "lifeline.json")
# config/lifeline.service: LimitNOFILE=65536 (lifeline needs two per session).
FD_LIMIT = 65536
PROBE_MS = 20            # a fresh connection this often while the upgrade runs
RESUME_SAMPLE = 500      # held sessions sent a byte while in flight
OPEN_IN_FLIGHT = 200     # client connections being opened at once
SECTION = "## Live upgrade hand-over"
PR_SET_CHILD_SUBREAPER = 36

log = bench.log
BenchError = bench.BenchError


def median(vals):
    return statistics.median(vals) if vals else None


# --------------------------------------------------------------------------
# lifeline's log, read as it comes


class LogReader(threading.Thread):
    """Reads lifeline's stderr (shared by the old and the new process), copies it to a file,
    and keeps every line with the time.monotonic() it arrived at."""

    def __init__(self, stream, path):
        super().__init__(daemon=True)
        self.stream = stream
        self.path = path
        self.lines = []          # (arrival, record or None, text)
        self.cond = threading.Condition()
        self.eof = False

    def run(self):
        with open(self.path, "ab") as f:
            for raw in iter(self.stream.readline, b""):
                t = time.monotonic()
                f.write(raw)
                text, rec = parse_log_line(raw)
                with self.cond:
                    self.lines.append((t, rec, text))
                    self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def find(self, msg, since=0, **fields):
        """(index, arrival, record) of the first line from `since` on with this msg (and these
        fields), or None."""
        with self.cond:
            for i in range(since, len(self.lines)):
                t, rec, _ = self.lines[i]
                if rec is not None and rec.get("msg") == msg and all(
                        rec.get(k) == v for k, v in fields.items()):
                    return i, t, rec
        return None

    def wait(self, msg, timeout, since=0, **fields):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hit = self.find(msg, since, **fields)
                if hit:
                    return hit
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    raise BenchError(f"lifeline did not log {msg!r} within {timeout:.0f} s"
                                     f"{' (its stderr closed)' if self.eof else ''}: "
                                     f"{self.tail()}")
                self.cond.wait(min(left, 0.5))

    def tail(self, n=6):
        with self.cond:
            return " | ".join(text for _, _, text in self.lines[-n:])

    def count(self):
        with self.cond:
            return len(self.lines)


# --------------------------------------------------------------------------
# idle clients, all in this process on one epoll


class Clients:
    """N client connections through lifeline, each checked end to end with a 1-byte echo."""

    def __init__(self):
        self.socks = []

    def open(self, port, n, timeout=180.0):
        ep = select.epoll()
        pending = {}            # fd -> [sock, state]: "connect" or "echo"
        started = 0
        deadline = time.monotonic() + timeout
        try:
            while len(self.socks) < n:
                while started < n and len(pending) < OPEN_IN_FLIGHT:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.setblocking(False)
                    rc = s.connect_ex((LOOPBACK, port))
                    if rc not in (0, errno.EINPROGRESS):
                        s.close()
                        raise BenchError(f"client {started + 1}: connect: {os.strerror(rc)}")
                    pending[s.fileno()] = [s, "connect"]
                    ep.register(s.fileno(), select.EPOLLOUT)
                    started += 1
                if time.monotonic() > deadline:
                    raise BenchError(f"only {len(self.socks)} of {n} client connections "
                                     f"established after {timeout:.0f} s")
                for fd, ev in ep.poll(1.0):
                    s, state = pending[fd]
                    if state == "connect":
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            raise BenchError(f"client {len(self.socks) + 1}: connect: "
                                             f"{os.strerror(err)}")
                        s.send(b"i")
                        pending[fd][1] = "echo"
                        ep.modify(fd, select.EPOLLIN)
                        continue
                    try:
                        got = s.recv(1)
                    except BlockingIOError:
                        continue
                    if got != b"i":
                        raise BenchError(f"client {len(self.socks) + 1}: no echo "
                                         f"({'EOF' if not got else repr(got)})")
                    ep.unregister(fd)
                    del pending[fd]
                    self.socks.append(s)
        finally:
            ep.close()
            for s, _ in pending.values():
                s.close()
        return len(self.socks)

    def check(self, timeout=30.0):
        """One byte on every connection, expected back: (relayed, [what failed])."""
        ep = select.epoll()
        waiting = {}
        failed = []
        for i, s in enumerate(self.socks):
            try:
                s.send(b"u")
            except OSError as e:
                failed.append(f"#{i}: send: {e.strerror}")
                continue
            waiting[s.fileno()] = (i, s)
            ep.register(s.fileno(), select.EPOLLIN)
        ok = 0
        deadline = time.monotonic() + timeout
        try:
            while waiting and time.monotonic() < deadline:
                for fd, ev in ep.poll(1.0):
                    i, s = waiting[fd]
                    try:
                        got = s.recv(16)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        got, why = None, e.strerror
                    if got == b"u":
                        ok += 1
                    else:
                        failed.append(f"#{i}: " + ("EOF" if got == b"" else
                                                   why if got is None else repr(got)))
                    ep.unregister(fd)
                    del waiting[fd]
        finally:
            ep.close()
        failed += [f"#{i}: no echo within {timeout:.0f} s" for i, _ in waiting.values()]
        return ok, failed

    def close(self):
        # A reset, not a FIN: no TIME_WAIT on this side, and lifeline closes at once.
        for s in self.socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            s.close()
        self.socks = []


def echo_once(port, t_start, timeout=30.0):
    """Connects, sends one byte and waits for it: seconds from t_start until it came back, and
    the socket (kept open: a session the upgrade carries), or (None, socket or None, why)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(timeout)
    try:
        s.connect((LOOPBACK, port))
        s.sendall(b"f")
        got = s.recv(1)
    except OSError as e:
        return None, s, str(e)
    if got != b"f":
        return None, s, "EOF" if not got else repr(got)
    return time.monotonic() - t_start, s, None


class Resume(threading.Thread):
    """One byte on a sample of the held sessions, sent while they are in flight between the
    processes (after `upgrade: taking over`: frozen, nothing is read); the times their echoes
    come back, from SIGUSR2, say when the new process relays them."""

    def __init__(self, socks, t0, timeout=30.0):
        super().__init__(daemon=True)
        self.socks, self.t0, self.timeout = socks, t0, timeout
        self.sent_at = None
        self.echoed = []         # ms after SIGUSR2
        self.failed = []

    def run(self):
        ep = select.epoll()
        waiting = {}
        try:
            for s in self.socks:
                try:
                    s.send(b"r")
                except OSError as e:
                    self.failed.append(f"send: {e.strerror}")
                    continue
                waiting[s.fileno()] = s
                ep.register(s.fileno(), select.EPOLLIN)
            self.sent_at = 1000 * (time.monotonic() - self.t0)
            deadline = time.monotonic() + self.timeout
            while waiting and time.monotonic() < deadline:
                for fd, _ in ep.poll(0.5):
                    t = time.monotonic()
                    s = waiting.pop(fd)
                    ep.unregister(fd)
                    try:
                        got = s.recv(1)
                    except OSError as e:
                        got = e.strerror
                    if got == b"r":
                        self.echoed.append(1000 * (t - self.t0))
                    else:
                        self.failed.append("EOF" if got == b"" else str(got))
            self.failed += ["no echo"] * len(waiting)
        finally:
            ep.close()


class Prober(threading.Thread):
    """A fresh connection every PROBE_MS until stopped; each sends a byte and the time until
    its echo is kept, with the time it started at (both from SIGUSR2)."""

    def __init__(self, port, t0):
        super().__init__(daemon=True)
        self.port, self.t0 = port, t0
        self.stop = threading.Event()
        self.results = []        # (start, wait or None, why)
        self.socks = []
        self.threads = []

    def one(self):
        start = time.monotonic()
        took, s, why = echo_once(self.port, start)
        self.results.append((start - self.t0, took, why))
        if s is not None:
            self.socks.append(s)

    def run(self):
        while not self.stop.is_set():
            t = threading.Thread(target=self.one, daemon=True)
            t.start()
            self.threads.append(t)
            self.stop.wait(PROBE_MS / 1000)

    def finish(self):
        self.stop.set()
        self.join()
        for t in self.threads:
            t.join(35)

    def close(self):
        for s in self.socks:
            s.close()


# --------------------------------------------------------------------------
# processes


def make_subreaper():
    """Orphans of our children (the new lifeline, once the old one exits) become ours."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def reap(pid):
    """Collects a child's exit status if it is ours and has exited: its code, or None."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if got == pid else None


def is_lifeline(pid, binary):
    try:
        return os.readlink(f"/proc/{pid}/exe") == os.path.realpath(binary)
    except OSError:
        return False


def stop_pid(pid, binary, timeout=20.0):
    """SIGTERM, then SIGKILL, to one lifeline process by its pid (if that pid still runs
    `binary`: a pid someone else reaped may be another process's by now); waits until it is
    gone."""
    if not is_lifeline(pid, binary):
        reap(pid)
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            reap(pid)
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap(pid)
            if not pid_alive(pid):
                return
            time.sleep(0.02)
    log(f"upgrade bench: pid {pid} did not go away")


def run_delay(pid):
    """ms the process's threads have spent runnable, waiting for a CPU (schedstat), or None."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return total / 1e6


def log_time(rec):
    """A log record's ts ("2026-12-07T18:03:49.035Z") as seconds since the epoch."""
    d = datetime.datetime.strptime(rec["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return d.replace(tzinfo=datetime.timezone.utc).timestamp()


def scrape_metric(port, name):
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


# --------------------------------------------------------------------------
# the benchmark


class UpgradeBench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="lifeline-upgrade-bench-")
        self.lifeline = os.path.abspath(args.lifeline)
        self.load = None
        self.rounds = {n: [] for n in args.sessions}   # n -> [dict of figures]
        self.problems = []
        self.pids = set()        # every lifeline pid seen, stopped at the end of its round
        self.procs = []          # Popen objects of this round

    def build_load(self):
        cc = os.environ.get("CC", "cc")
        self.load = os.path.join(self.tmp, "load")
        argv = [cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
                "-o", self.load, os.path.join(HERE, "load.c")]
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"building load.c failed:\n{r.stderr}")

    def config(self, port, echo_port, admin_port, tag):
        """The shipped config with only its addresses changed."""
        with open(SHIPPED_CONFIG) as f:
            cfg = json.load(f)
        if len(cfg["routes"]) != 1:
            raise BenchError(f"{SHIPPED_CONFIG}: expected one route")
        cfg["routes"][0]["listen"] = f"{LOOPBACK}:{port}"
        cfg["routes"][0]["upstream"]["servers"] = [f"{LOOPBACK}:{echo_port}"]
        cfg["admin"]["listen"] = f"{LOOPBACK}:{admin_port}"
        text = json.dumps(cfg, indent=2) + "\n"
        path = os.path.join(self.tmp, f"lifeline-{tag}.json")
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self, name, argv, **kw):
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=die_with_parent, **kw)
        p.bench_name = name
        self.procs.append(p)
        return p

    def one_round(self, n, rnd):
        tag = f"{n}-{rnd}"
        echo_port, port, admin_port = bench.pick_ports(3)
        fig = {}
        clients = Clients()
        prober = fresh = None
        with open(os.path.join(self.tmp, f"echo-{tag}.log"), "ab") as echo_log:
            echo = self.start("echo", [self.load, "echo", str(echo_port)],
                              stdout=subprocess.DEVNULL, stderr=echo_log)
        try:
            bench.wait_listening(bench.Procs(self.tmp), echo, [echo_port])
            cfg = self.config(port, echo_port, admin_port, tag)
            argv = [self.lifeline, "-c", cfg, "--log-format", "json"]
            old = self.start("lifeline", argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.pids.add(old.pid)
            reader = LogReader(old.stderr, os.path.join(self.tmp, f"lifeline-{tag}.log"))
            reader.start()
            reader.wait("ready", 15, pid=old.pid)

            t = time.monotonic()
            got = clients.open(port, n)
            log(f"  {got:,} sessions open ({time.monotonic() - t:.1f} s)")
            time.sleep(1.0)         # idle, and every session settled
            fig["loadavg"] = os.getloadavg()[0]
            since = reader.count()

            exited = {}

            def wait_old():
                # wait4 for the old process's CPU time over its whole life.
                try:
                    _, status, ru = os.wait4(old.pid, 0)
                except ChildProcessError:   # reaped by a cleanup after a failure
                    return
                old.returncode = os.waitstatus_to_exitcode(status)
                exited.update(t=time.monotonic(), code=old.returncode,
                              cpu=ru.ru_utime + ru.ru_stime)
                self.pids.discard(old.pid)  # reaped: the pid may be someone else's now

            waiter = threading.Thread(target=wait_old, daemon=True)
            old_cpu0 = proc_cpu_seconds(old.pid)
            t0_wall = time.time()
            t0 = time.monotonic()
            os.kill(old.pid, signal.SIGUSR2)
            waiter.start()
            prober = Prober(port, t0)
            took, fresh, why = echo_once(port, t0)
            prober.start()
            if took is None:
                raise BenchError(f"the fresh connection made after SIGUSR2 failed: {why}")
            fig["fresh_echo_ms"] = 1000 * took

            _, _, rec = reader.wait("upgrade starting", 15, since)
            new_pid = rec["new_pid"]
            self.pids.add(new_pid)
            reader.wait("upgrade: taking over", 60, since)
            resume = Resume(clients.socks[::max(1, len(clients.socks) // RESUME_SAMPLE)], t0)
            resume.start()
            _, _, rec_old = reader.wait("upgraded", 60, since)
            fig["old_duration_ms"] = float(rec_old["duration_ms"])
            _, t_ready, _ = reader.wait("ready", 60, since, pid=new_pid)
            new_cpu = proc_cpu_seconds(new_pid)
            new_delay = run_delay(new_pid)
            prober.finish()
            fig["ready_arrival_ms"] = 1000 * (t_ready - t0)
            _, _, rec = reader.wait("upgrade: took over", 1, since)
            fig["took_over_ms"] = float(rec["duration_ms"])
            fig["sessions_moved"] = rec["sessions"]
            fig["listeners_moved"] = rec["listeners"]
            waiter.join(15)
            if "t" not in exited:
                raise BenchError("the old process did not exit after `upgraded`")
            if exited["code"] != 0:
                self.problems.append(f"{tag}: the old process exited with code "
                                     f"{exited['code']}")
            # Where the time went: each line's own timestamp (CLOCK_REALTIME, to the ms,
            # truncated), in ms after SIGUSR2; the old process's exit as the driver saw it.
            fig["phases"] = {k: 1000 * (log_time(reader.wait(msg, 1, since, **kw)[2]) - t0_wall)
                             for k, msg, kw in (
                                 ("starting", "upgrade starting", {}),
                                 ("hello", "upgrade: the new process is ready to take over", {}),
                                 ("taking_over", "upgrade: taking over", {}),
                                 ("took_over", "upgrade: took over", {}),
                                 ("upgraded", "upgraded", {}),
                                 ("ready", "ready", {"pid": new_pid}))}
            fig["phases"]["old_exit"] = 1000 * (exited["t"] - t0)
            fig["ready_ms"] = fig["phases"]["ready"]
            fig["old_cpu_ms"] = 1000 * (exited["cpu"] - old_cpu0)
            fig["new_cpu_ms"] = 1000 * new_cpu
            fig["new_delay_ms"] = new_delay
            waits = [w for _, w, _ in prober.results if w is not None]
            fig["probes"] = len(prober.results)
            fig["probe_list"] = sorted((1000 * st, None if w is None else 1000 * (st + w))
                                       for st, w, _ in prober.results)
            fig["probe_failed"] = [f"{s * 1000:.0f} ms: {why}" for s, w, why in prober.results
                                   if w is None]
            fig["probe_max_ms"] = 1000 * max(waits) if waits else None
            resume.join(35)
            fig["resume_sent_ms"] = resume.sent_at
            fig["resume_sample"] = len(resume.echoed) + len(resume.failed)
            fig["resume_ms"] = max(resume.echoed) if resume.echoed else None
            fig["resume_first_ms"] = min(resume.echoed) if resume.echoed else None
            if resume.failed:
                self.problems.append(f"{tag}: {len(resume.failed)} sampled sessions did not "
                                     f"relay a byte sent during the hand-over: "
                                     f"{', '.join(resume.failed[:5])}")
            metric = scrape_metric(admin_port, "lifeline_upgrade_duration_seconds")
            fig["metric_ms"] = None if metric is None else 1000 * metric

            ok, failed = clients.check()
            fig["relayed"] = ok
            fig["relay_failed"] = failed
            try:
                fig["fresh_relays"] = fresh.send(b"g") == 1 and fresh.recv(1) == b"g"
            except OSError:
                fig["fresh_relays"] = False
            if not fig["fresh_relays"]:
                self.problems.append(f"{tag}: the connection opened right after SIGUSR2 did not "
                                     "relay after the upgrade")
            if failed:
                self.problems.append(f"{tag}: {len(failed)} of {got} sessions did not relay "
                                     f"after the upgrade: {', '.join(failed[:5])}")
            if fig["probe_failed"]:
                self.problems.append(f"{tag}: {len(fig['probe_failed'])} fresh connections "
                                     f"failed: {', '.join(fig['probe_failed'][:5])}")
            fig["n"] = got
            return fig
        finally:
            if prober is not None:
                prober.finish()
                prober.close()
            if fresh is not None:
                fresh.close()
            clients.close()
            for pid in sorted(self.pids, reverse=True):
                stop_pid(pid, self.lifeline)
            self.pids.clear()
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
                if p.stderr is not None:
                    p.stderr.close()
            self.procs = []

    def run(self):
        if not os.access(self.lifeline, os.X_OK):
            raise BenchError(f"no lifeline binary at {self.lifeline} (build it, or pass "
                             "--lifeline)")
        make_subreaper()
        nofile = bench.set_nofile(FD_LIMIT)
        # lifeline needs two descriptors per session and about 100 more; without the
        # privilege to raise the hard limit (CAP_SYS_RESOURCE), the most that fit.
        fit = (nofile - 200) // 2 // 100 * 100
        for i, n in enumerate(self.args.sessions):
            if n > fit:
                self.problems.append(
                    f"RLIMIT_NOFILE could only be raised to {nofile}, not {FD_LIMIT} (no "
                    f"CAP_SYS_RESOURCE): {n:,} sessions reduced to {fit:,}, the most that fit")
                self.rounds[fit] = self.rounds.pop(n)
                self.args.sessions[i] = n = fit
        self.nofile = nofile
        self.build_load()
        # Interleaved: round 1 of every size, then round 2, ...
        for rnd in range(1, self.args.rounds + 1):
            for n in self.args.sessions:
                log(f"[round {rnd}/{self.args.rounds}] {n:,} idle sessions")
                try:
                    fig = self.one_round(n, rnd)
                except BenchError as e:
                    self.problems.append(f"{n} sessions, round {rnd}: {e}")
                    log(f"  FAILED: {e}")
                    continue
                self.rounds[n].append(fig)
                ph = fig["phases"]
                log(f"  took over {fig['took_over_ms']:.0f} ms, ready {fig['ready_ms']:.0f} ms, "
                    f"fresh echo {fig['fresh_echo_ms']:.1f} ms, worst probe "
                    f"{fig['probe_max_ms']:.0f} ms ({fig['probes']} probes), metric "
                    f"{fig['metric_ms']:.0f} ms; relayed {fig['relayed']:,}/{fig['n']:,}; "
                    "phases " + ", ".join(f"{k} {v:.0f}" for k, v in ph.items())
                    + f"; CPU old {fig['old_cpu_ms']:.0f} ms, new {fig['new_cpu_ms']:.0f} ms, "
                    f"new waited for a CPU {fmt_ms(fig['new_delay_ms'])} ms; "
                    f"{fig['sessions_moved']:,} sessions moved")
                log(f"  sampled sessions: byte sent at {fmt_ms(fig['resume_sent_ms'])} ms, "
                    f"echoed {fmt_ms(fig['resume_first_ms'])}-{fmt_ms(fig['resume_ms'])} ms "
                    f"({fig['resume_sample']} sessions)")
                log("  probes (ms after SIGUSR2: opened -> echoed): " + ", ".join(
                    f"{a:.0f}->{fmt_ms(b)}" for a, b in fig["probe_list"]))

    def close(self):
        for pid in self.pids:
            stop_pid(pid, self.lifeline)
        if self.args.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# the report: one section of RESULTS.md


def fmt_ms(v, digits=0):
    return "n/a" if v is None else f"{v:,.{digits}f}"


def render(b, started, elapsed):
    sizes = [n for n in b.args.sessions if b.rounds[n]]
    keys = ("took_over_ms", "ready_ms", "fresh_echo_ms", "resume_ms", "resume_first_ms",
            "probe_max_ms", "metric_ms", "old_cpu_ms", "new_cpu_ms", "new_delay_ms")
    med = {n: {k: median([r[k] for r in b.rounds[n] if r.get(k) is not None]) for k in keys}
           for n in sizes}
    ph_keys = ("starting", "hello", "taking_over", "took_over", "upgraded", "old_exit", "ready")
    phases = {n: {k: median([r["phases"][k] for r in b.rounds[n]]) for k in ph_keys}
              for n in sizes}
    limit = ("RLIMIT_NOFILE 65536 as `config/lifeline.service` sets" if b.nofile >= FD_LIMIT
             else f"RLIMIT_NOFILE {b.nofile:,} (the unit sets 65536; this machine's hard limit "
                  "could not be raised)")
    out = [SECTION, "",
           f"Written by `bench/upgrade.py` on {started} UTC in {elapsed:.0f} s: "
           f"{b.args.rounds} interleaved round(s) per session count, all on 127.0.0.1; each "
           "figure is the median over the rounds, every round in brackets. lifeline runs the "
           "shipped `config/lifeline.json` with only its addresses changed (workers 0, so one "
           "per CPU; log level info; its one route with the defaults), `--log-format json`, "
           f"{limit}. The sessions are opened through it to `load echo`, each checked with a "
           "1-byte echo, and left idle for 1 s; then `kill -USR2`, and at once a fresh "
           f"connection sends a byte; another opens every {PROBE_MS} ms until `ready`. Once "
           f"the new process logs `upgrade: taking over`, {RESUME_SAMPLE} of the held sessions "
           "(every n-th) are sent a byte, as soon as the driver reads that line (so their echo "
           "times are upper bounds). After `ready`, every session is sent one more.", "",
           "| idle sessions | took over (lifeline's `duration_ms`) | SIGUSR2 to `ready` | "
           "SIGUSR2 to the echo on a connection opened right after it | SIGUSR2 until the "
           "held sessions relay again (last of the sample) | longest wait of a new client "
           "for its echo | sessions relaying after `ready` |",
           "|---|---|---|---|---|---|---|"]
    for n in b.args.sessions:
        rs = b.rounds[n]
        if not rs:
            out.append(f"| {n:,} | failed, see Problems | | | | | |")
            continue

        def cell(key, digits=0):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return (f"{fmt_ms(median(vals), digits)} ms ("
                    + ", ".join(fmt_ms(v, digits) for v in vals) + ")")
        relayed = ", ".join(f"{r['relayed']:,}/{r['n']:,}" for r in rs)
        out.append(f"| {n:,} | {cell('took_over_ms')} | {cell('ready_ms')} | "
                   f"{cell('fresh_echo_ms', 1)} | {cell('resume_ms')} | "
                   f"{cell('probe_max_ms')} | {relayed} |")
    out += ["",
            "Where the time goes, in ms after SIGUSR2 (medians): each log line's own "
            "timestamp; the old process's exit as the driver saw it.", "",
            "| idle sessions | `upgrade starting` (old: spawned) | new process said hello "
            "(old: freeze) | `upgrade: taking over` (new: all received) | `upgrade: took "
            "over` (new: relaying again) | sampled sessions relay again (first - last) | "
            "`upgraded` (old) | old process exited | `ready` (new) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        p, m = phases[n], med[n]
        out.append(f"| {n:,} | {fmt_ms(p['starting'])} | {fmt_ms(p['hello'])} | "
                   f"{fmt_ms(p['taking_over'])} | {fmt_ms(p['took_over'])} | "
                   f"{fmt_ms(m['resume_first_ms'])} - {fmt_ms(m['resume_ms'])} | "
                   f"{fmt_ms(p['upgraded'])} | {fmt_ms(p['old_exit'])} | "
                   f"{fmt_ms(p['ready'])} |")
    out.append("")
    if sizes:
        big, small = max(sizes), min(sizes)
        m, p = med[big], phases[big]
        ok = all(r["ready_ms"] < 1000 and r.get("resume_ms") is not None
                 and r["resume_ms"] < 1000 for r in b.rounds[big])
        if big < 9800:
            verdict = f"not judged** (the most sessions here: {big:,}); at {big:,}:"
        else:
            verdict = (f"{'met' if ok else 'missed'}** at {big:,} sessions"
                       + (" (the most this fd limit holds)" if big < 10000 else "")
                       + (", in every round, by each measure:" if ok else ":"))
        text = (f"**Target (the issue's aim: under 1 s with 10,000 idle sessions): "
                f"{verdict} {fmt_ms(m['took_over_ms'])} ms by lifeline's `duration_ms` "
                f"(/metrics' `lifeline_upgrade_duration_seconds` says the same), "
                f"{fmt_ms(m['resume_ms'])} ms until the sessions relay again, "
                f"{fmt_ms(m['ready_ms'])} ms until `ready`.")
        if small != big:
            per = 1000 * (m["took_over_ms"] - med[small]["took_over_ms"]) / (big - small)
            text += (f" The time grows with the sessions, about {per:.0f} us each by "
                     f"`duration_ms`.")
        out += [text, ""]
        loads = ", ".join(f"{r['loadavg']:.1f}" for n in b.args.sessions for r in b.rounds[n])
        out += [
            "`duration_ms` runs from SIGUSR2 until the new process's workers relay every "
            "adopted session and accept again (`took over`); the sampled sessions relayed "
            f"{fmt_ms(m['resume_ms'] and m['resume_ms'] - p['took_over'])} ms after that "
            "line, as the driver saw it. `ready` also waits for the old process to exit, "
            f"{fmt_ms(p['old_exit'] - p['upgraded'])} ms after `upgraded` (closing its "
            f"copies). At {big:,} sessions the old process used "
            f"{fmt_ms(m['old_cpu_ms'])} ms of CPU from SIGUSR2 to its exit and the new one "
            f"{fmt_ms(m['new_cpu_ms'])} ms up to `ready`, on {os.cpu_count()} cores shared "
            f"with the load tools and other jobs (1-minute load average before each "
            f"SIGUSR2: {loads}).", ""]
        early = sum(1 for r in b.rounds[big] if r["fresh_echo_ms"] < r["phases"]["hello"])
        out += [
            "New connections wait rather than fail: the old process stops accepting at the "
            "freeze and the listening sockets queue them until the new workers run. The "
            f"connection opened right after SIGUSR2 got its echo before the freeze in {early} "
            f"of {len(b.rounds[big])} rounds at {big:,} (the old process still took it, and it "
            f"moved with the rest), so it does not show that gap; the connections opened every "
            f"{PROBE_MS} ms do, up to {fmt_ms(m['probe_max_ms'])} ms. More connections in the "
            "gap than the listen backlog holds would see SYNs dropped and retried; not "
            "measured.", ""]
    out.append(
        "No HAProxy figures: HAProxy has no equivalent. Its reload (`-sf`, or the master "
        "process's reload with `expose-fd listeners`) passes only the listening sockets to the "
        "new process; the old one keeps its established sessions and drains them (until they "
        "end, or `hard-stop-after`). No session moves, so there is no hand-over time to "
        "compare.")
    out += ["", "Machine:", ""] + machine(b.lifeline) + ["", "Command:", "", "```",
                                                         shlex.join(["python3", "bench/upgrade.py"]
                                                                    + b.argv_shown),
                                                         "```", ""]
    if b.problems:
        out += ["Problems:", ""] + [f"- {p}" for p in b.problems] + [""]
    return "\n".join(out)


def machine(binary):
    """The lines of RESULTS.md's Machine and Versions sections that matter here."""
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    return bench.machine_lines() + [
        f"- lifeline: {bench.first_line([binary, '--version']) or 'unknown'}, "
        f"source HEAD {rev} (uncommitted changes, if any, are not shown), build type "
        f"{build_type(binary)}",
    ]


def build_type(binary):
    """CMAKE_BUILD_TYPE beside the binary; empty there means CMakeLists.txt's default."""
    t = bench.cmake_build_type(binary)
    if t:
        return t
    if os.path.exists(os.path.join(os.path.dirname(binary), "CMakeCache.txt")):
        return "RelWithDebInfo (CMakeLists.txt's default)"
    return "unknown"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", default="10000,1000",
                    help="idle session counts, comma-separated (default 10000,1000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per count (default 3)")
    ap.add_argument("--results", default=os.environ.get("BENCH_RESULTS")
                    or os.path.join(HERE, "RESULTS.md"),
                    help="report path (default bench/RESULTS.md, or $BENCH_RESULTS)")
    ap.add_argument("--lifeline", default=lifeline_bin(),
                    help="lifeline binary (default build/lifeline, or $LIFELINE_BIN)")
    ap.add_argument("--no-write", action="store_true", help="print the section, write nothing")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    args.sessions = [int(x) for x in args.sessions.split(",") if x.strip()]
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, bench._on_sigterm)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    t0 = time.monotonic()
    b = UpgradeBench(args)
    b.argv_shown = [a for a in argv if a not in ("--no-write", "--keep")]
    try:
        b.run()
    except BenchError as e:
        log(f"upgrade bench: {e}")
        return 1
    except KeyboardInterrupt:
        log("upgrade bench: interrupted")
        return 130
    finally:
        b.close()
    text = render(b, started, time.monotonic() - t0)
    if args.no_write:
        print(text)
    else:
        bench.write_section(args.results, SECTION, text)
        log(f"wrote the section {SECTION[3:]!r} of {args.results}")
    return 0 if all(b.rounds.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
