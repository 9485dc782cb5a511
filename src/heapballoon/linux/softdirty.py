"""Soft-dirty page tracking (``CONFIG_MEM_SOFT_DIRTY``): is it there, and does it work?

Owns: the detection. Writing ``4`` to ``/proc/PID/clear_refs`` clears the soft-dirty bits of
a process's page-table entries (and write-protects them, so the next write sets bit 55 of the
page's ``/proc/PID/pagemap`` entry again) — Documentation/admin-guide/mm/soft-dirty.rst.
A kernel built without it still *accepts* the ``4`` (the enum value exists; clearing is a
no-op) and pagemap bit 55 simply never goes up, so the only trustworthy test is functional:
map a page, clear, check the bit is down, write, check it is up. :func:`probe_soft_dirty`
does exactly that on this process. :func:`kernel_config` reads ``/proc/config.gz`` where the
kernel exposes it (a second opinion, for tests and for the reason string).

With soft-dirty, hostd could prove a page *untouched* since it was seen zero and skip its
re-check under the pause; without it (as on the machine these numbers come from) every
candidate is re-checked under the pause.
"""

from __future__ import annotations

import ctypes
import gzip
import mmap
from dataclasses import dataclass

from heapballoon.errors import KernelError
from heapballoon.linux.pagemap import PAGE_SIZE, SOFT_DIRTY, read_entries
from heapballoon.linux.procfs import Pid, ProcFS

CLEAR_SOFT_DIRTY = "4"


@dataclass(frozen=True)
class SoftDirtySupport:
    supported: bool
    reason: str


def clear_soft_dirty(procfs: ProcFS, pid: Pid) -> None:
    """Clear the soft-dirty bits of every page of ``pid`` (``echo 4 > clear_refs``)."""
    path = procfs.path(pid, "clear_refs")
    try:
        with open(path, "w") as f:
            f.write(CLEAR_SOFT_DIRTY)
    except OSError as err:
        raise KernelError(f"cannot write {CLEAR_SOFT_DIRTY} to {path}: {err.strerror or err}") from None


def kernel_config(procfs: ProcFS, option: str) -> bool | None:
    """True/False from ``/proc/config.gz`` (``CONFIG_X=y`` / ``# CONFIG_X is not set``),
    None when the kernel does not expose its config."""
    try:
        with gzip.open(procfs.path("config.gz"), "rt") as f:
            text = f.read()
    except (OSError, EOFError):
        return None
    if f"\n{option}=y" in f"\n{text}":
        return True
    return False


def probe_soft_dirty(procfs: ProcFS | None = None) -> SoftDirtySupport:
    """Does soft-dirty tracking work for this process? (Clears this process's soft-dirty
    bits, which nothing else here uses.)"""
    procfs = procfs or ProcFS()
    m = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        cell = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(cell)
        del cell  # release the buffer export so the mmap can be closed
        m[0] = 1  # present and dirty
        try:
            clear_soft_dirty(procfs, "self")
            (after_clear,) = read_entries(procfs, "self", addr, 1)
            m[1] = 2
            (after_write,) = read_entries(procfs, "self", addr, 1)
        except KernelError as err:
            return SoftDirtySupport(False, str(err))
    finally:
        m.close()
    if after_clear & SOFT_DIRTY:
        return SoftDirtySupport(False, "pagemap bit 55 stays set after clear_refs 4: soft-dirty bits cannot be cleared")
    if not after_write & SOFT_DIRTY:
        config = kernel_config(procfs, "CONFIG_MEM_SOFT_DIRTY")
        why = {False: "the kernel is built without CONFIG_MEM_SOFT_DIRTY",
               None: "kernel without CONFIG_MEM_SOFT_DIRTY?"}.get(config, "unexpected: config says it is there")
        return SoftDirtySupport(False, f"pagemap bit 55 does not go up on a write after clear_refs 4 ({why})")
    return SoftDirtySupport(True, "clear_refs 4 clears pagemap bit 55 and a write sets it")
