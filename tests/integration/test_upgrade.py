"""Live upgrade on SIGUSR2: the process starts its executable again and the
new process takes over every listening socket and every established session
(the same TCP connections: the server sees no EOF and no reset, counters,
session ids and silence deadlines carry over); the old one exits 0. A new
process that fails (bad config, killed mid-hand-over) rolls the upgrade back:
the old process keeps every session and accepts again. A second SIGUSR2
during an upgrade is refused; a restart-only change (workers) takes effect.

Both processes write to the one stderr pipe the harness reads, so `d` (the
Lifeline of the first process) sees every process's log lines. The test
process makes itself a child subreaper while a test runs: the processes an
upgrade starts become its children once their parent exits, so their exit
status can be read (os.waitpid) and none is left as a zombie or running."""

import ctypes
import json
import os
import select
import signal
import socket
import threading
import time
import unittest

from harness import (BIN, KiB, MiB, AcceptServer, EchoServer, Flooder, Reader,
                     SinkServer, addr_str, bound_client_socket, config, connect, free_port,
                     log_time, raise_nofile, recv_exact, route, scaled, wait_closed, wait_stable,
                     wait_until, write_config)
from test_admin import AdminCase, with_admin

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_CHILD_SUBREAPER = 36
REAL_BIN = os.path.realpath(BIN)
# Copies of the binary a test runs as well (the symbolic link's versions).
OTHER_BINS = set()


# --------------------------------------------------------------------------
# processes that are not the test's Popen children


def proc_stat(pid):
    """(state, ppid, comm) from /proc/PID/stat, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), comm


def gone(pid):
    """Exited: no /proc entry, or a zombie."""
    st = proc_stat(pid)
    return st is None or st[0] in ("Z", "X")


def is_lifeline(pid):
    """A running (not zombie) process of the lifeline binary: checked before
    signalling a pid that may have been reaped (and reused) meanwhile."""
    if gone(pid):
        return False
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return exe.removesuffix(" (deleted)") in {REAL_BIN} | OTHER_BINS


def live_lifelines():
    """Pids of the running lifeline processes descended from this test
    process (a subreaper: the upgraded processes stay in its tree)."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_stat(int(name))
        if st is not None:
            children.setdefault(st[1], []).append((int(name), st))
    out, todo = set(), [os.getpid()]
    while todo:
        for pid, (state, _, _) in children.get(todo.pop(), []):
            todo.append(pid)
            if state not in ("Z", "X") and is_lifeline(pid):
                out.add(pid)
    return out


def reap(pid, timeout):
    """Waits for pid to exit. Its exit code if this process could reap it
    (it is ours as a subreaper), None if another process did (a new process
    that failed is its old process's child). AssertionError at the deadline."""
    result = []

    def exited():
        try:
            wpid, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            if gone(pid):
                result.append(None)
                return True
            return False
        if wpid == pid:
            result.append(os.waitstatus_to_exitcode(status))
            return True
        return False

    wait_until(exited, timeout, f"process {pid} to exit")
    return result[0]


def pause_until(t):
    """Lets time pass until monotonic time t: the test is about timing (a
    client that has been quiet for a while), not a wait for an event."""
    left = t - time.monotonic()
    if left > 0:
        time.sleep(left)


def no_pending(sock):
    """The peer has sent nothing more, and has not closed or reset the
    connection: a non-blocking read finds nothing to read."""
    p = select.poll()
    p.register(sock, select.POLLIN)
    if not p.poll(0):
        return "open"
    try:
        data = sock.recv(65536, socket.MSG_DONTWAIT)
    except (BlockingIOError, TimeoutError):
        return "open"
    except ConnectionResetError:
        return "reset"
    return "eof" if not data else f"{len(data)} unexpected bytes"


class UpgradeCase(AdminCase):

    def setUp(self):
        super().setUp()
        if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            self.fail(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
        self.addCleanup(_libc.prctl, PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        raise_nofile(12000)

    # -- the processes an upgrade starts

    def track_pid(self, pid):
        """Registers the clean-up of a process an upgrade started: stopped as
        an operator would (SIGTERM, again after a second), must exit 0 when
        it is ours to reap, SIGKILLed if it does not exit. Registered after
        the first process's clean-up, so it runs first: the stderr pipe the
        harness reads is closed once every process has exited."""
        self.addCleanup(self._stop_pid, pid)

    def _stop_pid(self, pid):
        if not is_lifeline(pid):
            try:
                os.waitpid(pid, os.WNOHANG)  # a zombie of ours
            except ChildProcessError:
                pass
            return
        code, problem = None, None
        try:
            os.kill(pid, signal.SIGCONT)  # in case a failed test left it stopped
            os.kill(pid, signal.SIGTERM)
            try:
                code = reap(pid, scaled(1))
            except AssertionError:
                os.kill(pid, signal.SIGTERM)  # open sessions hold the drain: end it
                code = reap(pid, scaled(10))
        except AssertionError:
            problem = f"lifeline pid {pid} did not exit on SIGTERM: killed"
        except ProcessLookupError:
            return
        finally:
            if is_lifeline(pid):
                os.kill(pid, signal.SIGKILL)
                try:
                    reap(pid, 10)
                except AssertionError:
                    pass
        if problem is None and code not in (0, None):
            problem = f"lifeline pid {pid} exited with status {code} when stopped at clean-up"
        if problem:
            raise AssertionError(problem)

    # -- one upgrade

    def upgrade(self, d, pid, expect_sessions=None, ready_after_exit=False, executable=None,
                others=()):
        """SIGUSR2 to the serving process `pid`; waits for the whole
        sequence: the old process's lines, the new one's, `ready` from the
        new pid; the old one exits 0, and the new one is then the only
        lifeline process (but `others`, pids of lifelines the test runs
        beside it). With
        ready_after_exit, the old process must be gone (exited: a zombie
        or reaped) when the new one's `ready` line is seen. Returns
        (new_pid, `upgraded` record)."""
        counts = {m: len(d.find(m)) for m in ("upgrade starting", "upgrade: taking over",
                                               "upgrade: took over")}
        os.kill(pid, signal.SIGUSR2)
        start = d.wait_count(counts["upgrade starting"] + 1, "upgrade starting")[-1]
        new = start["new_pid"]
        self.track_pid(new)
        if executable is None:
            self.assertEqual(os.path.realpath(start["executable"]), REAL_BIN, start)
        else:
            self.assertEqual(start["executable"], executable, start)
        d.wait_log("upgrade: the new process is ready to take over", new_pid=new)
        taking = d.wait_count(counts["upgrade: taking over"] + 1, "upgrade: taking over")[-1]
        self.assertEqual(taking["old_pid"], pid, taking)
        up = d.wait_log("upgraded", new_pid=new, timeout=scaled(20))
        took = d.wait_count(counts["upgrade: took over"] + 1, "upgrade: took over")[-1]
        self.assertEqual((took["sessions"], took["listeners"]),
                         (up["sessions"], up["listeners"]), (took, up))
        if expect_sessions is not None:
            self.assertEqual(up["sessions"], expect_sessions, up)
        d.wait_log("ready", pid=new, timeout=scaled(20))
        if ready_after_exit:
            # Looked at after the line was seen: a process gone now may
            # still have been running when it was logged, never the other
            # way round. A subtest: the rest of the test goes on if it fails.
            st = proc_stat(pid)
            with self.subTest("ready only after the old process exited", old_pid=pid):
                self.assertTrue(st is None or st[0] in ("Z", "X"),
                                f"the new process {new} logged `ready` while the old "
                                f"process {pid} was still running (state {st and st[0]})")

        # The old process has gone, with status 0 and without `stopped`.
        if pid == d.pid:
            # d.proc.wait rather than d.wait_exit: the latter joins the log
            # reader threads, which read on as long as the new process runs.
            code = d.proc.wait(timeout=scaled(10))
        else:
            code = reap(pid, scaled(10))
        self.assertEqual(code, 0, f"old process {pid} exit status\n{d.log_tail()}")
        self.assertTrue(gone(pid), f"old process {pid} still in /proc")
        self.assertEqual(live_lifelines() - set(others), {new},
                         "lifeline processes after the upgrade")
        self.assertEqual(d.find("stopped"), [], "the old process logged `stopped`")
        self.assertEqual(d.find("upgrade failed: serving on"), [], d.log_tail())
        return new, up

    # -- sessions

    def open_pairs(self, port, srv, n):
        """n sessions through lifeline to an AcceptServer: [(client, server
        side)], each checked with one round trip both ways."""
        pairs = []
        for i in range(n):
            cli = self.client(port, timeout=scaled(10))
            conn, _ = srv.accept()
            self.track(conn)
            pairs.append((cli, conn))
        for i, (cli, conn) in enumerate(pairs):
            cli.sendall(b"u%d;" % i)
        for i, (cli, conn) in enumerate(pairs):
            self.assertEqual(recv_exact(conn, len(b"u%d;" % i)), b"u%d;" % i)
            conn.sendall(b"d%d;" % i)
        for i, (cli, conn) in enumerate(pairs):
            self.assertEqual(recv_exact(cli, len(b"d%d;" % i)), b"d%d;" % i)
        return pairs

    def assert_pairs_relay(self, pairs, tag):
        """Each pair relays a fresh message both ways; the server side saw
        no EOF and no reset before it."""
        for i, (cli, conn) in enumerate(pairs):
            self.assertEqual(no_pending(conn), "open", f"server side of session {i} ({tag})")
            self.assertEqual(no_pending(cli), "open", f"client side of session {i} ({tag})")
        for i, (cli, conn) in enumerate(pairs):
            cli.sendall(b"%s up %d;" % (tag, i))
            conn.sendall(b"%s down %d;" % (tag, i))
        for i, (cli, conn) in enumerate(pairs):
            want = b"%s up %d;" % (tag, i)
            self.assertEqual(recv_exact(conn, len(want), timeout=scaled(10)), want)
            want = b"%s down %d;" % (tag, i)
            self.assertEqual(recv_exact(cli, len(want), timeout=scaled(10)), want)

    def plug(self, port, srv, total=64 * MiB):
        """A session that cannot settle until the test says so: its server
        floods it and its client (a small receive buffer) does not read, so
        lifeline holds bytes it cannot write. An upgrade's freeze waits for
        it (up to 5 s): the upgrade stays in progress until the test starts
        reading (returns the client, the server's Flooder; read with
        Reader(client))."""
        cli = self.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        cli.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KiB)
        connect(port, timeout=scaled(10), sock=cli)
        conn, _ = srv.accept()
        self.track(conn)
        flooder = Flooder(conn, total, seed=5).start()
        wait_stable(lambda: flooder.sent, 0.3, scaled(10), "the plug's flood to block")
        self.assertLess(flooder.sent, total, "the plug's flood did not block")
        return cli, flooder

    def assert_plug_drains(self, reader, flooder):
        flooder.join(scaled(20))
        reader.join(scaled(20))
        self.assertEqual(reader.end, "eof")
        self.assertEqual(reader.count, flooder.total)
        self.assertEqual(reader.hash.hexdigest(), flooder.hash.hexdigest(),
                         "the plug session's bytes differ from what its server sent")


class Streamer(threading.Thread):
    """Sends numbered lines ("000000042\\n") on one socket without pause
    (batches of 100, paced a little so the run stays small) until stopped."""

    BATCH = 100

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock = sock
        self.lines = 0
        self.error = None
        self.stop = threading.Event()

    def run(self):
        try:
            while not self.stop.is_set():
                i = self.lines
                self.sock.sendall(b"".join(b"%09d\n" % k for k in range(i, i + self.BATCH)))
                self.lines = i + self.BATCH
                time.sleep(0.002)  # pacing, not synchronisation
        except Exception as e:  # reported by the test
            self.error = e

    def finish(self, timeout):
        self.stop.set()
        self.join(timeout)
        return self.error


class Upgrade(UpgradeCase):

    def test_three_upgrades_under_a_stream(self):
        """A client on a fixed port streams numbered lines to a server that
        never writes, across three upgrades in a row. The server sees one
        connection, never EOF or reset, every line once and in order; the
        client sees no error; the session keeps its id and counters; each
        upgrade leaves exactly one lifeline process, the old one exited 0."""
        sink = self.server(SinkServer, keep=256 * MiB)
        port = free_port()
        d = self.start_lifeline(with_admin(config([route(port, [sink.port])])))
        cli = self.track(bound_client_socket())
        connect(port, timeout=scaled(10), sock=cli)
        client = addr_str(cli.getsockname())
        streamer = Streamer(cli)
        streamer.start()
        self.addCleanup(streamer.finish, 5)
        rec = sink.wait_connection(1)
        wait_until(lambda: rec.count > 10 * KiB, scaled(10), "the stream to reach the server")
        first = self.sessions(d)
        self.assertEqual(len(first), 1, first)
        self.assertEqual(first[0]["client"], client, first)

        pid = d.pid
        for k in range(1, 4):
            pid, up = self.upgrade(d, pid, expect_sessions=1, ready_after_exit=True)
            self.assertEqual(up["listeners"], 1, up)
            mark = rec.count
            wait_until(lambda: rec.count > mark + 10 * KiB, scaled(10),
                       f"the stream to flow after upgrade {k}")
            self.assertIsNone(rec.end, f"the server saw {rec.end} at upgrade {k}")
            self.assertEqual(len(sink.connections()), 1, "the server saw a new connection")
            self.assertIsNone(streamer.error, f"client error at upgrade {k}")
            now = self.sessions(d)
            self.assertEqual([(s["id"], s["client"], s["route"]) for s in now],
                             [(first[0]["id"], client, "r")], f"after upgrade {k}")
            self.assertGreaterEqual(now[0]["bytes_from_client"], mark, now)
            self.assertGreaterEqual(now[0]["age_ms"], first[0]["age_ms"], now)

        self.assertIsNone(streamer.finish(scaled(10)), "the client saw an error")
        total = streamer.lines * 10
        wait_until(lambda: rec.count >= total, scaled(10),
                   f"all {total} bytes at the server")
        self.assertEqual(rec.count, total)
        want = b"".join(b"%09d\n" % i for i in range(streamer.lines))
        if bytes(rec.data) != want:
            got = bytes(rec.data)
            at = next(i for i in range(min(len(got), len(want))) if got[i] != want[i])
            self.fail(f"the server's bytes differ from line {at // 10} on: "
                      f"got {got[at - at % 10:at - at % 10 + 40]!r}")
        self.assertEqual(no_pending(cli), "open", "the client got bytes, EOF or a reset")
        self.assertIsNone(rec.end)
        self.assertEqual(len(sink.connections()), 1)

        m = self.metrics(d)  # the third new process's, on the same admin port
        self.assertEqual(m.get("lifeline_upgrades_total", result="ok"), 3)
        self.assertEqual(m.get("lifeline_upgrades_total", result="failed"), 0)
        self.assertGreater(m.get("lifeline_upgrade_duration_seconds"), 0)

        # The session ends as any other, its counters carried over throughout.
        cli.shutdown(socket.SHUT_WR)
        self.assertTrue(rec.ended.wait(scaled(10)), "no EOF at the server after the client's")
        self.assertEqual(rec.end, "eof")
        self.assertEqual(wait_closed(cli, timeout=scaled(10)), "eof")
        self.assertSessionClosed(d, client, "client_eof", timeout=scaled(10),
                                 bytes_from_client=total, bytes_from_server=0)

    def test_idle_sessions_and_silence_deadlines_move(self):
        """1,000 idle sessions survive an upgrade and relay both ways after
        it. Twenty sessions on a route with silence_ms 3000, whose clients
        went quiet a second before the upgrade, are closed by the new
        process (client_silence) 3 s after their last byte, as without an
        upgrade: the deadline moved with them."""
        raise_nofile(8000)
        echo = self.server(EchoServer)
        p_idle, p_quiet = free_port(), free_port()
        quiet_route = route(p_quiet, [echo.port], name="quiet")
        quiet_route["client"] = {"heartbeat": {"silence_ms": 3000}}
        d = self.start_lifeline(with_admin(config([route(p_idle, [echo.port], name="idle"),
                                                   quiet_route], workers=2)))
        idle = [self.client(p_idle, timeout=scaled(10)) for _ in range(1000)]
        for i, c in enumerate(idle):
            c.sendall(b"i%d;" % i)
        for i, c in enumerate(idle):
            self.assertEqual(recv_exact(c, len(b"i%d;" % i)), b"i%d;" % i)

        quiet = [self.client(p_quiet, timeout=scaled(10)) for _ in range(20)]
        last_byte = []  # wall-clock time of each quiet client's last byte
        for i, c in enumerate(quiet):
            c.sendall(b"q%d;" % i)
            last_byte.append(time.time())
        t_quiet = time.monotonic()
        for i, c in enumerate(quiet):
            self.assertEqual(recv_exact(c, len(b"q%d;" % i)), b"q%d;" % i)

        pause_until(t_quiet + 1.0)
        pid, up = self.upgrade(d, d.pid, expect_sessions=1020)
        self.assertEqual(up["listeners"], 4, up)  # one socket per route and worker
        took = d.find("upgrade: took over")[0]
        took_at = d.records.index(took)
        self.assertLess(log_time(took), min(last_byte) + 2.5,
                        "the upgrade took too long for this test to tell the deadlines apart")

        tolerance = scaled(0.4)
        for i, c in enumerate(quiet):
            client = addr_str(c.getsockname())
            rec = d.session_closed(client, timeout=scaled(6))
            self.assertEqual(rec["reason"], "client_silence", rec)
            self.assertEqual(rec["route"], "quiet", rec)
            self.assertGreater(d.records.index(rec), took_at,
                               f"closed by the old process: {rec}")
            late = log_time(rec) - (last_byte[i] + 3.0)
            self.assertLessEqual(abs(late), tolerance,
                                 f"session {i} closed {late:+.3f} s off its deadline "
                                 f"(3 s after its last byte); upgrade at "
                                 f"{log_time(took) - last_byte[i]:.3f} s: {rec}")
            self.assertGreaterEqual(rec["duration_ms"], 3000, rec)
            self.assertEqual(rec["bytes_from_client"], len(b"q%d;" % i), rec)
        for c in quiet:
            self.assertIn(wait_closed(c, timeout=scaled(5)), ("eof", "reset"))

        for i, c in enumerate(idle):
            self.assertEqual(no_pending(c), "open", f"idle session {i}")
            c.sendall(b"after %d;" % i)
        for i, c in enumerate(idle):
            want = b"after %d;" % i
            self.assertEqual(recv_exact(c, len(want), timeout=scaled(10)), want)
        self.assertEqual(d.find("session closed", route="idle"), [])
        self.assertEqual(echo.accepted, 1020, "a session reconnected to the server")
        m = self.metrics(d)
        self.assertEqual(m.get("lifeline_sessions_active", route="idle"), 1000)
        self.assertEqual(m.get("lifeline_sessions_active", route="quiet"), 0)
        # The adopted sessions' descriptors count against the new process's
        # budget, two each, as if it had accepted them.
        self.assertEqual(m.get("lifeline_session_descriptors"), 2 * 1000)
        self.assertEqual(m.get("lifeline_liveness_expiries_total", route="quiet",
                               kind="silence"), 20)

    def test_connection_storm_during_upgrade(self):
        """Sixteen threads connect without pause from before SIGUSR2 until
        well after the new process is ready: every connection succeeds and
        its bytes come back through the echo server (half of them then
        close, the others are checked again at the end): the listening
        sockets moved without refusing or resetting anyone."""
        echo = self.server(EchoServer)
        port = free_port()
        d = self.start_lifeline(config([route(port, [echo.port])], workers=2))
        lock = threading.Lock()
        results = []  # (start time, error or None)
        kept = []     # (sock, n)
        stop = threading.Event()

        def one(n):
            t0 = time.monotonic()
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                connect(port, timeout=scaled(10), sock=s)
                msg = b"storm %d;" % n
                s.sendall(msg)
                got = recv_exact(s, len(msg), timeout=scaled(10))
                if got != msg:
                    raise AssertionError(f"echo {got!r} for {msg!r}")
                if n % 2:
                    s.shutdown(socket.SHUT_WR)
                    end = wait_closed(s, timeout=scaled(10))
                    if end != "eof":
                        raise AssertionError(f"closing: {end}")
                    s.close()
                else:
                    with lock:
                        kept.append((s, n))
                err = None
            except Exception as e:
                s.close()
                err = f"connection {n}: {e!r}"
            with lock:
                results.append((t0, err))

        counter = iter(range(1 << 30))

        def storm():
            while not stop.is_set():
                with lock:
                    n = next(counter)
                one(n)
                time.sleep(0.005)  # pacing, not synchronisation

        threads = [threading.Thread(target=storm, daemon=True) for _ in range(16)]

        def end_storm():
            stop.set()
            for t in threads:
                t.join(scaled(30))
            for s, _ in kept:
                s.close()
        self.addCleanup(end_storm)
        for t in threads:
            t.start()
        wait_until(lambda: len(results) >= 40, scaled(10), "the storm to start")
        t_signal = time.monotonic()
        pid, _ = self.upgrade(d, d.pid)
        t_ready = time.monotonic()
        wait_until(lambda: len(results) >= 200 and
                   sum(1 for t0, _ in results if t0 > t_ready) >= 100,
                   scaled(20), "100 connections after ready")
        stop.set()
        for t in threads:
            t.join(scaled(30))
            self.assertFalse(t.is_alive(), "a storm thread is stuck")
        errors = [e for _, e in results if e]
        self.assertEqual(errors[:10], [], f"{len(errors)} of {len(results)} connections failed")
        before = sum(1 for t0, _ in results if t0 < t_signal)
        after = sum(1 for t0, _ in results if t0 > t_ready)
        self.assertGreater(before, 0)
        self.assertGreaterEqual(after, 100)
        self.assertEqual(echo.accepted, len(results), "connections at the server")
        for s, n in kept:
            msg = b"again %d;" % n
            s.sendall(msg)
            self.assertEqual(recv_exact(s, len(msg), timeout=scaled(10)), msg)
        reasons = {r.get("reason") for r in d.find("session closed")}
        self.assertLessEqual(reasons, {"client_eof"}, "sessions closed for other reasons")

    def test_bad_config_rolls_back(self):
        """An invalid config file: the new process exits 2 before taking
        anything; the old one logs `upgrade failed`, keeps every session
        (they relay both ways, the servers saw no EOF) and accepts, counting
        failed 1. Once the file is fixed an upgrade succeeds (ok 1)."""
        srv = self.server(AcceptServer)
        port = free_port()
        d = self.start_lifeline(with_admin(config([route(port, [srv.port])])),
                                expect_errors=True)
        pairs = self.open_pairs(port, srv, 5)

        write_config(self.tmpdir, "{\"routes\": [")
        os.kill(d.pid, signal.SIGUSR2)
        start = d.wait_log("upgrade starting")
        new = start["new_pid"]
        self.track_pid(new)
        failed = d.wait_log("upgrade failed: serving on", new_pid=new)
        # Its exit and its end of the channel closing race to tell.
        self.assertIn(failed["reason"], ("the new process exited with status 2",
                                         "the new process closed the channel"), failed)
        self.assertTrue(d.find("invalid config"), "the new process did not say why")
        wait_until(lambda: gone(new), scaled(5), "the new process to be gone")
        self.assertTrue(d.running())
        self.assertEqual(live_lifelines(), {d.pid})

        self.assert_pairs_relay(pairs, b"rolled back")
        late = self.open_pairs(port, srv, 1)
        self.assertEqual(srv.accepted_count(), 6)
        m = self.metrics(d)
        self.assertEqual(m.get("lifeline_upgrades_total", result="failed"), 1)
        self.assertEqual(m.get("lifeline_upgrades_total", result="ok"), 0)
        self.assertEqual(d.find("upgraded"), [])
        # Nothing was frozen: nothing to roll back.
        self.assertEqual(d.find("upgrade rolled back: accepting again"), [])

        write_config(self.tmpdir, d.cfg)
        n_failed = len(d.find("upgrade failed: serving on"))
        pid, up = self.upgrade_after_failure(d, n_failed, expect_sessions=6)
        self.assert_pairs_relay(pairs + late, b"upgraded")
        m = self.metrics(d)
        self.assertEqual(m.get("lifeline_upgrades_total", result="ok"), 1)
        self.assertEqual(m.get("lifeline_upgrades_total", result="failed"), 1)
        self.assertEqual(srv.accepted_count(), 6)

    def upgrade_after_failure(self, d, n_failed, expect_sessions):
        """upgrade(), for a process whose log already has failed attempts."""
        counts = len(d.find("upgrade starting"))
        os.kill(d.pid, signal.SIGUSR2)
        new = d.wait_count(counts + 1, "upgrade starting")[-1]["new_pid"]
        self.track_pid(new)
        up = d.wait_log("upgraded", new_pid=new, timeout=scaled(20))
        self.assertEqual(up["sessions"], expect_sessions, up)
        d.wait_log("ready", pid=new, timeout=scaled(20))
        self.assertEqual(d.proc.wait(timeout=scaled(10)), 0)
        self.assertEqual(live_lifelines(), {new})
        self.assertEqual(len(d.find("upgrade failed: serving on")), n_failed)
        return new, up

    def test_new_process_killed_mid_handover(self):
        """2,000 sessions open; the new process is stopped as soon as it has
        said hello (the old one freezes and sends the sessions into the
        channel, where they wait), then killed. The old process logs
        `upgrade failed` and `rolled back`, keeps every session (the
        servers saw no EOF on any; many relay both ways) and accepts again.
        Depending on how far the sending got, the failure is the send (the
        channel full, its reader gone) or the channel's end: both are after
        hello, with descriptors in flight."""
        raise_nofile(12000)
        srv = self.server(AcceptServer, backlog=4096)
        port = free_port()
        d = self.start_lifeline(with_admin(config([route(port, [srv.port])], workers=2)),
                                expect_errors=True)
        pairs = self.open_pairs(port, srv, 2000)

        os.kill(d.pid, signal.SIGUSR2)
        new = d.wait_log("upgrade starting")["new_pid"]
        self.track_pid(new)
        d.wait_log("upgrade: the new process is ready to take over", new_pid=new)
        os.kill(new, signal.SIGSTOP)
        wait_until(lambda: (proc_stat(new) or ("?",))[0] == "T", scaled(5),
                   "the new process to stop")
        os.kill(new, signal.SIGKILL)

        failed = d.wait_log("upgrade failed: serving on", new_pid=new, timeout=scaled(15))
        d.wait_log("upgrade rolled back: accepting again", new_pid=new, timeout=scaled(15))
        self.assertIn(failed["reason"], ("cannot send the sockets to the new process",
                                         "the new process closed the channel",
                                         "the new process was killed by signal 9"), failed)
        self.assertEqual(d.find("upgraded"), [], f"committed after all: {failed}")
        self.assertTrue(d.running())
        wait_until(lambda: gone(new), scaled(5), "the new process to be gone")
        self.assertEqual(live_lifelines(), {d.pid})

        for i, (cli, conn) in enumerate(pairs):
            self.assertEqual(no_pending(conn), "open", f"server side of session {i}")
        self.assert_pairs_relay(pairs[::10], b"rolled back")
        late = self.open_pairs(port, srv, 3)
        self.assertEqual(srv.accepted_count(), 2003)
        self.assertEqual(d.find("session closed"), [])
        m = self.metrics(d)
        self.assertEqual(m.get("lifeline_upgrades_total", result="failed"), 1)
        self.assertEqual(m.get("lifeline_upgrades_total", result="ok"), 0)
        self.assertEqual(m.get("lifeline_sessions_active", route="r"), 2003)
        self.assert_pairs_relay(late, b"late")

        # The rolled-back process can still hand everything over.
        n_failed = len(d.find("upgrade failed: serving on"))
        self.upgrade_after_failure(d, n_failed, expect_sessions=2003)
        for i, (cli, conn) in enumerate(pairs):
            self.assertEqual(no_pending(conn), "open", f"server side of session {i} (upgraded)")
        self.assert_pairs_relay(pairs[5::10] + late, b"upgraded")
        self.assertEqual(srv.accepted_count(), 2003)
        m = self.metrics(d)
        self.assertEqual(m.get("lifeline_upgrades_total", result="failed"), 1)
        self.assertEqual(m.get("lifeline_upgrades_total", result="ok"), 1)
        self.assertEqual(m.get("lifeline_sessions_active", route="r"), 2003)

    def test_peer_that_stopped_reading_fails_the_upgrade_fast(self):
        """A session whose client has stopped reading while lifeline holds
        bytes for it cannot move (libuv's write queue cannot be paused).
        The upgrade fails within about half a second, naming it, instead of
        holding every session for the 5 s settle bound; a healthy session
        relays all along; once the client reads, its bytes arrive whole and
        the next upgrade moves everything."""
        srv = self.server(AcceptServer)
        port = free_port()
        d = self.start_lifeline(with_admin(config([route(port, [srv.port])])),
                                expect_errors=True)
        pairs = self.open_pairs(port, srv, 3)
        plug_cli, flooder = self.plug(port, srv)
        start = time.monotonic()
        os.kill(d.pid, signal.SIGUSR2)
        new = d.wait_log("upgrade starting")["new_pid"]
        self.track_pid(new)
        failed = d.wait_log("upgrade failed: serving on", new_pid=new, timeout=scaled(10))
        took = time.monotonic() - start
        self.assertEqual(failed["reason"],
                         "1 session with a peer that stopped reading (named in the lines above)",
                         failed)
        named = d.wait_log("upgrade: a peer is not reading")
        self.assertEqual(named["client"], addr_str(plug_cli.getsockname()), named)
        self.assertGreater(named["unwritten_bytes"], 0, named)
        self.assertLess(took, scaled(2.5), "held every session for the settle bound")
        d.wait_log("upgrade rolled back: accepting again", new_pid=new, timeout=scaled(10))
        wait_until(lambda: gone(new), scaled(5), "the new process to be gone")
        self.assert_pairs_relay(pairs, b"held")
        reader = Reader(plug_cli).start()
        self.assert_plug_drains(reader, flooder)
        n_failed = len(d.find("upgrade failed: serving on"))
        self.upgrade_after_failure(d, n_failed, expect_sessions=4)
        self.assert_pairs_relay(pairs, b"moved")

    def test_second_signal_refused_and_workers_change(self):
        """The config goes from 1 worker to 3 and SIGUSR2 comes twice: the
        second, sent while the first upgrade is surely in progress (its new
        process stopped for the moment), is refused with its log line.
        One upgrade happens; the new process runs 3 workers; the sessions
        relay, a plug session's flood (bytes lifeline held when the
        upgrade began) arrives whole, and new connections are served.

        Two SIGUSR2 sent back to back may reach the process as one (a
        pending signal is not queued twice): the second is sent once the
        first has been handled instead."""
        srv = self.server(AcceptServer)
        port = free_port()
        cfg = with_admin(config([route(port, [srv.port])], workers=1))
        d = self.start_lifeline(cfg)
        pairs = self.open_pairs(port, srv, 3)
        plug_cli, flooder = self.plug(port, srv)

        three = json.loads(json.dumps(cfg))
        three["workers"] = 3
        write_config(self.tmpdir, three)
        os.kill(d.pid, signal.SIGUSR2)
        new = d.wait_log("upgrade starting")["new_pid"]
        self.track_pid(new)
        # Stopped, the new process can neither finish nor fail the upgrade.
        os.kill(new, signal.SIGSTOP)
        wait_until(lambda: (proc_stat(new) or ("?",))[0] == "T", scaled(5),
                   "the new process to stop")
        os.kill(d.pid, signal.SIGUSR2)
        refused = d.wait_log("upgrade refused")
        self.assertEqual(refused["reason"], "an upgrade is in progress", refused)
        self.assertEqual(refused.get("new_pid"), new, refused)
        self.assertEqual(d.find("upgraded"), [])
        os.kill(new, signal.SIGCONT)
        reader = Reader(plug_cli).start()

        up = d.wait_log("upgraded", new_pid=new, timeout=scaled(20))
        self.assertEqual(up["sessions"], 4, up)
        ready = d.wait_log("ready", pid=new, timeout=scaled(20))
        self.assertEqual(ready["workers"], 3, ready)
        self.assertEqual(d.proc.wait(timeout=scaled(10)), 0)
        self.assertEqual(live_lifelines(), {new})
        self.assertEqual(len(d.find("upgrade starting")), 1)
        self.assertEqual(len(d.find("upgrade refused")), 1)

        self.assert_pairs_relay(pairs, b"three")
        self.assert_plug_drains(reader, flooder)
        late = self.open_pairs(port, srv, 9)
        self.assert_pairs_relay(late, b"late")
        m = self.metrics(d)
        self.assertEqual(m.get("lifeline_workers"), 3)
        self.assertEqual(m.get("lifeline_upgrades_total", result="ok"), 1)
        workers = {s["worker"] for s in self.sessions(d)}
        self.assertLessEqual(workers, {0, 1, 2})

    def test_sigterm_during_the_freeze_cancels_and_drains(self):
        """SIGTERM while the workers are settling (a session whose client
        does not read holds the freeze): the upgrade is cancelled, the new
        process killed, and the old one drains and exits 0 at its drain
        deadline, the held session closed as shutdown."""
        srv = self.server(AcceptServer)
        port = free_port()
        d = self.start_lifeline(config([route(port, [srv.port])], workers=2,
                                       drain_timeout_ms=1000), expect_errors=True)
        plug_cli, flooder = self.plug(port, srv)
        os.kill(d.pid, signal.SIGUSR2)
        new = d.wait_log("upgrade starting")["new_pid"]
        self.track_pid(new)
        d.wait_log("upgrade: the new process is ready to take over", new_pid=new)
        start = time.monotonic()
        os.kill(d.pid, signal.SIGTERM)
        cancelled = d.wait_log("upgrade cancelled", new_pid=new)
        self.assertEqual(cancelled["reason"], "shutdown requested", cancelled)
        self.assertEqual(d.proc.wait(timeout=scaled(10)), 0, d.log_tail())
        self.assertLess(time.monotonic() - start, scaled(5))
        self.assertEqual(d.find("upgraded"), [])
        wait_until(lambda: gone(new), scaled(5), "the new process to be gone")
        d.wait_log("session closed", reason="shutdown")

    def test_symbolic_link_switched_to_a_new_version(self):
        """Started through a symbolic link (/opt/lifeline/current style),
        SIGUSR2 runs the file the link names now: the link switched to
        another copy of the binary makes the new process that copy, and the
        session moves to it."""
        v1, v2 = (os.path.join(self.tmpdir, v) for v in ("v1", "v2"))
        for v in (v1, v2):
            OTHER_BINS.add(os.path.join(v, "lifeline"))
            os.mkdir(v)
            with open(BIN, "rb") as src, open(os.path.join(v, "lifeline"), "wb") as dst:
                dst.write(src.read())
            os.chmod(os.path.join(v, "lifeline"), 0o755)
        link = os.path.join(self.tmpdir, "current")
        os.symlink(os.path.join(v1, "lifeline"), link)
        srv = self.server(AcceptServer)
        port = free_port()
        # argv[0] is the link's path, as when a unit's ExecStart= names it.
        d = self.start_lifeline(config([route(port, [srv.port])]),
                                wrapper=["sh", "-c", 'l=$0; shift; exec "$l" "$@"', link])
        self.assertEqual(os.readlink(f"/proc/{d.pid}/exe"), os.path.join(v1, "lifeline"))
        pairs = self.open_pairs(port, srv, 1)
        os.remove(link)
        os.symlink(os.path.join(v2, "lifeline"), link)
        new, up = self.upgrade(d, d.pid, expect_sessions=1, executable=link)
        self.assertEqual(os.readlink(f"/proc/{new}/exe"), os.path.join(v2, "lifeline"))
        self.assert_pairs_relay(pairs, b"v2")


if __name__ == "__main__":
    unittest.main()
