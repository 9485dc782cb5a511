"""Host-side helpers for guest memory backed by a memfd (VM mode).

Owns: listing the memfds a process holds open (``/proc/PID/fd`` links named ``/memfd:NAME``,
through :class:`~heapballoon.linux.procfs.ProcFS`, so the root is overridable), releasing ranges of a memory file back to the host (``fallocate`` with
``FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE``, Linux 3.5+ for tmpfs/shmem, so memfd since
3.17), measuring how much of it is really allocated (``st_blocks``), and a fast all-zero check
for page contents.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from heapballoon.errors import KernelError
from heapballoon.linux import libc
from heapballoon.linux.procfs import ProcFS

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02



def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    fn = libc.function("fallocate64", (libc.c_int, libc.c_int, libc.c_int64, libc.c_int64))
    libc.check(fn(fd, mode, offset, length), "fallocate")


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``[offset, offset + length)`` of the file; reads there return zeros afterwards."""
    if offset < 0 or length <= 0:
        raise ValueError(f"bad range offset={offset} length={length}")
    try:
        _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
    except OSError as err:
        raise KernelError(f"fallocate(PUNCH_HOLE, fd {fd}, offset {offset}, {length} bytes): "
                          f"{os.strerror(err.errno or 0)}") from err


def allocated_bytes(fd: int) -> int:
    """Bytes the file really occupies (``st_blocks`` is in 512-byte units on Linux)."""
    try:
        return os.fstat(fd).st_blocks * 512
    except OSError as exc:
        raise KernelError(f"fstat(fd {fd}): {exc.strerror}") from exc


@dataclass(frozen=True)
class MemfdFile:
    """One memfd open in a process: descriptor ``fd`` of ``pid`` is the memfd called ``name``."""

    pid: int
    fd: int
    name: str          # "ram0" for /memfd:ram0 (deleted)
    size_bytes: int
    dev: int
    ino: int


def memfds(pid: int, procfs: ProcFS | None = None) -> list[MemfdFile]:
    """Every distinct memfd ``pid`` has open (a file open twice is listed once, lowest fd)."""
    procfs = procfs or ProcFS()
    seen: dict[tuple[int, int], MemfdFile] = {}
    for fd in procfs.fds(pid):
        try:
            target = procfs.fd_target(pid, fd)
            if not target.startswith("/memfd:"):
                continue
            st = procfs.fd_stat(pid, fd)
        except KernelError:
            continue  # closed meanwhile
        name = target[len("/memfd:"):].removesuffix(" (deleted)")
        seen.setdefault((st.st_dev, st.st_ino), MemfdFile(pid, fd, name, st.st_size, st.st_dev, st.st_ino))
    return sorted(seen.values(), key=lambda m: m.fd)


def open_memfd(memfd: MemfdFile, writable: bool = True, procfs: ProcFS | None = None) -> int:
    """A new file descriptor on ``memfd`` (the caller closes it); KernelError if it changed."""
    procfs = procfs or ProcFS()
    fd = procfs.open_fd(memfd.pid, memfd.fd, os.O_RDWR if writable else os.O_RDONLY)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (memfd.dev, memfd.ino):
        os.close(fd)
        raise KernelError(f"descriptor {memfd.fd} of process {memfd.pid} is no longer memfd {memfd.name!r}")
    return fd


_ZEROS = bytes(1 << 16)


def is_zero(buf) -> bool:
    """True when every byte of ``buf`` (bytes, bytearray, memoryview, mmap) is 0.

    Copies 64 KiB slices out and compares them with a zero block: memcpy + memcmp speed
    (memoryview's own ``==`` unpacks item by item and is 20x slower).
    """
    mv = memoryview(buf).cast("B")
    n = len(mv)
    block = len(_ZEROS)
    for start in range(0, n, block):
        chunk = mv[start:start + block].tobytes()
        if chunk != (_ZEROS if len(chunk) == block else _ZEROS[:len(chunk)]):
            return False
    return True
