"""What a cell measures: a sampler thread (memory per service, the cgroup, swap, faults, PSI, the
manager's reclaimed bytes) and the per-cell summary that becomes one ``results.json`` entry.

Host-wide counters (``/proc/vmstat`` swap and major faults) are deltas from before the JVMs
start to the end of the load (swap counts include the zero-filled pages that kernels since
6.12 swap out without writing them, ``swpout_zero``: pre-touched, never-used heap is such); the
machine is shared, so they include other jobs' paging (the swap file is the experiment's, and
other jobs rarely swap). ``reaction_s`` is the time from pressure (the cgroup's usage first at
95 % of its limit) to the manager's first 32 MiB freed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from heapballoon.errors import KernelError
from heapballoon.experiment.loadgen import LoadResult
from heapballoon.linux.cgroup import MemoryCgroup
from heapballoon.linux.procfs import ProcFS

FREED_BYTES = 32 << 20
SERVICE_FIELDS = ["cell", "manager", "overcommit", "t_s", "service", "rss_bytes", "cgroup_bytes", "swap_bytes"]
HOST_FIELDS = ["cell", "manager", "overcommit", "t_s", "cgroup_bytes", "cgroup_limit_bytes", "cgroup_swap_bytes",
               "mem_available_bytes", "pswpin", "pswpout", "pgmajfault", "psi_some_avg10", "reclaimed_bytes"]


@dataclass
class Samples:
    service_rows: list[dict] = field(default_factory=list)
    host_rows: list[dict] = field(default_factory=list)


class Sampler:
    """Samples every ``interval_s`` on a thread from :meth:`start` to :meth:`stop`."""

    def __init__(self, label: dict, parent: MemoryCgroup, children: list[MemoryCgroup], pids: list[int],
                 reclaimed, interval_s: float, procfs: ProcFS | None = None) -> None:
        self.label = label
        self.parent = parent
        self.children = children
        self.pids = pids
        self.reclaimed = reclaimed
        self.interval_s = interval_s
        self.procfs = procfs or ProcFS()
        self.samples = Samples()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> "Sampler":
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> Samples:
        self._stop.set()
        self._thread.join(10)
        return self.samples

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except KernelError:
                pass
            if self._stop.wait(self.interval_s):
                return

    def sample(self) -> None:
        t = round(time.monotonic() - self.t0, 3)
        for i, (pid, child) in enumerate(zip(self.pids, self.children)):
            try:
                rss = self.procfs.rss_bytes(pid)
            except KernelError:
                rss = 0
            try:
                usage, swap = child.usage_bytes(), child.stat().get("swap", 0)
            except KernelError:
                usage, swap = 0, 0
            self.samples.service_rows.append({**self.label, "t_s": t, "service": f"svc{i}", "rss_bytes": rss,
                                              "cgroup_bytes": usage, "swap_bytes": swap})
        vm = self.procfs.vmstat()
        stat = self.parent.stat()
        self.samples.host_rows.append({
            **self.label, "t_s": t, "cgroup_bytes": self.parent.usage_bytes(),
            "cgroup_limit_bytes": stat.get("hierarchical_memory_limit", 0),
            "cgroup_swap_bytes": stat.get("total_swap", 0),
            "mem_available_bytes": self.procfs.meminfo().get("MemAvailable", 0),
            "pswpin": vm.get("pswpin", 0), "pswpout": vm.get("pswpout", 0), "pgmajfault": vm.get("pgmajfault", 0),
            "psi_some_avg10": psi_some_avg10(self.procfs),
            "reclaimed_bytes": self.reclaimed() or 0,
        })


def psi_some_avg10(procfs: ProcFS) -> float:
    """The host's memory PSI ``some avg10`` (percent); 0 on kernels without PSI."""
    try:
        return procfs.pressure("memory")["some"]["avg10"]
    except (KernelError, KeyError):
        return 0.0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def reaction_s(host_rows: list[dict], freed_bytes: int = FREED_BYTES) -> float | None:
    """Seconds from pressure (the cgroup's usage first at 95 % of its limit) to the manager having
    freed ``freed_bytes`` (its own count: verified balloon pages, or what a limit step reclaimed);
    0 when it freed them before the pressure came, None without pressure or without freeing."""
    onset = freed = None
    for row in host_rows:
        limit = row["cgroup_limit_bytes"]
        if not limit or limit >= 1 << 62:
            return None
        if onset is None and row["cgroup_bytes"] >= 0.95 * limit:
            onset = row["t_s"]
        if freed is None and row["reclaimed_bytes"] >= freed_bytes:
            freed = row["t_s"]
    if onset is None or freed is None:
        return None
    return round(max(0.0, freed - onset), 2)


def summarize(cell, cfg, load: LoadResult, samples: Samples, counters: dict, baseline_ok: int | None) -> dict:
    """One results.json entry; ``counters`` holds the deltas and totals the runner collected."""
    ok = [r.latency_ms for r in load.records if r.ok]
    host = samples.host_rows
    last = host[-1] if host else {}
    peak = max((r["cgroup_bytes"] for r in host), default=0)
    return {
        "manager": cell.manager, "mode": cfg.mode, "overcommit": cell.level_pct,
        "order": cell.index, "duration_s": cfg.cell_s,
        "memory_given_bytes": None if cell.manager == "unconstrained" else cfg.given_bytes(cell.level_pct),
        "committed_heap_bytes": cfg.services * cfg.heap_bytes,
        "requests_ok": len(ok), "requests_failed": load.errors(), "requests_dropped": load.dropped,
        "throughput_rps": round(len(ok) / cfg.cell_s, 1),
        "throughput_ratio": round(len(ok) / baseline_ok, 3) if baseline_ok else None,
        "latency_p50_ms": _round(percentile(ok, 0.50)), "latency_p99_ms": _round(percentile(ok, 0.99)),
        "service_p99_ms": counters.get("service_p99_ms"),
        # a service the cgroup OOM-killed is both a kill and a death: counted once
        "oom_events": counters["jvm_oom"] + counters["oom_kills"] + max(0, counters["died"] - counters["oom_kills"]),
        "jvm_oom_errors": counters["jvm_oom"], "cgroup_oom_kills": counters["oom_kills"],
        "services_died": counters["died"], "limit_hits": counters["limit_hits"],
        "swap_in_pages": counters["pswpin"] + counters["swpin_zero"],
        "swap_out_pages": counters["pswpout"] + counters["swpout_zero"],
        "swap_out_zero_pages": counters["swpout_zero"], "swap_in_zero_pages": counters["swpin_zero"],
        "major_faults": counters["pgmajfault"],
        "cgroup_major_faults": counters["cgroup_major_faults"],
        "peak_cgroup_bytes": peak,
        # the experiment's own swap (host-wide counters include other jobs' paging)
        "cgroup_swap_peak_bytes": max((r.get("cgroup_swap_bytes", 0) for r in host), default=0),
        "reclaimed_bytes_end": last.get("reclaimed_bytes", 0) if host else 0,
        "reclaimed_bytes_peak": max((r["reclaimed_bytes"] for r in host), default=0),
        "reaction_s": reaction_s(host), "manager_cpu_s": round(counters["manager_cpu_s"], 2),
        "data_checks": counters["data_checks"], "data_errors": counters["data_errors"],
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)
