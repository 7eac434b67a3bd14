#!/usr/bin/env python3
"""A legacy-style server that records what it sees.

Listens on one address, accepts any number of connections, NEVER writes, and
handles the listening socket and every client socket in one select loop (as
the legacy servers lifeline protects do).  Every event is appended as one JSON
line to the record file, flushed at once, so a test in another namespace can
follow it:

  {"event": "listening", "addr": "10.200.2.2:6000", ...}
  {"event": "accept", "conn": 1, "peer": "10.200.1.2:4000", "local": "...", ...}
  {"event": "recv", "conn": 1, "len": 12, ...}      (+ "data": text, with --record-data)
  {"event": "eof", "conn": 1, ...}                 recv() returned 0 bytes
  {"event": "error", "conn": 1, "errno": "ECONNRESET", "op": "recv", ...}
  {"event": "close", "conn": 1, ...}                after eof or error
  {"event": "stop", ...}                            SIGTERM/SIGINT

Every line carries "mono" (time.monotonic()) and "t" (time.time()).

Test-only options, off by default (the legacy server never writes):
  --record-data          also record the bytes of every recv, latin-1 decoded
  --write-interval-ms N  write --write-bytes bytes to every open connection every
                         N ms (non-blocking; EAGAIN is skipped): a server that DOES
                         write, so the proxy has data in flight to its client.  A
                         failed write is recorded as {"event": "send_error", ...}
                         (not "error": recv() alone decides how a connection ends).

  python3 legacy_server.py --listen 10.200.2.2:6000 --record /tmp/x.jsonl
"""

import argparse
import errno
import json
import selectors
import signal
import socket
import sys
import time


def hostport(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


class Recorder:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def __call__(self, event, **fields):
        rec = {"mono": time.monotonic(), "t": time.time(), "event": event}
        rec.update(fields)
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    ap.add_argument("--record", required=True, help="JSON-lines record file (appended)")
    ap.add_argument("--recv-size", type=int, default=65536)
    ap.add_argument("--record-data", action="store_true")
    ap.add_argument("--write-interval-ms", type=int, default=0)
    ap.add_argument("--write-bytes", type=int, default=64)
    args = ap.parse_args()

    rec = Recorder(args.record)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))

    host, port = hostport(args.listen)
    lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(128)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    rec("listening", addr="%s:%d" % lsock.getsockname()[:2])

    next_id = 1
    conns = {}                                         # cid -> socket, for --write-interval-ms
    write_every = args.write_interval_ms / 1000.0
    next_write = time.monotonic() + write_every
    payload = b"S" * args.write_bytes
    while not stopping:
        timeout = 0.5
        if write_every:
            now = time.monotonic()
            if now >= next_write:
                next_write = now + write_every
                for cid, conn in list(conns.items()):
                    try:
                        conn.send(payload, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        pass
                    except OSError as e:
                        rec("send_error", conn=cid, errno=errno.errorcode.get(e.errno, str(e.errno)))
            timeout = max(0.0, min(timeout, next_write - time.monotonic()))
        try:
            ready = sel.select(timeout=timeout)
        except InterruptedError:
            continue
        for key, _ in ready:
            if key.data is None:                       # listening socket
                try:
                    conn, peer = lsock.accept()
                except OSError as e:
                    rec("error", conn=None, op="accept", errno=errno.errorcode.get(e.errno, str(e.errno)))
                    continue
                cid = next_id
                next_id += 1
                sel.register(conn, selectors.EVENT_READ, cid)
                conns[cid] = conn
                rec("accept", conn=cid, peer="%s:%d" % peer[:2], local="%s:%d" % conn.getsockname()[:2])
                continue
            cid, conn = key.data, key.fileobj
            try:
                data = conn.recv(args.recv_size)
            except OSError as e:
                rec("error", conn=cid, op="recv", errno=errno.errorcode.get(e.errno, str(e.errno)))
                data = None
            else:
                if data:
                    if args.record_data:
                        rec("recv", conn=cid, len=len(data), data=data.decode("latin-1"))
                    else:
                        rec("recv", conn=cid, len=len(data))
                    continue
                rec("eof", conn=cid)
            sel.unregister(conn)
            conns.pop(cid, None)
            conn.close()
            rec("close", conn=cid)
    rec("stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
