"""Typed payloads of the driver's control replies: ``status`` and ``set_target``.

This module owns their shape. The daemon builds them as frozen dataclasses and sends
``to_dict()`` as a reply's ``body``; the CLI turns a body back with ``from_dict``, which
validates every field at the boundary and raises :class:`ProtocolError` naming the first bad
one. Unknown extra fields are ignored, as everywhere in the protocol (docs/protocol.md).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from heapballoon.errors import ProtocolError

MAX_JVMS = 65536


def _check(cls, d: Any, where: str) -> dict:
    """The fields of dataclass ``cls`` from ``d``, each checked against its annotation."""
    if not isinstance(d, dict):
        raise ProtocolError(f"{where} must be an object")
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise ProtocolError(f"{where}: missing field {f.name!r}")
        value, kind = d[f.name], hints[f.name]
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is str:
            ok = isinstance(value, str) and len(value) <= 4096
        else:  # Mapping[str, int]
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in value.items())
            value = MappingProxyType(dict(value)) if ok else value
        if not ok:
            raise ProtocolError(f"{where}: field {f.name!r} has a bad value {value!r:.60}")
        out[f.name] = value
    return out


def _plain(obj) -> dict:
    return {f.name: dict(v) if isinstance(v := getattr(obj, f.name), Mapping) else v for f in dataclasses.fields(obj)}


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
