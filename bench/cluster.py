#!/usr/bin/env python3
"""Connection rate with `cluster` on and off, in one run.

What it does, on 127.0.0.1 only:

  - starts `load echo` (bench/load.c) and a 3-member etcd cluster (Debian's etcd-server,
    data in a temporary directory on the local disk, default settings but a 100 ms
    heartbeat and 1 s election timeout, as the tests use);
  - targets, interleaved per round (round 1: direct, off, on; round 2: ...):
      direct        `load connrate` straight to the echo server
      cluster off   lifeline on the shipped config/lifeline.json (identity address_port,
                    log level info), only its addresses changed
      cluster on    the same plus "cluster": {"etcd": [the three members], "instance": "bench"}
    each lifeline is started for its turn and stopped after it;
  - for each target: `load connrate` for SECS seconds (one connection at a time: connect,
    64 bytes there and back, close), then PARALLEL such loops at once (their rates summed);
    every connection comes from a new ephemeral port, so with the cluster on each one is a
    claim (a transaction in etcd) before its upstream connection and a release (a second
    transaction) after it; lifeline's CPU per connection from /proc, and etcd's (all
    members) for the cluster rows.

The figures are medians over the rounds. The section "Cluster: connection rate" of
bench/RESULTS.md (or --results) is replaced, or added at the end; the rest of the file is
left as it is. Python 3 standard library only.

    python3 bench/cluster.py [--rounds 3] [--seconds 3] [--parallel 8] [--results PATH]
                             [--lifeline BIN] [--no-write]
"""

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))

import run as bench  # noqa: E402
from lifeline_testlib import die_with_parent, lifeline_bin, proc_cpu_seconds  # noqa: E402

LOOPBACK = bench.LOOPBACK
SHIPPED_CONFIG = os.path.join(REPO, "config", "lifeline.json")
SECTION = "## Cluster: connection rate"
TARGETS = ["direct", "cluster off", "cluster on"]
log = bench.log
BenchError = bench.BenchError


class ClusterBench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="lifeline-cluster-bench-")
        self.lifeline = os.path.abspath(args.lifeline)
        self.procs = bench.Procs(self.tmp)
        self.values = {t: {"seq": [], "par": [], "cpu_us": [], "etcd_cpu_us": []}
                       for t in TARGETS}
        self.problems = []
        self.commands = []

    def record(self, argv):
        cmd = shlex.join(argv)
        if cmd not in self.commands:
            self.commands.append(cmd)

    def build_load(self):
        self.load = os.path.join(self.tmp, "load")
        argv = [os.environ.get("CC", "cc"), "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
                "-o", self.load, os.path.join(HERE, "load.c")]
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"building load.c failed:\n{r.stderr}")

    def start_etcd(self):
        etcd = shutil.which("etcd")
        if etcd is None:
            raise BenchError("etcd is not installed (apt-get install etcd-server)")
        ports = bench.pick_ports(6)
        peers = ",".join(f"m{i}=http://{LOOPBACK}:{ports[3 + i]}" for i in range(3))
        self.etcd_urls = [f"http://{LOOPBACK}:{ports[i]}" for i in range(3)]
        self.etcd = []
        for i in range(3):
            argv = [etcd, "--name", f"m{i}", "--data-dir", os.path.join(self.tmp, f"etcd{i}"),
                    "--listen-client-urls", self.etcd_urls[i],
                    "--advertise-client-urls", self.etcd_urls[i],
                    "--listen-peer-urls", f"http://{LOOPBACK}:{ports[3 + i]}",
                    "--initial-advertise-peer-urls", f"http://{LOOPBACK}:{ports[3 + i]}",
                    "--initial-cluster", peers, "--initial-cluster-state", "new",
                    "--heartbeat-interval", "100", "--election-timeout", "1000"]
            self.record(argv)
            self.etcd.append(self.procs.start(f"etcd{i}", argv))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.etcd_urls[0] + "/health", timeout=1) as r:
                    if json.load(r).get("health") == "true":
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchError("etcd did not become healthy in 30 s")

    def config(self, target, port, echo_port, admin_port):
        with open(SHIPPED_CONFIG) as f:
            cfg = json.load(f)
        cfg["routes"][0]["listen"] = f"{LOOPBACK}:{port}"
        cfg["routes"][0]["upstream"]["servers"] = [f"{LOOPBACK}:{echo_port}"]
        cfg["admin"]["listen"] = f"{LOOPBACK}:{admin_port}"
        if target == "cluster on":
            cfg["cluster"] = {"etcd": self.etcd_urls, "instance": "bench"}
        path = os.path.join(self.tmp, target.replace(" ", "-") + ".json")
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
        return path

    def connrate(self, port, n):
        argv = [self.load, "connrate", str(port), str(self.args.seconds)]
        self.record(argv)
        ps = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=die_with_parent) for _ in range(n)]
        total = conns = errors = 0
        for p in ps:
            out, err = p.communicate(timeout=self.args.seconds + 60)
            m = re.search(r"conns=(\d+) errors=(\d+) .*rate=(\d+)", out)
            if not m:
                raise BenchError(f"load connrate: unexpected output {out!r} {err!r}")
            conns += int(m.group(1))
            errors += int(m.group(2))
            total += float(m.group(3))
        if errors:
            self.problems.append(f"{errors} failed connections in one run")
        return total, conns

    def one(self, rnd, target):
        proxy = None
        port = self.echo_port
        if target != "direct":
            port, admin_port = bench.pick_ports(2)
            argv = [self.lifeline, "-c", self.config(target, port, self.echo_port, admin_port)]
            self.record(argv)
            proxy = self.procs.start(target.replace(" ", "-"), argv)
            bench.wait_listening(self.procs, proxy, [port])
            if target == "cluster on":  # the lease first: claims before it are refused
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    try:
                        with urllib.request.urlopen(
                                f"http://{LOOPBACK}:{admin_port}/readyz", timeout=1) as r:
                            if r.status == 200:
                                break
                    except OSError:
                        pass
                    time.sleep(0.05)
        try:
            c0 = proxy and proc_cpu_seconds(proxy.pid)
            e0 = sum(proc_cpu_seconds(p.pid) for p in self.etcd)
            seq, conns = self.connrate(port, 1)
            if proxy:
                self.values[target]["cpu_us"].append(
                    1e6 * (proc_cpu_seconds(proxy.pid) - c0) / max(conns, 1))
            if target == "cluster on":
                self.values[target]["etcd_cpu_us"].append(
                    1e6 * (sum(proc_cpu_seconds(p.pid) for p in self.etcd) - e0)
                    / max(conns, 1))
            par, _ = self.connrate(port, self.args.parallel)
            self.values[target]["seq"].append(seq)
            self.values[target]["par"].append(par)
            log(f"[round {rnd}] {target:<12} {seq:,.0f} conn/s one at a time, "
                f"{par:,.0f} conn/s with {self.args.parallel} in parallel")
        finally:
            if proxy is not None:
                self.procs.stop(proxy)

    def run(self):
        self.build_load()
        self.echo_port = bench.pick_ports(1)[0]
        argv = [self.load, "echo", str(self.echo_port)]
        self.record(argv)
        echo = self.procs.start("echo", argv)
        bench.wait_listening(self.procs, echo, [self.echo_port])
        self.start_etcd()
        for rnd in range(1, self.args.rounds + 1):
            for target in TARGETS:
                self.one(rnd, target)

    def close(self):
        self.procs.stop_all()
        shutil.rmtree(self.tmp, ignore_errors=True)


def render(b, started, elapsed):
    def med(t, k):
        v = b.values[t][k]
        return statistics.median(v) if v else None

    def cell(t, k, fmt="{:,.0f}"):
        v = b.values[t][k]
        if not v:
            return "-"
        return fmt.format(statistics.median(v)) + " (" + ", ".join(fmt.format(x) for x in v) + ")"
    off, on = med("cluster off", "seq"), med("cluster on", "seq")
    poff, pon = med("cluster off", "par"), med("cluster on", "par")
    out = [SECTION, "",
           f"Written by `bench/cluster.py` on {started} UTC in {elapsed:.0f} s: "
           f"{b.args.rounds} interleaved round(s), {b.args.seconds} s per figure, all on "
           "127.0.0.1; medians, every round in brackets. lifeline runs the shipped "
           "`config/lifeline.json` (identity `address_port`, log level info) with only its "
           "addresses changed; \"cluster on\" adds `\"cluster\": {\"etcd\": [three members], "
           "\"instance\": \"bench\"}` (the other keys at their defaults). etcd 3.4 from "
           "Debian, three members on loopback, data on the local disk. Every connection "
           "comes from a new port: with the cluster on, each is a claim in etcd (one "
           "transaction, a raft write) before its server connection opens, and a release (a "
           "second one) after it closes.", "",
           f"| target | conn/s, one at a time | conn/s, {b.args.parallel} clients in parallel "
           "| lifeline CPU per connection, us | etcd CPU per connection (3 members), us |",
           "|---|---|---|---|---|"]
    for t in TARGETS:
        out.append(f"| {t} | {cell(t, 'seq')} | {cell(t, 'par')} | {cell(t, 'cpu_us')} | "
                   f"{cell(t, 'etcd_cpu_us')} |")
    out.append("")
    if off and on and poff and pon:
        out += [f"With the cluster on, a connection waits for one etcd transaction before its "
                f"server connection opens: one at a time, {on:,.0f} conn/s against "
                f"{off:,.0f} ({on / off:.2f}x), about {1e3 / on - 1e3 / off:.2f} ms more per "
                f"connection; with {b.args.parallel} clients at once {pon:,.0f} against "
                f"{poff:,.0f} ({pon / poff:.2f}x): etcd's CPU is the bound here "
                f"({med('cluster on', 'etcd_cpu_us') or 0:,.0f} us per connection over its "
                f"three members, two transactions each, on {os.cpu_count()} cores shared with "
                "lifeline and the load). Only admission waits: relaying never calls etcd, and "
                "routes with identity `none` never touch it.", ""]
    if b.problems:
        out += ["Problems:", ""] + [f"- {p}" for p in sorted(set(b.problems))] + [""]
    out += ["Machine:", ""] + bench.machine_lines() + ["", "Commands:", "", "```"]
    out += b.commands + ["```", ""]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--lifeline", default=lifeline_bin())
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, bench._on_sigterm)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    t0 = time.monotonic()
    b = ClusterBench(args)
    try:
        b.run()
    except BenchError as e:
        log(f"bench: {e}")
        return 1
    finally:
        b.close()
    text = render(b, started, time.monotonic() - t0)
    print(text)
    if not args.no_write:
        bench.write_section(args.results, SECTION, text)
        log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
