"""The guest channel (guest driver ↔ hostd over virtio-serial, VM mode, docs/protocol.md):
``guest_hello``, ``guest_target``, ``pages``, ``pages_ack``, ``guest_status``; :func:`decode` for
this channel. ``guest_status``'s JVMs are typed (:class:`heapballoon.status.JvmStatus`) here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heapballoon.errors import ProtocolError
from heapballoon.protocol import wire
from heapballoon.protocol.wire import Message, VERSION, int_field, message, str_field
from heapballoon.status import JvmStatus
from heapballoon.units import PAGE_BYTES

TYPES: dict[str, type[Message]] = {}  # this channel's own messages


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


@message(TYPES, "guest_hello")
class GuestHello(Message):
    """Guest driver → hostd, first message on the channel."""

    guest_ram_bytes: int
    page_bytes: int = PAGE_BYTES
    boot_id: str = ""

    @classmethod
    def parse(cls, d: dict) -> GuestHello:
        return cls(int_field(d, "guest_ram_bytes", hi=1 << 48), int_field(d, "page_bytes", PAGE_BYTES, lo=PAGE_BYTES, hi=1 << 30),
                   str_field(d, "boot_id", ""))


@message(TYPES, "guest_target")
class GuestTarget(Message):
    """hostd → guest driver: how much the VM's JVMs must give, in bytes."""

    target_bytes: int

    @classmethod
    def parse(cls, d: dict) -> GuestTarget:
        return cls(int_field(d, "target_bytes", hi=1 << 50))


@message(TYPES, "pages")
class Pages(Message):
    """Guest driver → hostd: guest page frame ranges that hold balloon pages (``add``: reclaim
    them; ``remove``: the guest released them). ``key`` names the owner (``pid:chunk``)."""

    seq: int
    op: str
    ranges: tuple[tuple[int, int], ...]
    key: str = ""

    @classmethod
    def parse(cls, d: dict) -> Pages:
        return cls(int_field(d, "seq"), str_field(d, "op", choices=PAGE_OPS), _ranges(d), str_field(d, "key", ""))


@message(TYPES, "pages_ack")
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
        return cls(int_field(d, "seq"), int_field(d, "punched", 0), int_field(d, "already", 0),
                   int_field(d, "skipped_nonzero", 0), int_field(d, "rejected", 0), str_field(d, "error", "", max_len=1024))


@message(TYPES, "guest_status")
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
        return cls(int_field(d, "target_bytes", 0), int_field(d, "balloon_bytes", 0), int_field(d, "drift_pages", 0),
                   tuple(JvmStatus.from_dict(j) for j in jvms))


CHANNEL = {**wire.TYPES, **TYPES}


def decode(line: bytes | str) -> Message:
    """One line of this channel: its own messages and ping, pong, error; ProtocolError else."""
    return wire.decode_with(CHANNEL, line, "guest")
