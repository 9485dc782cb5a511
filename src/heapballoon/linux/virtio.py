"""The one adapter for virtio-serial ports seen from inside a guest (``/sys/class/virtio-ports``).

Owns: finding a port's device by its name (``/sys/class/virtio-ports/vportNpM/name``; our
guest has no udev, so no ``/dev/virtio-ports/NAME`` symlinks), creating its device node
from ``.../dev`` (``major:minor``) when devtmpfs has not made it, and :class:`PortFile`, the one
line reader and writer of an open port (its raw fd): the supervisor's exec port and the guest
driver's uplink both use it. Both roots are overridable, so unit tests run on a fixture tree.
Pure standard library: runs in the guest.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Callable, Iterator

from heapballoon.errors import KernelError

SYS_ROOT = "/sys/class/virtio-ports"
DEV_ROOT = "/dev"
READ_BYTES = 65536
NO_HOST_WAIT_S = 0.05  # a port reads EOF while no host is connected: look again this often


class VirtioPorts:
    """The virtio-serial ports under ``sys_root``; device nodes under ``dev_root``."""

    def __init__(self, sys_root: str = SYS_ROOT, dev_root: str = DEV_ROOT) -> None:
        self.sys_root = sys_root
        self.dev_root = dev_root

    def __repr__(self) -> str:
        return f"VirtioPorts({self.sys_root!r}, {self.dev_root!r})"

    def names(self) -> dict[str, str]:
        """Port name → sysfs entry (``vport1p1``) for every port that has a name now."""
        try:
            entries = sorted(os.listdir(self.sys_root))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise KernelError(f"cannot list {self.sys_root}: {exc.strerror}") from exc
        out: dict[str, str] = {}
        for entry in entries:
            try:
                with open(os.path.join(self.sys_root, entry, "name")) as f:
                    name = f.read().strip()
            except OSError:
                continue  # a port without a name (or going away)
            if name:
                out.setdefault(name, entry)
        return out

    def device(self, entry: str) -> str:
        """The device path of sysfs entry ``entry`` (``/dev/vport1p1``); not checked."""
        return os.path.join(self.dev_root, entry)

    def find(self, name: str) -> str | None:
        """The device path of the port called ``name``, or None when there is no such port."""
        entry = self.names().get(name)
        return self.device(entry) if entry else None

    def ensure_node(self, entry: str) -> str:
        """The device path of ``entry``, created (``mknod``, mode 0600) if devtmpfs did not."""
        path = self.device(entry)
        if os.path.exists(path):
            return path
        devfile = os.path.join(self.sys_root, entry, "dev")
        try:
            with open(devfile) as f:
                major, minor = (int(x) for x in f.read().strip().split(":"))
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
        except (OSError, ValueError) as exc:
            raise KernelError(f"cannot create the device node {path} from {devfile}: {exc}") from exc
        return path


class LineSplitter:
    """Bytes in, whole lines out (pure): what :meth:`PortFile.lines` does with each read. A line
    longer than ``max_line_bytes`` comes out once as ``None`` and the rest of it, up to its
    newline, is dropped; so at most ``max_line_bytes`` are ever buffered."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = b""  # the partial line so far (owned here)
        self._skipping = False  # inside an over-long line, until its newline

    def reset(self) -> None:
        """Drop the partial line (the host went away mid-line)."""
        self._buf, self._skipping = b"", False

    def feed(self, chunk: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        buf = self._buf + chunk
        while (nl := buf.find(b"\n")) >= 0:
            line, buf = buf[:nl], buf[nl + 1:]
            if self._skipping:
                self._skipping = False
            else:
                out.append(line if len(line) <= self.max_line_bytes else None)
        if self._skipping:
            buf = b""
        elif len(buf) > self.max_line_bytes:
            out.append(None)
            buf, self._skipping = b"", True
        self._buf = buf
        return out


class PortFile:
    """An open virtio-serial port (``path``; any character device or FIFO in tests): lines in,
    bytes out, surviving the host side (dis)connecting. Its reader and its writer may be two
    threads; a write that must not interleave with another is the caller's to lock."""

    def __init__(self, path: str, max_line_bytes: int) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.fd = os.open(path, os.O_RDWR)  # OSError: the caller says what it was for

    def lines(self, no_host_wait_s: float = NO_HOST_WAIT_S) -> Iterator[bytes | None]:
        """Each line, without its newline; ``None`` once for a line longer than
        ``max_line_bytes`` (the rest of it is discarded up to its newline). While no host is
        connected the port reads EOF: a partial line is dropped and the port read again after
        ``no_host_wait_s``. A read error (OSError) ends the iteration by raising."""
        splitter = LineSplitter(self.max_line_bytes)
        while True:
            try:
                chunk = os.read(self.fd, READ_BYTES)
            except InterruptedError:
                continue
            if not chunk:
                splitter.reset()
                time.sleep(no_host_wait_s)
                continue
            yield from splitter.feed(chunk)

    def write_all(self, data: bytes, on_error: Callable[[OSError], None] | None = None) -> None:
        """Write all of ``data`` (a write blocks while no host is connected). A failed write
        raises OSError, or, given ``on_error``, calls it (it may wait) and goes on from where
        the write stopped."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except InterruptedError:
                continue
            except OSError as err:
                if on_error is None:
                    raise
                on_error(err)

    def close(self) -> None:
        os.close(self.fd)
