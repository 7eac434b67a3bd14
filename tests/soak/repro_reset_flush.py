#!/usr/bin/env python3
"""Reproduces a lifeline bug the soak found: on a route with client.identity
"none", a client that resets while lifeline still holds bytes for the server
(written to the kernel, not yet taken by the server) costs those bytes: the
server reads a truncated stream, then a reset instead of EOF.

Why: on client_reset, lifeline writes what it holds, shutdown(SHUT_WR)s the
server connection and, for a session that owns no client identity, closes it
at once (half_fin_done -> finish_close -> close_upstream). If the server has
sent bytes that lifeline never read (here: its echo), close() makes the
kernel send a reset, and the reset drops whatever of lifeline's send queue
(the tail of the client's bytes, and the FIN) the server had not taken yet.
Sessions with an identity (address_port, address) wait for the server first
(await_server) and are not affected. Measured with a build that logs
SIOCOUTQ/SIOCINQ/TCP_INFO just before that close(): the upstream socket is in
FIN_WAIT1 with up to ~160 KB of the client's bytes not yet acknowledged by
the server, and ~65 KB of unread echo.

Clients (THREADS at once) each connect, send SIZE bytes and reset at once
(SO_LINGER 0). The server is a one-thread selectors echo server; per
connection it records the bytes it read and whether its read side ended with
EOF or with a reset (after a failed echo write it reads what is left; EPIPE
from send() means the FIN came before the reset, ECONNRESET that it did not). Each connection's first 16 bytes name
it, so the server's record and lifeline's `session closed` line (by client
address, in order) are matched exactly. README, close reasons: client_reset
-> server side `upstream.close` ("fin" by default): FIN after every byte the
client sent. Prints each session where the server read fewer bytes than
lifeline read from the client (bytes_from_client), or a reset instead of EOF.

usage: LIFELINE_BIN=build/lifeline [IDENTITY=none] [THREADS=8] [WORKERS=1] \\
       python3 tests/soak/repro_reset_flush.py SIZE COUNT [sink]

e.g.   IDENTITY=none THREADS=8 python3 tests/soak/repro_reset_flush.py 300000 1000
       -> a few hundred of 1000 sessions broken; the same with the default
       identity (address_port), or with a server that never writes (sink): 0.
"""
import collections, errno, itertools, os, selectors, socket, struct, sys, tempfile, threading, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from harness import Lifeline, config, route, free_port

SIZE, N = int(sys.argv[1]), int(sys.argv[2])
ECHO = not (len(sys.argv) > 3 and sys.argv[3] == "sink")
WORKERS = int(os.environ.get("WORKERS") or 1)
THREADS = int(os.environ.get("THREADS") or 1)
seen = {}                     # session number -> [bytes, end]


def server(lst):
    sel = selectors.DefaultSelector()
    sel.register(lst, selectors.EVENT_READ, None)
    st = {}
    while True:
        for key, mask in sel.select():
            if key.data is None:
                c, _ = lst.accept()
                c.setblocking(False)
                st[c] = {"hdr": b"", "id": None, "n": 0, "end": None, "out": bytearray()}
                sel.register(c, selectors.EVENT_READ, 1)
                continue
            c = key.fileobj
            x = st[c]

            def got(b):
                if x["id"] is None:
                    x["hdr"] += b[:16 - len(x["hdr"])]
                    if len(x["hdr"]) == 16:
                        x["id"] = int(x["hdr"][4:])
                x["n"] += len(b)
                if ECHO:
                    x["out"] += b
            try:
                if mask & selectors.EVENT_READ:
                    b = c.recv(65536)
                    if not b:
                        x["end"] = "eof"
                    else:
                        got(b)
                if x["out"]:
                    n = c.send(x["out"])
                    del x["out"][:n]
            except BlockingIOError:
                pass
            except OSError as e:
                # The echo write failed: the peer reset. EPIPE means the
                # socket was in CLOSE_WAIT, i.e. the FIN came before the
                # reset (the kernel's tcp_reset()); ECONNRESET: no FIN came.
                # What arrived before is still read (and counted); a recv()
                # after send() took the error returns 0 either way.
                x["out"].clear()
                while True:
                    try:
                        b = c.recv(65536)
                    except OSError:
                        b = b""
                    if not b:
                        break
                    got(b)
                x["end"] = "eof" if e.errno == errno.EPIPE else f"reset ({e.strerror})"
            if x["end"] is not None and not x["out"]:
                sel.unregister(c); c.close(); del st[c]
                seen[x["id"]] = (x["n"], x["end"])
            else:
                sel.modify(c, selectors.EVENT_READ | (selectors.EVENT_WRITE if x["out"] else 0),
                           1)


lst = socket.socket()
lst.bind(("127.0.0.1", 0)); lst.listen(512); lst.setblocking(False)
threading.Thread(target=server, args=(lst,), daemon=True).start()
tmp = tempfile.mkdtemp()
lport = free_port()
r = route(lport, [lst.getsockname()[1]])
if os.environ.get("IDENTITY"):
    r["client"] = {"identity": os.environ["IDENTITY"]}
d = Lifeline(config([r], workers=WORKERS), tmp)
d.start(); d.wait_ready()
body = os.urandom(SIZE)
counter = itertools.count()
mine = collections.defaultdict(list)     # client address -> [session number]
lock = threading.Lock()


def clients(n):
    for _ in range(n):
        i = next(counter)
        s = socket.create_connection(("127.0.0.1", lport))
        a = s.getsockname()
        with lock:
            mine[f"{a[0]}:{a[1]}"].append(i)
        s.sendall(b"SESS%012d" % i + body[16:])
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        time.sleep(0.005)


ts = [threading.Thread(target=clients, args=(N // THREADS,)) for _ in range(THREADS)]
for t in ts:
    t.start()
for t in ts:
    t.join()
N = N // THREADS * THREADS
recs = d.wait_count(N, "session closed", timeout=60)
time.sleep(1)
bad = reached = 0
logged = collections.defaultdict(list)
for rec in recs:
    logged[rec["client"]].append(rec)
for addr, ids in mine.items():
    for i, rec in zip(ids, logged[addr]):
        if i not in seen:
            continue               # never reached the server
        reached += 1
        n, end = seen[i]
        if n != rec["bytes_from_client"] or end != "eof":
            bad += 1
            if bad <= 6:
                print(f"  client {addr}: lifeline read {rec['bytes_from_client']} bytes (reason "
                      f"{rec['reason']}, duration_ms {rec['duration_ms']}, upstream_finish "
                      f"{rec.get('upstream_finish')}); the server read {n}, then {end}")
print(f"{'echo' if ECHO else 'sink'} server, {SIZE} bytes then RST, {WORKERS} worker(s), "
      f"{THREADS} client threads, identity {os.environ.get('IDENTITY', 'address_port')}: {bad} "
      f"of {reached} sessions that reached the server broke it")
d.stop(); d.kill()
