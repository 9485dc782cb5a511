"""The one adapter for the guest's virtio-balloon device as the guest kernel negotiated it.

Owns reading ``/sys/bus/virtio/devices/virtioN/{device,features}``: the balloon is the device
whose ``device`` is ``0x0005`` (VIRTIO_ID_BALLOON), and ``features`` is one character per
feature bit, ``'1'`` where the driver and the device agreed on it (bit 0 first). The bits
that matter to the guest driver (include/uapi/linux/virtio_balloon.h):

* ``VIRTIO_BALLOON_F_DEFLATE_ON_OOM`` (2): QEMU ``deflate-on-oom=on``, libvirt
  ``autodeflate='on'``. With it the balloon gives pages back when the guest would otherwise
  OOM-kill; without it (libvirt's, Proxmox's, KubeVirt's and nova's default) a host that asks
  for more than the guest has free makes the guest kill its largest process.
* ``VIRTIO_BALLOON_F_REPORTING`` (5): free page reporting (``free-page-reporting=on``).

The root is overridable, so unit tests run on a fixture tree. Pure standard library: runs in
the guest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from heapballoon.errors import KernelError

SYS_ROOT = "/sys/bus/virtio/devices"
VIRTIO_ID_BALLOON = 5
F_DEFLATE_ON_OOM = 2
F_REPORTING = 5


@dataclass(frozen=True)
class BalloonFeatures:
    """The negotiated features of the guest's virtio-balloon (``device``: its sysfs name)."""

    device: str
    deflate_on_oom: bool
    free_page_reporting: bool


class VirtioBalloon:
    """The virtio devices under ``root``."""

    def __init__(self, root: str = SYS_ROOT) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"VirtioBalloon({self.root!r})"

    def features(self) -> BalloonFeatures | None:
        """The first balloon device's features, None when the guest has no virtio-balloon."""
        try:
            entries = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KernelError(f"cannot list {self.root}: {exc.strerror}") from exc
        for entry in entries:
            try:
                with open(os.path.join(self.root, entry, "device")) as f:
                    device = int(f.read().strip(), 16)
            except (OSError, ValueError):
                continue  # going away, or not a virtio device entry
            if device != VIRTIO_ID_BALLOON:
                continue
            path = os.path.join(self.root, entry, "features")
            try:
                with open(path) as f:
                    bits = f.read().strip()
            except OSError as exc:
                raise KernelError(f"cannot read {path}: {exc.strerror}") from exc
            if not bits or set(bits) - {"0", "1"}:
                raise KernelError(f"{path}: not a feature bit string: {bits[:80]!r}")

            def bit(n: int) -> bool:
                return len(bits) > n and bits[n] == "1"

            return BalloonFeatures(entry, bit(F_DEFLATE_ON_OOM), bit(F_REPORTING))
        return None
