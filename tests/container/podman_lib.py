"""What the container tests (`make test-container`) share: podman set up for
this kind of machine, and the images they build.

Every adaptation to the machine lives here, never in the shipped files (a
machine with Docker and a registry needs none of it):
- podman with the runc runtime (crun refuses a hybrid cgroup layout);
- base images pulled when a registry answers, else made locally: the
  debian:bookworm-slim base with mmdebstrap (about 40 s, once per machine),
  and stand-ins built on it for the other public images the shipped files
  name (see ensure_stand_in());
- --ulimit at the host's hard limits (without CAP_SYS_RESOURCE the runtime
  cannot raise them);
- images built with --format docker (an OCI image drops HEALTHCHECK) and
  --network host (apt-get inside the build reaches the Debian mirror);
- for podman driven by another tool (podman kube play, podman-compose), the
  runtime and ulimits in a CONTAINERS_CONF file (use_engine_conf()), and podman
  run in a network namespace of the test's own (NetNS), where the ports those
  tools publish on 0.0.0.0 stay.

Images, built once per machine and reused (layer cache):
- IMAGE: docker/Dockerfile, built by test_image.py (its build stage runs the
  test suite); ensure_lifeline_image() builds it for the others if missing;
- SYSTEMD_IMAGE: tests/container/systemd.Containerfile, Debian 12 with
  systemd as PID 1 and lifeline's three runtime libraries.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from lifeline_testlib import REPO, wait_until  # noqa: E402,F401

BASE = "docker.io/library/debian:bookworm-slim"
IMAGE = "localhost/lifeline:test"
SYSTEMD_IMAGE = "localhost/lifeline-systemd:test"
SKIP = 77

_prefix = "test-container"


def set_prefix(name):
    global _prefix
    _prefix = name


def log(msg):
    print(f"[{_prefix}] {msg}", flush=True)


def run(*args, check=True, timeout=900, quiet=False, **kw):
    if not quiet:
        log("$ " + " ".join(args))
    return subprocess.run(args, check=check, timeout=timeout, text=True, **kw)


def podman(*args, **kw):
    return run("podman", "--runtime", "runc", *args, **kw)


def podman_out(*args, **kw):
    """podman's stdout, stripped; quiet unless asked."""
    kw.setdefault("quiet", True)
    return podman(*args, capture_output=True, **kw).stdout.strip()


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    log(f"ok: {what}")


def engine_ready():
    """Why no container can run here, or None."""
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (as root, `make test-container` installs it)"
    try:
        podman("info", stdout=subprocess.DEVNULL, timeout=60, quiet=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        return f"podman cannot run here: {e}"
    return None


def image_exists(ref):
    return podman("image", "exists", ref, check=False, quiet=True).returncode == 0


def try_pull(ref):
    return podman("pull", "-q", ref, check=False, timeout=120, stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL).returncode == 0


def ensure_base():
    """debian:bookworm-slim: present, pulled, or made with mmdebstrap."""
    if image_exists(BASE) or try_pull(BASE):
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


def build(containerfile, tag, context=REPO, extra=()):
    t0 = time.monotonic()
    podman("build", "--format", "docker", "--network", "host", *ulimits(), *extra,
           "-f", containerfile, "-t", tag, context)
    log(f"{tag} built in {time.monotonic() - t0:.0f} s")


def ensure_lifeline_image():
    """The image of docker/Dockerfile (test_image.py builds it first in a
    `make test-container` run; the layer cache makes this quick then)."""
    ensure_base()
    if not image_exists(IMAGE):
        build(os.path.join(REPO, "docker", "Dockerfile"), IMAGE)


def ensure_systemd_image():
    """Built every time: the layer cache makes that a few seconds when
    systemd.Containerfile has not changed, and a change takes effect."""
    ensure_base()
    build(os.path.join(HERE, "systemd.Containerfile"), SYSTEMD_IMAGE, context=HERE)


def ensure_stand_in(ref, packages):
    """A public image a shipped file names (python:3.11-slim-bookworm, say):
    pulled when a registry answers; else a stand-in, debian:bookworm-slim with
    PACKAGES installed, tagged with that name in the local store only."""
    if image_exists(ref) or try_pull(ref):
        return
    ensure_base()
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "Containerfile"), "w") as f:
            f.write(f"FROM {BASE}\n"
                    "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y"
                    f" --no-install-recommends {' '.join(packages)}"
                    " && rm -rf /var/lib/apt/lists/*\n")
        log(f"no registry: {ref} is a local stand-in (bookworm + {' '.join(packages)})")
        build(os.path.join(tmp, "Containerfile"), ref, context=tmp)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def echo_through(port, size=256 * 1024, host="127.0.0.1"):
    """Sends SIZE random bytes to HOST:PORT, half-closes, and returns
    (sent, received) once the peer's EOF arrives."""
    data = os.urandom(size)
    with socket.create_connection((host, port), timeout=10) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            got += chunk
    return data, got


def main_wrapper(main):
    """Runs MAIN: exit 0, 77 (skipped, with the reason) or 1 (failed)."""
    try:
        why = engine_ready()
        if why is not None:
            print(f"{_prefix}: skipped: {why}", file=sys.stderr)
            sys.exit(SKIP)
        sys.exit(main())
    except (AssertionError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(f"{_prefix}: FAILED: {e}", file=sys.stderr)
        sys.exit(1)


# --------------------------------------------------------------------------
# For the tests that let another tool drive podman (test_kube.py: podman kube
# play; test_compose.py: podman-compose): neither passes --runtime or --ulimit
# through, and both publish ports on 0.0.0.0 of the network namespace podman
# runs in.


def use_engine_conf(directory):
    """Points every podman this process starts, also those podman-compose
    starts, at a containers.conf written in DIRECTORY: the runc runtime, and
    default ulimits at the host's hard limits, what podman() and ulimits()
    pass on the command line."""
    path = os.path.join(directory, "containers.conf")
    limits = ", ".join(f'"{v}"' for v in ulimits()[1::2])
    with open(path, "w") as f:
        f.write(f'[containers]\ndefault_ulimits = [{limits}]\n\n[engine]\nruntime = "runc"\n')
    os.environ["CONTAINERS_CONF"] = path
    return path


def netns_ready():
    """Why this process cannot make a network namespace of its own, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


class NetNS:
    """A network namespace of the test's own, loopback only, in which podman
    runs (`with NetNS("lifeline-test-x") as ns: ns.podman(...)`): the bridges,
    the published ports (0.0.0.0 of this namespace), the iptables rules and
    aardvark-dns that podman sets up are in it, and go with it.

    nsenter, not `ip netns exec`: the latter also remounts /sys, which hides
    /sys/fs/cgroup from podman. Run every podman command that can set up or
    tear down a container's network (run, start, stop, rm, kube play/down, pod
    stop/rm, podman-compose) through it; logs, exec and inspect need not."""

    def __init__(self, name):
        self.name = f"{name}-{os.getpid()}"
        self.path = f"/run/netns/{self.name}"

    def __enter__(self):
        run("ip", "netns", "add", self.name)
        run("ip", "-n", self.name, "link", "set", "lo", "up", quiet=True)
        return self

    def __exit__(self, *exc):
        run("ip", "netns", "del", self.name, check=False)

    def run(self, *args, **kw):
        return run("nsenter", f"--net={self.path}", *args, **kw)

    def popen(self, *args, **kw):
        log(f"$ nsenter --net={self.path} " + " ".join(args) + " &")
        return subprocess.Popen(["nsenter", f"--net={self.path}", *args], text=True, **kw)

    def podman(self, *args, **kw):
        return self.run("podman", "--runtime", "runc", *args, **kw)


def load_yaml(path):
    """The documents of a YAML file: with PyYAML, or through the system python,
    which has it wherever podman-compose is installed."""
    try:
        import yaml
    except ImportError:
        out = run("/usr/bin/python3", "-c",
                  "import json, sys, yaml; "
                  "print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
                  path, capture_output=True, quiet=True).stdout
        return json.loads(out)
    with open(path) as f:
        return list(yaml.safe_load_all(f))


def image_ref(name):
    """The full reference podman gives an image a file names without a
    registry: library images on docker.io, others in the local store
    (python:3.11-slim-bookworm -> docker.io/library/python:...,
    lifeline:latest -> localhost/lifeline:latest)."""
    if "/" in name.split(":")[0]:
        return name
    if name.split(":")[0] in ("python", "debian"):
        return f"docker.io/library/{name}"
    return f"localhost/{name}"


def tag_lifeline_image(name):
    """IMAGE (built if missing) under the name a shipped file gives it."""
    ensure_lifeline_image()
    podman("tag", IMAGE, image_ref(name), quiet=True)


class ComposeProject:
    """The names podman-compose 1.0.3 gives a project's things: containers
    <project>_<service>_1, the network <project>_default."""

    def __init__(self, name):
        self.name = name
        self.network = f"{name}_default"

    def cname(self, service):
        return f"{self.name}_{service}_1"

    def containers(self):
        return podman_out("ps", "-a", "-q", "--filter",
                          f"label=io.podman.compose.project={self.name}").split()

    def ip_of(self, service):
        return podman_out("inspect", self.cname(service), "--format",
                          f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}')

    def lines(self, service):
        return container_logs(self.cname(service)).splitlines()

    def refuse_if_present(self, compose_file):
        """Exits when containers of the project or its network exist: not this
        test's to remove."""
        if self.containers() or podman("network", "exists", self.network, check=False,
                                       quiet=True).returncode == 0:
            raise SystemExit(f"containers of project {self.name} or its network exist already, "
                             f"not this test's: podman-compose -p {self.name} -f {compose_file} "
                             f"down; podman network rm {self.network}")

    def run(self, netns_name, compose_file, services, body):
        """body(ns, compose, tmp) with podman in a network namespace of its own
        (NetNS) and the engine settings of use_engine_conf(); compose(*args)
        runs podman-compose on the project and checks its exit. On a failed
        check each service's log is shown; whatever happens, every container
        of the project and its network are removed."""
        tmp = tempfile.mkdtemp(prefix=f"{self.name}-")
        try:
            use_engine_conf(tmp)
            with NetNS(netns_name) as ns:
                def compose(*args):
                    r = ns.run("podman-compose", "-p", self.name, "-f", compose_file, *args,
                               capture_output=True, check=False)
                    if r.returncode != 0:
                        log(r.stdout + r.stderr)
                    check(r.returncode == 0, f"podman-compose {' '.join(args)}")
                try:
                    try:
                        body(ns, compose, tmp)
                    except AssertionError:
                        for service in services:
                            log(f"{self.cname(service)}'s log:\n"
                                + container_logs(self.cname(service))[-3000:])
                        raise
                finally:
                    left = self.containers()
                    if left:
                        ns.podman("rm", "-f", "-t", "0", *left, check=False,
                                  stdout=subprocess.DEVNULL)
                    ns.podman("network", "rm", "-f", self.network, check=False, quiet=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def container_logs(name):
    """A container's log, stdout then stderr (lifeline logs on stderr)."""
    r = podman("logs", name, capture_output=True, check=False, quiet=True)
    return r.stdout + r.stderr


def json_lines(text):
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def exit_code(name):
    return podman_out("inspect", name, "--format", "{{.State.ExitCode}}")


def died_exit_code(cid, since):
    """The exit code of container CID's last death since SINCE (a podman
    events time), read from podman's events, which outlive the container;
    None if it has not died."""
    out = podman_out("events", "--stream=false", "--since", since, "--filter",
                     f"container={cid}", "--filter", "event=died", "--format",
                     "{{.ContainerExitCode}}")
    codes = out.split()
    return codes[-1] if codes else None
