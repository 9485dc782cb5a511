"""What hostd reports about one VM: ``status --json`` figures and Prometheus metrics.

This module owns the *reporting* side of hostd: :func:`vm_status` builds the status dict of a
VM (measured by hostd, never taken from the guest; see hostd's docstring for the figures),
:func:`pause_status` the pause part of it (``pause_breakdown_ms``: p50/p99/max of ``stop``,
``check``, ``punch``, ``cont`` and ``total`` over the VM's recent pauses; running totals), and
:class:`HostdCollector` serves the same pause figures to Prometheus (``hostd --metrics``),
read at every scrape from hostd's live state (prometheus_client, like the driver's metrics).
"""

from __future__ import annotations

import logging

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily

from heapballoon.errors import ReclaimError, UsageError
from heapballoon.host.guestram import PAGE_BYTES, GuestRam
from heapballoon.host.ksm import guest_rss_bytes
from heapballoon.host.pausestats import PARTS

log = logging.getLogger("heapballoon.hostd")
QUANTILES = (("p50", "0.5"), ("p99", "0.99"), ("max", "1"))


def pause_status(vm) -> dict:
    """The pause figures of ``vm`` (a hostd.VM): cheap, no I/O."""
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
    }


def vm_status(vm) -> dict:
    balloon_bytes = vm.balloon.pages * PAGE_BYTES
    reclaimed = resident = None
    if vm.reclaim == "ksm":
        try:
            smaps = guest_rss_bytes(vm.pid, vm.memory_bytes)
            resident, reclaimed = smaps["rss_bytes"], smaps["ksm_bytes"]
        except ReclaimError as err:
            log.info("VM %s: %s", vm.name, err)
    else:
        try:
            if vm.guest_ram is None and vm.alive():
                vm.guest_ram = GuestRam.open(vm.pid, vm.memory_bytes)
            if vm.guest_ram is not None:
                resident = vm.guest_ram.resident_bytes()
                reclaimed = vm.guest_ram.hole_bytes([(p * PAGE_BYTES, n * PAGE_BYTES) for p, n in vm.balloon])
        except (ReclaimError, OSError) as err:
            log.info("VM %s: cannot measure guest RAM: %s", vm.name, err)
    gs = vm.guest_status
    drift = (vm.balloon.pages - (reclaimed or 0) // PAGE_BYTES) if vm.reclaim != "ksm" else (
        gs.drift_pages if gs else 0)
    return {
        "name": vm.name, "pid": vm.pid, "memory_bytes": vm.memory_bytes, "reclaim": vm.reclaim,
        "target_bytes": vm.target_bytes, "balloon_bytes": balloon_bytes,
        "reclaimed_bytes": reclaimed, "host_resident_bytes": resident,
        **pause_status(vm),
        "drift_pages": drift, "connected": vm.channel is not None, "guest_hello": vm.hello is not None,
        "guest_balloon_bytes": gs.balloon_bytes if gs else None,
        "guest_target_bytes": gs.target_bytes if gs else None,
        "totals_pages": dict(vm.totals),
        "jvms": list(gs.jvms) if gs else [],
        "balloon_max_bytes": guest_balloon_max_bytes(gs.jvms) if gs else None,
    }


def guest_balloon_max_bytes(jvms) -> int:
    """The VM's largest balloon: the sum of its JVMs' (as the guest reported; bad values count 0)."""
    values = (j.get("balloon_max_bytes") for j in jvms)
    return sum(v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0)


class HostdCollector:
    """Prometheus view of a HostDaemon's VMs, read at scrape time (no copy of the state)."""

    def __init__(self, daemon) -> None:
        self.daemon = daemon

    def collect(self):
        vms = sorted(list(self.daemon.vms.values()), key=lambda v: v.name)
        parts = GaugeMetricFamily("heapballoon_vm_pause_part_ms",
                                  "VM pause parts over recent pauses (stop, check, punch, cont, total), ms",
                                  labels=["vm", "part", "quantile"])
        count = CounterMetricFamily("heapballoon_vm_pauses", "VM pauses for reclaim", labels=["vm"])
        total = CounterMetricFamily("heapballoon_vm_pause_seconds", "Time VMs spent paused for reclaim",
                                    labels=["vm"])
        per_gib = GaugeMetricFamily("heapballoon_vm_pause_ms_per_gib", "Pause time per GiB punched", labels=["vm"])
        punched = CounterMetricFamily("heapballoon_vm_punched_bytes", "Guest RAM bytes punched", labels=["vm"])
        for vm in vms:
            b = vm.pause_stats.breakdown()
            for part in PARTS:
                for key, q in QUANTILES:
                    parts.add_metric([vm.name, part, q], b[part][key])
            count.add_metric([vm.name], vm.pause_stats.pauses)
            total.add_metric([vm.name], vm.pause_stats.pause_ms_sum / 1000.0)
            per_gib.add_metric([vm.name], vm.pause_stats.pause_ms_per_gib)
            punched.add_metric([vm.name], vm.pause_stats.punched_bytes)
        yield from (parts, count, total, per_gib, punched)


def start_metrics(daemon, host: str, port: int, registry=None):
    """Register the collector and serve ``/metrics`` on host:port (a daemon thread); returns
    the HTTP server (``shutdown()`` it to stop)."""
    registry = registry or REGISTRY
    registry.register(HostdCollector(daemon))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as err:
        raise UsageError(f"cannot serve metrics on {host}:{port}: {err.strerror or err}") from err
    return server
