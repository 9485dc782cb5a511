"""VM mode's memory managers, each with the same small interface (as process mode's managers).

* ``none`` – nothing gives memory back; at the cgroup limit the host swaps guest RAM.
* ``virtio-balloon`` – the OS-level balloon: each guest's virtio balloon, driven through QMP
  by the MoM-like rule of :mod:`heapballoon.experiment.momrule` (a thread in the experiment).
* ``heapballoon`` – heapballoon's heap balloons only: ``hostd --policy auto --memory-budget`` =
  the guest RAM given, with a policy file that allows the heap source only
  (``sources = ["heap"]``), so no virtio-balloon is touched.
* ``heapballoon+virtio`` – ``hostd --policy auto --memory-budget`` = the guest RAM given: hostd
  takes the guests' free memory through virtio-balloon first, then idle heap.

hostd runs on a private socket and run dir (the experiment's), logs next to the results, and
is started before the guests boot, so its policy sees the pressure come.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from heapballoon import protocol, transport
from heapballoon.errors import HeapballoonError, KernelError, VMError
from heapballoon.experiment import momrule
from heapballoon.experiment.managers import stop_daemon
from heapballoon.experiment.vmconfig import VMConfig
from heapballoon.linux.cgroup import UNLIMITED_ABOVE, MemoryCgroup
from heapballoon.linux.procfs import ProcFS
from heapballoon.poll import Timeout, wait_until


class VMManager:
    name = "none"
    with_agent = False
    settings = "nothing reclaims; the host swaps guest RAM at the cgroup limit"

    def before_guests(self, cfg: VMConfig, level_pct: int) -> None:
        """Called before the guests boot."""

    def after_guests(self, cfg: VMConfig, level_pct: int, guests, parent: MemoryCgroup) -> None:
        """Called once every guest's service answers."""

    def reclaimed_bytes(self) -> int | None:
        return None

    def cpu_s(self) -> float:
        return 0.0

    def stop(self) -> None:
        """Stop whatever the manager started (idempotent)."""


class VirtioMoM(VMManager):
    name = "virtio-balloon"

    def __init__(self, procfs: ProcFS | None = None) -> None:
        self.procfs = procfs or ProcFS()
        self.settings = momrule.settings()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu_s = 0.0
        self.held: dict[str, int] = {}
        self.errors = 0

    def after_guests(self, cfg, level_pct, guests, parent) -> None:
        from heapballoon.vm.registry import get_vm

        socks = {g.name: get_vm(g.name).qmp_socket for g in guests}
        self._thread = threading.Thread(target=self._run, args=(cfg, socks, parent), name="mom", daemon=True)
        self._thread.start()

    def _tick(self, cfg: VMConfig, socks: dict, parent: MemoryCgroup) -> None:
        from heapballoon.host.virtioballoon import DEVICE_PATH, parse_reading
        from heapballoon.vm.qmp import qmp_execute

        limit = parent.limit_bytes()
        mem = self.procfs.meminfo()
        free = momrule.host_free_fraction(None if limit >= UNLIMITED_ABOVE else limit, parent.usage_bytes(),
                                          mem.get("MemTotal", 0), mem.get("MemAvailable", 0))
        for name, sock in socks.items():
            try:
                reading = parse_reading(qmp_execute(sock, "query-balloon"),
                                        qmp_execute(sock, "qom-get", {"path": DEVICE_PATH, "property": "guest-stats"}),
                                        time.monotonic(), time.time())
                new = momrule.decide(momrule.GuestBalloon(cfg.guest_memory_bytes, reading.actual_bytes,
                                                          reading.free_bytes), free)
                if new is not None:
                    qmp_execute(sock, "balloon", {"value": int(new)})
                self.held[name] = cfg.guest_memory_bytes - (new if new is not None else reading.actual_bytes)
            except (VMError, HeapballoonError):
                self.errors += 1

    def _run(self, cfg: VMConfig, socks: dict, parent: MemoryCgroup) -> None:
        from heapballoon.host.virtioballoon import DEVICE_PATH
        from heapballoon.vm.qmp import qmp_execute

        try:
            for sock in socks.values():
                try:
                    qmp_execute(sock, "qom-set", {"path": DEVICE_PATH, "property": "guest-stats-polling-interval",
                                                  "value": momrule.STATS_INTERVAL_S})
                except VMError:
                    self.errors += 1
            while not self._stop.wait(momrule.INTERVAL_S):
                try:
                    self._tick(cfg, socks, parent)
                except KernelError:
                    self.errors += 1
        finally:
            self._cpu_s = time.thread_time()

    def reclaimed_bytes(self) -> int | None:
        return sum(self.held.values())

    def cpu_s(self) -> float:
        return self._cpu_s

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(20)


class Hostd(VMManager):
    with_agent = True

    def __init__(self, name: str, run_dir: str, log_path: str, procfs: ProcFS | None = None) -> None:
        self.name = name
        self.auto = name == "heapballoon+virtio"
        self.run_dir = run_dir
        self.socket = os.path.join(run_dir, "hostd.sock")
        self.log_path = log_path
        self.procfs = procfs or ProcFS()
        self.proc: subprocess.Popen | None = None
        self._cpu_s = 0.0
        self.policy_path = os.path.join(run_dir, f"policy-{name}.toml")
        self.settings = ("hostd --policy auto --memory-budget = guest RAM given (guest free memory through "
                         "virtio-balloon first, then idle heap), default engine" if self.auto else
                         "hostd --policy auto --memory-budget = guest RAM given, policy file sources = [\"heap\"]: "
                         "idle JVM heap through heap balloons only, no virtio-balloon")

    def env(self) -> dict[str, str]:
        return {**os.environ, "HEAPBALLOON_RUN_DIR": self.run_dir, "HEAPBALLOON_HOST_SOCKET": self.socket}

    def before_guests(self, cfg, level_pct) -> None:
        cmd = [sys.executable, "-m", "heapballoon", "hostd", "--socket", self.socket, "--run-dir", self.run_dir]
        with open(self.policy_path, "w") as f:
            f.write("" if self.auto else 'sources = ["heap"]\n')
        cmd += ["--policy", "auto", "--memory-budget", f"{cfg.budget_bytes(level_pct) >> 20}M",
                "--policy-file", self.policy_path]
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_until(lambda: os.path.exists(self.socket) or self.proc.poll() is not None, 30, "hostd")
        except Timeout as err:
            raise HeapballoonError(f"hostd did not start: {err}") from err
        if self.proc.poll() is not None:
            raise HeapballoonError(f"hostd exited ({self.proc.returncode}); see {self.log_path}")

    def _status(self) -> dict:
        return transport.request(self.socket, protocol.StatusRequest(id=1), timeout_s=3).body

    def after_guests(self, cfg, level_pct, guests, parent) -> None:
        names = {g.name for g in guests}

        def registered() -> bool:
            try:
                vms = self._status().get("vms", [])
            except HeapballoonError:
                return False
            return {v["name"] for v in vms if v.get("jvms")} >= names

        try:
            wait_until(registered, 120, "the guest agents to register with hostd")
        except Timeout as err:
            raise HeapballoonError(f"guest agents did not register with hostd: {err}") from err

    def reclaimed_bytes(self) -> int | None:
        """Heap balloon pages punched plus what the virtio balloons hold, summed over the guests."""
        try:
            vms = self._status().get("vms", [])
        except HeapballoonError:
            return None
        total = 0
        for v in vms:
            total += v.get("reclaimed_bytes") or 0
            if v.get("virtio_actual_bytes"):
                total += max(0, v["memory_bytes"] - v["virtio_actual_bytes"])
        return total

    def cpu_s(self) -> float:
        return self._cpu_s

    def stop(self) -> None:
        if self.proc is not None:
            self._cpu_s = stop_daemon(self.proc, self.procfs, 20,
                                      (self.socket, os.path.join(self.run_dir, "hostd-state.json")))
            self.proc = None


def make(name: str, run_dir: str, log_path: str) -> VMManager:
    if name == "virtio-balloon":
        return VirtioMoM()
    if name in ("heapballoon", "heapballoon+virtio"):
        return Hostd(name, run_dir, log_path)
    return VMManager()
