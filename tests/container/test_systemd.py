#!/usr/bin/env python3
"""config/lifeline.service under a real systemd (`make test-container`).

Starts a Debian 12 container with systemd as PID 1 (its own network
namespace: loopback only), installs lifeline exactly as the unit file's
comments say (the commands are read from the file and run as written, in a
read-only copy of this checkout), and checks on observed behaviour:
- `systemctl enable --now` is active only after lifeline's `ready` line
  (Type=notify), and relays;
- under the sandbox, as the unit's user with CAP_NET_BIND_SERVICE only:
  a port below 1024, a host name resolved upstream, the admin endpoint,
  TCP keepalive on client sockets, lifeline's own user/group switch;
- `systemctl reload` applies a changed file and keeps open sessions; a
  broken file fails the reload command and the old configuration serves on;
- the watchdog restarts a process that stops pinging (SIGSTOP);
- `systemctl stop` drains (FIN to the server) and exits 0.
The test peers (tests/container/peer.py) run inside the container.
"""

import json
import os
import re
import subprocess
import time
from datetime import datetime, timezone

from podman_lib import (REPO, SYSTEMD_IMAGE, check, ensure_systemd_image, log, main_wrapper,
                        podman, podman_out, set_prefix, ulimits, wait_until)

NAME = "lifeline-test-systemd"
UNIT = os.path.join(REPO, "config", "lifeline.service")
PEER = "/src/tests/container/peer.py"
SERVER_LOG = "/run/server.log"


def install_commands():
    """The commands of the unit file's "Install (as root):" comment, with
    their continuation lines joined."""
    lines = open(UNIT).read().splitlines()
    start = lines.index("# Install (as root):") + 1
    cmds, cur = [], ""
    for line in lines[start:]:
        if not line.startswith("#  "):
            break
        cur += line[1:].strip()
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip() + " "
            continue
        cmds.append(cur)
        cur = ""
    return cmds


def readme_commands():
    """The commands of the README's "Install from source" code block."""
    text = open(os.path.join(REPO, "README.md")).read()
    block = text.split("### Install from source", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def sh(cmd, check=True, timeout=120, quiet=False):
    """CMD in the container's shell, in the checkout; returns the result."""
    if not quiet:
        log(f"# {cmd}")
    return podman("exec", "-w", "/src", NAME, "sh", "-c", cmd, check=check, timeout=timeout,
                  capture_output=True, quiet=True)


def out(cmd, **kw):
    return sh(cmd, quiet=True, **kw).stdout.strip()


def prop(name):
    return out(f"systemctl show -p {name} --value lifeline")


def journal():
    return out("journalctl -u lifeline -o cat --no-pager")


def write_config(cfg):
    data = json.dumps(cfg, indent=2)
    sh(f"cat > /etc/lifeline/lifeline.json <<'EOF'\n{data}\nEOF", quiet=True)


def echo_ok(port, size=65536):
    r = sh(f"python3 {PEER} echo {port} {size}", check=False, quiet=True)
    return r.returncode == 0 and r.stdout.strip() == f"ok {size}"


class Held:
    """A session kept open through lifeline by `peer.py hold`."""

    count = 0

    def __init__(self, port):
        Held.count += 1
        self.fifo = f"/run/hold{Held.count}.fifo"
        self.out = f"/run/hold{Held.count}.out"
        sh(f"mkfifo {self.fifo}", quiet=True)
        podman("exec", "-d", NAME, "sh", "-c", f"python3 {PEER} hold {port} {self.fifo}"
               f" > {self.out} 2>&1", quiet=True, stdout=subprocess.DEVNULL)
        wait_until(lambda: "connected" in out(f"cat {self.out}"), 10, "the held session open",
                   interval=0.1)

    def send(self, word):
        """Sends WORD; True when its echo came back."""
        before = out(f"cat {self.out}").count("\n")
        sh(f"echo {word} > {self.fifo}", quiet=True)
        wait_until(lambda: out(f"cat {self.out}").count("\n") > before, 10,
                   "the held session's answer", interval=0.1)
        return out(f"cat {self.out}").splitlines()[-1] == "ok"

    def close(self):
        sh(f"echo close > {self.fifo}", quiet=True, check=False)


def server_events():
    return out(f"cat {SERVER_LOG}").splitlines()


def config(drain_ms=3000, extra_routes=(), source=None):
    routes = [{"name": "legacy", "listen": "127.0.0.1:23",
               "client": {"heartbeat": {"keepalive_idle_ms": 7000,
                                        "keepalive_interval_ms": 2000,
                                        "user_timeout_ms": 20000}},
               "upstream": {"servers": ["localhost:6000"]}}]
    if source is not None:
        routes[0]["upstream"]["source_address"] = source
    return {"user": "lifeline", "group": "lifeline",
            "log": {"level": "info"},
            "shutdown": {"drain_timeout_ms": drain_ms},
            "admin": {"listen": "127.0.0.1:9900"},
            "routes": routes + list(extra_routes)}


def main():
    set_prefix("test-container systemd")
    started = time.monotonic()
    ensure_systemd_image()
    if not os.path.exists(os.path.join(REPO, "build", "lifeline")):
        subprocess.run(["make", "-C", REPO, "build"], check=True)
    podman("rm", "-f", "-t", "0", NAME, check=False, quiet=True, stdout=subprocess.DEVNULL,
           stderr=subprocess.DEVNULL)
    # CAP_SYS_ADMIN: systemd sets up the unit's sandbox (mount namespaces for
    # ProtectSystem=, PrivateTmp=...), as it does on a host; CAP_NET_ADMIN:
    # for the unit's commented option to grant, as a host's systemd can.
    podman("run", "-d", "--name", NAME, "--systemd=always", "--network", "none",
           "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN", *ulimits(), "-v", f"{REPO}:/src:ro", SYSTEMD_IMAGE,
           stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: out("systemctl is-system-running", check=False)
                   in ("running", "degraded"), 60, "systemd up in the container", interval=0.5)
        podman("exec", "-d", NAME, "python3", PEER, "server", "6000", SERVER_LOG, quiet=True,
               stdout=subprocess.DEVNULL)
        wait_until(lambda: "listening" in server_events(), 10, "the test server", interval=0.1)

        # -- installed as the unit file says; enable --now starts it
        cmds = install_commands()
        check(len(cmds) >= 6 and cmds[-1] == "systemctl enable --now lifeline",
              f"the unit file's install comment gives {len(cmds)} commands")
        check(readme_commands()[:len(cmds)] == [re.sub(r"\s+", " ", c) for c in cmds],
              "the README's systemd install commands are the unit file's")
        for cmd in cmds:
            r = sh(cmd, check=False)
            check(r.returncode == 0, f"`{cmd}` exit 0 {r.stderr.strip()}")
        check(out("systemctl is-active lifeline", check=False) == "active", "the unit is active")
        # lifeline's own timestamp of its ready line (taken before it sends
        # READY=1), against the moment systemd made the unit active; the
        # journal's receive times of the two cannot be ordered.
        stamps = re.findall(r"^(\S+) info ready ", journal(), re.M)
        active = out("systemctl show -p ActiveEnterTimestamp --value --timestamp=us+utc lifeline")
        active_ms = datetime.strptime(active, "%a %Y-%m-%d %H:%M:%S.%f UTC").replace(
            tzinfo=timezone.utc).timestamp() * 1000
        ready_ms = [datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=timezone.utc).timestamp() * 1000 for t in stamps]
        check(len(ready_ms) == 1 and int(ready_ms[0]) <= int(active_ms),
              f"active at {active}, not before the ready line at {stamps} (Type=notify)")
        check(echo_ok(5000), "the shipped config relays 0.0.0.0:5000 to 127.0.0.1:6000")
        capeff = out(f"grep CapEff /proc/{prop('MainPID')}/status").split()[1]
        check(int(capeff, 16) == 1 << 10, f"its only capability is CAP_NET_BIND_SERVICE ({capeff})")

        # -- the sandbox leaves every feature working
        write_config(config())
        sh("systemctl restart lifeline")
        pid = prop("MainPID")
        check(out(f"ps -o user= -p {pid}") == "lifeline", f"main process {pid} runs as lifeline")
        capeff = out(f"grep CapEff /proc/{pid}/status").split()[1]
        check(int(capeff, 16) == 0 and re.search(
            r"dropped privileges uid=\d+ gid=\d+ capabilities=none", journal()) is not None,
            "lifeline's own user/group switch works under User=, and drops CAP_NET_BIND_SERVICE"
            f" once port 23 is bound ({capeff})")
        check(echo_ok(23), "port 23 (below 1024) relays to localhost:6000 (resolved)")
        r = sh("lifeline probe http://127.0.0.1:9900/healthz", check=False, quiet=True)
        check(r.returncode == 0, "the admin endpoint answers /healthz")
        metrics = out("python3 -c \"import urllib.request as u; "
                      "print(u.urlopen('http://127.0.0.1:9900/metrics').read().decode())\"")
        check("lifeline_sessions_total" in metrics or "lifeline_" in metrics,
              "the admin endpoint serves /metrics")
        held = Held(23)
        # ss prints the keepalive timer's remaining time ("6.764ms" is 6.8 s
        # in iproute2 6.1): at most keepalive_idle_ms (7 s, not the default 10).
        timers = out("ss -tnoH state established '( sport = :23 )'")
        m = re.search(r"timer:\(keepalive,([\d.]+)", timers)
        check(m is not None and 0 < float(m.group(1)) <= 7.0,
              f"the client socket has TCP keepalive at keepalive_idle_ms: {timers}")

        # -- reload: a good file applies, open sessions stay; a broken one fails
        write_config(config(extra_routes=[{"name": "second", "listen": "127.0.0.1:2323",
                                           "upstream": {"servers": ["127.0.0.1:6000"]}}]))
        r = sh("systemctl reload lifeline", check=False)
        check(r.returncode == 0, "systemctl reload exit 0 on a good file")
        # systemd 252 has no Type=notify-reload: `systemctl reload` returns
        # once ExecReload's SIGHUP is sent, not when lifeline has applied it.
        wait_until(lambda: echo_ok(2323), 10, "the reload's new route relaying", interval=0.1)
        log("ok: the reload's new route relays")
        check(held.send("after-reload"), "a session opened before the reload still relays")
        check(prop("MainPID") == pid, "same main process")
        sh("printf '{ \"routes\": [ broken' > /etc/lifeline/lifeline.json", quiet=True)
        r = sh("systemctl reload lifeline", check=False)
        check(r.returncode != 0, f"systemctl reload fails on a broken file (exit {r.returncode})")
        check("invalid JSON at line 1" in r.stdout + r.stderr + journal(),
              "the failed reload names what is wrong")
        check(out("systemctl is-active lifeline", check=False) == "active", "the unit stays active")
        check(echo_ok(2323) and held.send("after-bad-reload"),
              "the old configuration serves on, the open session too")
        write_config(config())

        # -- live upgrade: SIGUSR2 through systemd; the session is kept, the
        # main PID moves to the new process (MAINPID= from the old one, with
        # NotifyAccess=main), which reads the file afresh (workers 2) and
        # takes the watchdog over: still active after WatchdogSec.
        write_config(dict(config(), workers=2))
        eofs = sum(e.startswith("eof") for e in server_events())
        restarts = prop("NRestarts")
        r = sh("systemctl kill -s SIGUSR2 --kill-who=main lifeline", check=False)
        check(r.returncode == 0, f"systemctl kill -s SIGUSR2 exit 0 {r.stderr.strip()}")
        wait_until(lambda: prop("MainPID") not in (pid, "0"), 20, "a new main PID", interval=0.2)
        new_pid = prop("MainPID")
        fed = int(prop("WatchdogTimestampMonotonic"))
        wait_until(lambda: re.search(rf" info ready workers=2 routes=1 pid={new_pid}$", journal(),
                                     re.M), 20, "the new process's ready line", interval=0.2)
        check(re.search(rf" info upgraded new_pid={new_pid} sessions=1 ", journal()) is not None,
              f"the journal has upgraded (new_pid {new_pid}, 1 session) and ready with workers 2")
        check(out(f"ps -o user= -p {new_pid}") == "lifeline"
              and out(f"ps -o pid= -p {pid}", check=False) == "",
              f"the new main process {new_pid} runs as lifeline; the old one {pid} is gone")
        check(held.send("after-upgrade"), "the session opened before the upgrade still relays")
        check(sum(e.startswith("eof") for e in server_events()) == eofs,
              "the server saw no EOF during the upgrade")
        # With NotifyAccess=main only the new main process's pings count.
        wait_until(lambda: int(prop("WatchdogTimestampMonotonic")) > fed, 12,
                   "a watchdog ping after the upgrade", interval=0.5)
        check(out("systemctl is-active lifeline", check=False) == "active"
              and prop("MainPID") == new_pid and prop("NRestarts") == restarts,
              "the new process feeds the watchdog: active, same main PID, no restart")
        check(held.send("after-watchdog"), "the session still relays")
        pid = new_pid

        # -- watchdog: a process that stops pinging is killed and restarted
        t0 = time.monotonic()
        sh(f"kill -STOP {pid}")
        wait_until(lambda: prop("MainPID") not in (pid, "0")
                   and out("systemctl is-active lifeline", check=False) == "active",
                   60, "a new main process after the watchdog fired", interval=0.5)
        check("Watchdog timeout" in out("journalctl -u lifeline -o cat --no-pager -t systemd",
                                        check=False) + out("journalctl -o cat --no-pager"),
              f"systemd logged the watchdog timeout; restarted in {time.monotonic() - t0:.0f} s")
        check(int(prop("NRestarts")) >= 1, "counted as a restart")
        held.close()
        check(echo_ok(23), "the restarted process relays")

        # -- the unit's commented CAP_NET_ADMIN lines: keeping client addresses
        write_config(config(source="client"))
        r = sh("systemctl restart lifeline", check=False)
        check(r.returncode != 0 and re.search(
            r"missing capability capability=CAP_NET_ADMIN key=routes\[0\]\.upstream\."
            r"source_address", journal()) is not None,
            "without the commented lines, \"client\" fails the start naming CAP_NET_ADMIN")
        lines = [x[1:] for x in open(UNIT).read().splitlines()
                 if x.startswith(("#AmbientCapabilities=", "#CapabilityBoundingSet=",
                                  "#ExecStartPre="))]
        check(len(lines) == 3 and all("CAP_NET_ADMIN" in x for x in lines[:2])
              and "transparent-routing.sh up" in lines[2],
              f"the unit carries the commented lines: {lines}")
        dropin = "/etc/systemd/system/lifeline.service.d/transparent.conf"
        sh(f"mkdir -p {os.path.dirname(dropin)} && printf '[Service]\\n%s\\n%s\\n%s\\n' "
           f"'{lines[0]}' '{lines[1]}' '{lines[2]}' > {dropin} && systemctl daemon-reload "
           "&& systemctl reset-failed lifeline && systemctl restart lifeline")
        r = sh("/usr/local/share/lifeline/transparent-routing.sh status", check=False, quiet=True)
        check(r.returncode == 0, "ExecStartPre installed the routing (transparent-routing.sh "
              "status: exit 0)")
        pid = prop("MainPID")
        capeff = out(f"grep CapEff /proc/{pid}/status").split()[1]
        check(int(capeff, 16) == 1 << 12,
              f"in a drop-in they give CAP_NET_ADMIN, the only one kept after binding ({capeff})")
        r = sh(f"python3 {PEER} echo 23 4096 127.0.0.77", check=False, quiet=True)
        last = [e for e in server_events() if e.startswith("accept")][-1]
        check(r.returncode == 0 and last.split()[2].startswith("127.0.0.77:"),
              f"the server sees the client's own address under the sandbox: {last}")
        sh(f"rm {dropin} && /usr/local/share/lifeline/transparent-routing.sh down "
           "&& systemctl daemon-reload", quiet=True)
        write_config(config())
        sh("systemctl restart lifeline")

        # -- stop: drains, FIN to the server, exit 0
        pid = prop("MainPID")
        held = Held(23)
        check(held.send("before-stop"), "a session open before the stop")
        accepted = [e for e in server_events() if e.startswith("accept")][-1].split()[1]
        t0 = time.monotonic()
        sh("systemctl stop lifeline", timeout=60)
        took = time.monotonic() - t0
        check(prop("Result") == "success" and prop("ExecMainStatus") == "0",
              f"systemctl stop: result {prop('Result')}, exit status {prop('ExecMainStatus')},"
              f" in {took:.1f} s")
        j = journal()
        check("shutting down" in j and re.search(r" info stopped", j) is not None,
              "lifeline logged the drain and stopped")
        check(f"eof {accepted}" in server_events(),
              "the server saw EOF (FIN, not a reset) on the drained session")
        held.close()

        m = re.search(r"Overall exposure level for lifeline.service: ([\d.]+)",
                      out("systemd-analyze security lifeline --no-pager", check=False))
        check(m is not None and float(m.group(1)) <= 2.0,
              f"systemd-analyze security rates the sandbox {m and m.group(1)} (at most 2.0)")
    finally:
        if os.environ.get("LIFELINE_KEEP_CONTAINER"):
            log(f"keeping {NAME}")
        else:
            podman("rm", "-f", "-t", "0", NAME, check=False, quiet=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    log(f"passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    main_wrapper(main)
