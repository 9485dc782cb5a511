"""The guest driver's host report: thread confinement, add/remove/drift, resync on ping."""

from __future__ import annotations

import asyncio
import threading

import pytest

from heapballoon import protocol
from heapballoon.guest import driver as gd
from heapballoon.linux.virtio import VirtioPorts

MIB = 1 << 20
PID = 4242


class LoopOnly(dict):
    """A dict that records every mutation made off the owning thread."""

    def __init__(self, owner: int, violations: list) -> None:
        super().__init__()
        self.owner = owner
        self.violations = violations

    def _check(self, what: str) -> None:
        if threading.get_ident() != self.owner:
            self.violations.append(what)

    def __setitem__(self, k, v):
        self._check(f"set {k}")
        super().__setitem__(k, v)

    def pop(self, *a):
        self._check(f"pop {a[0]}")
        return super().pop(*a)

    def clear(self):
        self._check("clear")
        super().clear()


class FakeUplink:
    def __init__(self) -> None:
        self.sent: list[protocol.Message] = []

    def send(self, msg: protocol.Message) -> None:
        self.sent.append(msg)


def hello(chunks: tuple[protocol.Chunk, ...], epoch: int = 1) -> protocol.Hello:
    state = protocol.State(heap_max_bytes=1024 * MIB, heap_committed_bytes=1024 * MIB, live_bytes=200 * MIB,
                           balloon_bytes=sum(c.len for c in chunks), reclaim="report", chunks=chunks,
                           chunks_epoch=epoch)
    return protocol.Hello(pid=PID, name="t", agent_version="t", jvm_version="17", jvm_vendor="t", gc="G1",
                          region_bytes=MIB, address_mode="jni", reclaim_modes=("report",), target_bytes=0,
                          state=state)


@pytest.fixture
def frames_by_addr(monkeypatch):
    """chunk address → guest frames; records the thread each pagemap read runs in."""
    table: dict[int, list[int]] = {}
    threads: list[int] = []

    def fake_chunk_frames(procfs, pid, chunk, heap=None):
        threads.append(threading.get_ident())
        return table[chunk.addr]

    monkeypatch.setattr(gd, "chunk_frames", fake_chunk_frames)
    monkeypatch.setattr(gd.pagemap, "heap_ranges", lambda procfs, pid: [(0, 1 << 63)])
    monkeypatch.setattr(gd.ProcFS, "starttime", lambda self, pid: 1)  # the fake JVM's start time
    return table, threads


def make_driver(tmp_path) -> gd.GuestDriver:
    drv = gd.GuestDriver(str(tmp_path / "hb.sock"), None)
    drv.uplink = FakeUplink()
    drv.clock = lambda: 1000.0
    return drv


def pages(drv, op):
    return [m for m in drv.uplink.sent if isinstance(m, protocol.Pages) and m.op == op]


def test_report_state_is_only_mutated_on_the_loop_thread(tmp_path, frames_by_addr):
    table, threads = frames_by_addr
    table[0x10000] = [5, 6, 7, 0]  # 0: a page not present, never reported

    async def run():
        drv = make_driver(tmp_path)
        violations: list[str] = []
        loop_thread = threading.get_ident()
        drv.reported = LoopOnly(loop_thread, violations)
        drv.acked_pages = LoopOnly(loop_thread, violations)
        drv.reported_addr = LoopOnly(loop_thread, violations)
        drv.registry.upsert(PID, 1, hello((protocol.Chunk(1, 0x10000, 4 * 4096),)))
        await drv.report_to_host()
        return drv, violations, loop_thread

    drv, violations, loop_thread = asyncio.run(run())
    assert threads and all(t != loop_thread for t in threads), "pagemap must be read off the loop"
    assert violations == []
    [add] = pages(drv, "add")
    assert (add.key, add.ranges) == (f"{PID}:1", ((5, 3),))
    assert drv.reported == {f"{PID}:1": frozenset({5, 6, 7})}


def test_ack_drift_and_removal(tmp_path, frames_by_addr):
    table, _ = frames_by_addr
    table[0x10000] = [5, 6, 7]
    table[0x20000] = [5, 6, 9]

    async def run():
        drv = make_driver(tmp_path)
        rec = drv.registry.upsert(PID, 1, hello((protocol.Chunk(1, 0x10000, 3 * 4096),)))
        await drv.report_to_host()
        [add] = pages(drv, "add")
        drv._on_host_line(protocol.encode(protocol.PagesAck(seq=add.seq, punched=3)))
        drv._apply(rec, drv._plan(rec), ())
        assert rec.reclaimed_bytes == 3 * 4096
        # a GC moved the chunk: every frame goes back to the host, drift counted
        drv.uplink.sent.clear()
        rec.state = hello((protocol.Chunk(1, 0x20000, 3 * 4096),), epoch=2).state
        await drv.report_to_host()
        assert sorted(m.ranges for m in pages(drv, "add")) == [((5, 2), (9, 1))]
        assert [m.ranges for m in pages(drv, "remove")] == [((7, 1),)]
        assert rec.drift_pages == 3 and drv.drift_pages_total == 3
        # the chunk is gone (deflated): its frames are removed, its acks forgotten
        drv.uplink.sent.clear()
        rec.state = hello((), epoch=3).state
        await drv.report_to_host()
        assert [m.ranges for m in pages(drv, "remove")] == [((5, 2), (9, 1))]
        assert drv.reported == {} and drv.acked_pages == {}

    asyncio.run(run())


def test_ping_resyncs_everything(tmp_path, frames_by_addr):
    table, _ = frames_by_addr
    table[0x10000] = [5, 6]

    async def run():
        drv = make_driver(tmp_path)
        drv.registry.upsert(PID, 1, hello((protocol.Chunk(1, 0x10000, 2 * 4096),)))
        await drv.report_to_host()
        await drv.report_to_host()  # nothing changed: nothing sent again
        assert len(pages(drv, "add")) == 1
        drv._on_host_line(protocol.encode(protocol.Ping(id=3)))
        assert drv.reported == {}
        await drv.report_to_host()
        assert len(pages(drv, "add")) == 2
        assert any(isinstance(m, protocol.Pong) for m in drv.uplink.sent)

    asyncio.run(run())


def test_unreadable_pagemap_is_retried_not_reported(tmp_path, monkeypatch):
    from heapballoon.errors import KernelError

    def gone(procfs, pid, chunk, heap=None):
        raise KernelError("no pagemap")

    monkeypatch.setattr(gd, "chunk_frames", gone)

    async def run():
        drv = make_driver(tmp_path)
        drv.registry.upsert(PID, 1, hello((protocol.Chunk(1, 0x10000, 4096),)))
        await drv.report_to_host()
        return drv

    drv = asyncio.run(run())
    assert pages(drv, "add") == [] and drv.reported == {}


def test_a_guest_agent_whose_balloon_cannot_be_read_is_dropped_not_the_driver(tmp_path, monkeypatch):
    """Hostile input row 4, guest side (it shares the code): a MemoryError reading one JVM's
    frames (a rogue's huge chunk) once escaped report_to_host and the tick; now that agent is
    dropped and the others are reported."""
    def boom(procfs, pid, chunk, heap=None):
        if chunk.addr == 0x10000:
            raise MemoryError("a 1 TiB chunk")
        return [77]

    monkeypatch.setattr(gd, "chunk_frames", boom)
    monkeypatch.setattr(gd.pagemap, "heap_ranges", lambda procfs, pid: [(0, 1 << 63)], raising=False)
    monkeypatch.setattr(gd.ProcFS, "starttime", lambda self, pid: 1)
    dropped = []

    async def run():
        drv = make_driver(tmp_path)
        drv.drop_agent = lambda pid, why: dropped.append(pid)
        drv.registry.upsert(PID, 1, hello((protocol.Chunk(1, 0x10000, 4096),)))
        drv.registry.upsert(PID + 1, 1, hello((protocol.Chunk(1, 0x20000, 4096),)))
        await drv.report_to_host()
        return drv

    drv = asyncio.run(run())
    assert dropped == [PID]
    assert [m.ranges for m in pages(drv, "add")] == [((77, 1),)]


def test_find_port_by_name(tmp_path):
    for entry, name in (("vport1p1", "org.heapballoon.exec"), ("vport1p2", "org.heapballoon.0"), ("vport1p3", "")):
        (tmp_path / entry).mkdir()
        (tmp_path / entry / "name").write_text(name + "\n")
    ports = VirtioPorts(str(tmp_path), "/dev")
    assert gd.find_port("org.heapballoon.0", ports) == "/dev/vport1p2"
    assert gd.find_port("nope", ports) is None
    assert gd.find_port("x", VirtioPorts(str(tmp_path / "missing"))) is None


def test_a_step_sends_the_host_typed_jvms_without_building_the_whole_status(tmp_path, monkeypatch):
    import os

    from heapballoon.linux.procfs import ProcFS
    from heapballoon.status import JvmStatus

    drv = make_driver(tmp_path)
    pid = os.getpid()
    state = protocol.State(heap_max_bytes=256 << 20, heap_committed_bytes=256 << 20, live_bytes=64 << 20,
                           balloon_bytes=32 << 20, reclaim="report")
    hello = protocol.Hello(pid=pid, name="app", agent_version="t", jvm_version="17", jvm_vendor="t", gc="G1",
                           region_bytes=1 << 20, address_mode="jni", reclaim_modes=("report",), target_bytes=0,
                           state=state)
    drv.registry.upsert(pid, ProcFS().starttime(pid), hello)

    def whole_status():
        raise AssertionError("the guest built the whole status to send one number")

    monkeypatch.setattr(drv.node, "status", whole_status)
    monkeypatch.setattr(drv.node, "status_typed", whole_status)
    asyncio.run(drv.step())
    sent = [m for m in drv.uplink.sent if isinstance(m, protocol.GuestStatus)]
    assert len(sent) == 1 and sent[0].balloon_bytes == 32 << 20
    assert [type(j) for j in sent[0].jvms] == [JvmStatus] and sent[0].jvms[0].pid == pid
