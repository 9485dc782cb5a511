"""The guest RAM layout is read once per VM: at launch, into ``vm.json`` (the VM-directory
contract); hostd takes it from there and asks QEMU's monitor for no memory tree. A real QEMU
(no guest OS) whose directory is written through vm.vmdir, as the launcher writes it."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from heapballoon.host import vmreclaim
from heapballoon.host.guestram import PAGE_BYTES as P
from scratchvm import ScratchVM
from heapballoon.host.vmregistry import load_vm
from heapballoon.qemu.layout import GuestLayout
from heapballoon.qemu.monitor import QMPMonitor
from heapballoon.vm.launcher import read_ram_layout
from heapballoon.vm.vmdir import VMDir, VMPaths

pytestmark = [pytest.mark.vm, pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed")]
RAM_BYTES = 256 << 20


class CountingMonitor(QMPMonitor):
    """The real monitor, remembering which commands went through it."""

    commands: list[str] = []

    def execute(self, cmd, arguments=None):
        CountingMonitor.commands.append(cmd)
        return super().execute(cmd, arguments)


def test_hostd_takes_the_launch_layout_from_vm_json_and_reads_no_memory_tree(tmp_path):
    paths = VMPaths.of(tmp_path, "vm1")

    async def main():
        async with ScratchVM(RAM_BYTES, vm_dir=str(paths.dir)) as qemu:
            from_qemu = await GuestLayout.from_qmp(qemu.qmp, ram_bytes=RAM_BYTES)
            await qemu.qmp.execute("cont")  # QEMU starts stopped (-S): hostd defers a reclaim on a VM paused by others
            await qemu.qmp.disconnect()  # QEMU serves one client a socket: the launcher's, then hostd's turn
            VMDir(paths=paths, pid=qemu.pid, memory_bytes=RAM_BYTES,
                  ram_layout=await asyncio.to_thread(read_ram_layout, qemu.qmp_path, RAM_BYTES)).save()
            vm = load_vm(str(paths.dir))
            assert vm is not None, "load_vm refused a live VM written through the vmdir contract"
            assert vm.launch_layout() is not None and vm.launch_layout().ranges == from_qemu.ranges
            vm.monitor = lambda timeout_s: CountingMonitor(qemu.qmp_path, timeout_s)
            base = (64 << 20) // P  # 1 MiB of never-touched guest RAM, reported as a balloon
            try:
                extents, results = await asyncio.to_thread(vmreclaim.reclaim_short, vm, [[(base, 256)]], 5.0)
            finally:
                vm.close()
            return extents, results

    extents, results = asyncio.run(main())
    assert results[0].error == "" and results[0].already_pages + results[0].punched_pages == 256, results
    assert extents == [[(64 << 20, 256 * P)]]
    assert "human-monitor-command" not in CountingMonitor.commands, CountingMonitor.commands
    assert "stop" in CountingMonitor.commands or results[0].already_pages == 256
