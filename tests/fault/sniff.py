#!/usr/bin/env python3
"""Tiny TCP/IPv4 packet recorder (AF_PACKET, stdlib only) for the fault harness.

Runs inside one namespace (the proxy's, which sees everything between client
and server) and appends one JSON line per TCP packet seen on the given
interfaces to the record file:

  {"event": "ready", "ifaces": [...]}
  {"event": "pkt", "iface": "veth-s", "dir": "out"|"in", "src": "10.200.1.2:4000",
   "dst": "10.200.2.2:6000", "flags": "S"|"SA"|"A"|"R"|"PA"|"FA"|..., "seq": n,
   "ack": n, "len": payload_bytes, "mono": ..., "t": ...}

Times are the kernel's capture timestamps (SO_TIMESTAMPNS), carried over to the
monotonic clock, so packets order correctly against the other records.
"dir" is relative to this namespace: "in" arrived on the interface, "out" left by it.

  python3 sniff.py --iface veth-s --record /tmp/p.jsonl
"""

import argparse
import json
import selectors
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)   # SCM_TIMESTAMPNS has the same value
FLAGS = (("F", 0x01), ("S", 0x02), ("R", 0x04), ("P", 0x08), ("A", 0x10), ("U", 0x20))


def parse(frame):
    if len(frame) < 14 + 20 or struct.unpack("!H", frame[12:14])[0] != 0x0800:
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    if ip[9] != 6 or len(ip) < ihl + 20:
        return None
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    tcp = ip[ihl:]
    sport, dport, seq, ack, off_flags = struct.unpack("!HHIIH", tcp[:14])
    doff = (off_flags >> 12) * 4
    fl = off_flags & 0x3F
    flags = "".join(c for c, b in FLAGS if fl & b)
    return {"src": "%s:%d" % (src, sport), "dst": "%s:%d" % (dst, dport),
            "flags": flags, "seq": seq, "ack": ack, "len": max(0, total - ihl - doff)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", action="append", required=True)
    ap.add_argument("--record", required=True)
    args = ap.parse_args()
    out = open(args.record, "a", buffering=1)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    sel = selectors.DefaultSelector()
    for ifname in args.iface:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((ifname, 0))
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)   # kernel receive timestamps
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, ifname)
    out.write(json.dumps({"event": "ready", "ifaces": args.iface,
                          "mono": time.monotonic(), "t": time.time()}) + "\n")
    out.flush()
    while not stop:
        for key, _ in sel.select(timeout=0.5):
            while True:
                try:
                    frame, anc, _, addr = key.fileobj.recvmsg(65535, 64)
                except BlockingIOError:
                    break
                mono, t = time.monotonic(), time.time()
                for level, typ, data in anc:
                    if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(data) >= 16:
                        sec, nsec = struct.unpack("qq", data[:16])
                        kt = sec + nsec / 1e9          # when the kernel saw it (wall clock)
                        mono, t = mono - (t - kt), kt  # same instant on the monotonic clock
                p = parse(frame)
                if p is None:
                    continue
                rec = {"event": "pkt", "mono": mono, "t": t, "iface": key.data,
                       "dir": "out" if addr[2] == PACKET_OUTGOING else "in"}
                rec.update(p)
                out.write(json.dumps(rec) + "\n")
                out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
