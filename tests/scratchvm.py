"""A throwaway QEMU with memfd guest RAM and no guest OS, for tests and benchmarks (a tool,
not part of heapballoon: it lived in heapballoon/host/ until issue 19).

This module owns starting and stopping such a QEMU (``-S``, TCG, ``-nodefaults``, QMP on a
Unix socket) and writing its VM directory's ``vm.json`` through the VM-directory contract
(:meth:`ScratchVM.save_vm_json`: the record the launcher writes, the launch layout included).
Real VMs are started by heapballoon.vm; this is only what host tests and the punch benchmark
(benchmarks/punch_engines.py) need: a real QEMU process whose guest RAM is a real memfd.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time

from pathlib import Path

from heapballoon.errors import VMError

QEMU = "qemu-system-x86_64"


class ScratchVM:
    """``async with ScratchVM(512 << 20) as vm:`` → ``vm.pid``, ``vm.qmp`` (connected QMPClient),
    ``vm.dir`` (holds qmp.sock; its path is on QEMU's command line)."""

    def __init__(self, memory_bytes: int, machine: str = "q35", vm_dir: str | None = None,
                 extra_args: tuple[str, ...] = (), firmware: str = "seabios") -> None:
        if firmware not in ("seabios", "halt"):
            raise ValueError(f"firmware {firmware!r}: 'seabios' or 'halt'")
        self.memory_bytes = memory_bytes
        # "halt": a 64 KiB BIOS of HLT instructions. At reset the CPU runs HLT with interrupts off
        # and stays there, so after `cont` the VM is running but nothing in it writes guest RAM.
        # SeaBIOS, once running, writes its tables and relocated code near the top of low RAM
        # (seen: the top 128 KiB within 0.5 s, and 'tio_scsi' 16 MiB below 2 GiB on a loaded run),
        # which races any test that checks exact page contents or counts after `cont`.
        self.firmware = firmware
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
        bios: list[str] = []
        if self.firmware == "halt":
            path = os.path.join(self.dir, "halt.bin")
            with open(path, "wb") as f:
                f.write(b"\xf4" * 65536)  # HLT; the reset vector is the image's last 16 bytes
            bios = ["-bios", path]
        cmd = [QEMU, "-machine", f"{self.machine},memory-backend=ram0", "-accel", "tcg",
               "-object", f"memory-backend-memfd,id=ram0,size={mib}M,share=on", "-m", f"{mib}M",
               "-S", "-nodefaults", "-nographic", "-display", "none", "-serial", "none",
               "-monitor", "none", "-qmp", f"unix:{self.qmp_path},server=on,wait=off", *bios, *self.extra_args]
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

    def save_vm_json(self, reclaim: str = "pfn", qmp_socket: str | None = None) -> None:
        """Write ``vm.json`` as the launcher does (``vm/vmdir.py``'s VMDir, the guest RAM
        layout read from QEMU at launch). The VM's dir must be ``<run dir>/vms/<name>``;
        ``qmp_socket``: a QMP socket nobody holds now (default: the one QEMU was given as
        ``qmp-hostd.sock``)."""
        from heapballoon.vm.launcher import read_ram_layout
        from heapballoon.vm.vmdir import VMDir, VMPaths

        vm_dir = Path(self.dir)
        paths = VMPaths.of(vm_dir.parent.parent, vm_dir.name)
        assert paths.dir == vm_dir, f"{vm_dir} is not <run dir>/vms/<name>"
        layout = read_ram_layout(Path(qmp_socket) if qmp_socket else paths.hostd_qmp_socket, self.memory_bytes)
        VMDir(paths=paths, pid=self.pid, memory_bytes=self.memory_bytes, reclaim=reclaim, ram_layout=layout).save()

    async def __aenter__(self) -> ScratchVM:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()
