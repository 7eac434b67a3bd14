#!/usr/bin/env python3
"""Fault tests: client liveness (TCP keepalive, TCP_USER_TIMEOUT, silence) end the
session, and the server sees EOF (a 0-length recv, never ECONNRESET) on its old
connection within the configured bound.

case 1   client host crash, no return: keepalive (idle 1 s, interval 1 s, count 2,
         user_timeout 0) ends it: EOF within 3 s + 1 s of the crash, reason client_keepalive
case 1b  the same with keepalive off and user_timeout_ms 2000, the server writing (so
         lifeline has unacknowledged data for the dead client): EOF within 2 s + 1 s,
         reason client_user_timeout
case 4   client frozen (SIGSTOP, its host still answers): silence_ms 1500 fires, EOF within
         silence_ms + 500 ms, reason client_silence
case 5   client SIGKILLed with its host up (its kernel sends FIN): EOF < 100 ms after the kill
case 8   lifeline closes a quiet (alive) client for silence; the client reconnects from the
         same fixed port at once and is served within 200 ms; no TIME_WAIT on the fixed
         5-tuple in the proxy namespace

Each case: fresh namespaces, lifeline in the proxy namespace (JSON log), the legacy
server recording every accept/recv/EOF; at the end lifeline must exit 0 on SIGTERM
with no error line.  Processing margins scale under sanitizers (faultlib.TIME_SCALE).
Exit 0 pass, 1 fail, 77 skip; the last line is "N passed, N failed".
"""

import os
import signal
import sys
import time

import faultlib
from faultlib import CLIENT_PORT, Rig, margin, ms
from netns import wait_for


def _warm(rig, n=3):
    """Waits for the first accept and n heartbeats on it; returns the server conn id."""
    _, acc = rig.srv_wait(lambda r: r["event"] == "accept", margin(10), "the server accepting the client")
    conn = acc["conn"]

    def enough():
        rig.srv.poll()
        return sum(1 for r in rig.srv.records if r["event"] == "recv" and r["conn"] == conn) >= n
    wait_for(enough, margin(10), "%d heartbeats at the server" % n)
    return conn, acc


def _last_recv_before(rig, conn, t):
    rs = [r for r in rig.srv.records if r["event"] == "recv" and r["conn"] == conn and r["mono"] <= t]
    return rs[-1]["mono"] if rs else None


def _crash_no_return(c, case, hb, server_args, expect_reason, bound_s, label):
    with Rig(c, case, client={"heartbeat": hb}, server_args=server_args) as rig:
        proc, _ = rig.client_proc("client")
        conn, acc = _warm(rig)
        t0 = rig.note("crash the client host: nft drops everything, client SIGKILLed, ss -K")
        crash = rig.topo.crash_host("client", [proc])
        rig.note("crash done: %d packet(s) leaving the client host dropped, %d arriving dropped"
                 % (crash["dropped_out"], crash["dropped_in"]))
        last_hb = _last_recv_before(rig, conn, t0)
        i_end, end = rig.srv_wait(lambda r: r.get("conn") == conn and r["event"] in ("eof", "error"),
                                  bound_s + 10, "the server to see the old connection end")
        m_close, close = rig.wait_close(lambda r: r["client"] == rig.client_addr(), margin(2),
                                        "lifeline's close line")
        rig.note("observation over")
        rig.print_timeline(t0, since=acc["mono"] - 0.01, label="the crash")

        detect = end["mono"] - t0
        c.check(end["event"] == "eof", "%s: the server saw EOF (0-length recv), not an error" % case,
                "%s %s" % (end["event"], end.get("errno", "")))
        c.check(detect <= bound_s, "%s: EOF within %s of the crash (%s)" % (case, ms(bound_s), label),
                "EOF +%s after the crash" % ms(detect))
        c.check(close["reason"] == expect_reason, "%s: lifeline's close reason is %s" % (case, expect_reason),
                "reason %s" % close["reason"])
        c.check(close["bytes_from_client"] == rig.srv_bytes(conn),
                "%s: the server got every byte lifeline read from the client (%d)"
                % (case, close["bytes_from_client"]),
                "lifeline read %d, server received %d" % (close["bytes_from_client"], rig.srv_bytes(conn)))
        c.check(len(rig.srv_accepts()) == 1, "%s: no other connection reached the server" % case,
                "%d accepts" % len(rig.srv_accepts()))
        c.summary("%s: EOF +%s after crash (+%s after the last heartbeat), bound %s; reason %s, "
                  "upstream_finish %s" % (case, ms(detect), ms(end["mono"] - last_hb) if last_hb else "?",
                                          ms(bound_s), close["reason"], close.get("upstream_finish", "-")))


def case1_keepalive(c):
    """case 1: client host crash, no return; TCP keepalive (1 s idle, 1 s x 2) ends the session"""
    hb = {"silence_ms": 0, "keepalive_idle_ms": 1000, "keepalive_interval_ms": 1000,
          "keepalive_count": 2, "user_timeout_ms": 0}
    # kernel: idle 1 s + 2 probes 1 s apart = 3 s after the last segment; +1 s margin
    _crash_no_return(c, "case 1", hb, (), "client_keepalive", 3.0 + margin(1.0),
                     "keepalive 1 s + 1 s x 2 = 3 s, + 1 s")


def case1b_user_timeout(c):
    """case 1b: client host crash, no return; the server writes; TCP_USER_TIMEOUT 2 s ends it"""
    hb = {"silence_ms": 0, "keepalive_idle_ms": 0, "user_timeout_ms": 2000}
    # the server writes 64 bytes every 50 ms: lifeline always has data in flight to the
    # client, unacknowledged once the client host is gone
    _crash_no_return(c, "case 1b", hb, ("--write-interval-ms", "50", "--write-bytes", "64"),
                     "client_user_timeout", 2.0 + margin(1.0), "user timeout 2 s, + 1 s")


def case4_frozen(c):
    """case 4: client frozen (SIGSTOP, host up): silence_ms 1500 closes it"""
    silence = 1.5
    hb = {"silence_ms": int(silence * 1000)}
    with Rig(c, "case 4", client={"heartbeat": hb}) as rig:
        proc, _ = rig.client_proc("client")
        conn, acc = _warm(rig)
        t0 = rig.note("SIGSTOP the client (its host still answers, keepalive would pass)")
        os.kill(proc.pid, signal.SIGSTOP)
        last_hb = _last_recv_before(rig, conn, t0 + 0.05)
        bound = silence + margin(0.5)
        i_end, end = rig.srv_wait(lambda r: r.get("conn") == conn and r["event"] in ("eof", "error"),
                                  bound + 10, "the server to see the old connection end")
        m_close, close = rig.wait_close(lambda r: r["client"] == rig.client_addr(), margin(2),
                                        "lifeline's close line")
        left = rig.proxy_sockets_on("%s:%d" % (rig.topo.proxy_client_ip, faultlib.PROXY_PORT),
                                    rig.client_addr())
        rig.note("proxy namespace sockets on the client's 5-tuple: %s"
                 % (", ".join(s["state"] for s in left) or "none"))
        rig.topo.stop(proc)
        rig.print_timeline(t0, since=acc["mono"] - 0.01, label="the freeze")

        detect = end["mono"] - t0
        c.check(end["event"] == "eof", "case 4: the server saw EOF, not an error",
                "%s %s" % (end["event"], end.get("errno", "")))
        c.check(detect <= bound, "case 4: EOF within silence_ms + 500 ms (%s) of the freeze" % ms(bound),
                "EOF +%s" % ms(detect))
        c.check(close["reason"] == "client_silence", "case 4: reason client_silence",
                "reason %s" % close["reason"])
        c.check(close["bytes_from_client"] == rig.srv_bytes(conn),
                "case 4: the server got every byte lifeline read from the client",
                "lifeline read %d, server received %d" % (close["bytes_from_client"], rig.srv_bytes(conn)))
        c.check(not left, "case 4: no socket (no TIME_WAIT) left on the client's 5-tuple in the proxy namespace",
                ", ".join("%s %s->%s" % (s["state"], s["local"], s["peer"]) for s in left))
        c.summary("case 4: EOF +%s after SIGSTOP (+%s after the last heartbeat), bound %s; reason %s"
                  % (ms(detect), ms(end["mono"] - last_hb) if last_hb else "?", ms(bound), close["reason"]))


def case5_killed(c):
    """case 5: client SIGKILLed with its host up: EOF reaches the server promptly"""
    with Rig(c, "case 5", client={"heartbeat": {"silence_ms": 0}}) as rig:
        proc, _ = rig.client_proc("client")
        conn, acc = _warm(rig)
        t0 = rig.note("SIGKILL the client (host up: its kernel closes the socket)")
        os.kill(proc.pid, signal.SIGKILL)
        bound = margin(0.1)
        i_end, end = rig.srv_wait(lambda r: r.get("conn") == conn and r["event"] in ("eof", "error"),
                                  bound + 5, "the server to see the old connection end")
        m_close, close = rig.wait_close(lambda r: r["client"] == rig.client_addr(), margin(2),
                                        "lifeline's close line")
        rig.print_timeline(t0, since=acc["mono"] - 0.01, label="the kill")

        detect = end["mono"] - t0
        c.check(end["event"] == "eof", "case 5: the server saw EOF, not an error",
                "%s %s" % (end["event"], end.get("errno", "")))
        c.check(detect < bound, "case 5: EOF < %s after the kill" % ms(bound), "EOF +%.1f ms" % (detect * 1000))
        c.check(close["reason"] in ("client_eof", "client_reset"), "case 5: reason client_eof or client_reset",
                "reason %s" % close["reason"])
        c.check(close["bytes_from_client"] == rig.srv_bytes(conn),
                "case 5: the server got every byte lifeline read from the client",
                "lifeline read %d, server received %d" % (close["bytes_from_client"], rig.srv_bytes(conn)))
        c.summary("case 5: EOF +%.1f ms after SIGKILL, bound %s; reason %s"
                  % (detect * 1000, ms(bound), close["reason"]))


def case8_silence_then_reconnect(c):
    """case 8: lifeline closes a quiet client for silence; it reconnects from the same port at once"""
    silence = 1.0
    with Rig(c, "case 8", client={"heartbeat": {"silence_ms": int(silence * 1000)}}) as rig:
        five = ("%s:%d" % (rig.topo.proxy_client_ip, faultlib.PROXY_PORT), rig.client_addr(CLIENT_PORT))
        first = rig.sock("first", CLIENT_PORT).connect(margin(5))
        first.send("first hello\n")
        t_quiet = rig.note("the client stops sending (alive, quiet)")
        _, acc = rig.srv_wait(lambda r: r["event"] == "accept", margin(5), "the server accepting")
        old = acc["conn"]
        rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == old, margin(5), "the first bytes")
        st, t_rst = first.wait_ended(silence + margin(2), "lifeline to close the quiet client")
        m_close, close = rig.wait_close(lambda r: r["client"] == five[1], margin(2), "lifeline's close line")
        left = rig.proxy_sockets_on(*five)
        rig.note("proxy namespace sockets on %s <-> %s right after the close: %s"
                 % (five + (", ".join(s["state"] for s in left) or "none",)))
        first.close()

        t_re = rig.note("the client reconnects from the same fixed port :%d" % CLIENT_PORT)
        second = rig.sock("again", CLIENT_PORT).connect(margin(5))
        second.send("second hello\n")
        i_acc2, acc2 = rig.srv_wait(lambda r: r["event"] == "accept" and r["conn"] != old, 5,
                                    "the server accepting the reconnected client")
        _, data2 = rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == acc2["conn"] and
                                "second hello" in r.get("data", ""), 5, "the reconnected client's bytes")
        after = rig.proxy_sockets_on(*five)
        rig.note("proxy namespace sockets on the 5-tuple now: %s" % (", ".join(s["state"] for s in after) or "none"))
        end = rig.srv_end(old)
        rig.print_timeline(t_quiet, since=acc["mono"] - 0.01, label="the client going quiet")

        served = data2["mono"] - t_re
        c.check(st == "ECONNRESET", "case 8: lifeline aborted the quiet client (client.close rst): the client "
                "sees a reset", "client saw %s" % st)
        c.check(close["reason"] == "client_silence", "case 8: reason client_silence", "reason %s" % close["reason"])
        c.check(not any(s["state"] == "TIME-WAIT" for s in left + after),
                "case 8: no TIME_WAIT socket holds the client's fixed 5-tuple in the proxy namespace",
                ", ".join("%s %s->%s" % (s["state"], s["local"], s["peer"]) for s in left + after))
        c.check(not left, "case 8: no socket at all on the 5-tuple right after the close",
                ", ".join(s["state"] for s in left))
        c.check(end is not None and end[1]["event"] == "eof" and end[0] < i_acc2,
                "case 8: the server saw EOF on the old connection before the new accept",
                "old conn ended: %s" % (end and "%s at index %d, new accept at %d" % (end[1]["event"], end[0], i_acc2)))
        c.check(served <= margin(0.2), "case 8: the reconnected client is served within %s (accept + data)"
                % ms(margin(0.2)), "served +%.1f ms after reconnecting" % (served * 1000))
        c.summary("case 8: RST +%s after the last byte (silence %s); reconnect from :%d served +%.1f ms "
                  "(accept +%.1f ms); TIME_WAIT on the 5-tuple: %s"
                  % (ms(t_rst - t_quiet), ms(silence), CLIENT_PORT, served * 1000, (acc2["mono"] - t_re) * 1000,
                     "yes" if any(s["state"] == "TIME-WAIT" for s in left + after) else "none"))
        second.close()


if __name__ == "__main__":
    sys.exit(faultlib.main([case1_keepalive, case1b_user_timeout, case4_frozen, case5_killed,
                            case8_silence_then_reconnect]))
