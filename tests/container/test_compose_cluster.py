#!/usr/bin/env python3
"""docker/compose-cluster.yaml, run for real with podman-compose (`make
test-container`): two lifelines sharing client identities through etcd.

The shipped compose file, unmodified, with the images it names:
lifeline:latest (docker/Dockerfile, tagged; rebuilt when the image at hand
predates the `cluster` key), lifeline-etcd:latest (docker/etcd.Containerfile,
Debian's etcd-server, built every time: the layer cache makes that a second)
and python:3.11-slim-bookworm (pulled when a registry answers, else a local
stand-in: debian:bookworm-slim + python3). It checks what the file's
comments promise:
- both lifelines join the cluster (`cluster joined`, each with its own
  instance name, the `hostname:` through ${HOSTNAME}) and become healthy
  (the file's healthcheck, /readyz, `podman healthcheck run`);
- the client's heartbeats reach the server through lifeline-a;
- SIGUSR1 to the client: it leaves its connection to lifeline-a open and
  connects to lifeline-b from the same port 40001. lifeline-a logs
  `cluster eviction` for the client and closes its session as `replaced`
  (well before the 30 s silence_ms could have), the server sees EOF on the
  old connection BEFORE it accepts lifeline-b's new one, and the new
  connection carries the client's next heartbeats; a second SIGUSR1 moves
  it back through lifeline-a, with the same order and lifeline-b's eviction;
- `podman-compose down` stops everything: each lifeline logs "shutting
  down", then "stopped", and exits 0, having revoked its lease (etcd stops
  last); no container is left.

What podman-compose 1.0.3 (Debian 12) and this machine need is done here as in
test_compose.py: podman in a network namespace of the test's own, the runc
runtime and ulimits through CONTAINERS_CONF, -p (1.0.3 ignores `name:`),
`down -t 15` (it ignores stop_grace_period), the project's network removed
after `down`, healthchecks run by `podman healthcheck run`. 1.0.3 also ignores
the client's `condition: service_healthy`: the client may start before the
lifelines joined, be refused (cluster_unavailable) and retry.
Exit 0 on success, 77 with a message when no container engine, podman-compose
or network namespace is available here, 1 on a failure.
"""

import datetime
import json
import os
import re
import shutil
import subprocess
import time

from podman_lib import (ComposeProject, IMAGE, REPO, SKIP, build, check, container_logs,
                        died_exit_code, ensure_lifeline_image, ensure_stand_in, image_ref,
                        json_lines, load_yaml, log, main_wrapper, netns_ready, podman, podman_out,
                        set_prefix, ulimits, wait_until)

DOCKER = os.path.join(REPO, "docker")
COMPOSE = os.path.join(DOCKER, "compose-cluster.yaml")
PROJECT = "lifeline-test-cluster"
NETWORK = f"{PROJECT}_default"
CLIENT_PORT = 40001
STOP_TIMEOUT = 15  # the file's stop_grace_period
DNS_SLACK = 60  # a first name resolution by a lifeline, at most (see run_stack)
LIFELINES = ("lifeline-a", "lifeline-b")
SERVICES = ("etcd", "server", *LIFELINES, "client")


_project = ComposeProject(PROJECT)
cname, project_containers, ip_of = _project.cname, _project.containers, _project.ip_of


def server_lines():
    return _project.lines("server")


def heartbeats(peer, lines=None):
    pattern = re.escape(peer) + r" heartbeat (\d+)"
    out = []
    for line in server_lines() if lines is None else lines:
        m = re.fullmatch(pattern, line)
        if m:
            out.append(int(m.group(1)))
    return out


def accepted():
    return [line.split()[1] for line in server_lines() if line.startswith("accepted ")]


def records(service, msg, text=None):
    text = container_logs(cname(service)) if text is None else text
    return [r for r in json_lines(text) if r.get("msg") == msg]


def ms_between(a, b):
    """Milliseconds from log record A to B, by their ts fields."""
    def t(r):
        return datetime.datetime.fromisoformat(r["ts"].replace("Z", "+00:00"))
    return round((t(b) - t(a)).total_seconds() * 1000)


def lifeline_image(config, compose_dir):
    """IMAGE, built if missing, and rebuilt (layer cache) if it refuses the
    file's configuration: an image from a tree without the cluster code."""
    ensure_lifeline_image()
    checked = podman("run", "--rm", *ulimits(), "-e", "HOSTNAME=check",
                     "-v", f"{os.path.normpath(os.path.join(compose_dir, config))}:/c.json:ro",
                     IMAGE, "--check", "-c", "/c.json", check=False, capture_output=True)
    if checked.returncode != 0:
        log(f"{IMAGE} refuses {config} ({checked.stderr.strip()[:200]}): rebuilding it")
        build(os.path.join(DOCKER, "Dockerfile"), IMAGE)


def main():
    started = time.monotonic()
    why = netns_ready()
    if why is None and shutil.which("podman-compose") is None:
        why = "podman-compose is not installed (as root, `make test-container` installs it)"
    if why is not None:
        print(f"test-container compose_cluster: skipped: {why}", flush=True)
        return SKIP

    services = load_yaml(COMPOSE)[0]["services"]
    check(sorted(services) == sorted(SERVICES), f"the file's services are {', '.join(SERVICES)}")
    mounts = [v.split(":") for v in services["lifeline-a"].get("volumes", [])]
    source = next(m[0] for m in mounts if m[1] == "/etc/lifeline/lifeline.json")
    with open(os.path.join(DOCKER, source)) as f:
        config = json.load(f)
    cluster = config["cluster"]
    silence_s = config["routes"][0]["client"]["heartbeat"]["silence_ms"] / 1000
    check(cluster["instance"] == "${HOSTNAME}"
          and [services[s]["hostname"] for s in LIFELINES] == list(LIFELINES),
          "each lifeline's instance name is its hostname")
    check(str(CLIENT_PORT) in services["client"]["command"][-1],
          f"the file's client binds source port {CLIENT_PORT}")

    _project.refuse_if_present(COMPOSE)

    for service in ("server", "client"):
        ensure_stand_in(image_ref(services[service]["image"]), ["python3"])
    lifeline_image(source, DOCKER)
    podman("tag", IMAGE, image_ref(services["lifeline-a"]["image"]), quiet=True)
    etcd = services["etcd"]["build"]
    context = os.path.normpath(os.path.join(DOCKER, etcd["context"]))
    build(os.path.join(context, etcd["dockerfile"]), image_ref(services["etcd"]["image"]),
          context=context)
    log(f"images ready after {time.monotonic() - started:.0f} s")

    _project.run("lifeline-test-cluster", COMPOSE, SERVICES,
                 lambda ns, compose, tmp: run_stack(ns, compose, silence_s, tmp))
    log(f"passed in {time.monotonic() - started:.0f} s")
    return 0


def move_client(ns, ip, old, frm, to, silence_s, before):
    """SIGUSR1 to the client, connected through FRM on the server connection
    OLD: it leaves that connection open and connects to TO from the same
    port. Checks the order at the server and FRM's eviction; returns the
    server's peer for the new connection."""
    client = f"{ip['client']}:{CLIENT_PORT}"
    evictions = len(records(frm, "cluster eviction"))
    asked = len(records(to, "cluster eviction"))
    moves = container_logs(cname("client")).count(f"left {frm} without closing, to {to}")
    ns.podman("kill", "-s", "USR1", cname("client"), stdout=subprocess.DEVNULL)
    moved = time.monotonic()
    new = wait_until(lambda: [a for a in accepted()[len(before):]
                              if a.startswith(f"{ip[to]}:")],
                     DNS_SLACK, f"the server to accept a connection from {to}",
                     interval=0.1)[0]
    took = time.monotonic() - moved
    check(container_logs(cname("client")).count(f"left {frm} without closing, to {to}")
          == moves + 1,
          f"SIGUSR1: the client left its connection to {frm} open and went to {to}")
    wait_until(lambda: len(heartbeats(new)) >= 2, 10, "heartbeats on the new connection",
               interval=0.2)
    lines = server_lines()
    eof, acc = lines.index(f"EOF from {old}"), lines.index(f"accepted {new}")
    check(eof < acc, f"the server saw EOF from {old} (line {eof}) before it accepted "
          f"{new} (line {acc}), {took:.1f} s after SIGUSR1 (silence_ms {silence_s:.0f} s)")
    check(accepted() == before + [new], "one server connection at a time")
    old_hb, new_hb = heartbeats(old, lines), heartbeats(new, lines)
    check(new_hb and old_hb and new_hb[0] > old_hb[-1],
          f"the new connection carries the client's next heartbeats ({old_hb[-1]} on the old, "
          f"{new_hb[0]}.. on the new)")

    ev = wait_until(lambda: records(frm, "cluster eviction")[evictions:], 10,
                    f"{frm}'s cluster eviction line", interval=0.1)[0]
    check(ev.get("client") == client and ev.get("route") == "legacy" and ev.get("from") == to,
          f"{frm}: cluster eviction route {ev.get('route')} client {ev.get('client')} "
          f"from {ev.get('from')}")
    closed = wait_until(lambda: [r for r in records(frm, "session closed")
                                 if r.get("upstream_local_port") == int(old.split(":")[1])],
                        10, f"{frm}'s session closed line", interval=0.1)[0]
    check(closed.get("reason") == "replaced" and closed.get("client") == client,
          f"{frm}: session closed client {closed.get('client')} reason "
          f"{closed.get('reason')} upstream_finish {closed.get('upstream_finish')}")
    check(len(records(to, "cluster eviction")) == asked, f"{to} was asked for nothing")
    return new


def run_stack(ns, compose, silence_s, tmp):
    compose("up", "-d")
    for service in SERVICES:
        state = podman_out("inspect", cname(service), "--format", "{{.State.Status}}")
        check(state == "running", f"{cname(service)} {state}")
    ip = {s: ip_of(s) for s in SERVICES}
    client = f"{ip['client']}:{CLIENT_PORT}"

    # Both join: a lease each, under its own name.
    for s in LIFELINES:
        rec = wait_until(lambda: records(s, "cluster joined"), 30, f"{s} to join the cluster",
                         interval=0.2)[0]
        began = records(s, "starting")[0]
        check(rec.get("instance") == s and rec.get("lease"),
              f"{s}: cluster joined, instance {rec.get('instance')}, lease {rec.get('lease')}, "
              f"etcd {rec.get('etcd')}, {ms_between(began, rec)} ms after starting")
    leases = {records(s, "cluster joined")[0]["lease"] for s in LIFELINES}
    check(len(leases) == 2, "two leases")
    for s in LIFELINES:
        wait_until(lambda: podman("healthcheck", "run", cname(s), check=False, quiet=True,
                                  capture_output=True).returncode == 0,
                   30, f"{s}'s healthcheck", interval=0.5)
        status = podman_out("inspect", cname(s), "--format", "{{.State.Health.Status}}")
        check(status == "healthy", f"podman healthcheck run (/readyz): {s} {status}")

    # Heartbeats through lifeline-a.
    # 60 s: a lifeline's first resolution of "server" can take about 30 s here
    # (aardvark-dns, in the test's network namespace, sometimes leaves a query
    # unanswered for a while right after `up`: `getent hosts server` in the
    # lifeline container took 15 s then); the session waits in "resolving".
    first = wait_until(lambda: accepted(), DNS_SLACK, "the server to accept a connection",
                       interval=0.2)[0]
    wait_until(lambda: len(heartbeats(first)) >= 3, 30, "three heartbeats at the server",
               interval=0.2)
    check(first.startswith(f"{ip['lifeline-a']}:"),
          f"the client's heartbeats reach the server through lifeline-a (server's peer {first}, "
          f"lifeline-a {ip['lifeline-a']}, client {ip['client']})")
    check("connected to lifeline-a from port 40001" in container_logs(cname("client")),
          "the client connected to lifeline-a from port 40001")
    check(not records("lifeline-a", "cluster eviction"), "no eviction yet")

    # The client comes back through lifeline-b, its session on lifeline-a open;
    # then (SIGUSR1 again) back through lifeline-a.
    second = move_client(ns, ip, first, "lifeline-a", "lifeline-b", silence_s, [first])
    third = move_client(ns, ip, second, "lifeline-b", "lifeline-a", silence_s,
                        [first, second])

    # Down: each lifeline drains, revokes its lease and exits 0.
    cids = {s: podman_out("inspect", cname(s), "--format", "{{.Id}}") for s in LIFELINES}
    files = {s: os.path.join(tmp, f"{s}.log") for s in LIFELINES}
    followers = {}
    try:
        for s in LIFELINES:
            out = open(files[s], "w")
            followers[s] = subprocess.Popen(["podman", "logs", "-f", cname(s)], stdout=out,
                                            stderr=subprocess.STDOUT)
            out.close()
        compose("down", "-t", str(STOP_TIMEOUT))
        for p in followers.values():
            p.wait(timeout=30)
    finally:
        for p in followers.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for s in LIFELINES:
        with open(files[s]) as f:
            text = f.read()
        msgs = [r.get("msg") for r in json_lines(text)]
        code = died_exit_code(cids[s], "30m")
        check("shutting down" in msgs and msgs[-1] == "stopped" and code == "0",
              f"podman-compose down: {s} logged shutting down, then stopped, and exited {code}")
        check(not any(m.startswith("cluster: cannot revoke") for m in msgs if m),
              f"{s} revoked its lease (etcd stops after the lifelines)")
        if s == "lifeline-a":
            last = [r for r in records(s, "session closed", text)
                    if r.get("upstream_local_port") == int(third.split(":")[1])]
            check(last and last[0].get("client") == client
                  and last[0].get("reason") == "client_eof",
                  "lifeline-a's last session came from port 40001 and ended with the client's "
                  "stop")
    check(not project_containers(), "no container of the project is left")
    if podman("network", "exists", NETWORK, check=False, quiet=True).returncode == 0:
        log(f"podman-compose 1.0.3 down leaves the network {NETWORK}: removing it")
        ns.podman("network", "rm", NETWORK, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    set_prefix("test-container compose_cluster")
    main_wrapper(main)
