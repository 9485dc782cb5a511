"""The agent channel (agent ↔ driver, docs/protocol.md): ``hello``, ``state``, ``event`` from the
agent, ``target`` from the driver, with their chunks; :func:`decode` for this channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from heapballoon.errors import ProtocolError
from heapballoon.protocol import wire
from heapballoon.protocol.wire import (ADDRESS_MODES, GCS, MAX_BALLOON_BYTES, MAX_CHUNKS, MAX_CHUNK_BYTES,
                                     Message, RECLAIM_MODES, int_field, message, str_field)

TYPES: dict[str, type[Message]] = {}  # this channel's own messages


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
        c = cls(int_field(d, "id"), int_field(d, "addr", hi=(1 << 63) - 1), int_field(d, "len", hi=MAX_CHUNK_BYTES),
                bool(d.get("released", False)))
        if c.addr + c.len > (1 << 63):
            raise ProtocolError("chunk range overflows the address space")
        return c


GC_COST_FIELDS = ("gc_cpu_permille", "gc_cpu_permille_no_balloon", "pause_p99_ms", "pause_p99_ms_no_balloon")


@message(TYPES, "state")
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
    # Parallel only: the old-generation space its promotion estimate needs (docs/agent.md).
    promotion_reserve_bytes: int = 0
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
        heap_max_bytes = int_field(d, "heap_max_bytes", 0)
        total = sum(c.len for c in chunks)
        if total > MAX_BALLOON_BYTES or (heap_max_bytes and total > heap_max_bytes):
            raise ProtocolError(f"chunks total {total} bytes, more than the heap ({heap_max_bytes} bytes) can hold")
        return cls(
            heap_max_bytes=heap_max_bytes,
            heap_committed_bytes=int_field(d, "heap_committed_bytes", 0),
            heap_used_bytes=int_field(d, "heap_used_bytes", 0),
            live_bytes=int_field(d, "live_bytes", 0),
            gc_count=int_field(d, "gc_count", 0),
            gc_time_ms=int_field(d, "gc_time_ms", 0),
            balloon_bytes=int_field(d, "balloon_bytes", 0),
            target_bytes=int_field(d, "target_bytes", 0),
            reclaim=str_field(d, "reclaim", "ksm", RECLAIM_MODES),
            chunks_epoch=int_field(d, "chunks_epoch", 0),
            chunks=chunks,
            balloon_max_bytes=int_field(d, "balloon_max_bytes", -1, lo=-1),
            flaps=int_field(d, "flaps", 0),
            live_source=str_field(d, "live_source", "", max_len=128),
            soft_cleared=int_field(d, "soft_cleared", 0),
            headroom_bytes=int_field(d, "headroom_bytes", 0),
            alloc_bytes_per_s=int_field(d, "alloc_bytes_per_s", 0),
            promotion_reserve_bytes=int_field(d, "promotion_reserve_bytes", 0),
            **{k: int_field(d, k, -1, lo=-1, hi=1 << 40) for k in GC_COST_FIELDS},
        )


@message(TYPES, "hello")
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
            pid=int_field(d, "pid", lo=1, hi=1 << 31),
            name=str_field(d, "name", ""),
            agent_version=str_field(d, "agent_version", ""),
            jvm_version=str_field(d, "jvm_version", ""),
            jvm_vendor=str_field(d, "jvm_vendor", ""),
            gc=str_field(d, "gc", "unknown", GCS),
            region_bytes=int_field(d, "region_bytes", 0, hi=1 << 36),
            address_mode=str_field(d, "address_mode", "none", ADDRESS_MODES),
            reclaim_modes=tuple(m for m in modes if m in RECLAIM_MODES),
            target_bytes=int_field(d, "target_bytes", 0),
            state=State.parse(d),
        )


@message(TYPES, "event")
class Event(Message):
    kind: str
    released_bytes: int = 0
    reason: str = ""
    latency_ms: int = 0

    @classmethod
    def parse(cls, d: dict) -> Event:
        return cls(str_field(d, "kind"), int_field(d, "released_bytes", 0), str_field(d, "reason", "", max_len=1024),
                   int_field(d, "latency_ms", 0))

# ---------------------------------------------------------------- driver → agent

@message(TYPES, "target")
class Target(Message):
    target_bytes: int
    reclaim: str = "ksm"
    headroom_bytes: int = 0

    @classmethod
    def parse(cls, d: dict) -> Target:
        return cls(int_field(d, "target_bytes"), str_field(d, "reclaim", "ksm", RECLAIM_MODES), int_field(d, "headroom_bytes", 0))


CHANNEL = {**wire.TYPES, **TYPES}


def decode(line: bytes | str) -> Message:
    """One line of this channel: its own messages and ping, pong, error; ProtocolError else."""
    return wire.decode_with(CHANNEL, line, "agent")
