"""The one guest-RAM rule (vm/ramfile.py), the RAM layout read from QEMU and QEMU's argv (vm/launcher.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from heapballoon.errors import GuestRamError, VMError
from heapballoon.linux import memfd
from heapballoon.linux.procfs import ProcFS
from heapballoon.vm import launcher, ramfile
from heapballoon.vm.vmdir import VMPaths

DATA = Path(__file__).resolve().parent / "test_host_data"
MIB = 1 << 20
RAM = 300 * MIB + 4096   # a size no other memfd of this process has


@pytest.fixture
def memfds_here():
    fds = []

    def make(name: str, size: int) -> int:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size)   # sparse: costs no memory
        fds.append(fd)
        return fd

    yield make
    for fd in fds:
        os.close(fd)


def test_exactly_one_memfd_of_the_ram_size_is_guest_ram(memfds_here):
    fd = memfds_here("ram0", RAM)
    memfds_here("other", RAM - 4096)
    dup = os.dup(fd)  # the same file twice is still one memfd
    try:
        m = ramfile.find_guest_ram(os.getpid(), RAM)
    finally:
        os.close(dup)
    assert (m.name, m.size_bytes) == ("ram0", RAM)
    opened = memfd.open_memfd(m, writable=False)
    try:
        assert os.fstat(opened).st_ino == os.fstat(fd).st_ino
    finally:
        os.close(opened)


def test_no_memfd_of_the_ram_size_is_an_error_that_says_what_exists(memfds_here):
    memfds_here("small", 4096)
    with pytest.raises(GuestRamError, match=f"has no memfd of {RAM + 4096} bytes .*'small' 4096 bytes"):
        ramfile.find_guest_ram(os.getpid(), RAM + 4096)


def test_two_memfds_of_the_ram_size_are_refused_not_guessed(memfds_here):
    memfds_here("ram0", RAM)
    memfds_here("ram0", RAM)
    with pytest.raises(GuestRamError, match="has 2 memfds .* refusing to guess"):
        ramfile.find_guest_ram(os.getpid(), RAM)


def test_unreadable_process_is_a_guest_ram_error(tmp_path):
    with pytest.raises(GuestRamError, match="cannot list the open files of QEMU 99"):
        ramfile.find_guest_ram(99, RAM, ProcFS(str(tmp_path)))


def test_memfd_scan_reads_an_overridable_proc_root(tmp_path):
    fd_dir = tmp_path / "7" / "fd"
    fd_dir.mkdir(parents=True)
    os.symlink("/memfd:ram0 (deleted)", fd_dir / "3")   # closed between readlink and stat
    os.symlink("/etc/hostname", fd_dir / "4")           # not a memfd
    (fd_dir / "notanfd").mkdir()
    procfs = ProcFS(str(tmp_path))
    assert procfs.fds(7) == [3, 4]
    assert procfs.fd_target(7, 3) == "/memfd:ram0 (deleted)"
    assert memfd.memfds(7, procfs) == []


def test_gpa_to_ram_offset_uses_the_recorded_layout():
    layout = [{"gpa": 0, "size": 0xA0000, "offset": 0}, {"gpa": 0x100000, "size": 2 << 30, "offset": 0x100000},
              {"gpa": 4 << 30, "size": 1 << 30, "offset": 2 << 30}]
    assert ramfile.gpa_to_ram_offset(0x1000, layout) == 0x1000
    assert ramfile.gpa_to_ram_offset((4 << 30) + 5, layout) == (2 << 30) + 5
    with pytest.raises(VMError, match="not guest RAM"):
        ramfile.gpa_to_ram_offset(0xB0000, layout)
    with pytest.raises(VMError, match="not guest RAM"):
        ramfile.gpa_to_ram_offset(0x1000, [])


@pytest.mark.parametrize("name, memory_bytes, last", [
    ("mtree-q35-1G-f.txt", 1 << 30, (0x100000, (1 << 30) - 0x100000, 0x100000)),
    ("mtree-q35-5G-f.txt", 5 << 30, (4 << 30, 3 << 30, 2 << 30)),
])
def test_ram_layout_is_read_from_qemu(monkeypatch, name, memory_bytes, last):
    asked = []

    def fake_hmp(sock, command_line, timeout_s=5.0):
        asked.append((str(sock), command_line))
        return (DATA / name).read_text()

    monkeypatch.setattr("heapballoon.vm.qmp.hmp", fake_hmp)
    layout = launcher.read_ram_layout(Path("/x/qmp.sock"), memory_bytes)
    assert asked == [("/x/qmp.sock", "info mtree -f")]
    assert (layout[-1].gpa, layout[-1].size_bytes, layout[-1].offset) == last
    assert all(r.gpa + r.size_bytes <= 0xA0000 or r.gpa >= 0x100000 for r in layout)  # legacy window cut


def test_a_layout_that_does_not_fit_the_ram_is_a_vm_error(monkeypatch):
    monkeypatch.setattr("heapballoon.vm.qmp.hmp", lambda *a, **k: (DATA / "mtree-q35-5G-f.txt").read_text())
    with pytest.raises(VMError, match="cannot read the guest RAM layout from QEMU"):
        launcher.read_ram_layout(Path("/x/qmp.sock"), 1 << 30)


def test_launcher_has_no_hard_coded_layout():
    src = Path(launcher.__file__).read_text() + Path(ramfile.__file__).read_text()
    assert "0xB0000000" not in src and "0x80000000" not in src


def test_qemu_argv_names_the_vm_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HEAPBALLOON_QEMU", "qemu-system-x86_64")
    p = VMPaths.of(tmp_path, "web")
    argv = launcher.qemu_command(p, 1 << 30, 2, "pfn", "tcg", Path("/k"), Path("/i"), Path("/disk.img"))
    joined = " ".join(argv)
    for path in (p.console_log, p.channel_socket, p.exec_socket, p.qmp_socket, p.hostd_qmp_socket, p.pidfile,
                 p.qemu_log):
        assert str(path) in joined
    assert "memory-backend-memfd,id=ram0,size=1024M,share=on" in argv
    assert "mitigations=off" in argv[argv.index("-append") + 1]
    ksm = launcher.qemu_command(p, 1 << 30, 1, "ksm", "kvm", Path("/k"), Path("/i"))
    assert "memory-backend-ram,id=ram0,size=1024M,merge=on" in ksm and "-drive" not in ksm
    assert ksm[ksm.index("-cpu") + 1] == "host"
    assert "-netdev" not in argv and "-netdev" not in ksm  # no forwards: no network device at all
    fwd = launcher.qemu_command(p, 1 << 30, 1, "pfn", "tcg", Path("/k"), Path("/i"), forwards=((18080, 8080),))
    assert fwd[fwd.index("-netdev") + 1] == "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:18080-:8080"
    assert "virtio-net-pci,netdev=net0" in fwd
    assert "virtio-balloon-pci,id=balloon0,deflate-on-oom=on" in argv  # pfn: no free page reporting


def test_virtio_reclaim_is_private_ram_with_free_page_reporting(tmp_path, monkeypatch):
    monkeypatch.setenv("HEAPBALLOON_QEMU", "qemu-system-x86_64")
    argv = launcher.qemu_command(VMPaths.of(tmp_path, "stock"), 1 << 30, 1, "virtio", "tcg", Path("/k"), Path("/i"))
    assert "memory-backend-ram,id=ram0,size=1024M" in argv and not any("memfd" in a for a in argv)
    assert "virtio-balloon-pci,id=balloon0,deflate-on-oom=on,free-page-reporting=on" in argv


def test_copies_are_checked(tmp_path):
    f = tmp_path / "app.jar"
    f.write_text("x")
    assert launcher.check_copies([(str(f), "/opt/app.jar/")]) == [(str(f), "/opt/app.jar")]
    for bad, message in (([("/nonexistent/x", "/x")], "does not exist"), ([(str(f), "/")], "must be absolute"),
                         ([(str(f), "/a/../b")], "without '..'"), (["abc"], "invalid copy")):
        with pytest.raises(VMError, match=message):
            launcher.check_copies(bad)
