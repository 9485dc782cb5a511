"""linux/ adapters added for the boundary: libc loader, ProcFS state/fds/boot_id, virtio ports."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from heapballoon.errors import KernelError
from heapballoon.linux import libc
from heapballoon.linux.procfs import ProcessGone, ProcFS
from heapballoon.linux.virtio import VirtioPorts


def test_libc_is_loaded_once_and_functions_are_declared_once():
    a = libc.function("getpid", (), libc.c_int)
    b = libc.function("getpid", (), libc.c_int)
    assert a is b and libc.libc() is libc.libc()
    assert a() == os.getpid()


def test_libc_check_turns_errno_into_oserror():
    close = libc.function("close", (libc.c_int,))
    with pytest.raises(OSError) as info:
        libc.check(close(-1), "close(-1)")
    assert info.value.errno == errno.EBADF and "close(-1)" in str(info.value)
    assert libc.check(0, "ok") == 0


def test_state_and_alive_from_a_fixture_tree(tmp_path):
    (tmp_path / "10").mkdir()
    (tmp_path / "10" / "stat").write_text("10 (a) b) c) Z 1 2\n")
    (tmp_path / "11").mkdir()
    (tmp_path / "11" / "stat").write_text("11 (sleepy) S 1 2\n")
    procfs = ProcFS(str(tmp_path))
    assert (procfs.state(10), procfs.state(11)) == ("Z", "S")
    assert (procfs.alive(10), procfs.alive(11), procfs.alive(12), procfs.alive(0)) == (False, True, False, False)
    with pytest.raises(ProcessGone):
        procfs.state(12)


def test_open_files_of_this_process():
    procfs = ProcFS()
    fd = os.memfd_create("hb-adapter-test")
    try:
        assert fd in procfs.fds("self")
        assert procfs.fd_target("self", fd).startswith("/memfd:hb-adapter-test")
        again = procfs.open_fd("self", fd, os.O_RDONLY)
        try:
            assert os.fstat(again).st_ino == procfs.fd_stat("self", fd).st_ino
        finally:
            os.close(again)
    finally:
        os.close(fd)
    with pytest.raises(KernelError):
        procfs.fd_target("self", 1 << 20)


def test_boot_id(tmp_path):
    (tmp_path / "sys" / "kernel" / "random").mkdir(parents=True)
    (tmp_path / "sys" / "kernel" / "random" / "boot_id").write_text("abc-123\n")
    assert ProcFS(str(tmp_path)).boot_id() == "abc-123"
    assert len(ProcFS().boot_id()) == 36


def test_virtio_ports_by_name_and_device_nodes(tmp_path):
    sysroot, dev = tmp_path / "sys", tmp_path / "dev"
    for entry, name, devno in (("vport0p1", "org.heapballoon.0", "242:1"), ("vport0p2", "org.heapballoon.exec", "242:2")):
        (sysroot / entry).mkdir(parents=True)
        (sysroot / entry / "name").write_text(name + "\n")
        (sysroot / entry / "dev").write_text(devno + "\n")
    dev.mkdir()
    ports = VirtioPorts(str(sysroot), str(dev))
    assert ports.names() == {"org.heapballoon.0": "vport0p1", "org.heapballoon.exec": "vport0p2"}
    assert ports.find("org.heapballoon.exec") == str(dev / "vport0p2")
    (dev / "vport0p1").write_text("")   # exists: left alone
    assert ports.ensure_node("vport0p1") == str(dev / "vport0p1")
    if os.geteuid() == 0:
        path = ports.ensure_node("vport0p2")
        st = os.stat(path)
        assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (242, 2)
    (sysroot / "vport0p3").mkdir()
    (sysroot / "vport0p3" / "dev").write_text("garbage")
    with pytest.raises(KernelError, match="cannot create the device node"):
        ports.ensure_node("vport0p3")
    assert VirtioPorts(str(tmp_path / "none")).names() == {}


def test_psi_and_memory_cgroup_from_fixture_trees(tmp_path):
    from heapballoon.linux.cgroupmem import CgroupMemory

    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "memory").write_text("some avg10=2.50 avg60=1.00 avg300=0.10 total=77\n"
                                                 "full avg10=0.50 avg60=0.00 avg300=0.00 total=5\n")
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text("7:cpu,cpuacct:/x\n4:memory:/jobs/a\n0::/\n")
    proc = ProcFS(str(tmp_path))
    assert proc.pressure("memory")["some"]["avg10"] == 2.5 and proc.pressure()["full"]["total"] == 5
    assert proc.cgroup_path(42) == "/jobs/a" and proc.cgroup_path(42, "blkio") is None
    (tmp_path / "pressure" / "memory").write_text("some avg10=lots\n")
    with pytest.raises(KernelError):
        proc.pressure()
    group = tmp_path / "cg" / "jobs" / "a"
    group.mkdir(parents=True)
    (group / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (group / "memory.usage_in_bytes").write_text("1048576\n")
    cg = CgroupMemory(str(tmp_path / "cg"), str(tmp_path / "v2"))
    assert cg.limit("/jobs/a", 1) is None
    (group / "memory.limit_in_bytes").write_text("2147483648\n")
    assert (cg.limit("/jobs/a", 1).limit_bytes, cg.limit("/jobs/a", 1).usage_bytes) == (2 << 30, 1 << 20)
    with pytest.raises(KernelError, match="cannot read"):
        cg.limit("/nope", 1)
