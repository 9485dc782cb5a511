"""The VM-directory contract (vm/vmdir.py) and the registry's view of it (vm/registry.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from heapballoon.errors import VMDirError, VMError
from heapballoon.linux.procfs import ProcFS
from heapballoon.vm import registry, vmdir
from heapballoon.vm.vmdir import RamRangeRecord, VMDir, VMHandles, VMPaths

MIB = 1 << 20


def record(tmp_path: Path, name: str = "web", **kw) -> VMDir:
    paths = VMPaths.of(tmp_path, name)
    paths.dir.mkdir(parents=True, exist_ok=True)
    fields = dict(pid=4242, memory_bytes=512 * MIB, cpus=2, reclaim="pfn", accel="tcg", cmd=("java", "-version"),
                  copies=(("/h/app.jar", "/opt/app.jar"),), image_key="k1", started_at_s=1.5,
                  ram_layout=(RamRangeRecord(0, 0xA0000, 0), RamRangeRecord(0x100000, 511 * MIB, 0x100000)),
                  qemu_argv=("qemu-system-x86_64", "-m", "512M"))
    fields.update(kw)
    return VMDir(paths=paths, **fields)


def test_paths_name_every_file_of_the_contract(tmp_path):
    p = VMPaths.of(tmp_path, "web")
    d = tmp_path / "vms" / "web"
    assert (p.dir, p.vm_json, p.pidfile, p.qmp_socket, p.hostd_qmp_socket, p.channel_socket, p.exec_socket,
            p.exec_lock, p.console_log, p.qemu_log) == (
        d, d / "vm.json", d / "qemu.pid", d / "qmp.sock", d / "qmp-hostd.sock", d / "channel.sock",
        d / "exec.sock", d / "exec.lock", d / "console.log", d / "qemu.log")
    with pytest.raises(VMError, match="invalid VM name"):
        VMPaths.of(tmp_path, "../etc")


def test_socket_paths_must_fit_a_unix_address(tmp_path):
    VMPaths.of(tmp_path, "a").check_socket_lengths()
    with pytest.raises(VMDirError, match="too long for unix sockets"):
        VMPaths.of(tmp_path / ("x" * 90), "a").check_socket_lengths()


def test_save_load_round_trip_and_json_keys(tmp_path):
    d = record(tmp_path)
    d.save()
    assert VMDir.load(d.paths) == d
    data = json.loads(d.paths.vm_json.read_text())
    # the keys hostd and earlier versions read stay the same
    assert {"name": "web", "pid": 4242, "memory_bytes": 512 * MIB, "reclaim": "pfn", "cpus": 2, "accel": "tcg",
            "started_at": 1.5}.items() <= data.items()
    assert data["ram_layout"][1] == {"gpa": 0x100000, "size": 511 * MIB, "offset": 0x100000}
    assert not (d.paths.dir / "vm.json.tmp").exists()


def test_vmdir_is_the_qemu_backend_of_vm_handles(tmp_path):
    d = record(tmp_path)
    assert isinstance(d, VMHandles)
    assert (d.name, d.pid, d.channel_socket, d.hostd_qmp_socket) == (
        "web", 4242, d.paths.channel_socket, d.paths.hostd_qmp_socket)


@pytest.mark.parametrize("change, message", [
    ({"memory_bytes": 16 * MIB}, "too small"),
    ({"memory_bytes": "1G"}, "memory_bytes must be an integer"),
    ({"cpus": 0}, "cpus"),
    ({"reclaim": "balloon"}, "reclaim"),
    ({"accel": "hvf"}, "accel"),
    ({"pid": -3}, "pid"),
    ({"pid": True}, "pid"),
    ({"cmd": "java -version"}, "cmd must be a list of strings"),
    ({"copies": [["only-one"]]}, "copies"),
    ({"ram_layout": [{"gpa": 0}]}, "size"),
    ({"started_at": "yesterday"}, "started_at"),
    ({"name": "other"}, "names VM 'other'"),
])
def test_invalid_vm_json_is_refused_with_the_reason(tmp_path, change, message):
    d = record(tmp_path)
    data = {**d.to_json(), **change}
    with pytest.raises(VMDirError, match=message):
        VMDir.from_json(d.paths, data)


def test_missing_or_broken_vm_json(tmp_path):
    p = VMPaths.of(tmp_path, "web")
    p.dir.mkdir(parents=True)
    with pytest.raises(VMDirError, match="cannot read"):
        VMDir.load(p)
    p.vm_json.write_text("{half")
    with pytest.raises(VMDirError, match="not JSON"):
        VMDir.load(p)
    p.vm_json.write_text("[]")
    with pytest.raises(VMDirError, match="not a JSON object"):
        VMDir.load(p)


def test_unknown_keys_are_ignored(tmp_path):
    d = record(tmp_path)
    assert VMDir.from_json(d.paths, {**d.to_json(), "future_field": 1}) == d


def test_scan_and_load_all(tmp_path):
    record(tmp_path, "b").save()
    record(tmp_path, "a").save()
    (tmp_path / "vms" / "Not-A-Name").mkdir()
    (tmp_path / "vms" / "c").mkdir()  # no vm.json yet
    assert [p.name for p in vmdir.scan(tmp_path)] == ["a", "b", "c"]
    got = list(vmdir.load_all(tmp_path))
    assert [x.name for x in got[:2]] == ["a", "b"] and isinstance(got[2], VMDirError)
    assert vmdir.scan(tmp_path / "nothing") == []


def test_run_dir_precedence(monkeypatch):
    monkeypatch.delenv("HEAPBALLOON_RUN_DIR", raising=False)
    assert vmdir.run_dir() == Path("/run/heapballoon")
    monkeypatch.setenv("HEAPBALLOON_RUN_DIR", "/tmp/x")
    assert vmdir.run_dir() == Path("/tmp/x")
    assert vmdir.run_dir("/tmp/cli") == Path("/tmp/cli")


# ---------------------------------------------------------------------------------------------
# registry: state from the directory and a (fixture) process table

def fake_proc(tmp_path: Path, pid: int, argv: list[str], state: str = "S") -> ProcFS:
    root = tmp_path / "proc"
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "stat").write_text(f"{pid} (qemu (x)) {state} 1 2 3\n")
    (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return ProcFS(str(root))


def test_qemu_alive_checks_state_program_and_directory(tmp_path):
    vm_dir = tmp_path / "vms" / "web"
    proc = fake_proc(tmp_path, 50, ["/usr/bin/qemu-system-x86_64", "-pidfile", f"{vm_dir}/qemu.pid"])
    assert registry.qemu_alive(50, vm_dir, proc)
    assert not registry.qemu_alive(50, tmp_path / "vms" / "other", proc)   # recycled pid, another VM
    assert not registry.qemu_alive(51, vm_dir, proc)                       # gone
    assert not registry.qemu_alive(0, vm_dir, proc)
    proc = fake_proc(tmp_path, 52, ["/usr/bin/python3", str(vm_dir)])
    assert not registry.qemu_alive(52, vm_dir, proc)                       # not QEMU
    proc = fake_proc(tmp_path, 53, ["qemu-system-x86_64", str(vm_dir)], state="Z")
    assert not registry.qemu_alive(53, vm_dir, proc)                       # zombie


def test_states_running_dead_stopped_starting(tmp_path):
    d = record(tmp_path, pid=50)
    d.save()
    proc = fake_proc(tmp_path, 50, ["qemu-system-x86_64", f"{d.dir}/console.log"])
    info = registry.load_info(d.paths, proc)
    assert (info.state, info.pid, info.memory_bytes, info.state_dir) == ("running", 50, 512 * MIB, str(d.dir))
    assert info.ram_layout[0] == {"gpa": 0, "size": 0xA0000, "offset": 0}
    empty = ProcFS(str(tmp_path / "noproc"))
    d.paths.pidfile.write_text("50\n")
    os.utime(d.dir, (0, 0))
    assert registry.load_info(d.paths, empty).state == "dead"
    d.paths.console_log.write_bytes(b"...\nreboot: Power down\n")
    assert registry.load_info(d.paths, empty).state == "stopped"
    fresh = VMPaths.of(tmp_path, "fresh")
    fresh.dir.mkdir()
    assert registry.load_info(fresh, empty).state == "starting"


def test_list_and_get_use_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HEAPBALLOON_RUN_DIR", str(tmp_path))
    record(tmp_path, "a").save()
    assert [v.name for v in registry.list_vms(ProcFS(str(tmp_path / "noproc")))] == ["a"]
    with pytest.raises(VMError, match="no VM named 'zz'"):
        registry.get_vm("zz")
