"""An installed package's prebuilt agent, the guest's systemd files and the host-side gate
(the wheel itself is built and installed in tests/integration/test_wheel.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from heapballoon import cli
from heapballoon.agent import build
from heapballoon.errors import UsageError
from heapballoon.guest import systemd


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """build.py as it sits in an installed package: heapballoon/_agent/ next to it, no sources."""
    package = tmp_path / "site-packages" / "heapballoon"
    (package / "_agent").mkdir(parents=True)
    (package / "_agent" / build.AGENT_JAR).write_bytes(b"jar")
    (package / "_agent" / build.NATIVE_LIB).write_bytes(b"\x7fELF")
    monkeypatch.setattr(build, "__file__", str(package / "agent" / "build.py"))
    monkeypatch.delenv("HEAPBALLOON_AGENT_SRC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-jdk-here"))  # no javac, no gcc
    monkeypatch.delenv("JAVA_HOME", raising=False)
    return package / "_agent"


def test_the_installed_package_uses_its_prebuilt_agent(installed, monkeypatch):
    monkeypatch.setattr(build.platform, "machine", lambda: "x86_64")
    assert build.agent_jar() == installed / build.AGENT_JAR
    assert build.native_lib() == installed / build.NATIVE_LIB
    arg = build.javaagent_arg("/run/hb.sock", "orders")
    assert arg == (f"-javaagent:{installed / build.AGENT_JAR}=socket=/run/hb.sock,name=orders,"
                   f"native={installed / build.NATIVE_LIB},interval_ms=1000")


def test_the_x86_64_library_is_not_used_on_another_machine(installed, monkeypatch, caplog):
    monkeypatch.setattr(build.platform, "machine", lambda: "aarch64")
    assert build.native_lib() is None  # no sources to build one from: unsafe addresses
    assert "x86-64" in caplog.text
    assert build.agent_jar() == installed / build.AGENT_JAR  # the jar is for every machine


def test_agent_src_means_build_from_source(installed, tmp_path, monkeypatch):
    monkeypatch.setenv("HEAPBALLOON_AGENT_SRC", str(tmp_path / "none"))
    with pytest.raises(build.AgentBuildError, match="sources not found"):
        build.agent_jar()


def test_guest_unit_runs_this_interpreters_guest_driver():
    text = systemd.unit_text("/run/heapballoon/heapballoon.sock")
    exec_lines = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_lines == [f"ExecStart={sys.executable} -m heapballoon guest-driver"
                          " --socket /run/heapballoon/heapballoon.sock"]
    assert "[Install]" in text and "Restart=always" in text


def test_stock_guest_unit_runs_direct_and_waits_for_no_channel():
    text = systemd.unit_text("/run/heapballoon/heapballoon.sock", stock=True)
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("ExecStart=")] == [
        f"ExecStart={sys.executable} -m heapballoon guest-driver --socket /run/heapballoon/heapballoon.sock"
        " --reclaim direct --report-order 0"]
    assert not [line for line in lines if line.startswith(("Wants=", "After=")) and "virtio" in line]
    assert "After=systemd-modules-load.service" in lines
    assert "dev-virtio" in systemd.unit_text("/run/heapballoon/heapballoon.sock")  # the hostd unit still waits


def test_drop_in_carries_the_javaagent_option():
    text = systemd.drop_in_text("orders", "-javaagent:/x/a.jar=socket=/run/hb.sock,name=orders")
    assert 'Environment="JAVA_TOOL_OPTIONS=-javaagent:/x/a.jar=socket=/run/hb.sock,name=orders"' in text.splitlines()
    assert "YOUR-APP" not in text and "After=heapballoon-guest.service" in text


def test_guest_unit_drop_in_needs_a_name(capsys):
    assert cli.main(["guest-unit", "--drop-in"]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--name" in err


def test_a_host_command_on_an_old_python_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setattr(cli, "HOST_MIN_PYTHON", (99, 0))
    assert cli.main(["hostd", "--help"]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs Python 99.0+" in err and "guest-driver" in err


def test_a_host_command_without_the_host_extras_says_how_to_get_them(monkeypatch, capsys):
    monkeypatch.setattr(cli, "HOST_EXTRAS", ("qemu.qmp", "no_such_module_hb"))
    assert cli.main(["vm", "list"]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert "no_such_module_hb" in err and "pip install 'heapballoon[host]'" in err and err.count("\n") == 1


def test_guest_driver_is_passed_through_whole(monkeypatch):
    seen = []
    monkeypatch.setitem(cli.PASSTHROUGH, "guest-driver", ("help", lambda argv: seen.append(argv) or 0))
    assert cli.main(["guest-driver", "--socket", "/run/x.sock", "--socket-mode", "660"]) == 0
    assert seen == [["--socket", "/run/x.sock", "--socket-mode", "660"]]


def test_systemd_accepts_the_unit_and_the_drop_in(tmp_path):
    """systemd's own verifier on both files (unit-level: it loads them, it starts nothing)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit files are not verified")
    (tmp_path / "heapballoon-guest.service").write_text(systemd.unit_text("/run/heapballoon/heapballoon.sock"))
    (tmp_path / "orders.service").write_text("[Service]\nExecStart=/bin/true\n")
    (tmp_path / "orders.service.d").mkdir()
    (tmp_path / "orders.service.d" / "heapballoon.conf").write_text(
        systemd.drop_in_text("orders", "-javaagent:/x/a.jar=socket=/run/hb.sock,name=orders"))
    for unit in ("heapballoon-guest.service", "orders.service"):
        proc = subprocess.run([analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True, timeout=60)
        ours = [line for line in proc.stderr.splitlines() if str(tmp_path) in line or unit in line]
        assert proc.returncode == 0 and ours == [], proc.stderr  # a drop-in's syntax error names its file
