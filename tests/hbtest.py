"""Shared test helpers: factories that own every daemon and JVM a test starts, and check teardown.

Tests read like scripts: ``d = daemons.start()``, ``j = jvms.run(d, heap="1g", live_mib=200)``,
``cli(d, "target", j.pid, "512M")``, ``wait_for(lambda: ..., timeout_s=15)``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest

from heapballoon.poll import Timeout, wait_until

PY = sys.executable
MIB = 1 << 20
# A JVM that prints "ready" and sleeps: the target of the attach tests.
SLEEPER = """
public class Sleeper {
    public static void main(String[] a) throws Exception {
        System.out.println("ready");
        System.out.flush();
        Thread.sleep(120_000);
    }
}
"""


KSM_LOCK = "/tmp/heapballoon-test-ksm.lock"


@contextlib.contextmanager
def ksm_owner_lock(path: str = KSM_LOCK):
    """Held by a test whose daemons take over /sys/kernel/mm/ksm, so two such tests never overlap
    when tests run two at a time (tests/conftest.py, docs/testing.md)."""
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def wait_for(pred, timeout_s: float = 10.0, interval_s: float = 0.1, what: str = "condition"):
    """The tests' one bounded-polling helper: ``pred()``'s first truthy value, or an
    AssertionError (a test failure naming ``what``) after ``timeout_s``. Built on the product's
    own :func:`heapballoon.poll.wait_until`."""
    try:
        return wait_until(pred, timeout_s, what, interval_s)
    except Timeout as err:
        raise AssertionError(f"{what} not reached within {timeout_s} s (last: {err.last!r})") from None


async def until(pred, timeout_s: float = 5.0, interval_s: float = 0.02, what: str = "condition"):
    """wait_for for asyncio tests: the same deadline rule, sleeping on the event loop."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    while not (last := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s (last: {last!r})")
        await asyncio.sleep(interval_s)
    return last


def hold_for(pred, duration_s: float, interval_s: float = 0.1, what: str = "condition", show=None):
    """Bounded observation, for "this does NOT happen": ``pred()`` must stay truthy for all of
    ``duration_s``, polled every ``interval_s``; the first falsy value fails the test at once
    (an AssertionError naming ``what``, what was seen and ``show()`` if given). Returns the last value."""
    t0 = time.monotonic()
    while True:
        last = pred()
        if not last:
            seen = f"{last!r}" + (f"; {show()!r}" if show else "")
            raise AssertionError(f"{what} stopped holding after {time.monotonic() - t0:.2f} s (saw {seen})")
        if time.monotonic() - t0 >= duration_s:
            return last
        time.sleep(interval_s)


async def holds(pred, duration_s: float, interval_s: float = 0.02, what: str = "condition"):
    """hold_for for asyncio tests: the same rule, sleeping on the event loop."""
    import asyncio

    t0 = time.monotonic()
    while True:
        last = pred()
        if not last:
            raise AssertionError(f"{what} stopped holding after {time.monotonic() - t0:.2f} s (saw {last!r})")
        if time.monotonic() - t0 >= duration_s:
            return last
        await asyncio.sleep(interval_s)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cli_env(sock: str | None = None) -> dict:
    env = dict(os.environ)
    if sock:
        env["HEAPBALLOON_SOCKET"] = sock
    return env


def run_cli(*args, sock: str | None = None, timeout_s: float = 60.0, check: bool = False):
    proc = subprocess.run([PY, "-m", "heapballoon", *map(str, args)], capture_output=True, text=True,
                          env=cli_env(sock), timeout=timeout_s)
    if check and proc.returncode != 0:
        raise AssertionError(f"heapballoon {' '.join(map(str, args))} failed: {proc.stderr}")
    return proc


def answers(sock: str) -> bool:
    """True once a daemon answers on ``sock`` (a stale socket file is not enough)."""
    from heapballoon import protocol, transport
    from heapballoon.errors import HeapballoonError

    try:
        transport.request(sock, protocol.StatusRequest(), timeout_s=2)
        return True
    except HeapballoonError:
        return False


@dataclass
class Daemon:
    sock: str
    proc: subprocess.Popen
    log_path: str

    def status(self) -> dict:
        return json.loads(run_cli("status", "--json", sock=self.sock, check=True).stdout)

    def jvm(self, pid: int) -> dict | None:
        return next((j for j in self.status()["jvms"] if j["pid"] == pid), None)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()


class DaemonFactory:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.daemons: list[Daemon] = []

    def start(self, *extra, sock: str | None = None) -> Daemon:
        sock = sock or str(self.tmp_path / f"hb{len(self.daemons)}.sock")
        log_path = str(self.tmp_path / f"daemon{len(self.daemons)}.log")
        with open(log_path, "a") as log:
            proc = subprocess.Popen([PY, "-m", "heapballoon", "daemon", "--socket", sock, "--interval-s", "0.5", *extra],
                                    stdout=log, stderr=subprocess.STDOUT, env=cli_env())
        d = Daemon(sock, proc, log_path)
        self.daemons.append(d)
        wait_for(lambda: answers(sock) or proc.poll() is not None, 20, what="daemon answering")
        assert proc.poll() is None, f"daemon exited early:\n{d.log()}"
        return d

    def stop(self, d: Daemon, sig=signal.SIGTERM) -> int:
        if d.proc.poll() is None:
            d.proc.send_signal(sig)
        return d.proc.wait(timeout=15)

    def teardown(self):
        for d in self.daemons:
            if d.proc.poll() is None:
                self.stop(d)
            assert d.proc.returncode in (0, -signal.SIGKILL), f"daemon exited with {d.proc.returncode}:\n{d.log()[-3000:]}"


class JVM:
    """One JVM child process (the tests' only JVM wrapper): its stdout as raw lines and, where
    they are JSON (ChurnApp's reports), parsed into ``lines``; its stderr; the /proc views."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[dict] = []
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        for line in self.proc.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"raw": line})

    def _pump_err(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def last(self) -> dict:
        return self.lines[-1] if self.lines else {}

    def errors(self) -> list:
        return [line for line in self.lines if "error" in line]

    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def maps(self) -> list[tuple[int, int, str, str]]:
        """(start, end, perms, path) of every mapping."""
        out = []
        with open(f"/proc/{self.pid}/maps") as f:
            for line in f:
                fields = line.split(None, 5)
                start, end = (int(x, 16) for x in fields[0].split("-"))
                out.append((start, end, fields[1], fields[5].strip() if len(fields) > 5 else ""))
        return out

    def read_mem(self, addr: int, size: int) -> bytes:
        with open(f"/proc/{self.pid}/mem", "rb") as f:
            f.seek(addr)
            return f.read(size)

    def diagnostics(self) -> str:
        return ("\n--- JVM stderr ---\n" + "".join(self.stderr_lines[-30:])
                + "\n--- JVM stdout ---\n" + "\n".join(self.stdout_lines[-10:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class JVMFactory:
    """Starts the ChurnApp demo application as a user would: `heapballoon run -- java ...`."""

    def __init__(self):
        self.jvms: list[JVM] = []

    def run(self, daemon: Daemon | None, heap: str = "1g", live_mib: int = 200, churn_mib_per_s: int = 100,
            gc: str | None = "G1", extra_jvm: tuple = (), name: str = "churn", wrapper: tuple | None = None,
            spike_mib: int = 0, java_bin: str = "java", app_args: tuple = ()) -> JVM:
        """``gc`` None: the JVM's own choice; ``java_bin``: which JDK (see jdks.py); ``app_args``:
        more ChurnApp options (e.g. ``("--rotate-mib-per-s", 100)``)."""
        from heapballoon.agent import build

        gc_flags = [f"-XX:+Use{gc}GC"] if gc else []
        java = [java_bin, f"-Xms{heap}", f"-Xmx{heap}", *gc_flags, *extra_jvm, "-jar", str(build.demo_jar()),
                "--live-mib", str(live_mib), "--churn-mib-per-s", str(churn_mib_per_s), "--spike-mib", str(spike_mib), *map(str, app_args)]
        if wrapper is not None:
            cmd = [*wrapper, *java]
        else:
            cmd = [PY, "-m", "heapballoon", "run", "--name", name, "--", *java]
        return self.start(cmd, stdin=True, env=cli_env(daemon.sock if daemon else None))

    def start(self, args: list[str], stdin: bool = False, env: dict | None = None) -> JVM:
        """Any JVM command line, as given; stopped at teardown."""
        proc = subprocess.Popen(args, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env or cli_env(), bufsize=1)
        jvm = JVM(proc)
        self.jvms.append(jvm)
        return jvm

    def teardown(self):
        for j in self.jvms:
            j.stop()


def require_java():
    if shutil.which("java") is None:
        pytest.skip("java is not installed")


def require_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: physical frame numbers in pagemap and KSM sysfs are root-only")


def require_ksm():
    require_root()
    if not os.access("/sys/kernel/mm/ksm/run", os.W_OK):
        pytest.skip("KSM is not available or not writable on this kernel")


def parse_app_lines(text: str) -> list[dict]:
    """The demo app's JSON lines (``[cmd] {...}``) in a guest's console or `vm logs` output."""
    out = []
    for line in text.splitlines():
        if line.startswith("[cmd] {"):
            try:
                out.append(json.loads(line[len("[cmd] "):]))
            except ValueError:
                pass
    return out


# The overcommit experiment (issue 8): what results.json must hold per run, and a PNG's size.
RESULT_KEYS = {"manager", "mode", "overcommit", "throughput_ratio", "latency_p99_ms", "oom_events", "swap_out_pages",
               "data_errors"}


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file; asserts it is one."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@contextlib.contextmanager
def pod_cgroup(prefix: str, pod_uid: str, container_id: str, limit_bytes: int | None = None):
    """A v1 memory cgroup laid out as the kubelet's (cgroupfs driver):
    ``/<prefix>-PID/kubepods/burstable/pod<uid>/<container id>``, the container's group limited
    to ``limit_bytes`` if given; the whole tree removed after (its processes must be gone). Skips
    (with the reason) without a v1 memory controller."""
    from heapballoon.linux import cgroup

    if not cgroup.v1_available():
        pytest.skip("needs a cgroup v1 memory controller (a pod's cgroup)")
    parent = cgroup.MemoryCgroup(f"{prefix}-{os.getpid()}").create()
    try:
        g = parent.child(f"kubepods/burstable/pod{pod_uid}/{container_id}").create()
        if limit_bytes is not None:
            g.set_limit_bytes(limit_bytes)
        yield g
    finally:
        parent.remove()
    assert not parent.exists()
