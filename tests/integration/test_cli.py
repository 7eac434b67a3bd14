"""Command line: --check, --version, --help, options, exit codes, listen
failures, LIFELINE_CONFIG, log formats."""

import json
import os
import re
import signal
import socket
import unittest

from harness import (LOOPBACK, LOOPBACK6, EchoServer, Lifeline, LifelineTestCase, addr_str,
                     config, connect, free_port, have_ipv6_loopback, recv_exact, route, run_cli,
                     scaled, wait_closed, wait_until, write_config)

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info|warn|error) \S")


class Check(LifelineTestCase):

    def good(self):
        return config([route(free_port(), [free_port(), f"{LOOPBACK}:{free_port()}"],
                             retries=2)])

    def check(self, cfg, name="c.json"):
        path = write_config(self.tmpdir, cfg, name)
        return path, run_cli(["--check", "-c", path])

    def assertErrors(self, result, expected):
        """Exit 2, nothing on stdout, exactly these lines on stderr (one per
        error; their order is not part of the contract)."""
        self.assertEqual(result.returncode, 2, result)
        self.assertEqual(result.stdout, "", result)
        lines = result.stderr.splitlines()
        self.assertEqual(sorted(lines), sorted(expected), result.stderr)

    def test_good_config(self):
        _, r = self.check(self.good())
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "ok\n", ""))

    def test_example_config(self):
        path = os.path.join(os.path.dirname(__file__), "..", "..", "config", "lifeline.json")
        if not os.path.exists(path):
            self.skipTest("no config/lifeline.json")
        r = run_cli(["--check", "-c", path])
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)

    def test_server_without_port(self):
        cfg = self.good()
        cfg["routes"][0]["upstream"]["servers"][1] = LOOPBACK
        _, r = self.check(cfg)
        self.assertErrors(r, ['routes[0].upstream.servers[1]: expected "host:port", '
                              'got "127.0.0.1"'])

    def test_workers_out_of_range(self):
        cfg = self.good()
        cfg["workers"] = 5000
        _, r = self.check(cfg)
        self.assertErrors(r, ["workers: must be between 0 and 256, got 5000"])

    def test_unknown_key(self):
        cfg = self.good()
        cfg["routes"][0]["upstream"]["retrys"] = 3
        _, r = self.check(cfg)
        self.assertErrors(r, ["routes[0].upstream.retrys: unknown key"])

    def test_several_errors_at_once(self):
        cfg = self.good()
        cfg["workers"] = 5000
        cfg["routes"][0]["upstream"]["servers"][1] = LOOPBACK
        cfg["routes"][0]["upstream"]["retrys"] = 3
        _, r = self.check(cfg)
        self.assertErrors(r, [
            'routes[0].upstream.servers[1]: expected "host:port", got "127.0.0.1"',
            "workers: must be between 0 and 256, got 5000",
            "routes[0].upstream.retrys: unknown key",
        ])

    def test_invalid_json_names_line_and_column(self):
        text = '{\n  "log": {"level": "info"},\n  "workers": x,\n  "routes": []\n}\n'
        #                                      line 3, column 14 ^
        _, r = self.check(text)
        self.assertErrors(r, ["invalid JSON at line 3, column 14"])

    def test_missing_file(self):
        path = os.path.join(self.tmpdir, "nope.json")
        r = run_cli(["--check", "-c", path])
        self.assertErrors(r, [f"cannot read {path}: No such file or directory"])

    def test_lifeline_config_env(self):
        """Without -c, $LIFELINE_CONFIG names the file; -c wins over it."""
        good = write_config(self.tmpdir, self.good(), "good.json")
        missing = os.path.join(self.tmpdir, "missing.json")
        r = run_cli(["--check"], env={"LIFELINE_CONFIG": good})
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)
        r = run_cli(["--check"], env={"LIFELINE_CONFIG": missing})
        self.assertErrors(r, [f"cannot read {missing}: No such file or directory"])
        r = run_cli(["--check", "-c", good], env={"LIFELINE_CONFIG": missing})
        self.assertEqual((r.returncode, r.stdout), (0, "ok\n"), r.stderr)


class Options(LifelineTestCase):

    def test_version(self):
        for flag in ("--version", "-V"):
            r = run_cli([flag])
            self.assertEqual(r.returncode, 0, r)
            self.assertRegex(r.stdout, r"^lifeline \d+\.\d+\.\d+\n$")

    def test_help(self):
        for flag in ("--help", "-h"):
            r = run_cli([flag])
            self.assertEqual(r.returncode, 0, r)
            for opt in ("--config", "--check", "--log-level", "--log-format", "--version"):
                self.assertIn(opt, r.stdout)

    def test_unknown_option(self):
        r = run_cli(["--frobnicate"])
        self.assertEqual(r.returncode, 2, r)
        self.assertIn("--frobnicate", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_bad_option_values(self):
        for args in (["--log-level", "loud"], ["--log-format", "xml"], ["-c"]):
            with self.subTest(args=args):
                r = run_cli(args)
                self.assertEqual(r.returncode, 2, r)
                self.assertTrue(r.stderr.strip(), r)

    def test_stray_argument(self):
        r = run_cli(["extra"])
        self.assertEqual(r.returncode, 2, r)


class RunMode(LifelineTestCase):

    def test_bad_config_exits_2(self):
        """Run mode with an invalid config: exit 2, one `invalid config` log
        line per error, never ready."""
        cfg = config([route(free_port(), [free_port()])])
        cfg["workers"] = 5000
        cfg["routes"][0]["upstream"]["retrys"] = 3
        d = self.start_lifeline(cfg, wait_ready=False, expect_errors=True)
        self.assertEqual(d.wait_exit(scaled(10)), 2, d.log_tail())
        errs = d.find("invalid config")
        self.assertEqual(sorted(e["error"] for e in errs),
                         sorted(["workers: must be between 0 and 256, got 5000",
                                 "routes[0].upstream.retrys: unknown key"]), d.log_tail())
        for e in errs:
            self.assertEqual(e["file"], d.path)
            self.assertEqual(e["level"], "error")
        self.assertEqual(d.find("ready"), [])

    def test_missing_config_exits_2(self):
        path = os.path.join(self.tmpdir, "absent.json")
        d = Lifeline(None, self.tmpdir, args=["-c", path])
        self.addCleanup(d.kill)
        d.start()
        self.assertEqual(d.wait_exit(scaled(10)), 2, d.log_tail())
        errs = d.find("invalid config")
        self.assertEqual([e["error"] for e in errs],
                         [f"cannot read {path}: No such file or directory"], d.log_tail())

    def test_port_in_use_exits_1(self):
        """A listen port already held by another socket: `cannot listen`,
        exit 1, no `ready` (also when only the second route's port is taken)."""
        for taken in (0, 1):
            with self.subTest(taken_route=taken):
                holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self.track(holder)
                holder.bind((LOOPBACK, 0))
                holder.listen(1)
                busy = holder.getsockname()[1]
                ports = [free_port(), free_port()]
                ports[taken] = busy
                cfg = config([route(ports[0], [free_port()], name="a"),
                              route(ports[1], [free_port()], name="b")], workers=2)
                d = self.start_lifeline(cfg, wait_ready=False, expect_errors=True)
                self.assertEqual(d.wait_exit(scaled(10)), 1, d.log_tail())
                errs = d.find("cannot listen")
                self.assertEqual(len(errs), 1, d.log_tail())
                self.assertEqual(errs[0]["route"], "ab"[taken])
                self.assertEqual(errs[0]["address"], f"{LOOPBACK}:{busy}")
                self.assertRegex(errs[0]["error"], re.compile("in use", re.I))
                self.assertEqual(errs[0]["level"], "error")
                self.assertEqual(d.find("ready"), [])
                holder.close()

    def test_unresolvable_listen_host_exits_2(self):
        """A listen host name that does not resolve: --check and the daemon
        say the same, naming the key (`invalid config`, exit 2, no `ready`).
        (.invalid never resolves, RFC 6761.)"""
        cfg = config([route(free_port(), [free_port()])])
        cfg["routes"][0]["listen"] = "lifeline-test.invalid:5000"
        path = write_config(self.tmpdir, cfg, "unresolvable.json")
        r = run_cli(["--check", "-c", path])
        self.assertEqual((r.returncode, r.stdout), (2, ""), r)
        self.assertRegex(r.stderr, r'^routes\[0\]\.listen: cannot resolve '
                                   r'"lifeline-test\.invalid": .+\n$')
        d = self.start_lifeline(cfg, wait_ready=False, expect_errors=True)
        self.assertEqual(d.wait_exit(scaled(20)), 2, d.log_tail())
        errs = d.find("invalid config")
        self.assertEqual([e["error"] for e in errs], [r.stderr.strip()], d.log_tail())
        self.assertEqual(d.find("ready"), [])

    def test_config_from_env(self):
        """Without -c the daemon runs the file named by $LIFELINE_CONFIG."""
        echo = self.server(EchoServer)
        port = free_port()
        cfg = config([route(port, [echo.port])])
        path = write_config(self.tmpdir, cfg, "env.json")
        d = self.start_lifeline(None, env={"LIFELINE_CONFIG": path})
        self.assertEqual(d.find("starting")[0].get("config"), path)
        with connect(port, timeout=scaled(10)) as s:
            s.sendall(b"via env")
            self.assertEqual(recv_exact(s, 7), b"via env")
        self.assertEqual(d.stop(), 0)

    def test_text_log_format(self):
        """--log-format text: `TIMESTAMP LEVEL MESSAGE key=value ...`, values
        with spaces JSON-quoted."""
        echo = self.server(EchoServer)
        port = free_port()
        dead = free_port()
        d = Lifeline(config([route(port, [dead, echo.port], name="text_route", retries=1)]),
                     self.tmpdir, log_format="text")
        self.addCleanup(d.kill)
        d.start()
        d.wait_line(r" info ready( |$)")
        with connect(port, timeout=scaled(10)) as s:
            client = addr_str(s.getsockname())
            s.sendall(b"x")
            self.assertEqual(recv_exact(s, 1), b"x")
        d.wait_line(r" info session closed ")
        self.assertEqual(d.stop(), 0)
        for line in d.lines:
            self.assertRegex(line, TEXT_LINE)
        ready = [l for l in d.lines if re.search(r" info ready( |$)", l)]
        self.assertEqual(len(ready), 1, d.lines)
        self.assertIn(f" pid={d.pid}", ready[0])
        failed = [l for l in d.lines if " warn upstream connect failed " in l]
        self.assertEqual(len(failed), 1, d.lines)
        self.assertIn(f" client={client} ", failed[0])
        self.assertIn(f" server={LOOPBACK}:{dead} ", failed[0])
        self.assertIn(" attempt=1", failed[0])
        # "connection refused" or similar: a value with a space, JSON-quoted.
        self.assertRegex(failed[0], r' error="[^"]* [^"]*"( |$)')
        closed = [l for l in d.lines if " info session closed " in l]
        self.assertEqual(len(closed), 1, d.lines)
        self.assertIn(" route=text_route ", closed[0])
        self.assertIn(f" client={client} ", closed[0])
        self.assertIn(" reason=client_eof", closed[0])

    def test_config_log_format_and_level(self):
        """log.format json in the config (no command-line override) and
        --log-level debug: JSON lines, with the debug `upstream connected`."""
        echo = self.server(EchoServer)
        port = free_port()
        cfg = config([route(port, [echo.port])], log_format="json", log_level="warn")
        d = self.start_lifeline(cfg, log_format=None, args=["--log-level", "debug"])
        with connect(port, timeout=scaled(10)) as s:
            client = addr_str(s.getsockname())
            s.sendall(b"x")
            self.assertEqual(recv_exact(s, 1), b"x")
            up = d.wait_log("upstream connected", client=client)
        self.assertEqual(up["level"], "debug")
        closed = d.session_closed(client)
        self.assertEqual(closed["upstream_local_port"], up["upstream_local_port"])
        self.assertEqual(d.stop(), 0)
        for line in d.lines:
            self.assertIsInstance(json.loads(line), dict, line)

    def test_log_level_warn_hides_info(self):
        """--log-level warn: no info lines (no `ready`), warnings still shown."""
        port = free_port()
        dead = free_port()
        d = self.start_lifeline(config([route(port, [dead])]), wait_ready=False,
                                args=["--log-level", "warn"])
        # Without `ready`, wait for the port to accept instead.
        s = None

        def try_connect():
            nonlocal s
            try:
                s = connect(port, timeout=scaled(5))
                return True
            except ConnectionRefusedError:
                return False
        wait_until(try_connect, scaled(10), "the listen port to accept")
        with s:
            self.assertIn(wait_closed(s, timeout=scaled(10)), ("eof", "reset"))
        d.wait_log("upstream connect failed")
        self.assertEqual(d.stop(), 0)
        levels = {r["level"] for r in d.records}
        self.assertEqual(levels, {"warn"}, d.lines)



class ListenAddresses(LifelineTestCase):
    """--check, the start and a reload agree on which listen addresses can
    live together, because they run one check and bind alike."""

    def daemon_says(self, cfg):
        """(exit code or None if it became ready, its `invalid config` errors)."""
        d = self.start_lifeline(cfg, wait_ready=False, expect_errors=True)
        rec = d.wait_for(lambda r: r.get("msg") in ("ready", "stopped") or
                         r.get("level") == "error", scaled(10), "ready or an error")
        if rec.get("msg") == "ready":
            self.assertEqual(d.stop(), 0)
            return None, []
        code = d.wait_exit(scaled(10))
        return code, [e["error"] for e in d.find("invalid config")]

    def test_ipv4_and_ipv6_wildcards_share_a_port(self):
        """ "0.0.0.0:P" and "[::]:P" (IPV6_V6ONLY) are two routes in either
        order: --check says ok, the daemon starts and relays each family to
        its own route."""
        if not have_ipv6_loopback():
            self.skipTest("no IPv6 loopback")
        a, b = self.server(EchoServer), self.server(EchoServer, host=LOOPBACK6)
        for order in ((0, 1), (1, 0)):
            with self.subTest(order=order):
                port = free_port()
                routes = [route(port, [a.port], name="v4", listen_host="0.0.0.0"),
                          route(port, [f"[{LOOPBACK6}]:{b.port}"], name="v6", listen_host="::")]
                cfg = config([routes[i] for i in order])
                path = write_config(self.tmpdir, cfg, "wild.json")
                r = run_cli(["--check", "-c", path])
                self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "ok\n", ""))
                d = self.start_lifeline(cfg)
                for host in (LOOPBACK, LOOPBACK6):
                    with connect(port, host=host, timeout=scaled(10)) as c:
                        c.sendall(b"which family?")
                        self.assertEqual(recv_exact(c, 13), b"which family?")
                self.assertEqual({x["route"] for x in d.wait_count(2, "session closed")},
                                 {"v4", "v6"})
                self.assertEqual(d.stop(), 0)

    def test_overlapping_addresses_are_refused_alike(self):
        """A wildcard and a specific address of its family on one port, a
        dual_stack "[::]" and any IPv4 address on its port, the admin
        endpoint on a route's wildcard port: --check exits 2 naming the key,
        and the daemon refuses to start with the same lines."""
        p = free_port()
        dual = route(p, [free_port()], name="dual", listen_host="::")
        dual["dual_stack"] = True
        admin_wild = config([route(p, [free_port()], name="w", listen_host="0.0.0.0")])
        admin_wild["admin"] = {"listen": f"{LOOPBACK}:{p}"}
        cases = [
            ([route(p, [free_port()], name="w", listen_host="0.0.0.0"),
              route(p, [free_port()], name="s")],
             'routes[1].listen: "127.0.0.1:%d" overlaps routes[0].listen "0.0.0.0:%d" '
             '(a wildcard address holds its port on every address of its family)' % (p, p)),
            ([route(p, [free_port()], name="s"),
              route(p, [free_port()], name="w", listen_host="0.0.0.0")],
             'routes[1].listen: "0.0.0.0:%d" overlaps routes[0].listen "127.0.0.1:%d" '
             '(a wildcard address holds its port on every address of its family)' % (p, p)),
            ([dual, route(p, [free_port()], name="v4", listen_host="0.0.0.0")],
             'routes[1].listen: "0.0.0.0:%d" overlaps routes[0].listen "[::]:%d" '
             '(a dual_stack "[::]" listener holds its port on IPv4 addresses too)' % (p, p)),
            ([route(p, [free_port()], name="mapped", listen_host="::ffff:127.0.0.1")],
             'routes[0].listen: "[::ffff:127.0.0.1]:%d" is an IPv4-mapped address; listen on '
             'the IPv4 address itself' % p),
            (admin_wild,
             'admin.listen: "127.0.0.1:%d" overlaps routes[0].listen "0.0.0.0:%d" '
             '(a wildcard address holds its port on every address of its family)' % (p, p)),
        ]
        for i, (routes, want) in enumerate(cases):
            with self.subTest(case=i):
                cfg = routes if isinstance(routes, dict) else config(routes)
                path = write_config(self.tmpdir, cfg, "overlap.json")
                r = run_cli(["--check", "-c", path])
                self.assertEqual((r.returncode, r.stdout, r.stderr), (2, "", want + "\n"))
                code, errors = self.daemon_says(cfg)
                self.assertEqual((code, errors), (2, [want]))

    def test_reload_refuses_overlapping_addresses(self):
        """A reload to a file whose addresses overlap logs the same line
        and keeps the running config."""
        echo = self.server(EchoServer)
        p = free_port()
        cfg = config([route(p, [echo.port], name="a")])
        d = self.start_lifeline(cfg, expect_errors=True)
        bad = config([route(p, [echo.port], name="a"),
                      route(p, [echo.port], name="b", listen_host="0.0.0.0")])
        write_config(self.tmpdir, bad)
        d.signal(signal.SIGHUP)
        d.wait_log("reload failed: keeping the running config", timeout=scaled(10))
        self.assertEqual([e["error"] for e in d.find("invalid config")],
                         ['routes[1].listen: "0.0.0.0:%d" overlaps routes[0].listen '
                          '"127.0.0.1:%d" (a wildcard address holds its port on every address '
                          'of its family)' % (p, p)])
        with connect(p, timeout=scaled(10)) as c:
            c.sendall(b"still here")
            self.assertEqual(recv_exact(c, 10), b"still here")

    def test_dual_stack_takes_ipv4_clients(self):
        """dual_stack on "[::]:P": an IPv4 client of 127.0.0.1:P is relayed;
        it is seen as ::ffff:127.0.0.1, which client.allow matches against
        its IPv4 entries."""
        if not have_ipv6_loopback():
            self.skipTest("no IPv6 loopback")
        echo = self.server(EchoServer)
        port, denied_port = free_port(), free_port()
        r = route(port, [echo.port], name="dual", listen_host="::")
        r["dual_stack"] = True
        r["client"] = {"allow": ["127.0.0.0/8", "::1"]}
        r2 = route(denied_port, [echo.port], name="denied", listen_host="::")
        r2["dual_stack"] = True
        r2["client"] = {"allow": ["10.0.0.0/8"]}
        d = self.start_lifeline(config([r, r2]))
        with connect(port, host=LOOPBACK, timeout=scaled(10)) as c:
            me = c.getsockname()
            c.sendall(b"v4 via v6")
            self.assertEqual(recv_exact(c, 9), b"v4 via v6")
        rec = d.wait_log("session closed", route="dual")
        self.assertEqual(rec["client"], f"[::ffff:127.0.0.1]:{me[1]}", rec)
        try:
            c = connect(denied_port, host=LOOPBACK, timeout=scaled(10))
            self.assertIn(wait_closed(c, timeout=scaled(5)), ("eof", "reset"))
            c.close()
        except ConnectionResetError:
            pass  # the reset beat connect()
        rec = d.wait_log("connection denied", route="denied")
        self.assertEqual(rec["cause"], "allow", rec)


if __name__ == "__main__":
    unittest.main()
