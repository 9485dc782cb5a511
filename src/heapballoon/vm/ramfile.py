"""The guest's RAM file seen from the host: the one rule that finds it, and guest→file offsets.

Owns the rule, for every host-side user (the CLI, tests, benchmarks; hostd's
``host/guestram.py`` is to adopt :func:`find_guest_ram` next): *the guest's RAM is the one
memfd of exactly the guest's RAM size that its QEMU holds open*. None, or more than one, is a
:class:`~heapballoon.errors.GuestRamError` that says what was found — never a guess. The scan
of ``/proc/PID/fd`` itself is :func:`heapballoon.linux.memfd.memfds` (overridable root).

Guest physical → file offset uses the layout QEMU reported at start (``VMInfo.ram_layout``,
from ``info mtree -f``; see :mod:`heapballoon.vm.launcher`), never a hard-coded split.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

from heapballoon.errors import GuestRamError, KernelError, VMError
from heapballoon.linux.memfd import MemfdFile, allocated_bytes, memfds, open_memfd
from heapballoon.linux.procfs import ProcFS
from heapballoon.vm.registry import get_vm


def find_guest_ram(pid: int, memory_bytes: int, procfs: ProcFS | None = None) -> MemfdFile:
    """The memfd holding the guest RAM of QEMU ``pid``: exactly one memfd of ``memory_bytes``."""
    try:
        files = memfds(pid, procfs)
    except KernelError as err:
        raise GuestRamError(f"cannot list the open files of QEMU {pid}: {err}") from err
    matches = [m for m in files if m.size_bytes == memory_bytes]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        seen = ", ".join(f"fd {m.fd} {m.name!r} {m.size_bytes} bytes" for m in files) or "none"
        raise GuestRamError(f"QEMU {pid} has no memfd of {memory_bytes} bytes (memfds: {seen}); start it "
                            "with -object memory-backend-memfd,id=ram0,size=...,share=on")
    fds = ", ".join(f"fd {m.fd} {m.name!r}" for m in matches)
    raise GuestRamError(f"QEMU {pid} has {len(matches)} memfds of {memory_bytes} bytes ({fds}); "
                        "refusing to guess which one is guest RAM")


def qemu_ram_fd_path(name: str, procfs: ProcFS | None = None) -> tuple[str, int]:
    """``("/proc/PID/fd/N", size)`` of VM ``name``'s guest RAM memfd."""
    info = _pfn_vm(name)
    m = find_guest_ram(info.pid, info.memory_bytes, procfs)
    return (procfs or ProcFS()).path(m.pid, "fd", m.fd), m.size_bytes


def open_guest_ram(name: str, writable: bool = True, procfs: ProcFS | None = None) -> tuple[int, int]:
    """``(fd, size_bytes)``: a new file descriptor on VM ``name``'s guest RAM (caller closes it).

    Byte ``o`` of the fd is guest RAM offset ``o``; translate guest physical addresses with
    :func:`gpa_to_ram_offset` and the VM's ``ram_layout``. Punching holes in it
    (``fallocate(PUNCH_HOLE)``) frees host memory; the guest reads zeros there afterwards.
    """
    info = _pfn_vm(name)
    m = find_guest_ram(info.pid, info.memory_bytes, procfs)
    try:
        fd = open_memfd(m, writable, procfs)
    except KernelError as err:
        raise VMError(f"cannot open guest RAM of VM {name!r}: {err}") from err
    return fd, os.fstat(fd).st_size


def resident_bytes(name: str, procfs: ProcFS | None = None) -> int:
    """Bytes of VM ``name``'s guest RAM the host has allocated (holes cost nothing), measured on
    a descriptor of our own: independently of hostd."""
    fd, _size = open_guest_ram(name, writable=False, procfs=procfs)
    try:
        return allocated_bytes(fd)
    finally:
        os.close(fd)


def _pfn_vm(name: str):
    info = get_vm(name)
    if info.state != "running":
        raise VMError(f"VM {name!r} is not running ({info.state})")
    if info.reclaim != "pfn":
        raise VMError(f"VM {name!r} guest RAM is private memory (reclaim={info.reclaim}), not a shared memfd")
    return info


def gpa_to_ram_offset(gpa: int, layout: Iterable[Mapping[str, int]]) -> int:
    """Offset in guest RAM (the memfd) of guest physical address ``gpa``; VMError if not RAM.

    ``layout`` is a VM's ``ram_layout`` (``[{"gpa", "size", "offset"}]``, read from QEMU at
    start). Guest page number ``pfn`` is ``gpa = pfn * 4096``.
    """
    for r in layout:
        if r["gpa"] <= gpa < r["gpa"] + r["size"]:
            return r["offset"] + gpa - r["gpa"]
    raise VMError(f"guest physical address {gpa:#x} is not guest RAM")
