#!/usr/bin/env python3
"""A legacy client: one fixed source port, heartbeats, never reads.

Binds its fixed source port (SO_REUSEADDR) before every connect(), connects
with a plain blocking connect() (the kernel retransmits SYNs as it likes),
retries a failed connect every 100 ms, then sends a small heartbeat every
--interval-ms and never reads.  A failed send closes the socket and goes back
to connecting, from the same port.  Every event is one JSON line in the record
file (flushed at once) and a human line on stdout:

  {"event": "connect_attempt", "attempt": 1, "first": true, ...}  taken just before connect():
                                                                   the time of that attempt's first SYN
  {"event": "connect_failed", "attempt": 1, "errno": "ECONNREFUSED", ...}
  {"event": "connected", "attempt": 1, "local": "10.200.1.2:4000", "peer": "...", ...}
  {"event": "send_error", "errno": "EPIPE", "sent": 12, ...}

Every line carries "t" (time.time(), wall clock: the hosts share one clock)
and "mono" (time.monotonic(), also shared, since the hosts share one kernel).

  python3 legacy_client.py --connect 10.200.2.2:6000 --source-port 4000 \\
          --interval-ms 100 --record /tmp/c.jsonl
"""

import argparse
import errno
import json
import signal
import socket
import sys
import time


def hostport(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def ename(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connect", required=True, help="HOST:PORT")
    ap.add_argument("--source-port", type=int, required=True)
    ap.add_argument("--source-ip", default="0.0.0.0")
    ap.add_argument("--interval-ms", type=int, default=100)
    ap.add_argument("--retry-ms", type=int, default=100)
    ap.add_argument("--connect-timeout-ms", type=int, default=0,
                    help="give up one connect() after this long (0: the kernel's SYN retries)")
    ap.add_argument("--message", default="HB", help="heartbeat text; a sequence number is appended")
    ap.add_argument("--name", default="client")
    ap.add_argument("--record", required=True)
    args = ap.parse_args()

    out = open(args.record, "a", buffering=1)

    def rec(event, **fields):
        r = {"mono": time.monotonic(), "t": time.time(), "event": event, "name": args.name}
        r.update(fields)
        out.write(json.dumps(r) + "\n")
        out.flush()
        print("%.6f %s %s" % (r["t"], event,
                              " ".join("%s=%s" % kv for kv in fields.items())), flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    dest = hostport(args.connect)
    attempt = 0
    seq = 0
    while True:
        # ---- connect from the fixed port, retrying every retry_ms
        while True:
            attempt += 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((args.source_ip, args.source_port))
            except OSError as e:
                rec("bind_failed", attempt=attempt, errno=ename(e))
                s.close()
                time.sleep(args.retry_ms / 1000.0)
                continue
            if args.connect_timeout_ms:
                s.settimeout(args.connect_timeout_ms / 1000.0)
            rec("connect_attempt", attempt=attempt, first=(attempt == 1),
                src="%s:%d" % (args.source_ip, args.source_port), dst=args.connect)
            try:
                s.connect(dest)
            except OSError as e:
                rec("connect_failed", attempt=attempt,
                    errno=ename(e) if not isinstance(e, socket.timeout) else "TIMEOUT")
                s.close()
                time.sleep(args.retry_ms / 1000.0)
                continue
            s.settimeout(None)
            rec("connected", attempt=attempt, local="%s:%d" % s.getsockname(),
                peer="%s:%d" % s.getpeername())
            break
        # ---- heartbeats, never read
        sent = 0
        try:
            while True:
                seq += 1
                msg = ("%s %s %d\n" % (args.message, args.name, seq)).encode()
                s.sendall(msg)
                sent += len(msg)
                if sent == len(msg):       # first heartbeat on this connection
                    rec("first_send", len=len(msg))
                time.sleep(args.interval_ms / 1000.0)
        except OSError as e:
            rec("send_error", errno=ename(e), sent=sent)
            s.close()
            time.sleep(args.retry_ms / 1000.0)


if __name__ == "__main__":
    sys.exit(main())
