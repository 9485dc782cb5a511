"""ProcFS parsers against fixture text in tests/fixtures/proc (no real /proc involved)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from heapballoon.errors import KernelError
from heapballoon.linux.procfs import Mapping, ProcessGone, ProcFS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "proc"


@pytest.fixture
def procfs() -> ProcFS:
    return ProcFS(str(FIXTURES))


def test_status_parses_tab_separated_fields(procfs):
    st = procfs.status(4242)
    assert st["Name"] == "java"
    assert st["NSpid"] == "4242\t1"
    assert st["VmRSS"] == "37428 kB"
    assert st["Groups"] == ""


def test_rss_bytes_is_vmrss_in_bytes(procfs):
    assert procfs.rss_bytes(4242) == 37428 * 1024
    assert procfs.rss_bytes(777) == 512 * 1024
    assert procfs.rss_bytes(5151) == 0  # no VmRSS line (kernel threads)


def test_cmdline_splits_on_nul_and_keeps_spaces(procfs):
    assert procfs.cmdline(4242) == ["java", "-Xmx1g", "-cp", "/app/my app.jar", "Main"]
    assert procfs.cmdline(777) == ["sleep", "1000"]


def test_maps_parses_ranges_perms_and_paths(procfs):
    maps = procfs.maps(4242)
    assert len(maps) == 9
    assert maps[0] == Mapping(0x55B6EEC29000, 0x55B6EEC2A000, "r--p", 0, "/usr/lib/jvm/java-17-openjdk-amd64/bin/java")
    anon = maps[3]
    assert (anon.start, anon.end, anon.path, anon.size_bytes) == (0xC0000000, 0x100000000, "", 1 << 30)
    assert maps[5].offset == 0x251000
    assert maps[6].path == "/tmp/hsperfdata_app/with space in name"
    assert maps[-1].start == 0xFFFFFFFFFF600000


def test_mapping_is_frozen(procfs):
    with pytest.raises(AttributeError):
        procfs.maps(4242)[0].start = 0  # type: ignore[misc]


def test_is_jvm(procfs):
    assert procfs.is_jvm(4242)
    assert procfs.is_jvm(5151)  # libjvm.so (deleted) after a package upgrade
    assert not procfs.is_jvm(777)


def test_nspid_innermost_last_and_old_kernel_fallback(procfs):
    assert procfs.nspid(4242) == [4242, 1]
    assert procfs.nspid(5151) == [5151]
    assert procfs.nspid(777) == [777]  # no NSpid line (kernel < 4.1): fall back to Pid


def test_effective_ids_and_signal_mask(procfs):
    assert procfs.euid_egid(4242) == (1001, 2001)
    assert procfs.catches_signal(4242, 3)  # SIGQUIT
    assert not procfs.catches_signal(4242, 2)  # SIGINT
    assert not procfs.catches_signal(777, 3)


def test_starttime_survives_parentheses_in_comm(procfs):
    assert procfs.starttime(4242) == 56901
    assert procfs.starttime(777) == 123


def test_exists_and_uptime(procfs):
    assert procfs.exists(4242)
    assert not procfs.exists(99999)
    assert procfs.uptime_s() == pytest.approx(569.83)


def test_missing_process_raises_process_gone(procfs):
    with pytest.raises(ProcessGone, match="no process with PID 99999"):
        procfs.status(99999)
    with pytest.raises(ProcessGone):
        procfs.open_pagemap(99999)
    assert issubclass(ProcessGone, KernelError)


def test_missing_system_file_is_kernel_error_not_process_gone(tmp_path):
    with pytest.raises(KernelError) as info:
        ProcFS(str(tmp_path)).uptime_s()
    assert not isinstance(info.value, ProcessGone)
    assert "\n" not in str(info.value)


def test_unreadable_pagemap_is_one_line_kernel_error(tmp_path, monkeypatch):
    (tmp_path / "12").mkdir()
    (tmp_path / "12" / "pagemap").write_bytes(b"")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(KernelError, match=r"^cannot open .*12/pagemap: permission denied") as info:
        ProcFS(str(tmp_path)).open_pagemap(12)
    assert not isinstance(info.value, ProcessGone)


def test_path_joins_under_root(procfs):
    assert procfs.path(4242, "root", "tmp") == os.path.join(str(FIXTURES), "4242", "root", "tmp")


def test_real_proc_self_smoke():
    real = ProcFS()
    pid = os.getpid()
    assert real.exists(pid)
    assert real.rss_bytes(pid) > 1 << 20
    assert real.nspid(pid)[-1] >= 1
    assert real.starttime(pid) == real.starttime("self")
    assert not real.is_jvm(pid)
    assert any(m.path == "[stack]" for m in real.maps("self"))


def test_fixture_tree_copy_is_independent(tmp_path):
    # ProcFS only ever reads below its root: a copied tree behaves identically.
    shutil.copytree(FIXTURES, tmp_path / "proc")
    assert ProcFS(str(tmp_path / "proc")).cmdline(4242)[0] == "java"
