#!/usr/bin/env python3
"""Fault tests: the transparent source (upstream.source_address "client") with
config/transparent-routing.sh, in network namespaces (client, proxy, server).

case 1  gateway, IPv4: lifeline's host routes between client and server. The
        server's accept() sees the client's IP from a port that is not the
        client's; bytes both ways exact; the client's close gives the server EOF.
case 2  gateway: the seed scenario (client host crash, return from its fixed
        port): EOF on the old connection before the new accept, both from the
        client's IP, from two different ephemeral ports.
case 3  sidecar, IPv4: lifeline and the server in one namespace (the server
        on the pod's address), upstream.mark set: the same checks as case 1.
case 4  sidecar, IPv6: the same.
case 5  transparent-routing.sh: up twice leaves one rule, one route and one
        nftables table per family; down leaves the namespace as it was; a bad
        MARK is refused.
case 6  the gateway without the routing: the connect times out, and the log
        line's hint names the routing script.
case 7  with only the client's port and one other left to the kernel, the
        server sees the other: never the client's port.

Exit 0 pass, 1 fail, 77 skip; the last line is "N passed, N failed".
"""

import os
import socket
import subprocess
import sys
import time

import faultlib
import scenarios
import test_takeover
from faultlib import CLIENT_PORT, PROXY_PORT, SERVER_PORT, Rig, margin
from lifeline_testlib import REPO, lifeline_bin
from netns import JsonlTail, Topology, wait_for

SCRIPT = os.path.join(REPO, "config", "transparent-routing.sh")
MARK = 0x4c4c  # the script's default


def routing(topo, action, *args):
    return topo.run("proxy", ["sh", SCRIPT, action] + [str(a) for a in args], check=False)


def routing_up(topo):
    r = routing(topo, "up")
    if r.returncode != 0:
        raise AssertionError("transparent-routing.sh up: %s" % r.stderr)


def split_peer(peer):
    host, _, port = peer.rpartition(":")
    return host.strip("[]"), int(port)


def read_some(s, want, timeout):
    """Reads from socket s until `want` bytes came, or timeout; returns them."""
    got = b""
    deadline = time.monotonic() + timeout
    s.settimeout(0.2)
    while len(got) < want and time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        got += chunk
    return got


def relay_checks(c, case, client_sock, client_ip, srv_tail, server_ip_label):
    """A client connected through lifeline: the server's view of it, bytes
    both ways, and the EOF its close gives the server."""
    msg = b"hello from a transparent client\n"
    client_sock.sendall(msg)

    def accepted():
        srv_tail.poll()
        return next((r for r in srv_tail.records if r["event"] == "accept"), None)
    acc = wait_for(accepted, margin(5), "the server's accept")
    ip, port = split_peer(acc["peer"])
    c.check(ip == client_ip, "%s: the server's accept() sees the client's own IP %s"
            % (case, client_ip), "peer %s" % acc["peer"])
    client_port = client_sock.getsockname()[1]
    c.check(port != client_port, "%s: from an ephemeral port, not the client's %d"
            % (case, client_port), "peer %s" % acc["peer"])

    def data():
        srv_tail.poll()
        return "".join(r.get("data", "") for r in srv_tail.records
                       if r["event"] == "recv" and r["conn"] == acc["conn"]) or None
    got = wait_for(lambda: (lambda d: d if d and len(d) >= len(msg) else None)(data()),
                   margin(5), "the client's bytes at the server")
    c.check(got == msg.decode(), "%s: the server received the client's bytes exactly" % case,
            repr(got))
    back = read_some(client_sock, 256, margin(5))
    c.check(len(back) >= 256 and back == b"S" * len(back),
            "%s: the client received the server's bytes (%s) exactly" % (case, server_ip_label),
            "%d bytes, %r..." % (len(back), back[:16]))
    client_sock.close()

    def ended():
        srv_tail.poll()
        return next((r for r in srv_tail.records if r.get("conn") == acc["conn"]
                     and r["event"] in ("eof", "error")), None)
    end = wait_for(ended, margin(5), "the server seeing the client's close")
    c.check(end["event"] == "eof", "%s: the client's close gave the server EOF" % case,
            end["event"] + " " + end.get("errno", ""))
    return acc


def case1_gateway(c):
    """case 1: gateway, IPv4"""
    with Rig(c, "case 1", upstream={"source_address": "client"},
             server_args=("--write-interval-ms", "20", "--write-bytes", "64")) as rig:
        routing_up(rig.topo)
        s = faultlib.ns_socket(rig.topo.ns("client"))
        s.bind((rig.topo.client_ip, CLIENT_PORT))
        s.settimeout(margin(5))
        s.connect((rig.topo.proxy_client_ip, PROXY_PORT))
        relay_checks(c, "case 1", s, rig.topo.client_ip, rig.srv, "through the gateway")
    c.summary("case 1: gateway IPv4: client address kept, ephemeral port, bytes both ways, EOF")


def case2_gateway_crash_return(c):
    """case 2: gateway, client host crash and return from its fixed port"""
    hb = {"keepalive_idle_ms": 5000, "keepalive_interval_ms": 1000, "keepalive_count": 2,
          "user_timeout_ms": 0}
    rig, close, _, eof_rel, acc_rel, syn_rel, _ = test_takeover._crash_and_return(
        c, "case 2", hb, False, None, 1.0 + margin(0.5), upstream={"source_address": "client"},
        setup=lambda rig: routing_up(rig.topo))
    old, new = rig.accepts
    ips = {split_peer(old["peer"])[0], split_peer(new["peer"])[0]}
    c.check(ips == {rig.topo.client_ip}, "case 2: both server connections come from the client's IP"
            " %s" % rig.topo.client_ip, "old %s, new %s" % (old["peer"], new["peer"]))
    c.summary("case 2: gateway crash and return: old %s, new %s; EOF +%.0f ms, new accept +%.0f ms"
              " after the crash" % (old["peer"], new["peer"], (eof_rel or 0) * 1000, acc_rel * 1000))


def _enable_ipv6(topo, host):
    topo.run(host, ["sh", "-c", "for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do "
                                "echo 0 > $f; done"])


def _sidecar(c, case, family):
    with Topology() as topo:
        if family == socket.AF_INET6:
            _enable_ipv6(topo, "client")
            _enable_ipv6(topo, "proxy")
            n = topo.client_ip.split(".")[2]
            pod_ip, client_ip = "fd00:200:%s::1" % n, "fd00:200:%s::2" % n
            topo.run("proxy", ["ip", "-6", "addr", "add", pod_ip + "/64", "dev",
                               topo.iface("proxy", "client"), "nodad"])
            topo.run("client", ["ip", "-6", "addr", "add", client_ip + "/64", "dev",
                                topo.iface("client", "proxy"), "nodad"])
            fmt = "[%s]:%d"
        else:
            pod_ip, client_ip = topo.proxy_client_ip, topo.client_ip
            fmt = "%s:%d"
        # The server shares lifeline's namespace and listens on the pod's
        # address (a server on loopback cannot see outside addresses).
        rec = topo.path("server.jsonl")
        topo.spawn("proxy", [sys.executable, os.path.join(faultlib.HERE, "legacy_server.py"),
                             "--listen", fmt % (pod_ip, SERVER_PORT), "--record", rec,
                             "--record-data", "--write-interval-ms", "20", "--write-bytes", "64"],
                   stdout=subprocess.DEVNULL)
        tail = JsonlTail(rec)
        wait_for(lambda: tail.find(lambda r: r["event"] == "listening"), 10, "the server listening")
        routing_up(topo)
        cfg = {"workers": 1, "shutdown": {"drain_timeout_ms": 500},
               "routes": [{"name": "pod", "listen": fmt % (pod_ip, PROXY_PORT),
                           "upstream": {"servers": [fmt % (pod_ip, SERVER_PORT)],
                                        "source_address": "client", "mark": MARK}}]}
        ll = scenarios.start_lifeline(topo, lifeline_bin(), cfg, timeout=margin(10))
        s = faultlib.ns_socket(topo.ns("client"), family)
        s.bind((client_ip, CLIENT_PORT))
        s.settimeout(margin(5))
        s.connect((pod_ip, PROXY_PORT))
        acc = relay_checks(c, case, s, client_ip, tail, "in the pod")
        ll.proc.terminate()
        rc = ll.proc.wait(margin(10))
        c.check(rc == 0, "%s: lifeline exit 0 on SIGTERM" % case, "exit %s" % rc)
    return acc


def case3_sidecar_ipv4(c):
    """case 3: sidecar, IPv4"""
    acc = _sidecar(c, "case 3", socket.AF_INET)
    c.summary("case 3: sidecar IPv4: the server saw %s" % acc["peer"])


def case4_sidecar_ipv6(c):
    """case 4: sidecar, IPv6"""
    acc = _sidecar(c, "case 4", socket.AF_INET6)
    c.summary("case 4: sidecar IPv6: the server saw %s" % acc["peer"])


def case6_no_routing(c):
    """case 6: gateway without the routing: the failure says where to look"""
    with Rig(c, "case 6", upstream={"source_address": "client", "connect_timeout_ms": 300,
                                     "retries": 0}) as rig:
        s = faultlib.ns_socket(rig.topo.ns("client"))
        s.bind((rig.topo.client_ip, CLIENT_PORT))
        s.settimeout(margin(5))
        s.connect((rig.topo.proxy_client_ip, PROXY_PORT))
        s.sendall(b"nobody routes the answer\n")
        _, fail = wait_for(lambda: rig.ll.find(lambda r: r.get("msg") == "upstream connect failed"),
                           margin(5), "the failed connect")
        c.check(fail.get("error") == "connection timed out"
                and "transparent-routing.sh status" in fail.get("hint", ""),
                "case 6: without the routing, the connect times out and the log line's hint names "
                "the routing script", str(fail))
        _, closed = wait_for(lambda: rig.ll.find(lambda r: r.get("msg") == "session closed"),
                             margin(5), "the session's close")
        c.check(closed["reason"] == "upstream_connect_failed",
                "case 6: the session ends with upstream_connect_failed", closed["reason"])
        s.close()
    c.summary("case 6: no routing: timeout, with a hint at the routing script")


def case7_never_the_client_port(c):
    """case 7: the upstream port is never the client's, even when the kernel would pick it"""
    with Rig(c, "case 7", upstream={"source_address": "client"}) as rig:
        routing_up(rig.topo)
        # Only the client's port and one other are left to pick from.
        rig.topo.run("proxy", ["sysctl", "-qw", "net.ipv4.ip_local_port_range=%d %d"
                               % (CLIENT_PORT, CLIENT_PORT + 1)])
        s = faultlib.ns_socket(rig.topo.ns("client"))
        s.bind((rig.topo.client_ip, CLIENT_PORT))
        s.settimeout(margin(5))
        s.connect((rig.topo.proxy_client_ip, PROXY_PORT))
        s.sendall(b"which port?\n")
        _, acc = rig.srv_wait(lambda r: r["event"] == "accept", margin(5), "the server's accept")
        c.check(acc["peer"] == "%s:%d" % (rig.topo.client_ip, CLIENT_PORT + 1),
                "case 7: from the client's IP and the one port left that is not the client's %d"
                % CLIENT_PORT, acc["peer"])
        s.close()
    c.summary("case 7: with only ports %d-%d free, the server saw %s"
              % (CLIENT_PORT, CLIENT_PORT + 1, acc["peer"]))


def case5_script(c):
    """case 5: transparent-routing.sh is idempotent and leaves nothing behind"""
    with Topology() as topo:
        _enable_ipv6(topo, "proxy")

        def snapshot():
            # Without the link-local routes: the kernel adds them when the
            # interfaces' fe80:: addresses finish duplicate address
            # detection, at a moment of its own (a CI run caught one
            # appearing between two snapshots).
            out = []
            for argv in (["ip", "-4", "rule"], ["ip", "-6", "rule"],
                         ["ip", "-4", "route", "show", "table", "all"],
                         ["ip", "-6", "route", "show", "table", "all"],
                         ["nft", "list", "ruleset"]):
                text = topo.run("proxy", argv, check=False).stdout
                out.append("\n".join(line for line in text.splitlines() if "fe80:" not in line))
            return out
        before = snapshot()
        st = routing(topo, "status")
        c.check(st.returncode == 1 and "missing:" in st.stdout,
                "case 5: status before up: exit 1, naming what is missing", st.stdout.strip())
        r1, r2 = routing(topo, "up"), routing(topo, "up")
        c.check(r1.returncode == 0 and r2.returncode == 0, "case 5: up twice, exit 0 both times",
                r1.stderr + r2.stderr)
        after = snapshot()
        rules4 = [x for x in after[0].splitlines() if "fwmark 0x4c4c" in x]
        rules6 = [x for x in after[1].splitlines() if "fwmark 0x4c4c" in x]
        local4 = [x for x in after[2].splitlines() if "table 19532" in x]
        local6 = [x for x in after[3].splitlines() if "table 19532" in x]
        tables = after[4].count("table inet lifeline_transparent")
        c.check((len(rules4), len(rules6), len(local4), len(local6), tables) == (1, 1, 1, 1, 1),
                "case 5: one rule, one local route per family and one nftables table",
                "rules %d/%d, routes %d/%d, tables %d" % (len(rules4), len(rules6), len(local4),
                                                          len(local6), tables))
        st = routing(topo, "status")
        c.check(st.returncode == 0 and "missing" not in st.stdout, "case 5: status after up: exit 0",
                st.stdout.strip())
        st7 = routing(topo, "status", 7)
        c.check(st7.returncode == 1 and "mark 7" in st7.stdout,
                "case 5: status with another MARK says its rules are missing", st7.stdout.strip())
        r7 = routing(topo, "up", 7)
        now = snapshot()
        ours = [x for x in now[0].splitlines() + now[1].splitlines() if "lookup 19532" in x]
        c.check(r7.returncode == 0 and len(ours) == 2 and all("fwmark 0x7 " in x for x in ours)
                and "meta mark set 0x00000007" in now[4] and "0x00004c4c" not in now[4],
                "case 5: up 7 replaces the rules of the other mark, one per family", "\n".join(ours))
        rd = routing(topo, "down")
        c.check(rd.returncode == 0 and snapshot() == before,
                "case 5: then one down leaves the namespace's rules, routes and ruleset as they "
                "were", rd.stderr)
        main = topo.run("proxy", ["env", "LIFELINE_ROUTE_TABLE=main", "sh", SCRIPT, "up"],
                        check=False)
        c.check(main.returncode == 2 and "LIFELINE_ROUTE_TABLE" in main.stderr
                and snapshot() == before,
                "case 5: the main routing table is refused as the script's own, nothing changed",
                main.stderr.strip())
        bad = routing(topo, "up", "zero")
        c.check(bad.returncode == 2 and "MARK must be a number" in bad.stderr
                and snapshot() == before, "case 5: a bad MARK is refused and changes nothing",
                "exit %d: %s" % (bad.returncode, bad.stderr.strip()))
    c.summary("case 5: transparent-routing.sh up/up/down: idempotent, nothing left behind")


if __name__ == "__main__":
    sys.exit(faultlib.main([case1_gateway, case2_gateway_crash_return, case3_sidecar_ipv4,
                            case4_sidecar_ipv6, case5_script, case6_no_routing,
                            case7_never_the_client_port]))
