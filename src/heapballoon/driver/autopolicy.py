"""Process mode's automatic policy (``heapballoon daemon --policy auto``): the node's JVMs as
workloads of the shared policy engine (:mod:`heapballoon.policy`).

This module owns the adapter between the driver and the pure law: it builds
:class:`~heapballoon.policy.Observations` from the registry and the kernel readers (each JVM's
RSS through procfs, MemAvailable, PSI, the limited memory cgroups each JVM is in, v1 or v2:
each one's limit binds its own JVMs, policy/groups.py), measures each JVM's activity, calls
:func:`~heapballoon.policy.tick`, and keeps the last decisions for the driver, ``status`` and
``policy explain``. It also owns the policy file: loaded at start, reloaded on SIGHUP, and a bad
file keeps the last good policy.

Activity. The agent reports no allocation rate, so it is derived from what each ``state``
carries: between two collections, heap used rises by what the application allocates (the
balloon's own growth taken out, and a shrinking balloon's chunks are garbage, not
allocation); across a collection (``gc_count`` moved) the allocation since is what heap used
(balloon excluded) stands above the heap's usual level right after a collection (the lowest
of the last few post-collection samples: live data, survivors, old garbage). Averaged over
the last ``RATE_WINDOW_S``, the active fraction is the share of its heap the JVM allocates in
``ACTIVE_WINDOW_S``: a JVM that churns its whole heap every 10 s is fully active, one that
allocates a few MiB a second is idle.
"""

from __future__ import annotations

import logging
from collections import deque

from heapballoon import protocol
from heapballoon.errors import KernelError
from heapballoon.linux.cgroupid import identify
from heapballoon.linux.cgroupmem import CgroupMemory
from heapballoon.linux.procfs import ProcFS
from heapballoon.status import PolicyReport
from heapballoon.policy import (
    DEFAULT_POLICY_PATH, Decisions, GroupObservation, HostObservation, Observations, PolicyConfig, PolicyConfigError,
    PolicyState, SourceObservation, WorkloadDecision, WorkloadObservation, explain_text, load_config, state_text,
    summary_line, tick, workload_line,
)

log = logging.getLogger("heapballoon.policy")
RATE_WINDOW_S = 5.0
MIN_SPAN_S = 2.0  # a rate from a shorter span (a JVM just registered) is not trusted yet
ACTIVE_WINDOW_S = 10.0


POST_GC_SAMPLES = 8


def common_cgroup(groups) -> str:
    """The deepest cgroup path that contains every one of ``groups`` ("/" when only the root)."""
    split = [[p for p in g.strip("/").split("/") if p] for g in groups]
    common: list[str] = []
    for parts in zip(*split):
        if any(p != parts[0] for p in parts):
            break
        common.append(parts[0])
    return "/" + "/".join(common)


def allocated_between(a: protocol.State, b: protocol.State, after_gc_bytes: int | None = None) -> int:
    """Bytes the application allocated between two states of one JVM (a lower bound).
    ``after_gc_bytes``: the heap's usual used bytes (balloon excluded) right after a collection."""
    if b.gc_count == a.gc_count:
        # A balloon that grew raised heap used by its own size; one that shrank left its chunks
        # as garbage, which is no allocation either.
        return max(0, b.heap_used_bytes - a.heap_used_bytes - max(0, b.balloon_bytes - a.balloon_bytes))
    base = b.live_bytes if after_gc_bytes is None else after_gc_bytes
    return max(0, b.heap_used_bytes - b.balloon_bytes - base)


class ActivityMeter:
    """One JVM's allocation rate and GC cost over the last few seconds, from its successive states."""

    def __init__(self) -> None:
        self.last: protocol.State | None = None
        self.total_bytes = 0
        self.samples: deque[tuple[float, int, int]] = deque()  # (time, bytes allocated, GC ms), cumulative
        self.after_gc: deque[int] = deque(maxlen=POST_GC_SAMPLES)

    def update(self, state: protocol.State, now_s: float) -> None:
        """Every state the agent sends (and the hello's): the more samples, the better."""
        if state is self.last:
            return
        if self.last is not None:
            if state.gc_count != self.last.gc_count:
                self.after_gc.append(max(0, state.heap_used_bytes - state.balloon_bytes))
            self.total_bytes += allocated_between(self.last, state, min(self.after_gc, default=None))
        self.last = state
        self.samples.append((now_s, self.total_bytes, state.gc_time_ms))
        while len(self.samples) > 2 and now_s - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()

    def rate_bytes_per_s(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, b0, _), (t1, b1, _) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 - t0 >= MIN_SPAN_S else None

    def gc_cost(self) -> float | None:
        """Share of wall time spent in collections over the window (the agent's gc_time_ms),
        0..1; None until MIN_SPAN_S of states."""
        if len(self.samples) < 2:
            return None
        (t0, _, g0), (t1, _, g1) = self.samples[0], self.samples[-1]
        if t1 - t0 < MIN_SPAN_S:
            return None
        return min(1.0, max(0, g1 - g0) / 1000.0 / (t1 - t0))

    def active_fraction(self, heap_bytes: int) -> float | None:
        rate = self.rate_bytes_per_s()
        if rate is None:
            return None
        return min(1.0, rate * ACTIVE_WINDOW_S / max(1, heap_bytes))


class AutoPolicy:
    """The policy engine run for one node driver. Owned by the driver's event loop thread."""

    def __init__(self, policy_file: str | None = None, memory_budget_bytes: int | None = None, *,
                 procfs: ProcFS | None = None, cgroup: CgroupMemory | None = None) -> None:
        self.path = policy_file or DEFAULT_POLICY_PATH
        self.config: PolicyConfig = load_config(self.path)  # a bad file at start is the CLI's error
        self.memory_budget_bytes = memory_budget_bytes
        self.procfs = procfs or ProcFS()
        self.cgroup = cgroup or CgroupMemory()
        self.state = PolicyState()
        self.decisions: Decisions | None = None
        self.by_key: dict[str, WorkloadDecision] = {}
        self.meters: dict[int, ActivityMeter] = {}
        self.groups: dict[tuple[int, int], str | None] = {}
        self.ticks = 0
        self.last_tick_s: float | None = None
        self.due = True  # tick at the next step (a reload, a pin); a new JVM waits for the interval

    # ------------------------------------------------------------------ the file

    def reload(self) -> bool:
        """SIGHUP: read the policy file again; a bad one is one log line and changes nothing."""
        try:
            config = load_config(self.path)
        except PolicyConfigError as err:
            log.error("%s; keeping the last good policy (from %s)", err, self.config.source)
            return False
        self.config = config
        self.due = True
        log.info("policy reloaded from %s: budget %s", self.path,
                 "none" if config.budget_set and config.budget_bytes is None else
                 (config.budget_bytes if config.budget_set else "from --memory-budget"))
        return True

    # ------------------------------------------------------------------ observing

    def _host(self, pids: list[tuple[int, int]]) -> HostObservation:
        mem = self.procfs.meminfo()
        some = full = 0.0
        some_total = full_total = None
        try:
            psi = self.procfs.pressure("memory")
            some, full = psi.get("some", {}).get("avg10", 0.0), psi.get("full", {}).get("avg10", 0.0)
            some_total, full_total = psi.get("some", {}).get("total"), psi.get("full", {}).get("total")
        except KernelError:
            pass  # no PSI on this kernel: free memory alone decides
        limit = usage = None
        groups = {self._group_of(key) for key in pids}
        # The limit that binds every JVM: the nearest one at or above their common ancestor
        # (JVMs in sibling groups under a limited parent share that parent's limit).
        if groups and None not in groups and (common := common_cgroup(groups)) != "/":
            try:
                found = self.cgroup.nearest_limit(common)
                if found is not None:
                    limit, usage = found.limit_bytes, found.usage_bytes
            except KernelError:
                limit = usage = None
        return HostObservation(
            mem_total_bytes=mem.get("MemTotal", 0), mem_available_bytes=mem.get("MemAvailable", mem.get("MemFree", 0)),
            psi_some_avg10=some, psi_full_avg10=full, psi_some_total_us=some_total, psi_full_total_us=full_total,
            cgroup_limit_bytes=limit, cgroup_usage_bytes=usage,
            memory_budget_bytes=self.memory_budget_bytes, groups=self._limited_groups(pids))

    def _limited_groups(self, pids: list[tuple[int, int]]) -> tuple[GroupObservation, ...]:
        """Every limited memory cgroup some JVM is in, with the JVMs in it, deepest first. A
        cgroup that cannot be read this tick is left out (logged at debug): a container that
        just went away."""
        found: dict[str, tuple[int, int, set[str]]] = {}
        read: dict[str, list] = {}  # each cgroup's limits read once a tick, however many JVMs share it
        for key in pids:
            path = self.groups.get(key)
            if not path:
                continue
            if path not in read:
                try:
                    read[path] = self.cgroup.limits(path)
                except KernelError as err:
                    log.debug("cgroup of pid %d: %s", key[0], err)
                    read[path] = []
            for g in read[path]:
                found.setdefault(g.path, (g.limit_bytes, g.usage_bytes, set()))[2].add(str(key[0]))
        order = sorted(found, key=lambda p: (-p.count("/"), p))
        return tuple(GroupObservation(p, found[p][0], found[p][1], tuple(sorted(found[p][2]))) for p in order)

    def _group_of(self, key: tuple[int, int]) -> str | None:
        """A JVM's memory cgroup path (read once: a process does not change containers)."""
        if key not in self.groups:
            try:
                self.groups[key] = self.procfs.cgroup(key[0]) or None
            except KernelError:
                self.groups[key] = None
        return self.groups[key]

    def observe(self, records, now_s: float) -> Observations:
        workloads = []
        alive = set()
        for rec in records:
            if not rec.connected:
                continue
            try:
                rss = self.procfs.rss_bytes(rec.pid)
            except KernelError:
                continue  # gone: the driver reaps it
            alive.add(rec.pid)
            meter = self.meters.setdefault(rec.pid, ActivityMeter())
            meter.update(rec.state, now_s)  # the same state again is not a new sample
            s = rec.state
            current = rec.sent.target_bytes if rec.sent is not None else s.target_bytes
            ids = identify(rec.cgroup)
            workloads.append(WorkloadObservation(
                key=str(rec.pid), name=rec.name, kind="jvm", resident_bytes=rss,
                sources=(SourceObservation("heap", reclaimable_bytes=rec.balloon_max_bytes,
                                           held_bytes=rec.reclaimed_bytes,
                                           target_bytes=current),),
                active_fraction=meter.active_fraction(max(s.heap_committed_bytes, s.heap_max_bytes)),
                pinned_target_bytes=rec.explicit_target_bytes,
                # a heap the JVM shrank (self-sizing) is memory found (policy/law.py, 1.)
                uncommitted_bytes=max(0, s.heap_max_bytes - s.heap_committed_bytes) if s.heap_committed_bytes else 0,
                gc_cost=meter.gc_cost(),
                # the policy file's pod/container rules: what the driver read at hello
                pod=rec.pod, pod_uid=ids.pod_uid, container=rec.container, container_id=ids.container_id))
        for pid in list(self.meters):
            if pid not in alive:
                del self.meters[pid]
        for key in [k for k in self.groups if k[0] not in alive]:
            del self.groups[key]
        pids = [(r.pid, r.starttime) for r in records if r.pid in alive]
        return Observations(self._host(pids), tuple(workloads))

    def on_state(self, pid: int, state: protocol.State, now_s: float) -> None:
        """An agent's hello or state arrived: a sample of its activity."""
        self.meters.setdefault(pid, ActivityMeter()).update(state, now_s)

    # ------------------------------------------------------------------ deciding

    def maybe_tick(self, records, now_s: float) -> bool:
        """Run the law if its interval has passed (or something asked for it). True if it ran."""
        if not self.due and self.last_tick_s is not None and now_s - self.last_tick_s < self.config.interval_s:
            return False
        obs = self.observe(records, now_s)
        self.state, self.decisions = tick(self.config, self.state, obs, now_s)
        self.by_key = self.decisions.by_key()
        self.ticks += 1
        self.last_tick_s = now_s
        self.due = False
        log.info("%s", summary_line(self.decisions))
        for w in self.decisions.workloads:
            if w.changed:
                log.info("policy: %s", workload_line(w))
            else:
                log.debug("policy: %s", workload_line(w))
        return True

    def targets(self, records) -> dict[int, int]:
        """Every connected JVM's target: the last decision, a pin, or (not decided yet) what it
        holds, so a JVM keeps its balloon across a daemon restart until the law has spoken."""
        decided = self.by_key
        out = {}
        for rec in records:
            if not rec.connected:
                continue
            if rec.explicit_target_bytes is not None:
                out[rec.pid] = rec.explicit_target_bytes
            elif (w := decided.get(str(rec.pid))) is not None:
                out[rec.pid] = w.target_of("heap")
            else:
                out[rec.pid] = rec.sent.target_bytes if rec.sent is not None else rec.state.target_bytes
        return out

    def reason(self, pid: int) -> str:
        w = self.by_key.get(str(pid))
        return w.reason if w is not None else "not decided yet"

    def budget_bytes(self) -> int | None:
        if self.decisions is not None:
            return self.decisions.budget_bytes
        return self.config.budget_bytes if self.config.budget_set else self.memory_budget_bytes

    def report(self) -> PolicyReport:
        if self.decisions is None:
            return PolicyReport("auto", "starting", self.budget_bytes(), "no tick yet", self.ticks)
        return PolicyReport("auto", state_text(self.decisions), self.decisions.budget_bytes,
                            explain_text(self.decisions, self.ticks) + f"\npolicy file: {self.config.source}",
                            self.ticks)
