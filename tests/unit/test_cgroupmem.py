"""Memory limits of cgroups from cgroupfs (linux/cgroupmem.py), v1 and v2, on the fixture trees
in tests/fixtures/cgroup: a Kubernetes node's kubepods, a burstable pod with a limit, its
container without one."""

import shutil
from pathlib import Path

import pytest

from heapballoon.errors import KernelError
from heapballoon.linux.cgroupmem import CgroupMemory

MIB = 1 << 20
GIB = 1 << 30
FIXTURES = Path(__file__).parent.parent / "fixtures" / "cgroup"
UID = "1a2b3c4d-0000-4000-8000-00000000abcd"
CID = "4f0e6c3a8b2d1e5f7a9c0b1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f"
V1_CONTAINER = f"/kubepods/burstable/pod{UID}/{CID}"
V2_POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice"
V2_CONTAINER = f"{V2_POD}/cri-containerd-{CID}.scope"


def v1() -> CgroupMemory:
    return CgroupMemory(v1_root=str(FIXTURES / "v1"), v2_root=str(FIXTURES / "none"))


def v2() -> CgroupMemory:
    return CgroupMemory(v1_root=str(FIXTURES / "none"), v2_root=str(FIXTURES / "v2"))


def test_v1_a_container_is_bound_by_its_pod_and_by_kubepods_deepest_first():
    cg = v1()
    assert cg.version() == 1
    found = cg.limits(V1_CONTAINER)
    assert [(g.path, g.limit_bytes, g.usage_bytes) for g in found] == [
        (f"/kubepods/burstable/pod{UID}", 1150 * MIB, 1100 * MIB), ("/kubepods", 20 * GIB, 5 * GIB)]
    assert {g.version for g in found} == {1} and found[0].limit_file == "memory.limit_in_bytes"
    assert cg.nearest_limit(V1_CONTAINER) == found[0]
    assert cg.limits("/system.slice") == [] and cg.limits("/") == []  # unlimited, and the root is none


def test_v2_the_lower_of_memory_max_and_memory_high_binds():
    cg = v2()
    assert cg.version() == 2
    found = cg.limits(V2_CONTAINER)
    assert [(g.path, g.limit_file, g.limit_bytes, g.usage_bytes) for g in found] == [
        (V2_POD, "memory.high", 1100 * MIB, 1000 * MIB), ("/kubepods.slice", "memory.max", 20 * GIB, 5 * GIB)]
    assert cg.limits("/system.slice") == []  # "max" is no limit


def test_v2_without_the_memory_controller_and_no_tree_at_all_read_as_no_limits(tmp_path):
    shutil.copytree(FIXTURES / "v2", tmp_path / "v2")
    (tmp_path / "v2" / "cgroup.controllers").write_text("cpu io pids\n")
    cg = CgroupMemory(v1_root=str(tmp_path / "none"), v2_root=str(tmp_path / "v2"))
    assert cg.version() == 0 and cg.limits(V2_CONTAINER) == []
    assert CgroupMemory(str(tmp_path / "a"), str(tmp_path / "b")).limits("/x/y") == []


def test_garbage_and_missing_groups_are_one_clear_error(tmp_path):
    shutil.copytree(FIXTURES / "v2", tmp_path / "v2")
    (tmp_path / "v2" / "kubepods.slice" / "memory.max").write_text("lots\n")
    cg = CgroupMemory(v1_root=str(tmp_path / "none"), v2_root=str(tmp_path / "v2"))
    with pytest.raises(KernelError, match=r"memory.max: not a number: 'lots'"):
        cg.limits("/kubepods.slice")
    with pytest.raises(KernelError, match="cannot read .*/gone/memory.max"):
        cg.limits("/gone")
    with pytest.raises(KernelError, match="invalid cgroup path"):
        cg.limits("/kubepods.slice/../etc")


def test_v2_a_group_without_the_memory_controller_has_no_limit_of_its_own_but_its_ancestors_bind(tmp_path):
    """A pod slice whose ``cgroup.subtree_control`` does not enable ``memory`` gives its
    children no memory.* files at all (as in a guest's cgroup2 where a runtime enabled it only
    down to the pod): the container has no limit of its own, its pod's still binds."""
    shutil.copytree(FIXTURES / "v2", tmp_path / "v2")
    leaf = tmp_path / "v2" / V2_POD.lstrip("/") / "runtime-leaf"
    leaf.mkdir()
    (leaf / "cgroup.procs").write_text("4242\n")
    cg = CgroupMemory(v1_root=str(tmp_path / "none"), v2_root=str(tmp_path / "v2"))
    found = cg.limits(f"{V2_POD}/runtime-leaf")
    assert [(g.path, g.limit_file, g.limit_bytes) for g in found] == [
        (V2_POD, "memory.high", 1100 * MIB), ("/kubepods.slice", "memory.max", 20 * GIB)]
    assert cg.limit(f"{V2_POD}/runtime-leaf", 2) is None
    with pytest.raises(KernelError, match="cannot read .*/gone/memory.max"):
        cg.limits(f"{V2_POD}/gone")  # a group that is not there is still an error, not "no limit"
