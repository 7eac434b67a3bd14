"""Backpressure: a peer that does not read stalls the sender, and lifeline's
memory stays bounded by buffer_bytes meanwhile; once the peer reads, every
byte arrives."""

import os
import socket
import unittest

from harness import (KiB, MiB, SANITIZER, AcceptServer, EchoServer, Flooder, LifelineTestCase,
                     Reader, SinkServer, addr_str, config, connect, free_port, listen_port,
                     pattern_block, raise_nofile, recv_exact, route, scaled, wait_stable,
                     wait_until)
from test_admin import Metrics, admin_port, http_exchange, request_bytes, with_admin

BUFFER_BYTES = 65536


def rss_bound(buffer_bytes):
    """Bound on the growth of lifeline's RSS while one direction is stalled.
    - The stalled direction holds at most buffer_bytes read and not yet
      written (the contract): one read, kept in 64 KiB chunks.
    - The other direction is allowed the same at worst: x2. Another x2 for
      the worker's read buffer and chunk rounding: 4 * buffer_bytes.
    - 4 MiB slack: the per-worker pool may cache up to 64 free chunks
      (4 MiB), plus malloc heap growth granularity and libuv bookkeeping.
    Without backpressure the growth is the whole flood minus kernel buffers:
    hundreds of MiB."""
    bound = 4 * buffer_bytes + 4 * MiB
    # Sanitized builds add shadow memory (ASan 1/8, TSan 2-4x of what the
    # program touches), redzones and ASan's quarantine of freed blocks: allow
    # five times the bound, still far below what a missing backpressure costs.
    return bound * 5 if SANITIZER else bound


RSS_BOUND = rss_bound(BUFFER_BYTES)
FLOOD = 256 * MiB
WARMUP = 1 * MiB


class Backpressure(LifelineTestCase):
    buffer_bytes = BUFFER_BYTES

    def setUp(self):
        super().setUp()
        if not os.path.exists(f"/proc/{os.getpid()}/status"):
            self.skipTest("no /proc/PID/status: cannot read the daemon's VmRSS")
        self.srv = self.server(AcceptServer)
        self.d = self.start_lifeline(config([route(free_port(), [self.srv.port],
                                                   buffer_bytes=self.buffer_bytes)], workers=1))
        self.cli = self.client(listen_port(self.d))
        self.client_addr = addr_str(self.cli.getsockname())
        self.conn, _ = self.srv.accept()
        # Warm up both directions, so the baseline includes the buffers and
        # heap that any relaying session uses.
        block = pattern_block(99, WARMUP)
        self.cli.sendall(block)
        self.assertEqual(recv_exact(self.conn, WARMUP), block)
        self.conn.sendall(block)
        self.assertEqual(recv_exact(self.cli, WARMUP), block)

    def flood_until_stalled(self, sender_sock):
        """Starts the flood and waits until the sender is blocked (its byte
        count has not moved for 0.5 s). Returns (flooder, baseline RSS,
        highest RSS seen meanwhile), both in KiB."""
        base = self.d.rss_kib()
        flooder = Flooder(sender_sock, FLOOD, seed=3).start()
        peak = [base]

        def progress():
            peak[0] = max(peak[0], self.d.rss_kib())
            return flooder.sent

        stalled_at = wait_stable(progress, quiet=0.5, timeout=scaled(60),
                                 what="the flood to stall")
        peak[0] = max(peak[0], self.d.rss_kib())
        self.assertIsNone(flooder.error)
        self.assertLess(stalled_at, FLOOD, "the whole flood went through: nothing was held back")
        return flooder, base, peak[0]

    def check_rss(self, base, peak, stalled_at):
        growth = (peak - base) * 1024
        bound = rss_bound(self.buffer_bytes)
        msg = (f"RSS grew by {growth / MiB:.1f} MiB (baseline {base} KiB, peak {peak} KiB) "
               f"with {stalled_at / MiB:.1f} MiB sent; bound {bound / MiB:.2f} MiB")
        self.assertLess(growth, bound, msg)

    def test_server_floods_client_that_does_not_read(self):
        flooder, base, peak = self.flood_until_stalled(self.conn)
        self.check_rss(base, peak, flooder.sent)

        reader = Reader(self.cli).start()
        flooder.join(scaled(60))
        reader.join(scaled(60))
        self.assertEqual(reader.end, "eof")
        self.assertEqual(reader.count, FLOOD)
        self.assertEqual(reader.hash.hexdigest(), flooder.hash.hexdigest())

        self.cli.close()
        self.conn.close()
        self.assertSessionClosed(self.d, self.client_addr, "upstream_eof",
                                 bytes_from_server=WARMUP + FLOOD, bytes_from_client=WARMUP)

    def test_client_floods_server_that_does_not_read(self):
        flooder, base, peak = self.flood_until_stalled(self.cli)
        self.check_rss(base, peak, flooder.sent)

        reader = Reader(self.conn).start()
        flooder.join(scaled(60))
        reader.join(scaled(60))
        self.assertEqual(reader.end, "eof")
        self.assertEqual(reader.count, FLOOD)
        self.assertEqual(reader.hash.hexdigest(), flooder.hash.hexdigest())

        self.conn.close()
        self.cli.close()
        self.assertSessionClosed(self.d, self.client_addr, "client_eof",
                                 bytes_from_client=WARMUP + FLOOD, bytes_from_server=WARMUP)


class BackpressureLargeBuffer(Backpressure):
    """The same with the default buffer_bytes, 1 MiB: reads of up to 1 MiB,
    and the bound scales with it."""
    buffer_bytes = MiB


class BackpressureWhileConnecting(LifelineTestCase):

    def test_client_floods_before_upstream_is_up(self):
        """Client bytes queued while the upstream connection is not up are
        bounded too: the client's flood stalls during the retry wait, RSS
        stays within the bound, and once the server appears every byte
        arrives in order."""
        up_port = free_port()
        d = self.start_lifeline(config([route(free_port(), [up_port], retries=4,
                                              retry_backoff_ms=1000,
                                              buffer_bytes=BUFFER_BYTES)], workers=1))
        cli = self.client(listen_port(d))
        client = addr_str(cli.getsockname())
        base = d.rss_kib()
        flooder = Flooder(cli, FLOOD, seed=5).start()
        d.wait_log("upstream connect failed", client=client, attempt=1)
        peak = [base]

        def progress():
            peak[0] = max(peak[0], d.rss_kib())
            return flooder.sent

        # Nothing listens on up_port until the server below is created, so
        # every try before that fails: the bytes can only be queued.
        sent = wait_stable(progress, quiet=0.5, timeout=scaled(60), what="the flood to stall")
        self.assertLess(sent, FLOOD)
        growth = (peak[0] - base) * 1024
        self.assertLess(growth, RSS_BOUND,
                        f"RSS grew by {growth / MiB:.1f} MiB while connecting "
                        f"({sent / MiB:.1f} MiB sent); bound {RSS_BOUND / MiB:.2f} MiB")

        srv = self.server(AcceptServer, port=up_port)
        conn, _ = srv.accept(timeout=scaled(15))
        reader = Reader(conn).start()
        flooder.join(scaled(60))
        reader.join(scaled(60))
        self.assertEqual(reader.end, "eof")
        self.assertEqual(reader.count, FLOOD)
        self.assertEqual(reader.hash.hexdigest(), flooder.hash.hexdigest())
        conn.close()
        self.assertSessionClosed(d, client, "client_eof", bytes_from_client=FLOOD)


class BufferBudget(LifelineTestCase):
    """buffer_total_bytes bounds what all sessions together hold: past it
    lifeline stops reading (TCP flow control holds the clients back) rather
    than buffer more, drops no byte it read, and a session whose
    destination keeps up still relays."""

    CLIENTS = 300
    EACH = 8 * MiB
    # The shipped defaults: buffer_bytes 1 MiB per direction, buffer_total_bytes 16 MiB.
    TOTAL = 16 * MiB

    def gauge(self, d, name):
        r = http_exchange(admin_port(d), request_bytes("GET", "/metrics"))
        return Metrics(r.text()).get(name)

    def test_clients_pushing_to_a_server_that_never_reads(self):
        """300 clients push 8 MiB each to a server that accepts nothing yet
        (its kernel completes the handshakes, then every buffer fills): with
        the shipped defaults lifeline's RSS grows by at most 64 MiB (134 MiB
        here, and over 300 MiB for clients that push for ever, when each
        session could hold its 1 MiB), while another route still echoes. Then the server reads: every byte of
        every client arrives, in order."""
        raise_nofile(4 * self.CLIENTS + 500)
        sink = self.server(SinkServer, backlog=1024, accepting=False, keep=0)
        # A small, fixed receive buffer (the queued connections inherit the
        # listener's), so that the clients' bytes pile up in lifeline rather
        # than in the server's kernel.
        sink.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
        echo = self.server(EchoServer)
        port, echo_port = free_port(), free_port()
        d = self.start_lifeline(with_admin(config([route(port, [sink.port], name="stalled"),
                                                   route(echo_port, [echo.port], name="echo")],
                                                  workers=2)))
        # Warm up: the read buffers and the heap any relaying session uses.
        with connect(echo_port, timeout=scaled(10)) as c:
            block = pattern_block(5, MiB)
            c.sendall(block)
            self.assertEqual(recv_exact(c, MiB), block)
        base = d.rss_kib()

        flooders = []
        for i in range(self.CLIENTS):
            c = self.client(port, timeout=scaled(10))
            flooders.append(Flooder(c, self.EACH, seed=1000 + i, block=64 * KiB).start())
        wait_stable(lambda: sum(f.sent for f in flooders), quiet=1.0, timeout=scaled(60),
                    what="the clients to be held back")
        grew = d.rss_kib() - base
        self.assertLess(sum(f.sent for f in flooders), self.CLIENTS * self.EACH,
                        "the clients were not held back")
        self.assertLess(grew, (5 if SANITIZER else 1) * 64 * 1024,
                        f"RSS grew by {grew} KiB with {self.CLIENTS} stalled clients")
        # The budget, plus one read per worker racing the count, plus one
        # 64 KiB buffer per session that read while the budget was spent.
        held = self.gauge(d, "lifeline_buffer_bytes")
        self.assertEqual(self.gauge(d, "lifeline_buffer_bytes_max"), self.TOTAL)
        self.assertGreater(held, self.TOTAL // 2, "the test did not fill the budget")
        self.assertLessEqual(held, self.TOTAL + 2 * MiB + self.CLIENTS * (64 * KiB + 256))

        # Another session's destination keeps up: it relays at once.
        with connect(echo_port, timeout=scaled(10)) as c:
            block = pattern_block(6, MiB)
            c.sendall(block)
            self.assertEqual(recv_exact(c, MiB, timeout=scaled(10)), block)

        # The server reads now: nothing lifeline read was dropped.
        sink.start_accepting()
        for f in flooders:
            f.join(scaled(120))
        wait_until(lambda: sum(r.ended.is_set() for r in sink.connections()) == self.CLIENTS,
                   scaled(120), "every stalled session's EOF at the server")
        got = sorted((r.count, r.hash.hexdigest()) for r in sink.connections())
        want = sorted((f.sent, f.hash.hexdigest()) for f in flooders)
        self.assertEqual(got, want)
        self.assertTrue(all(r.end == "eof" for r in sink.connections()))
        wait_until(lambda: self.gauge(d, "lifeline_buffer_bytes") == 0, scaled(10),
                   "the buffers given back")


if __name__ == "__main__":
    unittest.main()
