"""Shutdown: SIGTERM/SIGINT drain open sessions, the drain deadline closes
the rest with reason shutdown, a second signal exits at once, new
connections are refused meanwhile."""

import os
import signal
import socket
import threading
import time
import unittest

from harness import (KiB, MiB, AcceptServer, FloodServer, Reader, LifelineTestCase, addr_str, config, connect, free_port,
                     listen_port, listening, recv_exact, route, scaled, wait_closed,
                     wait_until)


class Shutdown(LifelineTestCase):

    def open_session(self, drain_timeout_ms, workers=1):
        srv = self.server(AcceptServer)
        d = self.start_lifeline(config([route(free_port(), [srv.port])], workers=workers,
                                       drain_timeout_ms=drain_timeout_ms))
        cli = self.client(listen_port(d), timeout=scaled(10))
        conn, _ = srv.accept()
        self.track(conn)
        cli.sendall(b"before the signal")
        self.assertEqual(recv_exact(conn, 17), b"before the signal")
        return srv, d, cli, conn

    def assert_new_connection_refused(self, d, srv):
        """The listening sockets close; a connection attempt then is
        refused, or closed without ever reaching the server."""
        # The workers close their listeners a moment after the line is
        # logged: a connection in between would be a session that drains.
        wait_until(lambda: not listening(listen_port(d)), scaled(5), "the listeners to close")
        accepted = srv.accepted_count()
        try:
            late = connect(listen_port(d), timeout=scaled(5))
        except (ConnectionRefusedError, ConnectionResetError):
            # Refused, or queued on a listener that was then closed.
            pass
        else:
            with late:
                try:
                    late.sendall(b"late")
                except OSError:
                    pass
                self.assertIn(wait_closed(late, timeout=scaled(5)), ("eof", "reset"),
                              "a connection made after SIGTERM was not closed")
        self.assertEqual(srv.accepted_count(), accepted,
                         "a connection made after SIGTERM reached the server")

    def test_sigterm_drains_open_session(self):
        """After SIGTERM the open session goes on relaying both ways; new
        connections are refused; once the session ends lifeline exits 0."""
        srv, d, cli, conn = self.open_session(drain_timeout_ms=30000)
        client = addr_str(cli.getsockname())
        d.signal(signal.SIGTERM)
        d.wait_log("shutting down", signal="SIGTERM")

        self.assert_new_connection_refused(d, srv)

        upload = os.urandom(200 * KiB)
        reply = os.urandom(200 * KiB)
        sender = threading.Thread(target=cli.sendall, args=(upload,), daemon=True)
        sender.start()
        self.assertEqual(recv_exact(conn, len(upload), timeout=scaled(10)), upload)
        sender.join(scaled(10))
        sender = threading.Thread(target=conn.sendall, args=(reply,), daemon=True)
        sender.start()
        self.assertEqual(recv_exact(cli, len(reply), timeout=scaled(10)), reply)
        sender.join(scaled(10))
        self.assertIsNone(d.proc.poll(), "lifeline exited while a session was still open")

        cli.shutdown(socket.SHUT_WR)
        self.assertEqual(wait_closed(conn, timeout=scaled(10)), "eof")
        conn.close()
        self.assertEqual(wait_closed(cli, timeout=scaled(10)), "eof")
        self.assertEqual(d.wait_exit(scaled(5)), 0, d.log_tail())
        self.assertSessionClosed(d, client, "client_eof", bytes_from_client=17 + len(upload),
                                 bytes_from_server=len(reply))
        self.assertTrue(d.find("stopped"), d.log_tail())
        self.assertEqual(srv.accepted_count(), 1)

    def test_sigusr1_ignored_and_logged(self):
        """SIGUSR1 would terminate a process that does not handle it,
        resetting every session: lifeline logs it and goes on; the session
        still relays. (SIGUSR2 is the live upgrade: test_upgrade.py.)"""
        srv, d, cli, conn = self.open_session(drain_timeout_ms=2000)
        d.signal(signal.SIGUSR1)
        d.wait_log("SIGUSR1 ignored")
        self.assertTrue(d.running())
        cli.sendall(b"after the signals")
        self.assertEqual(recv_exact(conn, 17), b"after the signals")
        conn.sendall(b"back")
        self.assertEqual(recv_exact(cli, 4), b"back")

    def test_drain_deadline_closes_session(self):
        """drain_timeout_ms 500 and a session that never ends: it is closed
        with reason shutdown (the server sees FIN), lifeline exits 0 after
        about 500 ms."""
        srv, d, cli, conn = self.open_session(drain_timeout_ms=500)
        client = addr_str(cli.getsockname())
        start = time.monotonic()
        d.signal(signal.SIGTERM)
        self.assertEqual(d.wait_exit(0.5 + scaled(3)), 0, d.log_tail())
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 0.45, "exited before the drain deadline")
        self.assertSessionClosed(d, client, "shutdown")
        self.assertEqual(wait_closed(conn, timeout=scaled(5)), "eof")
        self.assertIn(wait_closed(cli, timeout=scaled(5)), ("eof", "reset"))

    def test_drain_deadline_cuts_busy_session(self):
        """drain_timeout_ms 500 and a session busy relaying a flood from the
        server to the client: it is cut at the deadline (reason shutdown),
        lifeline exits 0, the client saw no more than lifeline relayed."""
        flood = self.server(FloodServer, 1 << 40)
        d = self.start_lifeline(config([route(free_port(), [flood.port])],
                                       drain_timeout_ms=500))
        cli = self.client(listen_port(d), timeout=scaled(10))
        client = addr_str(cli.getsockname())
        flooder = flood.accept_and_flood()
        reader = Reader(cli).start()
        wait_until(lambda: reader.count > 4 * MiB, scaled(10), "the flood to reach the client")
        start = time.monotonic()
        d.signal(signal.SIGTERM)
        self.assertEqual(d.wait_exit(0.5 + scaled(3)), 0, d.log_tail())
        self.assertGreaterEqual(time.monotonic() - start, 0.45)
        rec = self.assertSessionClosed(d, client, "shutdown")
        reader.join(scaled(5))
        self.assertIn(reader.end, ("eof", "reset"))
        self.assertGreater(reader.count, 4 * MiB)
        self.assertLessEqual(reader.count, rec["bytes_from_server"], rec)
        self.assertTrue(flooder.done.wait(scaled(5)), "the server's connection stayed open")
        self.assertLess(flooder.sent, flooder.total)

    def test_second_signal_exits_at_once(self):
        """SIGINT starts a 60 s drain; a second signal (SIGTERM) during it
        closes the session (reason shutdown) and lifeline exits 0 promptly."""
        srv, d, cli, conn = self.open_session(drain_timeout_ms=60000)
        client = addr_str(cli.getsockname())
        d.signal(signal.SIGINT)
        d.wait_log("shutting down", signal="SIGINT")
        # The session still relays during the drain.
        cli.sendall(b"still here")
        self.assertEqual(recv_exact(conn, 10), b"still here")
        self.assertIsNone(d.proc.poll())
        start = time.monotonic()
        d.signal(signal.SIGTERM)
        self.assertEqual(d.wait_exit(scaled(3)), 0, d.log_tail())
        self.assertLess(time.monotonic() - start, scaled(3))
        self.assertTrue(d.find("second signal: closing every session now"), d.log_tail())
        self.assertSessionClosed(d, client, "shutdown")
        self.assertIn(wait_closed(conn, timeout=scaled(5)), ("eof", "reset"))
        self.assertIn(wait_closed(cli, timeout=scaled(5)), ("eof", "reset"))

    def test_second_signal_right_after_first_when_idle(self):
        """An operator who sends SIGTERM twice in quick succession to an idle
        daemon gets a clean exit 0, whenever the second one lands (here: as
        soon as `shutting down` is logged). Repeated, as the window is short."""
        for i in range(40):
            d = self.start_lifeline(config([route(free_port(), [free_port()])]))
            d.signal(signal.SIGTERM)
            d.wait_log("shutting down")
            d.signal(signal.SIGTERM)
            code = d.wait_exit(scaled(3))
            self.assertEqual(code, 0, f"run {i}: exit status {code} "
                             f"(negative: killed by that signal)\n{d.log_tail(5)}")

    def test_idle_daemon_stops_promptly(self):
        """No session open: SIGTERM and SIGINT each give exit 0 quickly, with
        the `stopped` line; the listening port is released."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(signal=sig.name):
                port = free_port()
                d = self.start_lifeline(config([route(port, [free_port()])], workers=2,
                                               drain_timeout_ms=30000))
                d.signal(sig)
                self.assertEqual(d.wait_exit(scaled(3)), 0, d.log_tail())
                self.assertTrue(d.find("stopped"))
                with self.assertRaises(ConnectionRefusedError):
                    connect(port, timeout=scaled(2)).close()


if __name__ == "__main__":
    unittest.main()
