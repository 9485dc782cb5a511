"""`vm exec`'s wait for the guest's reply (vm/execclient.py), against a stand-in exec socket that
takes the request and never answers (a guest out of memory). The VM's record is a stand-in;
the socket, the lock file and the console file are real."""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

import pytest

import heapballoon.vm.execclient as execclient
from heapballoon.errors import VMError
from heapballoon.vm.registry import READY_MARKER


@pytest.fixture
def silent_guest(tmp_path, monkeypatch):
    """A VM record whose exec socket accepts and reads, and never replies; returns its console."""
    sock_path, console = tmp_path / "exec.sock", tmp_path / "console.log"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(4)
    conns = []
    threading.Thread(target=lambda: conns.append(server.accept()[0]), daemon=True).start()
    info = SimpleNamespace(state="running", state_dir=str(tmp_path), pid=1, exec_socket=sock_path,
                           console_log=console, paths=SimpleNamespace(exec_lock=str(tmp_path / "exec.lock")))
    monkeypatch.setattr(execclient, "get_vm", lambda name: info)
    monkeypatch.setattr(execclient, "qemu_alive", lambda pid, vm_dir: True)
    monkeypatch.setattr(execclient, "BOOTED_REPLY_GRACE_S", 0.3)
    monkeypatch.setattr(execclient, "BOOTING_SLACK_S", 0.0)
    yield console
    server.close()
    for c in conns:
        c.close()


@pytest.mark.timeout(60)  # the old budget (timeout + the boot allowance) would wait an hour here
def test_a_booted_guest_that_does_not_answer_gets_the_grace_not_the_boot_allowance(silent_guest):
    silent_guest.write_text(f"[    1.0] init\n{READY_MARKER}\n{{\"checks\": 3}}\n")
    with pytest.raises(VMError) as err:
        execclient.vm_exec("g1", ["true"], timeout_s=0.2, ready_timeout_s=3600)
    assert str(err.value) == ("vm exec g1: no reply within 0s (the guest had booted: its supervisor did not "
                              "answer; is the guest out of memory?)")


@pytest.mark.timeout(60)
def test_a_booting_guest_gets_the_boot_allowance(silent_guest):
    silent_guest.write_text("[    1.0] still booting\n")
    with pytest.raises(VMError) as err:
        execclient.vm_exec("g1", ["true"], timeout_s=0.2, ready_timeout_s=0.5)
    assert str(err.value) == "vm exec g1: no reply within 1s (the guest had not said it was ready: still booting?)"


@pytest.mark.parametrize("chunk_bytes", [1, 5, 16, 1 << 16])
def test_the_ready_marker_is_found_across_chunk_boundaries(tmp_path, chunk_bytes):
    from heapballoon.vm.registry import console_has

    info = SimpleNamespace(console_log=tmp_path / "console.log")
    assert not console_has(info, chunk_bytes=chunk_bytes)  # no console yet
    info.console_log.write_text("[    1.0] booting\n" + "x" * 37 + READY_MARKER + "\n" + "{}\n" * 1000)
    assert console_has(info, chunk_bytes=chunk_bytes)
    info.console_log.write_text("[    1.0] booting\n" + READY_MARKER[:-1] + "\n")
    assert not console_has(info, chunk_bytes=chunk_bytes)
