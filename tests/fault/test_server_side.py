#!/usr/bin/env python3
"""Fault tests: the server crashes (SIGKILL) under a live client.

case 9a  upstream.on_close "close_client" (the default): the client, which keeps
         sending as the legacy client does, sees its connection closed (EOF or reset),
         and lifeline logs upstream_eof or upstream_reset.
case 9b  upstream.on_close "reconnect": the server, after serving over 1 s, is killed
         and restarted on the same port at once; the client stays connected (its socket never sees EOF or a reset, no
         send fails), lifeline logs "upstream closed, reconnecting", opens a new
         upstream connection from another ephemeral port, and what the client sends
         once the server is back arrives at the new server.

Exit 0 pass, 1 fail, 77 skip; the last line is "N passed, N failed".
"""

import os
import signal
import sys
import time

import faultlib
from faultlib import CLIENT_PORT, Rig, margin, ms
from netns import wait_for

PUMP_S = 0.05     # the client's heartbeat interval while the server is away


class Pump:
    """The legacy client's behaviour, driven from the test's polls: a heartbeat every
    PUMP_S, never reading; every poll looks (MSG_PEEK) at what its socket has seen."""

    def __init__(self, cl, tag):
        self.cl, self.tag = cl, tag
        self.n = 0
        self.next = 0.0
        self.first_bad = None          # (mono, state) the first non-open state seen
        self.send_errors = []          # (mono, errno)
        self.sent_at = []              # (mono, text)

    def __call__(self):
        now = time.monotonic()
        if now >= self.next and not self.send_errors:
            self.next = now + PUMP_S
            self.n += 1
            text = "%s %d\n" % (self.tag, self.n)
            err = self.cl.try_send(text)
            if err:
                self.send_errors.append((now, err))
                self.cl.rig.event(now, "client", "%s: send failed: %s" % (self.cl.name, err))
            else:
                self.sent_at.append((now, text))
        st = self.cl.state()
        if st not in ("open",) and self.first_bad is None:
            self.first_bad = (time.monotonic(), st)
            self.cl.rig.event(self.first_bad[0], "client", "%s: its socket sees %s" % (self.cl.name, st))
        return st


def case9a_close_client(c):
    """case 9a: server crash, upstream.on_close close_client: the client is closed"""
    with Rig(c, "case 9a", upstream={"on_close": "close_client"}) as rig:
        cl = rig.sock("client", CLIENT_PORT).connect(margin(5))
        cl.send("hello\n")
        _, acc = rig.srv_wait(lambda r: r["event"] == "accept", margin(5), "the server accepting")
        rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == acc["conn"], margin(5), "the client's data")
        t0 = rig.note("SIGKILL the server")
        os.kill(rig.server_proc.pid, signal.SIGKILL)
        rig.server_proc.wait(5)
        pump = Pump(cl, "hb")

        def done():
            pump()
            return rig.closes() and pump.first_bad
        wait_for(done, margin(3), "the client to see its connection end and lifeline to log the close")
        m_close, close = rig.closes()[0]
        # keep heartbeating a little: once lifeline has closed, a send must fail (reset)
        try:
            wait_for(lambda: pump() and pump.send_errors, margin(1), "a heartbeat to fail")
        except TimeoutError:
            pass
        rig.print_timeline(t0, since=acc["mono"] - 0.01, label="the server's SIGKILL")

        seen_rel = pump.first_bad[0] - t0
        c.check(pump.first_bad[1] in ("eof", "ECONNRESET"), "case 9a: the client sees its connection closed "
                "(EOF or reset)", pump.first_bad[1])
        c.check(seen_rel < margin(1.0), "case 9a: within %s of the server's death" % ms(margin(1.0)),
                "+%s" % ms(seen_rel))
        c.check(close["reason"] in ("upstream_eof", "upstream_reset"), "case 9a: reason upstream_eof or "
                "upstream_reset", "reason %s" % close["reason"])
        c.check(not rig.ll.find(lambda r: r.get("msg") == "upstream closed, reconnecting"),
                "case 9a: no reconnect with on_close close_client")
        c.summary("case 9a: client sees %s +%s after the server's SIGKILL; session closed +%s, reason %s; "
                  "the client's next send: %s"
                  % (pump.first_bad[1], ms(seen_rel), ms(m_close - t0), close["reason"],
                     pump.send_errors[0][1] if pump.send_errors else "no error"))


def case9b_reconnect(c):
    """case 9b: server crash and restart, upstream.on_close reconnect: the client stays"""
    up = {"on_close": "reconnect", "retries": 8, "retry_backoff_ms": 100, "connect_timeout_ms": 1000}
    with Rig(c, "case 9b", upstream=up) as rig:
        cl = rig.sock("client", CLIENT_PORT).connect(margin(5))
        cl.send("before the crash\n")
        _, acc = rig.srv_wait(lambda r: r["event"] == "accept", margin(5), "the server accepting")
        rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == acc["conn"], margin(5), "the client's data")
        old_port = int(acc["peer"].rsplit(":", 1)[1])
        pump = Pump(cl, "hb")
        # A connection that ends within 1 s counts as a failed try (a server
        # that accepts and closes at once is not up); this one has served a
        # while, so its end is a crash to reconnect after at once.
        lived_from = time.monotonic()
        wait_for(lambda: (pump(), time.monotonic() - lived_from > 1.2)[1], margin(3),
                 "the connection to serve for over 1 s")

        t0 = rig.note("SIGKILL the server")
        os.kill(rig.server_proc.pid, signal.SIGKILL)
        rig.server_proc.wait(5)
        m_re, _ = wait_for(lambda: (pump(), rig.ll.find(lambda r: r.get("msg") == "upstream closed, reconnecting"))[1],
                           margin(2), "lifeline to log 'upstream closed, reconnecting'")
        t_restart = rig.note("restart the server on the same port")
        proc2, srv2 = rig.start_server("server2")
        t_back = srv2.find(lambda r: r["event"] == "listening")["mono"]

        def accepted():
            pump()
            srv2.poll()
            return next((r for r in srv2.records if r["event"] == "accept"), None)
        acc2 = wait_for(accepted, margin(3) + 1.6, "the new server accepting lifeline's new connection")
        marker = "after the restart\n"
        cl.send(marker)
        t_marker = time.monotonic()

        def marker_in():
            pump()
            srv2.poll()
            return next((r for r in srv2.records if r["event"] == "recv" and "after the restart" in r["data"]), None)
        got = wait_for(marker_in, margin(2), "the client's data at the new server")
        # a few more heartbeats through the new connection, the client watching its socket
        n_hb = pump.n
        wait_for(lambda: (pump(), pump.n >= n_hb + 5)[1], margin(2), "5 more heartbeats")
        rig.print_timeline(t0, since=acc["mono"] - 0.01, label="the server's SIGKILL")

        new_port = int(acc2["peer"].rsplit(":", 1)[1])
        closes = [r for _, r in rig.closes() if r["client"] == rig.client_addr()]
        fails = [r for _, r in rig.ll.lines if isinstance(r, dict) and r.get("msg") == "upstream connect failed"]
        outage = [t for m, t in pump.sent_at if t0 <= m < acc2["mono"]]
        data2 = rig.srv_data(acc2["conn"], tail=srv2)
        outage_arrived = sum(1 for t in outage if t in data2)
        c.check(pump.first_bad is None, "case 9b: the client's socket never saw EOF or a reset",
                str(pump.first_bad))
        c.check(not pump.send_errors, "case 9b: no send of the client failed", str(pump.send_errors))
        c.check(not closes, "case 9b: lifeline kept the client's session (no close line)", str(closes))
        c.check(new_port not in (old_port, CLIENT_PORT),
                "case 9b: the new upstream connection comes from another ephemeral port (%d; old %d)"
                % (new_port, old_port))
        c.check("after the restart" in data2, "case 9b: data sent after the server came back arrived at the "
                "new server")
        c.check(data2.endswith("hb %d\n" % pump.n) or ("hb %d\n" % (pump.n - 1)) in data2,
                "case 9b: the heartbeats keep flowing through the new connection",
                repr(data2[-60:]))
        c.summary("case 9b: reconnecting logged +%s after the server's SIGKILL; server back +%s; new accept "
                  "+%s (%.0f ms after it listened), %d failed connect tr%s meanwhile; the client's data "
                  "at the new server +%.1f ms after sending; %d/%d heartbeats sent during the outage arrived; "
                  "client socket: %s" % (ms(m_re - t0), ms(t_back - t0), ms(acc2["mono"] - t0),
                                         (acc2["mono"] - t_back) * 1000, len(fails),
                                         "y" if len(fails) == 1 else "ies",
                                         (got["mono"] - t_marker) * 1000, outage_arrived, len(outage),
                                         "never saw EOF/reset" if pump.first_bad is None else pump.first_bad[1]))
        cl.close()


if __name__ == "__main__":
    sys.exit(faultlib.main([case9a_close_client, case9b_reconnect]))
