#!/usr/bin/env python3
"""Fault test: live upgrade (SIGUSR2) and a returning fixed-port client.  The server
must see EOF on the old connection BEFORE it accepts the new one (in the legacy
server's own record order), whichever lifeline process ends the old session.

case U1  upgrade first, then the client host crashes and returns from the same fixed
         port (test_takeover.py case 2, after the upgrade).  During the upgrade the
         server sees nothing (no EOF, no reset, no accept) and the heartbeats keep
         arriving on the same connection; the old process logs `upgraded`, exits 0;
         the new one logs `upgrade: took over` and `ready`.  Then: EOF on the old
         connection, then the new accept; the new upstream port is not the client's;
         the new data arrives; the close line (from the new process: the old one is
         gone by then) says client_reset or replaced, and counts every byte the
         server got, those relayed before the upgrade included.
case U2  the client host crashes right before SIGUSR2 and returns as soon as
         `upgrade starting` is read: still EOF before the new accept, and the
         returning client is served, by the new process too.  The whole upgrade takes
         a few ms here, less than starting legacy_client.py or one nft call, so: the
         host's network comes back (nothing in it, nothing crosses) before SIGUSR2,
         and the returning client is a socket of this script, bound to the fixed
         port, whose connect() follows the log line at once, after a delay swept
         over LL_FAULT_UPGRADE_DELAYS (ms, default 0,1,2,3,5,8; one topology each),
         so that the return lands in the upgrade's different steps (old process
         still relaying; sessions held and moving; new process serving).
case U3  the identity registry moves with the sessions (identity "address"): the
         server writes, the first client (small receive buffer) does not read, so
         the old process cannot settle its session and the upgrade waits,
         accepting nothing; a second connection of that client address (another
         port) waits meanwhile in the listening socket's queue; then the first
         client reads, the session moves, and the new process, accepting the
         waiting connection, must find the adopted session's identity: the
         adopted session closes as replaced, the server sees EOF on the first
         connection, then accepts the second.  (In U1 and U2 the client's RST ends
         the old session before the new connection arrives, so the registry never
         decides anything there.)

The processes the upgrade starts are not this script's children: this script makes
itself a child subreaper (PR_SET_CHILD_SUBREAPER), so that a new lifeline whose
parent (the old one) has exited is reparented here and can be waited for; each is
sent SIGTERM at the end of its case (it must exit 0), SIGKILL if it does not, and
whatever else is left in the namespaces is killed when the topology is torn down.

Exit 0 pass, 1 fail, 77 skip; the last line is "N passed, N failed".
"""

import ctypes
import os
import signal
import socket
import sys
import threading
import time
import traceback

import faultlib
import scenarios
from faultlib import CLIENT_PORT, Rig, margin, ms, stats_ms
from netns import wait_for

PR_SET_CHILD_SUBREAPER = 36
# the case 2 liveness settings: keepalive slower than the return, so the returning
# client's SYN, lifeline's challenge ACK and the client's RST end the old session
HB = {"keepalive_idle_ms": 5000, "keepalive_interval_ms": 1000, "keepalive_count": 2, "user_timeout_ms": 0}
OK_REASONS = ("client_reset", "replaced")


def _become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        print("  note: PR_SET_CHILD_SUBREAPER failed (%s): the new lifeline's exit status "
              "cannot be read" % os.strerror(e), flush=True)


def _proc_state(pid):
    """The state letter of /proc/PID/stat, or None when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class UpgradeRig(Rig):
    """A Rig whose lifeline may be replaced by a live upgrade.  self.ll keeps reading
    the one pipe both processes write to (the new one inherits stderr); the processes
    an upgrade started (new_pid of `upgrade starting`, pid of `ready`) are stopped
    first when the rig is left, whatever happened."""

    def __init__(self, *a, **kw):
        Rig.__init__(self, *a, **kw)
        self.exit_status = {}            # pid -> exit code (or -signal), for upgrade-started ones

    def old_pid(self):
        return self.ll.proc.pid

    def lines_since(self, mono):
        with self.ll._lock:
            return [(m, i) for m, i in self.ll.lines if m >= mono and isinstance(i, dict)]

    def log_after(self, msg, mono, timeout, pred=lambda r: True, what=None):
        """(mono, record) of the first line `msg` read at or after `mono`."""
        def f():
            for m, r in self.lines_since(mono):
                if r.get("msg") == msg and pred(r):
                    return m, r
            return None
        return wait_for(f, timeout, what or "lifeline to log %r" % msg, interval=0.002)

    def upgrade_pids(self):
        old = self.old_pid()
        pids = set()
        with self.ll._lock:
            for _, r in self.ll.lines:
                if not isinstance(r, dict):
                    continue
                if r.get("msg") in ("upgrade starting", "upgraded") and isinstance(r.get("new_pid"), int):
                    pids.add(r["new_pid"])
                elif r.get("msg") == "ready" and isinstance(r.get("pid"), int):
                    pids.add(r["pid"])
        pids.discard(old)
        pids.discard(0)
        return sorted(pids)

    def reap(self, pid, timeout):
        """Waits up to `timeout` for `pid` to end; its exit code when it is our child
        (subreaper), else None once it is gone.  Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
                if got == pid:
                    code = os.waitstatus_to_exitcode(status)
                    self.exit_status[pid] = code
                    return code
            except ChildProcessError:
                st = _proc_state(pid)
                if st is None or st in ("Z", "X"):   # a zombie of the old process: it is gone
                    return self.exit_status.get(pid)
            if time.monotonic() >= deadline:
                raise TimeoutError("process %d still running after %.1f s" % (pid, timeout))
            time.sleep(0.01)

    def stop_upgraded(self):
        """SIGTERM every live process an upgrade started; SIGKILL if it will not end.
        Returns [(pid, exit code or None, how)]."""
        out = []
        for pid in self.upgrade_pids():
            st = _proc_state(pid)
            if pid in self.exit_status or st is None:
                continue
            how = "SIGTERM"
            if st in ("Z", "X"):
                how = "had exited before the end of the case"
            else:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                code = self.reap(pid, margin(10) + self.drain_ms / 1000.0)
            except TimeoutError:
                how = "SIGKILL (did not exit on SIGTERM)"
                try:
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    code = self.reap(pid, 5)
                except TimeoutError:
                    code = None
            self.note("lifeline %d stopped: %s, exit %s" % (pid, how, code))
            out.append((pid, code, how))
        return out

    def stop_lifeline(self, check=True):
        """The new process(es) first (SIGTERM, exit 0), then Rig's check on the old one:
        exit 0, every line of the shared log JSON, no error-level line."""
        try:
            stopped = self.stop_upgraded()
        except Exception as e:            # never leave one running: the topology kills the rest
            stopped = [(None, None, "error: %s" % e)]
        Rig.stop_lifeline(self, check)
        if check and stopped:
            self.checks.check(all(code == 0 and how == "SIGTERM" for _, code, how in stopped),
                              "%s: the lifeline started by the upgrade exits 0 on SIGTERM" % self.case,
                              "; ".join("pid %s: %s, exit %s" % s for s in stopped))

    def __exit__(self, exc_type, exc, tb):
        try:
            return Rig.__exit__(self, exc_type, exc, tb)
        finally:
            # whatever happened above (the topology's teardown kills what is left in
            # the namespaces too): no process an upgrade started outlives its case
            for pid in self.upgrade_pids():
                if _proc_state(pid) not in (None, "Z", "X"):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass


def _wire_texts(rig, since):
    rig.wire.poll()
    return [t for _, _, t in scenarios._wire_events(rig.wire.records, since, rig.topo, True)]


def _returned(rig, old, old_port, served_bound):
    """The returning client accepted and its data in, the old connection's
    end, and lifeline's close line for the old session."""
    i_acc, acc2 = rig.srv_wait(lambda r: r["event"] == "accept" and r["conn"] != old, served_bound + 5,
                               "the server accepting the returning client")
    _, data2 = rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == acc2["conn"], margin(2),
                            "the returning client's data at the server")
    end = rig.srv_end(old)
    m_close, close = rig.wait_close(lambda r: r["client"] == rig.client_addr() and
                                    r["upstream_local_port"] == old_port,
                                    margin(2), "lifeline's close line for the old session")
    return i_acc, acc2, data2, end, m_close, close


def _port(addr):
    return int(addr.rsplit(":", 1)[1])




def _signal_upgrade(rig):
    """SIGUSR2 to the running lifeline; returns (mono of the signal, `upgrade starting` record)."""
    t = rig.note("SIGUSR2 to lifeline %d" % rig.old_pid())
    os.kill(rig.old_pid(), signal.SIGUSR2)
    _, start = rig.log_after("upgrade starting", t, margin(5))
    rig.note("upgrade starting: new_pid %s" % start.get("new_pid"))
    return t, start


def _await_upgraded(rig, t_sig, new_pid, timeout):
    """Waits for the whole upgrade: `upgraded` (old), the old's exit, `upgrade: took
    over` and `ready` from new_pid.  Returns a dict of what was seen."""
    m_up, up = rig.log_after("upgraded", t_sig, timeout)
    m_took, took = rig.log_after("upgrade: took over", t_sig, timeout)
    try:
        rig.ll.proc.wait(timeout)
    except Exception:
        pass
    rc = rig.ll.proc.poll()
    m_ready, ready = rig.log_after("ready", t_sig, timeout, lambda r: r.get("pid") == new_pid,
                                   "the new lifeline (pid %s) to log ready" % new_pid)
    rig.note("upgrade done: old exited %s; new ready (pid %s)" % (rc, ready.get("pid")))
    return {"upgraded": up, "m_upgraded": m_up, "took": took, "m_took": m_took, "old_rc": rc,
            "ready": ready, "m_ready": m_ready}


def _check_upgrade(c, case, rig, u, new_pid, sessions):
    up, took, ready = u["upgraded"], u["took"], u["ready"]
    c.check(up.get("new_pid") == new_pid and up.get("listeners") == 1 and
            (sessions is None or up.get("sessions") == sessions),
            "%s: the old process logged upgraded (new_pid %s, sessions %s, listeners 1)"
            % (case, new_pid, sessions if sessions is not None else "any"), str(up))
    c.check(took.get("listeners") == 1 and (sessions is None or took.get("sessions") == sessions),
            "%s: the new process logged upgrade: took over (sessions %s, listeners 1)"
            % (case, sessions if sessions is not None else "any"), str(took))
    c.check(u["old_rc"] == 0, "%s: the old process exited 0" % case, "exit %s" % u["old_rc"])
    c.check(ready.get("pid") == new_pid and ready.get("workers") == 1 and ready.get("routes") == 1 and
            u["m_ready"] >= u["m_upgraded"],
            "%s: the new process logged ready (pid %s, workers 1, routes 1) after the old one's upgraded"
            % (case, new_pid), str(ready))


def case_u1_upgrade_then_crash_return(c):
    """case U1: live upgrade, then client host crash and return from the same fixed port"""
    case = "case U1"
    with UpgradeRig(c, case, client={"heartbeat": HB}, sniff=True) as rig:
        old_proc, acc = rig.start_client_and_warm()
        old = acc["conn"]
        old_port = _port(acc["peer"])
        rig.srv.poll()
        n_before = len(rig.srv.records)

        # ---- the upgrade, with the client streaming
        t_sig, start = _signal_upgrade(rig)
        new_pid = start.get("new_pid")
        u = _await_upgraded(rig, t_sig, new_pid, margin(10))
        # heartbeats keep coming on the same connection, now relayed by the new process
        m_ready = u["m_ready"]
        _, after = rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == old and r["mono"] > m_ready + 0.25,
                                margin(3), "heartbeats on the old connection after the new process's ready")
        rig.srv.poll()
        n_crash = len(rig.srv.records)
        # everything the server recorded from SIGUSR2 to the crash
        noticed = [r for r in rig.srv.records[n_before:n_crash] if r["event"] in ("eof", "error", "accept")]
        old_tail = rig.client_tails[0][1]
        old_tail.poll()
        client_trouble = [r for r in old_tail.records if r["event"] in ("send_error", "connect_failed") or
                          (r["event"] == "connect_attempt" and not r.get("first"))]
        recv_t = [r["mono"] for r in rig.srv.records if r["event"] == "recv" and r["conn"] == old]
        gaps = [b - a for a, b in zip(recv_t, recv_t[1:]) if b >= t_sig - 0.2 and a <= m_ready + 0.2]
        max_gap = max(gaps) if gaps else None
        close_during = [r for _, r in rig.closes()]
        _check_upgrade(c, case, rig, u, new_pid, 1)
        c.check(not noticed, "%s: the server saw no EOF, no reset, no accept from SIGUSR2 to the crash" % case,
                str(noticed[:3]))
        c.check(not client_trouble, "%s: the client saw no error and never reconnected through the upgrade" % case,
                str(client_trouble[:3]))
        c.check(not close_during, "%s: no session closed during the upgrade" % case, str(close_during[:3]))
        c.check(max_gap is not None and max_gap < 0.1 + margin(0.5),
                "%s: the heartbeats (every 100 ms) kept arriving on the same connection through the upgrade"
                % case, "largest gap %s" % ms(max_gap))

        # ---- the crash and the return (test_takeover.py case 2)
        # host down 300 ms: an observation window in which the server must notice nothing
        t0, quiet_while_down = rig.crash_client([old_proc])
        rig.topo.restore_host("client")
        rig.note("client host back up")
        new_proc, new_tail = rig.client_proc("new")

        served_bound = 1.0 + margin(0.5)
        i_acc, acc2, data2, end, m_close, close = _returned(rig, old, old_port, served_bound)
        first_syn = new_tail.find(lambda r: r["event"] == "connect_attempt" and r.get("first"))
        rig.print_timeline(t0, since=t_sig - 0.2, label="the crash")
        rig.topo.stop(new_proc)
        challenge = [t for t in _wire_texts(rig, t0) if "challenge ACK" in t]

        eof_rel = end[1]["mono"] - t0 if end else None
        acc_rel = acc2["mono"] - t0
        syn_rel = first_syn["mono"] - t0 if first_syn else None
        new_port = _port(acc2["peer"])
        c.check(quiet_while_down, "%s: the server noticed nothing while the client host was down" % case)
        c.check(end is not None and end[1]["event"] == "eof",
                "%s: the server saw EOF (0-length recv) on the old connection, not ECONNRESET" % case,
                "old connection ended with %s" % (end and (end[1]["event"] + " " + end[1].get("errno", ""))))
        c.check(end is not None and end[0] < i_acc,
                "%s: the server saw that EOF BEFORE accepting the new connection" % case,
                "EOF index %s, accept index %d" % (end and end[0], i_acc))
        c.check(new_port not in (CLIENT_PORT, old_port),
                "%s: the new upstream connection comes from a fresh ephemeral port (%d; client %d, old %d)"
                % (case, new_port, CLIENT_PORT, old_port))
        c.check("HB new" in data2.get("data", ""), "%s: the returning client's data arrived on the new connection"
                % case, repr(data2.get("data")))
        c.check(close["reason"] in OK_REASONS and m_close > u["m_took"],
                "%s: the old session's close line, from the new process, says %s"
                % (case, " or ".join(OK_REASONS)), "reason %s" % close["reason"])
        c.check(close["bytes_from_client"] == rig.srv_bytes(old),
                "%s: the close line counts every byte the server got on the old connection, before and "
                "after the upgrade" % case,
                "lifeline counted %d, server received %d" % (close["bytes_from_client"], rig.srv_bytes(old)))
        lived_ms = (m_close - acc["mono"]) * 1000.0
        c.check(close.get("duration_ms", -1) >= lived_ms - 100,
                "%s: the close line's duration counts from the session's start in the old process" % case,
                "duration_ms %s, accept to close line %.0f ms" % (close.get("duration_ms"), lived_ms))
        c.check(len(challenge) >= 1, "%s: the returning client's SYN got a challenge ACK (the adopted socket "
                "still lived in the new process)" % case, "%d challenge ACK(s)" % len(challenge))
        c.check(syn_rel is not None and acc_rel - syn_rel <= served_bound,
                "%s: the returning client accepted by the server within %s of its first SYN"
                % (case, ms(served_bound)), "+%s" % ms(acc_rel - syn_rel if syn_rel is not None else None))
        c.summary("%s: upgrade %s ms (old's upgraded), took over %s ms (new), SIGUSR2 -> new ready %s, "
                  "largest heartbeat gap %s; after the crash: EOF +%s, new accept +%s = +%s after the first "
                  "new SYN; reason %s, upstream_finish %s"
                  % (case, u["upgraded"].get("duration_ms"), u["took"].get("duration_ms"),
                     ms(u["m_ready"] - t_sig), ms(max_gap), ms(eof_rel), ms(acc_rel),
                     ms(acc_rel - syn_rel if syn_rel is not None else None), close["reason"],
                     close.get("upstream_finish", "-")))


# Delays (ms) between reading `upgrade starting` and the returning client's connect():
# the whole upgrade takes a few ms, so a sweep lands the return in its different steps
# (old process still relaying, sessions held and moving, new process serving).
U2_DELAYS_MS = [int(x) for x in (os.environ.get("LL_FAULT_UPGRADE_DELAYS") or "0,1,2,3,5,8").split(",")]


def _u2_round(c, delay_ms, verbose):
    """One crash + upgrade + return; returns (problems, facts)."""
    case = "case U2 (+%d ms)" % delay_ms
    problems = []
    with UpgradeRig(c, case, client={"heartbeat": HB}, sniff=True) as rig:
        old_proc, acc = rig.start_client_and_warm()
        old = acc["conn"]
        old_port = _port(acc["peer"])

        t0 = rig.note("crash the client host: nft drops everything, client SIGKILLed, ss -K")
        rig.topo.crash_host("client", [old_proc])
        rig.srv.poll()
        n = len(rig.srv.records)
        time.sleep(0.3)
        # the client host's network is back before SIGUSR2 (an nft call takes longer than
        # the whole upgrade): it holds no socket and nothing crosses until it connects
        rig.topo.restore_host("client")
        rig.note("client host network back up, no socket, not connecting yet")
        rig.srv.poll()
        noticed_down = [r for r in rig.srv.records[n:] if r["event"] in ("eof", "error", "accept")]

        t_sig = rig.note("SIGUSR2 to lifeline %d" % rig.old_pid())
        os.kill(rig.old_pid(), signal.SIGUSR2)
        m_start, start = wait_for(lambda: next(((m, r) for m, r in rig.lines_since(t_sig)
                                          if r.get("msg") == "upgrade starting"), None),
                            margin(5), "lifeline to log 'upgrade starting'", interval=0.0005)
        new_pid = start.get("new_pid")
        if delay_ms:
            time.sleep(delay_ms / 1000.0)
        cl = rig.sock("new", CLIENT_PORT)
        cl.connect(margin(5))
        cl.send("HB new 1\n")

        served_bound = 1.0 + margin(1.0)
        i_acc, acc2, data2, end, m_close, close = _returned(rig, old, old_port, served_bound)
        u = _await_upgraded(rig, t_sig, new_pid, margin(10))
        # served by the new process: data sent once it is ready arrives on the same connection
        cl.send("HB new 2\n")
        _, later = rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == acc2["conn"] and
                                "HB new 2" in r.get("data", ""), margin(3),
                                "the returning client's data sent after the new process's ready")
        cl_state = cl.state()
        rig.wire.poll()
        syns = [p for p in rig.wire.records if p.get("event") == "pkt" and p["flags"] == "S" and
                p["src"] == rig.client_addr() and p["mono"] >= t_sig]
        syn = syns[0]["mono"] if syns else cl.t_connect
        challenge = [t for t in _wire_texts(rig, t_sig) if "challenge ACK" in t]
        eof_rel = end[1]["mono"] - syn if end else None
        acc_rel = acc2["mono"] - syn
        new_port = _port(acc2["peer"])
        up, took, ready = u["upgraded"], u["took"], u["ready"]

        def want(tag, ok, what):
            if not ok:
                problems.append((tag, "%s: %s" % (case, what)))
        want("upgrade", up.get("new_pid") == new_pid and up.get("listeners") == 1 and took.get("listeners") == 1 and
             u["old_rc"] == 0 and ready.get("pid") == new_pid,
             "upgrade incomplete: upgraded %s, took over %s, old exit %s, ready %s" % (up, took, u["old_rc"], ready))
        want("quiet", not noticed_down, "the server noticed the crash: %s" % noticed_down[:3])
        want("eof", end is not None and end[1]["event"] == "eof",
             "old connection ended with %s" % (end and (end[1]["event"] + " " + end[1].get("errno", ""))))
        want("order", end is not None and end[0] < i_acc, "EOF index %s, new accept index %d" % (end and end[0], i_acc))
        want("port", new_port not in (CLIENT_PORT, old_port), "new upstream port %d (client %d, old %d)"
             % (new_port, CLIENT_PORT, old_port))
        want("served", "HB new 1" in rig.srv_data(acc2["conn"]) and "HB new 2" in later.get("data", ""),
             "returning client's data: %r" % rig.srv_data(acc2["conn"]))
        want("served", cl_state in ("open", "data"), "the returning client's connection ended: %s" % cl_state)
        want("reason", close["reason"] in OK_REASONS, "old session closed with reason %s" % close["reason"])
        want("bytes", close["bytes_from_client"] == rig.srv_bytes(old), "lifeline counted %d bytes, server received %d"
             % (close["bytes_from_client"], rig.srv_bytes(old)))
        want("bound", acc_rel <= served_bound, "new accept +%s after the first SYN (bound %s)"
             % (ms(acc_rel), ms(served_bound)))
        # where the return landed: the old session ended in the old process (nothing handed
        # over), or it moved; then the first SYN against the new process's `took over`
        # line (as read here: an estimate within about a millisecond)
        phase = ("old process relaying" if up.get("sessions") == 0 else
                 "sessions held and moving" if syn < u["m_took"] else "after COMMIT")
        facts = {"delay": delay_ms, "phase": phase, "sessions": up.get("sessions"), "reason": close["reason"],
                 "finish": close.get("upstream_finish", "-"), "closed_by": "old" if m_close < u["m_took"]
                 else "new", "eof_rel": eof_rel, "acc_rel": acc_rel, "dur": up.get("duration_ms"),
                 "syn_after_start": syn - m_start, "challenge": len(challenge)}
        if verbose or problems:
            rig.print_timeline(syn, since=t_sig - 0.01, label="the returning client's first SYN")
        cl.close()
        print("  round +%d ms: first SYN %s after `upgrade starting` read (%s); sessions handed over %s; "
              "old session closed by the %s process, reason %s, upstream_finish %s; EOF +%s, new accept +%s "
              "after the first SYN; %s"
              % (delay_ms, ms(facts["syn_after_start"]), phase, facts["sessions"], facts["closed_by"],
                 facts["reason"], facts["finish"], ms(eof_rel), ms(acc_rel),
                 "ok" if not problems else "PROBLEMS: " + "; ".join(t for _, t in problems)), flush=True)
    return problems, facts


def case_u2_return_during_upgrade(c):
    """case U2: client host crash right before SIGUSR2, return as soon as `upgrade starting`"""
    problems, facts = [], []
    for i, d in enumerate(U2_DELAYS_MS):
        try:
            p, f = _u2_round(c, d, verbose=(i == 0))
        except Exception as e:           # a bounded wait that timed out: this round failed, go on
            traceback.print_exc()
            p, f = [("ran", "case U2 (+%d ms): %s: %s" % (d, type(e).__name__, e))], None
        problems += p
        if f is not None:
            facts.append(f)
    for _, p in problems:
        print("  problem: " + p)
    n = len(U2_DELAYS_MS)

    def ok_rounds(*tags):
        return n - len({t.split(":", 1)[0] for tag, t in problems if tag in tags + ("ran",)})
    c.check(not any(tag == "ran" for tag, _ in problems), "case U2: %d/%d rounds ran to completion"
            % (ok_rounds(), n))
    c.check(ok_rounds("upgrade") == n, "case U2: %d/%d upgrades completed (upgraded, took over, old exit 0, "
            "new ready)" % (ok_rounds("upgrade"), n))
    c.check(ok_rounds("quiet") == n, "case U2: %d/%d rounds: the server noticed nothing before the client "
            "returned" % (ok_rounds("quiet"), n))
    c.check(ok_rounds("eof") == n, "case U2: %d/%d rounds: the server saw EOF on the old connection, not a "
            "reset" % (ok_rounds("eof"), n))
    c.check(ok_rounds("order") == n, "case U2: %d/%d rounds: the server saw that EOF BEFORE accepting the new "
            "connection" % (ok_rounds("order"), n))
    c.check(ok_rounds("port") == n, "case U2: %d/%d rounds: the new upstream connection from a fresh port"
            % (ok_rounds("port"), n))
    c.check(ok_rounds("served") == n, "case U2: %d/%d returning clients served, by the new process too (data "
            "sent after its ready arrives, connection open)" % (ok_rounds("served"), n))
    c.check(ok_rounds("reason") == n, "case U2: %d/%d rounds: the old session closed with %s"
            % (ok_rounds("reason"), n, " or ".join(OK_REASONS)))
    c.check(ok_rounds("bytes") == n, "case U2: %d/%d rounds: the server got every byte lifeline read from the "
            "old client" % (ok_rounds("bytes"), n))
    c.check(ok_rounds("bound") == n, "case U2: %d/%d returning clients accepted by the server within %s of "
            "their first SYN" % (ok_rounds("bound"), n, ms(1.0 + margin(1.0))))
    phases = {}
    for f in facts:
        phases[f["phase"]] = phases.get(f["phase"], 0) + 1
    c.summary("case U2: %d rounds, return delays %s ms after `upgrade starting`; first SYN landed (estimated): %s; "
              "sessions handed over %s; old session closed by %s; reasons %s; EOF after first SYN %s; new "
              "accept after first SYN %s; upgrade durations %s ms"
              % (n, U2_DELAYS_MS, phases, [f["sessions"] for f in facts], [f["closed_by"] for f in facts],
                 [f["reason"] for f in facts], stats_ms([f["eof_rel"] for f in facts if f["eof_rel"] is not None]),
                 stats_ms([f["acc_rel"] for f in facts]), [f["dur"] for f in facts]))


class Reader:
    """Reads a NsClient's socket in a thread until told to stop or the connection ends;
    keeps the byte count and how it ended (eof / errno name)."""

    def __init__(self, cl):
        self.cl, self.n, self.ended, self.t_end = cl, 0, None, None
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        s = self.cl.s
        s.settimeout(0.05)
        while not self.stop.is_set():
            try:
                d = s.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError as e:
                self.ended = faultlib._ename(e)
                break
            if not d:
                self.ended = "eof"
                break
            self.n += len(d)
        self.t_end = time.monotonic()
        if self.ended:
            self.cl.ended = self.ended
            self.cl.rig.event(self.t_end, "client", "%s: its connection ended: %s (after reading %d bytes)"
                              % (self.cl.name, self.ended, self.n))

    def join(self):
        self.stop.set()
        self.t.join(2)


def case_u3_registry_moves(c):
    """case U3: identity "address": a connection that waits in the backlog during the upgrade replaces the adopted session"""
    case = "case U3"
    # The server writes 64 KiB every 10 ms and the first client (4 KiB SO_RCVBUF) does
    # not read: lifeline
    # holds bytes for it, so the old process's worker cannot settle that session, and the
    # upgrade waits (not accepting) until the client reads them.  Meanwhile a second
    # connection of the same client address (another port) waits in the listening
    # socket's queue; the new process must find the adopted session in the identity
    # registry when it accepts it: replaced, EOF on the old server connection, then
    # the new server connection.
    with UpgradeRig(c, case, client={"identity": "address"},
                    server_args=("--write-interval-ms", "10", "--write-bytes", "65536")) as rig:
        first = SmallWindowClient(rig, "first", CLIENT_PORT).connect(margin(5))
        first.send("first hello\n")
        _, acc = rig.srv_wait(lambda r: r["event"] == "accept", margin(5), "the server accepting")
        fc = acc["conn"]
        rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == fc, margin(5), "the first client's data")
        # Steady state: the first client's window is shut (nothing more leaves lifeline's
        # socket to it) and lifeline stopped reading the server (holding buffer_bytes
        # for the client, unwritten: its session cannot settle)
        q_client, q_server = _await_held(rig, CLIENT_PORT, margin(10))
        rig.note("lifeline's queues, steady: %d bytes unsent to the first client, %d unread from the server"
                 % (q_client, q_server))

        t_sig = rig.note("SIGUSR2 to lifeline %d" % rig.old_pid())
        os.kill(rig.old_pid(), signal.SIGUSR2)
        _, start = rig.log_after("upgrade starting", t_sig, margin(5))
        new_pid = start.get("new_pid")
        m_hello, _ = rig.log_after("upgrade: the new process is ready to take over", t_sig, margin(10))
        time.sleep(margin(0.05))            # the worker has the freeze request: it accepts no more
        second = rig.sock("second", CLIENT_PORT + 1).connect(margin(5))
        t_second = second.t_connect
        second.send("second hello\n")
        time.sleep(0.15)  # a window to see it not accepted (under the 1 s stall bound)
        rig.srv.poll()
        accepted_while_settling = [r for r in rig.srv.records if r["event"] == "accept" and r["conn"] != fc]
        upgraded_early = rig.ll.find(lambda r: r.get("msg") in ("upgraded", "upgrade failed: serving on"))
        rig.note("the first client reads now: lifeline's bytes for it can be written")
        reader = Reader(first)

        u = _await_upgraded(rig, t_sig, new_pid, margin(10))
        i_acc, acc2 = rig.srv_wait(lambda r: r["event"] == "accept" and r["conn"] != fc, margin(5),
                                   "the server accepting the second connection")
        _, d2 = rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == acc2["conn"], margin(2),
                             "the second client's data")
        # bounded waits that do not raise: without the identity in the new process's
        # registry the first session is never replaced, and the checks below say so
        end = _maybe(lambda: rig.srv_end(fc), margin(2))
        m_close, close = _maybe(lambda: next(((m, r) for m, r in rig.closes()
                                              if r["client"] == rig.client_addr(CLIENT_PORT)), None),
                                margin(1)) or (None, {})
        _maybe(lambda: reader.ended, margin(1))
        reader.join()
        second.send("second later\n")
        _, later = rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == acc2["conn"] and
                                "second later" in r.get("data", ""), margin(2), "the second client's later data")
        rig.print_timeline(t_second, since=t_sig - 0.01, label="the second connect()")
        st2 = second.state()
        second.close()
        first.close()

        _check_upgrade(c, case, rig, u, new_pid, 1)
        c.check(not accepted_while_settling and upgraded_early is None,
                "%s: while the old process settled its session the second connection was accepted by no one "
                "(the server saw no accept, the upgrade had not ended)" % case,
                "accepts %s; %s%s" % (accepted_while_settling, upgraded_early,
                                      " (the upgrade did not wait: this case's set-up did not hold the "
                                      "session unsettled)" if upgraded_early else ""))
        c.check(end is not None and end[1]["event"] == "eof", "%s: the server saw EOF on the first connection"
                % case, str(end and end[1]))
        c.check(end is not None and end[0] < i_acc, "%s: that EOF BEFORE it accepted the second connection"
                % case, "EOF index %s, accept index %d" % (end and end[0], i_acc))
        c.check(close.get("reason") == "replaced" and m_close is not None and m_close > u["m_took"],
                "%s: the adopted session was closed by the new process as replaced (the identity moved with it)"
                % case, "close line %s" % (close or "none: the first session was not closed"))
        c.check(close.get("bytes_from_client") == rig.srv_bytes(fc) and "first hello" in rig.srv_data(fc),
                "%s: the server got every byte of the first client" % case,
                "lifeline counted %s, server received %d" % (close.get("bytes_from_client"), rig.srv_bytes(fc)))
        c.check(reader.ended == "ECONNRESET", "%s: the first client was aborted (sees a reset)" % case,
                str(reader.ended))
        c.check("second hello" in d2.get("data", "") + rig.srv_data(acc2["conn"]) and
                "second later" in later.get("data", "") and st2 in ("open", "data"),
                "%s: the second client is served by the new process" % case,
                "%r; connection %s" % (rig.srv_data(acc2["conn"])[:60], st2))
        c.summary("%s: second connect() +%s after the freeze began; the old process settled once the first "
                  "client read (%s ms upgrade, %d bytes read by it); EOF on the first connection +%s, second "
                  "accept +%s after the second connect(); reason %s, upstream_finish %s"
                  % (case, ms(t_second - m_hello), u["upgraded"].get("duration_ms"), reader.n,
                     ms(end[1]["mono"] - t_second if end else None), ms(acc2["mono"] - t_second),
                     close.get("reason"), close.get("upstream_finish", "-")))


def _maybe(f, timeout):
    """f()'s first truthy value within timeout, else None."""
    try:
        return wait_for(f, timeout, "-", interval=0.002)
    except TimeoutError:
        return None


class SmallWindowClient(faultlib.NsClient):
    """An NsClient with a small fixed receive buffer (SO_RCVBUF before connect(), which
    also turns receive autotuning off): when it does not read, its window shuts at once
    and stays shut, so what lifeline holds for it settles into a steady state."""

    RCVBUF = 4096

    def connect(self, timeout=5.0):
        topo = self.rig.topo
        s = faultlib.ns_socket(topo.ns("client"))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.RCVBUF)
        s.bind((topo.client_ip, self.port))
        s.settimeout(timeout)
        self.t_connect = time.monotonic()
        self.rig.event(self.t_connect, "client", "%s: connect() from :%d, SO_RCVBUF %d"
                       % (self.name, self.port, self.RCVBUF))
        s.connect((topo.proxy_client_ip, faultlib.PROXY_PORT))
        s.settimeout(None)
        self.t_connected = time.monotonic()
        self.s = s
        return self


def _await_held(rig, client_port, timeout, steady_s=0.3, from_server_min=64 << 10):
    """Waits until lifeline's queue towards the client has not moved for steady_s and
    its socket from the server holds at least from_server_min unread; returns both."""
    deadline = time.monotonic() + timeout
    since, last = None, None
    while True:
        q = _proxy_queues(rig, client_port)
        now = time.monotonic()
        if q[0] > 0 and q[1] >= from_server_min and last is not None and q[0] == last[0]:
            since = since or now
            if now - since >= steady_s:
                return q
        else:
            since = None
        last = q
        if now >= deadline:
            raise TimeoutError("lifeline's queues never settled: to the client %d, from the server %d" % q)
        time.sleep(0.03)


def _proxy_queues(rig, client_port):
    """(Send-Q of lifeline's socket to the client at client_port, Recv-Q of its socket
    from the server), from `ss` in the proxy namespace."""
    r = rig.topo.run("proxy", ["ss", "-tnH", "state", "established"], check=False)
    to_client = from_server = 0
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) < 4:
            continue
        if f[3] == rig.client_addr(client_port):
            to_client = int(f[1])
        elif f[3].endswith(":%d" % faultlib.SERVER_PORT):
            from_server = max(from_server, int(f[0]))
    return to_client, from_server


if __name__ == "__main__":
    _become_subreaper()
    sys.exit(faultlib.main([case_u1_upgrade_then_crash_return, case_u2_return_during_upgrade,
                            case_u3_registry_moves]))
