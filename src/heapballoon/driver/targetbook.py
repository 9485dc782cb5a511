"""The driver's targets set by hand, and the state file that keeps them across restarts.

:class:`TargetBook` owns ``node_target_bytes`` (``heapballoon target all SIZE``, or in a guest
the host's ``guest_target``) and ``saved_explicit`` (per-JVM targets read from the state file,
by ``"pid:starttime"``, for JVMs that may reconnect). Per-JVM targets of connected JVMs live on
their records in the JVM table (``JVMRecord.explicit_target_bytes``). Owned by the driver's event
loop thread. Targets survive a restart twice over: the state file next to the socket, and the
target each agent reports in its ``hello`` (:meth:`TargetBook.adopt`).
"""

from __future__ import annotations

import json
import logging
import os

from heapballoon import protocol
from heapballoon.driver.registry import JVMRecord, Registry
from heapballoon.linux import safefs
from heapballoon.linux.procfs import ProcFS

log = logging.getLogger("heapballoon.driver")


class TargetBook:
    """Targets set by hand and their state file. Mutable state (event loop thread):
    ``node_target_bytes``, ``saved_explicit``."""

    def __init__(self, state_path: str) -> None:
        self.state_path = state_path
        self.node_target_bytes: int | None = None
        self.saved_explicit: dict[str, int] = {}

    def load(self) -> None:
        try:
            saved = json.loads(safefs.read_small(self.state_path))
            self.node_target_bytes = saved.get("node_target_bytes")
            self.saved_explicit = {str(k): int(v) for k, v in saved.get("explicit", {}).items()}
            log.info("loaded targets from %s: node=%s, %d per-JVM", self.state_path,
                     self.node_target_bytes, len(self.saved_explicit))
        except FileNotFoundError:
            pass
        except (ValueError, OSError, AttributeError, TypeError, safefs.UnsafePath) as err:
            log.error("ignoring unreadable state file %s: %s", self.state_path, err)

    def save(self, registry: Registry, procfs: ProcFS) -> None:
        explicit = {f"{r.pid}:{r.starttime}": r.explicit_target_bytes
                    for r in registry if r.explicit_target_bytes is not None}
        # Keep targets of JVMs that are disconnected right now but may come back.
        for key, value in self.saved_explicit.items():
            pid = int(key.split(":")[0])
            if registry.get(pid) is None and procfs.exists(pid):
                explicit.setdefault(key, value)
        self.saved_explicit = explicit
        data = json.dumps({"node_target_bytes": self.node_target_bytes, "explicit": explicit}).encode()
        safefs.write_atomic(*os.path.split(self.state_path), data)  # no symlink followed

    def adopt(self, rec: JVMRecord, hello: protocol.Hello, policy_decides: bool) -> None:
        """At ``hello``: give a (re)connected JVM the target it had, from the state file, or the
        balloon its agent still holds (the balloon survives our restart)."""
        saved = self.saved_explicit.get(f"{rec.pid}:{rec.starttime}")
        if rec.explicit_target_bytes is None:
            if saved is not None:
                rec.explicit_target_bytes = saved
            elif hello.target_bytes and not self.node_target_bytes and not policy_decides:
                rec.explicit_target_bytes = hello.target_bytes

    def forget(self, rec: JVMRecord) -> None:
        """The JVM exited: its saved target can never apply again."""
        self.saved_explicit.pop(f"{rec.pid}:{rec.starttime}", None)
