"""Out of file descriptors: lifeline keeps serving the sessions it has,
pauses accepting (new connections wait in the kernel's queue), logs it once,
and resumes, queued connections included, once descriptors are free. The
admin endpoint and the resolver keep descriptors of their own: /healthz
answers and host-name servers resolve at the limit."""

import json
import select
import shutil
import socket
import unittest

from harness import (EchoServer, LifelineTestCase, config, free_port, recv_exact,
                     route, scaled, wait_closed, wait_until)
from test_admin import admin_port, http_exchange, request_bytes, with_admin

LIMIT = 64


def echoes(sock, msg, timeout):
    """Does msg come back within timeout?"""
    try:
        sock.sendall(msg)
        return recv_exact(sock, len(msg), timeout=timeout) == msg
    except (OSError, AssertionError):
        return False


@unittest.skipIf(shutil.which("prlimit") is None, "prlimit (util-linux) is not installed")
class FdLimit(LifelineTestCase):

    def test_emfile_pauses_and_resumes(self):
        echo = self.server(EchoServer)
        port = free_port()
        d = self.start_lifeline(config([route(port, [echo.port])], workers=1),
                                wrapper=["prlimit", f"--nofile={LIMIT}:{LIMIT}"])
        # Sessions until one is not served: each takes two descriptors.
        served = []
        waiting = None
        for i in range(LIMIT):
            c = socket.create_connection(("127.0.0.1", port), timeout=scaled(5))
            self.track(c)
            if echoes(c, b"hello %d" % i, timeout=0.5 if served else scaled(5)):
                served.append(c)
                continue
            waiting = c
            break
        self.assertIsNotNone(waiting, f"{len(served)} sessions and no limit reached")
        self.assertGreater(len(served), 10)
        paused = d.wait_log("accept paused: out of file descriptors", timeout=scaled(5))
        self.assertEqual(paused["error"], "descriptor budget spent", paused)

        # A connection is accepted only with descriptors for its server
        # connection counted: no accepted client is turned away.
        self.assertEqual(d.find("session closed"), [])
        waiting.sendall(b"queued")  # after the "hello N" of the echo check
        more = [socket.create_connection(("127.0.0.1", port), timeout=scaled(5))
                for _ in range(5)]
        for c in more:
            self.track(c)
            c.sendall(b"queued too")

        # Nothing new is served while descriptors are short; the sessions
        # that were open go on, and the pause is logged once.
        # (several retry periods of 100 ms pass with no room)
        self.assertEqual(select.select(more, [], [], 0.3)[0], [], "served with no descriptor free")
        for i, c in enumerate(served):
            self.assertTrue(echoes(c, b"still %d" % i, timeout=scaled(5)), f"session {i}")
        self.assertEqual(len(d.find("accept paused: out of file descriptors")), 1)
        self.assertEqual(d.find("session closed"), [])

        # Free room: the queued connections are served, their bytes intact.
        for c in served[:10]:
            c.close()
        wait_until(lambda: len(d.find("session closed")) >= 10, scaled(5),
                   "the closed sessions to end")
        want = b"hello %d" % len(served) + b"queued"
        self.assertEqual(recv_exact(waiting, len(want), timeout=scaled(5)), want)
        for c in more:
            self.assertEqual(recv_exact(c, 10, timeout=scaled(5)), b"queued too")
        d.wait_log("accepting again", timeout=scaled(5))
        for c in served[10:] + more + [waiting]:
            c.close()
        wait_until(lambda: len(d.find("session closed")) == len(served) + len(more) + 1,
                   scaled(5), "every session to end")
        self.assertEqual({r["reason"] for r in d.find("session closed")}, {"client_eof"})


    def fill(self, port, n):
        """n clients, each sending a line; returns them once lifeline has
        paused accepting (some are then waiting in the listen queue)."""
        clients = []
        for i in range(n):
            c = socket.create_connection(("127.0.0.1", port), timeout=scaled(5))
            self.track(c)
            c.sendall(b"hello %03d" % i)
            clients.append(c)
        return clients

    def serve_all(self, d, clients, first=0):
        """Every client gets its echo, closing the served ones as they come
        so that the waiting ones get in; none is turned away. clients[0] is
        client number `first`."""
        pending = list(enumerate(clients, first))
        deadline = scaled(30)
        wait_until(lambda: self._echo_some(pending), deadline, "every client served")
        closes = d.wait_count(first + len(clients), "session closed", timeout=scaled(10))
        # Clients closed before reading their echo end with a reset; no
        # session may end for want of its server connection.
        reasons = {r["reason"] for r in closes}
        self.assertLessEqual(reasons, {"client_eof", "client_reset"}, reasons)

    def _echo_some(self, pending):
        ready = select.select([c for _, c in pending], [], [], 0.2)[0]
        for i, c in [(i, c) for i, c in pending if c in ready]:
            self.assertEqual(recv_exact(c, 9, timeout=scaled(5)), b"hello %03d" % i)
            c.close()
            pending.remove((i, c))
        return not pending

    def test_admin_answers_at_the_limit(self):
        """nofile 100, 80 clients: more than the descriptors allow, so
        accepting pauses; /healthz, /metrics and /sessions still answer,
        three times each, before and after sessions end, and every client is
        served in the end."""
        echo = self.server(EchoServer)
        port = free_port()
        d = self.start_lifeline(with_admin(config([route(port, [echo.port])], workers=1)),
                                wrapper=["prlimit", "--nofile=100:100"])
        clients = self.fill(port, 80)
        d.wait_log("accept paused: out of file descriptors", timeout=scaled(5))

        def all_answer():
            for path in ("/healthz", "/metrics", "/sessions"):
                r = http_exchange(admin_port(d), request_bytes("GET", path), timeout=scaled(3))
                self.assertEqual(r.status, 200, (path, r))
        for _ in range(3):
            all_answer()
        budget = d.wait_log("descriptor budget")
        self.assertEqual(budget["limit"], 100, budget)
        self.assertGreater(budget["sessions"], 10, budget)
        self.assertEqual(len(json.loads(http_exchange(
            admin_port(d), request_bytes("GET", "/sessions")).body)), budget["sessions"])
        # Ending sessions lets queued clients in; the endpoint keeps its own.
        for c in clients[:5]:
            c.close()
        for _ in range(3):
            all_answer()
        self.serve_all(d, clients[5:], first=5)
        d.wait_log("accepting again", timeout=scaled(5))

    def test_churn_at_the_limit_logs_one_shortage(self):
        """At the budget, each session that ends lets one waiting client in,
        and the next one waits again: 20 such turns are one shortage, logged
        once, not twenty times; a second of accepting without a pause ends
        it."""
        echo = self.server(EchoServer)
        port = free_port()
        d = self.start_lifeline(config([route(port, [echo.port])], workers=1),
                                wrapper=["prlimit", f"--nofile={LIMIT}:{LIMIT}"])
        fits = d.wait_log("descriptor budget")["sessions"]
        clients = self.fill(port, fits + 1)
        d.wait_log("accept paused: out of file descriptors", timeout=scaled(5))
        served = clients[:fits]
        for i in range(fits):
            self.assertEqual(recv_exact(served[i], 9, timeout=scaled(5)), b"hello %03d" % i)
        waiting, n = clients[fits], fits
        for turn in range(20):
            served.pop(0).close()
            self.assertEqual(recv_exact(waiting, 9, timeout=scaled(5)), b"hello %03d" % n)
            served.append(waiting)
            n += 1
            waiting = socket.create_connection(("127.0.0.1", port), timeout=scaled(5))
            self.track(waiting)
            waiting.sendall(b"hello %03d" % n)
        self.assertEqual(len(d.find("accept paused: out of file descriptors")), 1)
        self.assertEqual(d.find("accepting again"), [])
        waiting.close()
        served.pop(0).close()
        d.wait_log("accepting again", timeout=scaled(5))
        self.assertEqual(len(d.find("accept paused: out of file descriptors")), 1)

    def test_host_name_server_resolves_at_the_limit(self):
        """nofile 64, 30 clients to a server named "localhost": accepting
        pauses at the budget, the name is resolved for every accepted
        client (its lookups have descriptors of their own), and every client
        is served, none ends upstream_connect_failed."""
        echo = self.server(EchoServer)
        port = free_port()
        r = route(port, [f"localhost:{echo.port}"], source_address="127.0.0.1")
        d = self.start_lifeline(config([r], workers=1),
                                wrapper=["prlimit", f"--nofile={LIMIT}:{LIMIT}"])
        clients = self.fill(port, 30)
        d.wait_log("accept paused: out of file descriptors", timeout=scaled(5))
        self.serve_all(d, clients)
        self.assertEqual(d.find("upstream connect failed"), [])


if __name__ == "__main__":
    unittest.main()
