"""hostd's control socket: the requests the CLI sends to ``heapballoon hostd``.

This module owns the answers to control clients (docs/protocol.md, CLI ↔ hostd): ``status``
(every VM's figures, measured by hostd, with its virtio-balloon read again when older than
``VIRTIO_READING_MAX_AGE_S``), ``policy_explain`` and ``vm_target`` (pin a VM's target, kept
in the state file, or ``auto`` to unpin it), and one client connection's loop (bad lines get
an error reply; the one bad-line counter, :class:`heapballoon.transport.BadLines`, drops the client). It is a mixin of
:class:`heapballoon.host.hostd.HostDaemon` and declares no state of its own: the ``vms``,
``targets`` and ``autopolicy`` it reads and writes are declared in ``HostDaemon.__init__`` and
owned by hostd's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from heapballoon import protocol, transport
from heapballoon.errors import HeapballoonError, MessageTooLarge, ProtocolError
from heapballoon.host import virtioballoon, vmstatus
from heapballoon.host.vmsession import VMSession
from heapballoon.status import HostStatus, PolicyReport

log = logging.getLogger("heapballoon.hostd")

VIRTIO_READING_MAX_AGE_S = 2.0  # status reads a VM's virtio-balloon again when older


class ControlRequests:
    """The control-socket half of HostDaemon (uses its ``vms``, ``targets``, ``scan`` ...)."""

    async def _unpin(self, vm: VMSession, msg: protocol.VMTarget) -> protocol.Message:
        if self.autopolicy is None:
            return protocol.Error(f"hostd runs without --policy auto: give VM {vm.name} a size", msg.id)
        self.targets.pop(vm.name, None)
        self.save_state()
        log.info("VM %s: target auto (the policy decides)", vm.name)
        return protocol.Reply(msg.id, {"vm": vm.name, "target_bytes": vm.target_bytes, "auto": True})

    async def control_message(self, msg: protocol.Message) -> protocol.Message:
        if isinstance(msg, protocol.StatusRequest):
            self.scan()
            await virtioballoon.refresh(self.vms.values(), VIRTIO_READING_MAX_AGE_S)
            snaps = await asyncio.to_thread(lambda: [vmstatus.snapshot(v) for v in self.table.sessions()])
            # built as the typed payload, so what hostd sends always has the documented shape
            pinned = self.autopolicy is not None
            return protocol.Reply(msg.id, HostStatus(
                tuple(replace(s.status, pinned=pinned and s.status.name in self.targets) for s in snaps),
                self.autopolicy.status_text() if self.autopolicy else "", self.left_alone).to_dict())
        if isinstance(msg, protocol.PolicyExplainRequest):
            report = self.autopolicy.report() if self.autopolicy else PolicyReport(
                "manual", "manual", None, "policy manual: VM targets are set by hand (heapballoon target --vm); "
                "start hostd with --policy auto to have them decided", 0)
            return protocol.Reply(msg.id, report.to_dict())
        if isinstance(msg, protocol.VMTarget):
            vm = self.vms.get(msg.vm)
            if vm is None:
                self.scan()
                vm = self.vms.get(msg.vm)
            if vm is None:
                return protocol.Error(f"no VM named {msg.vm} is managed by this hostd (`heapballoon vm list` shows the VMs)", msg.id)
            if msg.auto:
                return await self._unpin(vm, msg)
            if msg.target_bytes > vm.memory_bytes:
                return protocol.Error(f"target {msg.target_bytes} bytes exceeds VM {vm.name}'s "
                                      f"{vm.memory_bytes} bytes of RAM", msg.id)
            vm.target_bytes = msg.target_bytes
            self.targets[vm.name] = msg.target_bytes
            self.save_state()
            self.table.want_target(vm)
            log.info("VM %s: target %d bytes", vm.name, msg.target_bytes)
            return protocol.Reply(msg.id, {"vm": vm.name, "target_bytes": vm.target_bytes})
        return protocol.Error(f"hostd does not handle {msg.TYPE!r} requests", getattr(msg, "id", 0))

    async def _control_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ch = transport.LineChannel(reader, writer, protocol.control.decode)
        bad = transport.BadLines()
        try:
            while True:
                try:
                    msg = await ch.recv()
                except MessageTooLarge as err:
                    log.warning("control client: %s; dropping it", err)
                    return
                except ProtocolError as err:
                    await ch.send(protocol.Error(str(err)))
                    if bad.add():
                        return
                    continue
                if msg is None:
                    return
                try:
                    reply = await self.control_message(msg)
                except HeapballoonError as err:
                    reply = protocol.Error(str(err), getattr(msg, "id", 0))
                await ch.send(reply)
        except (OSError, ConnectionError):
            pass
        except Exception:  # noqa: BLE001
            log.exception("control client handler failed")
        finally:
            ch.close()
