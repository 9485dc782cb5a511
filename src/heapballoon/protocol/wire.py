"""What every channel of protocol v1 shares (docs/protocol.md): the version, the limits, the
:class:`Message` base, the field checks every ``parse`` uses, the messages every channel speaks
(``ping``, ``pong``, ``error``) and the codec: :func:`encode`, and :func:`decode_with`, which
decodes one NDJSON line against one channel's set of message types. A message's shape is
validated here at the boundary, or :class:`ProtocolError` (keeping the raw line) is raised.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from heapballoon.errors import MessageTooLarge, ProtocolError

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

TYPES: dict[str, type[Message]] = {}  # the messages every channel speaks
KNOWN_TYPES: set[str] = set()  # every channel's message types (for the error a misrouted one gets)


def message(types: dict, type_name: str):
    """Class decorator: a frozen message dataclass named ``type_name`` on the wire, in ``types``."""

    def wrap(cls):
        cls = dataclass(frozen=True)(cls)
        cls.TYPE = type_name
        types[type_name] = cls
        KNOWN_TYPES.add(type_name)
        return cls

    return wrap


class Message:
    TYPE: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        d = {"v": VERSION, "type": self.TYPE}
        d.update(dataclasses.asdict(self))  # type: ignore[call-overload]
        return d


# ---------------------------------------------------------------- field checks (every parse)

def int_field(d: dict, key: str, default: int | None = None, lo: int = 0, hi: int = MAX_U64) -> int:
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


def str_field(d: dict, key: str, default: str | None = None, choices: tuple[str, ...] | None = None,
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



# ---------------------------------------------------------------- on every channel

class IdOnly(Message):
    """A message whose one field is its request ``id`` (each subclass declares ``id: int = 0``)."""

    @classmethod
    def parse(cls, d: dict):
        return cls(int_field(d, "id", 0))  # type: ignore[call-arg]


@message(TYPES, "pong")
class Pong(IdOnly):
    id: int = 0


@message(TYPES, "ping")
class Ping(IdOnly):
    id: int = 0


@message(TYPES, "error")
class Error(Message):
    error: str
    id: int = 0

    @classmethod
    def parse(cls, d: dict) -> Error:
        return cls(str_field(d, "error", max_len=4096), int_field(d, "id", 0))


# ---------------------------------------------------------------- codec

def encode(msg: Message) -> bytes:
    return json.dumps(msg.to_dict(), separators=(",", ":")).encode() + b"\n"


def decode_with(types: dict[str, type[Message]], line: bytes | str, channel: str = "") -> Message:
    """Parse one line into its message dataclass, one of ``types`` (the ``channel``'s);
    ProtocolError (with ``raw``) if invalid, naming the channel when a type is not one of it."""
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
    cls = types.get(kind) if isinstance(kind, str) else None
    if cls is None:
        where = f" on the {channel} channel" if channel else ""
        if isinstance(kind, str) and kind in KNOWN_TYPES:
            raise ProtocolError(f"message type {kind!r} does not belong{where}", raw[:200])
        raise ProtocolError(f"unknown message type {kind!r}{where}", raw[:200])
    try:
        return cls.parse(d)  # type: ignore[attr-defined]
    except ProtocolError as err:
        err.raw = raw[:200]
        raise

