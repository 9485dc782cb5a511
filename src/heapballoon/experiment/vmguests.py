"""VM mode's workload: one QEMU guest per service, booted into the experiment's memory cgroup,
running one CacheService JVM that the host's load generator reaches through a port forward.

Each guest is a heapballoon VM (:func:`heapballoon.vm.launcher.start_vm`) in a private run dir,
with reclaim ``pfn`` (guest RAM is a shared memfd, so hostd can punch it), a user-mode network
with one forward ``127.0.0.1:<free port> → guest:8080`` and the CacheService jar copied in.
QEMU enters its child cgroup before exec (``preexec_fn``), so guest RAM is charged there from
its first page. The guest command brings ``eth0`` up and ``exec``s the JVM with the guest's
default collector; without the agent (``JAVA_TOOL_OPTIONS`` unset) unless the manager is
heapballoon's, whose agent the guest supervisor loads through ``JAVA_TOOL_OPTIONS``.

Failures are read from the guest console: ``OutOfMemoryError`` lines of the JVM, the guest
kernel's OOM kills, the command's exit.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import time
from dataclasses import dataclass

from heapballoon.errors import HeapballoonError, VMError
from heapballoon.experiment.vmconfig import GUEST_PORT, VMConfig
from heapballoon.experiment.workload import fetch_stats
from heapballoon.linux.cgroup import MemoryCgroup

GUEST_JAR = "/opt/cache.jar"
GUEST_OOM_KILL = re.compile(r"Out of memory: Killed process|oom-kill:|Memory cgroup out of memory")


class GuestError(HeapballoonError):
    """A guest did not boot, or its service did not answer."""


@dataclass
class Guest:
    index: int
    name: str
    port: int
    pid: int = 0
    boot_s: float = 0.0
    ready_s: float = 0.0

    def stats(self, timeout_s: float = 5.0) -> dict:
        return fetch_stats(self.name, self.port, timeout_s, GuestError)

    def console(self) -> str:
        from heapballoon.vm.registry import get_vm, read_console

        try:
            return read_console(get_vm(self.name))
        except (VMError, OSError):
            return ""

    def failures(self) -> dict:
        """Counted from the console: JVM OutOfMemoryErrors, guest OOM kills, whether the JVM exited."""
        text = self.console()
        cmd_lines = [line for line in text.splitlines() if line.startswith("[cmd]")]
        return {"jvm_oom": sum("OutOfMemoryError" in line for line in cmd_lines),
                "guest_oom_kills": len(GUEST_OOM_KILL.findall(text)),
                "exited": "HEAPBALLOON-CMD-EXIT" in text}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def guest_command(cfg: VMConfig, index: int, with_agent: bool) -> list[str]:
    heap_mib = cfg.heap_bytes >> 20
    java = ["java", f"-Xms{heap_mib}m", f"-Xmx{heap_mib}m", "-XX:+AlwaysPreTouch",
            "-Dsun.net.httpserver.nodelay=true", "-jar", GUEST_JAR, "--port", str(GUEST_PORT), "--bind", "0.0.0.0",
            "--data-mib", str(cfg.data_bytes >> 20), "--value-kib", str(cfg.value_bytes >> 10),
            "--ttl-ms", str(int(cfg.ttl_s * 1000)), "--seed", str(cfg.seed * 1000 + index),
            "--churn-kib", str(cfg.churn_bytes >> 10), "--warmup-mib", str(cfg.warmup_bytes >> 20)]
    script = ("/sbin/ip addr add 10.0.2.15/24 dev eth0 && /sbin/ip link set eth0 up && "
              + ("" if with_agent else "unset JAVA_TOOL_OPTIONS && ") + "exec " + shlex.join(java))
    return ["/bin/sh", "-c", script]


def start(cfg: VMConfig, jar: str, children: list[MemoryCgroup], with_agent: bool,
          started: list[str]) -> list[Guest]:
    """Boot every guest (in parallel) and wait until each service answers; ``started`` gets each
    VM's name as soon as QEMU runs, so the caller can stop it whatever happens next."""
    from heapballoon.vm import launcher

    guests = []
    t0 = time.monotonic()
    for i, child in enumerate(children):
        g = Guest(i, f"hbx{i}", free_port())

        def enter_cgroup(c=child) -> None:  # in QEMU's child before exec: guest RAM is charged to c
            c.add_pid(os.getpid())

        info = launcher.start_vm(g.name, cfg.guest_memory_bytes, cpus=cfg.guest_cpus,
                                 copies=[(jar, GUEST_JAR)], cmd=guest_command(cfg, i, with_agent), reclaim="pfn",
                                 wait=False, forwards=((g.port, GUEST_PORT),), preexec_fn=enter_cgroup)
        started.append(g.name)
        g.pid = info.pid
        guests.append(g)
    for g in guests:
        try:
            launcher.wait_ready(g.name, cfg.boot_timeout_s)
        except VMError as err:
            raise GuestError(str(err)) from err
        g.boot_s = round(time.monotonic() - t0, 1)
    deadline = time.monotonic() + cfg.boot_timeout_s
    for g in guests:
        while True:
            try:
                g.stats(timeout_s=3)
                break
            except GuestError:
                f = g.failures()
                if f["exited"] or time.monotonic() > deadline:
                    tail = " | ".join(g.console().strip().splitlines()[-3:])
                    raise GuestError(f"{g.name}: the service did not answer ({tail})") from None
                time.sleep(1.0)
        g.ready_s = round(time.monotonic() - t0, 1)
    return guests


def stop_all(names: list[str]) -> list[str]:
    """Stop the VMs named (QMP quit, then signals; bounded) and every other VM of the private
    run dir; the problems met."""
    from heapballoon.vm import launcher
    from heapballoon.vm.registry import list_vms

    problems = []
    try:
        names = list(dict.fromkeys([*names, *(v.name for v in list_vms())]))
    except (VMError, OSError) as err:
        problems.append(f"listing VMs: {err}")
    for name in names:
        try:
            launcher.stop_vm(name)
        except VMError as err:
            if "no VM named" not in str(err):
                problems.append(str(err))
    return problems
