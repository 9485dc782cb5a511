"""``heapballoon vm balloon NAME [SIZE]``: the stock virtio-balloon of one of our VMs, through QMP.

Owns the host-side request of the stock way (issue 17, ``vm start --reclaim virtio``): the QMP
``balloon`` command (the guest RAM left to the guest, what OpenStack, Proxmox or ``virsh
setmem --live`` ask for on their hosts) and ``query-balloon`` (how far the guest got). The guest
kernel's virtio_balloon driver inflates or deflates on its own time; heapballoon's guest driver
frees idle JVM heap so that the inflation finds free pages. No hostd is involved: this talks to
the VM's own QMP socket, one short connection per call.
"""

from __future__ import annotations

from dataclasses import dataclass

from heapballoon.errors import VMError
from heapballoon.vm.registry import get_vm

MIN_ACTUAL_BYTES = 64 << 20


@dataclass(frozen=True)
class BalloonState:
    """The guest RAM QEMU leaves to the guest (``actual``) out of the VM's RAM."""

    name: str
    memory_bytes: int
    actual_bytes: int


def query_balloon(name: str, timeout_s: float = 5.0) -> BalloonState:
    from heapballoon.vm.qmp import qmp_execute

    info = get_vm(name)
    reply = qmp_execute(info.qmp_socket, "query-balloon", timeout_s=timeout_s)
    actual = reply.get("actual") if isinstance(reply, dict) else None
    if not isinstance(actual, int) or isinstance(actual, bool):
        raise VMError(f"VM {name!r}: query-balloon answered {reply!r}")
    return BalloonState(name, info.memory_bytes, actual)


def set_balloon(name: str, actual_bytes: int, timeout_s: float = 5.0) -> BalloonState:
    """Ask the guest to shrink or grow to ``actual_bytes`` (QMP ``balloon``); returns at once."""
    from heapballoon.vm.qmp import qmp_execute

    info = get_vm(name)
    if not MIN_ACTUAL_BYTES <= actual_bytes <= info.memory_bytes:
        raise VMError(f"balloon size {actual_bytes >> 20} MiB out of range for VM {name!r}: "
                      f"{MIN_ACTUAL_BYTES >> 20} MiB to its {info.memory_bytes >> 20} MiB")
    qmp_execute(info.qmp_socket, "balloon", {"value": int(actual_bytes)}, timeout_s=timeout_s)
    return query_balloon(name, timeout_s)
