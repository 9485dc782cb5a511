"""A read-only shared mapping of a memory file, checked for zeros in place (VM mode).

Owns: ``mmap(PROT_READ, MAP_SHARED)`` of a memfd through libc, populating ranges of it
(``MADV_POPULATE_READ``, Linux 5.14+, so later reads take no page faults), the all-zero test
done *in place* with libc ``memcmp`` against a static zero block (no copy into Python; the
foreign call releases the GIL), classification of pages into zero runs and non-zero pages,
``SEEK_DATA``/``SEEK_HOLE`` walks of the file, and the punch of the pause path.

The compare and :func:`punch_holding_gil` are called through ``ctypes.PyDLL``: they keep the
GIL. That is on purpose: hostd's pause path runs in a worker thread, and every GIL release
(a ``CDLL`` call releases it) lets the event-loop thread take the GIL and keep it up to the
switch interval (5 ms by default) while the guest is stopped.

Why a mapping and not ``preadv``: ``preadv`` copies every byte into a buffer before the
compare (~5 GB/s here); ``memcmp`` on populated pages reads them once (~10 GB/s here).
Caveat: a *read fault* on a hole of a shmem file allocates a page, so callers only touch
ranges :func:`data_runs` reported as allocated (a page punched meanwhile comes back as one
allocated zero page, which the caller punches again).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

from heapballoon.errors import KernelError
from heapballoon.units import PAGE_BYTES

BLOCK_BYTES = 1 << 20  # one memcmp call; the static zero block's size
PROT_READ = 0x1
MAP_SHARED = 0x01
MADV_DONTNEED = 4
MADV_POPULATE_READ = 22  # Linux 5.14+
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_munmap = _libc.munmap
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_madvise = _libc.madvise
_madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc_gil = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)  # keeps the GIL
_memcmp = _libc_gil.memcmp
_memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_memcmp.restype = ctypes.c_int
_fallocate = _libc_gil.fallocate64
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_ZERO_BLOCK = ctypes.create_string_buffer(BLOCK_BYTES)
_ZERO_ADDR = ctypes.addressof(_ZERO_BLOCK)


def data_runs(fd: int, offset: int, length: int) -> list[tuple[int, int]]:
    """The allocated (data) parts of ``[offset, offset+length)`` as ``[(offset, length)]``."""
    runs = []
    pos, end = offset, offset + length
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # no data at or after pos
                break
            raise KernelError(f"lseek(SEEK_DATA, fd {fd}, {pos:#x}): {err.strerror}") from None
        if data >= end:
            break
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        runs.append((data, min(hole, end) - data))
        pos = hole
    return runs


def punch_holding_gil(fd: int, offset: int, length: int) -> None:
    """``fallocate(PUNCH_HOLE|KEEP_SIZE)`` of ``[offset, +length)`` without releasing the GIL."""
    if offset < 0 or length <= 0:
        raise ValueError(f"bad range offset={offset} length={length}")
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        e = ctypes.get_errno()
        raise KernelError(f"fallocate(PUNCH_HOLE, fd {fd}, offset {offset:#x}, {length:#x} bytes): {os.strerror(e)}")


class MemView:
    """``size_bytes`` of file ``fd`` mapped read-only and shared; :meth:`close` unmaps."""

    def __init__(self, fd: int, size_bytes: int) -> None:
        addr = _mmap(None, size_bytes, PROT_READ, MAP_SHARED, fd, 0)
        if addr is None or addr == _MAP_FAILED:
            e = ctypes.get_errno()
            raise KernelError(f"mmap(fd {fd}, {size_bytes} bytes, PROT_READ, MAP_SHARED): {os.strerror(e)}")
        self.addr: int = addr
        self.size_bytes = size_bytes
        self.populate_supported = True

    def close(self) -> None:
        if self.addr:
            _munmap(self.addr, self.size_bytes)
            self.addr = 0

    def _check(self, offset: int, length: int) -> int:
        if not self.addr:
            raise KernelError("MemView is closed")
        if offset < 0 or length < 0 or offset + length > self.size_bytes:
            raise ValueError(f"range {offset:#x}+{length:#x} outside the {self.size_bytes}-byte mapping")
        return self.addr + offset

    def populate(self, offset: int, length: int) -> None:
        """Map ``[offset, +length)`` into our page tables now (no page faults later).
        Kernels before 5.14 lack MADV_POPULATE_READ: then the first compare faults instead."""
        addr = self._check(offset, length)
        if not self.populate_supported or not length:
            return
        if _madvise(addr, length, MADV_POPULATE_READ) != 0:
            e = ctypes.get_errno()
            if e == errno.EINVAL:
                self.populate_supported = False
                return
            raise KernelError(f"madvise(MADV_POPULATE_READ, {offset:#x}+{length:#x}): {os.strerror(e)}")

    def drop(self, offset: int, length: int) -> None:
        """Remove our own page-table entries of the range (the file keeps its pages)."""
        addr = self._check(offset, length)
        if length and _madvise(addr, length, MADV_DONTNEED) != 0:
            e = ctypes.get_errno()
            raise KernelError(f"madvise(MADV_DONTNEED, {offset:#x}+{length:#x}): {os.strerror(e)}")

    def is_zero(self, offset: int, length: int) -> bool:
        """True when every byte of ``[offset, +length)`` is 0 (memcmp in 1 MiB blocks)."""
        addr = self._check(offset, length)
        end = addr + length
        while addr < end:
            n = min(BLOCK_BYTES, end - addr)
            if _memcmp(addr, _ZERO_ADDR, n) != 0:
                return False
            addr += n
        return True

    def zero_runs(self, offset: int, length: int) -> tuple[list[tuple[int, int]], int]:
        """Split page-aligned ``[offset, +length)`` into runs of all-zero pages
        ``[(offset, length)]`` and a count of pages that are not all zero."""
        runs: list[tuple[int, int]] = []
        nonzero = 0
        run_start = -1
        pos, end = offset, offset + length
        while pos < end:
            n = min(BLOCK_BYTES, end - pos)
            if self.is_zero(pos, n):
                if run_start < 0:
                    run_start = pos
            else:
                for page in range(pos, pos + n, PAGE_BYTES):
                    if self.is_zero(page, PAGE_BYTES):
                        if run_start < 0:
                            run_start = page
                    else:
                        nonzero += 1
                        if run_start >= 0:
                            runs.append((run_start, page - run_start))
                            run_start = -1
            pos += n
        if run_start >= 0:
            runs.append((run_start, end - run_start))
        return runs, nonzero
