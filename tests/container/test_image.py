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
import shutil
import socket
import subprocess
import tempfile
import time

from podman_lib import (IMAGE, REPO, EchoServer, build, check, echo_through, ensure_base,
                        free_port, log, main_wrapper, podman, ulimits, wait_until)

NAME = "lifeline-test-image"
ADMIN_PORT = 9900  # the image's HEALTHCHECK probes 127.0.0.1:9900


def main():
    started = time.monotonic()
    ensure_base()
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", ADMIN_PORT))
        except OSError:
            raise SystemExit(f"127.0.0.1:{ADMIN_PORT} is taken: the image's HEALTHCHECK needs it")
    build(os.path.join(REPO, "docker", "Dockerfile"), IMAGE)

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

        data, got = echo_through(listen)
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

        bins = podman("run", "--rm", *ulimits(), "--network", "none", "--entrypoint", "/bin/sh",
                      IMAGE, "-c", "ls /var/cache/apt/ | grep -c '[.]bin$' || true",
                      capture_output=True).stdout.strip()
        check(bins == "0", f"no apt package caches left in the image ({bins} .bin files)")
        # The README's --check command: a mounted file with ${UPSTREAM}, -e UPSTREAM.
        with open(os.path.join(tmp, "c.json"), "w") as f:
            json.dump({"routes": [{"name": "r", "listen": "0.0.0.0:5000",
                                   "upstream": {"servers": ["${UPSTREAM}"]}}]}, f)
        os.chmod(os.path.join(tmp, "c.json"), 0o644)
        r = podman("run", "--rm", *ulimits(), "--network", "none", "-v",
                   f"{os.path.join(tmp, 'c.json')}:/c.json:ro", "-e", "UPSTREAM=10.0.0.5:6000",
                   IMAGE, "--check", "-c", "/c.json", capture_output=True, check=False)
        check(r.returncode == 0 and r.stdout.strip() == "ok",
              f"the README's --check command: exit {r.returncode}, {r.stdout.strip()}")

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
    main_wrapper(main)
