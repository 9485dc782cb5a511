"""Shared test helpers: factories that own every daemon and JVM a test starts, and check teardown.

Tests read like scripts: ``d = daemons.start()``, ``j = jvms.run(d, heap="1g", live_mib=200)``,
``cli(d, "target", j.pid, "512M")``, ``wait_for(lambda: ..., timeout_s=15)``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest

PY = sys.executable
MIB = 1 << 20


def wait_for(pred, timeout_s: float = 10.0, interval_s: float = 0.1, what: str = "condition"):
    """Bounded polling: return pred()'s first truthy value, or fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"{what} not reached within {timeout_s} s (last: {last!r})")


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


@dataclass
class JVM:
    proc: subprocess.Popen
    lines: list = field(default_factory=list)
    stderr_lines: list = field(default_factory=list)

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


class JVMFactory:
    """Starts the ChurnApp demo application as a user would: `heapballoon run -- java ...`."""

    def __init__(self):
        self.jvms: list[JVM] = []

    def run(self, daemon: Daemon | None, heap: str = "1g", live_mib: int = 200, churn_mib_per_s: int = 100,
            gc: str | None = "G1", extra_jvm: tuple = (), name: str = "churn", wrapper: tuple | None = None,
            spike_mib: int = 0, java_bin: str = "java") -> JVM:
        """``gc`` None: the JVM's own choice; ``java_bin``: which JDK (see jdks.py)."""
        from heapballoon.agent import build

        gc_flags = [f"-XX:+Use{gc}GC"] if gc else []
        java = [java_bin, f"-Xms{heap}", f"-Xmx{heap}", *gc_flags, *extra_jvm, "-jar", str(build.demo_jar()),
                "--live-mib", str(live_mib), "--churn-mib-per-s", str(churn_mib_per_s), "--spike-mib", str(spike_mib)]
        if wrapper is not None:
            cmd = [*wrapper, *java]
        else:
            cmd = [PY, "-m", "heapballoon", "run", "--name", name, "--", *java]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=cli_env(daemon.sock if daemon else None), bufsize=1)
        jvm = JVM(proc)
        self.jvms.append(jvm)

        def pump_out():
            for line in proc.stdout:
                try:
                    jvm.lines.append(json.loads(line))
                except ValueError:
                    jvm.lines.append({"raw": line})

        def pump_err():
            for line in proc.stderr:
                jvm.stderr_lines.append(line)

        threading.Thread(target=pump_out, daemon=True).start()
        threading.Thread(target=pump_err, daemon=True).start()
        return jvm

    def teardown(self):
        for j in self.jvms:
            if j.proc.poll() is None:
                j.proc.kill()
            j.proc.wait(timeout=10)


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
