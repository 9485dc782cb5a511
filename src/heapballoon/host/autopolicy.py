"""hostd's automatic memory policy (``hostd --policy auto``): the VMs observed, the law ticked, applied.

This module owns VM mode's loop around the shared, pure policy engine (:mod:`heapballoon.policy`,
whose ``law`` explains the control law):

* **Observe.** Per VM a :class:`VMReading`, all measured by hostd: host-resident guest RAM
  (allocated blocks of the RAM memfd; Rss for ksm VMs), the guest's free memory (virtio-balloon
  statistics, virtioballoon.py: its MemAvailable, free pages plus the cache it can drop), what the virtio balloon holds, the guest JVMs' largest heap
  balloon (their ``balloon_max_bytes``: heap above live set + headroom) and the bytes of the
  heap balloon that are holes in guest RAM. The host: MemTotal/MemAvailable and PSI.
  :func:`workload_of` turns a reading into the engine's observation with two sources,
  cheapest first: ``guest_free`` (free guest memory, through virtio-balloon: the guest loses
  nothing it uses) and ``heap`` (idle JVM heap, through heapballoon's balloons and the guest
  channel: costs the JVMs collections).
* **Decide.** :meth:`AutoPolicy.decide` is the pure part: readings, host and clock in, the
  engine's ``tick``, decisions out (kept for ``status`` and the metrics).
* **Apply.** The ``guest_free`` target becomes the virtio balloon's size (QMP ``balloon``),
  the ``heap`` target the VM's target sent to the guest (``guest_target``), only when changed.

A manual ``heapballoon target --vm NAME SIZE`` pins a VM: its heap target is SIZE as without
the policy, its virtio balloon is let go, and its SIZE counts towards the budget;
``target --vm NAME auto`` unpins it. SIGHUP re-reads the policy file; a bad one is refused in
one line and the last good policy stays. Each tick logs one summary line; a VM's own line only
when its target changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from heapballoon.errors import HeapballoonError, KernelError, ReclaimError
from heapballoon.host import virtioballoon, vmstatus
from heapballoon.linux.procfs import ProcFS
from heapballoon.policy import (
    DEFAULT_POLICY_PATH, Decisions, HostObservation, Observations, PolicyConfig, PolicyConfigError,
    PolicyState, SourceObservation, WorkloadObservation, explain_text, load_config, state_text, summary_line, tick,
    workload_line,
)
from heapballoon.policy.explain import budget_text
from heapballoon.status import PolicyReport
from heapballoon.units import format_size

log = logging.getLogger("heapballoon.hostd.policy")

MIB = 1 << 20
GUEST_RESERVE_MIN_BYTES = 32 * MIB  # available memory a guest keeps, at least
GUEST_RESERVE_FRACTION = 0.03  # … or this fraction of its RAM


def guest_reserve_bytes(memory_bytes: int) -> int:
    """Available memory the virtio balloon leaves a guest: its kernel's watermarks and some page
    cache for the files it runs from (a 1 GiB guest keeps 32 MiB)."""
    return max(GUEST_RESERVE_MIN_BYTES, int(memory_bytes * GUEST_RESERVE_FRACTION))


@dataclass(frozen=True)
class VMReading:
    """What the policy knows of one VM at one tick (bytes; None: not known yet)."""

    name: str
    memory_bytes: int
    resident_bytes: int
    guest_available_bytes: int | None  # available guest memory (free + reclaimable cache), virtio-balloon statistics
    virtio_held_bytes: int  # RAM − the balloon's ``actual``
    virtio_target_bytes: int  # what hostd asked the virtio balloon to hold
    heap_max_bytes: int  # the guest JVMs' balloon_max_bytes, summed
    heap_held_bytes: int  # heap balloon pages that are holes in guest RAM (virtio VMs: vmstatus.virtio_reclaimed_bytes)
    heap_target_bytes: int
    active_fraction: float | None = None  # the guest JVMs' live / committed heap
    pinned_bytes: int | None = None  # a manual target
    reclaim: str = "pfn"  # the VM's way: pfn, ksm or virtio (its guest frees heap itself)


def workload_of(r: VMReading, allowed: tuple[str, ...] = ("guest_free", "heap")) -> WorkloadObservation:
    """The engine's view of one VM. ``guest_free`` may hold what it holds plus the guest's
    available memory (free pages and the page cache it can drop: what the guest itself counts as
    available, MemAvailable) above its reserve; when the guest runs short of free memory that room shrinks, and
    the law gives the difference back at once (the balloon deflates). A pinned VM has only its
    heap source (what ``target --vm`` always meant). A source the policy file leaves out of
    ``sources`` has no room: what it holds is given back, and it is kept at 0."""
    heap_room = max(0, r.heap_max_bytes) if "heap" in allowed else 0
    heap = SourceObservation("heap", heap_room, r.heap_held_bytes, r.heap_target_bytes)
    if r.pinned_bytes is not None:
        sources = (heap,)
    else:
        free = r.guest_available_bytes
        if free is not None and r.reclaim == "virtio":
            # heap its JVMs freed is free guest memory that free page reporting already handed
            # back: the virtio balloon would gain the host nothing there, and the guest its margin
            free = max(0, free - r.heap_held_bytes)
        room = r.virtio_held_bytes if free is None else max(0, r.virtio_held_bytes + free - guest_reserve_bytes(r.memory_bytes))
        room = room if "guest_free" in allowed else 0
        sources = (SourceObservation("guest_free", room, r.virtio_held_bytes, r.virtio_target_bytes), heap)
    return WorkloadObservation(key=r.name, name=r.name, kind="vm", resident_bytes=r.resident_bytes,
                               sources=sources, active_fraction=r.active_fraction, pinned_target_bytes=r.pinned_bytes)


def reading_of(snap: vmstatus.VMSnapshot, pinned_bytes: int | None) -> VMReading | None:
    """A reading from hostd's snapshot of the VM (vmstatus.snapshot: its status and virtio
    balloon); None if its resident size could not be measured."""
    st, r = snap.status, snap.virtio
    if st.host_resident_bytes is None:
        return None
    return VMReading(
        name=st.name, memory_bytes=st.memory_bytes, resident_bytes=st.host_resident_bytes,
        guest_available_bytes=(r.free_bytes if r.available_bytes is None else r.available_bytes) if r else None,
        virtio_held_bytes=r.held_bytes(st.memory_bytes) if r else 0,
        virtio_target_bytes=st.virtio_target_bytes,
        heap_max_bytes=st.balloon_max_bytes or 0,
        heap_held_bytes=st.reclaimed_bytes or 0,
        heap_target_bytes=st.target_bytes, active_fraction=active_fraction(st.jvms, r),
        pinned_bytes=pinned_bytes, reclaim=st.reclaim)


def active_fraction(jvms, reading) -> float | None:
    """How much of a VM is in use, 0 to 1: its JVMs' live set over their committed heap (the
    heap is what the policy takes from), or, with no JVM, the share of guest memory the guest
    does not count as available; None while neither is known (the engine then holds the VM's
    targets). ``jvms``: the guest's, typed (status.JvmStatus)."""
    committed = sum(j.heap_committed_bytes for j in jvms)
    if committed > 0:
        return min(1.0, sum(j.live_bytes for j in jvms) / committed)
    if reading is not None and reading.total_bytes and reading.available_bytes is not None:
        return min(1.0, max(0.0, 1.0 - reading.available_bytes / reading.total_bytes))
    return None


def read_host(memory_budget_bytes: int | None, procfs: ProcFS | None = None) -> HostObservation:
    """The host's memory and memory pressure (PSI absent or unreadable: no pressure)."""
    procfs = procfs or ProcFS()
    try:
        mem = procfs.meminfo()
    except KernelError as err:
        log.warning("cannot read meminfo: %s", err)
        mem = {}
    try:
        psi = procfs.pressure("memory")
        some, full = psi.get("some", {}).get("avg10", 0.0), psi.get("full", {}).get("avg10", 0.0)
        # the law takes the stall share since its last tick from these (policy/constraints.py)
        some_total, full_total = psi.get("some", {}).get("total"), psi.get("full", {}).get("total")
    except KernelError:
        some = full = 0.0
        some_total = full_total = None
    return HostObservation(mem_total_bytes=mem.get("MemTotal", 0), mem_available_bytes=mem.get("MemAvailable", 0),
                           psi_some_avg10=some, psi_full_avg10=full, psi_some_total_us=some_total,
                           psi_full_total_us=full_total, memory_budget_bytes=memory_budget_bytes)


class AutoPolicy:
    """The policy loop of one hostd (``table``: its sessions and pins, a host.sessions.SessionTable)."""

    def __init__(self, table, memory_budget_bytes: int | None = None, policy_path: str | None = None,
                 clock=time.monotonic, host_reader=read_host) -> None:
        self.table = table
        self.memory_budget_bytes = memory_budget_bytes  # --memory-budget (the policy file's budget wins)
        self.policy_path = policy_path or DEFAULT_POLICY_PATH
        self.clock = clock
        self.host_reader = host_reader
        self.config: PolicyConfig = load_config(self.policy_path)  # PolicyConfigError: hostd refuses to start
        self.state = PolicyState()
        self.decisions: Decisions | None = None
        self.ticks = 0

    def reload(self) -> bool:
        """Re-read the policy file (SIGHUP). A bad file: one line logged, the last good policy kept."""
        try:
            config = load_config(self.policy_path)
        except PolicyConfigError as err:
            log.error("policy file not reloaded, keeping the last good policy: %s", err)
            return False
        self.config = config
        log.info("policy reloaded from %s", config.source)
        return True

    def status_text(self) -> str:
        """The state and budget in one line, for ``status``."""
        d = self.decisions
        if d is None:
            return "policy auto: no decision yet"
        return f"{state_text(d)} (set by {d.constraint}); budget {budget_text(d)}, resident {format_size(d.resident_bytes)}" + (
            f"; {d.unmet_reason}" if d.unmet_reason else "")

    def report(self) -> PolicyReport:
        """``heapballoon policy explain --vms``: the last tick's reasoning."""
        d = self.decisions
        if d is None:
            return PolicyReport("auto", "starting", self.memory_budget_bytes, "no tick yet", self.ticks)
        return PolicyReport("auto", state_text(d), d.budget_bytes,
                            explain_text(d, self.ticks) + f"\npolicy file: {self.config.source}", self.ticks)

    def decide(self, readings: list[VMReading], host: HostObservation, now_s: float) -> Decisions:
        """The pure step: readings in, the engine's decisions out (and kept)."""
        obs = Observations(host=host, workloads=tuple(workload_of(r, self.config.sources) for r in readings))
        self.state, self.decisions = tick(self.config, self.state, obs, now_s)
        self.ticks += 1
        return self.decisions

    async def observe(self) -> list[VMReading]:
        vms = self.table.sessions()
        await virtioballoon.refresh(vms, 0.0)
        snaps = await asyncio.to_thread(lambda: [vmstatus.snapshot(v) for v in vms])
        readings = (reading_of(snap, self.table.pinned_bytes(snap.status.name)) for snap in snaps)
        return [r for r in readings if r is not None]

    async def apply(self, d: Decisions) -> None:
        for w in d.workloads:
            vm = self.table.get(w.key)
            if vm is None:
                continue
            vm.policy_reason = w.reason
            virtio = 0 if w.pinned else w.target_of("guest_free")
            if virtio != vm.virtio_target_bytes:
                try:
                    await virtioballoon.set_actual(vm, vm.memory_bytes - virtio)
                except ReclaimError as err:
                    log.info("VM %s: virtio balloon not set: %s", vm.name, err)
            if not w.pinned and w.target_of("heap") != vm.target_bytes:
                vm.target_bytes = w.target_of("heap")
                self.table.want_target(vm)  # queued on the VM's channel: never waits on its guest
            if w.changed:
                log.info("%s", workload_line(w))

    async def step(self) -> Decisions:
        readings = await self.observe()
        d = self.decide(readings, self.host_reader(self.memory_budget_bytes), self.clock())
        await self.apply(d)
        log.info("%s", summary_line(d))  # one line a tick; a VM's own line only when it changes
        if d.unmet_reason:
            log.debug("%s", d.unmet_reason)
        return d

    async def release(self) -> None:
        """hostd stops managing: every virtio balloon it inflated is let go (heap targets go
        back to the pins when hostd starts again)."""
        for vm in self.table.sessions():
            if vm.virtio_target_bytes > 0:
                try:
                    await virtioballoon.set_actual(vm, vm.memory_bytes)
                    log.info("VM %s: virtio balloon let go", vm.name)
                except ReclaimError as err:
                    log.info("VM %s: virtio balloon not let go: %s", vm.name, err)

    async def run(self) -> None:
        log.info("policy auto: budget %s, policy from %s, every %.1f s",
                 f"{self.memory_budget_bytes} bytes" if self.memory_budget_bytes is not None else "from the host",
                 self.config.source, self.config.interval_s)
        while True:
            try:
                await self.step()
            except (HeapballoonError, OSError) as err:
                log.warning("policy tick failed: %s", err)
            except Exception:  # noqa: BLE001 - the policy loop must survive anything
                log.exception("policy tick failed")
            await asyncio.sleep(self.config.interval_s)
