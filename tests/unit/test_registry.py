"""The JVM table (registry): each JVM's sizing from what the agent reports, and who owns a live session."""

from heapballoon import protocol
from heapballoon.driver import policy
from heapballoon.driver.registry import JVMRecord, Registry

MIB = 1 << 20


def record(pid, *, committed_mib, live_mib, balloon_max_mib=None, gc="Serial", headroom_mib=0):
    state = protocol.State(heap_max_bytes=committed_mib * MIB, heap_committed_bytes=committed_mib * MIB,
                           live_bytes=live_mib * MIB,
                           balloon_max_bytes=-1 if balloon_max_mib is None else balloon_max_mib * MIB,
                           headroom_bytes=headroom_mib * MIB)
    hello = protocol.Hello(pid=pid, name=f"j{pid}", agent_version="t", jvm_version="17", jvm_vendor="t", gc=gc,
                           region_bytes=0, address_mode="jni", reclaim_modes=("direct",), target_bytes=0, state=state)
    return JVMRecord(pid=pid, starttime=1, hello=hello, state=state)


def test_excess_is_capped_by_what_the_agent_can_hold():
    # Serial, 1 GiB heap, 200 MiB live: 760 MiB idle, but the old generation holds only 400
    rec = record(1, committed_mib=1024, live_mib=200, balloon_max_mib=400)
    assert rec.excess_bytes == 400 * MIB
    assert rec.balloon_max_bytes == 400 * MIB


def test_an_older_agent_falls_back_to_the_heap_estimate():
    rec = record(1, committed_mib=1024, live_mib=200)
    assert rec.balloon_max_bytes == policy.room_bytes(1024 * MIB, 200 * MIB)
    assert rec.excess_bytes == policy.excess_bytes(1024 * MIB, 200 * MIB, 1024 * MIB)


def test_excess_leaves_the_headroom_the_agent_reports():
    # G1, 1 GiB heap, 200 MiB live, an allocation rate that needs 300 MiB of headroom: the
    # static 64 MiB would call 760 MiB idle (capped at balloon_max, 700); the agent's figure, 524.
    rec = record(1, committed_mib=1024, live_mib=200, balloon_max_mib=700, gc="G1", headroom_mib=300)
    assert rec.excess_bytes == (1024 - 200 - 300) * MIB


def test_an_agent_without_balloon_max_still_has_its_headroom_used():
    rec = record(1, committed_mib=1024, live_mib=200, headroom_mib=300)
    assert rec.balloon_max_bytes == (1024 - 200 - 300) * MIB
    assert rec.excess_bytes == (1024 - 200 - 300) * MIB


def test_node_split_hands_no_jvm_more_than_it_can_hold():
    serial = record(1, committed_mib=1024, live_mib=200, balloon_max_mib=100)
    g1 = record(2, committed_mib=1024, live_mib=200, balloon_max_mib=700, gc="G1")
    recs = [serial, g1]
    targets = policy.effective_targets(600 * MIB, {r.pid: None for r in recs}, {r.pid: r.excess_bytes for r in recs},
                                       {r.pid: r.balloon_max_bytes for r in recs})
    assert targets[1] <= 100 * MIB
    assert targets[1] + targets[2] == 600 * MIB


def test_status_shows_balloon_max_and_flaps():
    rec = record(1, committed_mib=1024, live_mib=200, balloon_max_mib=400)
    status = rec.status(0)
    assert status.balloon_max_bytes == 400 * MIB
    assert status.flaps == 0
    assert status.to_dict()["balloon_max_bytes"] == 400 * MIB


def test_a_capped_reclaimed_figure_does_not_flicker_with_the_resident_set():
    """An idle JVM whose balloon is capped by what it gave back (VmHWM − RSS) sees its RSS move
    by KiBs: the published figure stays, so the tick log stays quiet (test_scale_small)."""
    from heapballoon.driver.verify import Verification, steady_reclaimed_bytes

    MIB = 1 << 20
    capped = Verification(balloon_pages=30_000, reclaimed_pages=25_000, present_pages=0, not_resident_pages=30_000)
    old = 25_010 * 4096
    assert steady_reclaimed_bytes(old, capped) == old  # 40 KiB of jitter: kept
    far = Verification(balloon_pages=30_000, reclaimed_pages=20_000, present_pages=0, not_resident_pages=30_000)
    assert steady_reclaimed_bytes(old, far) == 20_000 * 4096  # a real change: published
    uncapped = Verification(balloon_pages=30_000, reclaimed_pages=25_000, present_pages=0, not_resident_pages=25_000)
    assert steady_reclaimed_bytes(old, uncapped) == 25_000 * 4096  # exact when not capped
    assert steady_reclaimed_bytes(0, capped) == 25_000 * 4096 and MIB


def test_an_older_session_ending_leaves_the_newer_one_attached():
    table = Registry()
    old_chan, old_outbox, new_chan, new_outbox = object(), object(), object(), object()
    table.attach(7, old_chan, old_outbox)
    table.attach(7, new_chan, new_outbox)  # the same pid reconnected before the old session ended
    assert table.detach(7, old_chan, old_outbox) is False
    assert table.channel(7) is new_chan and table.outbox(7) is new_outbox
    assert table.detach(7, new_chan, new_outbox) is True
    assert table.channel(7) is None and table.outbox(7) is None and table.channels() == []
