#!/usr/bin/env python3
"""Replay the client-crash cases of DESIGN.md section 1 in network namespaces (root).

  python3 tests/fault/demo.py                      direct pass: client -> server, the proxy
                                                   namespace is a plain router
  LIFELINE_BIN=build/lifeline \\
  python3 tests/fault/demo.py --with-lifeline      then the same cases through lifeline,
                                                   running in the proxy namespace

case 2  client host crash, then return from the same fixed port
case 3  as case 2, but the client host's outgoing RSTs are dropped

For each run it prints what the server (and the wire, seen from the proxy
namespace) saw, relative to the crash.  Exit status: 0 done, 77 skipped
(not root / no namespaces), 1 a run could not be carried out.
"""

import argparse
import os
import sys
import time

import netns
import scenarios


def lifeline_verdict(res):
    """The guarantee lifeline restores: EOF on the old connection, before the new accept."""
    if res.old_end == "EOF" and res.new_accept_rel is not None and res.end_before_accept:
        return "guarantee held: the server saw EOF on the old connection before the new one"
    return "guarantee NOT held (server saw: %s)" % res.summary()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--with-lifeline", action="store_true",
                    help="also run each case through $LIFELINE_BIN (must be executable)")
    ap.add_argument("--case", type=int, action="append", choices=sorted(scenarios.CASES),
                    help="run only this case (repeatable); default: all")
    ap.add_argument("--window", type=float, default=5.0,
                    help="seconds to wait for the server to see the old connection end and "
                         "the new one arrive (default 5)")
    args = ap.parse_args()

    netns.skip_unless_capable()
    cases = args.case or sorted(scenarios.CASES)
    lifeline_bin = os.environ.get("LIFELINE_BIN")
    passes = [("direct", None)]
    if args.with_lifeline:
        if lifeline_bin and os.path.isfile(lifeline_bin) and os.access(lifeline_bin, os.X_OK):
            passes.append(("lifeline", os.path.abspath(lifeline_bin)))
        else:
            print("note: --with-lifeline given but LIFELINE_BIN=%r is not an executable file: "
                  "lifeline pass NOT run" % lifeline_bin, flush=True)

    t_start = time.monotonic()
    results = []
    status = 0
    for label, binary in passes:
        print("\n=== %s pass%s ===" % (label, "" if binary is None else " (%s)" % binary),
              flush=True)
        for case in cases:
            print(flush=True)
            try:
                res = scenarios.run_case(case, lifeline_bin=binary, window_s=args.window,
                                         log=lambda m: print(m, flush=True))
            except Exception as e:  # report and go on with the next run
                print("case %d (%s) could not be run: %s: %s"
                      % (case, label, type(e).__name__, e), flush=True)
                status = 1
                continue
            print(res.format(), flush=True)
            if binary is not None:
                print("     " + lifeline_verdict(res), flush=True)
            results.append((label, res))

    print("\n=== summary (%.1f s) ===" % (time.monotonic() - t_start))
    for label, res in results:
        print("  %-8s case %d: %s" % (label, res.case, res.summary()))
    left = [n for n in netns._netns_list() if n.startswith("ll%d-" % os.getpid())]
    print("  namespaces left behind: %s" % (", ".join(left) or "none"))
    return status


if __name__ == "__main__":
    sys.exit(main())
