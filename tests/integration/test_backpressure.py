"""Backpressure: a peer that does not read stalls the sender, and lifeline's
memory stays bounded by buffer_bytes meanwhile; once the peer reads, every
byte arrives."""

import os
import unittest

from harness import (MiB, SANITIZER, AcceptServer, Flooder, LifelineTestCase, Reader,
                     addr_str, config, free_port, listen_port, pattern_block, recv_exact,
                     route, scaled, wait_stable)

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


if __name__ == "__main__":
    unittest.main()
