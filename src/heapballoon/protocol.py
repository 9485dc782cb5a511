"""Wire messages of protocol v1 (docs/protocol.md): typed, frozen, validated at the boundary.

This module owns the *shape* of every message: ``decode(line)`` turns one NDJSON line into a
frozen dataclass or raises :class:`ProtocolError` (keeping the raw line); ``encode(msg)`` turns
a dataclass back into one line. Transport (sockets, reconnects) lives elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from heapballoon.errors import MessageTooLarge, ProtocolError
from heapballoon.status import JvmStatus

VERSION = 1
MAX_LINE_BYTES = 1 << 20
MAX_CHUNKS = 65536
MAX_CHUNK_BYTES = 1 << 40
# A balloon lives in its JVM's heap: its chunks never total more than the state's heap_max_bytes
# (when given), nor ever more than x86-64's 128 TiB of user address space.
MAX_BALLOON_BYTES = 1 << 47
MAX_U64 = (1 << 64) - 1
GCS = ("G1", "Parallel", "Serial", "ZGC", "Shenandoah", "unknown")
RECLAIM_MODES = ("direct", "ksm", "report")
ADDRESS_MODES = ("jni", "unsafe", "none")

_REGISTRY: dict[str, type[Message]] = {}


def _msg(type_name: str):
    def wrap(cls):
        cls = dataclass(frozen=True)(cls)
        cls.TYPE = type_name
        _REGISTRY[type_name] = cls
        return cls

    return wrap


class Message:
    TYPE: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        d = {"v": VERSION, "type": self.TYPE}
        d.update(dataclasses.asdict(self))  # type: ignore[call-overload]
        return d


# ---------------------------------------------------------------- field checks

def _int(d: dict, key: str, default: int | None = None, lo: int = 0, hi: int = MAX_U64) -> int:
    if key not in d or d[key] is None:
        if default is None:
            raise ProtocolError(f"missing field {key!r}")
        return default
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"field {key!r} must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ProtocolError(f"field {key!r} out of range: {v}")
    return v


def _str(d: dict, key: str, default: str | None = None, choices: tuple[str, ...] | None = None,
         max_len: int = 256) -> str:
    if key not in d or d[key] is None:
        if default is None:
            raise ProtocolError(f"missing field {key!r}")
        return default
    v = d[key]
    if not isinstance(v, str):
        raise ProtocolError(f"field {key!r} must be a string")
    if len(v) > max_len:
        raise ProtocolError(f"field {key!r} longer than {max_len} characters")
    if choices is not None and v not in choices:
        raise ProtocolError(f"field {key!r} must be one of {', '.join(choices)}, got {v!r}")
    return v


# ---------------------------------------------------------------- agent → driver

@dataclass(frozen=True)
class Chunk:
    id: int
    addr: int
    len: int
    released: bool = False

    @classmethod
    def parse(cls, d: Any) -> Chunk:
        if not isinstance(d, dict):
            raise ProtocolError("chunk must be an object")
        c = cls(_int(d, "id"), _int(d, "addr", hi=(1 << 63) - 1), _int(d, "len", hi=MAX_CHUNK_BYTES),
                bool(d.get("released", False)))
        if c.addr + c.len > (1 << 63):
            raise ProtocolError("chunk range overflows the address space")
        return c


GC_COST_FIELDS = ("gc_cpu_permille", "gc_cpu_permille_no_balloon", "pause_p99_ms", "pause_p99_ms_no_balloon")


@_msg("state")
class State(Message):
    heap_max_bytes: int = 0
    heap_committed_bytes: int = 0
    heap_used_bytes: int = 0
    live_bytes: int = 0
    gc_count: int = 0
    gc_time_ms: int = 0
    balloon_bytes: int = 0
    target_bytes: int = 0
    reclaim: str = "ksm"
    chunks_epoch: int = 0
    chunks: tuple[Chunk, ...] = ()
    # -1: an agent that does not say (older than balloon_max_bytes); the driver then estimates.
    balloon_max_bytes: int = -1
    flaps: int = 0
    live_source: str = ""
    # Issue 15: the JVM clearing balloon soft references, the rate-following headroom, and the
    # balloon's GC cost (permille of the JVM's CPU; p99 pause), each with and without a balloon.
    soft_cleared: int = 0
    headroom_bytes: int = 0
    alloc_bytes_per_s: int = 0
    gc_cpu_permille: int = -1
    gc_cpu_permille_no_balloon: int = -1
    pause_p99_ms: int = -1
    pause_p99_ms_no_balloon: int = -1

    @classmethod
    def parse(cls, d: dict) -> State:
        raw_chunks = d.get("chunks", [])
        if not isinstance(raw_chunks, list):
            raise ProtocolError("field 'chunks' must be a list")
        if len(raw_chunks) > MAX_CHUNKS:
            raise ProtocolError(f"too many chunks: {len(raw_chunks)} > {MAX_CHUNKS}")
        chunks = tuple(Chunk.parse(c) for c in raw_chunks)
        heap_max_bytes = _int(d, "heap_max_bytes", 0)
        total = sum(c.len for c in chunks)
        if total > MAX_BALLOON_BYTES or (heap_max_bytes and total > heap_max_bytes):
            raise ProtocolError(f"chunks total {total} bytes, more than the heap ({heap_max_bytes} bytes) can hold")
        return cls(
            heap_max_bytes=heap_max_bytes,
            heap_committed_bytes=_int(d, "heap_committed_bytes", 0),
            heap_used_bytes=_int(d, "heap_used_bytes", 0),
            live_bytes=_int(d, "live_bytes", 0),
            gc_count=_int(d, "gc_count", 0),
            gc_time_ms=_int(d, "gc_time_ms", 0),
            balloon_bytes=_int(d, "balloon_bytes", 0),
            target_bytes=_int(d, "target_bytes", 0),
            reclaim=_str(d, "reclaim", "ksm", RECLAIM_MODES),
            chunks_epoch=_int(d, "chunks_epoch", 0),
            chunks=chunks,
            balloon_max_bytes=_int(d, "balloon_max_bytes", -1, lo=-1),
            flaps=_int(d, "flaps", 0),
            live_source=_str(d, "live_source", "", max_len=128),
            soft_cleared=_int(d, "soft_cleared", 0),
            headroom_bytes=_int(d, "headroom_bytes", 0),
            alloc_bytes_per_s=_int(d, "alloc_bytes_per_s", 0),
            **{k: _int(d, k, -1, lo=-1, hi=1 << 40) for k in GC_COST_FIELDS},
        )


@_msg("hello")
class Hello(Message):
    pid: int
    name: str
    agent_version: str
    jvm_version: str
    jvm_vendor: str
    gc: str
    region_bytes: int
    address_mode: str
    reclaim_modes: tuple[str, ...]
    target_bytes: int
    state: State = field(default_factory=State)

    def to_dict(self) -> dict[str, Any]:
        d = self.state.to_dict()  # state fields travel flat in the hello
        own = super().to_dict()
        del own["state"]
        d.update(own)
        return d

    @classmethod
    def parse(cls, d: dict) -> Hello:
        modes = d.get("reclaim_modes", [])
        if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
            raise ProtocolError("field 'reclaim_modes' must be a list of strings")
        return cls(
            pid=_int(d, "pid", lo=1, hi=1 << 31),
            name=_str(d, "name", ""),
            agent_version=_str(d, "agent_version", ""),
            jvm_version=_str(d, "jvm_version", ""),
            jvm_vendor=_str(d, "jvm_vendor", ""),
            gc=_str(d, "gc", "unknown", GCS),
            region_bytes=_int(d, "region_bytes", 0, hi=1 << 36),
            address_mode=_str(d, "address_mode", "none", ADDRESS_MODES),
            reclaim_modes=tuple(m for m in modes if m in RECLAIM_MODES),
            target_bytes=_int(d, "target_bytes", 0),
            state=State.parse(d),
        )


@_msg("event")
class Event(Message):
    kind: str
    released_bytes: int = 0
    reason: str = ""
    latency_ms: int = 0

    @classmethod
    def parse(cls, d: dict) -> Event:
        return cls(_str(d, "kind"), _int(d, "released_bytes", 0), _str(d, "reason", "", max_len=1024),
                   _int(d, "latency_ms", 0))


@_msg("pong")
class Pong(Message):
    id: int = 0

    @classmethod
    def parse(cls, d: dict) -> Pong:
        return cls(_int(d, "id", 0))


# ---------------------------------------------------------------- driver → agent

@_msg("target")
class Target(Message):
    target_bytes: int
    reclaim: str = "ksm"
    headroom_bytes: int = 0

    @classmethod
    def parse(cls, d: dict) -> Target:
        return cls(_int(d, "target_bytes"), _str(d, "reclaim", "ksm", RECLAIM_MODES), _int(d, "headroom_bytes", 0))


@_msg("ping")
class Ping(Message):
    id: int = 0

    @classmethod
    def parse(cls, d: dict) -> Ping:
        return cls(_int(d, "id", 0))


# ---------------------------------------------------------------- CLI ↔ daemon

@_msg("status_request")
class StatusRequest(Message):
    id: int = 0

    @classmethod
    def parse(cls, d: dict) -> StatusRequest:
        return cls(_int(d, "id", 0))


@_msg("set_target")
class SetTarget(Message):
    """``auto``: unpin the JVM (``target PID auto``); its target is the policy's again."""

    pid: int | None
    target_bytes: int
    id: int = 0
    auto: bool = False

    @classmethod
    def parse(cls, d: dict) -> SetTarget:
        pid = None if d.get("pid") is None else _int(d, "pid", lo=1, hi=1 << 31)
        auto = d.get("auto", False)
        if not isinstance(auto, bool):
            raise ProtocolError("field 'auto' must be true or false")
        return cls(pid, _int(d, "target_bytes", hi=1 << 50), _int(d, "id", 0), auto)


@_msg("policy_explain")
class PolicyExplainRequest(Message):
    """CLI → driver: the policy's last tick, explained (``heapballoon policy explain``)."""

    id: int = 0

    @classmethod
    def parse(cls, d: dict) -> PolicyExplainRequest:
        return cls(_int(d, "id", 0))


@_msg("vm_target")
class VMTarget(Message):
    """A VM's target (a pin under ``hostd --policy auto``); ``auto``: unpin, ``target_bytes`` ignored."""

    vm: str
    target_bytes: int
    id: int = 0
    auto: bool = False

    @classmethod
    def parse(cls, d: dict) -> VMTarget:
        auto = d.get("auto", False)
        if not isinstance(auto, bool):
            raise ProtocolError("field 'auto' must be true or false")
        return cls(_str(d, "vm", max_len=64), _int(d, "target_bytes", hi=1 << 50), _int(d, "id", 0), auto)


@_msg("reply")
class Reply(Message):
    """A successful answer to a control request; ``body`` holds the payload."""

    id: int = 0
    body: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, d: dict) -> Reply:
        body = d.get("body", {})
        if not isinstance(body, dict):
            raise ProtocolError("field 'body' must be an object")
        return cls(_int(d, "id", 0), body)


@_msg("error")
class Error(Message):
    error: str
    id: int = 0

    @classmethod
    def parse(cls, d: dict) -> Error:
        return cls(_str(d, "error", max_len=4096), _int(d, "id", 0))


# ---------------------------------------------------------------- guest driver ↔ hostd (VM mode)

MAX_RANGES = 65536
PAGE_OPS = ("add", "remove")


def _ranges(d: dict, key: str = "ranges") -> tuple[tuple[int, int], ...]:
    raw = d.get(key, [])
    if not isinstance(raw, list):
        raise ProtocolError(f"field {key!r} must be a list")
    if len(raw) > MAX_RANGES:
        raise ProtocolError(f"too many ranges: {len(raw)} > {MAX_RANGES}")
    out = []
    for r in raw:
        if (not isinstance(r, list) or len(r) != 2 or
                any(isinstance(x, bool) or not isinstance(x, int) for x in r)):
            raise ProtocolError("a range must be [first_pfn, count] integers")
        first, count = r
        if first < 0 or count < 1 or first + count > (1 << 52):
            raise ProtocolError(f"range out of bounds: {r}")
        out.append((first, count))
    return tuple(out)


@_msg("guest_hello")
class GuestHello(Message):
    """Guest driver → hostd, first message on the channel."""

    guest_ram_bytes: int
    page_bytes: int = 4096
    boot_id: str = ""

    @classmethod
    def parse(cls, d: dict) -> GuestHello:
        return cls(_int(d, "guest_ram_bytes", hi=1 << 48), _int(d, "page_bytes", 4096, lo=4096, hi=1 << 30),
                   _str(d, "boot_id", ""))


@_msg("guest_target")
class GuestTarget(Message):
    """hostd → guest driver: how much the VM's JVMs must give, in bytes."""

    target_bytes: int

    @classmethod
    def parse(cls, d: dict) -> GuestTarget:
        return cls(_int(d, "target_bytes", hi=1 << 50))


@_msg("pages")
class Pages(Message):
    """Guest driver → hostd: guest page frame ranges that hold balloon pages (``add``: reclaim
    them; ``remove``: the guest released them). ``key`` names the owner (``pid:chunk``)."""

    seq: int
    op: str
    ranges: tuple[tuple[int, int], ...]
    key: str = ""

    @classmethod
    def parse(cls, d: dict) -> Pages:
        return cls(_int(d, "seq"), _str(d, "op", choices=PAGE_OPS), _ranges(d), _str(d, "key", ""))


@_msg("pages_ack")
class PagesAck(Message):
    """hostd → guest driver: what happened to a ``pages`` message."""

    seq: int
    punched: int = 0
    already: int = 0
    skipped_nonzero: int = 0
    rejected: int = 0
    error: str = ""

    @classmethod
    def parse(cls, d: dict) -> PagesAck:
        return cls(_int(d, "seq"), _int(d, "punched", 0), _int(d, "already", 0),
                   _int(d, "skipped_nonzero", 0), _int(d, "rejected", 0), _str(d, "error", "", max_len=1024))


@_msg("guest_status")
class GuestStatus(Message):
    """Guest driver → hostd: the guest's balloon, JVM by JVM (``jvms``: the driver's typed JVM
    status, :class:`heapballoon.status.JvmStatus`, validated here at the channel)."""

    target_bytes: int = 0
    balloon_bytes: int = 0
    drift_pages: int = 0
    jvms: tuple[JvmStatus, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"v": VERSION, "type": self.TYPE, "target_bytes": self.target_bytes,
                "balloon_bytes": self.balloon_bytes, "drift_pages": self.drift_pages,
                "jvms": [j.to_dict() for j in self.jvms]}

    @classmethod
    def parse(cls, d: dict) -> GuestStatus:
        jvms = d.get("jvms", [])
        if not isinstance(jvms, list) or len(jvms) > 4096 or not all(isinstance(j, dict) for j in jvms):
            raise ProtocolError("field 'jvms' must be a list of objects")
        return cls(_int(d, "target_bytes", 0), _int(d, "balloon_bytes", 0), _int(d, "drift_pages", 0),
                   tuple(JvmStatus.from_dict(j) for j in jvms))


def register(cls: type[Message]) -> type[Message]:
    """Register a message class defined elsewhere (VM-mode messages live with hostd)."""
    _REGISTRY[cls.TYPE] = cls
    return cls


# ---------------------------------------------------------------- codec

def encode(msg: Message) -> bytes:
    return json.dumps(msg.to_dict(), separators=(",", ":")).encode() + b"\n"


def decode(line: bytes | str) -> Message:
    """Parse one line into its message dataclass; ProtocolError (with ``raw``) if invalid."""
    raw = line
    if isinstance(line, str):
        line = line.encode()
    if len(line) > MAX_LINE_BYTES:
        raise MessageTooLarge(f"message of {len(line)} bytes exceeds {MAX_LINE_BYTES}", raw[:200])
    try:
        d = json.loads(line)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f"not JSON: {err}", raw[:200]) from err
    except RecursionError as err:
        # The C decoder recurses once per nesting level; no message of v1 nests deeper than 4.
        raise ProtocolError("JSON nested too deep", raw[:200]) from err
    if not isinstance(d, dict):
        raise ProtocolError("message must be a JSON object", raw[:200])
    if d.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {d.get('v')!r} (this side speaks v{VERSION})", raw[:200])
    kind = d.get("type")
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}", raw[:200])
    try:
        return cls.parse(d)  # type: ignore[attr-defined]
    except ProtocolError as err:
        err.raw = raw[:200]
        raise
