"""Swap files: make one (``fallocate`` or ``dd``, ``mkswap``), turn it on and off, list active swap.

Used by the experiment so the kernel can page when a memory cgroup is over its limit. Calls
util-linux's ``mkswap``/``swapon``/``swapoff`` (the syscalls need nothing more); reads
``/proc/swaps`` (or ``<proc_root>/swaps``).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from heapballoon.errors import KernelError


def _run(cmd: list[str], timeout_s: float = 600) -> None:
    if shutil.which(cmd[0]) is None:
        raise KernelError(f"{cmd[0]} not found (install util-linux)")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KernelError(f"{cmd[0]} could not run: {err}") from err
    if proc.returncode != 0:
        raise KernelError(f"{' '.join(cmd)} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")


def active_swaps(proc_root: str = "/proc") -> list[str]:
    """Paths of active swap areas (``/proc/swaps``)."""
    try:
        with open(os.path.join(proc_root, "swaps")) as f:
            lines = f.read().splitlines()[1:]
    except OSError as err:
        raise KernelError(f"cannot read {proc_root}/swaps: {err.strerror}") from err
    return [line.split()[0] for line in lines if line.strip()]


def make_swapfile(path: str, size_bytes: int) -> None:
    """Create a swap file of ``size_bytes`` (mode 600) and turn it on; KernelError (file removed) on failure."""
    if os.path.exists(path):
        raise KernelError(f"{path} exists already: refusing to overwrite it")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        try:
            _run(["fallocate", "-l", str(size_bytes), path])
        except KernelError:  # file systems without fallocate support for swap: write it out
            _run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size_bytes >> 20}", "status=none"])
        _run(["mkswap", path])
        _run(["swapon", path])
    except (OSError, KernelError) as err:
        try:
            os.unlink(path)
        except OSError:
            pass
        if isinstance(err, KernelError):
            raise
        raise KernelError(f"cannot create swap file {path}: {err.strerror}") from err


def remove_swapfile(path: str, proc_root: str = "/proc") -> None:
    """Turn the swap file off (its pages come back into memory) and delete it. Missing is fine."""
    if path in active_swaps(proc_root):
        _run(["swapoff", path])
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise KernelError(f"cannot remove swap file {path}: {err.strerror}") from err
