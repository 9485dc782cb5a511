"""Wire messages of protocol v1 (docs/protocol.md): typed, frozen, validated at the boundary.

This package owns the *shape* of every message, one module per channel, each with its own
``decode``: :mod:`~heapballoon.protocol.agent` (agent ↔ driver),
:mod:`~heapballoon.protocol.control` (CLI ↔ driver or hostd) and
:mod:`~heapballoon.protocol.guest` (guest driver ↔ hostd); what they share (the version, the
limits, field checks, ``ping``/``pong``/``error``, the codec) is :mod:`~heapballoon.protocol.wire`.
Here: every message and constant re-exported (``protocol.State``, ``protocol.MAX_RANGES`` ...),
:func:`decode_first` for the first line on the driver's socket, which carries two channels (an
agent's ``hello`` or a CLI client's request; the session then decodes with its own channel's
``decode``), and :func:`decode`, any channel's message, for tests and tools: no live socket
uses it (tests/unit/test_protocol_channels.py). Transport (sockets, reconnects) lives elsewhere.
"""

from __future__ import annotations

from heapballoon.protocol import agent, control, guest, wire
from heapballoon.protocol.agent import GC_COST_FIELDS, Chunk, Event, Hello, State, Target
from heapballoon.protocol.control import PolicyExplainRequest, Reply, SetTarget, StatusRequest, VMTarget
from heapballoon.protocol.guest import MAX_RANGES, PAGE_OPS, GuestHello, GuestStatus, GuestTarget, Pages, PagesAck
from heapballoon.protocol.wire import (ADDRESS_MODES, GCS, MAX_BALLOON_BYTES, MAX_CHUNK_BYTES, MAX_CHUNKS,
                                       MAX_LINE_BYTES, MAX_U64, RECLAIM_MODES, VERSION, Error, Message, Ping,
                                       Pong, encode)

ALL_TYPES: dict[str, type[Message]] = {**wire.TYPES, **agent.TYPES, **control.TYPES, **guest.TYPES}
DRIVER_SOCKET: dict[str, type[Message]] = {**wire.TYPES, agent.Hello.TYPE: agent.Hello, **control.TYPES}


def decode_first(line: bytes | str) -> Message:
    """The first line on the driver's socket: an agent's ``hello`` or a control request."""
    return wire.decode_with(DRIVER_SOCKET, line, "agent or control")


def decode(line: bytes | str) -> Message:
    """Parse one line of any channel into its message dataclass; ProtocolError (with ``raw``).
    For tests and tools only: every live socket decodes with its own channel's."""
    return wire.decode_with(ALL_TYPES, line)


__all__ = [
    "ADDRESS_MODES", "GCS", "MAX_BALLOON_BYTES", "MAX_CHUNK_BYTES", "MAX_CHUNKS", "MAX_LINE_BYTES", "MAX_U64",
    "RECLAIM_MODES", "VERSION", "GC_COST_FIELDS", "MAX_RANGES", "PAGE_OPS",
    "Message", "Error", "Ping", "Pong", "Chunk", "Event", "Hello", "State", "Target",
    "PolicyExplainRequest", "Reply", "SetTarget", "StatusRequest", "VMTarget",
    "GuestHello", "GuestStatus", "GuestTarget", "Pages", "PagesAck",
    "decode", "decode_first", "encode", "agent", "control", "guest", "wire",
]
