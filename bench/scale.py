#!/usr/bin/env python3
"""Scaling figures for bench/PROFILE.md: lifeline's memory and connection rate against the
number of sessions and of workers.

What it does, on 127.0.0.1 only:

  peer        load echo (bench/load.c, built into a temp dir), started once
  lifeline    the shipped config/lifeline.json (log level info, the built-in client defaults:
              identity address_port, keepalive; the admin listener) with its first route
              pointed at the echo server, "workers" set per run; a fresh process for every
              measurement

  memory      for each session count N (--sessions) and worker count W (--workers): VmRSS
              once lifeline is ready, then `load idle PORT N` opens N connections through it
              and holds them; VmRSS and the descriptor count again. KiB per session is the
              RSS growth over N.
  conn rate   for each W, and straight to the echo server ("direct"): 8 `load connrate PORT
              SECS` loops at once, their rates summed; lifeline's CPU time (utime + stime)
              over the loops, per connection. --rounds rounds, interleaved over the rows;
              the figures are the medians.

It prints a markdown section (the machine, the commands, the tables, what could not be
measured) to stdout, and puts it in bench/RESULTS.md (or --results) in place of its section
"Scaling with sessions and workers", or at the end. Python 3 standard library only.

    python3 bench/scale.py [--sessions 1000,10000,25000] [--workers 1,2] [--seconds 3]
                           [--rounds 3] [--lifeline BIN] [--results PATH] [--keep]
"""

import argparse
import copy
import datetime
import json
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))

# Shared with the test suites: tests/lib/lifeline_testlib.py.
from lifeline_testlib import (conntrack, conntrack_wait_room, detect_sanitizer,  # noqa: E402
                              lifeline_bin, proc_cpu_seconds, proc_status_value)
# The driver's process, port and /proc helpers: one copy, in bench/run.py.
from run import (Bench, BenchError, Procs, _on_sigterm, build_load, fd_count,  # noqa: E402
                 first_line, log, pick_ports, rss_kib, shipped_config, wait_listening)
from run import machine_lines as run_machine_lines  # noqa: E402
from run import source_lines, write_section  # noqa: E402
LOOPBACK = "127.0.0.1"

SECTION = "## Scaling with sessions and workers"

# Connection loops run at once, as bench/run.py's connrate-8.
PAR_LOOPS = 8

# Descriptors lifeline needs besides two per session (its reserve: what is open at start,
# the admin endpoint's 17, the resolver's 8, a margin of 16, about 60 in all; see README
# "Exhaustion"), with room to spare; and what load and the echo server need besides one per
# connection.
LIFELINE_FD_SPARE = 200
PEER_FD_SPARE = 100
CAP_SYS_RESOURCE = 24


def http_get(port, path, timeout=5.0):
    """(status, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (OSError, urllib.error.URLError):
        return None, ""


def metric(text, name):
    """The sum of every sample of one metric in a Prometheus text exposition, or None."""
    vals = [float(m.group(1)) for m in
            re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M)]
    return sum(vals) if vals else None


def proc_user_seconds(pid):
    """utime of a process (all its threads): proc_cpu_seconds() less the kernel's share."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK")


def read_sysctl(path):
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return None


def ephemeral_range():
    """(low, high) of net.ipv4.ip_local_port_range, or None."""
    v = read_sysctl("/proc/sys/net/ipv4/ip_local_port_range")
    try:
        return int(v[0]), int(v[1])
    except (TypeError, ValueError, IndexError):
        return None


def has_cap(bit):
    """Whether this process has capability `bit` in its effective set (None: unknown)."""
    v = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    v = int(line.split()[1], 16)
    except (OSError, ValueError):
        return None
    return None if v is None else bool(v >> bit & 1)


def set_nofile(want):
    """RLIMIT_NOFILE soft = hard = max(want, what is in force), for the driver and every
    child it starts. Raising the hard limit needs CAP_SYS_RESOURCE (and stays within
    fs.nr_open); without it, the hard limit. Returns (the limit in force, why it is less
    than `want`, or None)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, want)
    nr_open = read_sysctl("/proc/sys/fs/nr_open")
    ceiling = int(nr_open[0]) if nr_open else want
    target = max(min(want, ceiling), soft, hard)
    why = None
    for lim in (target, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (lim, lim))
            break
        except (ValueError, OSError) as e:
            if why is None:
                why = (f"raising the hard limit from {hard:,} to {target:,} failed ({e})"
                       + ("; this process lacks CAP_SYS_RESOURCE"
                          if has_cap(CAP_SYS_RESOURCE) is False else ""))
    got = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if got < want and why is None:
        why = f"fs.nr_open is {ceiling:,}"
    return got, why if got < want else None


def build_flags(binary):
    """The C flags the binary was built with, from CMake's files beside it, if there."""
    try:
        with open(os.path.join(os.path.dirname(binary), "CMakeFiles", "lifeline.dir",
                               "flags.make")) as f:
            for line in f:
                if line.startswith("C_FLAGS"):
                    flags = line.split("=", 1)[1].split()
                    keep = [x for x in flags if x.startswith(("-O", "-g", "-fsan", "-DNDEBUG"))]
                    return " ".join(keep) or None
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------
# the measurements


class Scale:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="lifeline-scale-")
        self.procs = Procs(self.tmp)
        self.lifeline = os.path.abspath(args.lifeline)
        self.commands = []       # every distinct command line, in the order first run
        self.config_text = None  # one generated lifeline config, for the report
        self.notes = []          # what could not be measured, and why
        self.load = None
        self.echo_port = None
        self.nofile = None
        self.nofile_why = None   # why RLIMIT_NOFILE is less than the largest N needs
        self.sizes = list(args.sessions)   # the session counts measured
        self.fit = None          # the count added because the fd limit is too low for some
        self.memory = {}         # (n, w) -> dict of figures, or a str saying why not
        self.rates = {}          # "direct" or w -> list of per-round dicts
        self.rate_fail = {}      # "direct" or w -> why it failed (last time)
        self.route_port = None   # lifeline's ports: the same for every run, so that the
        self.admin_port = None   # clients' connections reuse connection-table entries
        self.ct_wait = 0.0       # seconds spent waiting for the connection table to drain

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)
        log(f"scale: {text}")

    def record(self, argv, suffix=""):
        cmd = shlex.join(argv) + suffix
        if cmd not in self.commands:
            self.commands.append(cmd)

    # -- set-up

    def build_load(self):
        self.load = build_load(self.tmp, self.record)

    def start_echo(self):
        self.echo_port, = pick_ports(1)
        argv = [self.load, "echo", str(self.echo_port)]
        self.record(argv)
        p = self.procs.start("echo", argv)
        wait_listening(self.procs, p, [self.echo_port])
        self.echo = p

    def lifeline_config(self, workers, port, admin_port):
        """The shipped config/lifeline.json, every top-level setting kept, with `workers`,
        the admin listener on a free loopback port, and its first route (only) listening
        on `port` and pointed at the echo server. No client block: the built-in defaults."""
        cfg = shipped_config(workers, admin_port)
        route = copy.deepcopy(cfg["routes"][0])
        route.pop("client", None)
        route["listen"] = f"{LOOPBACK}:{port}"
        route["upstream"]["servers"] = [f"{LOOPBACK}:{self.echo_port}"]
        cfg["routes"] = [route]
        text = json.dumps(cfg, indent=2) + "\n"
        if self.config_text is None:
            self.config_text = text
        path = os.path.join(self.tmp, f"lifeline-w{workers}.json")
        with open(path, "w") as f:
            f.write(text)
        return path

    def check_config(self):
        path = self.lifeline_config(self.args.workers[0], self.route_port, self.admin_port)
        argv = [self.lifeline, "--check", "-c", path]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            raise BenchError(f"{shlex.join(argv)} failed:\n{r.stdout}{r.stderr}")

    def start_lifeline(self, workers, name):
        """A lifeline with `workers` workers, ready (/readyz 200: every listener bound, every
        worker running). Returns (process, route port, admin port)."""
        port, admin = self.route_port, self.admin_port
        argv = [self.lifeline, "-c", self.lifeline_config(workers, port, admin)]
        self.record([a.replace(f"-w{workers}.json", "-wW.json") for a in argv],
                    "  # W = " + ", ".join(map(str, self.args.workers)))
        try:
            os.unlink(self.procs.log_path(name))
        except FileNotFoundError:
            pass
        p = self.procs.start(name, argv)
        wait_listening(self.procs, p, [port, admin])
        deadline = time.monotonic() + 15
        while http_get(admin, "/readyz", timeout=2)[0] != 200:
            if p.poll() is not None or time.monotonic() > deadline:
                self.procs.stop(p)
                raise BenchError(f"{name} not ready (exit code {p.returncode}): "
                                 f"{self.procs.log_tail(name)}")
            time.sleep(0.05)
        return p, port, admin

    def stop_lifeline(self, p):
        self.procs.stop(p)
        if not self.args.keep:   # one info line per closed session: do not pile them up
            try:
                os.unlink(self.procs.log_path(p.bench_name))
            except FileNotFoundError:
                pass

    def conntrack_room(self, need, what):
        """Waits until netfilter's connection table has room for `need` more entries."""
        self.ct_wait += conntrack_wait_room(
            need, lambda ct: log(f"scale: {what}: connection table holds {ct[0]:,} of "
                                 f"{ct[1]:,} entries; waiting for it to drain"))

    def conntrack_drops(self, before, what, effect="left out of the medians"):
        """Packets netfilter dropped for want of room since `before` (a conntrack() value);
        noted when there were any."""
        after = conntrack()
        if before is None or after is None or after[2] <= before[2]:
            return 0
        d = after[2] - before[2]
        self.note(f"{what}: netfilter's connection table was full ({after[1]:,} entries) and "
                  f"dropped {d:,} packets (SYNs, retried after 1 s, 3 s, ...): {effect}")
        return d

    # -- memory

    read_line = staticmethod(Bench.read_line)

    def memory_one(self, n, w):
        self.conntrack_room(2 * n + 1000, f"{n:,} sessions, workers {w}")
        ct0 = conntrack()
        proxy, port, admin = self.start_lifeline(w, f"lifeline-mem-{n}-w{w}")
        idle = None
        try:
            time.sleep(0.5)
            rss0, fds0 = rss_kib(proxy.pid), fd_count(proxy.pid)
            argv = [self.load, "idle", str(port), str(n)]
            self.record([self.load, "idle", "PORT", str(n)])
            idle = self.procs.start(f"idle-{n}-w{w}", argv, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE)
            t0 = time.monotonic()
            line = self.read_line(idle, timeout=120 + n / 100)
            took = time.monotonic() - t0
            m = re.match(r"established=(\d+) failed=(\d+)", line)
            if not m:
                raise BenchError(f"load idle: unexpected output {line!r}")
            got = int(m.group(1))
            if got == 0:
                raise BenchError(f"no connection established: "
                                 f"{self.procs.log_tail(idle.bench_name, 1)}")
            time.sleep(1.0)
            rss1, fds1 = rss_kib(proxy.pid), fd_count(proxy.pid)
            hwm = proc_status_value(proxy.pid, "VmHWM")
            _, text = http_get(admin, "/metrics")
            active = metric(text, "lifeline_sessions_active")
            fd_max = metric(text, "lifeline_session_descriptors_max")
            if got < n:
                self.note(f"{n:,} sessions, workers {w}: only {got:,} established "
                          f"({self.procs.log_tail(idle.bench_name, 1)}); KiB per session "
                          "is over those")
            idle.stdin.write(b"\n")
            idle.stdin.flush()
            self.read_line(idle, timeout=60)
        finally:
            if idle is not None:
                self.procs.stop(idle)
            self.stop_lifeline(proxy)
        drops = self.conntrack_drops(ct0, f"memory, {n:,} sessions, workers {w}",
                                     "the connections took longer to open; RSS is unaffected")
        return dict(n=n, w=w, got=got, rss0=rss0, rss1=rss1, hwm=hwm, fds0=fds0, fds1=fds1,
                    active=active, fd_max=fd_max, secs=took, drops=drops,
                    kib=(rss1 - rss0) / got)

    def run_memory(self):
        rng = ephemeral_range()
        room = rng[1] - rng[0] + 1 if rng else None
        for n in self.sizes:
            # Every connection from load to lifeline, and from lifeline to the echo server,
            # takes an ephemeral port (one 127.0.0.1 source, one destination each).
            if room is not None and n > room:
                why = (f"the ephemeral port range {rng[0]}-{rng[1]} holds {room:,} ports: "
                       f"{n:,} connections from one address to one port do not fit")
                self.note(f"{n:,} sessions not measured: {why}")
                for w in self.args.workers:
                    self.memory[(n, w)] = "n/a (ephemeral ports)"
                continue
            if self.nofile < 2 * n + LIFELINE_FD_SPARE:
                self.note(f"{n:,} sessions not measured: lifeline needs about "
                          f"{2 * n + LIFELINE_FD_SPARE:,} descriptors (two per session), "
                          f"RLIMIT_NOFILE is {self.nofile:,}: {self.nofile_why}"
                          + (f"; measured at {self.fit:,} sessions instead, the most that fit"
                             if self.fit else ""))
                for w in self.args.workers:
                    self.memory[(n, w)] = "n/a (fd limit)"
                continue
            for w in self.args.workers:
                try:
                    r = self.memory_one(n, w)
                except BenchError as e:
                    self.note(f"memory, {n:,} sessions, workers {w}: {e}")
                    self.memory[(n, w)] = "n/a (failed)"
                    continue
                self.memory[(n, w)] = r
                log(f"[memory] {n:>6} sessions, workers {w}: {r['got']:,} established in "
                    f"{r['secs']:.1f} s, RSS {r['rss0']:,} -> {r['rss1']:,} KiB "
                    f"({r['kib']:.3f} KiB/session), fds {r['fds0']:,} -> {r['fds1']:,}")
                time.sleep(0.5)

    # -- connection rate

    def connrate(self, port, proxy):
        """PAR_LOOPS loops at once: (summed rate, connections, errors, proxy CPU seconds,
        of which user seconds, wall seconds)."""
        secs = self.args.seconds
        argv = [self.load, "connrate", str(port), str(secs)]
        self.record([self.load, "connrate", "PORT", str(secs)], f"  # {PAR_LOOPS} at once")
        c0, u0 = (proc_cpu_seconds(proxy.pid), proc_user_seconds(proxy.pid)) if proxy \
            else (0.0, 0.0)
        w0 = time.monotonic()
        loops = [self.procs.start("connrate", argv, stdout=subprocess.PIPE)
                 for _ in range(PAR_LOOPS)]
        deadline = time.monotonic() + secs + 60
        outs = []
        try:
            for p in loops:
                try:
                    out, _ = p.communicate(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise BenchError(f"load connrate did not finish within {secs + 60} s") \
                        from None
                outs.append((p.returncode, out.decode(errors="replace")))
            cpu = proc_cpu_seconds(proxy.pid) - c0 if proxy else None
            user = proc_user_seconds(proxy.pid) - u0 if proxy else None
            wall = time.monotonic() - w0
        finally:
            for p in loops:
                self.procs.stop(p)
        rate, conns, errors = 0.0, 0, 0
        for rc, out in outs:
            m = re.search(r"conns=(\d+) errors=(\d+) .*rate=(\d+)", out)
            if rc != 0 or not m:
                raise BenchError(f"load connrate exited with code {rc}: "
                                 f"{self.procs.log_tail('connrate', 1) or out.strip()}")
            conns, errors, rate = conns + int(m.group(1)), errors + int(m.group(2)), \
                rate + float(m.group(3))
        return rate, conns, errors, cpu, user, wall

    def rate_one(self, row):
        """One connection-rate run. The connection table needs an entry per connection (two
        through lifeline), but with the same ports every time at most one per ephemeral
        port and destination."""
        rng = ephemeral_range()
        room = rng[1] - rng[0] + 1 if rng else 28232
        self.conntrack_room(room if row == "direct" else 2 * room, "connection rate")
        if row == "direct":
            rate, conns, errors, _, _, _ = self.connrate(self.echo_port, None)
            return dict(rate=rate, conns=conns, errors=errors)
        proxy, port, _ = self.start_lifeline(row, f"lifeline-rate-w{row}")
        try:
            time.sleep(0.3)
            rate, conns, errors, cpu, user, wall = self.connrate(port, proxy)
            if proxy.poll() is not None:
                raise BenchError(f"lifeline exited with code {proxy.returncode}")
        finally:
            self.stop_lifeline(proxy)
        return dict(rate=rate, conns=conns, errors=errors,
                    cpu_us=1e6 * cpu / conns if conns else None,
                    user_us=1e6 * user / conns if conns else None,
                    cpu_pct=100.0 * cpu / wall)

    def run_rates(self):
        rows = ["direct"] + list(self.args.workers)
        for rnd in range(1, self.args.rounds + 1):
            for row in rows:
                label = "direct" if row == "direct" else f"workers {row}"
                ct0 = conntrack()
                try:
                    r = self.rate_one(row)
                    r["drops"] = self.conntrack_drops(ct0, f"connection rate, {label}, "
                                                           f"round {rnd}")
                except BenchError as e:
                    self.rate_fail[row] = str(e)
                    self.note(f"connection rate, {label}, round {rnd}: {e}")
                    continue
                if r["errors"]:
                    self.note(f"connection rate, {label}, round {rnd}: "
                              f"{r['errors']} failed connections")
                self.rates.setdefault(row, []).append(r)
                log(f"[rate {rnd}/{self.args.rounds}] {label:<10} {r['rate']:,.0f} conn/s"
                    + (f", lifeline {r['cpu_us']:.1f} us CPU/conn, {r['cpu_pct']:.0f}% of a core"
                       if r.get("cpu_us") is not None else ""))
                time.sleep(0.3)

    # -- the run

    def run(self):
        if not os.access(self.lifeline, os.X_OK):
            raise BenchError(f"no lifeline binary at {self.lifeline} (build it, or pass "
                             "--lifeline)")
        n_max = max(self.args.sessions)
        self.nofile, self.nofile_why = set_nofile(max(2 * n_max + LIFELINE_FD_SPARE,
                                                      n_max + PEER_FD_SPARE))
        # Sessions that do not fit the fd limit: measured at the most that do, instead.
        fit = (self.nofile - LIFELINE_FD_SPARE) // 2 // 100 * 100
        if fit >= 100 and fit not in self.sizes and any(n > fit for n in self.sizes):
            self.fit = fit
            self.sizes = sorted(self.sizes + [fit])
        self.build_load()
        self.start_echo()
        self.route_port, self.admin_port = pick_ports(2)
        self.check_config()
        self.run_memory()
        self.run_rates()

    def close(self):
        self.procs.stop_all()
        if self.args.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# the report


def machine_lines(s):
    """bench/run.py's machine lines, and what bounds this run: ports, the connection table,
    the binary."""
    out = run_machine_lines()
    rng = ephemeral_range()
    tw = read_sysctl("/proc/sys/net/ipv4/tcp_tw_reuse")
    if rng:
        out.append(f"- ephemeral ports (net.ipv4.ip_local_port_range): {rng[0]}-{rng[1]} "
                   f"({rng[1] - rng[0] + 1:,})" + (f"; tcp_tw_reuse {tw[0]}" if tw else ""))
    ct = conntrack()
    if ct:
        tw = read_sysctl("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait")
        out.append(f"- netfilter connection tracking (loopback included): {ct[1]:,} entries"
                   + (f", a closed connection's kept {tw[0]} s" if tw else ""))
    version = first_line([s.lifeline, "--version"]) or "unknown"
    flags = build_flags(s.lifeline)
    out.append(f"- lifeline: {version}" + (f", built with {flags}" if flags else ""))
    out += source_lines()
    if detect_sanitizer(s.lifeline):
        out.append("- **lifeline is a sanitizer build: its figures mean nothing**")
    return out


def fmt_int(v):
    return "-" if v is None else f"{v:,.0f}"


def render(s, started, elapsed):
    a = s.args
    workers = a.workers
    parts = [
        SECTION,
        "",
        f"Written by `bench/scale.py` on {started} UTC in {elapsed:.0f} s. lifeline runs the "
        "shipped `config/lifeline.json` (log level info, the built-in client defaults: "
        "identity address_port, TCP keepalive; the admin listener) with one route to the "
        "`load echo` server and `workers` as each row or column says; every measurement "
        "starts a fresh lifeline. All on 127.0.0.1: the clients, lifeline and the echo server "
        f"share the machine's {os.cpu_count()} cores.",
        "",
        "### Machine",
        "",
    ]
    parts += machine_lines(s)

    # memory
    parts += [
        "",
        "### Memory per idle session",
        "",
        "`load idle PORT N` opens N connections through lifeline, one after the other, each "
        "checked with a 1-byte echo, and holds them. KiB per session = (VmRSS with them open, "
        "1 s after the last) - (VmRSS once lifeline was ready), over N; RSS is the total with "
        "them open.",
        "",
    ]
    head = ["sessions"]
    for w in workers:
        head += [f"workers {w}: KiB/session", f"workers {w}: RSS MiB"]
    parts += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for n in s.sizes:
        cells = [f"{n:,}" + (" (the most the fd limit allows)" if n == s.fit else "")]
        for w in workers:
            r = s.memory.get((n, w), "n/a (not run)")
            if isinstance(r, str):
                cells += [r, "-"]
            else:
                cells += [f"{r['kib']:.3f}", f"{r['rss1'] / 1024:.1f}"]
        parts.append("| " + " | ".join(cells) + " |")
    parts += [
        "",
        "Details (RSS in KiB; descriptors from /proc/PID/fd; active and budget from "
        "/metrics: `lifeline_sessions_active`, `lifeline_session_descriptors_max` / 2):",
        "",
        "| sessions | workers | established | active | RSS ready | RSS open | growth | "
        "VmHWM | fds ready | fds open | fds/session | session budget | connect time s |",
        "|---" * 13 + "|",
    ]
    for n in s.sizes:
        for w in workers:
            r = s.memory.get((n, w))
            if not isinstance(r, dict):
                continue
            parts.append(
                f"| {n:,} | {w} | {r['got']:,} | {fmt_int(r['active'])} | {r['rss0']:,} | "
                f"{r['rss1']:,} | {r['rss1'] - r['rss0']:,} | {fmt_int(r['hwm'])} | "
                f"{r['fds0']:,} | {r['fds1']:,} | {(r['fds1'] - r['fds0']) / r['got']:.2f} | "
                f"{fmt_int(r['fd_max'] / 2 if r['fd_max'] is not None else None)} | "
                f"{r['secs']:.1f} |")

    # connection rate
    parts += [
        "",
        "### Connection rate",
        "",
        f"{PAR_LOOPS} `load connrate PORT {a.seconds}` loops at once (connect, 64 bytes each "
        "way, close; their rates summed), through lifeline or straight to the echo server. "
        "CPU is lifeline's utime + stime over the loops, per connection (and the user-space "
        "part of it: the rest is the kernel's, which on loopback includes much of the TCP "
        "work of both ends), and as a share of one core. Medians of "
        f"{a.rounds} round(s), interleaved over the rows; a round marked * lost packets to a "
        "full connection-tracking table and is left out of them.",
        "",
        "| | conn/s | lifeline CPU us/connection | of which user | lifeline CPU, % of a core | "
        "conn/s per round |",
        "|---|---|---|---|---|---|",
    ]
    for row in ["direct"] + list(workers):
        label = "direct (reference)" if row == "direct" else f"lifeline, workers {row}"
        runs = s.rates.get(row, [])
        if not runs:
            why = "n/a (failed)" if row in s.rate_fail else "n/a (not run)"
            parts.append(f"| {label} | {why} | - | - | - | - |")
            continue
        clean = [r for r in runs if not r.get("drops")]
        if not clean:
            parts.append(f"| {label} | n/a (connection table full) | - | - | - | "
                         + ", ".join(f"{r['rate']:,.0f}*" for r in runs) + " |")
            continue
        rate = statistics.median(r["rate"] for r in clean)
        cpu = [r["cpu_us"] for r in clean if r.get("cpu_us") is not None]
        user = [r["user_us"] for r in clean if r.get("user_us") is not None]
        pct = [r["cpu_pct"] for r in clean if r.get("cpu_pct") is not None]
        parts.append(
            f"| {label} | {rate:,.0f} | "
            + (f"{statistics.median(cpu):.1f}" if cpu else "-") + " | "
            + (f"{statistics.median(user):.1f}" if user else "-") + " | "
            + (f"{statistics.median(pct):.0f}" if pct else "-") + " | "
            + ", ".join(f"{r['rate']:,.0f}" + ("*" if r.get("drops") else "") for r in runs)
            + " |")

    # what was not measured
    parts += ["", "### Not measured, and why", ""]
    ncpu = os.cpu_count() or 0
    rng = ephemeral_range()
    limits = [
        f"- More workers than cores ({ncpu}): the clients and the echo server run on the same "
        "cores, so the rate table says how lifeline shares a saturated machine, not how it "
        "would scale on a larger one; with 2 workers lifeline competes with 8 client loops "
        "and the echo server for 2 cores.",
        "- Memory is lifeline's VmRSS only: the kernel's socket memory (two TCP sockets per "
        "session, plus the client's and the echo server's) is not in it.",
    ]
    if rng:
        room = rng[1] - rng[0] + 1
        limits.append(
            f"- More than {room:,} sessions: `load` connects from 127.0.0.1 to one port, and "
            f"lifeline to one echo server, so each side is bounded by the ephemeral port range "
            f"{rng[0]}-{rng[1]} ({room:,}); going past it would need more source addresses "
            "or server ports (load.c has neither) or a wider range (a sysctl this run does not "
            "change).")
    if s.ct_wait >= 1:
        limits.append(f"- The run waited {s.ct_wait:.0f} s in all for netfilter's connection "
                      "table to drain (closed connections stay in it for 120 s, and a full "
                      "table drops SYNs).")
    parts += limits + [f"- {t}" for t in s.notes]

    parts += ["", "### Commands", "", "Paths under the run's temporary directory are shown as "
              "`$TMP`.", "", "```",
              f"python3 bench/scale.py {shlex.join(a.argv)}".rstrip()]
    parts += [c.replace(s.tmp, "$TMP") for c in s.commands]
    parts += ["```", ""]
    if s.config_text:
        parts += ["The generated lifeline configuration (ports differ per run; `workers` as "
                  "the tables say):", "", "```json",
                  s.config_text.replace(s.tmp, "$TMP").rstrip(), "```", ""]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------


def int_list(text):
    try:
        got = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not got or min(got) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return got


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int_list, default=[1000, 10000, 25000],
                    help="idle session counts (default 1000,10000,25000)")
    ap.add_argument("--workers", type=int_list, default=[1, 2],
                    help="worker counts (default 1,2)")
    ap.add_argument("--seconds", type=int, default=3,
                    help="seconds of each connection-rate run (default 3)")
    ap.add_argument("--rounds", type=int, default=3, help="connection-rate rounds (default 3)")
    ap.add_argument("--lifeline", default=lifeline_bin(),
                    help="lifeline binary (default build/lifeline, or $LIFELINE_BIN)")
    ap.add_argument("--results", default=os.environ.get("BENCH_RESULTS")
                    or os.path.join(HERE, "RESULTS.md"),
                    help="report whose section is replaced (default bench/RESULTS.md, or "
                    "$BENCH_RESULTS)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.seconds < 1 or args.rounds < 1:
        ap.error("--seconds and --rounds must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Also when started with SIGINT ignored (a background job of a non-interactive shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    t0 = time.monotonic()
    s = Scale(args)
    try:
        s.run()
    except BenchError as e:
        log(f"scale: {e}")
        return 1
    except KeyboardInterrupt:
        log("scale: interrupted")
        return 130
    finally:
        s.close()
    text = render(s, started, time.monotonic() - t0)
    sys.stdout.write(text)
    sys.stdout.flush()
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    write_section(args.results, SECTION, text)
    log(f"wrote its section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
