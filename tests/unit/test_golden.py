"""tests/golden/protocol.json, the Python side: the driver sends exactly the golden lines, rejects
what the agent rejects, and decodes exactly what the agent writes (the agent's JUnit tests,
run by tests/integration/test_agent_java.py, check the same file from the Java side)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heapballoon import protocol
from heapballoon.errors import ProtocolError

GOLDEN = json.loads((Path(__file__).resolve().parent.parent / "golden" / "protocol.json").read_text())


@pytest.mark.parametrize("case", GOLDEN["driver_to_agent"], ids=lambda c: c["kind"])
def test_the_driver_sends_the_golden_lines(case):
    msg = protocol.decode(case["line"])
    assert msg.TYPE == case["kind"]
    assert protocol.encode(msg).decode().strip() == case["line"]
    for key in ("target_bytes", "reclaim", "headroom_bytes", "id", "error"):
        if key in case:
            assert getattr(msg, key) == case[key]


@pytest.mark.parametrize("line", GOLDEN["invalid_for_agent"])
def test_what_the_agent_rejects_the_driver_rejects_too(line):
    with pytest.raises(ProtocolError):
        protocol.decode(line)


@pytest.mark.parametrize("case", GOLDEN["agent_to_driver"], ids=lambda c: c["kind"])
def test_the_driver_decodes_what_the_agent_writes(case):
    msg = protocol.decode(case["line"])
    assert msg.TYPE == case["kind"]
    state = msg.state if isinstance(msg, protocol.Hello) else msg
    if "state" in case:
        for key, value in case["state"].items():
            got = getattr(state, key)
            if key == "chunks":
                got = [{"id": c.id, "addr": c.addr, "len": c.len, "released": c.released} for c in got]
            assert got == value, key
    if "identity" in case:
        for key, value in case["identity"].items():
            if key == "can_release":
                assert ("direct" in msg.reclaim_modes) == value
            else:
                assert getattr(msg, key) == value, key
    if "event" in case:
        for key, value in case["event"].items():
            assert getattr(msg, key) == value, key


@pytest.mark.parametrize("case", GOLDEN["cli_to_driver"], ids=lambda c: c["kind"])
def test_the_cli_sends_the_golden_control_lines(case):
    msg = protocol.decode(case["line"])
    assert msg.TYPE == case["kind"]
    assert protocol.encode(msg).decode().strip() == case["line"]
    for key in ("pid", "target_bytes", "auto", "id"):
        if key in case:
            assert getattr(msg, key) == case[key]


def test_set_target_auto_must_be_a_boolean():
    with pytest.raises(ProtocolError, match="auto"):
        protocol.decode('{"v":1,"type":"set_target","pid":1,"target_bytes":0,"auto":"yes"}')
