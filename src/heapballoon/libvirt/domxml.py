"""What a libvirt domain's XML must hold for heapballoon, and the edit that adds it (pure, no libvirt).

This module owns the *rules* on domain XML, as text in and text out, so ``libvirt check``,
``libvirt prepare`` and hostd's discovery all judge a domain the same way:

* guest RAM is one shared memfd: ``<memoryBacking><source type='memfd'/><access
  mode='shared'/></memoryBacking>`` (hostd opens that memfd through QEMU's /proc entry and
  punches holes in it), and no ``<numa>`` cells (each would be a RAM backend of its own);
* a virtio-serial channel named ``org.heapballoon.0`` on a UNIX socket
  (``<channel type='unix'><source mode='bind'/><target type='virtio' name='org.heapballoon.0'/>``);
  libvirt picks the socket path when the XML gives none and writes it into the live XML,
  where hostd reads it.

:func:`missing` lists what a domain lacks (empty: it takes part), :func:`prepare` returns the
XML with it added (idempotent: prepared XML comes back unchanged), :func:`facts` reads what
hostd needs from a *live* domain's XML, :func:`xml_diff` is the ``--dry-run`` output.
"""

from __future__ import annotations

import difflib
import io
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from heapballoon.errors import HeapballoonError
from heapballoon.vm.vmdir import CHANNEL_PORT

_UNITS = {"b": 1, "bytes": 1, "kb": 1000, "k": 1024, "kib": 1024, "mb": 1000 ** 2, "m": 1 << 20,
          "mib": 1 << 20, "gb": 1000 ** 3, "g": 1 << 30, "gib": 1 << 30, "tb": 1000 ** 4, "t": 1 << 40,
          "tib": 1 << 40}


class DomainXMLError(HeapballoonError):
    """Domain XML that cannot be read or changed."""


@dataclass(frozen=True)
class DomainFacts:
    """What hostd needs from a domain's (live) XML."""

    name: str
    memory_bytes: int
    memfd_shared: bool
    numa_cells: int
    channel_socket: str | None   # the channel's UNIX socket path, None if absent or not yet known
    has_channel: bool
    dac_label: str | None = None  # live XML: the user:group libvirt runs QEMU as ("+64055:+107")


def _parse(xml: str) -> ET.Element:
    """The document's root, comments kept (as ``ET.Comment`` children) so that :func:`prepare`
    writes back what the operator wrote, comments included."""
    try:
        parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
        parser.feed(xml)
        root = parser.close()
    except ET.ParseError as err:
        raise DomainXMLError(f"not valid domain XML: {err}") from err
    if root.tag != "domain":
        raise DomainXMLError(f"not a domain XML document (root element <{root.tag}>)")
    return root


def _memory_bytes(root: ET.Element) -> int:
    el = root.find("memory")
    if el is None or not (el.text or "").strip():
        raise DomainXMLError("the domain XML has no <memory>")
    unit = el.get("unit", "KiB").lower()
    if unit not in _UNITS:
        raise DomainXMLError(f"unknown memory unit {el.get('unit')!r}")
    try:
        return int(el.text.strip()) * _UNITS[unit]
    except ValueError as err:
        raise DomainXMLError(f"<memory> is not a number: {el.text!r}") from err


def _our_channel(root: ET.Element) -> ET.Element | None:
    for ch in root.findall("./devices/channel"):
        target = ch.find("target")
        if target is not None and target.get("name") == CHANNEL_PORT:
            return ch
    return None


def facts(xml: str) -> DomainFacts:
    root = _parse(xml)
    mb = root.find("memoryBacking")
    memfd = mb is not None and mb.find("source") is not None and mb.find("source").get("type") == "memfd"
    shared = mb is not None and mb.find("access") is not None and mb.find("access").get("mode") == "shared"
    ch = _our_channel(root)
    path = None
    if ch is not None and ch.get("type") == "unix":
        src = ch.find("source")
        path = src.get("path") if src is not None and src.get("mode", "bind") == "bind" else None
    dac = next((s.findtext("label") for s in root.findall("seclabel") if s.get("model") == "dac"), None)
    return DomainFacts(name=(root.findtext("name") or "").strip(), memory_bytes=_memory_bytes(root),
                       memfd_shared=memfd and shared, numa_cells=len(root.findall("./cpu/numa/cell")),
                       channel_socket=path, has_channel=ch is not None and ch.get("type") == "unix",
                       dac_label=(dac or "").strip() or None)


def missing(xml: str) -> list[str]:
    """What the domain lacks to take part, one plain sentence each (empty: nothing)."""
    root = _parse(xml)
    f = facts(xml)
    out = []
    mb = root.find("memoryBacking")
    src = mb.find("source") if mb is not None else None
    acc = mb.find("access") if mb is not None else None
    if src is None or src.get("type") != "memfd":
        out.append("guest RAM is not a memfd (needs <memoryBacking><source type='memfd'/>)")
    if acc is None or acc.get("mode") != "shared":
        out.append("guest RAM is not shared (needs <memoryBacking><access mode='shared'/>)")
    if mb is not None and mb.find("hugepages") is not None:
        out.append("guest RAM uses hugepages (heapballoon punches 4 KiB pages; remove <hugepages/>)")
    if f.numa_cells:
        out.append(f"the domain has {f.numa_cells} NUMA cells (several RAM backends; not supported)")
    ch = _our_channel(root)
    if ch is None:
        out.append(f"no virtio-serial channel named {CHANNEL_PORT} "
                   f"(needs <channel type='unix'> with <target type='virtio' name='{CHANNEL_PORT}'/>)")
    elif ch.get("type") != "unix":
        out.append(f"channel {CHANNEL_PORT} is of type {ch.get('type')!r}, not a UNIX socket ('unix')")
    elif ch.find("source") is not None and ch.find("source").get("mode", "bind") != "bind":
        out.append(f"channel {CHANNEL_PORT} must be <source mode='bind'> (QEMU listens, hostd connects)")
    return out


def _child(parent: ET.Element, tag: str, index: int | None = None) -> ET.Element:
    el = parent.find(tag)
    if el is None:
        el = ET.Element(tag)
        if index is None:
            parent.append(el)
        else:
            parent.insert(index, el)
    return el


def _indent_like(root: ET.Element) -> None:
    if hasattr(ET, "indent"):
        ET.indent(root, space="  ")


_RESERVED_PREFIX = re.compile(r"ns\d+$")  # ElementTree's own; register_namespace refuses them
_OUTSIDE_ROOT = re.compile(r"\s*(?:<\?xml[^>]*\?>\s*)?((?:<!--.*?-->\s*)*)<", re.S)


def _namespaces(xml: str) -> list[tuple[str, str]]:
    """The ``(prefix, uri)`` pairs the document declares (``xmlns:qemu='...'``)."""
    try:
        return [ns for _ev, ns in ET.iterparse(io.StringIO(xml), events=("start-ns",))]
    except ET.ParseError as err:
        raise DomainXMLError(f"not valid domain XML: {err}") from err


def _serialize(root: ET.Element, original: str) -> str:
    """``root`` as text with the original's namespace prefixes (ElementTree would write
    ``ns0:``) and its comments before the root element (the tree holds only those inside)."""
    for prefix, uri in _namespaces(original):
        if prefix and not _RESERVED_PREFIX.match(prefix):
            ET.register_namespace(prefix, uri)  # process-wide, but a prefix → URI map only
    head = _OUTSIDE_ROOT.match(original)
    lead = head.group(1) if head else ""
    return lead + ET.tostring(root, encoding="unicode") + "\n"


def prepare(xml: str) -> str:
    """The domain XML with memfd shared memory and the channel added; ``xml`` itself (the same
    string) when nothing is missing. DomainXMLError for what prepare cannot fix (NUMA, hugepages)."""
    todo = missing(xml)
    if not todo:
        return xml
    root = _parse(xml)
    mb = root.find("memoryBacking")
    if mb is not None and mb.find("hugepages") is not None:
        raise DomainXMLError("the domain uses hugepages; remove <hugepages/> from <memoryBacking> first")
    if root.findall("./cpu/numa/cell"):
        raise DomainXMLError("the domain has NUMA cells; heapballoon needs one RAM backend (remove <numa>)")
    if mb is None:
        after = [i for i, el in enumerate(root) if el.tag in ("memory", "currentMemory", "maxMemory")]
        mb = ET.Element("memoryBacking")
        root.insert(max(after) + 1 if after else len(root), mb)
    _child(mb, "source").set("type", "memfd")
    _child(mb, "access").set("mode", "shared")
    devices = _child(root, "devices")
    ch = _our_channel(root)
    if ch is not None:
        devices.remove(ch)   # of the wrong kind: replaced
    ch = ET.SubElement(devices, "channel", {"type": "unix"})
    ET.SubElement(ch, "source", {"mode": "bind"})   # libvirt chooses the socket path
    ET.SubElement(ch, "target", {"type": "virtio", "name": CHANNEL_PORT})
    if not any(c.get("type") == "virtio-serial" for c in devices.findall("controller")):
        ET.SubElement(devices, "controller", {"type": "virtio-serial", "index": "0"})
    _indent_like(root)
    out = _serialize(root, xml)
    if missing(out):
        raise DomainXMLError(f"prepare left something missing: {'; '.join(missing(out))}")
    return out


def normalized(xml: str) -> str:
    """``xml`` re-serialized the way :func:`prepare` writes it (for a diff of like with like)."""
    root = _parse(xml)
    _indent_like(root)
    return _serialize(root, xml)


def xml_diff(old: str, new: str, name: str = "domain") -> str:
    return "".join(difflib.unified_diff(normalized(old).splitlines(True), normalized(new).splitlines(True),
                                        f"{name}.xml (now)", f"{name}.xml (prepared)"))
