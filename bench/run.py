#!/usr/bin/env python3
"""Benchmark driver: lifeline against a direct connection and HAProxy, in one run.

What it does, on 127.0.0.1 only:

  peers (started once, each with its own generated config in a temp dir):
      load echo      the 64-byte ping-pong / connection-rate / idle-connection server (load.c)
      iperf3 -s      bulk throughput
      redis-server   redis-benchmark SET/GET (no persistence)
      nginx          wrk against a small static file

  targets (a client reaches each peer through one of these):
      direct          straight to the peer
      haproxy         HAProxy, mode tcp, nbthread 2
      haproxy-splice  the same with forced splice (option splice-request/splice-response)
      lifeline        the shipped config/lifeline.json (log level info, the built-in client
                      defaults, the admin listener) with workers 2 and one route per peer:
                      what users run, and what the performance targets are judged on
      lifeline-lean   the same with log level warn and client identity "none"

  rounds are interleaved (round 1: direct, haproxy, haproxy-splice, lifeline, lifeline-lean;
  round 2: ...), each proxy is started for its turn and stopped after it, and the figures are
  the medians over the rounds. It writes a markdown report (bench/RESULTS.md unless --results
  or $BENCH_RESULTS says otherwise) with the machine, the versions and every command it ran.

A tool that is missing (wrk, nginx, ...) turns its rows into "n/a (wrk not installed)";
the run itself goes on. --targets and --only run a subset, for quick iteration; what they
leave out reads "n/a (not run)". Python 3 standard library only.

    python3 bench/run.py [--quick] [--rounds N] [--results PATH] [--lifeline BIN] [--keep]
                         [--targets direct,haproxy,...] [--only connrate,connrate-8,...]
"""

import argparse
import copy
import datetime
import json
import os
import platform
import random
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))

# Shared with the test suites: tests/lib/lifeline_testlib.py.
from lifeline_testlib import (conntrack, conntrack_wait_room, detect_sanitizer,  # noqa: E402
                              die_with_parent, lifeline_bin, proc_cpu_seconds,
                              proc_status_value)
LOOPBACK = "127.0.0.1"

# Where a client goes: straight to the peer, or through one of the proxies.
TARGETS = ["direct", "haproxy", "haproxy-splice", "lifeline", "lifeline-lean"]
PROXIES = TARGETS[1:]
LIFELINES = TARGETS[3:]
PEERS = ("echo", "iperf", "redis", "http")
# How the report's first line names each target.
TARGET_NAMES = {"direct": "direct", "haproxy": "HAProxy",
                "haproxy-splice": "HAProxy with forced splice",
                "lifeline": "lifeline with its shipped defaults", "lifeline-lean": "lifeline lean"}
# How the report names a target a ratio is taken against.
BASE_NAMES = {"direct": "direct", "haproxy": "HAProxy", "haproxy-splice": "splice"}

# Every figure, in report order: id (as the "All figures" table names it), unit, format.
METRICS = [
    ("bulk_up", "Gbit/s", "{:.1f}"),           # iperf3, one stream, client -> server
    ("bulk_down", "Gbit/s", "{:.1f}"),         # iperf3 -R, server -> client
    ("bulk_cpu", "%", "{:.0f}"),               # proxy CPU during both, % of one core
    ("cpu_per_gb", "ms/GB", "{:.0f}"),         # proxy CPU per GB relayed
    ("rtt_p50", "us", "{:.0f}"),               # 64-byte ping-pong over one connection
    ("rtt_p99", "us", "{:.0f}"),
    ("connrate", "conn/s", "{:,.0f}"),         # connect, send, receive, close loop
    ("conn_cpu_us", "us", "{:.0f}"),           # proxy CPU per connection of that loop
    ("connrate_par", "conn/s", "{:,.0f}"),     # PAR_LOOPS of those loops at once, summed
    ("conn_par_cpu_us", "us", "{:.0f}"),       # proxy CPU per connection of those
    ("idle_established", "conns", "{:,.0f}"),  # idle connections held at once
    ("idle_kib", "KiB", "{:.2f}"),             # proxy RSS growth per idle connection
    ("idle_kept_pct", "%", "{:.0f}"),          # share of that growth held 1 s after close
    ("redis_set", "req/s", "{:,.0f}"),         # redis-benchmark -c 50
    ("redis_get", "req/s", "{:,.0f}"),
    ("wrk", "req/s", "{:,.0f}"),               # wrk -t2 -c50 against nginx
]
METRIC = {m[0]: m for m in METRICS}
PROXY_ONLY = {"bulk_cpu", "cpu_per_gb", "conn_cpu_us", "conn_par_cpu_us", "idle_established",
              "idle_kib", "idle_kept_pct"}

# Connection loops run at once for connrate_par: enough to keep both proxy workers (and
# HAProxy's two threads) busy, where the one-at-a-time loop leaves one of them idle.
PAR_LOOPS = 8

# The target: 9,900 concurrent sessions within an fd limit of 20,000.
FD_LIMIT = 20000

# Why a proxy may hold fewer idle connections than asked for, under the same fd limit.
IDLE_HINTS = {
    "haproxy-splice": ": HAProxy sizes maxconn from RLIMIT_NOFILE, and with splice it keeps "
                      "descriptors back for its pipes (maxpipes = maxconn / 4)",
}

# --quick is a smoke run that tests/integration/test_bench.py waits 110 s for: with five
# targets, that needs one-second runs and fewer idle connections.
QUICK = dict(rounds=1, bulk_s=1, pingpong=5000, connrate_s=1, idle=4000, redis_n=20000, wrk_s=1)
FULL = dict(rounds=3, bulk_s=4, pingpong=20000, connrate_s=3, idle=9900, redis_n=50000, wrk_s=4)

INDEX_HTML = ("<!DOCTYPE html>\n<html><head><title>lifeline bench</title></head>\n<body>\n"
              + "<p>A small static page for wrk.</p>\n" * 12 + "</body></html>\n")



def machine_lines():
    """The machine, as RESULTS.md describes it (bench/upgrade.py too)."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            mem = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return [
        f"- cores (nproc): {os.cpu_count()}",
        f"- CPU: {model}",
        f"- memory: {mem}",
        f"- kernel (uname -r): {platform.release()}",
        f"- RLIMIT_NOFILE of every process in the run: soft {soft}, hard {hard}",
    ]

class BenchError(Exception):
    """A workload that could not produce its figure; the message goes into the report."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------
# processes, ports, /proc


class Procs:
    """Every long-running process the driver starts, each in its own process group, so that
    stop() and stop_all() also reach the children it may fork."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.running = []

    def start(self, name, argv, stdin=subprocess.DEVNULL, stdout=None):
        logf = open(os.path.join(self.tmp, f"{name}.log"), "ab")
        try:
            p = subprocess.Popen(argv, stdin=stdin,
                                 stdout=stdout if stdout is not None else logf,
                                 stderr=logf, start_new_session=True,
                                 preexec_fn=die_with_parent)
        finally:
            logf.close()
        p.bench_name = name
        self.running.append(p)
        return p

    def stop(self, p, timeout=10.0):
        if p not in self.running:
            return
        self.running.remove(p)
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        for stream in (p.stdin, p.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def stop_all(self):
        for p in list(reversed(self.running)):
            self.stop(p, timeout=5.0)

    def log_path(self, name):
        return os.path.join(self.tmp, f"{name}.log")

    def log_tail(self, name, n=8):
        try:
            with open(self.log_path(name), errors="replace") as f:
                return "".join(f.readlines()[-n:]).strip()
        except OSError:
            return ""


def _proc_net_tcp():
    """(local port, state, local address hex) of every IPv4 TCP socket."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            addr, port = fields[1].split(":")
            yield int(port, 16), fields[3], addr


def listening_ports():
    return {port for port, state, addr in _proc_net_tcp()
            if state == "0A" and addr in ("0100007F", "00000000")}


def pick_ports(n):
    """n ports below the ephemeral range that nothing uses and that bind on 127.0.0.1."""
    used = {port for port, _, _ in _proc_net_tcp()}
    ports = []
    start = random.randrange(20000, 30000)
    for port in list(range(start, 32000)) + list(range(20000, start)):
        if port in used:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise BenchError(f"no {n} free ports in 20000-31999 on {LOOPBACK}")


def wait_listening(procs, p, ports, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not set(ports) <= listening_ports():
        if p.poll() is not None:
            raise BenchError(f"{p.bench_name} exited with code {p.returncode}: "
                             f"{procs.log_tail(p.bench_name)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{p.bench_name} is not listening on {ports} after {timeout:.0f} s: "
                             f"{procs.log_tail(p.bench_name)}")
        time.sleep(0.05)


def rss_kib(pid):
    rss = proc_status_value(pid, "VmRSS")
    if rss is None:
        raise BenchError(f"no VmRSS for pid {pid}")
    return rss


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def set_nofile(limit):
    """RLIMIT_NOFILE = limit, soft and hard, for the driver and every child it starts, so that
    every proxy works within the same fd limit on any machine (lifeline raises its soft limit
    to the hard one; HAProxy sizes its maxconn from it). Without the privilege to raise it
    that far, the hard limit. Returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (limit, min(limit, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            continue
    return soft


def first_line(argv, stream="stdout"):
    """The first non-empty line a version command prints, or None if it cannot run."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (r.stdout + "\n" + r.stderr).splitlines():
        if line.strip():
            return line.strip()
    return None


# Sections of RESULTS.md that other scripts write (write_section): a new report keeps them.
OTHER_SECTIONS = ("## Scaling with sessions and workers", "## Live upgrade hand-over",
                  "## Cluster: connection rate")


def kept_sections(path):
    """The other scripts' sections of the report at path, to follow a new report."""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        return ""
    kept = ""
    for heading in OTHER_SECTIONS:
        start = old.find(heading + "\n")
        if start >= 0:
            end = old.find("\n## ", start + len(heading))
            kept += "\n" + (old[start:end + 1] if end >= 0 else old[start:]).rstrip("\n") + "\n"
    return kept


def source_lines():
    """The report's line naming the checkout's commit, if git can say it."""
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        rev = ""
    return [f"- source: HEAD {rev} (uncommitted changes, if any, are not shown)"] if rev else []


def build_load(tmp, record):
    """bench/load.c built into tmp; record(argv) notes the command. Returns its path."""
    cc = os.environ.get("CC", "cc")
    load = os.path.join(tmp, "load")
    argv = [cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
            "-o", load, os.path.join(HERE, "load.c")]
    record(argv)
    try:
        r = subprocess.run(argv, capture_output=True, text=True)
    except OSError as e:
        raise BenchError(f"cannot build load.c with {cc}: {e}") from None
    if r.returncode != 0:
        raise BenchError(f"building load.c failed:\n{r.stderr}")
    return load


def shipped_config(workers, admin_port):
    """config/lifeline.json as shipped, every setting kept, with `workers` and the admin
    listener on a loopback port: what users run, for the caller to point its routes."""
    with open(os.path.join(REPO, "config", "lifeline.json")) as f:
        cfg = json.load(f)
    cfg["workers"] = workers
    cfg["admin"] = dict(cfg.get("admin", {}), listen=f"{LOOPBACK}:{admin_port}")
    return cfg


def write_section(path, heading, text):
    """Puts `text` (which starts with `heading`, a "## " line) into the report at path: in
    place of the section with that heading, or at the end. The other sections stay as they
    are (bench/upgrade.py, bench/cluster.py and bench/scale.py each keep one)."""
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    start = old.find(heading + "\n")
    if start >= 0:
        end = old.find("\n## ", start + len(heading))
        new = old[:start] + text + (old[end + 1:] if end >= 0 else "")
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text
    with open(path, "w") as f:
        f.write(new)


def cmake_build_type(binary):
    """CMAKE_BUILD_TYPE from the CMakeCache.txt beside the binary, if there is one."""
    try:
        with open(os.path.join(os.path.dirname(binary), "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith("CMAKE_BUILD_TYPE:"):
                    return line.split("=", 1)[1].strip() or None
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------
# the benchmark


class Bench:
    def __init__(self, args, settings):
        self.args = args
        self.s = settings
        self.tmp = tempfile.mkdtemp(prefix="lifeline-bench-")
        self.procs = Procs(self.tmp)
        self.lifeline = os.path.abspath(args.lifeline)
        self.commands = []          # every distinct command line, in the order first run
        self.configs = {}           # file name -> generated text
        self.problems = {}          # what went wrong -> the rounds it went wrong in
        self.round = 0
        self.targets = args.targets or TARGETS
        self.workloads = args.only or [w[0] for w in self.WORKLOADS]
        self.values = {t: {m[0]: [] for m in METRICS} for t in TARGETS}
        self.na = {t: {} for t in TARGETS}   # target -> metric -> "n/a (why)"
        for t in TARGETS:
            for name, _, metrics, _, _ in self.WORKLOADS:
                if t not in self.targets or name not in self.workloads:
                    self.na[t].update(dict.fromkeys(metrics, "n/a (not run)"))
        self.tools = {}
        self.peer_ports = {}
        self.proxy_ports = {}
        self.admin_ports = {}
        self.load = None
        self.ct_waited = 0.0        # seconds spent waiting for the connection table

    # -- set-up

    def problem(self, text):
        """Notes what went wrong, once, with every round it happened in."""
        rounds = self.problems.setdefault(text, [])
        if self.round and self.round not in rounds:
            rounds.append(self.round)

    def record(self, argv, note=""):
        cmd = shlex.join(argv) + note
        if cmd not in self.commands:
            self.commands.append(cmd)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        self.configs[name] = text
        return path

    def find_tools(self):
        # nginx and haproxy live in /usr/sbin, which a normal user's PATH may lack.
        path = os.environ.get("PATH", "").split(os.pathsep)
        os.environ["PATH"] = os.pathsep.join(path + [d for d in ("/usr/sbin", "/sbin")
                                                     if d not in path])
        for tool in ("iperf3", "redis-server", "redis-benchmark", "nginx", "wrk", "haproxy"):
            self.tools[tool] = shutil.which(tool)
        if not os.access(self.lifeline, os.X_OK):
            raise BenchError(f"no lifeline binary at {self.lifeline} "
                             "(build it, or pass --lifeline)")

    def missing(self, *tools):
        """'n/a (wrk not installed)' if one of the tools is missing, else None."""
        for tool in tools:
            if not self.tools.get(tool):
                return f"n/a ({tool} not installed)"
        return None

    def build_load(self):
        self.load = build_load(self.tmp, self.record)

    def start_peers(self):
        n = len(PEERS)
        ports = pick_ports(n * (1 + len(PROXIES)) + len(LIFELINES))
        self.peer_ports = dict(zip(PEERS, ports[:n]))
        for i, target in enumerate(PROXIES, 1):
            self.proxy_ports[target] = dict(zip(PEERS, ports[n * i:n * (i + 1)]))
        self.admin_ports = dict(zip(LIFELINES, ports[n * (1 + len(PROXIES)):]))
        self.proxy_ports["direct"] = self.peer_ports
        pp = self.peer_ports

        argv = [self.load, "echo", str(pp["echo"])]
        self.record(argv)
        p = self.procs.start("echo", argv)
        wait_listening(self.procs, p, [pp["echo"]])

        if self.tools["iperf3"]:
            argv = ["iperf3", "-s", "-B", LOOPBACK, "-p", str(pp["iperf"])]
            self.record(argv)
            p = self.procs.start("iperf3", argv)
            wait_listening(self.procs, p, [pp["iperf"]])

        if self.tools["redis-server"]:
            argv = ["redis-server", "--bind", LOOPBACK, "--port", str(pp["redis"]),
                    "--save", "", "--appendonly", "no", "--dir", self.tmp,
                    "--daemonize", "no", "--logfile", ""]
            self.record(argv)
            p = self.procs.start("redis-server", argv)
            wait_listening(self.procs, p, [pp["redis"]])

        if self.tools["nginx"]:
            conf = self.nginx_config(pp["http"])
            argv = ["nginx", "-p", self.tmp + "/", "-c", conf,
                    "-e", os.path.join(self.tmp, "nginx-error.log")]
            self.record(argv)
            p = self.procs.start("nginx", argv)
            wait_listening(self.procs, p, [pp["http"]])

    def nginx_config(self, port):
        www = os.path.join(self.tmp, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write(INDEX_HTML)
        t = self.tmp
        # One process, in the foreground, as the current user: no master, no user switch.
        text = f"""daemon off;
master_process off;
worker_processes 1;
pid {t}/nginx.pid;
error_log {t}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {t}/nginx-body;
    proxy_temp_path {t}/nginx-proxy;
    fastcgi_temp_path {t}/nginx-fastcgi;
    uwsgi_temp_path {t}/nginx-uwsgi;
    scgi_temp_path {t}/nginx-scgi;
    server {{
        listen {LOOPBACK}:{port};
        root {www};
        location / {{ index index.html; }}
    }}
}}
"""
        return self.write("nginx.conf", text)

    def haproxy_config(self, target):
        ports = self.proxy_ports[target]
        splice = ("    option splice-request\n    option splice-response\n"
                  if target == "haproxy-splice" else "")
        text = ("global\n    nbthread 2\n\n"
                "defaults\n    mode tcp\n    timeout connect 5s\n"
                "    timeout client 5m\n    timeout server 5m\n" + splice)
        for peer in ("iperf", "echo", "redis", "http"):
            text += (f"\nlisten {peer}\n    bind {LOOPBACK}:{ports[peer]}\n"
                     f"    server {peer} {LOOPBACK}:{self.peer_ports[peer]}\n")
        return self.write(f"{target}.cfg", text)

    def lifeline_config(self, target):
        """What users run: the shipped config/lifeline.json, every setting it has kept, with
        workers 2 (HAProxy's nbthread 2), the admin listener on a free port and, for each
        peer, a copy of its first route pointed at the peer. lifeline-lean also logs at warn
        only and has no client identity, the settings that cost lifeline per session."""
        cfg = shipped_config(2, self.admin_ports[target])
        if target == "lifeline-lean":
            cfg["log"] = dict(cfg.get("log", {}), level="warn")
        ports, routes = self.proxy_ports[target], []
        for peer in PEERS:
            route = copy.deepcopy(cfg["routes"][0])
            route.update(name=peer, listen=f"{LOOPBACK}:{ports[peer]}")
            route["upstream"]["servers"] = [f"{LOOPBACK}:{self.peer_ports[peer]}"]
            if target == "lifeline-lean":
                route["client"] = dict(route.get("client", {}), identity="none")
            routes.append(route)
        cfg["routes"] = routes
        return self.write(f"{target}.json", json.dumps(cfg, indent=2) + "\n")

    def proxy_argv(self, target):
        if target in LIFELINES:
            return [self.lifeline, "-c", self.lifeline_config(target)]
        return ["haproxy", "-db", "-f", self.haproxy_config(target)]

    def check_proxy_configs(self):
        """Lets a config error show once, at the start, rather than as n/a everywhere."""
        for target in self.targets:
            if target == "direct" or (target not in LIFELINES and not self.tools["haproxy"]):
                continue
            argv = self.proxy_argv(target)
            check = argv + ["--check"] if target in LIFELINES else argv[:1] + ["-c"] + argv[2:]
            r = subprocess.run(check, capture_output=True, text=True, timeout=20)
            if r.returncode != 0:
                raise BenchError(f"{shlex.join(check)} failed:\n{r.stdout}{r.stderr}")

    # -- workloads

    def run_tool(self, argv, timeout):
        self.record(argv)
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{argv[0]} did not finish within {timeout:.0f} s") from None
        if r.returncode != 0:
            # iperf3 -J reports its error inside the JSON on stdout.
            m = re.search(r'"error":\s*"([^"]*)"', r.stdout)
            why = [m.group(1)] if m else (r.stderr.strip() or r.stdout.strip()).splitlines()
            raise BenchError(f"{argv[0]} exited with code {r.returncode}"
                             + (f": {why[-1]}" if why else ""))
        return r.stdout

    def iperf(self, port, reverse):
        t = self.s["bulk_s"]
        argv = ["iperf3", "-c", LOOPBACK, "-p", str(port), "-t", str(t), "-J"]
        if reverse:
            argv.append("-R")
        out = self.run_tool(argv, timeout=t + 30)
        try:
            data = json.loads(out)
            got = data["end"]["sum_received"]
            return got["bits_per_second"] / 1e9, got["bytes"]
        except (ValueError, KeyError) as e:
            raise BenchError(f"iperf3: unexpected output ({e})") from None

    def w_bulk(self, target, proxy, ports):
        """One iperf3 stream each way; the proxy's CPU time is summed over both runs."""
        out, cpu, wall, nbytes = {}, 0.0, 0.0, 0
        for metric, reverse in (("bulk_up", False), ("bulk_down", True)):
            w0, c0 = time.monotonic(), proxy and proc_cpu_seconds(proxy.pid)
            out[metric], got = self.iperf(ports["iperf"], reverse)
            if proxy:
                cpu += proc_cpu_seconds(proxy.pid) - c0
                wall += time.monotonic() - w0
            nbytes += got
            time.sleep(0.2)
        if proxy:
            out["bulk_cpu"] = 100.0 * cpu / wall
            out["cpu_per_gb"] = 1000.0 * cpu / (nbytes / 1e9)
        return out

    def w_pingpong(self, target, proxy, ports):
        out = self.run_tool([self.load, "pingpong", str(ports["echo"]), str(self.s["pingpong"])],
                            timeout=120)
        m = re.search(r"p50_us=([\d.]+) p99_us=([\d.]+)", out)
        if not m:
            raise BenchError(f"load pingpong: unexpected output {out!r}")
        return {"rtt_p50": float(m.group(1)), "rtt_p99": float(m.group(2))}

    @staticmethod
    def connrate_figures(out):
        """(connections, failed connections, rate) from a `load connrate` line."""
        m = re.search(r"conns=(\d+) errors=(\d+) .*rate=(\d+)", out)
        if not m:
            raise BenchError(f"load connrate: unexpected output {out!r}")
        return int(m.group(1)), int(m.group(2)), float(m.group(3))

    def w_connrate(self, target, proxy, ports):
        secs = self.s["connrate_s"]
        c0 = proxy and proc_cpu_seconds(proxy.pid)
        out = self.run_tool([self.load, "connrate", str(ports["echo"]), str(secs)],
                            timeout=secs + 60)
        conns, errors, rate = self.connrate_figures(out)
        if errors:
            self.problem(f"{target}: connrate had {errors} failed connections")
        res = {"connrate": rate}
        if proxy and conns:
            res["conn_cpu_us"] = 1e6 * (proc_cpu_seconds(proxy.pid) - c0) / conns
        return res

    def w_connrate_par(self, target, proxy, ports):
        """PAR_LOOPS connection loops started at once: the sum of their rates."""
        secs = self.s["connrate_s"]
        argv = [self.load, "connrate", str(ports["echo"]), str(secs)]
        self.record(argv, f"  # {PAR_LOOPS} at once")
        c0 = proxy and proc_cpu_seconds(proxy.pid)
        loops = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
                 for _ in range(PAR_LOOPS)]
        deadline = time.monotonic() + secs + 60
        try:
            outs = [p.communicate(timeout=max(0.0, deadline - time.monotonic()))
                    for p in loops]
        except subprocess.TimeoutExpired:
            raise BenchError(f"load connrate did not finish within {secs + 60} s") from None
        finally:
            for p in loops:
                if p.poll() is None:
                    p.kill()
                    p.communicate()
        conns, errors, rate = 0, 0, 0.0
        for p, (out, err) in zip(loops, outs):
            if p.returncode != 0:
                raise BenchError(f"load connrate exited with code {p.returncode}: "
                                 f"{err.strip() or out.strip()}")
            c, e, r = self.connrate_figures(out)
            conns, errors, rate = conns + c, errors + e, rate + r
        if errors:
            self.problem(f"{target}: connrate-{PAR_LOOPS} had {errors} failed connections")
        res = {"connrate_par": rate}
        if proxy and conns:
            res["conn_par_cpu_us"] = 1e6 * (proc_cpu_seconds(proxy.pid) - c0) / conns
        return res

    def w_redis(self, target, proxy, ports):
        argv = ["redis-benchmark", "-h", LOOPBACK, "-p", str(ports["redis"]), "-t", "set,get",
                "-n", str(self.s["redis_n"]), "-q", "-c", "50"]
        out = self.run_tool(argv, timeout=120)
        got = dict(re.findall(r"(SET|GET): ([\d.]+) requests per second", out))
        if set(got) != {"SET", "GET"}:
            raise BenchError(f"redis-benchmark: unexpected output {out[-200:]!r}")
        return {"redis_set": float(got["SET"]), "redis_get": float(got["GET"])}

    def w_wrk(self, target, proxy, ports):
        secs = self.s["wrk_s"]
        argv = ["wrk", "-t2", "-c50", "-d", f"{secs}s", f"http://{LOOPBACK}:{ports['http']}/"]
        out = self.run_tool(argv, timeout=secs + 30)
        m = re.search(r"Requests/sec:\s*([\d.]+)", out)
        if not m:
            raise BenchError(f"wrk: unexpected output {out[-200:]!r}")
        bad = re.search(r"(Non-2xx or 3xx responses|Socket errors): .*", out)
        if bad:
            self.problem(f"{target}: wrk reported {bad.group(0)}")
        return {"wrk": float(m.group(1))}

    def w_idle(self, target, proxy, ports):
        """N connections held open through the proxy: its RSS growth per connection, and how
        much of that growth it still holds 1 s after they all closed."""
        n = self.s["idle"]
        fds0, rss0 = fd_count(proxy.pid), rss_kib(proxy.pid)
        argv = [self.load, "idle", str(ports["echo"]), str(n)]
        self.record(argv)
        p = self.procs.start(f"idle-{target}", argv, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
        try:
            line = self.read_line(p, timeout=120)
            m = re.match(r"established=(\d+) failed=(\d+)", line)
            if not m:
                raise BenchError(f"load idle: unexpected output {line!r}")
            got = int(m.group(1))
            if got < n:
                self.problem(f"{target}: only {got} of {n} idle connections established "
                                     f"({self.procs.log_tail(f'idle-{target}', 1)})"
                                     + IDLE_HINTS.get(target, ""))
            if got == 0:
                raise BenchError("no idle connection could be established")
            time.sleep(0.5)
            rss_peak = rss_kib(proxy.pid)
            p.stdin.write(b"\n")
            p.stdin.flush()
            self.read_line(p, timeout=60)
            self.wait_fds_settle(proxy.pid, fds0)
            time.sleep(1.0)
            rss_after = rss_kib(proxy.pid)
        finally:
            self.procs.stop(p)
        grown = rss_peak - rss0
        return {"idle_established": float(got), "idle_kib": grown / got,
                "idle_kept_pct": 100.0 * max(0, rss_after - rss0) / grown if grown > 0 else 0.0}

    @staticmethod
    def wait_fds_settle(pid, fds0, timeout=10.0):
        """Until the proxy has closed the sessions: back to its descriptor count from before,
        or no change for 0.5 s (HAProxy keeps a pool of splice pipes open)."""
        deadline = time.monotonic() + timeout
        last, since = fd_count(pid), time.monotonic()
        while last > fds0 + 8 and time.monotonic() < deadline:
            time.sleep(0.05)
            now = fd_count(pid)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= 0.5:
                return

    @staticmethod
    def read_line(p, timeout):
        ready, _, _ = select.select([p.stdout], [], [], timeout)
        if not ready:
            raise BenchError(f"load idle said nothing within {timeout} s")
        line = p.stdout.readline().decode(errors="replace").strip()
        if not line:
            raise BenchError(f"load idle exited (code {p.poll()})")
        return line

    WORKLOADS = [
        # name, method, the metrics it gives, the tools it needs, proxies only
        ("bulk", w_bulk, ("bulk_up", "bulk_down", "bulk_cpu", "cpu_per_gb"), ("iperf3",), False),
        ("ping-pong", w_pingpong, ("rtt_p50", "rtt_p99"), (), False),
        ("connrate", w_connrate, ("connrate", "conn_cpu_us"), (), False),
        (f"connrate-{PAR_LOOPS}", w_connrate_par, ("connrate_par", "conn_par_cpu_us"), (),
         False),
        ("redis", w_redis, ("redis_set", "redis_get"), ("redis-server", "redis-benchmark"), False),
        ("wrk", w_wrk, ("wrk",), ("nginx", "wrk"), False),
        ("idle", w_idle, ("idle_established", "idle_kib", "idle_kept_pct"), (), True),
    ]

    # -- rounds

    def run_target(self, rnd, target):
        proxy = None
        label = f"[round {rnd}/{self.s['rounds']}] {target:<14}"
        if target != "direct":
            why = self.missing("haproxy") if target not in LIFELINES else None
            if why:
                for m in METRICS:
                    self.na[target].setdefault(m[0], why)
                log(f"{label} {why}")
                return
            argv = self.proxy_argv(target)
            self.record(argv)
            proxy = self.procs.start(f"{target}", argv)
            wait_listening(self.procs, proxy, list(self.proxy_ports[target].values()))
        try:
            for name, fn, metrics, tools, proxy_only in self.WORKLOADS:
                if (proxy_only and proxy is None) or name not in self.workloads:
                    continue
                why = self.missing(*tools)
                if why:
                    for m in metrics:
                        self.na[target][m] = why
                    continue
                self.conntrack_room(target, name)
                ct0 = conntrack()
                t0 = time.monotonic()
                try:
                    got = fn(self, target, proxy, self.proxy_ports[target])
                except BenchError as e:
                    self.problem(f"{target}, {name}: {e}")
                    log(f"{label} {name}: FAILED: {e}")
                    continue
                finally:
                    if proxy is not None and proxy.poll() is not None:
                        raise BenchError(f"{target} exited with code {proxy.returncode}: "
                                         f"{self.procs.log_tail(target)}")
                if self.conntrack_dropped(ct0, target, name):
                    continue
                for m, v in got.items():
                    self.values[target][m].append(v)
                log(f"{label} {name}: " + ", ".join(
                    f"{m} {METRIC[m][2].format(v)}" for m, v in got.items())
                    + f" ({time.monotonic() - t0:.1f} s)")
                time.sleep(0.2)
        finally:
            if proxy is not None:
                self.procs.stop(proxy)

    def run(self):
        self.find_tools()
        nofile = set_nofile(FD_LIMIT)
        if nofile < 2 * self.s["idle"] + 100:
            self.s["idle"] = max(100, (nofile - 100) // 2)
            self.problem(f"RLIMIT_NOFILE is {nofile}, not {FD_LIMIT}: idle test reduced "
                                 f"to {self.s['idle']} connections")
        self.build_load()
        self.start_peers()
        self.check_proxy_configs()
        for rnd in range(1, self.s["rounds"] + 1):
            self.round = rnd
            for target in self.targets:
                try:
                    self.run_target(rnd, target)
                except BenchError as e:
                    self.problem(f"{target}: {e}")
                    log(f"[round {rnd}] {target}: FAILED: {e}")

    # Connection-tracking entries a workload may add at most, beyond what is there: two
    # per connection through a proxy (client side, server side), kept 120 s after close.
    CT_NEED = {"connrate": 2 * 15000, "connrate-8": 2 * 20000, "idle": 2 * 10000,
               "wrk": 2 * 100, "redis": 2 * 100}

    def conntrack_room(self, target, name):
        """Waits until netfilter's connection table has room for the workload: a full one
        drops SYNs, which the clients retry after 1 s, and the figures would measure that."""
        secs = self.s["connrate_s"] if name.startswith("connrate") else 1
        need = self.CT_NEED.get(name, 0) * secs
        waited = conntrack_wait_room(
            need, lambda ct: log(f"{target} {name}: connection table holds {ct[0]:,} of "
                                 f"{ct[1]:,} entries; waiting for it to drain"))
        self.ct_waited += waited

    def conntrack_dropped(self, before, target, name):
        """Whether netfilter dropped packets for want of room during the workload: then its
        figures are left out, and the report says so."""
        after = conntrack()
        if before is None or after is None or after[2] <= before[2]:
            return False
        self.problem(f"{target}, {name}: netfilter's connection table was full ({after[1]:,} "
                     f"entries) and dropped {after[2] - before[2]:,} packets; figures left out")
        log(f"{target} {name}: connection table full, figures left out")
        return True

    def skipped(self):
        """The targets and workloads that --targets and --only left out."""
        return ([t for t in TARGETS if t not in self.targets]
                + [w[0] for w in self.WORKLOADS if w[0] not in self.workloads])

    def close(self):
        self.procs.stop_all()
        if self.args.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# the report


class Report:
    def __init__(self, bench, started, elapsed):
        self.b = bench
        self.started = started
        self.elapsed = elapsed
        self.med = {t: {} for t in TARGETS}
        for t in TARGETS:
            for m in METRICS:
                vals = bench.values[t][m[0]]
                if vals:
                    self.med[t][m[0]] = statistics.median(vals)

    def fmt(self, metric, v):
        return METRIC[metric][2].format(v)

    def cell(self, target, metric):
        """A median, or why there is none."""
        if metric in self.med[target]:
            return self.fmt(metric, self.med[target][metric])
        if target == "direct" and metric in PROXY_ONLY:
            return "-"
        return self.b.na[target].get(metric, "n/a (failed, see Problems)")

    def ratio(self, target, metric, base):
        a, b = self.med[target].get(metric), self.med[base].get(metric)
        if a is None or not b:
            return None
        return a / b

    def rounds_text(self, target, metric):
        vals = self.b.values[target][metric]
        if not vals:
            return "-"
        return ", ".join(self.fmt(metric, v) for v in vals)

    # -- the summary table

    def summary_cell(self, target, metrics, kind):
        texts = [self.cell(target, m) for m in metrics]
        if not all(m in self.med[target] for m in metrics):
            # A dash or an n/a: said once when it is the same for every figure of the row.
            return texts[0] if len(set(texts)) == 1 else " / ".join(texts)
        value = " / ".join(texts)
        notes = []
        if kind == "added":   # latency: what the proxy adds to a direct round trip
            adds = [self.med[target][m] - self.med["direct"][m] for m in metrics
                    if m in self.med["direct"]]
            if target != "direct" and len(adds) == len(metrics):
                notes.append(" / ".join(f"+{a:.0f}" for a in adds) + " us over direct")
                if target in LIFELINES and all(m in self.med["haproxy"] for m in metrics):
                    h = [self.med["haproxy"][m] - self.med["direct"][m] for m in metrics]
                    notes.append("HAProxy " + " / ".join(f"+{a:.0f}" for a in h))
        elif target != "direct":
            bases = ["direct"] if target not in LIFELINES else ["direct", "haproxy"]
            if target in LIFELINES and metrics[0].startswith("bulk"):
                bases.append("haproxy-splice")
            for base in bases:
                rs = [self.ratio(target, m, base) for m in metrics]
                if all(r is not None for r in rs):
                    notes.append(" / ".join(f"{r:.2f}x" for r in rs) + f" {BASE_NAMES[base]}")
        if kind == "bulk" and "bulk_cpu" in self.med[target]:
            notes.append(f"{self.med[target]['bulk_cpu']:.0f}% of a core")
        return value + (f" ({', '.join(notes)})" if notes else "")

    def summary(self, haproxy_name):
        rows = [
            ("bulk client->server, Gbit/s (one stream)", ["bulk_up"], "bulk"),
            ("bulk server->client (-R), Gbit/s", ["bulk_down"], "ratio"),
            ("proxy CPU per GB relayed, ms (both bulk runs)", ["cpu_per_gb"], "ratio"),
            ("64 B round trip p50 / p99, us", ["rtt_p50", "rtt_p99"], "added"),
            ("connections/s, one at a time", ["connrate"], "ratio"),
            ("proxy CPU per connection, us (same loop)", ["conn_cpu_us"], "ratio"),
            (f"connections/s, {PAR_LOOPS} loops in parallel", ["connrate_par"], "ratio"),
            (f"proxy CPU per connection, us ({PAR_LOOPS} in parallel)", ["conn_par_cpu_us"],
             "ratio"),
            (f"idle memory per connection, KiB ({self.b.s['idle']:,} connections)",
             ["idle_kib"], "ratio"),
            ("idle memory still held 1 s after close, %", ["idle_kept_pct"], "plain"),
            ("redis-benchmark SET / GET, req/s", ["redis_set", "redis_get"], "ratio"),
            ("wrk against nginx, req/s", ["wrk"], "ratio"),
        ]
        heads = ["direct", f"{haproxy_name} (nbthread 2)", f"{haproxy_name}, forced splice",
                 "lifeline, shipped defaults (workers 2)", "lifeline, lean (warn, identity none)"]
        out = ["| | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        for label, metrics, kind in rows:
            cells = [self.cell(t, metrics[0]) if kind == "plain"
                     else self.summary_cell(t, metrics, kind) for t in TARGETS]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(out)

    # -- the performance targets, judged from this run's medians

    def targets(self):
        """Judged on the shipped defaults (the "lifeline" target); the lean figure beside."""
        rows = []
        med = self.med

        def row(label, need, have):
            """have(target) -> (the cell's text, whether the target is met or None)."""
            text, ok = have("lifeline")
            rows.append((label, need, text, have("lifeline-lean")[0],
                         "n/a" if ok is None else ("met" if ok else "missed")))

        def against(m, base, k, unit, at_most=False, also=()):
            """A row needing m >= k times base's (<= with at_most), as "need" and "have"."""
            b = med[base].get(m)
            need = (f"{'<=' if at_most else '>='} {k}x {BASE_NAMES[base]}"
                    + (f" ({self.fmt(m, k * b)} {unit})" if b else ""))

            def have(t):
                v = med[t].get(m)
                if v is None:
                    return self.cell(t, m), None
                ratios = [f"{v / med[x][m]:.2f}x {BASE_NAMES[x]}" for x in (base,) + also
                          if med[x].get(m)]
                text = f"{self.fmt(m, v)} {unit}" + (f" ({', '.join(ratios)})" if ratios else "")
                return text, None if not b else (v <= k * b if at_most else v >= k * b)
            return need, have

        def bound(m, limit, text, at_most=True):
            """A row needing m <= limit (>= without at_most): its "have"."""
            def have(t):
                v = med[t].get(m)
                if v is None:
                    return self.cell(t, m), None
                return text.format(v), v <= limit if at_most else v >= limit
            return have

        def added(m, k):
            """A row needing the round trip the proxy adds to be <= k times HAProxy's."""
            d = med["direct"].get(m)
            h = med["haproxy"][m] - d if d is not None and m in med["haproxy"] else None
            need = "<= HAProxy's" if k == 1 else f"<= {k}x HAProxy's"
            if h is not None:
                need += f" (+{h:.0f} us)" if k == 1 else f" +{h:.0f} us (+{k * h:.0f} us)"

            def have(t):
                if d is None or m not in med[t]:
                    return self.cell(t, m), None
                a = med[t][m] - d
                return f"+{a:.0f} us", None if h is None else a <= k * h
            return need, have

        row("connections/s, one at a time", *against("connrate", "haproxy", 1.3, "conn/s"))
        row(f"connections/s, {PAR_LOOPS} in parallel",
            *against("connrate_par", "haproxy", 1.3, "conn/s"))
        row("idle memory per session", "<= 1.0 KiB", bound("idle_kib", 1.0, "{:.2f} KiB"))
        row("memory given back after sessions close",
            "<= 25% of the idle growth still held 1 s later",
            bound("idle_kept_pct", 25, "{:.0f}% held"))
        for m, label in (("redis_set", "redis-benchmark SET"),
                         ("redis_get", "redis-benchmark GET"), ("wrk", "wrk")):
            row(label, *against(m, "haproxy", 1.15, "req/s"))
        row("added round trip p50", *added("rtt_p50", 1))
        row("added round trip p99", *added("rtt_p99", 0.8))
        for m, word in (("bulk_up", "client->server"), ("bulk_down", "server->client")):
            row(f"bulk {word}", *against(m, "direct", 0.9, "Gbit/s", also=("haproxy-splice",)))
        row("CPU per connection (one at a time)",
            *against("conn_cpu_us", "haproxy", 0.7, "us", at_most=True))
        row("CPU per GB relayed", *against("cpu_per_gb", "haproxy", 0.7, "ms", at_most=True))
        n = self.b.s["idle"]
        row(f"{n:,} concurrent sessions",
            f"all established, fd limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]:,}",
            bound("idle_established", n, "{:,.0f}", at_most=False))
        out = ["| target | needed | lifeline (defaults) | lean | |", "|---|---|---|---|---|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)

    def figures(self):
        out = ["| metric | target | median | unit | rounds |", "|---|---|---|---|---|"]
        for m in METRICS:
            for t in TARGETS:
                out.append(f"| {m[0]} | {t} | {self.cell(t, m[0])} | {m[1]} | "
                           f"{self.rounds_text(t, m[0])} |")
        return "\n".join(out)

    def machine(self):
        return "\n".join(machine_lines())

    def versions(self):
        b = self.b
        rows = [
            ("lifeline", [b.lifeline, "--version"]),
            ("haproxy", ["haproxy", "-v"]),
            ("iperf3", ["iperf3", "--version"]),
            ("redis-server", ["redis-server", "--version"]),
            ("redis-benchmark", ["redis-benchmark", "--version"]),
            ("wrk", ["wrk", "-v"]),
            ("nginx", ["nginx", "-v"]),
        ]
        out = []
        for name, argv in rows:
            if name != "lifeline" and not b.tools.get(name):
                out.append(f"- {name}: not installed")
                continue
            out.append(f"- {name}: {first_line(argv) or 'unknown'}")
        out += source_lines()
        build_type = cmake_build_type(b.lifeline)
        if build_type:
            out.append(f"- lifeline build type: {build_type}")
        if detect_sanitizer(b.lifeline):
            out.append("- **lifeline is a sanitizer build: its figures mean nothing**")
        return "\n".join(out)

    def render(self):
        b = self.b
        s = b.s
        haproxy_name = "HAProxy"
        v = first_line(["haproxy", "-v"]) if b.tools.get("haproxy") else None
        m = re.search(r"version (\d+\.\d+)", v or "")
        if m:
            haproxy_name = f"HAProxy {m.group(1)}"
        kind = "`--quick`: one short round, indicative only" if b.args.quick else "full run"
        parts = [
            "# lifeline benchmark results",
            "",
            f"Written by `bench/run.py` ({kind}) on {self.started} UTC in {self.elapsed:.0f} s: "
            f"{s['rounds']} interleaved round(s) of "
            + ", ".join(TARGET_NAMES[t] for t in b.targets)
            + ", all on 127.0.0.1; each figure is the median over the rounds. Run-to-run spread on a small machine is large: "
            "compare ratios within one run only.",
            "",
            "## Summary",
            "",
            self.summary(haproxy_name),
            "",
            "Two lifelines, both from the shipped `config/lifeline.json` with workers 2 (to "
            "match HAProxy's nbthread 2), one route per peer copied from its first route, and "
            "the admin listener on. **Shipped defaults** is what users run: log level info "
            "(a line per closed session) and the built-in client settings (identity "
            "address_port, TCP keepalive, user timeout); it is the column the targets below "
            "judge. **Lean** is the same with log level warn and client identity none: what "
            "those settings cost. Both configurations are under Generated configurations.",
            "",
            "Ratios in brackets: HAProxy columns against direct; the lifeline columns against "
            "direct, HAProxy and (bulk) HAProxy with splice. CPU is the proxy process's "
            "utime + stime over both bulk runs, or over the connection loop; memory is its VmRSS "
            "growth while the idle connections are open, divided by their number.",
            "",
        ]
        if b.skipped():
            parts += [f"Not run (--targets, --only): {', '.join(b.skipped())}.", ""]
        parts += [
            "## Targets (lifeline, from this run)",
            "",
            "Judged on lifeline with the shipped defaults; the lean column is for comparison.",
            "",
            self.targets(),
            "",
        ]
        parts += profile_notes()
        parts += [
            "## All figures",
            "",
            self.figures(),
            "",
            "## Machine",
            "",
            self.machine(),
            "",
            "## Versions",
            "",
            self.versions(),
            "",
            "## Settings",
            "",
            f"- rounds: {s['rounds']}; iperf3 {s['bulk_s']} s per direction; ping-pong "
            f"{s['pingpong']:,} round trips; connection loop (connect, 64 bytes each way, "
            f"close) {s['connrate_s']} s, one loop and then {PAR_LOOPS} loops started at once "
            "(their rates summed); "
            f"{s['idle']:,} idle connections; redis-benchmark {s['redis_n']:,} requests per "
            f"test; wrk {s['wrk_s']} s",
            "- peers: load.c echo server (one thread, epoll), iperf3 -s, redis-server, nginx "
            "(one process)",
            "- netfilter's connection table (it tracks loopback once any NAT rule is loaded): "
            + ("not in use" if conntrack() is None else
               f"{conntrack()[1]:,} entries; before each workload the run waited until it had "
               f"room (closed connections stay 120 s), {b.ct_waited:.0f} s in all; a workload "
               "during which it dropped packets is left out (see Problems)"),
            "",
            "## Commands",
            "",
            "Paths under the run's temporary directory are shown as `$TMP`.",
            "",
            "```",
        ]
        parts += [c.replace(b.tmp, "$TMP") for c in b.commands]
        parts += ["```", "", "## Generated configurations", ""]
        for name, text in b.configs.items():
            if name == "nginx.conf" or name.endswith(".cfg") or name.endswith(".json"):
                parts += [f"`{name}`:", "", "```", text.replace(b.tmp, "$TMP").rstrip(), "```", ""]
        parts += ["## Problems", ""]
        for text, rounds in b.problems.items():
            which = f" (round{'s' if len(rounds) > 1 else ''} {', '.join(map(str, rounds))})"
            parts.append(f"- {text}" + (which if rounds else ""))
        if not b.problems:
            parts.append("none")
        return "\n".join(parts) + "\n"


def profile_notes():
    """bench/PROFILE.md, written by hand: where the time goes for the targets
    lifeline misses, and what would close them. Quoted into every report."""
    path = os.path.join(HERE, "PROFILE.md")
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return []
    return [text, ""]


# --------------------------------------------------------------------------


def subset(allowed, what):
    """An argparse type: a comma-separated list of names from `allowed`, in its order."""
    def parse(text):
        got = [n.strip() for n in text.split(",") if n.strip()]
        for n in got:
            if n not in allowed:
                raise argparse.ArgumentTypeError(
                    f"unknown {what} {n!r} (known: {', '.join(allowed)})")
        if not got:
            raise argparse.ArgumentTypeError(f"no {what} named")
        return [n for n in allowed if n in got]
    return parse


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    default=os.environ.get("QUICK", "") not in ("", "0"),
                    help="one short round (also QUICK=1)")
    ap.add_argument("--rounds", type=int, help="rounds (default 3, 1 with --quick)")
    ap.add_argument("--results", default=os.environ.get("BENCH_RESULTS")
                    or os.path.join(HERE, "RESULTS.md"),
                    help="report path (default bench/RESULTS.md, or $BENCH_RESULTS)")
    ap.add_argument("--lifeline", default=lifeline_bin(),
                    help="lifeline binary (default build/lifeline, or $LIFELINE_BIN)")
    ap.add_argument("--idle", type=int, help="idle connections (default 9900, 4000 with --quick)")
    ap.add_argument("--targets", type=subset(TARGETS, "target"),
                    help="run only these targets (comma-separated, of: " + ", ".join(TARGETS)
                    + "); ratios need direct and haproxy")
    names = [w[0] for w in Bench.WORKLOADS]
    ap.add_argument("--only", type=subset(names, "workload"),
                    help="run only these workloads (comma-separated, of: " + ", ".join(names)
                    + ")")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.rounds:
        settings["rounds"] = args.rounds
    if args.idle:
        settings["idle"] = args.idle
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    t0 = time.monotonic()
    bench = Bench(args, settings)
    try:
        bench.run()
    except BenchError as e:
        log(f"bench: {e}")
        return 1
    except KeyboardInterrupt:
        log("bench: interrupted")
        return 130
    finally:
        bench.close()
    text = Report(bench, started, time.monotonic() - t0).render()
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    text += kept_sections(args.results)
    with open(args.results, "w") as f:
        f.write(text)
    log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
