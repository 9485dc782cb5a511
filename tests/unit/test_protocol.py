import dataclasses
import json

import pytest
from hypothesis import given, strategies as st

from heapballoon import protocol
from heapballoon.errors import MessageTooLarge, ProtocolError

u63 = st.integers(min_value=0, max_value=(1 << 40))
chunks = st.builds(protocol.Chunk, id=st.integers(0, 1 << 30), addr=st.integers(0, 1 << 47),
                   len=st.integers(0, 1 << 30), released=st.booleans())
states = st.builds(protocol.State, heap_max_bytes=u63, heap_committed_bytes=u63, heap_used_bytes=u63,
                   live_bytes=u63, gc_count=u63, gc_time_ms=u63, balloon_bytes=u63, target_bytes=u63,
                   reclaim=st.sampled_from(protocol.RECLAIM_MODES), chunks_epoch=u63,
                   chunks=st.lists(chunks, max_size=5).map(tuple),
                   balloon_max_bytes=st.integers(-1, 1 << 40), flaps=u63,
                   live_source=st.sampled_from(["", "MarkSweepCompact", "G1 concurrent cycle (inferred)"])).map(
    # a balloon lives in its heap: its chunks never total more than heap_max_bytes
    lambda s: dataclasses.replace(s, heap_max_bytes=max(s.heap_max_bytes, sum(c.len for c in s.chunks))))


@given(states)
def test_state_roundtrip(state):
    assert protocol.decode(protocol.encode(state)) == state


@given(states, st.text(max_size=20), st.sampled_from(protocol.GCS))
def test_hello_roundtrip(state, name, gc):
    hello = protocol.Hello(pid=42, name=name, agent_version="0.1", jvm_version="17", jvm_vendor="x", gc=gc,
                           region_bytes=1 << 20, address_mode="jni", reclaim_modes=("direct", "ksm"),
                           target_bytes=state.target_bytes, state=state)
    assert protocol.decode(protocol.encode(hello)) == hello


@given(st.integers(0, 1 << 40), st.lists(st.tuples(st.integers(0, 1 << 40), st.integers(1, 1 << 20)), max_size=20))
def test_pages_roundtrip(seq, ranges):
    msg = protocol.Pages(seq=seq, op="add", ranges=tuple(ranges), key="1:2")
    assert protocol.decode(protocol.encode(msg)) == msg


@pytest.mark.parametrize("line", [
    b"garbage", b"[]", b"{}", b'{"v":2,"type":"state"}', b'{"v":1,"type":"nope"}',
    b'{"v":1,"type":"target"}', b'{"v":1,"type":"target","target_bytes":-1}',
    b'{"v":1,"type":"target","target_bytes":"1G"}', b'{"v":1,"type":"target","target_bytes":true}',
    b'{"v":1,"type":"state","chunks":{}}', b'{"v":1,"type":"state","chunks":[{"id":1}]}',
    b'{"v":1,"type":"pages","seq":1,"op":"add","ranges":[[1,0]]}',
    b'{"v":1,"type":"pages","seq":1,"op":"add","ranges":[[-5,2]]}',
    b'{"v":1,"type":"pages","seq":1,"op":"steal","ranges":[]}',
    b'\xff\xfe', b'{"v":1,"type":"set_target","pid":0,"target_bytes":1}',
])
def test_decode_rejects(line):
    with pytest.raises(ProtocolError) as err:
        protocol.decode(line)
    assert err.value.raw is not None


def test_decode_rejects_oversized():
    with pytest.raises(MessageTooLarge):
        protocol.decode(b"x" * (protocol.MAX_LINE_BYTES + 1))


def test_too_many_ranges_rejected():
    line = json.dumps({"v": 1, "type": "pages", "seq": 1, "op": "add",
                       "ranges": [[i, 1] for i in range(protocol.MAX_RANGES + 1)]})
    with pytest.raises(ProtocolError, match="too many ranges"):
        protocol.decode(line)


@given(st.binary(max_size=200))
def test_decode_never_crashes_on_garbage(data):
    try:
        protocol.decode(data)
    except ProtocolError:
        pass


def test_unknown_fields_ignored():
    msg = protocol.decode(b'{"v":1,"type":"target","target_bytes":5,"future":"x"}')
    assert msg == protocol.Target(target_bytes=5)


def test_state_from_an_older_agent_has_unknown_balloon_max():
    line = b'{"v":1,"type":"state","heap_max_bytes":1,"heap_committed_bytes":1,"heap_used_bytes":1,"live_bytes":1}\n'
    state = protocol.decode(line)
    assert state.balloon_max_bytes == -1 and state.flaps == 0 and state.live_source == ""


@pytest.mark.parametrize("field,value", [("balloon_max_bytes", -2), ("balloon_max_bytes", "1"), ("flaps", -1)])
def test_state_rejects_bad_new_fields(field, value):
    line = json.dumps({"v": 1, "type": "state", field: value}).encode() + b"\n"
    with pytest.raises(ProtocolError, match=field):
        protocol.decode(line)


@pytest.mark.parametrize("depth", [1000, 5000, 100_000])
def test_deep_json_is_a_protocol_error(depth):
    """Hostile input row 12: nesting ~1000 deep (2 KB) raised RecursionError, not ProtocolError."""
    line = '{"v":1,"type":"state","x":' + "[" * depth + "]" * depth + "}"
    with pytest.raises(ProtocolError, match="nested too deep"):
        protocol.decode(line)


@given(st.integers(1, 3000), st.sampled_from(["[", '{"a":']))
def test_decode_never_crashes_on_deep_nesting(depth, opener):
    closer = "]" if opener == "[" else "}"
    try:
        protocol.decode('{"v":1,"type":"ping","x":' + opener * depth + "0" * (opener != "[") + closer * depth + "}")
    except ProtocolError:
        pass


def test_a_state_claiming_more_than_its_heap_is_rejected():
    """Hostile input row 4 (protocol half): 65,536 chunks of 1 TiB each once passed; a balloon's
    chunks now total at most the state's heap_max_bytes (and 128 TiB in any case)."""
    chunk = {"id": 1, "addr": 1 << 30, "len": 1 << 40}
    with pytest.raises(ProtocolError, match="more than the heap"):
        protocol.decode(json.dumps({"v": 1, "type": "state", "heap_max_bytes": 1 << 30, "chunks": [chunk]}))
    many = [dict(chunk, id=i) for i in range(200)]
    with pytest.raises(ProtocolError, match="more than the heap"):
        protocol.decode(json.dumps({"v": 1, "type": "state", "chunks": many}))
    ok = protocol.decode(json.dumps({"v": 1, "type": "state", "heap_max_bytes": 1 << 40, "chunks": [chunk]}))
    assert ok.chunks[0].len == 1 << 40


def test_guest_status_jvms_are_typed_at_the_channel():
    from heapballoon.status import JvmStatus

    jvm = JvmStatus(pid=42, name="app", gc="G1", jvm_version="17", connected=True, heap_max_bytes=1 << 30,
                    heap_committed_bytes=1 << 30, heap_used_bytes=1 << 29, live_bytes=1 << 28, live_source="",
                    excess_bytes=1 << 28, balloon_max_bytes=1 << 28, target_bytes=1 << 27, flaps=0,
                    balloon_bytes=1 << 27, reclaimed_bytes=0, reclaim="report", address_mode="jni", chunks=2,
                    gc_count=3, gc_time_ms=4, moved_chunks=0, drift_pages=0)
    msg = protocol.GuestStatus(target_bytes=1 << 27, balloon_bytes=1 << 27, drift_pages=5, jvms=(jvm,))
    back = protocol.decode(protocol.encode(msg))
    assert back == msg and isinstance(back.jvms[0], JvmStatus)
    with pytest.raises(ProtocolError):  # an entry that is not a JVM status is refused here, at the socket
        protocol.decode(b'{"v":1,"type":"guest_status","jvms":[{"pid":42,"name":"app"}]}')


def test_each_channel_decodes_its_own_messages_only():
    from heapballoon.protocol import agent, control, guest

    hello_line = protocol.encode(protocol.GuestHello(guest_ram_bytes=1 << 30, page_bytes=4096, boot_id="b"))
    status_line = protocol.encode(protocol.StatusRequest(id=1))
    target_line = protocol.encode(protocol.Target(target_bytes=1 << 20, reclaim="report"))
    assert isinstance(guest.decode(hello_line), protocol.GuestHello)
    assert isinstance(control.decode(status_line), protocol.StatusRequest)
    assert isinstance(agent.decode(target_line), protocol.Target)
    for decode, line in ((agent.decode, hello_line), (guest.decode, status_line), (control.decode, target_line)):
        with pytest.raises(ProtocolError, match="does not belong on the (agent|guest|control) channel"):
            decode(line)
    for decode in (agent.decode, control.decode, guest.decode):  # ping, pong and error are everyone's
        assert decode(protocol.encode(protocol.Error(error="no", id=2))) == protocol.Error(error="no", id=2)
    assert protocol.decode(hello_line) == guest.decode(hello_line)  # any channel's: for tests and tools
