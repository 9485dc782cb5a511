"""hostd's table of VM sessions: the one place sessions are kept, found, dropped, and told their target.

This module owns the name → :class:`~heapballoon.host.vmsession.VMSession` table and the pinned
targets (``targets``: what ``heapballoon target --vm`` set, kept in hostd's state file). It is
the narrow interface the rest of hostd gets instead of the daemon: the policy
(autopolicy.py) reads sessions and pins and asks for targets to be sent, the metrics
(vmstatus.py) read sessions. Owned by hostd's event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from heapballoon.host.vmsession import VMSession

log = logging.getLogger("heapballoon.hostd")


class SessionTable:
    """Sessions by VM name, the pins, and what happens when a session is dropped."""

    def __init__(self, on_drop: Callable[[VMSession], None] | None = None) -> None:
        self.vms: dict[str, VMSession] = {}
        self.targets: dict[str, int] = {}  # pinned heap targets by VM name (the state file's)
        self._on_drop = on_drop

    def sessions(self) -> list[VMSession]:
        """Every session, by name."""
        return sorted(self.vms.values(), key=lambda v: v.name)

    def get(self, name: str) -> VMSession | None:
        return self.vms.get(name)

    def pinned_bytes(self, name: str) -> int | None:
        return self.targets.get(name)

    def add(self, vm: VMSession) -> None:
        self.vms[vm.name] = vm

    def drop(self, vm: VMSession, why: str) -> None:
        """Close ``vm`` and forget it (if it is still the table's session of that name)."""
        log.info("VM %s: %s; forgetting it", vm.name, why)
        vm.close()
        if self.vms.get(vm.name) is vm:
            del self.vms[vm.name]
            if self._on_drop is not None:
                self._on_drop(vm)

    def close_all(self) -> None:
        for vm in list(self.vms.values()):
            vm.close()
        self.vms.clear()

    @staticmethod
    def want_target(vm: VMSession) -> None:
        """Have the VM's current target sent to its guest. Never waits on the guest: the
        channel's own sender sends it (the latest target wins), so a guest that stops reading
        delays no caller — the policy, ``target --vm`` — and no other VM (guestsession.py)."""
        if vm.channel is not None:
            vm.channel.want_target()
