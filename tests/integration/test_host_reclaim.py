"""hostd's reclaim path against real QEMU processes (no guest OS: -S, TCG, memfd RAM).

The VMs run a firmware of HLT instructions (``ScratchVM(firmware="halt")``): after ``cont`` they are
running, as hostd needs, but nothing in them writes guest RAM, so page contents and counts are exact.
With SeaBIOS they raced its writes near the top of low RAM (CI, 2026-12-04: 0 read at 2 GiB - 4 KiB;
on a loaded machine, 2046 punched for 2045 and 'tio_scsi' read 16 MiB below 2 GiB)."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from heapballoon.host.guestram import PAGE_BYTES as P, GuestRam
from heapballoon.qemu.layout import GuestLayout
from heapballoon.host.reclaim import Reclaimer
from scratchvm import ScratchVM

# not serial: with the halting firmware no guest code runs, so a busy neighbour changes no figure here
pytestmark = [pytest.mark.vm, pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed")]
M, G = 1 << 20, 1 << 30


async def _status(vm: ScratchVM) -> str:
    return (await vm.qmp.execute("query-status"))["status"]


async def _xp(vm: ScratchVM, gpa: int) -> int:
    out = await vm.qmp.execute("human-monitor-command", {"command-line": f"xp /1gx {gpa:#x}"})
    return int(out.split(":")[1].split()[0], 16)


def test_reclaim_punches_zero_pages_and_keeps_data():
    async def main():
        async with ScratchVM(512 * M, firmware="halt") as vm:
            ram = GuestRam.open(vm.pid, 512 * M)
            layout = await GuestLayout.from_qmp(vm.qmp, ram_bytes=512 * M)
            base = (256 * M) // P  # guest page 256 MiB
            off = layout.offset_of(base)
            assert off == 256 * M
            os.pwrite(ram.fd, bytes(2048 * P), off)                # 2048 dirty zero pages
            data = {base + 7: b"A", base + 1000: b"B", base + 2047: b"C"}
            for pfn, b in data.items():
                os.pwrite(ram.fd, b * 16, layout.offset_of(pfn) + 100)  # a few bytes of data
            await vm.qmp.execute("cont")                            # the VM runs (its CPU halted)
            before = ram.resident_bytes()
            rec = Reclaimer(ram, layout, vm.qmp, batch_pages=512)
            top = (512 * M) // P
            res = await rec.reclaim([(base, 2048), (base + 10, 5), (top - 1, 3), (0xA0, 2), (base + 4096, 64)])
            assert res.error == ""
            assert res.skipped_nonzero_pages == 3
            assert res.punched_pages == 2045
            assert res.already_pages == 64 + 1  # never-written pages (+ the last page of RAM)
            assert res.rejected_pages == 5 + 2 + 2  # duplicates, above RAM, VGA window
            assert ram.hole_bytes([(off, 2048 * P)]) == 2045 * P
            assert ram.resident_bytes() == before - 2045 * P  # nothing else in guest RAM changed
            for pfn, b in data.items():
                assert os.pread(ram.fd, 16, layout.offset_of(pfn) + 100) == b * 16
                assert await _xp(vm, pfn * P + 100) == int.from_bytes(b * 8, "little")
            assert len(res.pauses_ms) == res.batches == 5 and all(p > 0 for p in res.pauses_ms)
            assert await _status(vm) == "running"
            ram.close()

    asyncio.run(main())


def test_paused_vm_stays_paused_and_error_mid_batch_resumes(monkeypatch):
    async def main():
        async with ScratchVM(256 * M, firmware="halt") as vm:
            ram = GuestRam.open(vm.pid, 256 * M)
            layout = await GuestLayout.from_qmp(vm.qmp, ram_bytes=256 * M)
            base = (64 * M) // P
            os.pwrite(ram.fd, bytes(256 * P), layout.offset_of(base))
            before = ram.resident_bytes()
            res = await Reclaimer(ram, layout, vm.qmp).reclaim([(base, 128)])
            # -S: someone else's pause, which may end at any time: deferred, left alone (row 6)
            assert res.punched_pages == 0 and res.unprocessed_pages == 128 and "deferred" in res.error
            assert ram.resident_bytes() == before and res.pauses_ms == []
            assert await _status(vm) == "prelaunch"

            await vm.qmp.execute("cont")
            n = 0
            real = ram.check_and_punch

            def flaky(extents, punch=True):
                nonlocal n
                n += 1
                if n == 2:
                    raise OSError(5, "injected I/O error")
                return real(extents, punch)

            monkeypatch.setattr(ram, "check_and_punch", flaky)
            res = await Reclaimer(ram, layout, vm.qmp, batch_pages=32).reclaim([(base + 128, 128)])
            assert "injected" in res.error and res.punched_pages == 32 and res.unprocessed_pages == 96
            assert await _status(vm) == "running"
            ram.close()

    asyncio.run(main())


def test_qemu_dying_before_reclaim_is_an_error_not_a_crash():
    async def main():
        async with ScratchVM(128 * M, firmware="halt") as vm:
            ram = GuestRam.open(vm.pid, 128 * M)
            layout = await GuestLayout.from_qmp(vm.qmp, ram_bytes=128 * M)
            vm.proc.kill()
            vm.proc.wait()
            res = await Reclaimer(ram, layout, vm.qmp).reclaim([(0x1000, 16)])
            assert res.error and res.unprocessed_pages == 16 and res.punched_pages == 0
            ram.close()

    asyncio.run(main())


def test_5g_guest_pages_above_4g_map_where_qemu_reads_them():
    async def main():
        async with ScratchVM(5 * G, firmware="halt") as vm:
            ram = GuestRam.open(vm.pid, 5 * G)
            layout = await GuestLayout.from_qmp(vm.qmp, ram_bytes=5 * G)
            assert [r.gpa for r in layout.ranges][-1] == 4 * G
            marks = {4 * G: 0x1111, 4 * G + 3 * G - P: 0x2222, 2 * G - P: 0x3333, 0x100000: 0x4444,
                     4 * G + G + 8 * P: 0x5555}
            for gpa, value in marks.items():
                off = layout.offset_of(gpa // P)
                os.pwrite(ram.fd, value.to_bytes(8, "little"), off)
            for gpa, value in marks.items():
                assert await _xp(vm, gpa) == value, hex(gpa)
            assert layout.offset_of((2 * G) // P) is None and layout.offset_of((4 * G) // P - 1) is None
            # a reclaim across the split: the marked pages survive, zero ones around them go
            for gpa in (4 * G + P, 2 * G - 2 * P):
                os.pwrite(ram.fd, bytes(P), layout.offset_of(gpa // P))
            await vm.qmp.execute("cont")  # hostd punches only under a pause of its own
            res = await Reclaimer(ram, layout, vm.qmp).reclaim([((2 * G) // P - 2, 2), ((4 * G) // P, 2)])
            assert (res.punched_pages, res.skipped_nonzero_pages) == (2, 2)
            for gpa, value in marks.items():
                assert await _xp(vm, gpa) == value, hex(gpa)
            ram.close()

    asyncio.run(main())
