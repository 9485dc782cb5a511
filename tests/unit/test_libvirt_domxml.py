"""libvirt domain XML rules (pure: no libvirtd): what is missing, prepare, idempotence, diff."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from heapballoon.libvirt import domxml

PLAIN = """<domain type='qemu'>
  <name>web</name>
  <memory unit='MiB'>1024</memory>
  <currentMemory unit='MiB'>1024</currentMemory>
  <devices><disk type='file' device='disk'><source file='/x.img'/><target dev='vda' bus='virtio'/></disk></devices>
</domain>"""


def test_plain_domain_misses_memfd_shared_and_channel():
    todo = domxml.missing(PLAIN)
    assert len(todo) == 3 and "memfd" in todo[0] and "shared" in todo[1] and "org.heapballoon.0" in todo[2]
    assert domxml.facts(PLAIN).memory_bytes == 1 << 30


def test_prepare_adds_everything_and_is_idempotent():
    out = domxml.prepare(PLAIN)
    assert domxml.missing(out) == []
    assert domxml.prepare(out) is out
    f = domxml.facts(out)
    assert f.memfd_shared and f.has_channel and f.channel_socket is None  # libvirt picks the path
    diff = domxml.xml_diff(PLAIN, out, "web")
    assert "+    <source type=\"memfd\" />" in diff and "org.heapballoon.0" in diff


def test_live_xml_gives_the_socket_path():
    live = domxml.prepare(PLAIN).replace('<source mode="bind" />', '<source mode="bind" path="/run/c.sock" />')
    assert domxml.facts(live).channel_socket == "/run/c.sock"


def test_channel_of_the_wrong_type_is_named_and_replaced():
    xml = PLAIN.replace("</devices>", "<channel type='pty'><target type='virtio' name='org.heapballoon.0'/></channel></devices>")
    assert any("'pty'" in m for m in domxml.missing(xml))
    assert domxml.missing(domxml.prepare(xml)) == []


def test_numa_and_hugepages_are_refused_with_a_reason():
    numa = PLAIN.replace("</domain>", "<cpu><numa><cell id='0' cpus='0' memory='1' unit='GiB'/></numa></cpu></domain>")
    assert any("NUMA" in m for m in domxml.missing(numa))
    with pytest.raises(domxml.DomainXMLError, match="NUMA"):
        domxml.prepare(numa)


@pytest.mark.parametrize("bad", ["", "<x/>", "<domain><name>a</name></domain>", "<domain"])
def test_bad_xml_is_a_clear_error(bad):
    with pytest.raises(domxml.DomainXMLError):
        domxml.missing(bad)


OPERATOR = """<!-- kept by hand: web front end -->
<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web</name>
  <!-- 1 GiB is enough for the front end -->
  <memory unit='MiB'>1024</memory>
  <devices>
    <!-- the boot disk -->
    <disk type='file' device='disk'><source file='/x.img'/><target dev='vda' bus='virtio'/></disk>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-msg'/>
    <qemu:arg value='timestamp=on'/>
  </qemu:commandline>
</domain>"""


def _without_added(xml: str) -> str:
    """``xml`` (prepared) with what prepare says it adds taken out again, canonical."""
    root = domxml._parse(xml)
    root.remove(root.find("memoryBacking"))
    devices = root.find("devices")
    for el in list(devices):
        if el.tag == "channel" or (el.tag == "controller" and el.get("type") == "virtio-serial"):
            devices.remove(el)
    return _canonical(ET.tostring(root, encoding="unicode"))


def _canonical(xml: str) -> str:
    return ET.canonicalize(xml, with_comments=True, strip_text=True)


def test_prepare_keeps_comments_and_namespace_prefixes():
    out = domxml.prepare(OPERATOR)
    assert domxml.missing(out) == []
    assert "ns0:" not in out and "<qemu:commandline" in out and "<qemu:arg value=\"-msg\"" in out
    for comment in ("kept by hand: web front end", "1 GiB is enough", "the boot disk"):
        assert comment in out
    assert out.startswith("<!-- kept by hand")
    # everything but the added elements round-trips (comments, prefixes, order, attributes)
    body = OPERATOR.split("\n", 1)[1]  # the comment before <domain> is outside the tree
    assert _without_added(out) == _canonical(body)
    assert domxml.prepare(out) is out
    assert domxml.xml_diff(OPERATOR, out).count("\n-") == 0  # the diff only adds lines
