#!/usr/bin/env python3
"""Test peers run inside a test container (`podman exec ... python3 peer.py`),
on the container's own loopback. Python standard library only.

  peer.py server PORT LOG    an echo server on 127.0.0.1:PORT; appends one
                             line per event to LOG: "accept N ADDR:PORT", "eof N" (the
                             client side closed with FIN), "reset N"
  peer.py echo PORT SIZE [SRC]  sends SIZE random bytes to 127.0.0.1:PORT
                             (from the address SRC), half-closes, reads the
                             echo to EOF; exit 0 and "ok SIZE" when it came
                             back intact, 1 otherwise
  peer.py hold PORT FIFO     opens a session and keeps it: each line read
                             from FIFO is sent and its echo awaited ("ok" or
                             "lost" on stdout); "close" ends it with FIN
"""

import os
import socket
import sys
import threading


def server(port, log_path):
    lock = threading.Lock()
    count = [0]

    def note(line):
        with lock, open(log_path, "a") as f:
            f.write(line + "\n")

    def serve(conn, n):
        with conn:
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        note(f"eof {n}")
                        return
                    conn.sendall(data)
            except ConnectionResetError:
                note(f"reset {n}")

    srv = socket.create_server(("127.0.0.1", port))
    note("listening")
    while True:
        conn, peer = srv.accept()
        count[0] += 1
        note(f"accept {count[0]} {peer[0]}:{peer[1]}")
        threading.Thread(target=serve, args=(conn, count[0]), daemon=True).start()


def echo(port, size, source=None):
    data = os.urandom(size)
    src = (source, 0) if source else None
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=src) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        got = bytearray()
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            got += chunk
    if bytes(got) != data:
        print(f"bad echo: sent {len(data)}, got {len(got)}")
        return 1
    print(f"ok {size}")
    return 0


def hold(port, fifo):
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    print("connected", flush=True)
    while True:  # each writer opens the FIFO, writes a line, closes it
        with open(fifo) as commands:
            for line in commands:
                line = line.strip()
                if line == "close":
                    c.close()
                    print("closed", flush=True)
                    return 0
                msg = line.encode() + b"\n"
                try:
                    c.sendall(msg)
                    got = b""
                    while len(got) < len(msg):
                        chunk = c.recv(len(msg) - len(got))
                        if not chunk:
                            break
                        got += chunk
                    print("ok" if got == msg else "lost", flush=True)
                except OSError as e:
                    print(f"lost {e}", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        server(int(sys.argv[2]), sys.argv[3])
    elif mode == "echo":
        sys.exit(echo(int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5]))
    elif mode == "hold":
        sys.exit(hold(int(sys.argv[2]), sys.argv[3]))
    else:
        sys.exit(f"unknown mode {mode}")
