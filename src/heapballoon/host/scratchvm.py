"""A throwaway QEMU with memfd guest RAM and no guest OS, for tests and benchmarks.

This module owns starting and stopping such a QEMU (``-S``, TCG, ``-nodefaults``, QMP on a
Unix socket) and the punch benchmark (:func:`reclaim_benchmark`,
``python -m heapballoon.host.scratchvm``). Real VMs are started by heapballoon.vm; this is
only what host tests need: a real QEMU process whose guest RAM is a real memfd.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time

from heapballoon.errors import VMError

QEMU = "qemu-system-x86_64"


class ScratchVM:
    """``async with ScratchVM(512 << 20) as vm:`` → ``vm.pid``, ``vm.qmp`` (connected QMPClient),
    ``vm.dir`` (holds qmp.sock; its path is on QEMU's command line)."""

    def __init__(self, memory_bytes: int, machine: str = "q35", vm_dir: str | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.memory_bytes = memory_bytes
        self.machine = machine
        self._own_dir = vm_dir is None
        self.dir = vm_dir or tempfile.mkdtemp(prefix="hb-scratchvm-")
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.qmp = None

    @property
    def qmp_path(self) -> str:
        return os.path.join(self.dir, "qmp.sock")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout_s: float = 10.0) -> ScratchVM:
        from qemu.qmp import QMPClient

        if shutil.which(QEMU) is None:
            raise VMError(f"{QEMU} is not installed")
        os.makedirs(self.dir, exist_ok=True)
        mib = self.memory_bytes >> 20
        cmd = [QEMU, "-machine", f"{self.machine},memory-backend=ram0", "-accel", "tcg",
               "-object", f"memory-backend-memfd,id=ram0,size={mib}M,share=on", "-m", f"{mib}M",
               "-S", "-nodefaults", "-nographic", "-display", "none", "-serial", "none",
               "-monitor", "none", "-qmp", f"unix:{self.qmp_path},server=on,wait=off", *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        self.qmp = QMPClient("scratchvm")
        while True:
            if self.proc.poll() is not None:
                raise VMError(f"QEMU exited with {self.proc.returncode}: "
                              f"{self.proc.stderr.read().decode(errors='replace')[-500:]} (command {cmd})")
            try:
                await self.qmp.connect(self.qmp_path)
                return self
            except Exception as err:  # noqa: BLE001 - socket not there yet
                if time.monotonic() > deadline:
                    await self.stop()
                    raise VMError(f"QEMU QMP socket {self.qmp_path} not ready in {timeout_s} s") from err
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.qmp is not None:
            try:
                await self.qmp.disconnect()
            except Exception:  # noqa: BLE001
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def __aenter__(self) -> ScratchVM:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


async def reclaim_benchmark(memory_bytes: int = 512 << 20, pages: int = 131072,
                            batch_pages: int | None = None, running: bool = True) -> dict:
    """Fill ``pages`` guest pages with dirty zeros, reclaim them; throughput and pauses."""
    from heapballoon.host.guestram import PAGE_BYTES, GuestRam
    from heapballoon.host.layout import GuestLayout
    from heapballoon.host.reclaim import DEFAULT_BATCH_PAGES, Reclaimer, percentile

    batch_pages = batch_pages or DEFAULT_BATCH_PAGES
    async with ScratchVM(memory_bytes) as vm:
        ram = GuestRam.open(vm.pid, memory_bytes)
        layout = await GuestLayout.from_qmp(vm.qmp, ram_bytes=memory_bytes)
        first_pfn = layout.ranges[-1].gpa // PAGE_BYTES  # the big range starting at 1 MiB
        pages = min(pages, layout.ranges[-1].size_bytes // PAGE_BYTES)
        zeros = bytes(1 << 20)
        off0 = layout.offset_of(first_pfn)
        for off in range(off0, off0 + pages * PAGE_BYTES, len(zeros)):
            os.pwrite(ram.fd, zeros[: min(len(zeros), off0 + pages * PAGE_BYTES - off)], off)
        if running:
            await vm.qmp.execute("cont")
        before = ram.resident_bytes()
        rec = Reclaimer(ram, layout, vm.qmp, batch_pages=batch_pages)
        t0 = time.perf_counter()
        res = await rec.reclaim([(first_pfn, pages)])
        wall_s = time.perf_counter() - t0
        after = ram.resident_bytes()
        status = (await vm.qmp.execute("query-status"))["status"]
        ram.close()
    return {
        "pages": pages, "batch_pages": batch_pages, "batches": res.batches,
        "punched_pages": res.punched_pages, "freed_bytes": before - after,
        "wall_ms": round(wall_s * 1000, 1),
        "throughput_pages_per_s": round(pages / wall_s),
        "throughput_gib_per_s": round(pages * PAGE_BYTES / wall_s / (1 << 30), 2),
        "pause_ms_p50": round(percentile(res.pauses_ms, 50), 2),
        "pause_ms_p99": round(percentile(res.pauses_ms, 99), 2),
        "pause_ms_max": round(max(res.pauses_ms, default=0.0), 2),
        "vm_status_after": status,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="hostd punch benchmark on a scratch QEMU")
    p.add_argument("--pages", type=int, default=131072)
    p.add_argument("--batch-pages", type=int, nargs="*", default=[8192])
    p.add_argument("--paused", action="store_true", help="leave the VM paused (-S) instead of running")
    args = p.parse_args(argv)
    for b in args.batch_pages:
        print(asyncio.run(reclaim_benchmark(pages=args.pages, batch_pages=b, running=not args.paused)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
