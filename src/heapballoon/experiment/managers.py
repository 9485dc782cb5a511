"""The memory managers compared, each with the same small interface.

* ``none`` – nothing gives memory back; at the limit the kernel swaps.
* ``self-sizing`` – JVM self-sizing alone, nothing outside the JVMs: G1 periodic collections
  (JEP 346) on a heap that may shrink (``-Xms`` far below ``-Xmx``, but started at ``-Xmx`` and
  pre-touched like the others, so it grows and is dirty first), free ratios low enough that G1
  uncommits after each periodic cycle, and ``SoftMaxHeapSize`` = the heap's share of the memory
  given (honoured by ZGC and Shenandoah; G1 on JDK 17 accepts and ignores it).
* ``cgroup-step`` – the OS-level balloon in process mode, senpai-like. cgroup v1 has no
  ``memory.high``, so each service's child cgroup gets a ``memory.limit_in_bytes`` that is stepped
  down 3 % below its usage every second while the child shows little refault pressure (under
  ``REFAULT_PER_S`` major faults a second in its ``memory.stat``) and the host's memory PSI
  (``some avg10``) stays under ``PSI_MAX_PCT``; on pressure it is raised 10 %. Writing a lower
  limit makes the kernel reclaim (to swap) at once, like senpai's ``memory.high``.
* ``heapballoon+self-sizing`` – both: heapballoon's daemon and agents on JVMs with self-sizing's
  flags (its small ``-Xms``).
* ``heapballoon`` – ``heapballoon daemon`` on a private socket, the JVMs started through
  ``heapballoon run``; policy ``auto`` gives the daemon ``--memory-budget`` = the memory given,
  policy ``manual`` (until the automatic policy exists) sets ``heapballoon target all`` to the
  excess of the committed heaps over what they are given.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from heapballoon import protocol, transport
from heapballoon.errors import HeapballoonError, KernelError
from heapballoon.experiment.config import Config
from heapballoon.linux.cgroup import MemoryCgroup
from heapballoon.linux.procfs import ProcFS
from heapballoon.experiment.metrics import psi_some_avg10
from heapballoon.poll import Timeout, wait_until

REFAULT_PER_S = 20.0
PSI_MAX_PCT = 10.0
STEP_DOWN = 0.03
STEP_UP = 0.10
FLOOR_BYTES = 96 << 20
AUTO_POLICIES = ("auto", "proactive")  # the experiment's --policy values that run the daemon's own policy
# --policy proactive: the policy ticks as often as the daemon steps (its own default is 1 s)
PROACTIVE_FILE = "proactive = true\ninterval_s = 0.5\n"


class Manager:
    name = "none"
    with_agent = False
    settings = "nothing reclaims; the kernel swaps at the cgroup limit"
    # Set by the runner before ``before_services``: an unlimited memory cgroup named after the run,
    # for the processes a manager starts (so a killed run's leftovers can be found and ended).
    cgroup: MemoryCgroup | None = None

    def env(self) -> dict[str, str] | None:
        return None

    def jvm_args(self, cfg: Config, level_pct: int) -> list[str]:
        """Extra JVM options for every service (after the workload's own, so they override them)."""
        return []

    def before_services(self, cfg: Config, level_pct: int) -> None:
        """Called before the JVMs start."""

    def after_services(self, cfg: Config, level_pct: int, pids: list[int], children: list[MemoryCgroup]) -> None:
        """Called once every service answers."""

    def reclaimed_bytes(self) -> int | None:
        return None

    def cpu_s(self) -> float:
        return 0.0

    def stop(self) -> None:
        """Stop whatever the manager started (idempotent)."""


SELF_SIZING_MIN_HEAP_BYTES = 64 << 20
SELF_SIZING_INTERVAL_MS = 2000
SELF_SIZING_FREE_RATIO_PCT = (10, 30)  # Min/MaxHeapFreeRatio


class SelfSizing(Manager):
    """JVM self-sizing alone (G1 periodic collection, a shrinkable heap, a lowered SoftMaxHeapSize)."""

    name = "self-sizing"
    settings = (f"G1 (-XX:+UseG1GC, the default collector here, made explicit) with "
                f"-XX:G1PeriodicGCInterval={SELF_SIZING_INTERVAL_MS} (JEP 346: a concurrent cycle after "
                f"{SELF_SIZING_INTERVAL_MS / 1000:g} s without a GC), -XX:G1PeriodicGCSystemLoadThreshold=0 (no "
                f"load-average gate: other jobs' load on a shared machine would suppress it), "
                f"-Xms{SELF_SIZING_MIN_HEAP_BYTES >> 20}m -XX:InitialHeapSize=-Xmx (the heap starts full and "
                f"pre-touched like the other cells', and may shrink to {SELF_SIZING_MIN_HEAP_BYTES >> 20} MiB), "
                f"-XX:MinHeapFreeRatio={SELF_SIZING_FREE_RATIO_PCT[0]} -XX:MaxHeapFreeRatio="
                f"{SELF_SIZING_FREE_RATIO_PCT[1]} (G1 uncommits what is above 30 % free after a cycle), "
                f"-XX:SoftMaxHeapSize = the heap's share of the memory given (-Xmx / (1 + level)); G1 on JDK 17 "
                f"accepts SoftMaxHeapSize but ignores it (only ZGC and Shenandoah use it; G1 support, "
                f"JDK-8236073, is not in 17; checked: a G1 heap started at 512 MiB stays at 512 MiB committed "
                f"after 8 s idle with SoftMaxHeapSize=64m and falls to the 32 MiB minimum with the periodic "
                f"collection), so with G1 the shrinking comes from the periodic collections and the free ratios")

    def jvm_args(self, cfg: Config, level_pct: int) -> list[str]:
        return self_sizing_args(cfg, level_pct)


def self_sizing_args(cfg: Config, level_pct: int) -> list[str]:
    share_mib = max(SELF_SIZING_MIN_HEAP_BYTES, min(cfg.heap_bytes, cfg.heap_share_bytes(level_pct))) >> 20
    return ["-XX:+UseG1GC", f"-Xms{SELF_SIZING_MIN_HEAP_BYTES >> 20}m",
            f"-XX:InitialHeapSize={cfg.heap_bytes >> 20}m",
            f"-XX:MinHeapFreeRatio={SELF_SIZING_FREE_RATIO_PCT[0]}",
            f"-XX:MaxHeapFreeRatio={SELF_SIZING_FREE_RATIO_PCT[1]}",
            f"-XX:G1PeriodicGCInterval={SELF_SIZING_INTERVAL_MS}", "-XX:G1PeriodicGCSystemLoadThreshold=0",
            f"-XX:SoftMaxHeapSize={share_mib}m"]


class CgroupStep(Manager):
    name = "cgroup-step"
    settings = (f"per-service memory.limit_in_bytes stepped -{STEP_DOWN:.0%}/s below usage while major faults "
                f"< {REFAULT_PER_S:.0f}/s and PSI some avg10 < {PSI_MAX_PCT:.0f}%; +{STEP_UP:.0%} on pressure; "
                f"floor {FLOOR_BYTES >> 20} MiB")

    def __init__(self, procfs: ProcFS | None = None) -> None:
        self.procfs = procfs or ProcFS()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu_s = 0.0
        self.freed_bytes = 0

    def after_services(self, cfg, level_pct, pids, children) -> None:
        self._thread = threading.Thread(target=self._run, args=(children,), name="cgroup-step", daemon=True)
        self._thread.start()

    def _run(self, children: list[MemoryCgroup]) -> None:
        last = {c.name: c.stat().get("pgmajfault", 0) for c in children}
        limits = {c.name: c.usage_bytes() for c in children}
        try:
            while not self._stop.wait(1.0):
                psi = psi_some_avg10(self.procfs)
                for c in children:
                    try:
                        faults = c.stat().get("pgmajfault", 0)
                        usage = c.usage_bytes()
                    except KernelError:
                        continue
                    rate = faults - last[c.name]
                    last[c.name] = faults
                    if rate > REFAULT_PER_S or psi > PSI_MAX_PCT:
                        new = int(limits[c.name] * (1 + STEP_UP))
                    else:
                        new = max(FLOOR_BYTES, int(min(limits[c.name], usage) * (1 - STEP_DOWN)))
                    try:
                        c.set_limit_bytes(new)
                        limits[c.name] = new
                        self.freed_bytes += max(0, usage - c.usage_bytes())
                    except KernelError:  # EBUSY: the kernel could not reclaim that much; keep the old one
                        pass
        finally:
            self._cpu_s = time.thread_time()

    def cpu_s(self) -> float:
        return self._cpu_s

    def reclaimed_bytes(self) -> int | None:
        return self.freed_bytes

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)


class Heapballoon(Manager):
    name = "heapballoon"
    with_agent = True

    def __init__(self, run_dir: str, policy: str, log_path: str, procfs: ProcFS | None = None) -> None:
        self.socket = os.path.join(run_dir, "driver.sock")
        self.log_path = log_path
        self.policy = policy
        self.procfs = procfs or ProcFS()
        self.daemon: subprocess.Popen | None = None
        self._cpu_s = 0.0
        self.policy_file = os.path.join(run_dir, "policy.toml")
        self.settings = ("daemon --reclaim direct --ksm off --interval-s 0.5, " + {
            "auto": "--policy auto --memory-budget = memory given",
            "proactive": "--policy auto --memory-budget = memory given, policy file `proactive = true`, "
                         "`interval_s = 0.5` (the policy ticks with the daemon)",
        }.get(policy, "manual stand-in: `target all` = committed heaps - heap memory given"))

    def env(self) -> dict[str, str]:
        return {**os.environ, "HEAPBALLOON_SOCKET": self.socket}

    def _cli(self, *args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "heapballoon", *args], env=self.env(), capture_output=True,
                              text=True, timeout=60)
        if proc.returncode != 0:
            raise HeapballoonError(f"heapballoon {' '.join(args)} failed: {proc.stderr.strip()}")

    def daemon_command(self, cfg: Config, level_pct: int) -> list[str]:
        """The daemon's command line (and, for ``proactive``, its policy file written)."""
        cmd = [sys.executable, "-m", "heapballoon", "daemon", "--socket", self.socket, "--reclaim", "direct",
               "--ksm", "off", "--interval-s", "0.5"]
        if self.policy in AUTO_POLICIES:
            cmd += ["--policy", "auto", "--memory-budget", str(cfg.given_bytes(level_pct))]
        if self.policy == "proactive":
            with open(self.policy_file, "w") as f:
                f.write(PROACTIVE_FILE)
            cmd += ["--policy-file", self.policy_file]
        return cmd

    def before_services(self, cfg, level_pct) -> None:
        cmd = self.daemon_command(cfg, level_pct)
        cgroup = self.cgroup

        def enter_cgroup() -> None:  # in the child, before exec: a killed run's daemon can be found
            if cgroup is not None:
                cgroup.add_pid(os.getpid())

        with open(self.log_path, "a") as log:
            self.daemon = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True, preexec_fn=enter_cgroup)
        try:
            wait_until(lambda: os.path.exists(self.socket) or self.daemon.poll() is not None, 30, "the daemon")
        except Timeout as err:
            raise HeapballoonError(f"heapballoon daemon did not start: {err}") from err
        if self.daemon.poll() is not None:
            raise HeapballoonError(f"heapballoon daemon exited ({self.daemon.returncode}); see {self.log_path}")

    def after_services(self, cfg, level_pct, pids, children) -> None:
        def registered() -> bool:
            try:
                body = transport.request(self.socket, protocol.StatusRequest(id=1)).body
            except HeapballoonError:
                return False
            return {j["pid"] for j in body.get("jvms", [])} >= set(pids)

        try:
            wait_until(registered, 60, "the agents to register")
        except Timeout as err:
            raise HeapballoonError(f"agents did not register with the daemon: {err}") from err
        if self.policy not in AUTO_POLICIES:
            self._cli("target", "all", str(cfg.excess_bytes(level_pct)))

    def reclaimed_bytes(self) -> int | None:
        try:
            body = transport.request(self.socket, protocol.StatusRequest(id=1), timeout_s=2).body
            return int(body["node"]["reclaimed_bytes"])
        except (HeapballoonError, KeyError, TypeError, ValueError):
            return None

    def cpu_s(self) -> float:
        return self._cpu_s

    def stop(self) -> None:
        if self.daemon is not None:
            self._cpu_s = stop_daemon(self.daemon, self.procfs, 10, (self.socket, self.socket + ".ksm.json",
                                                                      self.socket + ".state.json"))
            self.daemon = None


def stop_daemon(proc: subprocess.Popen, procfs: ProcFS, wait_s: float, leftovers: tuple[str, ...]) -> float:
    """Stop a manager's daemon (SIGTERM, SIGKILL after ``wait_s``), remove the files it leaves
    (socket, state); the CPU seconds it used (0 if unreadable)."""
    try:
        cpu_s = procfs.cpu_seconds(proc.pid)
    except KernelError:
        cpu_s = 0.0
    proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    for leftover in leftovers:
        try:
            os.unlink(leftover)
        except OSError:
            pass
    return cpu_s


class HeapballoonSelfSizing(Heapballoon):
    """heapballoon's daemon and agents on JVMs that also size themselves (self-sizing's flags, its
    small -Xms): a heap that shrinks is memory found, the balloon takes what idle heap is left."""

    name = "heapballoon+self-sizing"

    def __init__(self, run_dir: str, policy: str, log_path: str, procfs: ProcFS | None = None) -> None:
        super().__init__(run_dir, policy, log_path, procfs)
        self.settings += "; the JVMs with self-sizing's flags (" + SelfSizing.settings.split(" (")[0] + \
            ", the small -Xms, G1 periodic collections; see self-sizing)"

    def jvm_args(self, cfg: Config, level_pct: int) -> list[str]:
        return self_sizing_args(cfg, level_pct)


def make(name: str, run_dir: str, policy: str, log_path: str) -> Manager:
    """The manager called ``name``; heapballoon's daemon logs to ``log_path`` (kept with the results)."""
    if name == "cgroup-step":
        return CgroupStep()
    if name == "self-sizing":
        return SelfSizing()
    if name == "heapballoon":
        return Heapballoon(run_dir, policy, log_path)
    if name == "heapballoon+self-sizing":
        return HeapballoonSelfSizing(run_dir, policy, log_path)
    return Manager()
