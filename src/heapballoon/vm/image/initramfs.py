"""The initramfs files: just enough to mount the root disk, and the KVM probe's tiny one.

Owns their contents: busybox and its applet symlinks, ``/init``, the kernel modules and
``/etc/heapballoon/{modules,image.json}`` (gzip-compressed newc, :mod:`.cpio`), and
``probe.cpio`` (busybox printing ``HEAPBALLOON-PROBE-OK``, for accel.py).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from heapballoon.vm.image.cpio import CpioWriter


def write_initrd(out: Path, root: Path, applets: list[str], mdir: Path) -> int:
    """Write ``out/initrd.img`` from the staged ``root``; returns the uncompressed size in bytes."""
    bb = root / "bin" / "busybox"
    raw = out / "initrd.cpio"
    with open(raw, "wb") as f:
        w = CpioWriter(f)
        w.dir("dev", 0o755)
        w.chardev("dev/console", 5, 1)
        w.chardev("dev/null", 1, 3, 0o666)
        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "etc", "etc/heapballoon",
                  "lib", "lib/modules", "lib/modules/heapballoon", "newroot", "ro", "rw"):
            w.dir(d, 0o755)
        w.file("bin/busybox", bb.read_bytes(), 0o755)
        for a in applets:
            name = a.lstrip("/")
            if name != "bin/busybox" and name.split("/")[0] in ("bin", "sbin", "usr"):
                w.parents(name)
                w.symlink(name, "/bin/busybox")
        w.path(root / "init", "init")
        for p in ("etc/heapballoon/modules", "etc/heapballoon/image.json"):
            w.path(root / p, p)
        w.tree(mdir, "lib/modules/heapballoon")
        w.close()
    with open(raw, "rb") as fin, gzip.open(out / "initrd.img", "wb", compresslevel=6) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    initramfs_raw = raw.stat().st_size
    raw.unlink()
    return initramfs_raw


def write_probe(out: Path, busybox: Path) -> None:
    """Write ``out/probe.cpio``: busybox and an /init that prints the probe marker and powers off."""
    with open(out / "probe.cpio", "wb") as f:
        w = CpioWriter(f)
        w.dir("dev", 0o755)
        w.chardev("dev/console", 5, 1)
        w.dir("bin")
        w.file("bin/busybox", busybox.read_bytes(), 0o755)
        w.file("init", b"#!/bin/busybox sh\n/bin/busybox echo HEAPBALLOON-PROBE-OK\n"
                       b"/bin/busybox poweroff -f\n", 0o755)
        w.close()
