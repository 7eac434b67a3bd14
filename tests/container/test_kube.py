#!/usr/bin/env python3
"""docker/k8s/sidecar.yaml, run for real with `podman kube play`
(`make test-container`).

The shipped manifest, unmodified, with the two images it names: lifeline:latest
(docker/Dockerfile, tagged) and legacy-server:latest, a stand-in built here (a
python3 server on 127.0.0.1:6000 that never writes and prints, as JSON lines,
what it reads and each EOF). It checks what the manifest promises:
- a client in the Pod's network namespace reaches the server through lifeline
  on port 5000, the server receives the bytes, the client's close is the
  server's EOF;
- the probes' commands pass: startupProbe within periodSeconds x
  failureThreshold, readinessProbe, and livenessProbe, which podman turns into
  the container's healthcheck (`podman healthcheck run`);
- lifeline runs as uid 10001 with a read-only root, no capabilities and no
  privilege escalation; the legacy server runs as its image's user;
- stopping the Pod with terminationGracePeriodSeconds drains: readiness turns
  503, an open session still relays, and when its client closes the server
  gets EOF and lifeline logs "shutting down" then "stopped" and exits 0;
  `podman kube down` then leaves no Pod, container or volume behind.

What podman 4.3.1 (Debian 12) does differently from a kubelet, and the test
does in its place:
- kube play publishes every containerPort on 0.0.0.0 of the host (a kubelet
  publishes nothing without hostPort): podman runs here in a network namespace
  of the test's own, on a network of its own (NetNS in podman_lib);
- startupProbe and readinessProbe are ignored, and the livenessProbe's
  healthcheck is scheduled by systemd timers, which a machine without systemd
  as PID 1 has not: the test runs each probe itself;
- terminationGracePeriodSeconds is ignored (stop timeout 10 s), and `kube
  down` stops the Pod with SIGKILL at once (podman issue 22397, fixed in
  2024 by pull request 22398): the test stops the Pod with `podman pod stop -t <the grace
  period>` first, as an operator of podman 4.3 must;
- kube down leaves the ConfigMap's volume: the test removes it.
Exit 0 on success, 77 with a message when no container engine or network
namespace can be set up here, 1 on a failure.
"""

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

from podman_lib import (BASE, REPO, SKIP, NetNS, build, check, container_logs, exit_code,
                        json_lines, load_yaml, log, main_wrapper, netns_ready,
                        podman, podman_out, run, set_prefix, tag_lifeline_image, use_engine_conf,
                        wait_until)

MANIFEST = os.path.join(REPO, "docker", "k8s", "sidecar.yaml")
NETWORK = "lifeline-test-kube"

# The stand-in legacy server. On SIGTERM it stops accepting and exits once
# its open connections have ended: what the manifest asks of the real one
# (stay up while lifeline drains).
LEGACY_SERVER = r'''
import json, signal, socket, threading, time

lock = threading.Lock()
open_peers = set()


def out(**kw):
    with lock:
        print(json.dumps(kw), flush=True)


class Stop(Exception):
    pass


def on_term(signum, frame):
    raise Stop()


def serve(conn, peer):
    out(event="accepted", peer=peer)
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                out(event="eof", peer=peer)
                break
            out(event="read", peer=peer, hex=data.hex())
    except OSError as e:
        out(event="error", peer=peer, error=str(e))
    conn.close()
    with lock:
        open_peers.discard(peer)


signal.signal(signal.SIGTERM, on_term)
srv = socket.create_server(("127.0.0.1", 6000))
out(event="listening", address="127.0.0.1:6000")
try:
    while True:
        conn, addr = srv.accept()
        peer = "%s:%d" % addr
        with lock:
            open_peers.add(peer)
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
except Stop:
    srv.close()
    out(event="sigterm", open=len(open_peers))
while open_peers:
    time.sleep(0.05)
out(event="stopped")
'''

# A client run in the server's container (it has python3), so in the Pod's
# network namespace: connects to lifeline, prints its port, sends each line
# of hex read from stdin, closes when stdin ends.
CLIENT = r'''
import socket, sys
s = socket.create_connection(("127.0.0.1", 5000), timeout=10)
print(s.getsockname()[1], flush=True)
for line in sys.stdin:
    s.sendall(bytes.fromhex(line.strip()))
s.close()
print("closed", flush=True)
'''

HTTP_GET = r'''
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)
'''


def build_legacy_server(tag, tmp):
    """FROM debian:bookworm-slim + python3 (the same RUN line as
    ensure_stand_in(), so the layer is shared) + the server above."""
    d = os.path.join(tmp, "legacy-server")
    os.mkdir(d)
    with open(os.path.join(d, "legacy_server.py"), "w") as f:
        f.write(LEGACY_SERVER)
    with open(os.path.join(d, "Containerfile"), "w") as f:
        f.write(f"FROM {BASE}\n"
                "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y"
                " --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*\n"
                "COPY legacy_server.py /legacy_server.py\n"
                'CMD ["python3", "-u", "/legacy_server.py"]\n')
    build(os.path.join(d, "Containerfile"), tag, context=d)


def server_events(name):
    return [e for e in json_lines(container_logs(name)) if "event" in e]


def lifeline_msgs(name):
    return [r for r in json_lines(container_logs(name)) if "msg" in r]


def exec_rc(name, cmd):
    return podman("exec", name, *cmd, check=False, quiet=True, capture_output=True)


class Client:
    """CLIENT in container NAME, driven through its stdin."""

    def __init__(self, name):
        log(f"client in {name} -> 127.0.0.1:5000")
        self.proc = subprocess.Popen(["podman", "exec", "-i", name, "python3", "-u", "-c", CLIENT],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self.readline() or 0)
        check(self.port > 0, f"the client connected to lifeline from 127.0.0.1:{self.port}")

    def readline(self, timeout=30):
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            raise AssertionError(f"the client said nothing for {timeout} s")
        return self.proc.stdout.readline().strip()

    def send(self, data):
        self.proc.stdin.write(data.hex() + "\n")
        self.proc.stdin.flush()

    def close(self):
        self.proc.stdin.close()
        line = self.readline()
        rc = self.proc.wait(timeout=30)
        check(line == "closed" and rc == 0, "the client closed its connection")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def http_status(netns, url):
    """The HTTP status of a GET of URL from the network namespace NETNS."""
    r = run("nsenter", f"--net={netns}", sys.executable, "-c", HTTP_GET, url,
            capture_output=True, quiet=True, check=False)
    return int(r.stdout.strip() or 0)


def received(server, data):
    """The server's peer (lifeline's upstream connection) that read DATA."""
    for e in server_events(server):
        if e["event"] == "read" and data.hex() in e["hex"]:
            return e["peer"]
    return None


def got_eof(server, peer):
    return any(e["event"] == "eof" and e["peer"] == peer for e in server_events(server))


def session_closed(lifeline, client_port):
    for r in lifeline_msgs(lifeline):
        if r["msg"] == "session closed" and r.get("client") == f"127.0.0.1:{client_port}":
            return r
    return None


def relay_and_close(server, lifeline, client, payload, sent_before=0):
    """PAYLOAD reaches the server; the client's close is the server's EOF;
    lifeline logs the session with all its bytes."""
    client.send(payload)
    peer = wait_until(lambda: received(server, payload), 10,
                      "the server to read the client's bytes", interval=0.1)
    check(not got_eof(server, peer),
          f"the server read the client's {len(payload)} bytes on {peer}, connection open")
    client.close()
    wait_until(lambda: got_eof(server, peer), 10, "EOF at the server", interval=0.1)
    check(True, "the client's close reached the server as EOF")
    rec = wait_until(lambda: session_closed(lifeline, client.port), 10,
                     "lifeline's session closed line", interval=0.1)
    check(rec.get("reason") == "client_eof"
          and rec.get("bytes_from_client") == sent_before + len(payload),
          f"lifeline logged the session closed: reason {rec.get('reason')}, "
          f"{rec.get('bytes_from_client')} bytes from the client")
    return peer


def main():
    started = time.monotonic()
    why = netns_ready()
    if why is not None:
        print(f"test-container kube: skipped: {why}", flush=True)
        return SKIP

    docs = [d for d in load_yaml(MANIFEST) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    spec = deployment["spec"]["template"]["spec"]
    pod = f"{deployment['metadata']['name']}-pod-0"  # podman's name for replica 0
    ll_spec = next(c for c in spec["containers"] if c["name"] == "lifeline")
    srv_spec = next(c for c in spec["containers"] if c["name"] != "lifeline")
    lifeline, server = f"{pod}-lifeline", f"{pod}-{srv_spec['name']}"
    volume = configmap["metadata"]["name"]  # podman's volume for the ConfigMap
    grace = int(spec["terminationGracePeriodSeconds"])
    config = json.loads(configmap["data"]["lifeline.json"])
    drain_s = config["shutdown"]["drain_timeout_ms"] / 1000
    check(drain_s < grace, f"the drain ({drain_s:.0f} s) fits in "
          f"terminationGracePeriodSeconds ({grace} s)")

    # Refuse to touch what this test did not make.
    for kind, name in (("pod", pod), ("volume", volume), ("network", NETWORK)):
        if podman(kind, "exists", name, check=False, quiet=True).returncode == 0:
            raise SystemExit(f"a {kind} {name} exists already, not this test's: remove it "
                             f"(podman kube down {MANIFEST}; podman {kind} rm {name})")

    tmp = tempfile.mkdtemp(prefix="lifeline-kube-")
    clients = []
    try:
        tag_lifeline_image(ll_spec["image"])
        build_legacy_server(f"localhost/{srv_spec['image']}", tmp)
        use_engine_conf(tmp)
        with NetNS("lifeline-test-kube") as ns:
            try:
                ns.podman("network", "create", "--disable-dns", NETWORK,
                          stdout=subprocess.DEVNULL)
                played = time.monotonic()
                ns.podman("kube", "play", "--network", NETWORK, MANIFEST,
                          stdout=subprocess.DEVNULL)
                try:
                    run_pod(ns, pod, lifeline, server, volume, ll_spec, grace, played, clients)
                except AssertionError:
                    for name in (lifeline, server):
                        log(f"{name}'s log:\n" + container_logs(name)[-3000:])
                    raise
            finally:
                for c in clients:
                    c.kill()
                if podman("pod", "exists", pod, check=False, quiet=True).returncode == 0:
                    ns.podman("pod", "rm", "-f", "-t", "0", pod, check=False,
                              stdout=subprocess.DEVNULL)
                ns.podman("volume", "rm", "-f", volume, check=False, quiet=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                ns.podman("network", "rm", "-f", NETWORK, check=False, quiet=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"passed in {time.monotonic() - started:.0f} s")
    return 0


def run_pod(ns, pod, lifeline, server, volume, ll_spec, grace, played, clients):
    wait_until(lambda: any(r["msg"] == "ready" for r in lifeline_msgs(lifeline)), 30,
               "lifeline ready in the Pod", interval=0.2)
    wait_until(lambda: any(e["event"] == "listening" for e in server_events(server)), 30,
               "the legacy server listening", interval=0.2)
    ports = podman_out("port", lifeline, check=False)
    if ports:
        log(f"podman published the containerPort without a hostPort: {ports} "
            "(of this test's network namespace; a kubelet publishes nothing)")

    # The probes, as a kubelet would run them.
    startup = ll_spec["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    wait_until(lambda: exec_rc(lifeline, startup["exec"]["command"]).returncode == 0,
               budget, "the startupProbe", interval=startup["periodSeconds"])
    check(True, f"startupProbe passed {time.monotonic() - played:.1f} s after kube play "
          f"(allowed {budget} s)")
    ready = ll_spec["readinessProbe"]["exec"]["command"]
    check(exec_rc(lifeline, ready).returncode == 0, "readinessProbe passes")
    live = ll_spec["livenessProbe"]
    hc = json.loads(podman_out("inspect", lifeline, "--format", "{{json .Config.Healthcheck}}"))
    test = hc.get("Test") or []
    check(test[1:1 + len(live["exec"]["command"])] == live["exec"]["command"]
          and hc["Interval"] == live["periodSeconds"] * 10**9
          and hc["Timeout"] == live["timeoutSeconds"] * 10**9
          and hc["Retries"] == live["failureThreshold"],
          f"podman made the livenessProbe the container's healthcheck ({' '.join(test)}, "
          f"every {live['periodSeconds']} s)")
    wait_until(lambda: podman("healthcheck", "run", lifeline, check=False, quiet=True,
                              capture_output=True).returncode == 0,
               30, "the livenessProbe's healthcheck", interval=0.5)
    status = podman_out("inspect", lifeline, "--format", "{{.State.Health.Status}}")
    check(status == "healthy", f"podman healthcheck run: lifeline {status}")

    # What lifeline runs as.
    uid = exec_rc(lifeline, ["id", "-u"]).stdout.strip()
    check(uid == "10001", f"lifeline runs as uid {uid}")
    info = json.loads(podman_out("inspect", lifeline))[0]
    check(info["HostConfig"]["ReadonlyRootfs"] is True and not info["EffectiveCaps"]
          and "no-new-privileges" in (info["HostConfig"]["SecurityOpt"] or []),
          "read-only root, no capabilities, no-new-privileges")
    w = exec_rc(lifeline, ["sh", "-c", ": > /probe-write"])
    check(w.returncode != 0 and "Read-only file system" in w.stderr,
          "a write to lifeline's root fails: Read-only file system")
    srv_uid = exec_rc(server, ["id", "-u"]).stdout.strip()
    check(srv_uid == "0", f"the legacy server runs as its image's user (uid {srv_uid}), "
          "not lifeline's")

    # A client in the Pod's network namespace, through lifeline on port 5000.
    c = Client(server)
    clients.append(c)
    relay_and_close(server, lifeline, c,
                    b"hello through the sidecar " + os.urandom(8).hex().encode())

    # Stopping the Pod with the manifest's grace period drains.
    infra = podman_out("pod", "inspect", pod, "--format", "{{.InfraContainerID}}")
    netns = podman_out("inspect", infra, "--format", "{{.NetworkSettings.SandboxKey}}")
    check(http_status(netns, ready[-1]) == 200, f"{ready[-1]} answers 200 from the Pod's "
          f"network namespace ({netns})")
    c = Client(server)
    clients.append(c)
    first = b"before the stop " + os.urandom(8).hex().encode()
    c.send(first)
    peer = wait_until(lambda: received(server, first), 10, "the server to read", interval=0.1)
    stop = ns.popen("podman", "--runtime", "runc", "pod", "stop", "-t", str(grace), pod,
                    stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: any(r["msg"] == "shutting down" for r in lifeline_msgs(lifeline)),
                   10, "lifeline shutting down", interval=0.1)
        check(True, f"podman pod stop -t {grace}: lifeline got SIGTERM and is draining")
        # podman cannot exec into a container it is stopping: /readyz is asked
        # from the Pod's network namespace instead.
        url = ready[-1]
        code = http_status(netns, url)
        check(code == 503, f"{url} answers {code} while lifeline drains: the readinessProbe fails")
        wait_until(lambda: any(e["event"] == "sigterm" for e in server_events(server)), 10,
                   "SIGTERM at the legacy server", interval=0.1)
        check(True, "the legacy server got SIGTERM too, and keeps its open connection")
        later = relay_and_close(server, lifeline, c,
                                b"during the drain " + os.urandom(8).hex().encode(),
                                sent_before=len(first))
        check(later == peer, "the bytes sent before the stop and during the drain went on "
              "one server connection")
        stop.wait(timeout=grace + 15)
    finally:
        if stop.poll() is None:
            stop.kill()
    check(stop.returncode == 0, "podman pod stop returned 0")
    msgs = [r["msg"] for r in lifeline_msgs(lifeline)]
    code = exit_code(lifeline)
    check("shutting down" in msgs and msgs[-1] == "stopped" and code == "0",
          f"lifeline logged shutting down, then stopped, and exited {code}")
    check(exit_code(server) == "0", "the legacy server exited 0 once its connection had ended")

    ns.podman("kube", "down", MANIFEST, stdout=subprocess.DEVNULL)
    check(podman("pod", "exists", pod, check=False, quiet=True).returncode != 0
          and not podman_out("ps", "-a", "--filter", f"pod={pod}", "--format", "{{.Names}}",
                             check=False),
          f"podman kube down removed the Pod {pod} and its containers")
    if podman("volume", "exists", volume, check=False, quiet=True).returncode == 0:
        log(f"podman kube down left the ConfigMap's volume {volume} (podman 4.3): removing it")
        ns.podman("volume", "rm", volume, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    set_prefix("test-container kube")
    main_wrapper(main)
