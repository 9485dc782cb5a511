"""prctl error mapping (faked errno) and memfd helpers on a real memfd (no root needed)."""

from __future__ import annotations

import errno
import re
import mmap
import os

import pytest

from heapballoon.errors import KernelError
from heapballoon.linux import memfd, prctl
from heapballoon.linux.memfd import allocated_bytes, is_zero, punch_hole


def test_prctl_constants():
    assert (prctl.PR_SET_MEMORY_MERGE, prctl.PR_GET_MEMORY_MERGE) == (67, 68)


@pytest.mark.parametrize("err,message", [
    (errno.EINVAL, "kernel too old for PR_SET_MEMORY_MERGE (needs 6.4)"),
    (errno.EPERM, "permission denied"),
    (errno.ENOMEM, "Cannot allocate memory"),
])
def test_set_memory_merge_errors(monkeypatch, err, message):
    def fail(*args):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(prctl, "prctl", fail)
    with pytest.raises(KernelError, match=re.escape(message)):
        prctl.set_memory_merge(True)
    with pytest.raises(KernelError, match=re.escape(message)):
        prctl.get_memory_merge()


def test_raw_prctl_reports_errno():
    with pytest.raises(OSError) as info:
        prctl.prctl(0x7FFFFFF0)  # no such option
    assert info.value.errno == errno.EINVAL


def test_get_memory_merge_real():
    # Reading is harmless; this process never enabled it.
    assert prctl.get_memory_merge() is False


@pytest.fixture
def mfd():
    fd = os.memfd_create("heapballoon-test", os.MFD_CLOEXEC)
    yield fd
    os.close(fd)


def test_punch_hole_releases_and_zeroes(mfd):
    size = 4 << 20
    os.ftruncate(mfd, size)
    os.pwrite(mfd, b"\xab" * size, 0)
    assert allocated_bytes(mfd) >= size
    punch_hole(mfd, 1 << 20, 2 << 20)
    assert os.fstat(mfd).st_size == size  # KEEP_SIZE
    assert size - (2 << 20) <= allocated_bytes(mfd) < size
    assert is_zero(os.pread(mfd, 2 << 20, 1 << 20))
    assert os.pread(mfd, 1, (1 << 20) - 1) == b"\xab" and os.pread(mfd, 1, 3 << 20) == b"\xab"


def test_punch_hole_errors(mfd):
    with pytest.raises(KernelError, match="Bad file descriptor"):
        punch_hole(10_000, 0, 4096)
    with pytest.raises(ValueError):
        punch_hole(mfd, 0, 0)


def test_allocated_bytes_bad_fd():
    with pytest.raises(KernelError):
        allocated_bytes(10_000)


@pytest.mark.parametrize("n", [0, 1, 4095, 65536, 65537, 200_000])
def test_is_zero(n):
    buf = bytearray(n)
    assert is_zero(buf) and is_zero(bytes(buf)) and is_zero(memoryview(buf))
    if n:
        for pos in {0, n // 2, n - 1}:
            buf[pos] = 1
            assert not is_zero(buf)
            buf[pos] = 0


def test_is_zero_on_mmap():
    with mmap.mmap(-1, 1 << 20) as m:
        assert is_zero(m)
        m[-1] = 7
        assert not is_zero(m)


def test_module_constants():
    assert memfd.FALLOC_FL_PUNCH_HOLE | memfd.FALLOC_FL_KEEP_SIZE == 3
