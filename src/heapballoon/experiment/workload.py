"""The workload: CacheService JVMs (agent/experiment/), one per service, each in its own child
memory cgroup, started either plainly or through ``heapballoon run`` (the agent loaded).

A service is ready when it prints ``READY port=N``. Its own counters come from ``GET /stats``.
The JVMs use the host's default collector: ``-XX:-UseContainerSupport`` keeps the cgroup limit
(which models the host's memory) from turning a small limit into a different collector choice.
``sun.net.httpserver.nodelay``: the server writes headers and body apart, and without it Nagle
plus the client's delayed ACK adds 40 ms to most responses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from heapballoon.errors import HeapballoonError
from heapballoon.experiment.config import Config
from heapballoon.linux.cgroup import MemoryCgroup


class WorkloadError(HeapballoonError):
    """A service did not start or answer."""


@dataclass
class Service:
    index: int
    name: str
    proc: subprocess.Popen
    cgroup: MemoryCgroup
    port: int = 0
    oom_lines: int = 0
    stderr_tail: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self, timeout_s: float = 5.0) -> dict:
        return fetch_stats(self.name, self.port, timeout_s, WorkloadError)


def fetch_stats(name: str, port: int, timeout_s: float, error: type[HeapballoonError]) -> dict:
    """A CacheService's own counters (``GET /stats`` on 127.0.0.1:``port``); ``error`` on failure."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=timeout_s) as r:
            return json.loads(r.read())
    except (OSError, ValueError) as err:
        raise error(f"{name}: /stats failed: {err}") from err


def java_command(cfg: Config, index: int, jar: str, jvm_args: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The service's command line; ``jvm_args`` (a manager's) come after the defaults and override them."""
    heap_mib = cfg.heap_bytes >> 20
    pretouch = cfg.heaps == "pretouch"
    return ["java", f"-Xms{heap_mib}m", f"-Xmx{heap_mib}m", "-XX:+AlwaysPreTouch" if pretouch else "-XX:-AlwaysPreTouch",
            "-XX:-UseContainerSupport", "-Dsun.net.httpserver.nodelay=true", *jvm_args, "-jar", jar, "--port", "0",
            "--data-mib", str(cfg.data_bytes >> 20),
            "--value-kib", str(cfg.value_bytes >> 10), "--ttl-ms", str(int(cfg.ttl_s * 1000)),
            "--seed", str(cfg.seed * 1000 + index), "--churn-kib", str(cfg.churn_bytes >> 10),
            "--warmup-mib", str(cfg.warmup_bytes >> 20), "--warmup-ms", str(0 if pretouch else int(cfg.burst_s * 1000)),
            "--touch-kib", str(cfg.touch_bytes >> 10)]


def start(cfg: Config, index: int, jar: str, cgroup: MemoryCgroup, env: dict[str, str] | None,
          with_agent: bool, jvm_args: list[str] | tuple[str, ...] = ()) -> Service:
    """Start service ``index`` in ``cgroup`` (through ``heapballoon run`` when ``with_agent``) with a
    manager's extra ``jvm_args``."""
    name = f"svc{index}"
    cmd = java_command(cfg, index, jar, jvm_args)
    if with_agent:
        cmd = [sys.executable, "-m", "heapballoon", "run", "--name", name, "--", *cmd]

    def enter_cgroup() -> None:  # in the child, before exec: the JVM is charged from its first page
        cgroup.add_pid(os.getpid())

    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=enter_cgroup, start_new_session=True)
    svc = Service(index, name, proc, cgroup)

    def read_stdout() -> None:
        for line in proc.stdout:
            if line.startswith("READY port="):
                svc.port = int(line.split("=", 1)[1])
                svc.ready.set()

    def read_stderr() -> None:
        for line in proc.stderr:
            if "OutOfMemoryError" in line:
                svc.oom_lines += 1
            svc.stderr_tail = (svc.stderr_tail + [line.rstrip()])[-20:]

    threading.Thread(target=read_stdout, daemon=True).start()
    threading.Thread(target=read_stderr, daemon=True).start()
    return svc


def wait_ready(services: list[Service], timeout_s: float = 120.0) -> None:
    for svc in services:
        if not svc.ready.wait(timeout_s):
            tail = "; ".join(svc.stderr_tail[-3:]) or f"exit status {svc.proc.poll()}"
            raise WorkloadError(f"{svc.name} did not start within {timeout_s:.0f} s: {tail}")


def wait_ready_or_killed(svc: Service, timeout_s: float = 120.0) -> bool:
    """True once ``svc`` answers; False if it was OOM-killed first (its cgroup counted the kill:
    overcommit the manager did not absorb, measured, and the run goes on); WorkloadError if it
    exited otherwise or did not start in time."""
    deadline = time.monotonic() + timeout_s
    while not svc.ready.wait(0.1):
        if svc.proc.poll() is not None:
            if svc.cgroup.oom_control().oom_kill > 0:
                return False
            tail = "; ".join(svc.stderr_tail[-3:]) or f"exit status {svc.proc.poll()}"
            raise WorkloadError(f"{svc.name} exited before it was ready: {tail}")
        if time.monotonic() > deadline:
            tail = "; ".join(svc.stderr_tail[-3:]) or "no output"
            raise WorkloadError(f"{svc.name} did not start within {timeout_s:.0f} s: {tail}")
    return True


def stop(services: list[Service], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, every service's process group; waits for them."""
    for svc in services:
        _signal(svc, signal.SIGTERM)
    for svc in services:
        try:
            svc.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _signal(svc, signal.SIGKILL)
            svc.proc.wait(timeout_s)


def _signal(svc: Service, sig: int) -> None:
    try:
        os.killpg(svc.proc.pid, sig)
    except ProcessLookupError:
        pass
