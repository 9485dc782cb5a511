"""``prctl(2)`` calls heapballoon needs, through ctypes (no compiled extension).

Owns: ``PR_SET_MEMORY_MERGE`` / ``PR_GET_MEMORY_MERGE`` (Linux 6.4+), which make KSM consider
*every* anonymous mapping of the calling process mergeable, present and future, without
``madvise(MADV_MERGEABLE)`` per region. The setting belongs to the process (its mm), so it
must be called by the process whose memory should merge (e.g. the JVM's native agent, or a
test's child process). It is inherited across fork, and kept across execve since the 6.7 fix
"mm/ksm: fix ksm exec support for prctl" (on 6.4-6.6 without it, exec drops it), which lets
``heapballoon run`` set it and exec the JVM; ``tests/integration/test_linux_real.py`` checks
both on the running kernel. Kernels before 6.4 return EINVAL.
"""

from __future__ import annotations

import errno
import os

from heapballoon.errors import KernelError
from heapballoon.linux import libc

PR_SET_MEMORY_MERGE = 67  # Linux 6.4+
PR_GET_MEMORY_MERGE = 68  # Linux 6.4+



def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """Raw prctl; returns its result or raises OSError with errno."""
    fn = libc.function("prctl", (libc.c_int, libc.c_ulong, libc.c_ulong, libc.c_ulong, libc.c_ulong))
    result = fn(option, arg2, arg3, arg4, arg5)
    if result < 0:
        err = libc.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _memory_merge_error(what: str, exc: OSError) -> KernelError:
    if exc.errno == errno.EINVAL:
        return KernelError("kernel too old for PR_SET_MEMORY_MERGE (needs 6.4)")
    if exc.errno == errno.EPERM:
        return KernelError(f"{what}: permission denied (needs CAP_SYS_RESOURCE)")
    return KernelError(f"{what}: {exc.strerror}")


def set_memory_merge(enable: bool = True) -> None:
    """Make all anonymous memory of this process KSM-mergeable (or stop, unmerging it)."""
    try:
        prctl(PR_SET_MEMORY_MERGE, 1 if enable else 0)
    except OSError as exc:
        raise _memory_merge_error("prctl(PR_SET_MEMORY_MERGE)", exc) from exc


def get_memory_merge() -> bool:
    try:
        return bool(prctl(PR_GET_MEMORY_MERGE))
    except OSError as exc:
        raise _memory_merge_error("prctl(PR_GET_MEMORY_MERGE)", exc) from exc
