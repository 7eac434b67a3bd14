#!/usr/bin/env python3
"""docker/compose.yaml, run for real with podman-compose (`make test-container`).

The shipped compose file, unmodified, with the images it names: lifeline:latest
(docker/Dockerfile, tagged) and python:3.11-slim-bookworm (pulled when a
registry answers, else a local stand-in: debian:bookworm-slim + python3). It
checks what the file's comments promise:
- the client's heartbeats reach the server through lifeline (the server's peer
  is lifeline's address, never the client's), also through the published
  port 5000;
- lifeline becomes healthy (the file's healthcheck, `podman healthcheck run`);
- a paused client: silence_ms (from docker/compose-lifeline.json, the
  configuration the file mounts) after its last heartbeat the server gets EOF,
  and lifeline logs the close with reason client_silence;
- unpaused, the client finds its connection reset, connects again from port
  40001 and the server accepts a new connection that carries its heartbeats;
- `podman-compose down` stops everything: lifeline logs "shutting down" then
  "stopped" and exits 0, and no container is left.

What podman-compose 1.0.3 (Debian 12) and this machine need, done here and
not in the compose file:
- podman runs in a network namespace of the test's own (NetNS in podman_lib):
  the file publishes port 5000 on every address, here only those of the
  namespace; the project's bridge and aardvark-dns live and die in it too;
- the runc runtime and the ulimits through CONTAINERS_CONF (podman-compose
  passes neither);
- project name -p (1.0.3 ignores `name:`), `podman pause` (1.0.3 has no pause
  command), `down -t 15` (1.0.3 ignores stop_grace_period), and the project's
  network removed after `down`, which leaves it;
- healthchecks run by `podman healthcheck run` (podman schedules them with
  systemd timers, and this machine has no systemd).
Exit 0 on success, 77 with a message when no container engine, podman-compose
or network namespace is available here, 1 on a failure.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

from podman_lib import (ComposeProject, REPO, SKIP, check, container_logs, died_exit_code,
                        ensure_stand_in, image_ref, json_lines, load_yaml, log, main_wrapper,
                        netns_ready, podman, podman_out, set_prefix, tag_lifeline_image,
                        wait_until)

COMPOSE = os.path.join(REPO, "docker", "compose.yaml")
PROJECT = "lifeline-test-compose"
NETWORK = f"{PROJECT}_default"
CLIENT_PORT = 40001
STOP_TIMEOUT = 15  # the file's stop_grace_period

# A client of the published port, run in the test's network namespace.
SEND = r'''
import socket, sys
with socket.create_connection(("127.0.0.1", 5000), timeout=10) as s:
    s.sendall(sys.argv[1].encode() + b"\n")
'''


_project = ComposeProject(PROJECT)
cname, project_containers, ip_of = _project.cname, _project.containers, _project.ip_of


def server_lines():
    return _project.lines("server")


def heartbeats(peer):
    pattern = re.escape(peer) + r" heartbeat \d+"
    return [line for line in server_lines() if re.fullmatch(pattern, line)]


def accepted():
    return [line.split()[1] for line in server_lines() if line.startswith("accepted ")]


def closes(text=None):
    text = container_logs(cname("lifeline")) if text is None else text
    return [r for r in json_lines(text) if r.get("msg") == "session closed"]


def main():
    started = time.monotonic()
    why = netns_ready()
    if why is None and shutil.which("podman-compose") is None:
        why = "podman-compose is not installed (as root, `make test-container` installs it)"
    if why is not None:
        print(f"test-container compose: skipped: {why}", flush=True)
        return SKIP

    services = load_yaml(COMPOSE)[0]["services"]
    mounts = [v.split(":") for v in services["lifeline"].get("volumes", [])]
    source = next(m[0] for m in mounts if m[1] == "/etc/lifeline/lifeline.json")
    with open(os.path.join(os.path.dirname(COMPOSE), source)) as f:
        config = json.load(f)
    silence_s = config["routes"][0]["client"]["heartbeat"]["silence_ms"] / 1000
    check(str(CLIENT_PORT) in services["client"]["command"][-1],
          f"the file's client binds source port {CLIENT_PORT}")

    _project.refuse_if_present(COMPOSE)

    for service in ("server", "client"):
        ensure_stand_in(image_ref(services[service]["image"]), ["python3"])
    tag_lifeline_image(services["lifeline"]["image"])

    _project.run("lifeline-test-compose", COMPOSE, ("server", "lifeline", "client"),
                 lambda ns, compose, tmp: run_stack(ns, compose, silence_s, tmp))
    log(f"passed in {time.monotonic() - started:.0f} s")
    return 0


def run_stack(ns, compose, silence_s, tmp):
    compose("up", "-d")
    for service in ("server", "lifeline", "client"):
        state = podman_out("inspect", cname(service), "--format", "{{.State.Status}}")
        check(state == "running", f"{cname(service)} {state}")
    ll_ip, client_ip = ip_of("lifeline"), ip_of("client")

    # Heartbeats through lifeline.
    first = wait_until(lambda: accepted(), 30, "the server to accept a connection", interval=0.2)[0]
    wait_until(lambda: len(heartbeats(first)) >= 3, 30, "three heartbeats at the server",
               interval=0.2)
    check(first.startswith(f"{ll_ip}:") and not any(a.startswith(f"{client_ip}:")
                                                    for a in accepted()),
          f"the client's heartbeats reach the server through lifeline (server's peer {first}, "
          f"lifeline {ll_ip}, client {client_ip})")

    # The published port, 127.0.0.1:5000 of the test's network namespace.
    token = "through the published port " + os.urandom(6).hex()
    log("client in the test's network namespace -> 127.0.0.1:5000")
    ns.run(sys.executable, "-c", SEND, token, timeout=30, quiet=True)
    wait_until(lambda: any(line.endswith(" " + token) for line in server_lines()), 10,
               "the bytes sent to the published port at the server", interval=0.1)
    peer = next(line.split()[0] for line in server_lines() if line.endswith(" " + token))
    wait_until(lambda: f"EOF from {peer}" in server_lines(), 10, "EOF", interval=0.1)
    check(True, f"ports 5000:5000: 127.0.0.1:5000 relayed to the server ({peer}), then EOF")

    # Healthy, by the file's healthcheck.
    hc = json.loads(podman_out("inspect", cname("lifeline"), "--format",
                               "{{json .Config.Healthcheck}}"))
    test = " ".join(hc.get("Test") or [])
    check("lifeline' 'probe' 'http://127.0.0.1:9900/healthz" in test
          or "lifeline probe http://127.0.0.1:9900/healthz" in test,
          f"lifeline's healthcheck is the file's ({test})")
    wait_until(lambda: podman("healthcheck", "run", cname("lifeline"), check=False, quiet=True,
                              capture_output=True).returncode == 0,
               30, "lifeline's healthcheck", interval=0.5)
    status = podman_out("inspect", cname("lifeline"), "--format", "{{.State.Health.Status}}")
    check(status == "healthy", f"podman healthcheck run: lifeline {status}")

    # A client that hangs: EOF at the server silence_ms after its last heartbeat.
    ns.podman("pause", cname("client"), stdout=subprocess.DEVNULL)
    paused = time.monotonic()
    wait_until(lambda: f"EOF from {first}" in server_lines(), silence_s + 10,
               f"EOF from {first} at the server", interval=0.1)
    waited = time.monotonic() - paused
    check(silence_s - 1.5 <= waited <= silence_s + 3,
          f"the server got EOF {waited:.1f} s after the pause (silence_ms {silence_s * 1000:.0f}; "
          "the last heartbeat came up to 1 s before the pause)")
    rec = wait_until(lambda: [r for r in closes()
                              if r.get("upstream_local_port") == int(first.split(":")[1])],
                     10, "lifeline's session closed line", interval=0.1)[0]
    check(rec.get("reason") == "client_silence"
          and rec.get("client") == f"{client_ip}:{CLIENT_PORT}",
          f"lifeline logged the close of {rec.get('client')}: reason {rec.get('reason')}")
    check(accepted() == [first, peer], "no new server connection while the client is paused")

    # Back: reset, reconnects from the same port, a new server connection.
    ns.podman("unpause", cname("client"), stdout=subprocess.DEVNULL)
    wait_until(lambda: container_logs(cname("client")).count(
        f"connected from port {CLIENT_PORT}") >= 2, 15, "the client to reconnect", interval=0.2)
    check("connection ended" in container_logs(cname("client")),
          f"unpaused, the client found its connection ended and connected again from port "
          f"{CLIENT_PORT}")
    second = wait_until(lambda: accepted()[2:], 10, "a new server connection", interval=0.1)[0]
    wait_until(lambda: len(heartbeats(second)) >= 2, 10, "heartbeats on the new connection",
               interval=0.2)
    check(second != first and second.startswith(f"{ll_ip}:"),
          f"the server accepted a new connection from lifeline ({second}) carrying the "
          "heartbeats")

    # Down: lifeline drains and exits 0.
    cid = podman_out("inspect", cname("lifeline"), "--format", "{{.Id}}")
    logfile = os.path.join(tmp, "lifeline.log")
    with open(logfile, "w") as out:
        follower = subprocess.Popen(["podman", "logs", "-f", cname("lifeline")], stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            compose("down", "-t", str(STOP_TIMEOUT))
            follower.wait(timeout=30)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
    with open(logfile) as f:
        text = f.read()
    msgs = [r.get("msg") for r in json_lines(text)]
    code = died_exit_code(cid, "30m")
    check("shutting down" in msgs and msgs[-1] == "stopped" and code == "0",
          f"podman-compose down: lifeline logged shutting down, then stopped, and exited {code}")
    last = [r for r in closes(text) if r.get("upstream_local_port") == int(second.split(":")[1])]
    check(last and last[0].get("client") == f"{client_ip}:{CLIENT_PORT}"
          and last[0].get("reason") == "client_eof",
          "the reconnected session came from port 40001 and ended with the client's stop")
    check(not project_containers(), "no container of the project is left")
    if podman("network", "exists", NETWORK, check=False, quiet=True).returncode == 0:
        log(f"podman-compose 1.0.3 down leaves the network {NETWORK}: removing it")
        ns.podman("network", "rm", NETWORK, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    set_prefix("test-container compose")
    main_wrapper(main)
