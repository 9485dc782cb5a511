"""A JVM's identity in status: its cgroup (procfs), the container and pod its path names
(linux/cgroupid.py), carried by the driver's registry into status and shown by render."""

from __future__ import annotations

import pytest

from heapballoon import protocol
from heapballoon.driver.registry import Registry
from heapballoon.linux.cgroupid import identify
from heapballoon.linux.procfs import ProcFS
from heapballoon.render import render_plain
from heapballoon.status import JvmStatus

CID = "0123456789abcdef" * 4
UID = "1a2b3c4d-5e6f-4a0b-9c8d-7e6f5a4b3c2d"


@pytest.mark.parametrize("path, container, pod", [
    (f"/docker/{CID}", CID, ""),
    (f"/system.slice/docker-{CID}.scope", CID, ""),
    (f"/machine.slice/libpod-{CID}.scope", CID, ""),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope", CID, ""),
    (f"/machine.slice/libpod-conmon-{CID}.scope", "", ""),  # podman's monitor, not the container
    (f"/libpod_parent/libpod-{CID}", CID, ""),  # podman with --cgroup-manager cgroupfs (issue 18)
    (f"/libpod_parent/libpod-conmon-{CID}", "", ""),
    (f"/kubepods/burstable/pod{UID}/{CID}", CID, UID),
    (f"/kubepods/pod{UID}/{CID}", CID, UID),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/"
     f"cri-containerd-{CID}.scope", CID, UID),
    (f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope", CID, UID),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice", "", UID),
    ("/user.slice/user-0.slice/session-3.scope", "", ""),
    ("/", "", ""),
    ("", "", ""),
    (f"/docker/{CID[:-1]}", "", ""),  # 63 hex: not an id
])
def test_identify_names_the_container_and_pod(path, container, pod):
    got = identify(path)
    assert (got.container_id, got.pod_uid) == (container, pod)


@pytest.mark.parametrize("text, expected", [
    ("12:memory:/kubepods/x\n11:cpu,cpuacct:/y\n0::/z\n", "/kubepods/x"),  # v1 memory first
    ("11:cpu,cpuacct:/y\n5:blkio,memory:/m\n", "/m"),
    ("0::/system.slice/docker-abc.scope\n", "/system.slice/docker-abc.scope"),  # v2 only
    ("11:cpu:/y\n", ""),
])
def test_procfs_cgroup_is_the_memory_cgroup(tmp_path, text, expected):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text(text)
    assert ProcFS(str(tmp_path)).cgroup(42) == expected


def test_status_carries_the_identity_and_the_table_shows_it_only_when_there():
    hello = protocol.Hello(pid=1, name="orders", agent_version="1", jvm_version="17", jvm_vendor="x", gc="G1",
                           region_bytes=0, address_mode="native", reclaim_modes=("ksm",), target_bytes=0)
    reg = Registry()
    rec = reg.upsert(4242, 1, hello)
    plain = rec.status(0)
    assert (plain.cgroup, plain.container_id, plain.pod_uid) == ("", "", "")
    rec.cgroup = f"/kubepods/burstable/pod{UID}/{CID}"
    st = rec.status(0)
    assert (st.cgroup, st.container_id, st.pod_uid) == (rec.cgroup, CID, UID)
    assert JvmStatus.from_dict(st.to_dict()) == st  # through the wire and back
    node = {"target_bytes": 0, "balloon_bytes": 0, "reclaimed_bytes": 0, "ksm": "active"}
    wide = render_plain({"jvms": [st.to_dict()], "node": node}, width=200)
    assert "CONTAINER" in wide and CID[:12] in wide and UID[:8] in wide
    assert "CONTAINER" not in render_plain({"jvms": [plain.to_dict()], "node": node}, width=200)
