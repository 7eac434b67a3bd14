"""`make bench QUICK=1` still runs: bench/run.py --quick, once, against the built binary.

Benchmarks are never part of the suite: this only checks that the driver, the load tool
(bench/load.c) and the generated peer and proxy configs still work together. It runs one
short round into a temporary directory (bench/RESULTS.md is left alone) and asserts on the
report's structure only: a figure, or an "n/a (why)", for each of direct, haproxy,
haproxy-splice, lifeline (shipped defaults) and lifeline-lean in every workload. Never on the
figures themselves.

Skips (exit 77, with the reason) under a sanitizer build, where figures mean nothing and
the run is slow, and when a benchmark tool is missing and we are not root to install it.
As root, a missing tool is installed with apt-get, as `make bench` does.
"""

import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from harness import (BIN, SANITIZER, EchoServer, connect, free_port, pattern_block, recv_exact,
                     require_binary, scaled, wait_closed)

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DRIVER = os.path.join(REPO, "bench", "run.py")
RESULTS = os.path.join(REPO, "bench", "RESULTS.md")

# Debian package -> the command it provides (as `make bench` installs them).
PACKAGES = {
    "iperf3": "iperf3",
    "redis-server": "redis-server",
    "redis-tools": "redis-benchmark",
    "wrk": "wrk",
    "nginx-light": "nginx",
    "haproxy": "haproxy",
}

TARGETS = ("direct", "haproxy", "haproxy-splice", "lifeline", "lifeline-lean")
LIFELINES = ("lifeline", "lifeline-lean")
# The workloads, as the report's "All figures" table names them.
METRICS = ("bulk_up", "bulk_down", "bulk_cpu", "cpu_per_gb", "rtt_p50", "rtt_p99", "connrate",
           "conn_cpu_us", "connrate_par", "conn_par_cpu_us", "idle_established", "idle_kib",
           "idle_kept_pct", "redis_set", "redis_get", "wrk")
# A section of RESULTS.md that bench/upgrade.py writes, as a stand-in.
UPGRADE_SECTION = "## Live upgrade hand-over\n\nkept from before\n"
# What a cell may hold: a number, "-" (no proxy to measure), or "n/a (why)".
CELL = re.compile(r"^(?:[\d,]+(?:\.\d+)?|-|n/a \(.+\))$")


def _have(cmd):
    return shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/sbin")


def _missing_packages():
    return [pkg for pkg, cmd in PACKAGES.items() if not _have(cmd)]


def _skip_reason():
    """Why this test cannot run here, or None. Installs what is missing when root."""
    if SANITIZER:
        return (f"lifeline is a sanitizer build ({SANITIZER}): benchmark figures are "
                "meaningless there and the run is slow")
    if not _have(os.environ.get("CC", "cc")):
        return "no C compiler (cc) to build bench/load.c"
    missing = _missing_packages()
    if missing and os.geteuid() != 0:
        return (f"benchmark packages missing: {' '.join(missing)}; install them as root: "
                f"apt-get install -y {' '.join(missing)}")
    if missing:
        print(f"installing {' '.join(missing)} (as `make bench` does)", file=sys.stderr,
              flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdin=subprocess.DEVNULL,
                       timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq"] + missing, env=env,
                       stdin=subprocess.DEVNULL, timeout=600)
        # Whatever could not be installed reads "n/a (... not installed)" in the report.
    return None


# Decided at import, so that `python3 -m unittest test_bench` (as ctest runs it) exits 77.
_REASON = _skip_reason() if os.access(BIN, os.X_OK) else None
if _REASON:
    print(f"SKIP: {_REASON}", flush=True)
    sys.exit(77)


def table(text, heading):
    """The rows (lists of cells) of the first table under `## heading`."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not m:
        raise AssertionError(f"no '## {heading}' section in the report")
    lines = [ln for ln in m.group(1).splitlines() if ln.startswith("|")]
    if len(lines) < 3:
        raise AssertionError(f"no table under '## {heading}'")
    return [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines[2:]]


class QuickBench(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        require_binary()
        cls.tmp = tempfile.mkdtemp(prefix="lifeline-test-bench-")
        cls.results = os.path.join(cls.tmp, "RESULTS.md")
        # A report from before, with a section bench/upgrade.py writes: the
        # new report replaces the rest and keeps that section.
        with open(cls.results, "w") as f:
            f.write("# old report\n\n## Summary\n\nold figures\n\n"
                    + UPGRADE_SECTION + "\n")
        cls.before = os.stat(RESULTS).st_mtime_ns if os.path.exists(RESULTS) else None
        env = dict(os.environ, LIFELINE_BIN=BIN)
        env.pop("BENCH_RESULTS", None)
        env.pop("QUICK", None)
        start = time.monotonic()
        try:
            cls.proc = subprocess.run(
                [sys.executable, DRIVER, "--quick", "--results", cls.results],
                env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=110)
        except subprocess.TimeoutExpired as e:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise AssertionError(f"bench/run.py --quick took longer than 110 s:\n"
                                 f"{e.stderr or ''}") from None
        cls.took = time.monotonic() - start
        cls.text = ""
        if os.path.exists(cls.results):
            with open(cls.results) as f:
                cls.text = f.read()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_other_scripts_sections_are_kept(self):
        self.assertIn(UPGRADE_SECTION, self.text)
        self.assertNotIn("old figures", self.text)
        self.assertEqual(self.text.count("## Summary"), 1)

    def test_driver_succeeds_and_writes_its_report(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr[-3000:])
        self.assertTrue(self.text, f"no report at {self.results}\n{self.proc.stderr[-3000:]}")
        self.assertIn(f"wrote {self.results}", self.proc.stderr)

    def test_every_target_has_every_workload(self):
        rows = table(self.text, "All figures")
        cells = {}
        for row in rows:
            self.assertEqual(len(row), 5, row)
            metric, target, median = row[0], row[1], row[2]
            self.assertNotIn((metric, target), cells, f"duplicate row {row}")
            self.assertRegex(median, CELL, f"cell of {metric}/{target}")
            cells[(metric, target)] = median
        for metric in METRICS:
            for target in TARGETS:
                with self.subTest(metric=metric, target=target):
                    self.assertIn((metric, target), cells)
        # Nothing on this machine stops lifeline's own rows from having figures, except a
        # tool that could not be installed.
        for metric in METRICS:
            for target in LIFELINES:
                with self.subTest(metric=metric, target=target):
                    self.assertNotEqual(cells[(metric, target)], "-")
                    self.assertFalse(cells[(metric, target)].startswith("n/a (failed"),
                                     self.text[self.text.find("## Problems"):])

    def test_summary_has_a_column_per_target(self):
        m = re.search(r"^## Summary\n\n(\|.*)$", self.text, re.M)
        self.assertIsNotNone(m, "no summary table")
        head = [c.strip() for c in m.group(1).strip("|").split("|")]
        self.assertEqual(len(head), 6, head)
        self.assertEqual(head[1], "direct")
        self.assertTrue(head[2].startswith("HAProxy") and "nbthread 2" in head[2], head)
        self.assertTrue(head[3].startswith("HAProxy") and "splice" in head[3], head)
        self.assertTrue(head[4].startswith("lifeline") and "defaults" in head[4], head)
        self.assertTrue(head[5].startswith("lifeline") and "lean" in head[5], head)
        rows = table(self.text, "Summary")
        self.assertGreaterEqual(len(rows), 10)
        for row in rows:
            self.assertEqual(len(row), 6, row)

    def test_targets_are_judged_on_the_shipped_defaults(self):
        m = re.search(r"^## Targets \(lifeline, from this run\)\n\n.*?^(\|[^\n]*)$", self.text,
                      re.M | re.S)
        self.assertIsNotNone(m, "no targets table")
        head = [c.strip() for c in m.group(1).strip("|").split("|")]
        self.assertEqual(head, ["target", "needed", "lifeline (defaults)", "lean", ""])
        rows = table(self.text, "Targets (lifeline, from this run)")
        self.assertGreaterEqual(len(rows), 14)
        for row in rows:
            self.assertEqual(len(row), 5, row)
            self.assertIn(row[4], ("met", "missed", "n/a"), row)

    def test_both_lifeline_configs_are_shown(self):
        def config(name):
            m = re.search(rf"^`{re.escape(name)}`:\n\n```\n(.*?)^```$", self.text, re.M | re.S)
            self.assertIsNotNone(m, f"no {name} under Generated configurations")
            return json.loads(m.group(1))
        shipped, lean = config("lifeline.json"), config("lifeline-lean.json")
        for cfg in (shipped, lean):
            self.assertEqual(cfg["workers"], 2)
            self.assertIn("listen", cfg["admin"])
            self.assertEqual(len(cfg["routes"]), 4)
        self.assertEqual(shipped["log"]["level"], "info")
        self.assertTrue(all("client" not in r for r in shipped["routes"]), shipped)
        self.assertEqual(lean["log"]["level"], "warn")
        self.assertTrue(all(r["client"]["identity"] == "none" for r in lean["routes"]), lean)

    def test_unknown_target_or_workload_is_named(self):
        for option, name in (("--targets", "lifeline,nosuch"), ("--only", "connrate,nosuch")):
            with self.subTest(option=option):
                r = subprocess.run([sys.executable, DRIVER, option, name], capture_output=True,
                                   text=True, stdin=subprocess.DEVNULL, timeout=30)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn("'nosuch'", r.stderr)

    def test_report_names_machine_versions_and_commands(self):
        for section in ("Targets (lifeline, from this run)", "Machine", "Versions",
                        "Settings", "Commands", "Problems"):
            self.assertRegex(self.text, rf"(?m)^## {re.escape(section)}$")
        self.assertRegex(self.text, r"cores \(nproc\): \d+")
        self.assertRegex(self.text, r"kernel \(uname -r\): \S+")
        self.assertRegex(self.text, r"- lifeline: lifeline \d+\.\d+")
        self.assertIn("rounds: 1;", self.text)
        cmds = ["load echo", "load pingpong", "load connrate", "load idle"]
        if _have("iperf3"):
            cmds.append("iperf3 -c 127.0.0.1")
        for cmd in cmds:
            self.assertIn(cmd, self.text)

    def test_checked_in_results_are_left_alone(self):
        after = os.stat(RESULTS).st_mtime_ns if os.path.exists(RESULTS) else None
        self.assertEqual(after, self.before, "the quick run must not write bench/RESULTS.md")


class RelayModes(unittest.TestCase):
    """bench/relay_modes.c, the copy/splice measurement PROFILE.md quotes, still
    builds without warnings and relays bytes both ways in each mode."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="lifeline-test-relay-modes-")
        cls.binary = os.path.join(cls.tmp, "relay_modes")
        r = subprocess.run([os.environ.get("CC", "cc"), "-std=c11", "-O2", "-Wall", "-Wextra",
                            "-Werror", "-pthread", "-o", cls.binary,
                            os.path.join(REPO, "bench", "relay_modes.c")],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise AssertionError(f"bench/relay_modes.c does not build:\n{r.stderr}")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def relay(self, mode):
        echo = EchoServer()
        self.addCleanup(echo.close)
        port = free_port()
        proc = subprocess.Popen([self.binary, mode, "65536", str(port), str(echo.port)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(proc.wait, timeout=10)
        self.addCleanup(proc.kill)
        ready, _, _ = select.select([proc.stdout], [], [], scaled(10))
        self.assertTrue(ready, "relay_modes did not say it was listening within 10 s")
        self.assertEqual(proc.stdout.readline().strip(), f"listening port={port}")
        sock = connect(port)
        self.addCleanup(sock.close)
        data = pattern_block(7, 4 * 1024 * 1024)
        sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
        sender.start()
        self.assertEqual(recv_exact(sock, len(data), timeout=scaled(20)), data)
        sender.join(scaled(10))
        # The client's FIN reaches the echo server, whose close comes back as EOF.
        sock.shutdown(socket.SHUT_WR)
        self.assertEqual(wait_closed(sock, timeout=scaled(10)), "eof")

    def test_copy(self):
        self.relay("copy")

    def test_splice(self):
        self.relay("splice")


if __name__ == "__main__":
    unittest.main()
