"""Bad input at the command line: one clear line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess

import pytest

from hbtest import run_cli


def one_line_error(proc, needle: str, code: int | None = None):
    assert proc.returncode != 0, proc.stdout
    if code is not None:
        assert proc.returncode == code
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]


def test_daemon_not_running(tmp_path):
    sock = str(tmp_path / "none.sock")
    one_line_error(run_cli("status", sock=sock), "no daemon is listening")
    one_line_error(run_cli("target", "all", "1G", sock=sock), "no daemon is listening")


@pytest.mark.parametrize("size", ["lots", "12Q", "1e3", "1.5.5G"])
def test_bad_sizes(daemons, size):
    d = daemons.start()
    one_line_error(run_cli("target", "all", size, sock=d.sock), "invalid size", code=2)


def test_negative_size_is_one_line(daemons):
    d = daemons.start()
    one_line_error(run_cli("target", "all", "-5M", sock=d.sock), "-5M", code=2)


def test_unknown_and_bad_pids(daemons):
    d = daemons.start()
    one_line_error(run_cli("target", "4000000", "1G", sock=d.sock), "no JVM with PID 4000000")
    one_line_error(run_cli("target", "notapid", "1G", sock=d.sock), "invalid PID", code=2)


def test_attach_to_non_jvm_and_missing_pid(tmp_path):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        one_line_error(run_cli("attach", sleeper.pid, sock=str(tmp_path / "x.sock")), "not a Java virtual machine")
    finally:
        sleeper.kill()
        sleeper.wait()
    one_line_error(run_cli("attach", "3999999", sock=str(tmp_path / "x.sock")), "3999999")


def test_run_needs_a_command_and_a_real_one(tmp_path):
    one_line_error(run_cli("run", "--", sock=str(tmp_path / "x.sock")), "needs a command", code=2)
    one_line_error(run_cli("run", "--", "no-such-program-xyz", sock=str(tmp_path / "x.sock")), "command not found")


def test_metrics_bad_listen_address(tmp_path):
    one_line_error(run_cli("daemon", "--socket", str(tmp_path / "m.sock"), "--metrics", "nonsense"), "invalid --metrics")


def test_status_human_table(daemons):
    d = daemons.start()
    out = run_cli("status", sock=d.sock, check=True).stdout
    assert "JVMs (0)" in out
