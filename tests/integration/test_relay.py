"""Relay: byte-exact both ways, at volume, concurrently, half-close aware."""

import errno
import hashlib
import json
import os
import select
import selectors
import socket
import struct
import threading
import time
import unittest

from harness import (LOOPBACK, KiB, MiB, AcceptServer, EchoServer, LifelineTestCase, Reader,
                     SinkServer, addr_str, config, connect, free_port, have_ipv6_loopback,
                     listen_port, raise_nofile, recv_exact, recv_until_eof, route, scaled,
                     wait_closed, wait_until)
from test_admin import admin_port, http_exchange, request_bytes, with_admin


def sessions(d):
    return json.loads(http_exchange(admin_port(d), request_bytes("GET", "/sessions")).body)


def flood(sock):
    """Send without reading until nothing more goes (every buffer on the way
    is full, for 0.3 s) or 10 s pass; return the bytes sent."""
    sock.setblocking(False)
    block, sent = os.urandom(64 * KiB), 0
    deadline = time.monotonic() + scaled(10)
    while time.monotonic() < deadline:
        try:
            sent += sock.send(block)
        except BlockingIOError:
            if select.select([], [sock], [], 0.3)[1] == []:
                break
    return sent


def read_to_end(sock):
    """Read until EOF or a reset (10 s at most); return ("eof" or "reset", bytes read)."""
    got = 0
    sock.settimeout(scaled(10))
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return "eof", got
            got += len(chunk)
    except ConnectionResetError:
        return "reset", got


class BulkTransfer(LifelineTestCase):

    def test_64mib_each_way_at_once(self):
        """64 MiB of random bytes from the client and a different 64 MiB from
        the server, both at once through one session: SHA-256 equal at both
        ends, both directions complete, counted in the close line."""
        size = 64 * MiB
        up_data = os.urandom(size)
        down_data = os.urandom(size)
        srv = self.server(AcceptServer)
        d = self.start_lifeline(config([route(free_port(), [srv.port])]))
        port = listen_port(d)

        cli = self.client(port)
        client = addr_str(cli.getsockname())
        conn, _ = srv.accept()

        def send_all(sock, data, box):
            try:
                sock.settimeout(None)
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                box.append(e)

        errors = []
        at_server = Reader(conn).start()
        at_client = Reader(cli).start()
        senders = [threading.Thread(target=send_all, args=(cli, up_data, errors), daemon=True),
                   threading.Thread(target=send_all, args=(conn, down_data, errors), daemon=True)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(scaled(120))
            self.assertFalse(t.is_alive(), "a sender did not finish")
        self.assertEqual(errors, [])
        at_server.join(scaled(60))
        at_client.join(scaled(60))

        self.assertEqual((at_server.end, at_client.end), ("eof", "eof"))
        self.assertEqual(at_server.count, size)
        self.assertEqual(at_client.count, size)
        self.assertEqual(at_server.hash.hexdigest(), hashlib.sha256(up_data).hexdigest(),
                         "client -> server bytes differ")
        self.assertEqual(at_client.hash.hexdigest(), hashlib.sha256(down_data).hexdigest(),
                         "server -> client bytes differ")

        cli.close()
        conn.close()
        rec = d.session_closed(client)
        self.assertIn(rec["reason"], ("client_eof", "upstream_eof"), rec)
        self.assertEqual(rec["bytes_from_client"], size, rec)
        self.assertEqual(rec["bytes_from_server"], size, rec)


class ConcurrentSessions(LifelineTestCase):

    N = 1000
    PAYLOAD = 4 * KiB

    def payload(self, i):
        head = f"session {i:05d} ".encode()
        body = hashlib.sha256(head).digest() * (self.PAYLOAD // 32 + 1)
        return (head + body)[: self.PAYLOAD]

    def test_1000_concurrent_sessions(self):
        """1,000 sessions open at once, each echoing its own data back intact.
        No session is closed until every one has its echo, so all 1,000 are
        relayed concurrently; then each ends with one `session closed`.
        Where the descriptor limit is lower (a container's 1,024), as many as
        this process can hold: two descriptors each (client and echo)."""
        soft = raise_nofile(4 * self.N + 256)
        n = min(self.N, (soft - 256) // 2)
        self.assertGreaterEqual(n, 100, f"descriptor limit {soft}: too low for this test")
        echo = self.server(EchoServer)
        d = self.start_lifeline(config([route(free_port(), [echo.port])], workers=2))
        port = listen_port(d)

        sel = selectors.DefaultSelector()
        self.addCleanup(sel.close)
        states = []
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.track(s)
            s.setblocking(False)
            err = s.connect_ex((LOOPBACK, port))
            self.assertIn(err, (0, errno.EINPROGRESS), f"connect #{i}: {os.strerror(err)}")
            st = {"i": i, "sock": s, "out": memoryview(self.payload(i)), "sent": 0,
                  "got": bytearray(), "done": False}
            states.append(st)
            sel.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ, st)

        remaining = n
        deadline = time.monotonic() + scaled(90)
        while remaining:
            self.assertLess(time.monotonic(), deadline,
                            f"{remaining} of {n} sessions unfinished\n{d.log_tail()}")
            for key, events in sel.select(timeout=0.5):
                st = key.data
                s = st["sock"]
                if events & selectors.EVENT_WRITE and st["sent"] < self.PAYLOAD:
                    try:
                        st["sent"] += s.send(st["out"][st["sent"]:])
                    except (BlockingIOError, InterruptedError):
                        pass
                    if st["sent"] == self.PAYLOAD:
                        sel.modify(s, selectors.EVENT_READ, st)
                if events & selectors.EVENT_READ:
                    try:
                        chunk = s.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as e:
                        self.fail(f"session {st['i']}: {e!r}")
                    self.assertTrue(chunk, f"session {st['i']}: EOF after {len(st['got'])} bytes")
                    st["got"] += chunk
                    self.assertLessEqual(len(st["got"]), self.PAYLOAD)
                    if len(st["got"]) == self.PAYLOAD:
                        self.assertEqual(bytes(st["got"]), self.payload(st["i"]),
                                         f"session {st['i']}: echo differs")
                        st["done"] = True
                        sel.unregister(s)
                        remaining -= 1

        # Every session is open and verified; now close them all.
        clients = set()
        for st in states:
            clients.add(addr_str(st["sock"].getsockname()))
            st["sock"].close()
        closed = d.wait_count(n, "session closed", timeout=scaled(60))
        self.assertEqual(len(closed), n)
        self.assertEqual({r["client"] for r in closed}, clients)
        for r in closed:
            self.assertEqual(r["reason"], "client_eof", r)
            self.assertEqual(r["bytes_from_client"], self.PAYLOAD, r)
            self.assertEqual(r["bytes_from_server"], self.PAYLOAD, r)
        self.assertEqual(echo.accepted, n)


class HalfClose(LifelineTestCase):

    def setUp(self):
        super().setUp()
        self.srv = self.server(AcceptServer)
        self.d = self.start_lifeline(config([route(free_port(), [self.srv.port])]))
        self.port = int(self.d.cfg["routes"][0]["listen"].rsplit(":", 1)[1])

    def test_client_shuts_down_first(self):
        """Client SHUT_WR: the server gets every byte then EOF, still sends a
        reply the client receives, then closes: the client sees EOF."""
        request = os.urandom(300 * KiB)
        reply = os.urandom(500 * KiB)
        cli = self.client(self.port)
        conn, _ = self.srv.accept()
        cli.sendall(request)
        cli.shutdown(socket.SHUT_WR)

        got = recv_until_eof(conn, timeout=scaled(10))
        self.assertEqual(got, request, "server did not get the request exactly, then EOF")

        sender = threading.Thread(target=conn.sendall, args=(reply,), daemon=True)
        sender.start()
        self.assertEqual(recv_exact(cli, len(reply), timeout=scaled(10)), reply)
        sender.join(scaled(10))
        conn.close()
        self.assertEqual(wait_closed(cli, timeout=scaled(10)), "eof")

        self.assertSessionClosed(self.d, cli.getsockname(), "client_eof",
                                 bytes_from_client=len(request), bytes_from_server=len(reply))

    def test_server_shuts_down_first(self):
        """Server SHUT_WR: the client gets every byte then EOF, still sends
        data the server receives, then closes: the server sees EOF."""
        greeting = os.urandom(300 * KiB)
        upload = os.urandom(500 * KiB)
        cli = self.client(self.port)
        client = addr_str(cli.getsockname())
        conn, _ = self.srv.accept()
        conn.sendall(greeting)
        conn.shutdown(socket.SHUT_WR)

        got = recv_until_eof(cli, timeout=scaled(10))
        self.assertEqual(got, greeting, "client did not get the greeting exactly, then EOF")

        at_server = Reader(conn, keep=len(upload) + 1).start()
        cli.sendall(upload)
        cli.close()
        at_server.join(scaled(10))
        self.assertEqual(at_server.end, "eof")
        self.assertEqual(bytes(at_server.data), upload)

        self.assertSessionClosed(self.d, client, "upstream_eof",
                                 bytes_from_client=len(upload), bytes_from_server=len(greeting))


class Resets(LifelineTestCase):

    def setUp(self):
        super().setUp()
        self.srv = self.server(AcceptServer)
        self.d = self.start_lifeline(config([route(free_port(), [self.srv.port])]))
        self.port = listen_port(self.d)

    @staticmethod
    def reset(sock):
        """Closes with RST (SO_LINGER on, timeout 0)."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def test_client_reset(self):
        """The client's connection is reset: the server still gets every byte
        the client sent, then FIN; reason client_reset."""
        data = os.urandom(100 * KiB)
        cli = self.client(self.port)
        client = addr_str(cli.getsockname())
        conn, _ = self.srv.accept()
        cli.sendall(data)
        self.assertEqual(recv_exact(conn, len(data), timeout=scaled(10)), data)
        self.reset(cli)
        self.assertEqual(wait_closed(conn, timeout=scaled(10)), "eof")
        conn.close()
        self.assertSessionClosed(self.d, client, "client_reset", bytes_from_client=len(data))

    def test_upstream_reset(self):
        """The server's connection is reset: the client gets every byte the
        server sent, then FIN; reason upstream_reset."""
        data = os.urandom(100 * KiB)
        cli = self.client(self.port)
        client = addr_str(cli.getsockname())
        conn, _ = self.srv.accept()
        conn.sendall(data)
        self.assertEqual(recv_exact(cli, len(data), timeout=scaled(10)), data)
        self.reset(conn)
        self.assertEqual(wait_closed(cli, timeout=scaled(10)), "eof")
        self.assertSessionClosed(self.d, client, "upstream_reset", bytes_from_server=len(data))


class ResetWithBytesInFlight(LifelineTestCase):
    """A client that resets while lifeline still holds bytes for a slow
    server, and the server has written something lifeline will no longer
    read: the server still gets every byte lifeline read from the client,
    then its EOF, never a reset (close() with unread input would send one,
    destroying what is still queued)."""

    def check(self, identity):
        srv = self.server(AcceptServer)
        r = route(free_port(), [srv.port])
        r["client"] = {"identity": identity}
        d = self.start_lifeline(with_admin(config([r])))
        cli = self.client(listen_port(d))
        client = addr_str(cli.getsockname())
        conn, _ = srv.accept()
        # Fill every buffer between the client and the server, which reads nothing yet.
        self.assertGreater(flood(cli), 1 * MiB)
        cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        cli.close()
        # A reply makes lifeline write to the dead client and find it reset.
        conn.sendall(b"ping")
        wait_until(lambda: [x for x in sessions(d) if x["state"] == "closing"], scaled(5),
                   "the session closing")
        conn.sendall(b"late")  # lifeline does not read the server any more
        end = read_to_end(conn)
        rec = d.session_closed(client)
        self.assertEqual(rec["reason"], "client_reset", rec)
        self.assertEqual(end, ("eof", rec["bytes_from_client"]), rec)

    def test_identity_none(self):
        self.check("none")

    def test_identity_owner(self):
        self.check("address_port")


class ResetToAnEchoingServer(LifelineTestCase):
    """A server that writes back what it reads, one blocking write after
    each read, so that it stops reading while its writes cannot go out. A
    client that floods it and resets: lifeline goes on reading (and
    dropping) what the server writes while it flushes the client's bytes to
    it, so the flush completes at once, and the server gets every byte,
    then EOF (not the 5 s cut with a reset)."""

    def test_flush_to_an_echoing_server(self):
        lst = self.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        lst.bind((LOOPBACK, 0))
        lst.listen(8)
        result = {}

        def echo_blocking():
            c, _ = lst.accept()
            with c:
                c.settimeout(scaled(20))
                got, end = 0, "eof"
                try:
                    while True:
                        data = c.recv(65536)
                        if not data:
                            break
                        got += len(data)
                        c.sendall(data)
                except OSError as e:
                    end = type(e).__name__
                result.update(got=got, end=end, at=time.monotonic())
        t = threading.Thread(target=echo_blocking, daemon=True)
        t.start()
        r = route(free_port(), [lst.getsockname()[1]])
        r["client"] = {"identity": "none"}
        d = self.start_lifeline(config([r]))
        cli = self.client(listen_port(d))
        client = addr_str(cli.getsockname())
        # Send without reading the echo until nothing more goes: every
        # buffer on the way back, then the server, then the way there fill.
        self.assertGreater(flood(cli), 1 * MiB)
        cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset_at = time.monotonic()
        cli.close()
        t.join(scaled(20))
        rec = d.session_closed(client)
        self.assertEqual(rec["reason"], "client_reset", rec)
        self.assertEqual((result.get("end"), result.get("got")), ("eof", rec["bytes_from_client"]))
        self.assertLess(result["at"] - reset_at, scaled(3), "the flush waited for the 5 s cut")


class ServerResetWithBytesInFlight(LifelineTestCase):
    """The mirror: a server that resets while lifeline still holds bytes for
    a slow client, which has sent something lifeline will no longer read:
    the client gets every byte the server sent, then EOF."""

    def test_server_reset(self):
        srv = self.server(AcceptServer)
        d = self.start_lifeline(with_admin(config([route(free_port(), [srv.port])])))
        cli = self.client(listen_port(d))
        client = addr_str(cli.getsockname())
        conn, _ = srv.accept()
        self.assertGreater(flood(conn), 1 * MiB)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        cli.sendall(b"ping")  # lifeline writes it to the dead server and finds it reset
        wait_until(lambda: [x for x in sessions(d) if x["state"] == "closing"], scaled(5),
                   "the session closing")
        cli.sendall(b"late")  # lifeline does not read the client any more
        end = read_to_end(cli)
        rec = d.session_closed(client)
        self.assertEqual(rec["reason"], "upstream_reset", rec)
        self.assertEqual(end, ("eof", rec["bytes_from_server"]), rec)


class IPv6(LifelineTestCase):

    def test_ipv6_loopback(self):
        """Listening on [::1] and relaying to [::1] from source_address ::1."""
        if not have_ipv6_loopback():
            self.skipTest("no IPv6 loopback (::1) on this host")
        srv = self.server(AcceptServer, host="::1")
        port = free_port("::1")
        d = self.start_lifeline(config([route(port, [f"[::1]:{srv.port}"], listen_host="::1",
                                              source_address="::1")]))
        cli = self.client(port, host="::1")
        client = addr_str(cli.getsockname())
        conn, peer = srv.accept()
        self.assertEqual(peer[0], "::1")
        cli.sendall(b"over six")
        self.assertEqual(recv_exact(conn, 8), b"over six")
        conn.sendall(b"and back")
        self.assertEqual(recv_exact(cli, 8), b"and back")
        cli.close()
        self.assertEqual(wait_closed(conn), "eof")
        conn.close()
        rec = self.assertSessionClosed(d, client, "client_eof")
        self.assertEqual(rec["upstream_local_port"], peer[1])


class EarlyClientBytes(LifelineTestCase):

    def test_bytes_sent_before_upstream_is_up(self):
        """The first try fails (nobody listens yet); bytes sent before and
        during the retry wait all arrive at the server, in order."""
        up_port = free_port()
        d = self.start_lifeline(config([route(free_port(), [up_port], retries=6,
                                              retry_backoff_ms=200)]))
        port = listen_port(d)
        parts = [f"part {i:03d} ".encode() + os.urandom(10 * KiB) for i in range(20)]

        cli = self.client(port)
        client = addr_str(cli.getsockname())
        cli.sendall(b"".join(parts[:10]))  # before the first try has even failed
        d.wait_log("upstream connect failed", client=client, attempt=1)
        cli.sendall(b"".join(parts[10:]))  # upstream still down: in the retry wait
        sink = self.server(SinkServer, port=up_port)

        rec = sink.wait_connection(timeout=scaled(15))
        expected = b"".join(parts)
        wait_until(lambda: rec.count >= len(expected), scaled(10), "every byte at the server")
        cli.close()
        self.assertTrue(rec.ended.wait(scaled(10)), "no EOF at the server")
        self.assertEqual(rec.end, "eof")
        self.assertEqual(bytes(rec.data), expected)
        self.assertSessionClosed(d, client, "client_eof", bytes_from_client=len(expected),
                                 bytes_from_server=0, upstream_local_port=rec.peer[1])
        self.assertEqual(len(sink.connections()), 1)

    def test_client_eof_before_upstream_is_up(self):
        """The client sends its request and shuts down its write side before
        any upstream connection exists: once one is up, the server gets the
        request, then EOF; its reply still reaches the client."""
        up_port = free_port()
        d = self.start_lifeline(config([route(free_port(), [up_port], retries=6,
                                              retry_backoff_ms=200)]))
        request = os.urandom(40 * KiB)
        reply = os.urandom(40 * KiB)
        cli = self.client(listen_port(d))
        client = addr_str(cli.getsockname())
        cli.sendall(request)
        cli.shutdown(socket.SHUT_WR)
        d.wait_log("upstream connect failed", client=client, attempt=1)
        srv = self.server(AcceptServer, port=up_port)
        conn, _ = srv.accept(timeout=scaled(15))
        self.assertEqual(recv_until_eof(conn, timeout=scaled(10)), request)
        conn.sendall(reply)
        conn.close()
        self.assertEqual(recv_until_eof(cli, timeout=scaled(10)), reply)
        self.assertSessionClosed(d, client, "client_eof", bytes_from_client=len(request),
                                 bytes_from_server=len(reply))

    def test_client_reset_while_connecting(self):
        """The client resets its connection while lifeline waits to retry:
        the session ends at once with client_reset, never connected."""
        d = self.start_lifeline(config([route(free_port(), [free_port()], retries=5,
                                              retry_backoff_ms=2000)]))
        cli = self.client(listen_port(d))
        client = addr_str(cli.getsockname())
        cli.sendall(b"abc")
        d.wait_log("upstream connect failed", client=client, attempt=1)
        start = time.monotonic()
        Resets.reset(cli)
        rec = self.assertSessionClosed(d, client, "client_reset", upstream_local_port=0,
                                       bytes_from_client=3, timeout=scaled(1.5))
        self.assertLess(time.monotonic() - start, scaled(1.5))
        self.assertEqual(len(d.find("upstream connect failed", client=client)), 1, rec)

    def test_bytes_sent_while_resolving_hostname(self):
        """servers: ["localhost:PORT"]: the name is resolved per try; 256 KiB
        sent right after connect (more than buffer_bytes) arrive in order."""
        host_port = free_port()
        srv = self.server(AcceptServer, port=host_port)
        if have_ipv6_loopback():
            try:  # localhost may resolve to ::1 first: listen there too
                self.server(AcceptServer, host="::1", port=host_port)
            except OSError:
                pass
        d = self.start_lifeline(config([route(free_port(), [f"localhost:{host_port}"],
                                              buffer_bytes=65536)]))
        port = listen_port(d)
        data = os.urandom(256 * KiB)
        cli = self.client(port)
        sender = threading.Thread(target=cli.sendall, args=(data,), daemon=True)
        sender.start()
        conn, _ = srv.accept(timeout=scaled(10))
        self.assertEqual(recv_exact(conn, len(data), timeout=scaled(10)), data)
        sender.join(scaled(10))
        client = addr_str(cli.getsockname())
        cli.close()
        self.assertEqual(wait_closed(conn, timeout=scaled(10)), "eof")
        conn.close()
        self.assertSessionClosed(d, client, "client_eof", bytes_from_client=len(data))


class ManyShortSessions(LifelineTestCase):

    def test_200_sequential_round_trips_two_workers(self):
        """workers: 2. 200 connect/send/receive/close round trips in a row,
        each correct, each with exactly one `session closed` line."""
        n = 200
        echo = self.server(EchoServer)
        d = self.start_lifeline(config([route(free_port(), [echo.port])], workers=2))
        self.assertEqual(d.find("ready")[0].get("workers"), 2)
        port = listen_port(d)
        clients = []
        for i in range(n):
            msg = f"round trip {i} ".encode() + hashlib.sha256(str(i).encode()).digest() * 32
            with connect(port, timeout=scaled(10)) as s:
                clients.append(addr_str(s.getsockname()))
                s.sendall(msg)
                self.assertEqual(recv_exact(s, len(msg), timeout=scaled(10)), msg,
                                 f"round trip {i}")
        closed = d.wait_count(n, "session closed", timeout=scaled(30))
        self.assertEqual(len(set(clients)), n)
        by_client = {}
        for r in closed:
            by_client.setdefault(r["client"], []).append(r)
        self.assertEqual(set(by_client), set(clients))
        for c, recs in by_client.items():
            self.assertEqual(len(recs), 1, f"{c}: {recs}")
            self.assertEqual(recs[0]["reason"], "client_eof", recs[0])
        self.assertEqual(len(d.find("session closed")), n)


if __name__ == "__main__":
    unittest.main()
