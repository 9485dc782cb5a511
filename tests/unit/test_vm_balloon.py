"""`vm balloon NAME [SIZE]` (issue 17): QMP balloon / query-balloon, checked sizes, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from heapballoon.errors import VMError
from heapballoon.vm import balloon

MIB = 1 << 20


@pytest.fixture
def fake_qemu(monkeypatch):
    state = {"actual": 1024 * MIB, "calls": []}

    def qmp_execute(sock, cmd, args=None, timeout_s=5.0):
        state["calls"].append((cmd, args))
        if cmd == "balloon":
            state["actual"] = args["value"]
            return {}
        return {"actual": state["actual"]}

    monkeypatch.setattr("heapballoon.vm.qmp.qmp_execute", qmp_execute)
    monkeypatch.setattr(balloon, "get_vm", lambda name: SimpleNamespace(qmp_socket="/x/qmp.sock", memory_bytes=1024 * MIB))
    return state


def test_balloon_sets_and_reads_the_guest_size(fake_qemu):
    b = balloon.set_balloon("web", 624 * MIB)
    assert (b.actual_bytes, b.memory_bytes) == (624 * MIB, 1024 * MIB)
    assert fake_qemu["calls"] == [("balloon", {"value": 624 * MIB}), ("query-balloon", None)]
    for bad in (2048 * MIB, 16 * MIB):
        with pytest.raises(VMError, match="out of range"):
            balloon.set_balloon("web", bad)


def test_balloon_cli_errors_are_one_line(tmp_path):
    env = {"HEAPBALLOON_RUN_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    for args, code in ((["nosuch", "600M"], 1), (["nosuch", "lots"], 2)):
        proc = subprocess.run([sys.executable, "-m", "heapballoon", "vm", "balloon", *args], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == code and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
