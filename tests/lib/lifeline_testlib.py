"""Helpers shared by lifeline's Python test suites and drivers: the
integration harness (tests/integration/harness.py), the fault tests
(tests/fault/), the soak test (tests/soak/soak.py) and the benchmark driver
(bench/run.py). Python standard library only.

Each suite puts this folder on sys.path relative to its own file:

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
    import lifeline_testlib

What is here:

- the binary: ``lifeline_bin()`` ($LIFELINE_BIN, else build/lifeline of this
  checkout, as an absolute path) and ``lifeline_argv()`` (the command line
  that runs it on a config file);
- sanitizers: ``detect_sanitizer(path)`` ('asan', 'tsan' or None), and for
  the binary ``lifeline_bin()`` names, ``SANITIZER``, ``TIME_SCALE`` and
  ``scaled(seconds)`` (deadlines of "should happen soon" waits are
  multiplied by 3 under ASan, 5 under TSan, or $LIFELINE_TEST_TIME_SCALE);
- ``wait_until()``: a bounded poll;
- ``write_config()``: a config dict written as JSON;
- ``parse_log_line()``: one line of lifeline's stderr, parsed if it is a JSON
  log record;
- /proc readers: ``proc_status_value()``, ``proc_cpu_seconds()``;
- ``die_with_parent()``: a preexec_fn that has the child killed with its parent;
- netfilter's connection table (which tracks loopback too once any NAT rule
  is loaded, as podman's are): ``conntrack()`` and ``conntrack_wait_room()``,
  for the benchmarks, whose connection loops can fill it.
"""

import ctypes
import json
import os
import signal
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))


# --------------------------------------------------------------------------
# the binary and its command line


def lifeline_bin():
    """$LIFELINE_BIN, or build/lifeline of this checkout; as an absolute path."""
    b = os.environ.get("LIFELINE_BIN") or os.path.join(REPO, "build", "lifeline")
    return os.path.abspath(b)


def lifeline_argv(binary, config_path=None, log_format="json", args=()):
    """`binary -c CONFIG --log-format FORMAT ARGS...`; no -c without a config
    path, no --log-format without a format."""
    argv = [binary]
    if config_path is not None:
        argv += ["-c", config_path]
    if log_format is not None:
        argv += ["--log-format", log_format]
    return argv + list(args)


# --------------------------------------------------------------------------
# sanitizers and time scale


def detect_sanitizer(path):
    """'asan', 'tsan' or None (also when the file cannot be read): sanitized
    builds are slower and their memory use (shadow memory, quarantine) says
    nothing about lifeline's own."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if b"__tsan_init" in data:
        return "tsan"
    if b"__asan_init" in data:
        return "asan"
    return None


SANITIZER = detect_sanitizer(lifeline_bin())
# Deadlines that bound "should happen soon" waits are multiplied by this.
TIME_SCALE = float(os.environ.get("LIFELINE_TEST_TIME_SCALE") or
                   {"tsan": 5.0, "asan": 3.0}.get(SANITIZER, 1.0))


def scaled(seconds):
    return seconds * TIME_SCALE


# --------------------------------------------------------------------------
# waiting


def wait_until(cond, timeout, what="condition", interval=0.005, error=AssertionError):
    """Polls cond() until it returns something truthy (returned) or the
    deadline passes (`error`, AssertionError unless told, naming what was
    awaited)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise error(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# config files and log lines


def write_config(directory, cfg, name="lifeline.json"):
    """Writes a dict as JSON (or a str verbatim) and returns the path."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        if isinstance(cfg, str):
            f.write(cfg)
        else:
            json.dump(cfg, f, indent=2)
    return path


def parse_log_line(raw):
    """One line of lifeline's stderr (bytes, as read from the pipe) ->
    (text, record): the text without its newline, and the parsed JSON log
    record (a dict), or None when the line is not one (a text-format line, a
    sanitizer report...)."""
    text = raw.decode("utf-8", "replace").rstrip("\n")
    rec = None
    if text.startswith("{"):
        try:
            rec = json.loads(text)
        except ValueError:
            rec = None
    return text, (rec if isinstance(rec, dict) else None)


# --------------------------------------------------------------------------
# /proc


def proc_status_value(pid, key):
    """The first number of the `key:` line of /proc/PID/status (VmRSS in
    KiB, ...), or None if there is no such line."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def proc_cpu_seconds(pid):
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# child processes

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def die_with_parent():
    """preexec_fn: the child gets SIGKILL when its parent dies, even by
    SIGKILL (PR_SET_PDEATHSIG survives exec, e.g. of `ip netns exec` and of
    its command)."""
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


CLONE_NEWNET = 0x40000000


def ns_socket(netns, family=None, type=None):
    """A socket (TCP unless told) created inside network namespace `netns` (None:
    this one). A socket keeps the namespace it was created in, so only its creation
    needs the namespace: it runs in a throw-away thread that setns()es into it
    (setns(CLONE_NEWNET) changes only the calling thread)."""
    import socket
    import threading
    family = socket.AF_INET if family is None else family
    type = socket.SOCK_STREAM if type is None else type
    if netns is None:
        return socket.socket(family, type)
    out = {}

    def run():
        try:
            fd = os.open("/var/run/netns/" + netns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, "setns(%s): %s" % (netns, os.strerror(e)))
            finally:
                os.close(fd)
            out["sock"] = socket.socket(family, type)
        except BaseException as e:     # handed to the caller
            out["err"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "err" in out:
        raise out["err"]
    return out["sock"]


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def conntrack():
    """(entries, the table's size, packets dropped so far for want of room) of netfilter's
    connection tracking, or None without it. Loopback connections are tracked too, and a
    closed one stays in the table for nf_conntrack_tcp_timeout_time_wait (120 s): a full
    table drops SYNs, which the clients then retry after 1 s, 3 s, ..."""
    base = "/proc/sys/net/netfilter/"
    try:
        with open(base + "nf_conntrack_count") as f:
            count = int(f.read())
        with open(base + "nf_conntrack_max") as f:
            size = int(f.read())
    except (OSError, ValueError):
        return None
    drops = 0
    try:
        with open("/proc/net/stat/nf_conntrack") as f:
            col = f.readline().split().index("drop")
            for line in f:
                drops += int(line.split()[col], 16)
    except (OSError, ValueError, IndexError):
        pass
    return count, size, drops


def conntrack_wait_room(need, on_wait=None, timeout=150.0):
    """Waits (up to `timeout` s: closed connections leave the table after 120 s) until
    netfilter's connection table has room for `need` more entries and 10% to spare;
    on_wait(conntrack()) is called once if it has to wait. Returns the seconds waited."""
    ct = conntrack()
    if ct is None or ct[0] + need <= 0.9 * ct[1]:
        return 0.0
    if on_wait is not None:
        on_wait(ct)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(2)
        ct = conntrack()
        if ct is None or ct[0] + need <= 0.9 * ct[1]:
            break
    return time.monotonic() - t0
