#!/usr/bin/env python3
"""Fault tests of the cluster registry: two lifeline instances (A, B) in the proxy
namespace share client identities through a 3-member etcd cluster (clusterlib.py).
The promise is the single-instance one, across instances: the server sees EOF on
the old connection BEFORE it accepts the new one, whichever instance each came
through.

C1  identity address_port: a fixed-port client streaming through A crashes (nft
    drop, SIGKILL, ss -K) and returns through B from the same port: A closes its
    session (replaced, after "cluster eviction" from b), the server sees EOF on the
    old connection (not a reset) before it accepts B's; B relays; the identity key
    moves from A's lease to B's.
C2  as C1 with identity address, the client returning from another port.
C3  100 alternations of one fixed-port client between A and B (each a new socket
    from the same port while the previous one is still open on the client's side,
    as a returned client's): order violations (new accept before the old EOF) must
    be 0; median and p99 of connect() -> the server's accept of the new connection.
C4  on_duplicate reject: a second connection of the identity through B is closed
    (rejected, no upstream connection) while A's session stays and relays.
C5  A cut off from etcd (nft drops 127.0.0.2, the address A's etcd URLs use): A
    fences within lease_ttl_ms ("cluster fenced", reason fenced, the server sees
    EOF); the client returning through B is then served, EOF before accept.  The
    partition heals: A joins again with a new lease and serves a new client.
C6  etcd member m0 killed (the first URL of both instances, not the leader): A and
    B fail over to the others and keep their leases (no fence for a whole TTL),
    new claims through A and B succeed, a takeover from A to B is still ordered.
C7  every etcd member down: A (on_unavailable refuse) closes a new client with
    cluster_unavailable and /readyz answers 503; B (local) serves a new client and
    logs "cluster unavailable" with action local.

Exit 0 pass, 1 fail, 77 skip (no root/namespaces, no etcd); the last line is
"N passed, N failed".  LL_FAULT_CLUSTER_ALTERNATIONS sets C3's count.
"""

import os
import sys
import time

import clusterlib
from clusterlib import ClusterRig, main, percentile
from faultlib import CLIENT_PORT, margin, ms, stats_ms
from netns import wait_for

ALTERNATIONS = int(os.environ.get("LL_FAULT_CLUSTER_ALTERNATIONS") or 100)
TTL_S = 5.0                       # lease_ttl_ms default
FENCE_S = TTL_S - max(1.0, TTL_S / 5)   # fencing: this long after the last renewal


def _key_check(c, case, rig, client, want):
    try:
        owner = rig.key_owner(client)
    except OSError as e:
        owner = "etcd unreadable: %s" % e
    c.check(owner == want, "%s: etcd's identity key of %s is bound to %s's lease" % (case, client, want),
            "owner %s; keys %s" % (owner, _keys(rig)))


def _keys(rig):
    try:
        return rig.etcd.range(clusterlib.PREFIX + "/", prefix=True)
    except OSError as e:
        return "etcd unreadable: %s" % e


def _crash_return_cross(c, case, identity, return_port):
    """The crash-and-return through the other instance (C1, C2)."""
    with ClusterRig(c, case, client={"identity": identity,
                                     "heartbeat": {"keepalive_idle_ms": 5000, "keepalive_interval_ms": 1000,
                                                   "keepalive_count": 2, "user_timeout_ms": 0}}) as rig:
        ident = rig.client_addr() if identity == "address_port" else rig.topo.client_ip
        old_proc, acc = rig.start_client_and_warm()              # through A
        old = acc["conn"]
        _key_check(c, case, rig, ident, "A")

        t0, quiet_while_down = rig.crash_client([old_proc])
        rig.topo.restore_host("client")
        rig.note("client host back up; the client returns through B from :%d" % return_port)
        new_proc, new_tail = rig.client_proc("new", return_port, via="B")
        try:
            i_acc, acc2 = rig.srv_wait(lambda r: r["event"] == "accept" and r["conn"] != old, margin(5),
                                       "the server accepting the returning client")
            _, data2 = rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == acc2["conn"], margin(2),
                                    "the returning client's data at the server")
            m_close, close = rig.wait_close(lambda r: r["client"] == rig.client_addr(), margin(2),
                                            "A's close line for the old session", inst="A")
            evict = rig.find_log("A", "cluster eviction")

            def more():
                return sum(1 for r in rig.srv.records if r["event"] == "recv" and r["conn"] == acc2["conn"]) >= 3
            wait_for(lambda: rig.srv.poll() is not None and more(), margin(3), "B relaying the client's heartbeats")
        finally:
            rig.print_timeline(t0, since=t0 - 0.3, label="the crash")
        end = rig.srv_end(old)
        first_syn = new_tail.find(lambda r: r["event"] == "connect_attempt" and r.get("first"))
        syn_rel = first_syn["mono"] - t0 if first_syn else None
        acc_rel = acc2["mono"] - t0
        eof_rel = end[1]["mono"] - t0 if end else None
        _key_check(c, case, rig, ident, "B")
        rig.topo.stop(new_proc)

        c.check(quiet_while_down, "%s: the server noticed nothing while the client host was down" % case)
        c.check(end is not None and end[1]["event"] == "eof",
                "%s: the server saw EOF on A's old connection, not a reset" % case,
                str(end and end[1]))
        c.check(end is not None and end[0] < i_acc,
                "%s: the server saw that EOF BEFORE accepting B's new connection" % case,
                "EOF index %s, accept index %d" % (end and end[0], i_acc))
        c.check(close["reason"] == "replaced", "%s: A closed the old session with reason replaced" % case,
                "reason %s" % close["reason"])
        c.check(evict is not None and evict[1].get("from") == "b",
                "%s: A logged cluster eviction from b" % case, str(evict and evict[1]))
        c.check(close["bytes_from_client"] == rig.srv_bytes(old),
                "%s: the server got every byte A read from the old client" % case,
                "A read %d, server received %d" % (close["bytes_from_client"], rig.srv_bytes(old)))
        c.check("HB new" in data2.get("data", ""), "%s: B relays the returning client's data" % case,
                repr(data2.get("data")))
        c.check(int(acc2["peer"].rsplit(":", 1)[1]) not in (CLIENT_PORT, return_port),
                "%s: B's upstream connection comes from an ephemeral port" % case, acc2["peer"])
        served = acc_rel - syn_rel if syn_rel is not None else None
        c.check(served is not None and served < margin(1.0),
                "%s: the returning client accepted by the server within %s of its first SYN to B"
                % (case, ms(margin(1.0))), "+%s" % ms(served))
        ra = rig.metric("A", "lifeline_cluster_evictions_total", direction="received")
        rb = rig.metric("B", "lifeline_cluster_evictions_total", direction="requested")
        cb = rig.metric("B", "lifeline_cluster_claims_total", result="replaced")
        c.check(ra == 1 and rb == 1 and cb == 1,
                "%s: metrics: A evictions received 1, B evictions requested 1, B claims replaced 1" % case,
                "A received %s, B requested %s, B claims replaced %s" % (ra, rb, cb))
        c.summary("%s (%s): crash -> EOF on A's connection +%s, B's accept +%s (first SYN to B +%s: served %s "
                  "after it); A: reason %s, upstream_finish %s"
                  % (case, identity, ms(eof_rel), ms(acc_rel), ms(syn_rel), ms(served), close["reason"],
                     close.get("upstream_finish", "-")))


def c1_address_port(c):
    """C1: crash through A, return through B from the same port (identity address_port)"""
    _crash_return_cross(c, "C1", "address_port", CLIENT_PORT)


def c2_address(c):
    """C2: crash through A, return through B from another port (identity address)"""
    _crash_return_cross(c, "C2", "address", CLIENT_PORT + 1)


def c3_alternations(c):
    """C3: one fixed-port client alternating between A and B"""
    with ClusterRig(c, "C3", client={"identity": "address_port"}, workers=2) as rig:
        prev = None
        lat, eof_lat, spans = [], [], []
        violations, problems = [], []
        data_ok = reset_ok = 0
        t_start = time.monotonic()
        for i in range(ALTERNATIONS):
            via = "AB"[i % 2]
            cl = rig.sock("c%d" % i, CLIENT_PORT, via=via)
            try:
                cl.connect(margin(5))
                cl.send("iter %d hello\n" % i, quiet=True)
                i_acc, acc = rig.srv_wait(lambda r: r["event"] == "accept" and r["conn"] == i + 1, margin(5),
                                          "iteration %d: the server accepting connection %d (via %s)"
                                          % (i, i + 1, via))
                rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == i + 1 and
                             "iter %d hello" % i in r["data"], margin(2), "iteration %d: data" % i)
            except Exception:
                rig.print_timeline(cl.t_connect or time.monotonic(), since=(cl.t_connect or time.monotonic()) - 0.5,
                                   label="iteration %d's connect()" % i)
                raise
            data_ok += 1
            if prev is not None:
                lat.append(acc["mono"] - cl.t_connect)
                spans.append((cl.t_connect, acc["mono"], i))
                end = rig.srv_end(i)
                if end is not None and end[1]["event"] == "eof" and end[0] < i_acc:
                    eof_lat.append(end[1]["mono"] - cl.t_connect)
                else:
                    violations.append("iteration %d (to %s): old conn %d ended %s (index %s), new accept index %d"
                                      % (i, via, i, end and end[1].get("errno", end[1]["event"]),
                                         end and end[0], i_acc))
                    if len(violations) <= 2:
                        rig.print_timeline(cl.t_connect, since=cl.t_connect - 0.2,
                                           label="iteration %d's connect()" % i)
                st, _ = prev.wait_ended(margin(2), "iteration %d: the previous client to be aborted" % i)
                if st == "ECONNRESET":
                    reset_ok += 1
                else:
                    problems.append("iteration %d: previous client saw %s" % (i, st))
                prev.close()
            prev = cl
        loop_s = time.monotonic() - t_start
        keys_mid = _keys(rig)
        prev.close()                                   # the last one leaves: client_eof
        last_inst = "AB"[(ALTERNATIONS - 1) % 2]
        rig.wait_close(lambda r: r["reason"] != "replaced", margin(3), "the last session's close line",
                       inst=last_inst)
        reasons = {}
        for inst in "AB":
            for _, r in rig.closes(inst):
                reasons[(inst, r["reason"])] = reasons.get((inst, r["reason"]), 0) + 1
        for p in (violations + problems)[:10]:
            print("  problem: " + p)
        slow = [(i + 1, x) for i, x in enumerate(lat) if x > 0.1]
        if slow:
            print("  takeovers over 100 ms: %s" % ", ".join("iteration %d (to %s) %.0f ms" % (i, "AB"[i % 2], x * 1000)
                                                          for i, x in slow))
            t_c, t_a, i_slow = max(spans, key=lambda x: x[1] - x[0])
            rig.print_timeline(t_c, since=t_c - 0.02, until=t_a + 0.01,
                               label="the slowest takeover's connect() (iteration %d)" % i_slow)
        print("  etcd keys under %s/ with the last session open: %s" % (clusterlib.PREFIX, keys_mid))
        try:
            wait_for(lambda: not rig.identity_keys(), margin(3), "the identity key to go")
        except TimeoutError:
            pass
        keys_end = _keys(rig)
        c.check(not [k for k in keys_end if isinstance(k, dict) and "/id/" in k["key"]],
                "C3: no identity key left once the client has left", str(keys_end))
        n = ALTERNATIONS - 1
        c.check(not violations, "C3: %d/%d takeovers between instances: the server saw the old EOF before "
                "the new accept (order violations: %d)" % (n - len(violations), n, len(violations)))
        c.check(data_ok == ALTERNATIONS, "C3: every client's data arrived (%d/%d)" % (data_ok, ALTERNATIONS))
        c.check(reset_ok == n, "C3: every replaced client was aborted (%d/%d)" % (reset_ok, n))
        want = {("A", "replaced"): ALTERNATIONS // 2 - (1 if last_inst == "A" else 0),
                ("B", "replaced"): (ALTERNATIONS - ALTERNATIONS // 2) - (1 if last_inst == "B" else 0),
                (last_inst, "client_eof"): 1}
        c.check(reasons == want, "C3: close reasons: every session replaced but the last (client_eof)",
                "%s, expected %s" % (reasons, want))
        c.check(lat and max(lat) < margin(1.0), "C3: every cross-instance takeover (connect -> accept) < %s"
                % ms(margin(1.0)), stats_ms(lat))
        med = sorted(lat)[len(lat) // 2] if lat else None
        p99 = percentile(lat, 99) if lat else None
        c.summary("C3: %d cross-instance takeovers in %.1f s, order violations %d; connect() -> new accept: "
                  "median %.1f ms, p99 %.1f ms (%s); connect() -> old EOF %s"
                  % (n, loop_s, len(violations), med * 1000 if med else -1, p99 * 1000 if p99 else -1,
                     stats_ms(lat), stats_ms(eof_lat)))


def c4_reject(c):
    """C4: on_duplicate reject across instances"""
    with ClusterRig(c, "C4", client={"identity": "address", "on_duplicate": "reject"}) as rig:
        first = rig.sock("first", CLIENT_PORT, via="A").connect(margin(5))
        first.send("first hello\n")
        _, acc = rig.srv_wait(lambda r: r["event"] == "accept", margin(5), "the server accepting")
        fc = acc["conn"]
        rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == fc, margin(5), "the first client's data")
        second = rig.sock("second", CLIENT_PORT + 1, via="B")
        try:
            second.connect(margin(5))
            second.try_send("second hello\n")
            st, t_end = second.wait_ended(margin(2), "the second client to see its connection closed")
        except ConnectionResetError:
            st, t_end = "ECONNRESET", time.monotonic()
        t0 = second.t_connect
        try:
            _, rej = rig.wait_close(lambda r: r["client"] == rig.client_addr(CLIENT_PORT + 1), margin(2),
                                    "B's close line of the second connection", inst="B")
            first.send("first later\n")
            rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == fc and "first later" in r["data"],
                         margin(2), "the first client's later data")
        finally:
            rig.print_timeline(t0, since=acc["mono"] - 0.01, label="the second connect()")
        accepts = rig.srv_accepts()
        a_closed = rig.closes("A")
        c.check(st in ("ECONNRESET", "eof"), "C4: the second client (through B) sees its connection closed", st)
        c.check(rej["reason"] == "rejected", "C4: B's reason is rejected", "reason %s" % rej["reason"])
        c.check(rej.get("upstream_local_port") == 0, "C4: no upstream connection for the rejected one",
                "upstream_local_port %s" % rej.get("upstream_local_port"))
        c.check(t_end - t0 < margin(1.0), "C4: rejected within %s" % ms(margin(1.0)), "+%s" % ms(t_end - t0))
        c.check(len(accepts) == 1, "C4: the server never accepted a second connection", "%d accepts" % len(accepts))
        c.check(not a_closed and first.state() == "open" and rig.srv_end(fc) is None,
                "C4: A's session is untouched and still relays", "%s %s %s" % (a_closed, first.state(),
                                                                              rig.srv_end(fc)))
        _key_check(c, "C4", rig, rig.topo.client_ip, "A")
        refused = rig.metric("B", "lifeline_cluster_claims_total", result="refused")
        c.check(refused == 1, "C4: B counts the claim as refused", "claims refused %s" % refused)
        c.summary("C4: the second connection (through B) closed (%s) +%s after its connect(), reason %s"
                  % (st, ms(t_end - t0), rej["reason"]))
        first.close()
        second.close()


def c5_partition(c):
    """C5: A cut off from etcd fences its sessions; the client returns through B"""
    with ClusterRig(c, "C5", client={"identity": "address_port"}, etcd_host={"A": "127.0.0.2", "B": "127.0.0.1"},
                    allow_errors={"A": ["cluster fenced"]}) as rig:
        old = rig.sock("old", CLIENT_PORT, via="A").connect(margin(5))
        old.send("old hello\n")
        _, acc = rig.srv_wait(lambda r: r["event"] == "accept", margin(5), "the server accepting")
        oc = acc["conn"]
        rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == oc, margin(5), "the old client's data")
        t_cut = rig.cut_etcd("127.0.0.2")
        try:
            m_fence, fence = rig.wait_log("A", "cluster fenced", TTL_S + margin(1.0))
            m_close, close = rig.wait_close(lambda r: r["client"] == rig.client_addr(), margin(2),
                                            "A's close line (fenced)", inst="A")
            _, end_rec = rig.srv_wait(lambda r: r.get("conn") == oc and r["event"] in ("eof", "error"), margin(2),
                                      "the server to see A's connection end")
            st, _ = old.wait_ended(margin(2), "the client to see A close it")
            old.close()
            rig.note("the client returns through B from :%d" % CLIENT_PORT)
            new = rig.sock("new", CLIENT_PORT, via="B").connect(margin(5))
            new.send("new hello\n")
            # A's lease lives until its TTL runs out at etcd: B may have to wait for that
            i_acc, acc2 = rig.srv_wait(lambda r: r["event"] == "accept" and r["conn"] != oc, TTL_S + margin(2),
                                       "the server accepting the client through B")
            _, d2 = rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == acc2["conn"], margin(2),
                                 "the new client's data")
        finally:
            rig.print_timeline(t_cut, since=t_cut - 2.0, label="the cut")
        end = rig.srv_end(oc)
        try:
            warn = rig.wait_log("A", "cluster lease renewal failed", margin(4.0))
        except TimeoutError:
            warn = None
        readyz = rig.admin("A", "/readyz")[0]
        up = rig.metric("A", "lifeline_cluster_up")
        fences = rig.metric("A", "lifeline_cluster_fences_total")
        fenced = rig.metric("A", "lifeline_cluster_fenced_sessions_total")
        renew_fail = rig.metric("A", "lifeline_cluster_lease_renew_failures_total")
        fence_rel = m_fence - t_cut
        c.check(rig.cut_count() > 0, "C5: nft dropped A's etcd traffic (%d packets)" % rig.cut_count())
        c.check(warn is not None and warn[1].get("level") == "warn",
                "C5: A logged cluster lease renewal failed (warn)", str(warn and warn[1]))
        c.check(fence_rel <= TTL_S, "C5: A fenced within lease_ttl_ms (%s) of the cut" % ms(TTL_S),
                "+%s" % ms(fence_rel))
        c.check(fence_rel <= FENCE_S + margin(0.3),
                "C5: ... and within ttl - margin (%s) of its last renewal (<= the cut)" % ms(FENCE_S),
                "+%s" % ms(fence_rel))
        c.check(fence.get("level") == "error" and fence.get("sessions") == 1,
                "C5: cluster fenced is an error line with sessions 1", str(fence))
        c.check(close["reason"] == "fenced", "C5: A closed the session with reason fenced",
                "reason %s" % close["reason"])
        c.check(end is not None and end[1]["event"] == "eof", "C5: the server saw EOF on A's connection",
                str(end and end[1]))
        c.check(end is not None and end[0] < i_acc, "C5: ... BEFORE it accepted the client through B",
                "EOF index %s, accept index %d" % (end and end[0], i_acc))
        c.check("new hello" in d2.get("data", ""), "C5: B relays the returning client", repr(d2.get("data")))
        _key_check(c, "C5", rig, rig.client_addr(), "B")
        c.check(readyz == 503, "C5: A's /readyz answers 503 without its lease (on_unavailable refuse)",
                "HTTP %s" % readyz)
        c.check(up == 0 and fences == 1 and fenced == 1 and renew_fail and renew_fail >= 1,
                "C5: A's metrics: cluster_up 0, fences 1, fenced sessions 1, renew failures >= 1",
                "up %s, fences %s, fenced sessions %s, renew failures %s" % (up, fences, fenced, renew_fail))
        c.summary("C5: cut -> A fenced +%s (first renewal failure logged +%s); server EOF +%s; client back "
                  "through B at +%s, accepted +%s (%s after its connect()); client saw %s"
                  % (ms(fence_rel), ms(warn[0] - t_cut if warn else None), ms(end_rec["mono"] - t_cut), ms(new.t_connect - t_cut),
                     ms(acc2["mono"] - t_cut), ms(acc2["mono"] - new.t_connect), st))
        # the partition heals: A joins again with a new lease and serves new clients
        n_joined = len(rig.logs("A", "cluster joined"))
        t_heal = rig.heal_etcd()
        try:
            wait_for(lambda: len(rig.logs("A", "cluster joined")) > n_joined, margin(5.0),
                     "A to log cluster joined again")
            rejoined = rig.logs("A", "cluster joined")[-1]
        except TimeoutError:
            rejoined = None
        z = rig.sock("z", CLIENT_PORT + 3, via="A")
        try:
            z.connect(margin(5))
            z.try_send("z hello\n")
            _, accz = rig.srv_wait(lambda r: r["event"] == "accept" and r["conn"] not in (oc, acc2["conn"]),
                                   margin(3), "the server accepting z through A")
        except (OSError, TimeoutError) as e:
            accz = None
            rig.print_timeline(t_heal, since=t_heal - 0.1, label="the heal")
            print("  z through A: %s" % e)
        c.check(rejoined is not None and int(str(rejoined[1].get("lease")), 16) != rig.lease["A"],
                "C5: healed, A joined again with a new lease", str(rejoined and rejoined[1]))
        c.check(accz is not None, "C5: ... and serves a new client")
        c.check(rig.admin("A", "/readyz")[0] == 200 and rig.metric("A", "lifeline_cluster_up") == 1,
                "C5: ... /readyz 200, lifeline_cluster_up 1")
        if rejoined:
            c.summary("C5: healed -> A joined again +%s" % ms(rejoined[0] - t_heal))
        z.close()
        new.close()


def c6_member_killed(c):
    """C6: one etcd member killed: leases held, claims and takeovers go on"""
    ttl_ms = 3000
    with ClusterRig(c, "C6", client={"identity": "address_port"}, ttl_ms=ttl_ms) as rig:
        x = rig.sock("x", CLIENT_PORT, via="A").connect(margin(5))
        x.send("x hello\n")
        _, acc = rig.srv_wait(lambda r: r["event"] == "accept", margin(5), "the server accepting x")
        xc = acc["conn"]
        # m0 is the first URL of both instances; the leader is another member, so that
        # what is measured is lifeline's failover, not an election (with election
        # timeout 1000 ms, ~2 s without a leader: renewals and claims wait for it)
        rig.etcd.move_leader(1, timeout=margin(10))
        t_kill = rig.note("SIGKILL etcd member m0 (the first URL of both instances; m1 leads)")
        rig.etcd.kill(0)
        rig.etcd.wait_healthy(timeout=margin(10), members=[1, 2])
        t_healthy = rig.note("etcd m1, m2 healthy (leader m%s)" % rig.etcd.leader())
        try:
            # a claim through B, the owner A: the takeover
            x2 = rig.sock("x2", CLIENT_PORT, via="B").connect(margin(5))
            x2.send("x2 hello\n")
            i_acc, acc2 = rig.srv_wait(lambda r: r["event"] == "accept" and r["conn"] != xc, margin(5),
                                       "the server accepting x through B")
            rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == acc2["conn"], margin(2), "x2's data")
            _, close = rig.wait_close(lambda r: r["client"] == rig.client_addr(), margin(2),
                                      "A's close line for x", inst="A")
            x.wait_ended(margin(2))
            x.close()
            # a new identity through A
            y = rig.sock("y", CLIENT_PORT + 2, via="A").connect(margin(5))
            y.send("y hello\n")
            _, accy = rig.srv_wait(lambda r: r["event"] == "accept" and r["conn"] not in (xc, acc2["conn"]),
                                   margin(5), "the server accepting y through A")
            rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == accy["conn"], margin(2), "y's data")
            # a whole TTL after the kill: the leases were renewed through the other members
            hold = t_kill + ttl_ms / 1000.0 + 0.5 - time.monotonic()
            rig.note("holding both sessions for %.1f s more" % max(0, hold))
            try:
                wait_for(lambda: rig.find_log("A", "cluster fenced") or rig.find_log("B", "cluster fenced"),
                         max(0.0, hold), "a fence")
            except TimeoutError:
                pass
            x2.send("x2 later\n")
            y.send("y later\n")
            rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == acc2["conn"] and "x2 later" in r["data"],
                         margin(2), "x2's later data")
            rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == accy["conn"] and "y later" in r["data"],
                         margin(2), "y's later data")
        finally:
            rig.print_timeline(t_kill, since=t_kill - 0.2, label="the kill")
        end = rig.srv_end(xc)
        fences = [inst for inst in "AB" if rig.find_log(inst, "cluster fenced")]
        up = (rig.metric("A", "lifeline_cluster_up"), rig.metric("B", "lifeline_cluster_up"))
        c.check(not fences, "C6: no instance fenced in the %d ms after the kill" % (ttl_ms + 500), str(fences))
        c.check(end is not None and end[1]["event"] == "eof" and end[0] < i_acc,
                "C6: takeover A -> B after the kill: EOF on the old connection before the new accept",
                "old end %s, accept index %d" % (end and (end[0], end[1]["event"]), i_acc))
        c.check(close["reason"] == "replaced", "C6: A's session closed as replaced", "reason %s" % close["reason"])
        c.check(not [r for _, r in rig.closes("B")] and not [r for _, r in rig.closes("A")
                                                            if r["client"] != rig.client_addr()],
                "C6: B's session of x and A's session of y are still open", "%s %s" % (rig.closes("A"),
                                                                                     rig.closes("B")))
        _key_check(c, "C6", rig, rig.client_addr(), "B")
        _key_check(c, "C6", rig, rig.client_addr(CLIENT_PORT + 2), "A")
        c.check(up == (1.0, 1.0), "C6: lifeline_cluster_up is 1 on both", str(up))
        c.summary("C6: m0 killed; m1, m2 healthy +%s; takeover through B accepted %s after x2's "
                  "connect(); y through A accepted %s after its connect()"
                  % (ms(t_healthy - t_kill), ms(acc2["mono"] - x2.t_connect), ms(accy["mono"] - y.t_connect)))
        x2.close()
        y.close()


def c7_all_down(c):
    """C7: every etcd member down: refuse (A) and local (B)"""
    with ClusterRig(c, "C7", client={"identity": "address_port"},
                    on_unavailable={"A": "refuse", "B": "local"},
                    allow_errors=["cluster fenced"]) as rig:
        ready_before = (rig.admin("A", "/readyz")[0], rig.admin("B", "/readyz")[0])
        t_down = rig.note("SIGKILL every etcd member")
        rig.etcd.stop_all()
        try:
            p = rig.sock("p", CLIENT_PORT, via="A")
            try:
                p.connect(margin(5))
                p.try_send("p hello\n")
                st, t_end = p.wait_ended(margin(4), "A to close the client (cluster unavailable)")
            except ConnectionResetError:
                st, t_end = "ECONNRESET", time.monotonic()
            _, cp = rig.wait_close(lambda r: r["client"] == rig.client_addr(), margin(2),
                                   "A's close line of p", inst="A")
            q = rig.sock("q", CLIENT_PORT + 1, via="B").connect(margin(5))
            q.send("q hello\n")
            _, accq = rig.srv_wait(lambda r: r["event"] == "accept", margin(5),
                                   "the server accepting q through B")
            rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == accq["conn"], margin(2), "q's data")
            _, unav_b = rig.wait_log("B", "cluster unavailable", margin(2))
            unav_a = rig.find_log("A", "cluster unavailable")

            def readyz_a():
                try:
                    return rig.admin("A", "/readyz")[0] == 503
                except OSError:
                    return False
            t_503 = None
            try:
                wait_for(readyz_a, TTL_S + margin(1.0), "A's /readyz to answer 503", interval=0.05)
                t_503 = time.monotonic()
            except TimeoutError:
                pass
            ready_b = rig.admin("B", "/readyz")[0]
            q.send("q later\n")
            try:
                rig.srv_wait(lambda r: r["event"] == "recv" and r["conn"] == accq["conn"] and "q later" in r["data"],
                             margin(2), "q's later data")
                q_later = True
            except TimeoutError:
                q_later = False
        finally:
            rig.print_timeline(t_down, since=t_down - 0.2, label="etcd down")
        accepts = rig.srv_accepts()
        c.check(ready_before == (200, 200), "C7: both /readyz 200 while etcd is up", str(ready_before))
        c.check(st in ("ECONNRESET", "eof"), "C7: A closed the new client", st)
        c.check(cp["reason"] == "cluster_unavailable", "C7: ... with reason cluster_unavailable",
                "reason %s" % cp["reason"])
        c.check(cp.get("upstream_local_port") == 0 and len(accepts) == 1,
                "C7: ... and never connected it upstream (one server accept: q's)",
                "upstream_local_port %s, %d accepts" % (cp.get("upstream_local_port"), len(accepts)))
        c.check(t_end - p.t_connect < margin(3.5), "C7: ... within %s (3 endpoints, 1 s each at most)"
                % ms(margin(3.5)), "+%s" % ms(t_end - p.t_connect))
        c.check(unav_a is not None and unav_a[1].get("action") == "refuse" and unav_a[1].get("level") == "warn",
                "C7: A logged cluster unavailable, action refuse (warn)", str(unav_a and unav_a[1]))
        c.check(t_503 is not None, "C7: A's /readyz answers 503 (lease not held, refuse) within %s of etcd "
                "going down" % ms(TTL_S + margin(1.0)),
                "still %s" % rig.admin("A", "/readyz")[0])
        c.check(unav_b.get("action") == "local" and unav_b.get("level") == "warn",
                "C7: B logged cluster unavailable, action local (warn)", str(unav_b))
        c.check(not [r for _, r in rig.closes("B")] and q_later,
                "C7: B still serves q after A's /readyz went 503 (q holds no etcd identity: nothing to fence)",
                "B's closes %s; q's later data arrived: %s" % (rig.closes("B"), q_later))
        c.check(ready_b == 200, "C7: B's /readyz stays 200 (on_unavailable local)", "HTTP %s" % ready_b)
        ua = rig.metric("A", "lifeline_cluster_claims_total", result="unavailable")
        lb = rig.metric("B", "lifeline_cluster_claims_total", result="local")
        c.check(ua == 1 and lb == 1, "C7: metrics: A claims unavailable 1, B claims local 1",
                "A unavailable %s, B local %s" % (ua, lb))
        c.summary("C7: etcd down -> A refused p +%s after its connect() (%s); A /readyz 503 at +%s; B served q "
                  "(local) %s after its connect()"
                  % (ms(t_end - p.t_connect), cp["reason"], ms(t_503 - t_down if t_503 else None),
                     ms(accq["mono"] - q.t_connect)))
        p.close()
        q.close()


if __name__ == "__main__":
    sys.exit(main([c1_address_port, c2_address, c3_alternations, c4_reject, c5_partition, c6_member_killed,
                   c7_all_down]))
