"""libvirt domain XML rules (pure: no libvirtd): what is missing, prepare, idempotence, diff."""

from __future__ import annotations

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
