#!/usr/bin/env python3
"""The container image, built and run for real (`make test-container`).

Builds docker/Dockerfile with podman (its build stage runs the test suite),
then runs the image in front of an echo server on loopback and checks what a
user of the image relies on: bytes relayed both ways, the HEALTHCHECK going
healthy, the non-root user, and `podman stop` draining to exit 0.

What this machine needs, and the test does itself (none of it is in the
Dockerfile: a machine with Docker and a registry needs none of it):
- podman with the runc runtime (crun refuses a hybrid cgroup layout);
- a debian:bookworm-slim base image: pulled when a registry answers, else
  made with mmdebstrap and imported (about 40 s, once per machine);
- --ulimit at the host's hard limits (without CAP_SYS_RESOURCE the runtime
  cannot raise them), and --format docker (an OCI image drops HEALTHCHECK).
The image runs with --network host: its loopback is this machine's, the only
network the tests may use. Exit 0 on success, 77 with a message when no
container engine can be set up here, 1 on a failure.
"""

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from lifeline_testlib import REPO, wait_until  # noqa: E402

BASE = "docker.io/library/debian:bookworm-slim"
IMAGE = "localhost/lifeline:test"
NAME = "lifeline-test-image"
ADMIN_PORT = 9900  # the image's HEALTHCHECK probes 127.0.0.1:9900
SKIP = 77


def log(msg):
    print(f"[test-container] {msg}", flush=True)


def run(*args, check=True, timeout=900, quiet=False, **kw):
    if not quiet:
        log("$ " + " ".join(args))
    return subprocess.run(args, check=check, timeout=timeout, text=True, **kw)


def podman(*args, **kw):
    return run("podman", "--runtime", "runc", *args, **kw)


def engine_ready():
    """Why no container can run here, or None."""
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (as root, `make test-container` installs it)"
    try:
        podman("info", stdout=subprocess.DEVNULL, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        return f"podman cannot run here: {e}"
    return None


def ensure_base():
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    if podman("pull", "-q", BASE, check=False, timeout=120,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
        return
    if shutil.which("mmdebstrap") is None:
        raise SystemExit(f"no {BASE} and no registry: install mmdebstrap")
    with tempfile.TemporaryDirectory() as tmp:
        tar = os.path.join(tmp, "bookworm.tar")
        run("mmdebstrap", "--variant=minbase", "--format=tar", "bookworm", tar,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        podman("import", tar, BASE, stdout=subprocess.DEVNULL)


def ulimits():
    args = []
    for name, res in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        hard = resource.getrlimit(res)[1]
        if hard == resource.RLIM_INFINITY:
            hard = 1048576
        if name == "nproc":
            hard = min(hard, 32768)
        args += ["--ulimit", f"{name}={hard}:{hard}"]
    return args


class EchoServer(threading.Thread):
    """Echoes every connection on 127.0.0.1, on a port of its own."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.echo, args=(c,), daemon=True).start()

    @staticmethod
    def echo(c):
        with c:
            while True:
                data = c.recv(65536)
                if not data:
                    return
                c.sendall(data)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    log(f"ok: {what}")


def main():
    why = engine_ready()
    if why is not None:
        print(f"test-container: skipped: {why}", file=sys.stderr)
        return SKIP
    started = time.monotonic()
    ensure_base()
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", ADMIN_PORT))
        except OSError:
            raise SystemExit(f"127.0.0.1:{ADMIN_PORT} is taken: the image's HEALTHCHECK needs it")
    t0 = time.monotonic()
    podman("build", "--format", "docker", "--network", "host", *ulimits(),
           "-f", os.path.join(REPO, "docker", "Dockerfile"), "-t", IMAGE, REPO)
    log(f"image built in {time.monotonic() - t0:.0f} s")

    echo = EchoServer()
    echo.start()
    listen = free_port()
    tmp = tempfile.mkdtemp(prefix="lifeline-image-")
    cfg = os.path.join(tmp, "lifeline.json")
    with open(cfg, "w") as f:
        json.dump({"admin": {"listen": f"127.0.0.1:{ADMIN_PORT}"},
                   "shutdown": {"drain_timeout_ms": 2000},
                   "routes": [{"name": "legacy", "listen": f"127.0.0.1:{listen}",
                               "upstream": {"servers": [f"127.0.0.1:{echo.port}"]}}]}, f)
    os.chmod(cfg, 0o644)
    os.chmod(tmp, 0o755)
    podman("rm", "-f", NAME, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        podman("run", "-d", "--name", NAME, "--network", "host", *ulimits(),
               "-v", f"{cfg}:/etc/lifeline/lifeline.json:ro", IMAGE, stdout=subprocess.DEVNULL)

        def ready():
            logs = podman("logs", NAME, capture_output=True, check=False, quiet=True)
            return '"msg":"ready"' in logs.stderr + logs.stdout
        wait_until(ready, 30, "lifeline ready in the container", interval=0.2)

        data = os.urandom(256 * 1024)
        with socket.create_connection(("127.0.0.1", listen), timeout=10) as c:
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                got += chunk
        check(got == data, f"{len(data)} bytes relayed through the image and echoed back intact")

        uid = podman("exec", NAME, "id", "-u", capture_output=True).stdout.strip()
        check(uid == "10001", f"runs as the non-root user (uid {uid})")

        def healthy():
            return podman("healthcheck", "run", NAME, check=False, quiet=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        wait_until(healthy, 30, "the HEALTHCHECK healthy", interval=0.5)
        status = podman("inspect", NAME, "--format", "{{.State.Health.Status}}",
                        capture_output=True).stdout.strip()
        check(status == "healthy", f"podman reports the container {status}")

        podman("stop", "-t", "15", NAME, stdout=subprocess.DEVNULL)
        code = podman("inspect", NAME, "--format", "{{.State.ExitCode}}",
                      capture_output=True).stdout.strip()
        logs = podman("logs", NAME, capture_output=True)
        lines = [json.loads(x) for x in (logs.stderr + logs.stdout).splitlines()
                 if x.startswith("{")]
        msgs = [r.get("msg") for r in lines]
        check(code == "0", f"podman stop: exit code {code}")
        check("shutting down" in msgs and msgs[-1] == "stopped",
              "SIGTERM drained the sessions and lifeline logged stopped")
    finally:
        podman("rm", "-f", NAME, check=False, stdout=subprocess.DEVNULL,
               stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (AssertionError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(f"test-container: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
