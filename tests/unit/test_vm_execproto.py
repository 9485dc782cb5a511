"""The exec port's typed messages (vm/execproto.py) and the guest supervisor's use of them."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heapballoon.errors import ProtocolError
from heapballoon.guest import supervisor
from heapballoon.vm import execproto
from heapballoon.vm.execproto import (ExecError, ExecProtocolError, ExecRequest, ExecResult, Ping, Pong,
                                      parse_reply, parse_request)


def line(obj) -> bytes:
    return json.dumps(obj).encode()


def test_request_round_trip():
    req = ExecRequest(id=7, argv=("sh", "-c", "echo hi"), timeout_s=5, encoding="base64", stdin="x",
                      env=(("A", "1"),), cwd="/tmp")
    wire = execproto.encode(req)
    assert wire.endswith(b"\n") and wire.count(b"\n") == 1
    assert parse_request(wire) == req
    assert json.loads(wire) == {"v": 1, "type": "exec", "id": 7, "argv": ["sh", "-c", "echo hi"], "timeout_s": 5,
                                "encoding": "base64", "stdin": "x", "env": {"A": "1"}, "cwd": "/tmp"}


def test_request_defaults_match_the_old_wire_format():
    req = parse_request(line({"v": 1, "type": "exec", "id": 1, "argv": ["true"]}))
    assert (req.timeout_s, req.encoding, req.stdin, req.env, req.cwd) == (60.0, "text", None, (), "/root")
    assert execproto.encode(req) == b'{"v":1,"type":"exec","id":1,"argv":["true"],"timeout_s":60.0,"encoding":"text"}\n'


def test_reply_round_trips():
    for msg in (ExecResult(id=3, rc=0, stdout="o", stderr="e", elapsed_ms=5, truncated=True),
                ExecResult(id=3, rc=124, stdout="", stderr="", timed_out=True), Pong(9), ExecError(4, "boom"),
                ExecError(None, "bad request")):
        assert parse_reply(execproto.encode(msg)) == msg


@pytest.mark.parametrize("raw, rid, message", [
    (b"\x00\xffnot json", None, "bad request"),
    (b"[1,2]", None, "not a JSON object"),
    (b'"exec"', None, "not a JSON object"),
    (line({"v": 2, "type": "exec", "id": 6}), 6, "unsupported protocol version"),
    (line({"type": "exec", "id": 6, "argv": ["x"]}), 6, "unsupported protocol version"),
    (line({"v": 1, "type": "exec", "id": 5, "argv": []}), 5, "argv must be a non-empty list"),
    (line({"v": 1, "type": "exec", "id": 5, "argv": "ls"}), 5, "argv must be a non-empty list"),
    (line({"v": 1, "type": "exec", "id": 5, "argv": ["ls", 3]}), 5, "argv must be a non-empty list"),
    (line({"v": 1, "type": "exec", "id": 5, "argv": ["ls"], "timeout_s": 0}), 5, "timeout_s"),
    (line({"v": 1, "type": "exec", "id": 5, "argv": ["ls"], "timeout_s": True}), 5, "timeout_s"),
    (line({"v": 1, "type": "exec", "id": 5, "argv": ["ls"], "timeout_s": "9"}), 5, "timeout_s"),
    (line({"v": 1, "type": "exec", "id": 5, "argv": ["ls"], "encoding": "hex"}), 5, "encoding"),
    (line({"v": 1, "type": "exec", "id": 5, "argv": ["ls"], "stdin": 3}), 5, "stdin"),
    (line({"v": 1, "type": "exec", "id": 5, "argv": ["ls"], "env": ["A=1"]}), 5, "env"),
    (line({"v": 1, "type": "exec", "id": 5, "argv": ["ls"], "env": {"A=B": "1"}}), 5, "env"),
    (line({"v": 1, "type": "exec", "id": 5, "argv": ["ls"], "env": {"A": 1}}), 5, "env"),
    (line({"v": 1, "type": "exec", "id": 5, "argv": ["ls"], "cwd": "relative"}), 5, "cwd"),
    (line({"v": 1, "type": "exec", "id": "5", "argv": ["ls"]}), None, "id must be an integer"),
    (line({"v": 1, "type": "exec", "argv": ["ls"]}), None, "id must be an integer"),
    (line({"v": 1, "type": "shell", "id": 8}), 8, "unknown type 'shell'"),
    (b"x" * (execproto.MAX_LINE_BYTES + 1), None, "over the"),
])
def test_garbage_requests_are_rejected_with_their_id(raw, rid, message):
    with pytest.raises(ExecProtocolError, match=message) as info:
        parse_request(raw)
    assert info.value.id == rid
    assert isinstance(info.value, ProtocolError)


@pytest.mark.parametrize("obj, message", [
    ({"v": 1, "type": "exec_result", "id": 1, "rc": "0"}, "rc must be an exit code"),
    ({"v": 1, "type": "exec_result", "id": 1, "rc": 0, "stdout": 5}, "stdout and stderr"),
    ({"v": 1, "type": "exec_result", "id": 1, "rc": 0, "encoding": "rot13"}, "encoding"),
    ({"v": 1, "type": "exec_result", "id": 1, "rc": 0, "elapsed_ms": -1}, "elapsed_ms"),
    ({"v": 1, "type": "error", "id": 1, "error": {"x": 1}}, "error must be a string"),
    ({"v": 1, "type": "exec", "id": 1, "argv": ["x"]}, "unknown type 'exec'"),
    ({"v": 1, "type": "pong"}, "id must be an integer"),
])
def test_garbage_replies_are_rejected(obj, message):
    with pytest.raises(ExecProtocolError, match=message):
        parse_reply(line(obj))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=5),
                              max_leaves=12).map(lambda v: json.dumps(v).encode())))
def test_any_input_parses_or_raises_exec_protocol_error(raw):
    for parse in (parse_request, parse_reply):
        try:
            msg = parse(raw)
        except ExecProtocolError:
            continue
        # whatever is accepted is a typed message that encodes back to the same message
        assert parse(execproto.encode(msg)) == msg


def test_supervisor_answers_garbage_in_order_with_ids():
    answers = [supervisor.handle_line(raw) for raw in (
        b"\x00\xffnot json", b"[1,2]", line({"v": 1, "type": "exec", "id": 5, "argv": []}),
        line({"v": 2, "type": "exec", "id": 6}), line({"v": 1, "type": "ping", "id": 9}), None)]
    assert [type(a) for a in answers] == [ExecError, ExecError, ExecError, ExecError, Pong, ExecError]
    assert [a.id for a in answers] == [None, None, 5, 6, 9, None]
    assert answers[-1].error == "line too long"


def test_supervisor_runs_a_valid_request():
    req = supervisor.handle_line(line({"v": 1, "type": "exec", "id": 2, "argv": ["sh", "-c", "cat; echo e >&2; exit 3"],
                                       "stdin": "in\n", "cwd": "/"}))
    assert isinstance(req, ExecRequest)
    res = supervisor.run_exec(req)
    assert (res.id, res.rc, res.stdout, res.stderr, res.timed_out) == (2, 3, "in\n", "e\n", False)
    assert parse_reply(execproto.encode(res)) == res


def test_supervisor_exec_results_for_failures():
    nf = supervisor.run_exec(ExecRequest(id=1, argv=("no-such-program-hb",), cwd="/"))
    assert nf.rc == 127 and "not found" in nf.stderr
    slow = supervisor.run_exec(ExecRequest(id=2, argv=("sleep", "5"), timeout_s=0.2, cwd="/"))
    assert slow.rc == 124 and slow.timed_out
    binary = supervisor.run_exec(ExecRequest(id=3, argv=("printf", "\\377\\000"), encoding="base64", cwd="/"))
    assert base64.b64decode(binary.stdout) == b"\xff\x00"


def test_supervisor_cuts_output_to_fit_one_line(monkeypatch):
    monkeypatch.setattr(supervisor, "MAX_LINE", 64 << 10)
    res = supervisor.run_exec(ExecRequest(id=4, argv=("head", "-c", str(1 << 20), "/dev/zero"), cwd="/"))
    assert res.truncated and len(execproto.encode(res)) < 64 << 10
