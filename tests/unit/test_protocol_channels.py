"""Each channel decodes only its own messages (issue 19: protocol/ per channel, used per socket).

A message of another channel is refused with an error that names the channel it arrived on;
no live socket in src/ decodes with the any-channel ``protocol.decode`` (checked with ``ast``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from heapballoon import protocol
from heapballoon.errors import ProtocolError

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "heapballoon"
GIB = 1 << 30

AGENT_LINE = protocol.encode(protocol.State(heap_used_bytes=1))
HELLO_LINE = protocol.encode(protocol.Hello(pid=1, name="x", agent_version="t", jvm_version="17", jvm_vendor="t",
                                            gc="G1", region_bytes=1 << 20, address_mode="jni",
                                            reclaim_modes=("ksm",), target_bytes=0,
                                            state=protocol.State(heap_used_bytes=1)))
CONTROL_LINE = protocol.encode(protocol.StatusRequest(id=3))
GUEST_LINE = protocol.encode(protocol.GuestHello(guest_ram_bytes=GIB))


@pytest.mark.parametrize("decode, channel, foreign", [
    (protocol.agent.decode, "agent", CONTROL_LINE),
    (protocol.agent.decode, "agent", GUEST_LINE),
    (protocol.control.decode, "control", AGENT_LINE),
    (protocol.control.decode, "control", GUEST_LINE),
    (protocol.guest.decode, "guest", AGENT_LINE),
    (protocol.guest.decode, "guest", CONTROL_LINE),
    (protocol.decode_first, "agent or control", GUEST_LINE),
    (protocol.decode_first, "agent or control", AGENT_LINE),
])
def test_a_message_of_another_channel_is_refused_naming_the_channel(decode, channel, foreign):
    with pytest.raises(ProtocolError, match=f"does not belong on the {channel} channel"):
        decode(foreign)


@pytest.mark.parametrize("decode, own", [
    (protocol.agent.decode, AGENT_LINE), (protocol.agent.decode, HELLO_LINE),
    (protocol.control.decode, CONTROL_LINE), (protocol.guest.decode, GUEST_LINE),
    (protocol.decode_first, HELLO_LINE), (protocol.decode_first, CONTROL_LINE),
])
def test_a_channel_takes_its_own_messages_and_ping(decode, own):
    assert decode(own) == protocol.decode(own)
    assert decode(protocol.encode(protocol.Ping(id=5))) == protocol.Ping(id=5)


def test_an_unknown_type_is_still_called_unknown():
    with pytest.raises(ProtocolError, match="unknown message type 'nope' on the control channel"):
        protocol.control.decode(b'{"v":1,"type":"nope"}')


def any_channel_decodes(source: str) -> list[int]:
    """Lines of ``source`` that call ``protocol.decode`` (any channel) or build a LineChannel
    without saying which channel's decode it uses."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        f = node.func
        if f.attr == "decode" and isinstance(f.value, ast.Name) and f.value.id == "protocol":
            found.append(node.lineno)
        if f.attr == "LineChannel" and len(node.args) + len(node.keywords) < 3:
            found.append(node.lineno)
    return found


def test_the_checker_catches_an_any_channel_decode():
    assert any_channel_decodes("msg = protocol.decode(line)\n") == [1]
    assert any_channel_decodes("ch = transport.LineChannel(r, w)\n") == [1]
    assert any_channel_decodes("msg = protocol.control.decode(line)\nx = b.decode()\n") == []


def test_no_live_socket_decodes_any_channel():
    bad = {p.relative_to(PACKAGE).as_posix(): lines for p in sorted(PACKAGE.rglob("*.py"))
           if p.relative_to(PACKAGE).parts[0] != "protocol" and (lines := any_channel_decodes(p.read_text()))}
    assert bad == {}, f"decode with the socket's own channel (protocol.agent/control/guest.decode): {bad}"
