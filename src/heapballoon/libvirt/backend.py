"""hostd's libvirt backend: the VM registry filled from a libvirtd instead of heapballoon's run dir.

With ``--libvirt``, hostd's VM source (host.vmregistry.VMSource) is a :class:`LibvirtBackend`
instead of the run dir: hostd calls :meth:`LibvirtBackend.discover` at every scan and admits
or drops sessions itself; this module gets hostd's sessions (read only) and a rescan call,
never the daemon, and does not import hostd (no cycle).

This module owns *which libvirt domains hostd manages* and keeping that list current:

* discovery (:meth:`LibvirtBackend.discover`): every running domain on the connection; one that
  has memfd shared RAM and the ``org.heapballoon.0`` UNIX channel (domxml's rules, on the
  *live* XML, which holds the socket path libvirt chose) and whose QEMU process is found
  becomes a :class:`LibvirtVM`; any other is kept in ``left_alone`` with the reason, which
  ``status --vms`` shows;
* events: lifecycle (start, stop, reboot, crash), migration iterations and job completion
  arrive on libvirt's event thread and are posted to hostd's loop; each triggers a rescan, and
  a migration marks the domain so no pause or punch happens until the job ends;
* libvirtd going away (close callback, keepalive): hostd keeps the VMs it has (their QEMUs
  still run, the guest channels still work; reclaims fail until libvirt is back) and
  reconnects on every scan.

Everything else (guest channel, reclaim engine, status, state file) is hostd's, unchanged: a
LibvirtVM is a hostd VM whose monitor is libvirt (conn.DomainMonitor).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from heapballoon.errors import HeapballoonError
from heapballoon.host.vmregistry import Discovery
from heapballoon.host.vmsession import VMIdentity, VMSession, proc_starttime
from heapballoon.libvirt import conn as lv
from heapballoon.libvirt import domxml

log = logging.getLogger("heapballoon.hostd")

RAM_BACKEND = "pc.ram"  # libvirt's id of the guest-RAM backend of a domain without NUMA cells


@dataclass(eq=False)
class LibvirtVM(VMSession):
    """A libvirt domain as hostd knows it."""

    MONITOR: ClassVar[str] = "libvirt"  # libvirt owns the domain's monitor: conn.DomainMonitor

    uuid: str = ""
    uri: str = ""
    socket: str = ""
    migrating: bool = False

    @property
    def channel_path(self) -> str:
        return self.socket

    def describe(self) -> str:
        return f"libvirt domain, channel {self.socket}"

    def monitor(self, timeout_s: float):
        return lv.DomainMonitor(self.uri, self.uuid, lambda: self.migrating)


class LibvirtBackend:
    """A hostd's VM source (host.vmregistry.VMSource): the running domains of libvirt at ``uri``."""

    def __init__(self, uri: str = lv.DEFAULT_URI, engine: str = "short") -> None:
        if engine != "short":
            raise HeapballoonError("hostd --libvirt works with the short engine only")
        lv.import_binding()  # a clear error now rather than warnings forever
        self.uri = uri
        self.where = f"libvirt at {uri}"
        self.conn = None
        self._sessions: Mapping[str, VMSession] = {}
        self._rescan: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._left_alone: dict[str, str] = {}  # the last scan's, to log a domain's reason once
        self._warned = False

    # ------------------------------------------------------------ connection and events

    def _event(self, kind: str, name: str, detail: str) -> None:
        """On libvirt's event thread: hand the event to hostd's loop (none once closed, or
        once that loop has ended: an event that comes in while hostd exits is dropped)."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._on_event, kind, name, detail)
        except RuntimeError:  # the loop is closed: hostd has stopped
            pass

    def attach(self, sessions: Mapping[str, VMSession], rescan: Callable[[], None]) -> None:
        """hostd's sessions (read: a domain's ``migrating`` flag is set here) and its scan."""
        self._sessions, self._rescan = sessions, rescan
        self._loop = asyncio.get_running_loop()

    def _on_event(self, kind: str, name: str, detail: str) -> None:
        if self._rescan is None:
            return
        vm = self._sessions.get(name)
        if kind == "closed":
            log.warning("libvirt at %s: connection closed (reason %s); reconnecting", self.uri, detail)
            self.conn = None
        elif kind == "migration":
            if vm is not None and not vm.migrating:
                log.info("VM %s: migration running; no reclaim until it ends", name)
                vm.migrating = True
            return
        elif kind == "job" and vm is not None and vm.migrating:
            log.info("VM %s: migration job ended", name)
            vm.migrating = False
        elif kind == "lifecycle":
            what = lv.lifecycle_name(detail)
            if what in ("suspended", "resumed"):
                return  # our own pauses (and others'): nothing to rescan
            log.info("VM %s: libvirt event %s", name, what)
            if vm is not None and what in ("stopped", "crashed", "started"):
                vm.migrating = False
        try:
            self._rescan()
        except Exception:  # noqa: BLE001 - an event must not end hostd
            log.exception("scan after a libvirt event failed")

    def _connect(self) -> bool:
        if self.conn is not None:
            try:
                if self.conn.isAlive():
                    return True
            except Exception:  # noqa: BLE001
                pass
            self.conn = None
        try:
            lv.EventThread.ensure()
            c = lv.open_conn(self.uri)
            lv.watch(c, self._event)
        except lv.LibvirtError as err:
            if not self._warned:
                log.warning("%s (retrying every scan)", err)
                self._warned = True
            return False
        except Exception as err:  # noqa: BLE001 - a libvirtError while registering
            log.warning("libvirt at %s: %s", self.uri, lv.one_line(err))
            return False
        self.conn, self._warned = c, False
        log.info("libvirt at %s: connected (libvirt %d)", self.uri, c.getLibVersion())
        return True

    # ------------------------------------------------------------ registry

    def _domains(self) -> list[tuple[str, str, str]] | None:
        """(name, uuid, live XML) of every running domain; None if libvirt does not answer."""
        if not self._connect():
            return None
        libvirt = lv.import_binding()
        try:
            doms = self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except libvirt.libvirtError as err:
            log.warning("libvirt at %s: %s", self.uri, lv.one_line(err))
            self.conn = None
            return None
        out = []
        for d in doms:
            try:
                out.append((d.name(), d.UUIDString(), d.XMLDesc(0)))
            except libvirt.libvirtError:
                continue  # went away while listed
        return sorted(out)

    def discover(self, known: Mapping[str, VMSession]) -> Discovery:
        """libvirt's running domains compared with hostd's sessions ``known``."""
        domains = self._domains()
        if domains is None:  # hostd keeps what it has until libvirt answers again, but not the dead
            return Discovery(complete=False)
        keep, new, left = set(), [], {}
        for name, uuid, xml in domains:
            session = known.get(name)
            if session is not None and getattr(session, "uuid", None) == uuid and session.alive():
                keep.add(name)
                continue
            try:
                why = domxml.missing(xml)
                f = domxml.facts(xml)
            except domxml.DomainXMLError as err:
                why, f = [str(err)], None
            if not why and not f.channel_socket:
                why = [f"channel {domxml.CHANNEL_PORT} has no socket path in the live XML"]
            pid = lv.qemu_pid(uuid, name=name, qemu_uid=lv.dac_uid(f.dac_label)) if not why else 0
            if not why and not pid:
                why = ["its QEMU process was not found, or does not run as libvirt's QEMU user "
                       "(is hostd on the domain's host, as root?)"]
            starttime = proc_starttime(pid) if pid else None
            if not why and starttime is None:
                why = ["its QEMU process exited"]
            if why:
                if self._left_alone.get(name) != "; ".join(why):
                    log.info("VM %s: left alone: %s", name, "; ".join(why))
                left[name] = "; ".join(why)
                continue
            new.append(LibvirtVM(VMIdentity(name, f"libvirt:{name}", pid, starttime, f.memory_bytes, "pfn",
                                            ram_backend=RAM_BACKEND), uuid=uuid, uri=self.uri, socket=f.channel_socket))
        self._left_alone = left
        return Discovery(frozenset(keep), tuple(new), left)

    def close(self) -> None:
        """hostd stops: no more events to its loop, no rescans, and the connection closed."""
        self._loop, self._rescan = None, None
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
            self.conn = None
