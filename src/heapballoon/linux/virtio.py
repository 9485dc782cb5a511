"""The one adapter for virtio-serial ports seen from inside a guest (``/sys/class/virtio-ports``).

Owns: finding a port's device by its name (``/sys/class/virtio-ports/vportNpM/name``; our
guest has no udev, so no ``/dev/virtio-ports/NAME`` symlinks) and creating its device node
from ``.../dev`` (``major:minor``) when devtmpfs has not made it. Both roots are overridable,
so unit tests run on a fixture tree. Pure standard library: runs in the guest.
"""

from __future__ import annotations

import os
import stat

from heapballoon.errors import KernelError

SYS_ROOT = "/sys/class/virtio-ports"
DEV_ROOT = "/dev"


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
