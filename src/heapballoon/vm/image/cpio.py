"""A minimal writer for Linux initramfs archives (cpio "newc", the only format the kernel reads).

Written here rather than shelling out to ``cpio`` so the archive is deterministic (uid/gid 0,
sorted entries, fixed inode numbers), needs no root to create device nodes, and can be
built from a staging directory plus in-memory extras (``/heapballoon/cmd.json``).

The kernel unpacks concatenated archives in order (later ones override earlier files), which
is how a VM's per-start files are layered on top of the shared image.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


class CpioWriter:
    """Write newc entries to a binary stream; call :meth:`close` to write the trailer."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 300000  # arbitrary, unique per entry (hardlinks are written as copies)
        self._written: set[str] = set()
        self.size = 0

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.size += len(data)

    def _pad(self) -> None:
        if self.size % 4:
            self._write(b"\0" * (4 - self.size % 4))

    def entry(self, name: str, mode: int, data: bytes = b"", *, mtime: int = 0,
              rdev: tuple[int, int] = (0, 0), uid: int = 0, gid: int = 0) -> None:
        """One archive member. ``name`` is relative (no leading ``/``); ``mode`` includes type bits."""
        name = name.lstrip("/")
        if not name:
            name = "."
        if name != TRAILER:
            self._written.add(name)
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = [
            self._ino, mode, uid, gid,
            2 if stat.S_ISDIR(mode) else 1,
            max(0, int(mtime)), len(data),
            0, 0,                # dev major/minor of the archive's filesystem
            rdev[0], rdev[1],
            len(encoded), 0,     # name size, check
        ]
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        self._write(header)
        self._write(encoded)
        self._pad()
        if data:
            self._write(data)
            self._pad()

    def dir(self, name: str, mode: int = 0o755, mtime: int = 0) -> None:
        self.entry(name, stat.S_IFDIR | mode, mtime=mtime)

    def file(self, name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        self.entry(name, stat.S_IFREG | mode, data, mtime=mtime)

    def symlink(self, name: str, target: str, mtime: int = 0) -> None:
        self.entry(name, stat.S_IFLNK | 0o777, target.encode(), mtime=mtime)

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def parents(self, name: str, mode: int = 0o755) -> None:
        """Directory entries for every missing parent of ``name`` (the kernel does not create them)."""
        parts = name.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._written:
                self.dir(d, mode)

    def tree(self, root: Path, prefix: str = "") -> None:
        """Add everything under ``root`` (sorted, not following symlinks) as ``prefix/relpath``."""
        root = Path(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            base = prefix.strip("/") if rel_dir == "." else os.path.join(prefix.strip("/"), rel_dir)
            if base:
                st = os.lstat(dirpath)
                self.parents(base)
                if base not in self._written:
                    self.dir(base, stat.S_IMODE(st.st_mode), int(st.st_mtime))
            # symlinks to directories show up in dirnames; treat them as entries, not walk them
            for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
                self.path(os.path.join(dirpath, name), os.path.join(base, name) if base else name)
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]

    def path(self, src: str | os.PathLike, name: str) -> None:
        """Add one filesystem object (file, symlink, dir, device) from ``src`` as ``name``."""
        st = os.lstat(src)
        mtime = int(st.st_mtime)
        perm = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            self.symlink(name, os.readlink(src), mtime)
        elif stat.S_ISDIR(st.st_mode):
            self.dir(name, perm, mtime)
        elif stat.S_ISREG(st.st_mode):
            with open(src, "rb") as f:
                self.file(name, f.read(), perm, mtime)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            self.entry(name, st.st_mode, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)), mtime=mtime)
        # sockets and fifos are skipped on purpose

    def close(self, align: int = 512) -> None:
        self.entry(TRAILER, 0)
        if self.size % align:
            self._write(b"\0" * (align - self.size % align))

