"""Log lines: a worker writes the lines of one turn of its loop together, in
whole lines, instead of one write() each."""

import os
import signal
import socket
import unittest

from harness import (AcceptServer, LifelineTestCase, config, free_port, listen_port, route,
                     scaled)

SESSIONS = 200


def write_calls(pid):
    """write() calls the process has made so far (/proc/PID/io syscw)."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("syscw:"):
                return int(line.split()[1])
    raise AssertionError(f"no syscw in /proc/{pid}/io")


class WorkerBatch(LifelineTestCase):

    def test_one_turns_lines_share_a_write(self):
        """200 sessions end in the same turns of the worker's loop (their
        clients and server connections all close while lifeline is stopped):
        their 200 `session closed` lines reach stderr whole, in far fewer
        write() calls than lines (one each before batching)."""
        if not os.access("/proc/self/io", os.R_OK):
            self.skipTest("no /proc/PID/io here")
        srv = self.server(AcceptServer, backlog=SESSIONS + 16)
        d = self.start_lifeline(config([route(free_port(), [srv.port])], workers=1))
        clients = [self.client(listen_port(d), timeout=scaled(10)) for _ in range(SESSIONS)]
        conns = []
        for _ in range(SESSIONS):
            conn, _ = srv.accept()
            self.track(conn)
            conns.append(conn)
        # Every session is up and quiet: nothing more to write until they end.
        before = write_calls(d.pid)
        d.signal(signal.SIGSTOP)
        try:
            for s in clients + conns:
                s.shutdown(socket.SHUT_WR)
        finally:
            d.signal(signal.SIGCONT)
        for s in clients + conns:
            s.close()
        d.wait_count(SESSIONS, "session closed", timeout=scaled(20))
        writes = write_calls(d.pid) - before
        self.assertLess(writes, SESSIONS // 4,
                        f"{SESSIONS} session closed lines took {writes} write() calls")


if __name__ == "__main__":
    unittest.main()
