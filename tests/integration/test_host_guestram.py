"""GuestRam, PageSet, the reclaim loop and KSM helpers on a local memfd with a fake QMP."""

from __future__ import annotations

import asyncio
import os

import pytest

from heapballoon.errors import ReclaimError
from heapballoon.host import guestram
from heapballoon.host.guestram import PAGE_BYTES as P, GuestRam
from heapballoon.host.ksm import guest_rss_bytes
from heapballoon.qemu.layout import GuestLayout, RamRange
from heapballoon.host.pageset import PageSet
from heapballoon.host.reclaim import Reclaimer, percentile, split_batches

PAGES = 4096




def fill(ram: GuestRam, page: int, count: int, byte: int | None) -> None:
    """byte None: write zeros (allocated zero pages); else pages full of byte."""
    os.pwrite(ram.fd, bytes([byte or 0]) * (count * P), page * P)


def test_check_and_punch_counts_every_page_once(ram):
    fill(ram, 0, 1024, None)              # dirty zeros
    fill(ram, 10, 1, 0x41)                # data in the middle
    os.pwrite(ram.fd, b"\x01", 20 * P + P - 1)  # one byte at a page's end
    # pages 1024..2047: holes (never written); 2048..2100 data
    fill(ram, 2048, 53, 0x7F)
    before = ram.resident_bytes()
    assert before == (1024 + 53) * P
    res = ram.check_and_punch([(0, 2200 * P)])
    assert res.skipped_nonzero_pages == 2 + 53
    assert res.punched_pages == 1024 - 2
    assert res.already_pages == 2200 - 1024 - 53
    assert ram.resident_bytes() == before - res.punched_pages * P
    assert os.pread(ram.fd, P, 10 * P) == b"\x41" * P
    assert os.pread(ram.fd, P, 20 * P)[-1:] == b"\x01"
    assert os.pread(ram.fd, 53 * P, 2048 * P) == b"\x7f" * (53 * P)
    # a second pass finds holes
    again = ram.check_and_punch([(0, 1024 * P)])
    assert (again.punched_pages, again.already_pages, again.skipped_nonzero_pages) == (0, 1022, 2)


def test_chunk_boundaries_and_hole_accounting(ram):
    n = guestram.CHUNK_BYTES // P
    fill(ram, 0, 3 * n, None)
    fill(ram, n - 1, 2, 0x33)  # straddles the first chunk boundary
    res = ram.check_and_punch([(0, 3 * n * P)])
    assert res.skipped_nonzero_pages == 2 and res.punched_pages == 3 * n - 2
    assert ram.data_runs(0, 3 * n * P) == [((n - 1) * P, 2 * P)]
    assert ram.hole_bytes([(0, 3 * n * P)]) == (3 * n - 2) * P


def test_check_and_punch_refuses_bad_extents(ram):
    with pytest.raises(ReclaimError):
        ram.check_and_punch([(PAGES * P, P)])
    with pytest.raises(ReclaimError):
        ram.check_and_punch([(100, P)])


def test_open_refuses_non_qemu_process():
    with pytest.raises(ReclaimError, match="not a QEMU"):
        GuestRam.open(os.getpid(), 1 << 20)


def test_pageset_add_remove():
    s = PageSet()
    assert s.add(10, 10) == 10
    assert s.add(15, 10) == 5
    assert s.add(30, 5) == 5
    assert list(s) == [(10, 15), (30, 5)] and s.pages == 20
    assert s.add(25, 5) == 5  # bridges the gap
    assert list(s) == [(10, 25)]
    assert s.remove(12, 3) == 3
    assert list(s) == [(10, 2), (15, 20)] and s.pages == 22
    assert s.remove(0, 100) == 22 and s.pages == 0 and list(s) == []
    assert s.remove(5, 5) == 0


def test_split_batches():
    b = split_batches([(0, 5 * P), (100 * P, 2 * P)], 3)
    assert b == [[(0, 3 * P)], [(3 * P, 2 * P), (100 * P, P)], [(101 * P, P)]]
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0 and percentile([], 99) == 0.0
    assert percentile(list(map(float, range(1, 101))), 99) == 99.0


class FakeQMP:
    def __init__(self, status="running", fail_on=None):
        self.status = status
        self.calls: list[str] = []
        self.fail_on = fail_on

    async def execute(self, cmd, arguments=None):
        self.calls.append(cmd)
        if cmd == self.fail_on:
            raise ConnectionResetError("QMP went away")
        if cmd == "query-status":
            return {"status": self.status, "running": self.status == "running"}
        if cmd == "stop":
            self.status = "paused"
        if cmd == "cont":
            self.status = "running"
        return {}


def lay_for(ram: GuestRam) -> GuestLayout:
    # gpa 1 MiB.. maps to offset 0, like a tiny guest
    return GuestLayout([RamRange(0x100000, ram.size_bytes, 0)], ram_bytes=ram.size_bytes)


def test_reclaimer_batches_pauses_and_resumes(ram):
    fill(ram, 0, 100, None)
    fill(ram, 50, 1, 0x11)
    qmp = FakeQMP()
    rec = Reclaimer(ram, lay_for(ram), qmp, batch_pages=32)
    res = asyncio.run(rec.reclaim([(0x100, 100), (0x100, 10), (0x100 + PAGES, 7)]))
    assert (res.punched_pages, res.skipped_nonzero_pages, res.already_pages, res.rejected_pages) == (99, 1, 0, 17)
    assert res.batches == 4 and len(res.pauses_ms) == 4
    assert qmp.calls == ["query-status", "stop", "cont"] * 4 and qmp.status == "running"


def test_reclaimer_defers_a_vm_paused_by_others_and_leaves_it_paused(ram):
    """Hostile input row 6: not hostd's pause, so it may end at any time: nothing punched."""
    fill(ram, 0, 4, None)
    qmp = FakeQMP("paused")
    res = asyncio.run(Reclaimer(ram, lay_for(ram), qmp).reclaim([(0x100, 4)]))
    assert res.punched_pages == 0 and res.unprocessed_pages == 4 and "deferred" in res.error
    assert qmp.calls == ["query-status"] and res.pauses_ms == [] and ram.resident_bytes() == 4 * P


def test_reclaimer_refuses_migrating_vm(ram):
    fill(ram, 0, 4, None)
    res = asyncio.run(Reclaimer(ram, lay_for(ram), FakeQMP("inmigrate")).reclaim([(0x100, 4)]))
    assert res.punched_pages == 0 and res.unprocessed_pages == 4 and "inmigrate" in res.error
    assert ram.resident_bytes() == 4 * P


def test_reclaimer_conts_after_an_error_mid_batch(ram, monkeypatch):
    fill(ram, 0, 64, None)
    qmp = FakeQMP()
    calls = []

    def boom(extents, punch=True):
        calls.append(extents)
        if len(calls) == 2:
            raise OSError(5, "I/O error")
        return GuestRam.check_and_punch(ram, extents)

    monkeypatch.setattr(ram, "check_and_punch", boom)
    res = asyncio.run(Reclaimer(ram, lay_for(ram), qmp, batch_pages=16).reclaim([(0x100, 64)]))
    assert qmp.status == "running" and qmp.calls[-1] == "cont"
    assert res.punched_pages == 16 and res.unprocessed_pages == 48 and "I/O error" in res.error


def test_reclaimer_conts_when_stop_fails(ram):
    fill(ram, 0, 4, None)
    qmp = FakeQMP(fail_on="stop")
    res = asyncio.run(Reclaimer(ram, lay_for(ram), qmp).reclaim([(0x100, 4)]))
    assert "stop" in res.error and qmp.calls == ["query-status", "stop", "cont"]
    assert ram.resident_bytes() == 4 * P  # nothing punched without a pause


def test_guest_rss_from_smaps():
    import mmap
    size = (24 << 20) + 7 * P  # an unusual size: 8 MiB thread stacks must not match
    m = mmap.mmap(-1, size)
    m[: 3 * P] = b"x" * (3 * P)
    got = guest_rss_bytes(os.getpid(), size)
    assert got["size_bytes"] >= size and got["rss_bytes"] >= 3 * P
    m.close()
    with pytest.raises(ReclaimError):
        guest_rss_bytes(os.getpid(), 1 << 45)
