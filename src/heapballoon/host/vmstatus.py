"""What hostd reports about one VM: ``status --json`` figures and Prometheus metrics.

This module owns the *reporting* side of hostd: :func:`snapshot` makes a session's typed,
frozen :class:`VMSnapshot` (its ``status`` a :class:`~heapballoon.status.VMStatus`, measured
by hostd, never taken from the guest; see hostd's docstring for the figures), which the
control socket's ``status``, the policy (autopolicy.py) and the metrics all read;
:func:`pause_status` is the pause part of it (``pause_breakdown_ms``: p50/p99/max of ``stop``,
``check``, ``punch``, ``cont`` and ``total`` over the VM's recent pauses; running totals), and
:class:`HostdCollector` serves the figures to Prometheus (``hostd --metrics``), from a cheap
snapshot taken at every scrape (prometheus_client, like the driver's metrics).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily

from heapballoon.errors import ReclaimError, UsageError
from heapballoon.units import PAGE_BYTES
from heapballoon.host.ksm import guest_rss_bytes
from heapballoon.host.pausestats import PARTS
from heapballoon.host.virtioballoon import BalloonReading
from heapballoon.status import VMStatus

log = logging.getLogger("heapballoon.hostd")
QUANTILES = (("p50", "0.5"), ("p99", "0.99"), ("max", "1"))
# A balloon of more intervals than this is not measured while status waits (a hole count costs
# ~1 µs an interval; a guest's removes may split a balloon up to MAX_BALLOON_INTERVALS): its
# reclaimed_bytes is counted in the background and is then up to a few seconds old.
HOLES_AT_ONCE_MAX_INTERVALS = 65536
HOLES_MIN_AGE_S = 5.0  # a background count is started again at most this often per VM
_holes_worker = ThreadPoolExecutor(1, thread_name_prefix="hostd-holes")  # one for all: bounded


class HoleCount:
    """The last background count of one VM's balloon holes (bytes), and the one under way."""

    def __init__(self) -> None:
        self.bytes: int | None = None
        self.done_at = float("-inf")
        self.future: Future | None = None

    def get(self, vm) -> int | None:
        """The latest count (None before the first); starts another when due. Never waits."""
        if self.future is not None and self.future.done():
            try:
                self.bytes = self.future.result()
            except (ReclaimError, OSError) as err:
                log.info("VM %s: cannot measure guest RAM: %s", vm.name, err)
            self.future, self.done_at = None, time.monotonic()
        if self.future is None and time.monotonic() - self.done_at >= HOLES_MIN_AGE_S:
            ram, balloon = vm.guest_ram, vm.balloon
            self.future = _holes_worker.submit(
                lambda: ram.hole_bytes([(p * PAGE_BYTES, n * PAGE_BYTES) for p, n in balloon]))
        return self.bytes


def reclaimed_bytes(vm) -> int | None:
    """Bytes of the VM's balloon that are holes in its RAM file: counted now for a balloon of
    up to HOLES_AT_ONCE_MAX_INTERVALS intervals, else the latest background count."""
    if len(vm.balloon) <= HOLES_AT_ONCE_MAX_INTERVALS:
        return vm.guest_ram.hole_bytes([(p * PAGE_BYTES, n * PAGE_BYTES) for p, n in vm.balloon])
    if not isinstance(vm.holes, HoleCount):
        vm.holes = HoleCount()
    return vm.holes.get(vm)


def cont_owed(vm) -> bool:
    """hostd paused ``vm`` and its cont failed; retried until the VM runs (host/contdebt.py)."""
    debt = getattr(vm, "cont_debt", None)
    return bool(debt is not None and debt.owed)


def pause_status(vm) -> dict:
    """The pause figures of ``vm`` (a VMSession): cheap, no I/O."""
    stats = vm.pause_stats
    totals = stats.totals()
    b = stats.breakdown()
    return {
        "pause_ms_p50": b["total"]["p50"], "pause_ms_p99": b["total"]["p99"],
        "pause_breakdown_ms": b,
        "pauses": stats.pauses, "pause_ms_sum": round(stats.pause_ms_sum, 3),
        "pause_ms_per_gib": round(stats.pause_ms_per_gib, 1),
        "guest_pause_ms_sum": round(stats.guest_ms_sum, 3),
        "guest_pause_ms_per_gib": round(stats.guest_ms_per_gib, 1),
        "pause_window": len(totals),
        "engine": vm.engine,
        "soft_dirty": vm.soft_dirty,
        # hostd paused the VM and its cont failed: retried until it runs (contdebt.py)
        "cont_owed": cont_owed(vm),
    }


@dataclass(frozen=True)
class VMSnapshot:
    """One VM at one moment, as hostd measured it: what status, the metrics and the policy read.
    ``status`` is the figures as ``status`` shows them (``pinned`` is the control socket's to
    set); ``virtio`` the last virtio-balloon reading; ``punched_bytes`` all bytes punched."""

    status: VMStatus
    virtio: BalloonReading | None
    punched_bytes: int


def _measure(vm) -> tuple[int | None, int | None]:
    """(host-resident bytes, reclaimed bytes) of ``vm``, opening its RAM file if needed."""
    if vm.reclaim in ("ksm", "virtio"):
        try:
            smaps = guest_rss_bytes(vm.pid, vm.memory_bytes)
        except ReclaimError as err:
            log.info("VM %s: %s", vm.name, err)
            return None, None
        if vm.reclaim == "ksm":
            return smaps["rss_bytes"], smaps["ksm_bytes"]
        return smaps["rss_bytes"], virtio_reclaimed_bytes(vm, smaps["rss_bytes"])
    try:
        ram = vm.ram.current or (vm.ram.get() if vm.alive() else None)  # the VM's one owner opens it
        if ram is not None:
            return ram.resident_bytes(), reclaimed_bytes(vm)
    except (ReclaimError, OSError) as err:
        log.info("VM %s: cannot measure guest RAM: %s", vm.name, err)
    return None, None


def virtio_reclaimed_bytes(vm, rss_bytes: int) -> int | None:
    """A ``--reclaim virtio`` VM (issue 17's third way): its guest frees balloon pages itself and
    free page reporting hands them back, so hostd sees no page numbers. What its JVM balloons
    freed is the guest's word, believed only up to what the host measures as gone: guest RAM
    that is not resident and not in the virtio balloon (None before the guest said anything)."""
    gs, r = vm.guest_status, vm.virtio
    if gs is None:
        return None
    virtio_held = r.held_bytes(vm.memory_bytes) if r else 0
    return max(0, min(gs.balloon_bytes, vm.memory_bytes - rss_bytes - virtio_held))


def snapshot(vm, measure: bool = True) -> VMSnapshot:
    """The VM's snapshot. ``measure``: resident and reclaimed bytes counted now (opens the RAM
    file, counts holes: a worker thread's job); else the cheap view a metrics scrape takes
    (resident from an already open file, reclaimed unknown)."""
    resident, reclaimed = _measure(vm) if measure else (_resident_bytes(vm), None)
    gs, r = vm.guest_status, vm.virtio
    drift = (vm.balloon.pages - (reclaimed or 0) // PAGE_BYTES) if vm.reclaim == "pfn" else (
        gs.drift_pages if gs else 0)
    p = pause_status(vm)
    p["pause_breakdown_ms"] = MappingProxyType({k: MappingProxyType(v) for k, v in p["pause_breakdown_ms"].items()})
    status = VMStatus(
        name=vm.name, pid=vm.pid, memory_bytes=vm.memory_bytes, reclaim=vm.reclaim,
        target_bytes=vm.target_bytes, balloon_bytes=vm.balloon.pages * PAGE_BYTES,
        reclaimed_bytes=reclaimed, host_resident_bytes=resident, **p,
        drift_pages=drift, connected=vm.channel is not None, guest_hello=vm.hello is not None,
        guest_balloon_bytes=gs.balloon_bytes if gs else None,
        guest_target_bytes=gs.target_bytes if gs else None,
        totals_pages=MappingProxyType(dict(vm.totals)), jvms=vm.guest_jvms,
        balloon_max_bytes=guest_balloon_max_bytes(vm.guest_jvms) if gs else None,
        guest_free_bytes=r.free_bytes if r else None,
        guest_available_bytes=r.available_bytes if r else None,
        virtio_actual_bytes=r.actual_bytes if r else None,
        virtio_target_bytes=vm.virtio_target_bytes, policy_reason=vm.policy_reason)
    return VMSnapshot(status, r, vm.pause_stats.punched_bytes)


def guest_balloon_max_bytes(jvms) -> int:
    """The VM's largest balloon: the sum of its JVMs' (as the guest reported; bad values count 0)."""
    return sum(j.balloon_max_bytes for j in jvms if j.balloon_max_bytes > 0)


class HostdCollector:
    """Prometheus view of hostd's VMs, read at scrape time: a cheap snapshot of each session
    (``sessions``: a callable giving them, e.g. a SessionTable's ``sessions``) and the policy's
    last decisions (``policy``: an AutoPolicy or None)."""

    def __init__(self, sessions, policy=None) -> None:
        self.sessions = sessions
        self.policy = policy

    def collect(self):
        snaps = [snapshot(vm, measure=False) for vm in sorted(self.sessions(), key=lambda v: v.name)]
        parts = GaugeMetricFamily("heapballoon_vm_pause_part_ms",
                                  "VM pause parts over recent pauses (stop, check, punch, cont, total), ms",
                                  labels=["vm", "part", "quantile"])
        count = CounterMetricFamily("heapballoon_vm_pauses", "VM pauses for reclaim", labels=["vm"])
        total = CounterMetricFamily("heapballoon_vm_pause_seconds", "Time VMs spent paused for reclaim",
                                    labels=["vm"])
        per_gib = GaugeMetricFamily("heapballoon_vm_pause_ms_per_gib", "Pause time per GiB punched", labels=["vm"])
        punched = CounterMetricFamily("heapballoon_vm_punched_bytes", "Guest RAM bytes punched", labels=["vm"])
        owed = GaugeMetricFamily("heapballoon_vm_cont_owed",
                                 "1 while hostd's own pause of the VM could not be ended (its cont is retried)",
                                 labels=["vm"])
        for snap in snaps:
            st = snap.status
            for part in PARTS:
                for key, q in QUANTILES:
                    parts.add_metric([st.name, part, q], st.pause_breakdown_ms[part][key])
            count.add_metric([st.name], st.pauses)
            total.add_metric([st.name], st.pause_ms_sum / 1000.0)
            per_gib.add_metric([st.name], st.pause_ms_per_gib)
            punched.add_metric([st.name], snap.punched_bytes)
            owed.add_metric([st.name], 1.0 if st.cont_owed else 0.0)
        yield from (parts, count, total, per_gib, punched, owed)
        yield from vm_memory_metrics(snaps)
        yield from policy_metrics(self.policy)


def _resident_bytes(vm) -> int | None:
    """Host-resident guest RAM without opening anything new (a scrape does no reclaim work). A
    ``ksm`` or ``virtio`` VM has no RAM file of ours: the Rss of QEMU's RAM mapping (smaps, read
    only), as the measured path reads it."""
    if vm.reclaim in ("ksm", "virtio"):
        try:
            return guest_rss_bytes(vm.pid, vm.memory_bytes)["rss_bytes"]
        except ReclaimError:
            return None
    if vm.guest_ram is None:
        return None
    try:
        return vm.guest_ram.resident_bytes()
    except (ReclaimError, OSError):
        return None


def vm_memory_metrics(snaps):
    """Per VM: host-resident RAM, the guest's free/available memory and the virtio balloon."""
    gauges = {key: GaugeMetricFamily(f"heapballoon_vm_{key}", doc, labels=["vm"]) for key, doc in (
        ("host_resident_bytes", "Guest RAM resident on the host (allocated blocks of the RAM memfd; for ksm and virtio "
                                "VMs the Rss of QEMU's RAM mapping)"),
        ("guest_free_bytes", "Free guest memory (virtio-balloon statistics)"),
        ("guest_available_bytes", "Available guest memory (virtio-balloon statistics)"),
        ("virtio_actual_bytes", "Guest RAM the virtio balloon leaves the guest"),
        ("virtio_target_bytes", "What hostd asked the virtio balloon to take from the guest"),
        ("heap_target_bytes", "The VM's heap balloon target (its JVMs', through the guest channel)"),
    )}
    for snap in snaps:
        st = snap.status
        for key, value in (("host_resident_bytes", st.host_resident_bytes),
                           ("guest_free_bytes", st.guest_free_bytes),
                           ("guest_available_bytes", st.guest_available_bytes),
                           ("virtio_actual_bytes", st.virtio_actual_bytes),
                           ("virtio_target_bytes", st.virtio_target_bytes),
                           ("heap_target_bytes", st.target_bytes)):
            if value is not None:
                gauges[key].add_metric([st.name], value)
    yield from gauges.values()


def policy_metrics(policy):
    """``hostd --policy auto``: the memory state, the budget, and each VM's targets with the
    reason as a label (one short string per VM and source, so the label set stays small)."""
    if policy is None or policy.decisions is None:
        return
    from heapballoon.policy.model import STATES

    d = policy.decisions
    state = GaugeMetricFamily("heapballoon_policy_state", "The memory state (1 for the current one)",
                              labels=["state", "constraint"])
    for s in STATES:
        state.add_metric([s, d.constraint if s == d.state else ""], 1.0 if s == d.state else 0.0)
    yield state
    if d.budget_bytes is not None:
        yield GaugeMetricFamily("heapballoon_policy_budget_bytes", "The memory budget in force", value=d.budget_bytes)
    for key, doc in (("resident_bytes", "Managed VMs' host-resident total"),
                     ("held_bytes", "What the VMs' balloons hold now"),
                     ("want_bytes", "What the balloons should hold in total"),
                     ("find_bytes", "Still to find"),
                     ("unmet_bytes", "What no source can give (floors, reservations, pins)")):
        yield GaugeMetricFamily(f"heapballoon_policy_{key}", doc, value=getattr(d, key))
    target = GaugeMetricFamily("heapballoon_policy_target_bytes", "Each VM's target per source, with the reason",
                               labels=["vm", "source", "reason", "pinned"])
    for w in d.workloads:
        for src in w.sources:
            target.add_metric([w.name, src.kind, w.reason, "1" if w.pinned else "0"], src.target_bytes)
    yield target


def start_metrics(table, policy, host: str, port: int, registry=None):
    """Register the collector of ``table``'s sessions (a SessionTable) and ``policy`` (or None)
    and serve ``/metrics`` on host:port (a daemon thread); returns the HTTP server
    (``shutdown()`` it to stop)."""
    registry = registry or REGISTRY
    registry.register(HostdCollector(table.sessions, policy))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as err:
        raise UsageError(f"cannot serve metrics on {host}:{port}: {err.strerror or err}") from err
    return server
