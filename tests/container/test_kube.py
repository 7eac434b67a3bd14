#!/usr/bin/env python3
"""docker/k8s/sidecar.yaml, run for real with `podman kube play`
(`make test-container`), in two cases: as shipped ("default") and with its
transparent option turned on ("transparent"). `test_kube.py transparent` runs
one case.

The images the manifest names: lifeline:latest (docker/Dockerfile, tagged) and
legacy-server:latest, a stand-in built here (a python3 server on port 6000
that never writes and prints, as JSON lines, what it reads and each EOF; it
listens on 127.0.0.1, or for the transparent case on the Pod's address, as
the manifest asks of the real server).

Case "default": the shipped manifest, unmodified. It checks what the manifest
promises:
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

Case "transparent": the manifest as an operator turns the option on, made in a
temporary file by the sed command in the manifest's header (the shipped file
stays unchanged), which must give what the header's rule gives (every marked
block swapped), a valid YAML both ways, without duplicate keys. It checks:
- lifeline's container starts as root (see the last podman difference below);
- the initContainer (the routing script from the lifeline image, as root with
  only NET_ADMIN, its MARK lifeline's upstream.mark) ran once, exited 0 and
  left the policy rule, the local route and the nftables table in the Pod's
  network namespace;
- in the Pod the hostname resolves to the Pod's IP (lifeline's configuration
  names the server ${HOSTNAME}:6000, and the stand-in listens there);
- lifeline logged "dropped privileges" with uid 10001 and CAP_NET_ADMIN, and
  its process runs as uid and gid 10001 with CAP_NET_ADMIN as its only
  capability (effective and permitted), none inheritable or ambient, and
  no_new_privs;
- a client outside the Pod (in the test's network namespace, on the host side
  of the Pod's bridge, from fixed port 40001) connects to the Pod's IP:5000;
  the server's accept() sees the client's own IP, not the Pod's, from a port
  that is not 40001; the bytes arrive, the client's close is the server's EOF
  and lifeline logs the session with the client's address;
- the Pod stops with lifeline's exit 0, and kube down leaves nothing.

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
- kube down leaves the ConfigMap's volume: the test removes it;
- initContainers get the Pod's restartPolicy (a Deployment's is Always): podman
  restarts the routing script after each exit 0 for 20 s, then kube play goes
  on or fails (podman issues 15631 and 16343, fixed in 2023 by pull request
  18481); and it removes an init container once it has run. The transparent
  case plays a copy with restartPolicy OnFailure and the annotation
  io.podman.annotations.init.container.type: always (podman_copy());
- podman sets HOSTNAME itself (a value in the manifest is overridden), and
  `podman exec` does not pass it on: the test reads it from the container's
  configuration;
- podman gives a non-root container the capabilities it adds as ambient ones,
  which Kubernetes (containerd, CRI-O) does not: lifeline's container as uid
  10001 with NET_ADMIN would pass here and exit 1 ("missing capability") on a
  kubelet. The test checks that the manifest starts it as root, as a kubelet
  needs, and cannot show the kubelet's side.
Exit 0 on success, 77 with a message when no container engine or network
namespace can be set up here, 1 on a failure.
"""

import json
import os
import re
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
CASES = ("default", "transparent")
CLIENT_PORT = 40001  # the outside client's fixed source port (transparent case)
CAP_NET_ADMIN, CAP_SETUID, CAP_SETGID = 12, 7, 6

# The stand-in legacy server. On SIGTERM it stops accepting and exits once
# its open connections have ended: what the manifest asks of the real one
# (stay up while lifeline drains).
LEGACY_SERVER = r'''
import json, signal, socket, sys, threading, time

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
    out(event="accepted", peer=peer, local="%s:%d" % conn.getsockname())
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
host = sys.argv[1]
if host == "pod":  # the Pod's address: the hostname's, from /etc/hosts
    host = socket.gethostbyname(socket.gethostname())
srv = socket.create_server((host, 6000))
out(event="listening", address="%s:6000" % host)
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

# A client of HOST:PORT, from source port BIND_PORT if given (a legacy
# client's fixed port): prints its own address, sends each line of hex read
# from stdin, closes when stdin ends. Run in the server's container (it has
# python3), so in the Pod's network namespace, or outside the Pod.
CLIENT = r'''
import socket, sys
s = socket.socket()
if len(sys.argv) > 3:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(10)
s.connect((sys.argv[1], int(sys.argv[2])))
print("%s:%d" % s.getsockname(), flush=True)
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


def build_legacy_server(tag, tmp, listen):
    """FROM debian:bookworm-slim + python3 (the same RUN line as
    ensure_stand_in(), so the layer is shared) + the server above, listening
    on LISTEN:6000 ("pod": the Pod's address). Built again for each case:
    only the last layer differs."""
    d = os.path.join(tmp, "legacy-server")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "legacy_server.py"), "w") as f:
        f.write(LEGACY_SERVER)
    with open(os.path.join(d, "Containerfile"), "w") as f:
        f.write(f"FROM {BASE}\n"
                "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y"
                " --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*\n"
                "COPY legacy_server.py /legacy_server.py\n"
                f'CMD ["python3", "-u", "/legacy_server.py", "{listen}"]\n')
    build(os.path.join(d, "Containerfile"), tag, context=d)


def server_events(name):
    return [e for e in json_lines(container_logs(name)) if "event" in e]


def lifeline_msgs(name):
    return [r for r in json_lines(container_logs(name)) if "msg" in r]


def exec_rc(name, cmd):
    return podman("exec", name, *cmd, check=False, quiet=True, capture_output=True)


class Client:
    """CLIENT, run by ARGV, driven through its stdin."""

    def __init__(self, argv, where):
        log(f"client {where}")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.addr = self.readline()
        self.host, _, port = self.addr.rpartition(":")
        self.port = int(port or 0)
        check(self.port > 0, f"the client connected to lifeline from {self.addr}")

    @classmethod
    def in_pod(cls, name):
        """In container NAME, so in the Pod's network namespace."""
        return cls(["podman", "exec", "-i", name, "python3", "-u", "-c", CLIENT,
                    "127.0.0.1", "5000"], f"in {name} -> 127.0.0.1:5000")

    @classmethod
    def outside(cls, ns, host, port, bind_port):
        """In the test's network namespace NS, from BIND_PORT."""
        return cls(["nsenter", f"--net={ns.path}", sys.executable, "-u", "-c", CLIENT,
                    host, str(port), str(bind_port)],
                   f"outside the Pod, from port {bind_port} -> {host}:{port}")

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


def session_closed(lifeline, client_addr):
    for r in lifeline_msgs(lifeline):
        if r["msg"] == "session closed" and r.get("client") == client_addr:
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
    rec = wait_until(lambda: session_closed(lifeline, client.addr), 10,
                     "lifeline's session closed line", interval=0.1)
    check(rec.get("reason") == "client_eof"
          and rec.get("bytes_from_client") == sent_before + len(payload),
          f"lifeline logged the session closed: reason {rec.get('reason')}, "
          f"{rec.get('bytes_from_client')} bytes from the client")
    return peer


# --------------------------------------------------------------------------
# The transparent option: the manifest as the operator is told to turn it on.

MARKER = re.compile(r"^( *)# (>>>|<<<) (default|transparent)$")


def swap_blocks(text, on="transparent"):
    """The header's rule, turning ON on: every line between "# >>> ON" and
    "# <<< ON" uncommented (the "# " after its indentation removed), every line
    of the other kind's blocks commented out ("# " after its indentation); the
    markers stay. Returns the new text and the number of blocks of each kind;
    a marker out of place, or a line to uncomment that is not a comment, is an
    AssertionError."""
    out, block, counts = [], None, {"default": 0, "transparent": 0}
    for n, line in enumerate(text.splitlines(keepends=True), 1):
        m = MARKER.match(line.rstrip("\n"))
        if m:
            _, edge, kind = m.groups()
            if edge == ">>>":
                check_marker(block is None, n, f"a {kind} block opens inside a {block} block")
                block = kind
                counts[kind] += 1
            else:
                check_marker(block == kind, n, f"a {kind} block closes, {block} is open")
                block = None
            out.append(line)
            continue
        indent = len(line) - len(line.lstrip(" "))
        if block == on:
            check_marker(line[indent:].startswith("# "), n,
                         f"a line of a {block} block that is not commented with '# '")
            line = line[:indent] + line[indent + 2:]
        elif block is not None:
            check_marker(line.strip() != "", n, f"an empty line in a {block} block")
            line = line[:indent] + "# " + line[indent:]
        out.append(line)
    check_marker(block is None, n, f"the {block} block is not closed")
    return "".join(out), counts


def check_marker(cond, lineno, what):
    if not cond:
        raise AssertionError(f"{MANIFEST}:{lineno}: {what}")


def header_sed_command(text):
    """The sed command the manifest's header gives the operator: the comment
    lines from "#   sed " to the one that ends with its output file."""
    lines, taking = [], False
    for line in text.splitlines():
        if line.startswith("#   sed "):
            taking = True
        if taking:
            lines.append(line[len("#   "):])
            if not line.endswith("\\"):
                break
    if not lines:
        raise AssertionError(f"{MANIFEST}: no sed command in the header")
    return "\n".join(lines)


def strict_yaml(path):
    """The documents of PATH, refusing a mapping with a duplicate key (which
    PyYAML otherwise takes silently, the last one winning)."""
    import yaml

    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader, node):
        loader.flatten_mapping(node)
        seen = set()
        for k, _ in node.value:
            key = loader.construct_object(k, deep=True)
            if key in seen:
                raise AssertionError(f"{path}: duplicate key {key!r} at {k.start_mark}")
            seen.add(key)
        return dict(loader.construct_pairs(node, deep=True))

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    with open(path) as f:
        return [d for d in yaml.load_all(f, Loader=Strict) if d]


def transparent_manifest(shipped, tmp):
    """Writes the transparent variant of the shipped manifest in TMP, with the
    header's sed command run on a copy (so its relative paths hold), and
    returns its path."""
    swapped, counts = swap_blocks(shipped)
    check(counts["default"] >= 1 and counts["transparent"] >= 1,
          f"the manifest marks {counts['default']} default and {counts['transparent']} "
          "transparent blocks")
    cmd = header_sed_command(shipped)
    work = os.path.join(tmp, "operator")
    os.makedirs(os.path.join(work, "docker", "k8s"))
    with open(os.path.join(work, "docker", "k8s", "sidecar.yaml"), "w") as f:
        f.write(shipped)
    run("sh", "-c", cmd, cwd=work, quiet=True)
    out = re.search(r">\s*(\S+)\s*$", cmd).group(1)
    path = os.path.join(work, out)
    with open(path) as f:
        check(f.read() == swapped, "the header's sed command swaps every marked block "
              f"({os.path.relpath(path, tmp)})")
    # Valid both ways, each without a duplicate key; and swapped back, the
    # same documents as shipped.
    shipped_docs = strict_yaml(MANIFEST)
    strict_yaml(path)
    back = os.path.join(work, "sidecar-default.yaml")
    with open(back, "w") as f:
        f.write(swap_blocks(swapped, on="default")[0])
    check(strict_yaml(back) == shipped_docs,
          "the manifest is valid YAML both ways, without duplicate keys; swapped back, it "
          "gives the shipped documents")
    return path


def podman_copy(path, out):
    """PATH for podman 4.3's kube play, written to OUT, with two changes a
    kubelet does not need: the Pod's restartPolicy OnFailure, since podman
    4.3 applies the Pod's (Always, a Deployment's only one) to init
    containers too and restarts the routing script after its exit 0 until a
    20 s timeout, after which kube play goes on or fails with "failed to
    remove once init container" (podman issues 15631 and 16343, fixed in 2023
    by pull request 18481); and the initContainer kept once it has run
    (annotation io.podman.annotations.init.container.type: always, podman's
    default being to remove it), so that the test can inspect it. podman 4.3
    reads that annotation on the Deployment, not on its Pod template."""
    import yaml
    docs = strict_yaml(path)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    deployment["metadata"].setdefault("annotations", {})[
        "io.podman.annotations.init.container.type"] = "always"
    with open(out, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
    return out


class Manifest:
    """What the tests need from a manifest's documents."""

    def __init__(self, path):
        self.path = path
        docs = strict_yaml(path)
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        self.configmap = next(d for d in docs if d["kind"] == "ConfigMap")
        self.spec = deployment["spec"]["template"]["spec"]
        self.pod = f"{deployment['metadata']['name']}-pod-0"  # podman's name for replica 0
        self.ll_spec = next(c for c in self.spec["containers"] if c["name"] == "lifeline")
        self.srv_spec = next(c for c in self.spec["containers"] if c["name"] != "lifeline")
        self.inits = self.spec.get("initContainers") or []
        self.lifeline = f"{self.pod}-lifeline"
        self.server = f"{self.pod}-{self.srv_spec['name']}"
        self.volume = self.configmap["metadata"]["name"]  # podman's volume for the ConfigMap
        self.grace = int(self.spec["terminationGracePeriodSeconds"])
        env = {e["name"]: e.get("value") for e in self.ll_spec.get("env") or []}
        key = os.path.basename(env.get("LIFELINE_CONFIG", "/etc/lifeline/lifeline.json"))
        self.config = json.loads(self.configmap["data"][key])
        self.config_key = key


def main():
    started = time.monotonic()
    why = netns_ready()
    if why is not None:
        print(f"test-container kube: skipped: {why}", flush=True)
        return SKIP
    cases = sys.argv[1:] or list(CASES)
    if any(c not in CASES for c in cases):
        raise SystemExit(f"usage: test_kube.py [{'|'.join(CASES)}]...")

    with open(MANIFEST) as f:
        shipped = f.read()
    tmp = tempfile.mkdtemp(prefix="lifeline-kube-")
    clients = []
    try:
        default = Manifest(MANIFEST)
        variant = transparent_manifest(shipped, tmp)
        transparent = Manifest(podman_copy(variant, os.path.join(tmp, "sidecar-podman.yaml")))
        for m in (default, transparent):
            drain_s = m.config["shutdown"]["drain_timeout_ms"] / 1000
            check(drain_s < m.grace, f"{m.config_key}: the drain ({drain_s:.0f} s) fits in "
                  f"terminationGracePeriodSeconds ({m.grace} s)")

        # Refuse to touch what this test did not make.
        for kind, name in (("pod", default.pod), ("volume", default.volume),
                           ("network", NETWORK)):
            if podman(kind, "exists", name, check=False, quiet=True).returncode == 0:
                raise SystemExit(f"a {kind} {name} exists already, not this test's: remove it "
                                 f"(podman kube down {MANIFEST}; podman {kind} rm {name})")

        tag_lifeline_image(default.ll_spec["image"])
        use_engine_conf(tmp)
        srv_tag = f"localhost/{default.srv_spec['image']}"
        if "default" in cases:
            t0 = time.monotonic()
            log("case default: the shipped manifest")
            build_legacy_server(srv_tag, tmp, "127.0.0.1")
            play(default, clients, run_pod)
            log(f"case default passed in {time.monotonic() - t0:.0f} s")
        if "transparent" in cases:
            t0 = time.monotonic()
            log(f"case transparent: {os.path.relpath(variant, tmp)} (played as "
                f"{os.path.relpath(transparent.path, tmp)}), the server on the Pod's address")
            build_legacy_server(srv_tag, tmp, "pod")
            play(transparent, clients, run_transparent_pod)
            log(f"case transparent passed in {time.monotonic() - t0:.0f} s")
        with open(MANIFEST) as f:
            check(f.read() == shipped, f"{os.path.relpath(MANIFEST, REPO)} is unchanged")
    finally:
        for c in clients:
            c.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"passed in {time.monotonic() - started:.0f} s")
    return 0


def play(m, clients, body):
    """kube play M in a network namespace of its own, run BODY, and remove
    whatever is left."""
    with NetNS("lifeline-test-kube") as ns:
        try:
            ns.podman("network", "create", "--disable-dns", NETWORK, stdout=subprocess.DEVNULL)
            played = time.monotonic()
            m.since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
            ns.podman("kube", "play", "--network", NETWORK, m.path, stdout=subprocess.DEVNULL)
            try:
                body(ns, m, played, clients)
            except AssertionError:
                for c in m.inits:
                    name = f"{m.pod}-{c['name']}"
                    log(f"{name}'s log:\n" + container_logs(name)[-3000:])
                for name in (m.lifeline, m.server):
                    log(f"{name}'s log:\n" + container_logs(name)[-3000:])
                raise
        finally:
            for c in clients:
                c.kill()
            if podman("pod", "exists", m.pod, check=False, quiet=True).returncode == 0:
                ns.podman("pod", "rm", "-f", "-t", "0", m.pod, check=False,
                          stdout=subprocess.DEVNULL)
            ns.podman("volume", "rm", "-f", m.volume, check=False, quiet=True,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ns.podman("network", "rm", "-f", NETWORK, check=False, quiet=True,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kube_down(ns, m):
    ns.podman("kube", "down", m.path, stdout=subprocess.DEVNULL)
    check(podman("pod", "exists", m.pod, check=False, quiet=True).returncode != 0
          and not podman_out("ps", "-a", "--filter", f"pod={m.pod}", "--format", "{{.Names}}",
                             check=False),
          f"podman kube down removed the Pod {m.pod} and its containers")
    if podman("volume", "exists", m.volume, check=False, quiet=True).returncode == 0:
        log(f"podman kube down left the ConfigMap's volume {m.volume} (podman 4.3): removing it")
        ns.podman("volume", "rm", m.volume, stdout=subprocess.DEVNULL)


def run_pod(ns, m, played, clients):
    pod, lifeline, server, ll_spec, grace = m.pod, m.lifeline, m.server, m.ll_spec, m.grace
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
    c = Client.in_pod(server)
    clients.append(c)
    relay_and_close(server, lifeline, c,
                    b"hello through the sidecar " + os.urandom(8).hex().encode())

    # Stopping the Pod with the manifest's grace period drains.
    infra = podman_out("pod", "inspect", pod, "--format", "{{.InfraContainerID}}")
    netns = podman_out("inspect", infra, "--format", "{{.NetworkSettings.SandboxKey}}")
    check(http_status(netns, ready[-1]) == 200, f"{ready[-1]} answers 200 from the Pod's "
          f"network namespace ({netns})")
    c = Client.in_pod(server)
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

    kube_down(ns, m)



def proc_status(name):
    """/proc/1/status of container NAME (its main process), as a dict."""
    r = exec_rc(name, ["cat", "/proc/1/status"])
    check(r.returncode == 0, f"podman exec {name} cat /proc/1/status")
    return dict(line.split(":\t", 1) for line in r.stdout.splitlines() if ":\t" in line)


def caps_of(mask):
    return int(mask, 16)


def wait_ready(name, timeout=30):
    """lifeline's "ready" line; an error line or an exit first is a failure
    (podman restarts it on failure, so the exit code cannot be read)."""
    def ready():
        msgs = lifeline_msgs(name)
        if any(r["msg"] == "ready" for r in msgs):
            return True
        errors = [r for r in msgs if r.get("level") == "error"]
        if errors:
            raise AssertionError(f"{name} logged an error before it was ready: {errors}")
        state = podman_out("inspect", name, "--format", "{{.State.Status}}", check=False)
        if state in ("exited", "stopped"):
            raise AssertionError(f"{name} {state} before it was ready")
        return False
    wait_until(ready, timeout, f"{name} ready", interval=0.2)


def in_netns(netns, *cmd):
    r = run("nsenter", f"--net={netns}", *cmd, capture_output=True, quiet=True, check=False)
    return r.stdout.strip()


def run_transparent_pod(ns, m, played, clients):
    lifeline, server = m.lifeline, m.server
    upstream = m.config["routes"][0]["upstream"]
    mark = upstream["mark"]
    check(upstream.get("source_address") == "client" and m.config.get("user") == "lifeline",
          f"lifeline reads {m.config_key}: source_address \"client\", mark {mark}, "
          f"user {m.config.get('user')}, servers {upstream['servers']}")
    sc = m.ll_spec["securityContext"]
    check(sc.get("runAsUser") == 0 and "NET_ADMIN" in sc["capabilities"]["add"],
          "lifeline's container starts as root (runAsUser 0) with NET_ADMIN: as uid 10001 it "
          "would pass here, on podman's ambient capabilities, and fail on a kubelet")
    wait_ready(lifeline)
    check(True, f"lifeline ready {time.monotonic() - played:.1f} s after kube play")
    wait_until(lambda: any(e["event"] == "listening" for e in server_events(server)), 30,
               "the legacy server listening", interval=0.2)

    infra = podman_out("pod", "inspect", m.pod, "--format", "{{.InfraContainerID}}")
    netns = podman_out("inspect", infra, "--format", "{{.NetworkSettings.SandboxKey}}")
    nets = json.loads(podman_out("inspect", infra, "--format",
                                 "{{json .NetworkSettings.Networks}}"))
    pod_ip = nets[NETWORK]["IPAddress"]
    check(bool(pod_ip), f"the Pod's IP on {NETWORK}: {pod_ip}")

    # The initContainer: the routing script, as root with NET_ADMIN only.
    check(len(m.inits) == 1, f"one initContainer: {[c['name'] for c in m.inits]}")
    init = f"{m.pod}-{m.inits[0]['name']}"
    info = json.loads(podman_out("inspect", init))[0]
    starts = podman_out("events", "--stream=false", "--since", m.since, "--filter",
                        f"container={init}", "--filter", "event=start", "--format", "{{.ID}}")
    check(info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 0
          and len(starts.split()) == 1,
          f"the initContainer {init} ran once and exited {info['State']['ExitCode']}: "
          f"{info['Config']['Entrypoint']}")
    check(info["Config"]["User"].split(":")[0] == "0"
          and sorted(info["EffectiveCaps"] or []) == ["CAP_NET_ADMIN"]
          and info["HostConfig"]["ReadonlyRootfs"] is True,
          f"as uid 0 with {info['EffectiveCaps']} only, read-only root")
    script_mark = int(m.inits[0]["command"][-1], 0)
    check(script_mark == mark, f"the routing script's MARK ({script_mark}) is lifeline's "
          f"upstream.mark ({mark})")
    rule = in_netns(netns, "ip", "-4", "rule", "show", "priority", "19532")
    route = in_netns(netns, "ip", "-4", "route", "show", "table", "19532")
    table = in_netns(netns, "nft", "list", "table", "inet", "lifeline_transparent")
    check(f"fwmark {mark:#x} lookup 19532" in rule and "local default dev lo" in route
          and f"meta mark {mark:#010x} ct mark set meta mark" in table
          and f"ct mark {mark:#010x} meta mark set ct mark" in table,
          f"it installed the rules in the Pod's network namespace: '{rule}', '{route}', "
          "nftables table inet lifeline_transparent with the mark and ct mark rules")

    # ${HOSTNAME} in lifeline's configuration is the Pod's IP. (podman exec
    # does not pass HOSTNAME on: it is read from the container's environment.)
    info = json.loads(podman_out("inspect", lifeline))[0]
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    hostname = env.get("HOSTNAME", "")
    words = exec_rc(lifeline, ["getent", "hosts", hostname]).stdout.split() if hostname else []
    resolved = words[0] if words else ""
    check(hostname and resolved == pod_ip,
          f"lifeline's environment has HOSTNAME={hostname}, which resolves to the Pod's IP "
          f"{resolved} in its container (/etc/hosts)")
    listening = next(e for e in server_events(server) if e["event"] == "listening")
    check(listening["address"] == f"{pod_ip}:6000",
          f"the legacy server listens on the Pod's address {listening['address']}")

    # What lifeline runs as, and with.
    drop = next((r for r in lifeline_msgs(lifeline) if r["msg"] == "dropped privileges"), None)
    fields = {k: (drop or {}).get(k) for k in ("uid", "gid", "capabilities")}
    check(fields == {"uid": 10001, "gid": 10001, "capabilities": "CAP_NET_ADMIN"},
          f"lifeline logged dropped privileges: {fields}")
    st = proc_status(lifeline)
    uids, gids = st["Uid"].split(), st["Gid"].split()
    check(uids == ["10001"] * 4 and gids == ["10001"] * 4 and st["Groups"].split() == ["10001"],
          f"lifeline's process runs as uid {'/'.join(uids)}, gid {'/'.join(gids)}, "
          f"groups {st['Groups'].strip()}")
    net_admin = 1 << CAP_NET_ADMIN
    # Inheritable and ambient hold it too, so that a live upgrade's exec of
    # the same binary (same user, no file capabilities) starts with it.
    check(caps_of(st["CapEff"]) == net_admin and caps_of(st["CapPrm"]) == net_admin
          and caps_of(st["CapInh"]) == net_admin and caps_of(st["CapAmb"]) == net_admin
          and st["NoNewPrivs"].strip() == "1",
          f"its capabilities: effective {st['CapEff']}, permitted {st['CapPrm']}, "
          f"inheritable {st['CapInh']}, ambient {st['CapAmb']} (CAP_NET_ADMIN only); "
          "no_new_privs")
    bounding = (1 << CAP_NET_ADMIN) | (1 << CAP_SETUID) | (1 << CAP_SETGID)
    check(caps_of(st["CapBnd"]) == bounding and info["HostConfig"]["ReadonlyRootfs"] is True,
          f"the container gave it NET_ADMIN, SETUID and SETGID (bounding {st['CapBnd']}, "
          f"{info['EffectiveCaps']}), read-only root")
    check(exec_rc(lifeline, m.ll_spec["livenessProbe"]["exec"]["command"]).returncode == 0,
          "the livenessProbe's command passes")

    # A client outside the Pod, on the host side of its bridge.
    c = Client.outside(ns, pod_ip, 5000, CLIENT_PORT)
    clients.append(c)
    check(c.host not in (pod_ip, "127.0.0.1") and c.port == CLIENT_PORT,
          f"the client is outside the Pod: {c.addr}")
    peer = relay_and_close(server, lifeline, c,
                           b"hello from outside the Pod " + os.urandom(8).hex().encode())
    acc = next(e for e in server_events(server) if e["event"] == "accepted" and e["peer"] == peer)
    ip, port = peer.rsplit(":", 1)
    check(ip == c.host and ip != pod_ip,
          f"the server's accept() on {acc['local']} saw {ip}: the client's own IP "
          f"{c.host}, not the Pod's {pod_ip}")
    check(int(port) != CLIENT_PORT,
          f"from port {port}, an ephemeral one, not the client's {CLIENT_PORT}")

    stop = ns.podman("pod", "stop", "-t", str(m.grace), m.pod, stdout=subprocess.DEVNULL)
    msgs = [r["msg"] for r in lifeline_msgs(lifeline)]
    code = exit_code(lifeline)
    check(stop.returncode == 0 and msgs[-1:] == ["stopped"] and code == "0",
          f"podman pod stop: lifeline logged stopped and exited {code}")
    kube_down(ns, m)

if __name__ == "__main__":
    set_prefix("test-container kube")
    main_wrapper(main)
