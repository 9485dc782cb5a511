"""Hostile input row 4: pagemap work per agent is bounded, whatever the agent claims.

Real pagemap of this process: a private anonymous mapping, written and then released.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import pytest

from heapballoon import protocol
from heapballoon.errors import ProtocolError
from heapballoon.linux import pagemap
from heapballoon.linux.procfs import ProcFS

MIB = 1 << 20


@pytest.fixture
def released():
    region = mmap.mmap(-1, 8 * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for off in range(0, len(region), MIB):
        region[off:off + MIB] = b"\x01" * MIB
    region.madvise(mmap.MADV_DONTNEED)
    yield ctypes.addressof(ctypes.c_char.from_buffer(region)), region


def test_pagemap_is_read_in_bounded_pieces_and_at_most_a_budget_per_tick(released, monkeypatch):
    """No read is larger than READ_PIECE_PAGES entries (a 1 TiB chunk once meant one 2 GiB
    read), and one step reads at most its budget of pages; the scan resumes where it stopped."""
    from heapballoon.driver.verify import Scan, Verification, verify_step

    addr, _region = released
    reads = []
    real_pread = os.pread

    def pread(fd, n, offset):
        reads.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(pagemap, "READ_PIECE_PAGES", 256)
    monkeypatch.setattr(pagemap.os, "pread", pread)
    procfs, me = ProcFS(), os.getpid()
    chunks = (protocol.Chunk(1, addr, 8 * MIB), protocol.Chunk(2, addr, 8 * MIB))  # overlapping: counted once
    step = verify_step(procfs, me, procfs.starttime(me), chunks, None, None, 0, budget_pages=1000)
    assert isinstance(step, Scan) and step.done_pages == 1000 and step.total_pages == 2048
    assert max(reads) <= 256 * pagemap.ENTRY_BYTES and sum(reads) == 1000 * pagemap.ENTRY_BYTES
    step = verify_step(procfs, me, procfs.starttime(me), chunks, step, None, 0, budget_pages=1000)
    assert isinstance(step, Scan) and step.done_pages == 2000
    done = verify_step(procfs, me, procfs.starttime(me), chunks, step, None, 0, budget_pages=1000)
    assert isinstance(done, Verification) and done.balloon_pages == 2048 and done.not_resident_pages == 2048


def test_unmapped_and_never_touched_pages_are_never_reclaimed(released):
    """Reclaimed means resident before and not resident after: claims past the mapping are not
    read, and never-touched pages count only up to what the process gave back."""
    from heapballoon.driver.verify import verify_step

    addr, _region = released
    procfs, me = ProcFS(), os.getpid()
    # This process may have given back a lot already (earlier tests in the same pytest run):
    # the never-touched mapping is larger than that, so the cap is what decides.
    res = pagemap.residency(procfs, me)
    gave_back = max(0, res.peak_bytes - res.resident_bytes - res.swap_bytes)
    size = (gave_back // MIB + 64) * MIB
    untouched = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    u_addr = ctypes.addressof(ctypes.c_char.from_buffer(untouched))
    res = pagemap.residency(procfs, me)
    gave_back = max(0, res.peak_bytes - res.resident_bytes - res.swap_bytes)
    v = verify_step(procfs, me, procfs.starttime(me), (protocol.Chunk(1, u_addr, size),), None, None, 0)
    assert v.not_resident_pages == size // pagemap.PAGE_SIZE
    assert v.reclaimed_bytes <= gave_back + MIB < size
    huge = verify_step(procfs, me, procfs.starttime(me), (protocol.Chunk(1, 1 << 46, 1 << 40),), None, None, 0)
    assert huge.balloon_pages == 0 and huge.reclaimed_pages == 0 and huge.claimed_pages == (1 << 40) // pagemap.PAGE_SIZE


def test_a_state_may_hold_at_most_65536_chunks():
    chunks = [{"id": i, "addr": 4096 * i, "len": 1} for i in range(protocol.MAX_CHUNKS + 1)]
    with pytest.raises(ProtocolError, match="too many chunks"):
        protocol.State.parse({"heap_max_bytes": 1 << 40, "chunks": chunks})
    assert len(protocol.State.parse({"heap_max_bytes": 1 << 40, "chunks": chunks[:-1]}).chunks) == protocol.MAX_CHUNKS
