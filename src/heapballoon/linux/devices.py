"""Device nodes under ``/dev`` that heapballoon looks at (the root is overridable for tests).

Owns: whether this host's ``/dev/kvm`` is there and usable by us (read and write), which is
what vm/accel.py needs before it probes KVM. Standard library only.
"""

from __future__ import annotations

import os

DEV_ROOT = "/dev"


def kvm_usable(dev_root: str = DEV_ROOT) -> bool:
    """``dev_root/kvm`` exists and this process may open it read-write."""
    return os.access(os.path.join(dev_root, "kvm"), os.R_OK | os.W_OK)
