"""The short-pause engine against a real QEMU (no guest OS: TCG, memfd RAM, running firmware):
hostd's own QMP socket, real pauses, and writes that race the reclaim — a write that lands
after the pre-check must survive, as QEMU itself reads it back."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import threading

import pytest

from heapballoon.host.guestram import PAGE_BYTES as P, GuestRam
from heapballoon.qemu.layout import GuestLayout
from heapballoon.qemu.monitor import QMPMonitor
from heapballoon.host.shortpause import PauseModel, ShortPauseReclaimer
from hbtest import until
from scratchvm import ScratchVM

# serial: a running TCG QEMU whose pause timings the engine learns (pause counts are checked).
pytestmark = [pytest.mark.vm, pytest.mark.serial, pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed")]
M = 1 << 20
RAM = 256 * M


async def _xp(vm: ScratchVM, gpa: int) -> int:
    out = await vm.qmp.execute("human-monitor-command", {"command-line": f"xp /1gx {gpa:#x}"})
    return int(out.split(":")[1].split()[0], 16)


class WriterOnStop:
    """The QMP hostd uses, with a writer that strikes just before each ``stop`` is sent —
    after the pre-check saw the pages zero. The writer writes through its own handle on the
    guest RAM file (as a device backend would): a real write to the real memfd."""

    def __init__(self, qmp: QMPMonitor, strike) -> None:
        self.qmp, self.strike, self.stops = qmp, strike, 0

    def __getattr__(self, name):  # resume_count, stop_count, events: the real monitor's
        return getattr(self.qmp, name)

    def execute(self, cmd, arguments=None):
        if cmd == "stop":
            self.strike(self.stops)
            self.stops += 1
        return self.qmp.execute(cmd, arguments)


def _vm_dir(tmp_path) -> tuple[str, tuple[str, ...]]:
    d = str(tmp_path / "vm")
    os.makedirs(d)
    return d, ("-qmp", f"unix:{d}/qmp-hostd.sock,server=on,wait=off")


def test_writes_between_precheck_and_pause_survive_in_real_qemu(tmp_path):
    vm_dir, extra = _vm_dir(tmp_path)

    async def main():
        async with ScratchVM(RAM, vm_dir=vm_dir, extra_args=extra) as vm:
            ram = GuestRam.open(vm.pid, RAM)
            layout = await GuestLayout.from_qmp(vm.qmp, ram_bytes=RAM)
            base = (64 * M) // P
            os.pwrite(ram.fd, bytes(4096 * P), layout.offset_of(base))  # 16 MiB of dirty zeros
            writer_fd = os.dup(ram.fd)
            struck: dict[int, int] = {}

            def strike(n):  # one write per pause, into a page the pre-check saw zero and no
                pfn = base + 4095 - n  # pause has processed yet (pauses go up in offset order)
                value = 0x1100 + n
                os.pwrite(writer_fd, value.to_bytes(8, "little"), layout.offset_of(pfn) + 8 * (n % 512))
                struck[pfn * P + 8 * (n % 512)] = value

            await vm.qmp.execute("cont")
            model = PauseModel(budget_ms=5.0, work_ns_per_byte=5.0)  # small pauses: many strikes

            def work():
                with QMPMonitor(os.path.join(vm_dir, "qmp-hostd.sock")) as q:
                    return ShortPauseReclaimer(ram, layout, WriterOnStop(q, strike), model).reclaim([(base, 4096)])

            res = await asyncio.to_thread(work)
            assert res.error == "" and 3 <= len(res.pauses) < 64
            hit_pages = {gpa // P for gpa in struck}
            assert len(hit_pages) == len(res.pauses)
            assert res.skipped_nonzero_pages == len(hit_pages)
            assert res.punched_pages == 4096 - len(hit_pages)
            for gpa, value in struck.items():  # QEMU (the guest's view) still reads every write
                assert await _xp(vm, gpa) == value, hex(gpa)
            assert (await vm.qmp.execute("query-status"))["status"] == "running"
            os.close(writer_fd)
            ram.close()

    asyncio.run(main())


class GuestWriterPaused:
    """The QMP hostd uses, with a writer thread playing the guest's vCPU: it writes only while
    the VM runs (``stop`` waits for its write in progress and holds it until ``cont``)."""

    def __init__(self, qmp: QMPMonitor, running: threading.Lock) -> None:
        self.qmp, self.running = qmp, running

    def __getattr__(self, name):  # resume_count, stop_count, events: the real monitor's
        return getattr(self.qmp, name)

    def execute(self, cmd, arguments=None):
        if cmd == "stop":
            self.running.acquire()
        try:
            return self.qmp.execute(cmd, arguments)
        finally:
            if cmd == "cont":
                self.running.release()


def test_a_writer_racing_the_reclaim_loses_nothing(tmp_path):
    """A thread writes unique values into random pages of the reported range for the whole
    reclaim, whenever the VM runs; every value is still there afterwards."""
    vm_dir, extra = _vm_dir(tmp_path)

    async def main():
        async with ScratchVM(RAM, vm_dir=vm_dir, extra_args=extra) as vm:
            ram = GuestRam.open(vm.pid, RAM)
            layout = await GuestLayout.from_qmp(vm.qmp, ram_bytes=RAM)
            base, pages = (32 * M) // P, 16384  # 64 MiB
            off0 = layout.offset_of(base)
            for off in range(off0, off0 + pages * P, M):
                os.pwrite(ram.fd, bytes(M), off)
            await vm.qmp.execute("cont")
            writer_fd = os.dup(ram.fd)
            written: dict[int, int] = {}
            stop = threading.Event()
            running = threading.Lock()

            def writer():
                rng = random.Random(7)
                n = 0
                while not stop.is_set() and n < 20000:
                    off = off0 + rng.randrange(pages) * P + 8 * rng.randrange(512)
                    n += 1
                    with running:
                        os.pwrite(writer_fd, n.to_bytes(8, "little"), off)
                    written[off] = n

            def work():
                with QMPMonitor(os.path.join(vm_dir, "qmp-hostd.sock")) as q:
                    return ShortPauseReclaimer(ram, layout, GuestWriterPaused(q, running),
                                               PauseModel(budget_ms=2.0)).reclaim([(base, pages)])

            t = threading.Thread(target=writer)
            t.start()
            try:
                res = await asyncio.to_thread(work)
            finally:
                stop.set()
                t.join()
            assert res.error == ""
            lost = [off for off, n in written.items()
                    if int.from_bytes(os.pread(ram.fd, 8, off), "little") != n]
            assert not lost, f"{len(lost)} of {len(written)} writes lost"
            print(f"{len(written)} racing writes, {res.punched_pages} punched, {res.skipped_nonzero_pages} skipped, "
                  f"{len(res.pauses)} pauses")
            os.close(writer_fd)
            ram.close()

    asyncio.run(main())


class ContAfterRecheck:
    """The guest RAM view with a hook run once, right after the first re-check under the pause
    (the pre-check uses ``zero_runs`` only): the moment between re-check and punch."""

    def __init__(self, real, hook) -> None:
        self.real, self.hook = real, hook

    def __getattr__(self, name):
        return getattr(self.real, name)

    def is_zero(self, offset: int, length: int) -> bool:
        zero = self.real.is_zero(offset, length)
        if self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return zero


def test_another_clients_cont_under_hostds_pause_stops_the_punch(tmp_path):
    """Hostile input row 6 in real QEMU: while hostd holds its pause and has re-checked 256
    zero pages, another monitor client sends ``cont`` and the (now running) guest writes one of
    them. QEMU's RESUME reaches hostd's socket before the vCPUs run, hostd punches nothing more,
    and QEMU itself reads the write back."""
    vm_dir, extra = _vm_dir(tmp_path)
    other = os.path.join(vm_dir, "qmp-other.sock")
    extra += ("-qmp", f"unix:{other},server=on,wait=off")

    async def main():
        async with ScratchVM(RAM, vm_dir=vm_dir, extra_args=extra) as vm:
            ram = GuestRam.open(vm.pid, RAM)
            layout = await GuestLayout.from_qmp(vm.qmp, ram_bytes=RAM)
            base = (64 * M) // P
            os.pwrite(ram.fd, bytes(256 * P), layout.offset_of(base))
            await vm.qmp.execute("cont")
            await until(lambda: os.path.exists(other) and os.path.exists(os.path.join(vm_dir, "qmp-hostd.sock")), 10,
                        what="QEMU's extra QMP sockets")
            gpa, value = (base + 200) * P + 64, 0x5EC07D
            writer_fd = os.dup(ram.fd)

            def other_client_cont_then_guest_write():
                with QMPMonitor(other) as o:
                    o.execute("cont")
                os.pwrite(writer_fd, value.to_bytes(8, "little"), layout.offset_of(base + 200) + 64)

            ram.view  # noqa: B018 - made now, so the hook wraps the real one
            ram._view = ContAfterRecheck(ram._view, other_client_cont_then_guest_write)

            def work():
                with QMPMonitor(os.path.join(vm_dir, "qmp-hostd.sock")) as q:
                    return ShortPauseReclaimer(ram, layout, q).reclaim([(base, 256)])

            res = await asyncio.to_thread(work)
            assert "resumed by another client" in res.error, res
            assert res.punched_pages == 0 and res.unprocessed_pages == 256
            assert await _xp(vm, gpa) == value
            assert (await vm.qmp.execute("query-status"))["status"] == "running"
            os.close(writer_fd)
            ram.close()

    asyncio.run(main())
