"""The tick log's volume rules and the unmet-target explanation, with fake records."""

import logging

from heapballoon import protocol
from heapballoon.driver.registry import JVMRecord
from heapballoon.driver.tickreport import TickLog, jvm_detail, node_summary, unmet

MIB = 1 << 20


def record(pid, *, heap_mib=128, live_mib=16, balloon_max_mib=0, balloon_mib=0, explicit=None, headroom_mib=0):
    state = protocol.State(heap_max_bytes=heap_mib * MIB, heap_committed_bytes=heap_mib * MIB,
                           live_bytes=live_mib * MIB, balloon_max_bytes=balloon_max_mib * MIB,
                           balloon_bytes=balloon_mib * MIB, headroom_bytes=headroom_mib * MIB)
    hello = protocol.Hello(pid=pid, name=f"j{pid}", agent_version="t", jvm_version="17", jvm_vendor="t",
                           gc="Serial", region_bytes=0, address_mode="jni", reclaim_modes=("direct",),
                           target_bytes=0, state=state)
    return JVMRecord(pid=pid, starttime=1, hello=hello, state=state, explicit_target_bytes=explicit)


def test_small_heaps_with_no_room_say_why():
    recs = [record(p) for p in range(1, 101)]
    short = unmet(2048 * MIB, {r.pid: 0 for r in recs}, recs)
    assert short.bytes == 2048 * MIB
    assert "100 JVMs can hold at most 0 B" in short.reason and "100 have no room" in short.reason
    assert "heap max 128.0 MiB" in short.reason
    assert "headroom 16.0 MiB" in short.reason  # the static figure: these agents report none


def test_no_room_names_the_headroom_the_agent_reports():
    recs = [record(1, headroom_mib=90)]
    short = unmet(512 * MIB, {1: 0}, recs)
    assert "headroom 90.0 MiB" in short.reason


def test_met_and_absent_targets_say_nothing():
    recs = [record(1, balloon_max_mib=500)]
    assert unmet(400 * MIB, {1: 400 * MIB}, recs).bytes == 0
    assert unmet(None, {1: 0}, recs).bytes == 0
    assert unmet(400 * MIB, {}, []).reason == "no JVM is registered"
    pinned = unmet(400 * MIB, {1: 100 * MIB, 2: 0}, [record(1, explicit=100 * MIB), record(2)])
    assert "1 JVM keep" in pinned.reason and pinned.bytes == 300 * MIB


def test_steady_state_logs_a_heartbeat_and_changes_only(caplog):
    log = logging.getLogger("test.ticklog")
    tl = TickLog(log, heartbeat_ticks=60)
    recs = [record(p) for p in range(1, 101)]
    short = unmet(2048 * MIB, {r.pid: 0 for r in recs}, recs)
    with caplog.at_level(logging.INFO, logger="test.ticklog"):
        for tick in range(1, 181):
            details = {r.pid: jvm_detail(r, 0) for r in recs}
            tl.emit(tick, node_summary(tick, recs, 2048 * MIB, short, "active"), details, short, 3.0, recs)
    lines = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith("tick ") for line in lines) == 3  # tick 1, 61, 121
    assert sum("cannot be met" in line for line in lines) == 1
    assert len(lines) == 4 and max(map(len, lines)) < 400
    caplog.clear()
    recs[5].state = protocol.State(heap_max_bytes=128 * MIB, heap_committed_bytes=128 * MIB, live_bytes=16 * MIB,
                                   balloon_bytes=32 * MIB)
    with caplog.at_level(logging.INFO, logger="test.ticklog"):
        details = {r.pid: jvm_detail(r, 0) for r in recs}
        tl.emit(181, node_summary(181, recs, 2048 * MIB, short, "active"), details, short, 3.0, recs)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("pid 6 j6 up target=0M balloon=32M") for line in lines), lines
    assert len(lines) == 2  # that JVM's detail and the changed summary
