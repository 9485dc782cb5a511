"""Typed payloads of the control replies: the driver's ``status``, ``set_target`` and
``policy_explain``, hostd's ``status``.

This module owns their shape. The daemon builds them as frozen dataclasses and sends
``to_dict()`` as a reply's ``body``; the CLI turns a body back with ``from_dict``, which
validates every field at the boundary and raises :class:`ProtocolError` naming the first bad
one. Unknown extra fields are ignored, as everywhere in the protocol (docs/protocol.md).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

from heapballoon.errors import ProtocolError

MAX_JVMS = 65536


@functools.cache
def _fields(cls) -> tuple[tuple[dataclasses.Field, Any], ...]:
    """Each field of ``cls`` with its resolved annotation (resolving is slow: once per class)."""
    hints = typing.get_type_hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls))


def _check(cls, d: Any, where: str) -> dict:
    """The fields of dataclass ``cls`` from ``d``, each checked against its annotation."""
    if not isinstance(d, dict):
        raise ProtocolError(f"{where} must be an object")
    out = {}
    for f, kind in _fields(cls):
        if f.name not in d:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise ProtocolError(f"{where}: missing field {f.name!r}")
        value = d[f.name]
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = _is_int(value)
        elif kind == Optional[int]:  # not `int | None`: evaluated at run time, and the guest runs 3.9
            ok = value is None or _is_int(value)
        elif kind is float:
            ok = _is_number(value)
            value = float(value) if ok else value
        elif kind is str:
            ok = isinstance(value, str) and len(value) <= 4096
        elif kind == tuple[JvmStatus, ...]:
            ok = isinstance(value, list) and len(value) <= MAX_JVMS
            value = tuple(JvmStatus.from_dict(j) for j in value) if ok else value
        elif kind == Mapping[str, Mapping[str, float]]:
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, dict) and all(isinstance(q, str) and _is_number(x)
                                                                   for q, x in v.items()) for k, v in value.items())
            value = MappingProxyType({k: MappingProxyType(dict(v)) for k, v in value.items()}) if ok else value
        else:  # Mapping[str, int]
            ok = isinstance(value, dict) and all(isinstance(k, str) and _is_int(v) for k, v in value.items())
            value = MappingProxyType(dict(value)) if ok else value
        if not ok:
            raise ProtocolError(f"{where}: field {f.name!r} has a bad value {value!r:.60}")
        out[f.name] = value
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _plain_value(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _plain_value(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [x.to_dict() if hasattr(x, "to_dict") else x for x in v]
    return v


def _plain(obj) -> dict:
    return {f.name: _plain_value(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


@dataclass(frozen=True)
class JvmStatus:
    """One JVM as the driver sees it (a ``jvms[]`` entry of ``status``)."""

    pid: int
    name: str
    gc: str
    jvm_version: str
    connected: bool
    heap_max_bytes: int
    heap_committed_bytes: int
    heap_used_bytes: int
    live_bytes: int
    live_source: str
    excess_bytes: int
    balloon_max_bytes: int
    target_bytes: int
    flaps: int
    balloon_bytes: int
    reclaimed_bytes: int
    reclaim: str
    address_mode: str
    chunks: int
    gc_count: int
    gc_time_ms: int
    moved_chunks: int
    drift_pages: int
    events: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    target_reason: str = ""  # --policy auto: why this target (shares, activity, floor, pinned)
    # Identity (docs/containers.md): the JVM's memory cgroup, and what its path names.
    cgroup: str = ""
    container_id: str = ""  # the runtime's 64-hex container id
    pod_uid: str = ""  # the Kubernetes pod's UID
    container: str = ""  # the container's name, where the kubelet's log directories say it
    pod: str = ""  # the pod's namespace/name, likewise (docs/kubernetes.md)
    # Issue 15: times the JVM cleared the balloon's soft references itself (a failure: it was one
    # step from an OutOfMemoryError); the headroom the agent keeps and the allocation rate it follows;
    # the GC threads' share of the CPUs the JVM may use and the pause p99, with and without a balloon (-1: not
    # measured yet).
    soft_cleared: int = 0
    headroom_bytes: int = 0
    alloc_bytes_per_s: int = 0
    promotion_reserve_bytes: int = 0  # Parallel: old-generation space its promotion estimate needs
    gc_cpu_share: float = -1.0
    gc_cpu_share_no_balloon: float = -1.0
    pause_p99_ms: int = -1
    pause_p99_ms_no_balloon: int = -1

    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: Any) -> JvmStatus:
        return cls(**_check(cls, d, "jvm status"))


@dataclass(frozen=True)
class NodeStatus:
    """The node's totals and the driver's own state (``node`` of ``status``)."""

    target_bytes: int
    balloon_bytes: int
    reclaimed_bytes: int
    ksm: str
    ksm_boosted: bool
    zero_pfn_known: bool
    bad_messages: int
    # What of the node target no JVM can hold, and why in words ("" when met or no target).
    unmet_bytes: int = 0
    unmet_reason: str = ""
    # How long the daemon's last control tick took (its work, not the wait between ticks).
    tick_ms: float = 0.0
    policy: str = "manual"  # "auto": the policy engine sets every target (docs/policy.md)
    policy_state: str = ""  # e.g. "soft: 312.0 MiB to find"
    budget_bytes: Optional[int] = None

    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: Any) -> NodeStatus:
        return cls(**_check(cls, d, "node status"))


@dataclass(frozen=True)
class DriverStatus:
    """The body of a driver's ``status`` reply."""

    jvms: tuple[JvmStatus, ...]
    node: NodeStatus

    def to_dict(self) -> dict:
        return {"jvms": [j.to_dict() for j in self.jvms], "node": self.node.to_dict()}

    @classmethod
    def from_dict(cls, d: Any) -> DriverStatus:
        if not isinstance(d, dict):
            raise ProtocolError("status must be an object")
        jvms = d.get("jvms", [])
        if not isinstance(jvms, list) or len(jvms) > MAX_JVMS:
            raise ProtocolError("status: field 'jvms' must be a list")
        return cls(tuple(JvmStatus.from_dict(j) for j in jvms), NodeStatus.from_dict(d.get("node")))


@dataclass(frozen=True)
class VMStatus:
    """One VM as hostd measures it (a ``vms[]`` entry of hostd's ``status``; hostd's docstring
    says what each figure means). ``jvms`` are the guest's, validated when the guest sent them."""

    name: str
    pid: int
    memory_bytes: int
    reclaim: str
    target_bytes: int
    balloon_bytes: int
    reclaimed_bytes: Optional[int]
    host_resident_bytes: Optional[int]
    pause_ms_p50: float
    pause_ms_p99: float
    pause_breakdown_ms: Mapping[str, Mapping[str, float]]
    pauses: int
    pause_ms_sum: float
    pause_ms_per_gib: float
    guest_pause_ms_sum: float
    guest_pause_ms_per_gib: float
    pause_window: int
    engine: str
    soft_dirty: bool
    drift_pages: int
    connected: bool
    guest_hello: bool
    guest_balloon_bytes: Optional[int]
    guest_target_bytes: Optional[int]
    totals_pages: Mapping[str, int]
    jvms: tuple[JvmStatus, ...]
    balloon_max_bytes: Optional[int]
    # virtio-balloon (host/virtioballoon.py); None: not read yet, or no statistics from the guest
    guest_free_bytes: Optional[int] = None
    guest_available_bytes: Optional[int] = None
    virtio_actual_bytes: Optional[int] = None  # guest RAM the virtio balloon leaves the guest
    virtio_target_bytes: int = 0  # what hostd asked the virtio balloon to take from the guest
    # hostd --policy auto: why its targets are what they are; pinned by a manual target
    policy_reason: str = ""
    pinned: bool = False
    cont_owed: bool = False  # hostd paused the VM and its cont failed: retried until it runs

    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: Any) -> VMStatus:
        return cls(**_check(cls, d, "vm status"))


@dataclass(frozen=True)
class HostStatus:
    """The body of hostd's ``status`` reply."""

    vms: tuple[VMStatus, ...]
    # hostd --policy auto: the memory state and budget in one line ("" without the policy)
    policy: str = ""
    # VMs hostd sees but does not manage (libvirt domains lacking memfd RAM or the channel):
    # name → the reason; omitted from the wire when empty (older CLIs and hostds agree)
    left_alone: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out: dict = {"vms": [v.to_dict() for v in self.vms], "policy": self.policy}
        if self.left_alone:
            out["left_alone"] = dict(sorted(self.left_alone.items()))
        return out

    @classmethod
    def from_dict(cls, d: Any) -> HostStatus:
        vms = d.get("vms") if isinstance(d, dict) else None
        if not isinstance(vms, list) or len(vms) > MAX_JVMS:
            raise ProtocolError("hostd status: field 'vms' must be a list")
        policy = d.get("policy", "")
        if not isinstance(policy, str) or len(policy) > 4096:
            raise ProtocolError("hostd status: field 'policy' must be a string")
        left = d.get("left_alone", {})
        if not isinstance(left, dict) or len(left) > MAX_JVMS or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in left.items()):
            raise ProtocolError("hostd status: field 'left_alone' must map names to reasons")
        return cls(tuple(VMStatus.from_dict(v) for v in vms), policy, left)


@dataclass(frozen=True)
class PolicyReport:
    """The body of a ``policy_explain`` reply: the policy's mode, state and last reasoning."""

    mode: str  # "auto" or "manual"
    state: str
    budget_bytes: Optional[int]
    text: str
    ticks: int

    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: Any) -> PolicyReport:
        return cls(**_check(cls, d, "policy report"))


@dataclass(frozen=True)
class TargetsReply:
    """The body of a ``set_target`` reply: every JVM's target after the change, by pid."""

    targets: Mapping[int, int]

    def to_dict(self) -> dict:
        return {"targets": {str(pid): t for pid, t in self.targets.items()}}

    @classmethod
    def from_dict(cls, d: Any) -> TargetsReply:
        raw = d.get("targets", {}) if isinstance(d, dict) else None
        if not isinstance(raw, dict):
            raise ProtocolError("set_target reply: field 'targets' must be an object")
        try:
            targets = {int(pid): t for pid, t in raw.items()}
        except ValueError as err:
            raise ProtocolError(f"set_target reply: bad pid in 'targets': {err}") from err
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in targets.values()):
            raise ProtocolError("set_target reply: every target must be a non-negative integer")
        return cls(MappingProxyType(targets))
