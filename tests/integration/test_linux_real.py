"""The Linux layer against the real kernel: zero page probe, KSM merging, MADV_DONTNEED.

Needs root (PFNs are hidden otherwise) and, for the KSM test, a writable
/sys/kernel/mm/ksm with use_zero_pages and PR_SET_MEMORY_MERGE (Linux 6.4+). Tests skip with
the reason when the machine cannot run them. KSM knobs are always restored.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
import textwrap
import time

import pytest

from heapballoon.errors import KernelError
from heapballoon.linux.ksm import KSM
from heapballoon.linux.pagemap import (PAGE_SIZE, PagemapReader, count_pages, read_entries, zero_pfn)
from heapballoon.linux.procfs import ProcFS

# serial: the KSM test writes /sys/kernel/mm/ksm and checks its restore; a daemon beside it would change them.
pytestmark = [pytest.mark.root, pytest.mark.serial]

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: pagemap hides PFNs from other users")


def _mapping(size: int) -> tuple[mmap.mmap, int]:
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    cell = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(cell)
    del cell
    return m, addr


def _child_env() -> dict:
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@needs_root
def test_zero_pfn_is_stable_and_agrees_across_processes():
    values = {zero_pfn() for _ in range(5)}
    assert len(values) == 1
    zp = values.pop()
    assert zp is not None and zp > 0
    out = subprocess.run([sys.executable, "-c", "from heapballoon.linux.pagemap import zero_pfn; print(zero_pfn())"],
                         capture_output=True, text=True, timeout=30, env=_child_env(), check=True)
    assert int(out.stdout) == zp


@needs_root
def test_zero_pfn_is_none_when_pfns_are_hidden():
    # Import first (the venv may not be readable by nobody); after setuid the process is not
    # dumpable, which would hide its own /proc files: make it dumpable again (PR_SET_DUMPABLE).
    code = ("import os; from heapballoon.linux.pagemap import zero_pfn; from heapballoon.linux.prctl import prctl; "
            "os.setgroups([]); os.setgid(65534); os.setuid(65534); prctl(4, 1); print(zero_pfn())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env=_child_env(), check=True)
    assert out.stdout.strip() == "None"


@needs_root
def test_read_faulted_pages_map_the_zero_page_and_dontneed_releases():
    zp = zero_pfn()
    npages = 1024
    m, addr = _mapping(npages * PAGE_SIZE)
    try:
        with PagemapReader(ProcFS(), os.getpid()) as reader:
            untouched = reader.count(addr, npages * PAGE_SIZE, zp)
            assert (untouched.present, untouched.reclaimed) == (0, npages)

            for off in range(0, npages * PAGE_SIZE, PAGE_SIZE):
                _ = m[off]  # read fault: zero page
            read_only = reader.count(addr, npages * PAGE_SIZE, zp)
            assert (read_only.present, read_only.zero, read_only.reclaimed) == (npages, npages, npages)

            for off in range(0, npages * PAGE_SIZE, PAGE_SIZE):
                m[off] = 0xAB  # write fault: a real page each
            written = reader.count(addr, npages * PAGE_SIZE, zp)
            assert (written.present, written.zero, written.reclaimed) == (npages, 0, 0)
            assert len(set(reader.frames(addr, npages * PAGE_SIZE))) == npages

            m.madvise(mmap.MADV_DONTNEED, 0, npages // 2 * PAGE_SIZE)
            half = reader.count(addr, npages * PAGE_SIZE, zp)
            assert (half.present, half.swapped, half.reclaimed) == (npages // 2, 0, npages // 2)
            assert reader.frames(addr, PAGE_SIZE) == [0]
    finally:
        m.close()


def test_real_pagemap_read_speed_for_one_gib():
    """Timing of one pread of 262144 entries (1 GiB of address space) plus counting."""
    m = mmap.mmap(-1, 1 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0))
    cell = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(cell)
    del cell
    try:
        t0 = time.perf_counter()
        entries = read_entries(ProcFS(), "self", addr, (1 << 30) // PAGE_SIZE)
        t1 = time.perf_counter()
        c = count_pages(entries, zero_pfn())
        t2 = time.perf_counter()
    finally:
        m.close()
    print(f"pagemap pread of {len(entries)} entries: {(t1 - t0) * 1000:.1f} ms, count_pages: {(t2 - t1) * 1000:.1f} ms")
    assert c.pages == 262144 and c.present == 0 and c.reclaimed == 262144
    assert t2 - t0 < 1.0


CHILD = textwrap.dedent("""
    import ctypes, mmap, sys
    from heapballoon.linux.prctl import get_memory_merge, set_memory_merge
    size = int(sys.argv[1])
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    for off in range(0, size, mmap.PAGESIZE):
        m[off] = 0          # write fault: a private page full of zeros
    set_memory_merge(True)  # the whole process (its mm) becomes KSM-mergeable
    cell = ctypes.c_char.from_buffer(m)
    print(ctypes.addressof(cell), int(get_memory_merge()), flush=True)
    sys.stdin.read()        # hold the memory until the parent closes stdin
""")


@pytest.fixture
def ksm():
    if not IS_ROOT:
        pytest.skip("needs root to drive KSM")
    k = KSM()
    if not k.available():
        pytest.skip("KSM not built into this kernel (no /sys/kernel/mm/ksm)")
    if not k.writable():
        pytest.skip("/sys/kernel/mm/ksm is not writable (read-only sysfs?)")
    if not k.has("use_zero_pages"):
        pytest.skip("kernel lacks KSM use_zero_pages (needs 4.11)")
    snap = k.snapshot()
    yield k
    k.restore(snap)
    assert k.snapshot() == snap


def test_ksm_merges_zeroed_pages_into_the_zero_page(ksm):
    size = 64 << 20
    npages = size // PAGE_SIZE
    zp = zero_pfn()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(size)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
    try:
        line = child.stdout.readline()
        if not line:
            err = child.stderr.read()
            if "needs 6.4" in err:
                pytest.skip("kernel too old for PR_SET_MEMORY_MERGE (needs 6.4)")
            pytest.fail(f"child failed: {err.strip().splitlines()[-1:]}")
        addr, merge_flag = (int(x) for x in line.split())
        assert merge_flag == 1
        with PagemapReader(ProcFS(), child.pid) as reader:
            before = reader.count(addr, size, zp)
            assert (before.present, before.zero) == (npages, 0)  # real pages, not yet merged
            zero_before = ksm.zero_pages()
            scans_before = ksm.full_scans()

            t0 = time.monotonic()
            for name, value in (("pages_to_scan", 16384), ("sleep_millisecs", 5), ("use_zero_pages", 1), ("run", 1)):
                ksm.write(name, value)
            deadline = t0 + 40
            now = reader.count(addr, size, zp)
            while now.reclaimed < npages and time.monotonic() < deadline:
                time.sleep(0.02)
                now = reader.count(addr, size, zp)
            elapsed = time.monotonic() - t0
            print(f"KSM merged {now.zero}/{npages} pages of 64 MiB into the zero page in {elapsed:.2f} s "
                  f"({ksm.full_scans() - scans_before} full scans)")
            assert now.reclaimed == npages, f"only {now.reclaimed}/{npages} reclaimed after {elapsed:.1f} s"
            assert now.zero == now.present == npages  # still mapped, but to the zero page
            assert ksm.zero_pages() - zero_before >= 0.9 * npages
    finally:
        child.stdin.close()
        child.wait(timeout=10)


def test_set_memory_merge_is_per_process():
    code = ("from heapballoon.linux.prctl import *\n"
            "before = get_memory_merge()\n"
            "try:\n    set_memory_merge(True)\nexcept Exception as e:\n    print('ERR', e); raise SystemExit\n"
            "after = get_memory_merge(); set_memory_merge(False)\n"
            "print(int(before), int(after), int(get_memory_merge()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env=_child_env(), check=True).stdout
    if out.startswith("ERR"):
        assert "needs 6.4" in out or "permission" in out
        pytest.skip(out.strip())
    assert out.split() == ["0", "1", "0"]
    from heapballoon.linux.prctl import get_memory_merge
    assert get_memory_merge() is False  # this process untouched


def test_memory_merge_survives_fork_and_exec():
    """``heapballoon run`` relies on this: set in the launcher, inherited by the exec'd JVM."""
    code = ("import os, sys\n"
            "from heapballoon.linux.prctl import set_memory_merge\n"
            "try:\n    set_memory_merge(True)\nexcept Exception as e:\n    print('ERR', e); raise SystemExit\n"
            "if os.fork() == 0:\n"
            "    os.execv(sys.executable, [sys.executable, '-c', "
            "'from heapballoon.linux.prctl import get_memory_merge as g; print(int(g()))'])\n"
            "os.wait()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env=_child_env(), check=True).stdout
    if out.startswith("ERR"):
        assert "needs 6.4" in out, out  # only an old kernel may skip; any other error fails
        pytest.skip(out.strip())
    assert out.split() == ["1"]


def test_open_pagemap_of_missing_pid_is_one_line():
    pid_max = int(ProcFS().read_text("sys/kernel/pid_max"))
    with pytest.raises(KernelError, match=f"no process with PID {pid_max + 1}$"):
        ProcFS().open_pagemap(pid_max + 1)
