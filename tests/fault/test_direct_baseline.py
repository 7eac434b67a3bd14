#!/usr/bin/env python3
"""Baseline without lifeline: what the kernel does to a legacy server today.

Runs the DIRECT case 2 and case 3 (client -> server, the proxy namespace only
routes) and asserts the behaviour measured in DESIGN.md section 1, which is why
lifeline exists:

case 2  client host crash, return from the same fixed port: the server's stack
        answers the new SYN with a challenge ACK, the client's stack answers that
        with RST, the server's recv() fails with ECONNRESET (NOT the EOF it was
        written for), then the new connection is accepted.
case 3  the same with the client's RSTs dropped: within 5 s the server sees no
        EOF and no error, keeps the old connection ESTABLISHED, and never accepts
        the returning client.

Exit 0 all passed, 1 a check failed, 77 skipped (not root / no namespaces).
The last line is "N passed, N failed".
"""

import sys
import time
import traceback

import netns
import scenarios
from faultlib import Checks

WINDOW_S = 5.0


def case2(c):
    r = scenarios.run_case(2, window_s=WINDOW_S)
    print(r.format(), flush=True)
    c.check(r.challenge_acks >= 1,
            "case 2: the server's stack answered the returning client's SYN with a challenge ACK",
            "%d challenge ACK(s) on the wire" % r.challenge_acks)
    c.check(r.rsts_on_wire >= 1,
            "case 2: the client's stack answered the challenge ACK with RST",
            "%d RST(s) on the wire" % r.rsts_on_wire)
    c.check(r.old_end == "ECONNRESET",
            "case 2: the server's recv() on the old connection failed with ECONNRESET (not EOF)",
            "old connection ended with %s" % (r.old_end or "nothing (still open)"))
    c.check(r.new_accept_rel is not None and r.new_accept_peer == r.client_addr,
            "case 2: the server accepted the returning client from %s" % r.client_addr,
            "accept: %s" % (r.new_accept_peer or "none within %.0f s" % WINDOW_S))
    c.check(r.end_before_accept is True,
            "case 2: the server saw the old connection end before the new accept",
            r.summary())
    if r.old_end_rel is not None and r.new_accept_rel is not None:
        print("      (reset -> new accept: %.1f ms; first SYN -> reset: %.1f ms)"
              % ((r.new_accept_rel - r.old_end_rel) * 1000,
                 (r.old_end_rel - (r.first_syn_rel or r.old_end_rel)) * 1000), flush=True)


def case3(c):
    r = scenarios.run_case(3, window_s=WINDOW_S)
    print(r.format(), flush=True)
    c.check(r.dropped_rsts is not None and r.dropped_rsts >= 1,
            "case 3: the client host's RSTs were sent and dropped",
            "%s RST(s) dropped" % r.dropped_rsts)
    c.check(r.old_end is None,
            "case 3: no EOF and no error on the old connection within %.0f s" % WINDOW_S,
            "old connection ended with %s at %+.3f" % (r.old_end, r.old_end_rel or 0))
    c.check(r.new_accept_rel is None,
            "case 3: the returning client was not accepted within %.0f s" % WINDOW_S,
            "accepted at %+.3f" % (r.new_accept_rel or 0))
    srv = r.sockets_at_end.get("server", [])
    c.check(any(s["state"] == "ESTAB" and s["peer"] == r.client_addr for s in srv),
            "case 3: the server's kernel still holds the old connection ESTABLISHED",
            ", ".join("%s %s" % (s["state"], s["peer"]) for s in srv))
    cli = r.sockets_at_end.get("client", [])
    c.check(any(s["state"] == "SYN-SENT" for s in cli),
            "case 3: the returning client is still stuck in SYN-SENT",
            ", ".join("%s %s" % (s["state"], s["peer"]) for s in cli) or "no socket")


def main():
    netns.skip_unless_capable()
    t = time.monotonic()
    c = Checks()
    for fn in (case2, case3):
        try:
            fn(c)
        except Exception as e:
            traceback.print_exc()
            c.check(False, "%s ran to completion" % fn.__name__, "%s: %s" % (type(e).__name__, e))
    print("runtime %.1f s" % (time.monotonic() - t))
    print("%d passed, %d failed" % (c.passed, c.failed), flush=True)
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
