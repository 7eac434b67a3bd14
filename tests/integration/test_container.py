"""What the container image and the systemd unit run, tested without a
container engine or systemd:

- the image's entrypoint (`lifeline --log-format json`, the configuration from
  $LIFELINE_CONFIG) as an unprivileged user: ready, one round trip, exit 0 on
  SIGTERM;
- lifeline as PID 1 of a new PID namespace (as in a container with no init):
  SIGTERM and SIGINT from outside still drain and exit 0;
- the image's HEALTHCHECK command, `lifeline probe`, against a Python HTTP
  server, and against lifeline's own admin endpoint where this build has one;
- the sd_notify messages the systemd unit (Type=notify, WatchdogSec=) relies
  on, on a notify socket the test owns, where this build sends them.

Needs root for a temporary user (useradd/userdel, setpriv) and for the PID
namespace (unshare); those tests skip with the reason otherwise. Everything
listens on 127.0.0.1 only.
"""

import http.server
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import unittest

from harness import (BIN, EchoServer, Lifeline, LifelineTestCase, addr_str, config,
                     connect, free_port, listen_port, recv_exact, route, run_cli, scaled,
                     wait_until, write_config)

IS_ROOT = os.geteuid() == 0


def _missing(*tools):
    return [t for t in tools if shutil.which(t) is None]


def _pid_namespace_problem():
    """None if `unshare --pid --fork --mount-proc` works here, else why not."""
    if not IS_ROOT:
        return "needs root (a new PID namespace with its own /proc)"
    missing = _missing("unshare")
    if missing:
        return f"missing {', '.join(missing)} (util-linux)"
    try:
        r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=scaled(10))
    except subprocess.TimeoutExpired:
        return "unshare --pid did not finish"
    if r.returncode != 0:
        return f"unshare --pid is not permitted here: {r.stderr.strip()}"
    return None


class WrappedLifeline(Lifeline):
    """A Lifeline started through a wrapper command (setpriv, unshare) that
    execs or forks the real binary: `wrapper + [BIN] + args`."""

    def __init__(self, cfg, directory, wrapper, **kwargs):
        super().__init__(cfg, directory, wrapper=wrapper, **kwargs)


class TempUser:
    """A system user (and group) made for one test and removed after it."""

    def __init__(self):
        self.name = "lltest" + secrets.token_hex(4)
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", "--user-group", self.name],
                       check=True, capture_output=True, timeout=scaled(20))
        pw = pwd.getpwnam(self.name)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid

    def remove(self):
        subprocess.run(["userdel", self.name], capture_output=True, timeout=scaled(20))
        # userdel removes the user's own group with USERGROUPS_ENAB; make sure.
        subprocess.run(["groupdel", self.name], capture_output=True, timeout=scaled(20))

    def setpriv(self):
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups"]


def proc_status(pid):
    """/proc/PID/status as a dict of its fields (raw text values)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def children_of(pid):
    """PIDs of a process's children (as seen from this PID namespace)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        pass
    kids = []  # kernels without the children file: scan every process
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def round_trip(test, port, payload=b"heartbeat 1\n"):
    """One client connection through lifeline to an echo server and back;
    returns the client's address as the log writes it."""
    with connect(port, timeout=scaled(10)) as c:
        c.sendall(payload)
        test.assertEqual(recv_exact(c, len(payload), timeout=scaled(10)), payload)
        return addr_str(c.getsockname())


class Entrypoint(LifelineTestCase):
    """The image's ENTRYPOINT + CMD, as the image's non-root user."""

    def setUp(self):
        super().setUp()
        # The user the daemon runs as must reach the config, as in the image.
        os.chmod(self.tmpdir, 0o755)

    def unprivileged_wrapper(self):
        """A command prefix that drops to a fresh non-root user (root), or none
        (already not root)."""
        if not IS_ROOT:
            return []
        missing = _missing("useradd", "userdel", "setpriv")
        if missing:
            self.skipTest(f"running as another user needs {', '.join(missing)}")
        user = TempUser()
        self.addCleanup(user.remove)
        probe = subprocess.run(user.setpriv() + [BIN, "--version"], capture_output=True,
                               text=True, timeout=scaled(10))
        if probe.returncode != 0:
            self.skipTest(f"{BIN} cannot be run by an unprivileged user here "
                          f"(directory permissions?): {probe.stderr.strip()}")
        self.user = user
        return user.setpriv()

    def test_entrypoint_as_non_root_user(self):
        wrapper = self.unprivileged_wrapper()
        echo = self.server(EchoServer)
        # The shipped configuration says "text"; the image's CMD makes it JSON.
        cfg = config([route(free_port(), [echo.port])], log_format="text")
        d = WrappedLifeline(cfg, self.tmpdir, wrapper, use_config_flag=False, log_format="json")
        d.env = {"LIFELINE_CONFIG": d.path}  # the image's ENV, pointing at the written file
        self._daemons.append(d)
        self.addCleanup(self._finish, d, False)
        d.start()

        starting = d.wait_log("starting")
        self.assertEqual(starting.get("config"), d.path, "config not taken from LIFELINE_CONFIG")
        ready = d.wait_ready()
        self.assertEqual(ready.get("pid"), d.pid)  # setpriv execs: the same process
        uids = proc_status(d.pid)["Uid"].split()
        self.assertNotIn("0", uids, f"lifeline runs with uid {uids}")
        if wrapper:
            self.assertEqual(uids, [str(self.user.uid)] * 4)

        client = round_trip(self, listen_port(d))
        self.assertSessionClosed(d, client, "client_eof")

        self.assertEqual(d.stop(scaled(10)), 0)
        d.wait_log("stopped", timeout=scaled(1))
        self.assertEqual(d.errors(), [])


PID_NAMESPACE_PROBLEM = _pid_namespace_problem()


@unittest.skipIf(PID_NAMESPACE_PROBLEM, f"PID 1 tests: {PID_NAMESPACE_PROBLEM}")
class AsPid1(LifelineTestCase):
    """lifeline as PID 1, as in a container without an init. The kernel gives
    PID 1 no default signal actions: a signal lifeline had no handler for
    would be ignored, and the container could only be SIGKILLed."""

    def start_pid1(self, drain_timeout_ms=5000):
        self.echo = self.server(EchoServer)
        cfg = config([route(free_port(), [self.echo.port])], drain_timeout_ms=drain_timeout_ms)
        d = WrappedLifeline(cfg, self.tmpdir, ["unshare", "--pid", "--fork", "--mount-proc"],
                            use_config_flag=False, log_format="json")
        d.env = {"LIFELINE_CONFIG": d.path}
        d.start()
        self.addCleanup(self.kill_namespace, d)
        # The unshare process forks lifeline into the new namespace and waits
        # for it (it ignores SIGTERM itself): signals go to the child.
        kids = wait_until(lambda: children_of(d.pid), scaled(10), what="lifeline under unshare")
        self.assertEqual(len(kids), 1, kids)
        self.pid1 = kids[0]
        wait_until(lambda: proc_status(self.pid1).get("NSpid", "").split()[-1:] == ["1"],
                   scaled(10), what="lifeline to be PID 1 of its namespace")
        ready = d.wait_ready()
        self.assertEqual(ready.get("pid"), 1, "lifeline does not see itself as PID 1")
        return d

    def kill_namespace(self, d):
        """Killing PID 1 ends the whole namespace; then unshare exits."""
        try:
            if d.running():
                os.kill(self.pid1, signal.SIGKILL)
        except (ProcessLookupError, AttributeError):
            pass
        d.kill()

    def stop_with(self, d, sig):
        start = time.monotonic()
        os.kill(self.pid1, sig)
        # unshare exits with lifeline's status (or dies of the same signal).
        code = d.wait_exit(scaled(10))
        return code, time.monotonic() - start

    def check_signal(self, sig):
        d = self.start_pid1()
        client = round_trip(self, listen_port(d))
        self.assertSessionClosed(d, client, "client_eof")
        code, took = self.stop_with(d, sig)
        self.assertEqual(code, 0, f"exit status under {sig.name}\n{d.log_tail()}")
        self.assertLess(took, scaled(5))
        d.wait_log("shutting down", timeout=scaled(1), signal=sig.name)
        d.wait_log("stopped", timeout=scaled(1))
        self.assertEqual(d.errors(), [])

    def test_sigterm_as_pid1(self):
        self.check_signal(signal.SIGTERM)

    def test_sigint_as_pid1(self):
        self.check_signal(signal.SIGINT)

    def test_second_sigterm_as_pid1_ends_the_drain(self):
        """An open session holds the drain; a second SIGTERM (what an impatient
        `docker stop` sequence sends) closes it at once and exits 0."""
        d = self.start_pid1(drain_timeout_ms=60000)
        c = connect(listen_port(d), timeout=scaled(10))
        self.addCleanup(c.close)
        c.sendall(b"held\n")
        self.assertEqual(recv_exact(c, 5, timeout=scaled(10)), b"held\n")
        os.kill(self.pid1, signal.SIGTERM)
        d.wait_log("shutting down", signal="SIGTERM")
        self.assertTrue(d.running(), "exited while a session was still open")
        code, took = self.stop_with(d, signal.SIGTERM)
        self.assertEqual(code, 0, d.log_tail())
        self.assertLess(took, scaled(5))
        d.wait_log("session closed", timeout=scaled(1), reason="shutdown")
        d.wait_log("stopped", timeout=scaled(1))

    def test_sigusr2_refused_as_pid1(self):
        """A live upgrade ends the old process, and PID 1's end would end
        the container: refused with a line saying why; sessions go on."""
        d = self.start_pid1()
        c = connect(listen_port(d), timeout=scaled(10))
        self.addCleanup(c.close)
        os.kill(self.pid1, signal.SIGUSR2)
        line = d.wait_log("upgrade refused")
        self.assertIn("PID 1", line.get("reason", ""))
        c.sendall(b"still here\n")
        self.assertEqual(recv_exact(c, 11, timeout=scaled(10)), b"still here\n")
        self.assertFalse(d.find("upgrade starting"), d.log_tail())
        c.close()
        code, _ = self.stop_with(d, signal.SIGTERM)
        self.assertEqual(code, 0, d.log_tail())


TINI = """#!/usr/bin/python3
# A stand-in for tini / docker-init: runs its command, exits with it.
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


class UnderContainerInit(LifelineTestCase):
    """lifeline as the child of a minimal container init (docker run
    --init, tini), which exits when its child does: a live upgrade's old
    process exiting would end the container and the new process with it."""

    def test_sigusr2_refused_under_tini(self):
        problem = _pid_namespace_problem()
        if problem:
            self.skipTest(problem)
        tini = os.path.join(self.tmpdir, "tini")
        with open(tini, "w") as f:
            f.write(TINI)
        os.chmod(tini, 0o755)
        echo = self.server(EchoServer)
        cfg = config([route(free_port(), [echo.port])])
        d = WrappedLifeline(cfg, self.tmpdir, ["unshare", "--pid", "--fork", "--mount-proc", tini])
        d.start()
        self.addCleanup(d.kill)
        init = wait_until(lambda: children_of(d.pid), scaled(10), what="the init")[0]
        pid = wait_until(lambda: children_of(init), scaled(10), what="lifeline under the init")[0]
        d.wait_ready()
        c = connect(listen_port(d), timeout=scaled(10))
        self.addCleanup(c.close)
        os.kill(pid, signal.SIGUSR2)
        line = d.wait_log("upgrade refused")
        self.assertEqual(line.get("init"), "tini", line)
        c.sendall(b"still here\n")
        self.assertEqual(recv_exact(c, 11, timeout=scaled(10)), b"still here\n")
        self.assertFalse(d.find("upgrade starting"), d.log_tail())
        c.close()
        os.kill(pid, signal.SIGTERM)
        self.assertEqual(d.wait_exit(scaled(10)), 0, d.log_tail())


class _Health(http.server.BaseHTTPRequestHandler):
    """/healthz 200, /readyz 503, anything else 404."""

    def do_GET(self):
        code = {"/healthz": 200, "/readyz": 503}.get(self.path, 404)
        body = b"ok\n" if code == 200 else b"no\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Healthcheck(LifelineTestCase):
    """The image's HEALTHCHECK command: `lifeline probe URL`."""

    def http_server(self):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True)
        t.start()
        self.addCleanup(t.join, 5)
        self.addCleanup(srv.server_close)
        self.addCleanup(srv.shutdown)
        return srv.server_address[1]

    def test_probe_against_python_http_server(self):
        port = self.http_server()
        r = run_cli(["probe", f"http://127.0.0.1:{port}/healthz"])
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "", ""))
        r = run_cli(["probe", f"http://127.0.0.1:{port}/readyz"])
        self.assertEqual((r.returncode, r.stdout, r.stderr), (1, "", "probe: HTTP 503\n"))
        url = f"http://127.0.0.1:{free_port()}/healthz"
        r = run_cli(["probe", url])
        self.assertEqual(r.returncode, 1)
        self.assertTrue(r.stderr.startswith(f"probe: {url}: "), r.stderr)

    def admin_config(self):
        echo = self.server(EchoServer)
        cfg = config([route(free_port(), [echo.port])])
        cfg["admin"] = {"listen": f"127.0.0.1:{free_port()}"}
        r = run_cli(["--check", "-c", write_config(self.tmpdir, cfg, "check.json")])
        if r.returncode != 0:
            self.skipTest(f"this build has no admin endpoint: {r.stderr.strip()}")
        return cfg

    def test_probe_against_lifeline_admin_endpoint(self):
        """Exactly the HEALTHCHECK and the Kubernetes probes: /healthz and
        /readyz of a ready lifeline answer 2xx."""
        cfg = self.admin_config()
        d = self.start_lifeline(cfg)
        base = "http://" + cfg["admin"]["listen"]
        for path in ("/healthz", "/readyz"):
            with self.subTest(path=path):
                r = run_cli(["probe", base + path])
                self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "", ""))
        self.assertEqual(d.stop(), 0)


class SystemdNotify(LifelineTestCase):
    """What the unit's Type=notify and WatchdogSec= rely on, on a notify
    socket the test owns (as systemd's would be)."""

    def notify_socket(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        path = os.path.join(self.tmpdir, "notify")
        sock.bind(path)
        return sock, path

    def next_message(self, sock, timeout):
        """The next datagram's KEY=value lines, as a dict."""
        sock.settimeout(timeout)
        try:
            data = sock.recv(4096)
        except socket.timeout:
            raise AssertionError(f"no notify message within {timeout:.1f} s") from None
        return dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)

    def wait_message(self, sock, key, timeout):
        """Skips other messages (watchdog pings) until one carries `key`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}= message within {timeout:.1f} s")
            msg = self.next_message(sock, left)
            if key in msg:
                return msg

    def test_ready_then_stopping(self):
        sock, path = self.notify_socket()
        echo = self.server(EchoServer)
        d = self.start_lifeline(config([route(free_port(), [echo.port])]), wait_ready=False,
                                env={"NOTIFY_SOCKET": path})
        msg = self.wait_message(sock, "READY", scaled(15))
        self.assertEqual(msg["READY"], "1")
        # READY=1 means clients can connect: the "ready" line is out, the port accepts.
        d.wait_ready(timeout=scaled(1))
        round_trip(self, listen_port(d))
        d.signal(signal.SIGTERM)
        msg = self.wait_message(sock, "STOPPING", scaled(10))
        self.assertEqual(msg["STOPPING"], "1")
        self.assertEqual(d.wait_exit(scaled(10)), 0)

    def test_watchdog_pings(self):
        sock, path = self.notify_socket()
        echo = self.server(EchoServer)
        d = self.start_lifeline(config([route(free_port(), [echo.port])]),
                                env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
        self.wait_message(sock, "READY", scaled(5))
        # Every 100 ms (half of WATCHDOG_USEC): three within a generous bound.
        for _ in range(3):
            self.assertEqual(self.wait_message(sock, "WATCHDOG", scaled(1))["WATCHDOG"], "1")
        self.assertEqual(d.stop(), 0)

    def test_reload_messages(self):
        sock, path = self.notify_socket()
        echo = self.server(EchoServer)
        d = self.start_lifeline(config([route(free_port(), [echo.port])]),
                                env={"NOTIFY_SOCKET": path})
        self.wait_message(sock, "READY", scaled(5))
        before = time.monotonic_ns() // 1000
        d.signal(signal.SIGHUP)
        msg = self.wait_message(sock, "RELOADING", scaled(10))
        self.assertEqual(msg["RELOADING"], "1")
        # MONOTONIC_USEC is CLOCK_MONOTONIC in µs, taken when the reload began.
        self.assertGreaterEqual(int(msg["MONOTONIC_USEC"]), before)
        self.assertLessEqual(int(msg["MONOTONIC_USEC"]), time.monotonic_ns() // 1000)
        self.assertEqual(self.wait_message(sock, "READY", scaled(10))["READY"], "1")
        self.assertEqual(d.stop(), 0)

    def test_upgrade_messages(self):
        """A live upgrade under Type=notify with NotifyAccess=main: the old
        (main) process names the new one (MAINPID=), which then says READY=1
        and takes over the watchdog pings (WATCHDOG_PID named the old one).
        Checked by the sender's pid (SCM_CREDENTIALS), as systemd does."""
        sock, path = self.notify_socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        echo = self.server(EchoServer)
        cfg = config([route(free_port(), [echo.port])])
        # $$ is the shell's pid, which lifeline keeps when the shell execs it.
        d = WrappedLifeline(cfg, self.tmpdir, ["sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"',
                                               "sh"],
                            env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
        d.start()
        self.addCleanup(d.kill)
        old = d.pid

        def next_from(key, timeout):
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {key}= message within {timeout:.1f} s")
                sock.settimeout(left)
                try:
                    data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
                except socket.timeout:
                    continue
                pid = next(int.from_bytes(c[2][:4], "little") for c in anc
                           if c[0] == socket.SOL_SOCKET and c[1] == socket.SCM_CREDENTIALS)
                msg = dict(l.split("=", 1) for l in data.decode().split("\n") if "=" in l)
                if key in msg:
                    return pid, msg

        self.assertEqual(next_from("READY", scaled(10))[0], old)
        self.assertEqual(next_from("WATCHDOG", scaled(2))[0], old)
        c = connect(listen_port(d), timeout=scaled(10))
        self.addCleanup(c.close)
        c.sendall(b"before\n")
        self.assertEqual(recv_exact(c, 7, timeout=scaled(10)), b"before\n")
        d.signal(signal.SIGUSR2)
        new = d.wait_log("upgrade starting")["new_pid"]
        self.addCleanup(lambda: os.path.exists(f"/proc/{new}") and os.kill(new, signal.SIGKILL))
        pid, msg = next_from("MAINPID", scaled(15))
        self.assertEqual((pid, int(msg["MAINPID"])), (old, new))
        pid, msg = next_from("READY", scaled(15))
        self.assertEqual((pid, msg["READY"]), (new, "1"))
        self.assertEqual(d.wait_exit(scaled(10)), 0, d.log_tail())
        for _ in range(3):  # every 200 ms, from the new process only
            self.assertEqual(next_from("WATCHDOG", scaled(2))[0], new)
        c.sendall(b"after\n")
        self.assertEqual(recv_exact(c, 6, timeout=scaled(10)), b"after\n")
        c.close()
        os.kill(new, signal.SIGTERM)
        self.assertEqual(next_from("STOPPING", scaled(10))[0], new)
        wait_until(lambda: not os.path.exists(f"/proc/{new}"), scaled(10),
                   what="the new process to exit")


if __name__ == "__main__":
    unittest.main()
