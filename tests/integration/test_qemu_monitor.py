"""heapballoon.qemu.monitor's virtio-balloon face on a real QEMU (no guest OS, so the guest sends
no statistics and does not move the balloon): the one QMP client reads what hostd's policy reads."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from scratchvm import ScratchVM
from heapballoon.host.virtioballoon import parse_reading
from heapballoon.qemu.monitor import QMPMonitor

pytestmark = [pytest.mark.vm, pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed")]
RAM_BYTES = 256 << 20


def test_balloon_turns_statistics_on_asks_for_a_size_and_reads_the_device(tmp_path):
    async def main():
        async with ScratchVM(RAM_BYTES, vm_dir=str(tmp_path / "vm"),
                             extra_args=("-device", "virtio-balloon-pci,id=balloon0")) as qemu:
            await qemu.qmp.disconnect()  # one client a socket: the monitor's turn

            def ask():
                with QMPMonitor(qemu.qmp_path, 5.0) as m:
                    first = m.balloon(None, 2)
                    asked = m.balloon(RAM_BYTES - (64 << 20), None)
                    period = m.execute("qom-get", {"path": "/machine/peripheral/balloon0",
                                                   "property": "guest-stats-polling-interval"})
                    return first, asked, period

            return await asyncio.to_thread(ask)

    first, asked, period = asyncio.run(main())
    reading = parse_reading(*first, now_s=0.0, wall_s=0.0)
    assert reading.actual_bytes == RAM_BYTES and reading.free_bytes is None  # no guest: no statistics
    assert period == 2
    # no guest driver to give pages up: the device still leaves the guest all its RAM
    assert parse_reading(*asked, now_s=0.0, wall_s=0.0).actual_bytes == RAM_BYTES
