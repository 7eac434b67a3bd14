"""Out of file descriptors: lifeline keeps serving the sessions it has,
pauses accepting (new connections wait in the kernel's queue), logs it once,
and resumes, queued connections included, once descriptors are free."""

import select
import shutil
import socket
import unittest

from harness import (EchoServer, LifelineTestCase, config, free_port, recv_exact,
                     route, scaled, wait_closed, wait_until)

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
        self.assertEqual(paused["error"], "too many open files", paused)

        # A connection accepted at the limit gets its server socket from a
        # spare descriptor held back for it: no client is turned away.
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


if __name__ == "__main__":
    unittest.main()
