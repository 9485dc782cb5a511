"""hostd's guest-RAM file has one owner: status, the policy's status and the reclaim worker run
in different threads and may all want the file the first time at once; a real QEMU (no guest
OS) must end up with exactly one fd of ours on its RAM, and none once hostd forgets the VM."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time

import pytest

from heapballoon.errors import ReclaimError
from heapballoon.host import vmstatus
from heapballoon.host.guestram import GuestRam
from scratchvm import ScratchVM
from heapballoon.host.vmsession import VMIdentity, VMSession
from heapballoon.linux.procfs import ProcFS

pytestmark = [pytest.mark.vm, pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed")]
RAM_BYTES = 64 << 20
THREADS = 4
OPEN_WINDOW_S = 0.3  # each real open is held this long before it returns: the race made certain


def _our_memfd_fds() -> list[int]:
    """Our fds open on a memfd (the test opens none of its own)."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:"):
                out.append(int(name))
        except OSError:
            pass
    return out


def test_guest_ram_is_opened_once_by_concurrent_status_threads_and_closed_with_the_vm(tmp_path, monkeypatch):
    real_open = GuestRam.open.__func__
    opens: list[int] = []

    def slow_open(cls, pid, size_bytes, procfs=None):
        ram = real_open(cls, pid, size_bytes, procfs)
        opens.append(ram.fd)
        time.sleep(OPEN_WINDOW_S)  # another thread that checks "not open yet" now would open again
        return ram

    monkeypatch.setattr(GuestRam, "open", classmethod(slow_open))

    async def main():
        async with ScratchVM(RAM_BYTES, vm_dir=str(tmp_path / "vm")) as qemu:
            before = _our_memfd_fds()
            vm = VMSession(VMIdentity("vm1", qemu.dir, qemu.pid, ProcFS().starttime(qemu.pid), RAM_BYTES, "pfn"))
            start = threading.Barrier(THREADS)

            def status() -> vmstatus.VMSnapshot:
                start.wait(timeout=10)
                return vmstatus.snapshot(vm)

            snaps = await asyncio.gather(*(asyncio.to_thread(status) for _ in range(THREADS)))
            assert all(s.status.host_resident_bytes is not None for s in snaps), snaps
            opened = len(opens)
            held = sorted(set(_our_memfd_fds()) - set(before))
            vm.close()
            left = sorted(set(_our_memfd_fds()) - set(before))
            with pytest.raises(ReclaimError, match="forgot"):  # a reclaim still under way cannot reopen it
                vm.ram.get()
            assert vmstatus.snapshot(vm).status.host_resident_bytes is None
            assert sorted(set(_our_memfd_fds()) - set(before)) == left
            return opened, held, left

    opened, held, left = asyncio.run(main())
    assert opened == 1, f"guest RAM opened {opened} times by {THREADS} status threads"
    assert len(held) == 1, f"fds of ours on the guest RAM while the VM is known: {held}"
    assert left == [], f"fds left open on the guest RAM after hostd forgot the VM: {left}"
