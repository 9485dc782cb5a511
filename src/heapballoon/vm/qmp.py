"""QMP for the VM tools: a thin re-export of heapballoon.qemu.monitor (the one QMP client)
and heapballoon.qemu.events (a listener that only collects events)."""

from __future__ import annotations

from heapballoon.qemu.monitor import execute_once as qmp_execute_async
from heapballoon.qemu.monitor import execute_sync as qmp_execute
from heapballoon.qemu.events import EventLog
from heapballoon.qemu.monitor import hmp

__all__ = ["EventLog", "hmp", "qmp_execute", "qmp_execute_async"]
