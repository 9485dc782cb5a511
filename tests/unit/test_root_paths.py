"""Root's own files and sockets (issue 14 row 17): ``transport.listen``, the driver's state file,
``vm.json`` and the run dir, each against a planted symlink or a directory another user can
write. Races are simulated by planting the symlink at the moment the old code followed it.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys

import pytest

from heapballoon import transport
from heapballoon.driver.daemon import Driver
from heapballoon.errors import HeapballoonError, VMDirError
from heapballoon.linux.safefs import UnsafePath
from heapballoon.vm import vmdir
from heapballoon.vm.vmdir import VMDir, VMPaths

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the checks are for root processes")
MIB = 1 << 20


@pytest.fixture
def secret(tmp_path):
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    f = vault / "secret"
    f.write_text("root only\n")
    f.chmod(0o600)
    return f


def untouched(f) -> bool:
    st = f.stat()
    return stat.S_IMODE(st.st_mode) == 0o600 and f.read_text() == "root only\n"


async def _noop(reader, writer):
    writer.close()


# ------------------------------------------------------------------ transport.listen

def test_listen_never_chmods_through_a_symlink_planted_after_bind(tmp_path, secret, monkeypatch):
    """The old listen() bound, then chmodded the path: a symlink swapped in between got the mode."""
    path = tmp_path / "run" / "hb.sock"
    real = asyncio.start_unix_server

    async def bind_then_swap(*args, **kwargs):
        server = await real(*args, **kwargs)
        os.unlink(path)
        os.symlink(secret, path)  # the race's winner, planted right after bind
        return server

    monkeypatch.setattr(asyncio, "start_unix_server", bind_then_swap)

    async def go():
        server = await transport.listen(str(path), _noop, 0o666)
        server.close()

    asyncio.run(go())
    assert untouched(secret)


def test_listen_socket_mode_is_exact_and_reachable(tmp_path):
    path = tmp_path / "hb.sock"

    async def go():
        server = await transport.listen(str(path), _noop, 0o660)
        try:
            assert stat.S_IMODE(path.lstat().st_mode) == 0o660
            _r, w = await asyncio.open_unix_connection(str(path))
            w.close()
        finally:
            server.close()

    asyncio.run(go())


@as_root
def test_listen_as_root_refuses_a_socket_dir_others_can_write(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o1777)  # like /tmp: fine above a socket, not as its directory

    async def go():
        server = await transport.listen(str(d / "hb.sock"), _noop)
        server.close()

    with pytest.raises(UnsafePath, match="writable by group or others") as info:
        asyncio.run(go())
    assert "\n" not in str(info.value)
    assert not (d / "hb.sock").exists()


@as_root
def test_daemon_cli_says_why_in_one_line(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    out = subprocess.run([sys.executable, "-m", "heapballoon", "daemon", "--socket", str(d / "hb.sock")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "writable by group or others" in out.stderr, out.stderr


# ------------------------------------------------------------------ the driver's state file

def test_driver_state_tmp_symlink_is_not_followed(tmp_path, secret):
    driver = Driver(str(tmp_path / "hb.sock"), ksm_mode="off")
    os.symlink(secret, tmp_path / "hb.sock.state.json.tmp")
    driver.book.node_target_bytes = 512 * MIB
    driver.save_state()
    assert untouched(secret)
    assert json.loads((tmp_path / "hb.sock.state.json").read_text())["node_target_bytes"] == 512 * MIB


def test_driver_state_file_that_is_a_symlink_is_not_read(tmp_path, caplog):
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"node_target_bytes": 123}))
    os.symlink(target, tmp_path / "hb.sock.state.json")
    driver = Driver(str(tmp_path / "hb.sock"), ksm_mode="off")
    driver.book.load()
    assert driver.book.node_target_bytes is None
    assert "symlink" in caplog.text


@as_root
def test_driver_as_root_refuses_to_start_in_a_dir_others_can_write(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    driver = Driver(str(d / "hb.sock"), ksm_mode="off", interval_s=0.05)

    async def go():
        await asyncio.wait_for(driver.run(), 5)

    with pytest.raises(UnsafePath, match="writable by group or others"):
        asyncio.run(go())
    assert sorted(p.name for p in d.iterdir()) == []  # nothing read or written there


# ------------------------------------------------------------------ vm.json and the run dir

def test_vm_json_tmp_symlink_is_not_followed(tmp_path, secret):
    paths = VMPaths.of(tmp_path, "web")
    paths.dir.mkdir(parents=True, mode=0o700)
    os.symlink(secret, paths.dir / "vm.json.tmp")
    rec = VMDir(paths=paths, pid=1, memory_bytes=512 * MIB, cpus=1, reclaim="pfn", accel="tcg", cmd=(),
                copies=(), image_key="", started_at_s=0.0, ram_layout=(), qemu_argv=())
    rec.save()
    assert untouched(secret)
    assert VMDir.load(paths).pid == 1


@as_root
@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_run_dir_as_root_refuses_one_others_can_write(tmp_path, monkeypatch, mode):
    d = tmp_path / "run"
    d.mkdir()
    d.chmod(mode)
    monkeypatch.setenv("HEAPBALLOON_RUN_DIR", str(d))
    with pytest.raises(VMDirError, match="^run dir: .* writable by group or others") as info:
        vmdir.run_dir()
    assert isinstance(info.value, HeapballoonError) and "\n" not in str(info.value)


@as_root
def test_run_dir_as_root_refuses_one_of_another_user_and_accepts_a_missing_one_in_roots(tmp_path, monkeypatch):
    d = tmp_path / "run"
    d.mkdir(mode=0o755)
    os.chown(d, 65534, 65534)
    monkeypatch.setenv("HEAPBALLOON_RUN_DIR", str(d))
    with pytest.raises(VMDirError, match="owned by uid 65534"):
        vmdir.run_dir()
    monkeypatch.setenv("HEAPBALLOON_RUN_DIR", str(tmp_path / "later"))
    assert vmdir.run_dir() == tmp_path / "later"  # not made here: whoever starts a VM makes it


def test_hostd_state_tmp_symlink_is_not_followed_and_a_symlinked_state_is_not_read(tmp_path, secret, caplog):
    from heapballoon.host.hostd import STATE_FILE, HostDaemon

    d = HostDaemon(str(tmp_path / "hostd.sock"), str(tmp_path))
    os.symlink(secret, tmp_path / (STATE_FILE + ".tmp"))
    d.targets = {"vm1": 256 * MIB}
    d.save_state()
    assert untouched(secret)
    assert json.loads((tmp_path / STATE_FILE).read_text())["targets"] == {"vm1": 256 * MIB}
    (tmp_path / STATE_FILE).unlink()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"targets": {"vm2": 1}}))
    os.symlink(elsewhere, tmp_path / STATE_FILE)
    d.load_state()
    assert d.targets == {} and "symlink" in caplog.text


def test_ksm_saved_settings_tmp_symlink_is_not_followed(tmp_path, secret):
    from heapballoon.driver.ksmctl import KsmController

    class FakeKSM:
        def available(self):
            return True

        def writable(self):
            return True

        def snapshot(self, knobs):
            return {k: 0 for k in knobs}

        def write(self, knob, value):
            pass

    saved = tmp_path / "ksm.saved.json"
    os.symlink(secret, str(saved) + ".tmp")
    KsmController(FakeKSM(), "auto", str(saved)).setup()
    assert untouched(secret) and json.loads(saved.read_text())
