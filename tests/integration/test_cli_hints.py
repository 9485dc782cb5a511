"""Every hint names the daemon that is missing: the driver for JVMs, hostd for VMs."""

from __future__ import annotations

from hbtest import run_cli
from test_cli import one_line_error


def test_vm_commands_without_hostd_name_hostd(tmp_path):
    host = str(tmp_path / "hostd.sock")
    for args in (("target", "--vm", "web", "400M"), ("status", "--vms")):
        proc = run_cli(*args, "--host-socket", host, sock=str(tmp_path / "driver.sock"))
        one_line_error(proc, "`heapballoon hostd`")
        assert "heapballoon daemon" not in proc.stderr and host in proc.stderr


def test_jvm_commands_without_a_driver_name_the_driver(tmp_path, monkeypatch):
    monkeypatch.setenv("HEAPBALLOON_HOST_SOCKET", str(tmp_path / "no-hostd.sock"))
    sock = str(tmp_path / "driver.sock")
    for args in (("status",), ("target", "all", "1G"), ("status", "--watch")):
        proc = run_cli(*args, sock=sock)
        one_line_error(proc, "`heapballoon daemon`")
        assert "hostd" not in proc.stderr


def test_unknown_pid_and_vm_say_where_to_look(daemons, tmp_path, monkeypatch):
    monkeypatch.setenv("HEAPBALLOON_RUN_DIR", str(tmp_path / "run"))
    d = daemons.start()
    one_line_error(run_cli("target", "4000000", "1G", sock=d.sock), "`heapballoon status` lists them")
    proc = run_cli("vm", "stop", "nosuch", sock=d.sock)
    one_line_error(proc, "`heapballoon vm list`")


def test_interval_needs_watch_and_a_sane_value(tmp_path):
    one_line_error(run_cli("status", "--interval-s", "2", sock=str(tmp_path / "x.sock")), "goes with --watch", code=2)
    one_line_error(run_cli("status", "--watch", "--interval-s", "0", sock=str(tmp_path / "x.sock")),
                   "invalid interval", code=2)
