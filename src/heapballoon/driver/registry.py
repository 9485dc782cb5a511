"""The driver's JVM table: one record per connected (or recently connected) agent.

:class:`Registry` is the one owner of per-JVM state: the records (who is known and what each
said last), and for each connected agent its line channel and its outbox (what the tick sends
it). It does no I/O of its own. Records are keyed by pid and carry the process start time, so a
recycled pid is never mistaken for the old JVM. Owned by the driver's event loop thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from heapballoon import protocol
from heapballoon.driver import policy
from heapballoon.linux import cgroupid
from heapballoon.status import JvmStatus

if TYPE_CHECKING:
    from heapballoon.driver.peerlimits import Outbox
    from heapballoon.transport import LineChannel


@dataclass
class JVMRecord:
    pid: int
    starttime: int
    hello: protocol.Hello
    state: protocol.State
    connected: bool = True
    explicit_target_bytes: int | None = None
    sent: protocol.Target | None = None
    reclaimed_bytes: int = 0
    balloon_pages: int = 0
    released_pages: int = 0  # balloon pages not resident now (reclaimed_bytes is at most this)
    verified_epoch: int = -1  # chunks_epoch of the state the last published verification used
    drop_seen_s: float | None = None  # when a verification first showed fewer pages reclaimed
    verified_s: float | None = None  # when a verification was last published (driver clock)
    scan: object | None = None  # a verification under way (driver.verify.Scan), resumed next tick
    peak_bytes: int = 0  # the highest peak resident set (VmHWM) a verification saw
    given_back_bytes: int = 0  # the most it was ever seen below that peak (caps reclaimed_bytes)
    moved_chunks: int = 0
    drift_pages: int = 0
    events: dict[str, int] = field(default_factory=dict)
    last_seen_s: float = field(default_factory=time.monotonic)
    cgroup: str = ""  # its memory cgroup, read at hello (docs/containers.md)
    pod: str = ""  # its pod's namespace/name and its container's name, read at hello from the
    container: str = ""  # kubelet's log directories ("" unknown; linux/kubelet.py)

    @property
    def name(self) -> str:
        return self.hello.name or f"pid-{self.pid}"

    @property
    def excess_bytes(self) -> int:
        """Idle committed heap, never more than the agent says a balloon can hold."""
        s = self.state
        excess = policy.excess_bytes(s.heap_committed_bytes, s.live_bytes, s.heap_max_bytes, s.headroom_bytes)
        return min(excess, s.balloon_max_bytes) if s.balloon_max_bytes >= 0 else excess

    @property
    def balloon_max_bytes(self) -> int:
        """The largest balloon this JVM can hold now: the agent's figure (which knows when the
        old generation is the limit), else estimated from the heap's maximum."""
        s = self.state
        if s.balloon_max_bytes >= 0:
            return s.balloon_max_bytes
        return policy.room_bytes(s.heap_max_bytes, s.live_bytes, s.headroom_bytes)

    def status(self, target_bytes: int) -> JvmStatus:
        s = self.state
        ident = cgroupid.identify(self.cgroup)
        return JvmStatus(
            pid=self.pid, name=self.name, gc=self.hello.gc, jvm_version=self.hello.jvm_version,
            connected=self.connected, heap_max_bytes=s.heap_max_bytes, heap_committed_bytes=s.heap_committed_bytes,
            heap_used_bytes=s.heap_used_bytes, live_bytes=s.live_bytes, live_source=s.live_source,
            excess_bytes=self.excess_bytes, balloon_max_bytes=self.balloon_max_bytes, target_bytes=target_bytes,
            flaps=s.flaps, balloon_bytes=s.balloon_bytes, reclaimed_bytes=self.reclaimed_bytes, reclaim=s.reclaim,
            address_mode=self.hello.address_mode, chunks=len(s.chunks), gc_count=s.gc_count, gc_time_ms=s.gc_time_ms,
            moved_chunks=self.moved_chunks, drift_pages=self.drift_pages, events=MappingProxyType(dict(self.events)),
            cgroup=self.cgroup, container_id=ident.container_id, pod_uid=ident.pod_uid,
            container=self.container, pod=self.pod,
            soft_cleared=s.soft_cleared, headroom_bytes=s.headroom_bytes, alloc_bytes_per_s=s.alloc_bytes_per_s,
            promotion_reserve_bytes=s.promotion_reserve_bytes,
            gc_cpu_share=_share(s.gc_cpu_permille), gc_cpu_share_no_balloon=_share(s.gc_cpu_permille_no_balloon),
            pause_p99_ms=s.pause_p99_ms, pause_p99_ms_no_balloon=s.pause_p99_ms_no_balloon,
        )


def _share(permille: int) -> float:
    return permille / 1000 if permille >= 0 else -1.0


class Registry:
    """The JVM table. Its mutable state (all owned by the event loop thread): ``jvms`` (the
    records), ``_channels`` and ``_outboxes`` (pid → the connected agent's channel and outbox,
    set by :meth:`attach`, cleared by :meth:`detach`)."""

    def __init__(self) -> None:
        self.jvms: dict[int, JVMRecord] = {}
        self._channels: dict[int, LineChannel] = {}
        self._outboxes: dict[int, Outbox] = {}

    def attach(self, pid: int, chan: LineChannel, outbox: Outbox) -> None:
        """A session for ``pid`` is live: its channel and outbox replace any older one."""
        self._channels[pid] = chan
        self._outboxes[pid] = outbox

    def detach(self, pid: int, chan: LineChannel, outbox: Outbox) -> bool:
        """A session ended: forget its channel and outbox unless a newer session holds the pid.
        True when ``chan`` was the live one (the JVM is now disconnected)."""
        if self._outboxes.get(pid) is outbox:
            del self._outboxes[pid]
        if self._channels.get(pid) is chan:
            del self._channels[pid]
            return True
        return False

    def channel(self, pid: int) -> LineChannel | None:
        """The connected agent's channel, or None."""
        return self._channels.get(pid)

    def outbox(self, pid: int) -> Outbox | None:
        """The connected agent's outbox, or None."""
        return self._outboxes.get(pid)

    def channels(self) -> list[LineChannel]:
        """Every live agent channel (a copy)."""
        return list(self._channels.values())

    def upsert(self, pid: int, starttime: int, hello: protocol.Hello) -> JVMRecord:
        old = self.jvms.get(pid)
        rec = JVMRecord(pid=pid, starttime=starttime, hello=hello, state=hello.state)
        if old is not None and old.starttime == starttime:
            rec.explicit_target_bytes = old.explicit_target_bytes
            rec.events = old.events
            rec.peak_bytes = old.peak_bytes
            rec.given_back_bytes = old.given_back_bytes
        self.jvms[pid] = rec
        return rec

    def get(self, pid: int) -> JVMRecord | None:
        return self.jvms.get(pid)

    def remove(self, pid: int) -> JVMRecord | None:
        return self.jvms.pop(pid, None)

    def __iter__(self):
        return iter(list(self.jvms.values()))

    def __len__(self) -> int:
        return len(self.jvms)
