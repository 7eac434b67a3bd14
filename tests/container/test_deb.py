#!/usr/bin/env python3
"""The Debian package (debian/) installed into a real systemd
(`make test-container`).

Builds the package with `make deb` (or takes the .deb named by
$LIFELINE_DEB), starts a Debian 12 container with systemd as PID 1 in its own
network namespace with no network (`--network none`: loopback only, which is
all the test uses: every client and server runs inside), copies the .deb in
and installs it the way a user does: `apt-get install -y ./lifeline_*.deb`.
The image has the package's dependencies, so apt needs no mirror and no
package lists. Then, on observed behaviour:
- the system user and group lifeline exist, and the service runs as them;
- lifeline.service is enabled and active, and journalctl shows its `ready`
  line with the service's MainPID;
- the packaged /etc/lifeline/lifeline.json is config/lifeline.json, is a
  conffile (`dpkg -s`), and is what lifeline serves: bytes sent to its listen
  address reach a server on its upstream address and come back;
- an upgrade (the same package repacked as VERSION+upgradetest) neither stops
  nor restarts the service: same MainPID, and a session opened before it
  still relays after it;
- `apt-get remove` stops the service (inactive, no process, the port
  refuses) and keeps the configuration and the user; an edit to the
  configuration survives remove and reinstall;
- `apt-get purge` removes the user, the group and /etc/lifeline, and a
  reinstall after it serves the packaged configuration again.
The container is removed at the end, passed or failed.

What this machine needs is podman_lib's: runc, and --ulimit at the host's
hard limits (the unit's LimitNOFILE=65536 is capped at that, which lifeline
logs in its `descriptor budget` line). systemd needs nothing more here: no
added capability (it logs that ProtectHostname= is ignored, a container not
allowing it a UTS namespace).

Exit 0 on success, 77 with a message when no container engine can be set up
or the package cannot be built here, 1 on a failure.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time

from podman_lib import (REPO, SKIP, SYSTEMD_IMAGE, check, ensure_systemd_image, log, main_wrapper,
                        podman, run, set_prefix, ulimits, wait_until)

NAME = "lifeline-test-deb"
WORK = "/root"  # where the .deb files go in the container, and apt-get runs
CONFIG = os.path.join(REPO, "config", "lifeline.json")

# Inside the container: a recording echo server on the upstream address, and
# one client through lifeline's listen address that sends random bytes,
# half-closes and reads the echo. Prints what each side saw.
RELAY = r"""
import hashlib, json, os, socket, sys, threading
lport, uhost, uport = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((uhost, uport))
srv.listen(4)
seen = {}
def serve():
    c, peer = srv.accept()
    got = b""
    while True:
        d = c.recv(65536)
        if not d:
            break
        got += d
        c.sendall(d)
    c.close()
    seen["got"], seen["peer"] = got, peer
t = threading.Thread(target=serve, daemon=True)
t.start()
data = os.urandom(256 * 1024)
echo, error = b"", None
try:
    c = socket.create_connection(("127.0.0.1", lport), timeout=10)
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    while True:
        d = c.recv(65536)
        if not d:
            break
        echo += d
except OSError as e:
    error = f"{type(e).__name__}: {e}"
t.join(10)
sha = lambda b: hashlib.sha256(b).hexdigest()
print(json.dumps({"sent": sha(data), "size": len(data), "server_got": sha(seen.get("got", b"")),
                  "server_size": len(seen.get("got", b"")), "echo": sha(echo),
                  "echo_size": len(echo), "client_error": error,
                  "server_peer": ":".join(map(str, seen.get("peer", ("no one",))))}))
"""

# Inside the container, in the background: an echo server on the upstream
# address and one session through lifeline that echoes "before", then waits
# for /run/session.go and echoes "after". Its progress goes to /run/session.state.
SESSION = r"""
import os, socket, sys, threading, time
lport, uhost, uport = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def state(s):
    with open("/run/session.state", "w") as f:
        f.write(s)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((uhost, uport))
srv.listen(4)
def serve():
    c, _ = srv.accept()
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
threading.Thread(target=serve, daemon=True).start()
def echo(c, msg):
    c.sendall(msg)
    got = b""
    while len(got) < len(msg):
        d = c.recv(65536)
        if not d:
            raise ConnectionError(f"EOF after {got!r}")
        got += d
    if got != msg:
        raise ConnectionError(f"echoed {got!r}")
try:
    c = socket.create_connection(("127.0.0.1", lport), timeout=30)
    echo(c, b"before")
    state("open")
    deadline = time.monotonic() + 300
    while not os.path.exists("/run/session.go"):
        if time.monotonic() > deadline:
            raise TimeoutError("no /run/session.go")
        time.sleep(0.1)
    echo(c, b"after")
    state("ok")
except Exception as e:
    state(f"failed: {type(e).__name__}: {e}")
"""

REFUSED = r"""
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    print("accepted")
except ConnectionRefusedError:
    print("refused")
"""


def cexec(*args, check=True, timeout=120, quiet=False):
    """Runs ARGS in the container; returns the CompletedProcess (output captured)."""
    return podman("exec", "-w", WORK, NAME, *args, check=check, timeout=timeout, quiet=quiet,
                  capture_output=True)


def out(*args, **kw):
    kw.setdefault("quiet", True)
    return cexec(*args, check=False, **kw).stdout.strip()


def apt(*args):
    """apt-get in the container, its output shown; fails the test on an error."""
    r = podman("exec", "-w", WORK, NAME, "apt-get", *args, check=False, timeout=300,
               capture_output=True)
    for line in (r.stdout + r.stderr).splitlines():
        if "Reading database ..." not in line:
            print("    " + line, flush=True)
    if r.returncode != 0:
        raise AssertionError(f"apt-get {' '.join(args)}: exit {r.returncode}")


def build_deb():
    """The .deb (make deb, or $LIFELINE_DEB), or None with the reason to skip."""
    given = os.environ.get("LIFELINE_DEB")
    if given:
        if not os.path.isfile(given):
            raise AssertionError(f"LIFELINE_DEB={given}: no such file")
        return os.path.abspath(given), None
    if shutil.which("dpkg-deb") is None:
        return None, "no dpkg here: the package builds on Debian"
    t0 = time.monotonic()
    r = run("make", "-C", REPO, "deb", check=False, capture_output=True, timeout=1800)
    missing = re.search(r"^Missing packages: (.*)$", r.stdout, re.M)
    if r.returncode != 0 and missing and os.geteuid() != 0:
        return None, f"make deb needs {missing.group(1)} (as root, it installs them)"
    if r.returncode != 0:
        print(r.stdout[-4000:] + r.stderr[-4000:], flush=True)
        raise AssertionError(f"make deb: exit {r.returncode}")
    m = re.search(r"^deb: built in \d+ s: (\S+\.deb)$", r.stdout, re.M)
    if not m:
        raise AssertionError("make deb did not print the path of the .deb")
    path = os.path.join(REPO, m.group(1))
    log(f"make deb: {m.group(1)} in {time.monotonic() - t0:.0f} s")
    return path, None


def repack(deb, tmp):
    """DEB as version VERSION+upgradetest: the same files and maintainer
    scripts, so that installing it is an upgrade."""
    tree = os.path.join(tmp, "tree")
    run("dpkg-deb", "-R", deb, tree, quiet=True)
    control = os.path.join(tree, "DEBIAN", "control")
    text = open(control).read()
    version = re.search(r"^Version: (\S+)$", text, re.M).group(1)
    new = version + "+upgradetest"
    with open(control, "w") as f:
        f.write(re.sub(r"^Version: .*$", f"Version: {new}", text, flags=re.M))
    arch = re.search(r"^Architecture: (\S+)$", text, re.M).group(1)
    path = os.path.join(tmp, f"lifeline_{new}_{arch}.deb")
    run("dpkg-deb", "--root-owner-group", "-b", tree, path, quiet=True,
        stdout=subprocess.DEVNULL)
    return path, version, new


def addresses():
    """The installed configuration's first route: (listen port, upstream
    host, upstream port). Clients inside the container reach a wildcard
    listen address on 127.0.0.1."""
    cfg = json.loads(out("cat", "/etc/lifeline/lifeline.json"))
    route = cfg["routes"][0]
    lport = int(route["listen"].rsplit(":", 1)[1])
    uhost, uport = route["upstream"]["servers"][0].rsplit(":", 1)
    return lport, uhost, int(uport)


def relays(what):
    lport, uhost, uport = addresses()
    r = cexec("python3", "-c", RELAY, str(lport), uhost, str(uport), timeout=60, quiet=True)
    res = json.loads(r.stdout)
    check(res["server_got"] == res["sent"] and res["server_size"] == res["size"],
          f"{what}: {res['size']} bytes sent to 127.0.0.1:{lport} reached the server on "
          f"{uhost}:{uport} intact (the server got {res['server_size']} bytes from "
          f"{res['server_peer']}; client: {res['client_error'] or 'no error'})")
    check(res["echo"] == res["sent"],
          f"{what}: and came back through lifeline intact ({res['echo_size']} bytes)")


def main_pid():
    return int(out("systemctl", "show", "-p", "MainPID", "--value", "lifeline"))


def installed_and_running(what):
    enabled = out("systemctl", "is-enabled", "lifeline")
    check(enabled == "enabled", f"{what}: systemctl is-enabled lifeline: {enabled}")
    active = out("systemctl", "is-active", "lifeline")
    check(active == "active", f"{what}: systemctl is-active lifeline: {active}")
    pid = main_pid()
    # journald may write the line a moment after apt-get returns.
    ready = re.compile(r"\binfo ready workers=\d+ routes=\d+ pid=(\d+)$")

    def ready_logged():
        journal = out("journalctl", "-u", "lifeline", "-o", "cat", "--no-pager")
        return any(int(m.group(1)) == pid for m in map(ready.search, journal.splitlines()) if m)
    wait_until(ready_logged, 15, f"the ready line of pid {pid} in journalctl -u lifeline",
               interval=0.2)
    log(f"ok: {what}: journalctl -u lifeline has the ready line of MainPID {pid}")
    user = out("ps", "-o", "user=,group=", "-p", str(pid)).split()
    check(user == ["lifeline", "lifeline"], f"{what}: MainPID {pid} runs as {user}")
    return pid


def account(kind):
    """getent KIND lifeline as its fields, or None."""
    r = cexec("getent", kind, "lifeline", check=False, quiet=True)
    return r.stdout.strip().split(":") if r.returncode == 0 else None


def main():
    started = time.monotonic()
    deb, why = build_deb()
    if deb is None:
        print(f"test-container deb: skipped: {why}", flush=True)
        return SKIP
    ensure_systemd_image()
    tmp = tempfile.mkdtemp(prefix="lifeline-deb-")
    podman("rm", "-f", NAME, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        upgrade, version, new_version = repack(deb, tmp)
        podman("run", "-d", "--name", NAME, "--systemd=always", "--network", "none", *ulimits(),
               SYSTEMD_IMAGE, stdout=subprocess.DEVNULL)
        # systemctl answers only once PID 1 has its socket up; --wait then
        # waits for the boot to finish.
        state = wait_until(lambda: out("systemctl", "is-system-running", "--wait", timeout=120),
                           120, "systemctl in the container", interval=0.5)
        if state != "running":
            log(f"systemd: {state}; failed units:\n" + out("systemctl", "--failed", "--no-pager"))
        check(state in ("running", "degraded"), f"systemd is up in the container ({state})")
        for f in (deb, upgrade):
            podman("cp", f, f"{NAME}:{WORK}/", quiet=True)
        deb_name = os.path.basename(deb)

        # ---- install ----
        t0 = time.monotonic()
        apt("install", "-y", f"./{deb_name}")
        log(f"apt-get install took {time.monotonic() - t0:.1f} s")
        pw, gr = account("passwd"), account("group")
        check(pw is not None and gr is not None, "the user and the group lifeline exist")
        uid, gid = int(pw[2]), int(gr[2])
        sys_max = int(out("awk", "$1 == \"SYS_UID_MAX\" {print $2}", "/etc/login.defs") or 999)
        check(0 < uid <= sys_max and 0 < gid <= sys_max and int(pw[3]) == gid,
              f"system ids: uid {uid}, gid {gid} (SYS_UID_MAX {sys_max}), the user's group")
        check(pw[5] == "/nonexistent" and pw[6] == "/usr/sbin/nologin",
              f"no home, no login: {pw[5]} {pw[6]}")
        pid = installed_and_running("after install")

        status = cexec("dpkg", "-s", "lifeline", quiet=True).stdout
        conffiles = status.split("\nConffiles:\n", 1)[-1] if "\nConffiles:\n" in status else ""
        check(re.match(r" /etc/lifeline/lifeline\.json [0-9a-f]{32}\n", conffiles),
              "dpkg -s lifeline lists /etc/lifeline/lifeline.json as a conffile")
        check(out("cat", "/etc/lifeline/lifeline.json") == open(CONFIG).read().strip(),
              "/etc/lifeline/lifeline.json is config/lifeline.json")
        relays("the packaged configuration")
        script = "/usr/share/lifeline/transparent-routing.sh"
        check(cexec("test", "-x", script, check=False, quiet=True).returncode == 0,
              f"{script} is installed, executable")
        unit = out("systemctl", "cat", "lifeline")
        check(f"#ExecStartPre=+{script} up" in unit and "/usr/local" not in unit,
              "the packaged unit's commented ExecStartPre names the packaged script")

        # ---- upgrade: no stop, no restart, the open session goes on ----
        lport, uhost, uport = addresses()
        podman("exec", "-d", NAME, "python3", "-c", SESSION, str(lport), uhost, str(uport),
               quiet=True, stdout=subprocess.DEVNULL)
        wait_until(lambda: out("cat", "/run/session.state") != "", 30, "the session opened",
                   interval=0.2)
        check(out("cat", "/run/session.state") == "open", "a session is open through lifeline")
        apt("install", "-y", f"./{os.path.basename(upgrade)}")
        got = out("dpkg-query", "-W", "-f=${Version}", "lifeline")
        check(got == new_version, f"upgraded from {version} to {got}")
        active, now = out("systemctl", "is-active", "lifeline"), main_pid()
        check(active == "active" and now == pid,
              f"the upgrade did not restart lifeline ({active}, MainPID {pid} before, {now} after)")
        cexec("touch", "/run/session.go", quiet=True)
        wait_until(lambda: out("cat", "/run/session.state") != "open", 30,
                   "the session's second echo", interval=0.2)
        st = out("cat", "/run/session.state")
        check(st == "ok", f"the session opened before the upgrade still relays after it ({st})")

        # ---- remove: stopped, configuration and user kept ----
        # An administrator's edit: listen on the next port.
        edited = lport + 1
        cexec("sed", "-i", f"s/:{lport}\"/:{edited}\"/", "/etc/lifeline/lifeline.json", quiet=True)
        apt("remove", "-y", "lifeline")
        active = out("systemctl", "is-active", "lifeline")
        check(active != "active", f"after remove: systemctl is-active lifeline: {active}")
        procs = cexec("pgrep", "-a", "-x", "lifeline", check=False, quiet=True)
        check(procs.returncode == 1, f"after remove: no lifeline process ({procs.stdout.strip()})")
        refused = out("python3", "-c", REFUSED, str(lport))
        check(refused == "refused", f"after remove: 127.0.0.1:{lport} {refused}")
        check(cexec("test", "-f", "/etc/lifeline/lifeline.json", check=False,
                    quiet=True).returncode == 0,
              "after remove: /etc/lifeline/lifeline.json is kept")
        check(account("passwd") == pw and account("group") == gr,
              "after remove: the user and the group lifeline are kept")
        status = out("dpkg-query", "-W", "-f=${Status}", "lifeline")
        check(status == "deinstall ok config-files", f"after remove: dpkg status {status!r}")

        apt("install", "-y", f"./{deb_name}")
        installed_and_running("reinstalled after remove")
        check(addresses()[0] == edited,
              f"the edited configuration (port {edited}) survived remove and reinstall")
        relays("the edited configuration")

        # ---- purge: user, group, configuration gone ----
        # What an administrator's history leaves next to a conffile (dpkg's
        # backups from conffile prompts, an editor's): purge removes them too.
        cexec("touch", "/etc/lifeline/lifeline.json.dpkg-old",
              "/etc/lifeline/lifeline.json.dpkg-dist", "/etc/lifeline/lifeline.json~", quiet=True)
        apt("purge", "-y", "lifeline")
        check(account("passwd") is None, "after purge: no user lifeline")
        check(account("group") is None, "after purge: no group lifeline")
        check(cexec("test", "-e", "/etc/lifeline", check=False, quiet=True).returncode == 1,
              "after purge: no /etc/lifeline")
        gone = cexec("dpkg-query", "-W", "lifeline", check=False, quiet=True)
        check(gone.returncode != 0, "after purge: dpkg knows no lifeline")
        check(out("python3", "-c", REFUSED, str(edited)) == "refused",
              f"after purge: 127.0.0.1:{edited} refused")

        # ---- install after purge: as new ----
        apt("install", "-y", f"./{deb_name}")
        check(account("passwd") is not None and account("group") is not None,
              "reinstalled after purge: the user and the group lifeline exist again")
        installed_and_running("reinstalled after purge")
        check(addresses()[0] == lport, f"reinstalled after purge: the packaged port {lport}")
        relays("reinstalled after purge")
    finally:
        podman("rm", "-f", "-t", "5", NAME, check=False, stdout=subprocess.DEVNULL,
               stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    set_prefix("test-container deb")
    main_wrapper(main)
