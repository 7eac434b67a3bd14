"""`lifeline probe URL`: the health check client of the container image, against
a small HTTP server that answers 200 / 503, hangs, closes early or talks
nonsense; a refused port; and URLs and options that are usage errors."""

import socket
import threading
import time
import unittest

from harness import (LOOPBACK, LOOPBACK6, free_port, have_ipv6_loopback, require_binary,
                     run_cli, scaled, wait_until)


class HttpServer:
    """A threaded, deliberately crude HTTP server. It reads each request's head
    (up to the blank line), records it, and answers according to the path:

    /status/NNN  a complete response with that status
    /hang        nothing, the connection stays open until close()
    /close       closes without a byte
    /partial     "HTTP/1.1 2", then closes
    /garbage     a line that is not a status line
    /long        2000 bytes without a line end, then waits
    /pieces      the status line in two writes, the second after a pause
    /lf          "HTTP/1.0 200 OK" ended by a bare LF
    /trickle     one byte of a never-ending status line every 50 ms
    """

    def __init__(self, host=LOOPBACK):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.requests = []
        self._conns = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        self.listener.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(scaled(10))
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            with self._lock:
                self.requests.append(head)
            path = head.split(b" ", 2)[1].decode("latin-1").split("?", 1)[0]
            self._answer(conn, path)
        except OSError:
            pass

    def _answer(self, conn, path):
        if path.startswith("/status/"):
            code = int(path[len("/status/"):])
            body = b"status %d\n" % code
            conn.sendall(b"HTTP/1.1 %d Whatever\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (code, len(body), body))
            conn.close()
        elif path == "/hang":
            self._stop.wait(scaled(30))
        elif path == "/close":
            conn.close()
        elif path == "/partial":
            conn.sendall(b"HTTP/1.1 2")
            conn.close()
        elif path == "/garbage":
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            conn.close()
        elif path == "/long":
            conn.sendall(b"HTTP/1.1 200 " + b"x" * 2000)
            self._stop.wait(scaled(30))
        elif path == "/pieces":
            conn.sendall(b"HTTP/1.1 20")
            self._stop.wait(0.1)  # the probe must read the status line in pieces
            conn.sendall(b"0 OK\r\nContent-Length: 0\r\n\r\n")
            conn.close()
        elif path == "/lf":
            conn.sendall(b"HTTP/1.0 200 OK\n\n")
            conn.close()
        elif path == "/trickle":
            conn.sendall(b"HTTP/1.1 200 ")
            while not self._stop.wait(0.05):
                conn.sendall(b"x")
        else:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            conn.close()

    def request_lines(self, i=0):
        """The i-th request's head, split into lines (without the blank one)."""
        wait_until(lambda: len(self.requests) > i, scaled(5), what="a request")
        return self.requests[i].decode("latin-1").split("\r\n")[:-2]

    def close(self):
        self._stop.set()
        self.listener.close()
        self._thread.join(timeout=5)
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except OSError:
                    pass


def probe(*args):
    return run_cli(["probe"] + list(args))


class ProbeCase(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        require_binary()

    def server(self, host=LOOPBACK):
        s = HttpServer(host)
        self.addCleanup(s.close)
        return s

    def url(self, srv, path, host=LOOPBACK):
        h = f"[{host}]" if ":" in host else host
        return f"http://{h}:{srv.port}{path}"

    def assertResult(self, r, code, stderr="", stdout=""):
        self.assertEqual((r.returncode, r.stdout, r.stderr), (code, stdout, stderr), r)


class Answers(ProbeCase):

    def test_200_is_healthy_and_silent(self):
        srv = self.server()
        r = probe(self.url(srv, "/status/200"))
        self.assertResult(r, 0)
        self.assertEqual(srv.request_lines(), [
            "GET /status/200 HTTP/1.1",
            f"Host: 127.0.0.1:{srv.port}",
            "Connection: close",
        ])

    def test_any_2xx_is_healthy(self):
        srv = self.server()
        for code in (201, 204, 299):
            with self.subTest(code=code):
                self.assertResult(probe(self.url(srv, f"/status/{code}")), 0)

    def test_503_is_unhealthy(self):
        srv = self.server()
        self.assertResult(probe(self.url(srv, "/status/503")), 1, "probe: HTTP 503\n")

    def test_other_statuses_are_unhealthy(self):
        srv = self.server()
        for code in (100, 199, 301, 404, 500):
            with self.subTest(code=code):
                self.assertResult(probe(self.url(srv, f"/status/{code}")), 1,
                                  f"probe: HTTP {code}\n")

    def test_status_line_in_pieces(self):
        srv = self.server()
        self.assertResult(probe(self.url(srv, "/pieces")), 0)

    def test_bare_lf_and_http_1_0(self):
        srv = self.server()
        self.assertResult(probe(self.url(srv, "/lf")), 0)

    def test_query_is_sent_fragment_is_not(self):
        srv = self.server()
        self.assertResult(probe(self.url(srv, "/status/200?verbose=1&x=%20#frag")), 0)
        self.assertEqual(srv.request_lines()[0], "GET /status/200?verbose=1&x=%20 HTTP/1.1")

    def test_no_path_asks_for_root(self):
        srv = self.server()
        r = probe(f"http://127.0.0.1:{srv.port}")
        self.assertResult(r, 1, "probe: HTTP 404\n")
        self.assertEqual(srv.request_lines()[0], "GET / HTTP/1.1")

    def test_timeout_option_forms(self):
        srv = self.server()
        url = self.url(srv, "/status/200")
        for args in (["--timeout", "500", url], ["--timeout=500", url], [url, "--timeout", "500"],
                     ["--", url]):
            with self.subTest(args=args):
                self.assertResult(probe(*args), 0)

    def test_localhost(self):
        srv = self.server()
        self.assertResult(probe(f"http://localhost:{srv.port}/status/200"), 0)
        self.assertEqual(srv.request_lines()[1], f"Host: localhost:{srv.port}")

    @unittest.skipUnless(have_ipv6_loopback(), "no IPv6 loopback (::1) on this host")
    def test_ipv6(self):
        srv = self.server(LOOPBACK6)
        self.assertResult(probe(self.url(srv, "/status/200", LOOPBACK6)), 0)
        self.assertEqual(srv.request_lines()[1], f"Host: [::1]:{srv.port}")

    @unittest.skipUnless(have_ipv6_loopback(), "no IPv6 loopback (::1) on this host")
    def test_localhost_falls_back_to_ipv6(self):
        srv = self.server(LOOPBACK6)
        # Nothing listens on 127.0.0.1 at this port (the server is bound to ::1 only).
        self.assertResult(probe(f"http://localhost:{srv.port}/status/204"), 0)


class Failures(ProbeCase):

    def test_refused(self):
        url = f"http://127.0.0.1:{free_port()}/healthz"
        self.assertResult(probe(url), 1, f"probe: {url}: connect: Connection refused\n")

    def test_closed_before_answer(self):
        srv = self.server()
        for path in ("/close", "/partial"):
            with self.subTest(path=path):
                url = self.url(srv, path)
                self.assertResult(probe(url), 1,
                                  f"probe: {url}: connection closed before the status line\n")

    def test_not_http(self):
        srv = self.server()
        url = self.url(srv, "/garbage")
        self.assertResult(probe(url), 1,
                          f'probe: {url}: invalid status line "SSH-2.0-OpenSSH_9.2"\n')

    def test_status_line_too_long(self):
        srv = self.server()
        url = self.url(srv, "/long")
        self.assertResult(probe("--timeout", "5000", url), 1,
                          f"probe: {url}: status line too long\n")

    def timed(self, *args):
        start = time.monotonic()
        r = probe(*args)
        return r, time.monotonic() - start

    def test_hang_times_out(self):
        srv = self.server()
        url = self.url(srv, "/hang")
        r, took = self.timed("--timeout", "300", url)
        self.assertResult(r, 1, f"probe: {url}: no status line within 300 ms\n")
        self.assertGreaterEqual(took, 0.29)
        self.assertLess(took, scaled(2.0))

    def test_default_timeout_is_2000_ms(self):
        srv = self.server()
        url = self.url(srv, "/hang")
        r, took = self.timed(url)
        self.assertResult(r, 1, f"probe: {url}: no status line within 2000 ms\n")
        self.assertGreaterEqual(took, 1.99)
        self.assertLess(took, scaled(4.0))

    def test_timeout_bounds_the_whole_exchange(self):
        """A server that keeps sending a byte at a time must not keep the
        probe alive past its deadline."""
        srv = self.server()
        url = self.url(srv, "/trickle")
        r, took = self.timed("--timeout", "300", url)
        self.assertResult(r, 1, f"probe: {url}: no status line within 300 ms\n")
        self.assertLess(took, scaled(2.0))


class Usage(ProbeCase):

    def assertUsage(self, r, message):
        self.assertEqual(r.returncode, 2, r)
        self.assertEqual(r.stdout, "", r)
        self.assertEqual(r.stderr, f"probe: {message}\nUsage: lifeline probe [--timeout MS] URL\n")

    def test_bad_urls(self):
        srv = self.server()
        p = srv.port
        host_msg = "the host must be an IPv4 address, an IPv6 address in brackets or localhost"
        cases = {
            f"https://127.0.0.1:{p}/": "https is not supported",
            f"ftp://127.0.0.1:{p}/": "expected http://HOST:PORT/PATH",
            f"127.0.0.1:{p}/healthz": "expected http://HOST:PORT/PATH",
            "http://": "missing host",
            "http:///healthz": "missing host",
            f"http://:{p}/": "missing host",
            "http://127.0.0.1:0/": "the port must be a number from 1 to 65535",
            "http://127.0.0.1:65536/": "the port must be a number from 1 to 65535",
            "http://127.0.0.1:/": "the port must be a number from 1 to 65535",
            "http://127.0.0.1:80x/": "the port must be a number from 1 to 65535",
            f"http://example.com:{p}/": host_msg,
            f"http://127.0.0.256:{p}/": host_msg,
            f"http://[::1:{p}/": "missing ']' after the IPv6 address",
            f"http://[::1]x/": "expected ':' and a port after ']'",
            f"http://[127.0.0.1]:{p}/": "invalid IPv6 address",
            f"http://::1:{p}/": "an IPv6 address goes in brackets: http://[::1]:PORT/",
            f"http://user@127.0.0.1:{p}/": "user information is not supported",
            f"http://127.0.0.1:{p}/a b": "the path may not contain spaces or control characters",
            f"http://127.0.0.1:{p}/a\tb": "the path may not contain spaces or control characters",
            f"http://127.0.0.1:{p}/" + "a" * 3000: "path too long",
        }
        for url, why in cases.items():
            with self.subTest(url=url):
                self.assertUsage(probe(url), f'invalid URL "{url}": {why}')
        self.assertEqual(srv.requests, [], "a usage error must not connect")

    def test_bad_arguments(self):
        url = "http://127.0.0.1:9/"
        cases = [
            ([], "missing URL"),
            ([url, url], f"{url}: unexpected argument"),
            (["--timeout"], "--timeout: missing argument"),
            (["-x", url], "-x: unknown option"),
            (["--verbose", url], "--verbose: unknown option"),
        ]
        for bad in ("", "abc", "0", "-5", "1.5", "600001", "99999999999"):
            cases.append((["--timeout", bad, url],
                          f'--timeout: expected milliseconds from 1 to 600000, got "{bad}"'))
        for args, message in cases:
            with self.subTest(args=args):
                self.assertUsage(probe(*args), message)

    def test_help(self):
        for flag in ("--help", "-h"):
            with self.subTest(flag=flag):
                r = probe(flag)
                self.assertEqual(r.returncode, 0, r)
                self.assertTrue(r.stdout.startswith("Usage: lifeline probe [--timeout MS] URL\n"),
                                r.stdout)
                self.assertEqual(r.stderr, "")

    def test_main_help_lists_probe(self):
        r = run_cli(["--help"])
        self.assertEqual(r.returncode, 0, r)
        self.assertIn("lifeline probe [--timeout MS] URL", r.stdout)


if __name__ == "__main__":
    unittest.main()
