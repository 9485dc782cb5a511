"""The control channel (CLI ↔ driver or hostd, docs/protocol.md): ``status_request``,
``set_target``, ``policy_explain``, ``vm_target`` and the ``reply``; :func:`decode` for this channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from heapballoon.errors import ProtocolError
from heapballoon.protocol import wire
from heapballoon.protocol.wire import IdOnly, Message, int_field, message, str_field

TYPES: dict[str, type[Message]] = {}  # this channel's own messages


@message(TYPES, "status_request")
class StatusRequest(IdOnly):
    id: int = 0


@message(TYPES, "set_target")
class SetTarget(Message):
    """``auto``: unpin the JVM (``target PID auto``); its target is the policy's again."""

    pid: int | None
    target_bytes: int
    id: int = 0
    auto: bool = False

    @classmethod
    def parse(cls, d: dict) -> SetTarget:
        pid = None if d.get("pid") is None else int_field(d, "pid", lo=1, hi=1 << 31)
        auto = d.get("auto", False)
        if not isinstance(auto, bool):
            raise ProtocolError("field 'auto' must be true or false")
        return cls(pid, int_field(d, "target_bytes", hi=1 << 50), int_field(d, "id", 0), auto)


@message(TYPES, "policy_explain")
class PolicyExplainRequest(IdOnly):
    """CLI → driver: the policy's last tick, explained (``heapballoon policy explain``)."""

    id: int = 0


@message(TYPES, "vm_target")
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
        return cls(str_field(d, "vm", max_len=64), int_field(d, "target_bytes", hi=1 << 50), int_field(d, "id", 0), auto)


@message(TYPES, "reply")
class Reply(Message):
    """A successful answer to a control request; ``body`` holds the payload."""

    id: int = 0
    body: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, d: dict) -> Reply:
        body = d.get("body", {})
        if not isinstance(body, dict):
            raise ProtocolError("field 'body' must be an object")
        return cls(int_field(d, "id", 0), body)


CHANNEL = {**wire.TYPES, **TYPES}


def decode(line: bytes | str) -> Message:
    """One line of this channel: its own messages and ping, pong, error; ProtocolError else."""
    return wire.decode_with(CHANNEL, line, "control")
