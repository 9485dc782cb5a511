"""`heapballoon status --watch` against a real daemon: it redraws until Ctrl-C (exit 0, no
traceback) and ends with one line when the daemon dies."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading

import pytest

from hbtest import PY, cli_env, wait_for

# serial: twice (CI 2026-12-04 and a helper's run the same day), both tests of this file timed out
# waiting 10 s for `status --watch` to exit after SIGINT when run two at a time (-n 2), one after
# the other on the same worker; alone and serially they pass. The cause is not known yet: the child
# now starts with the signal state a shell gives it, and a timeout reports the child's state.
pytestmark = pytest.mark.serial


def _as_from_a_shell() -> None:
    """In the child, before exec: no blocked signals and SIGINT at its default, as an
    interactive shell starts a command (a blocked or ignored SIGINT is inherited across exec)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """Ctrl-C, then the exit code; on a timeout the child's kernel-side state is in the error."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                state = [line.strip() for line in f if line.startswith(("State", "SigQ", "SigPnd", "ShdPnd",
                                                                       "SigBlk", "SigIgn", "SigCgt"))]
            with open(f"/proc/{proc.pid}/wchan") as f:
                state.append(f"wchan: {f.read()}")
        except OSError as err:
            state = [f"/proc/{proc.pid}: {err}"]
        raise AssertionError(f"status --watch still running {timeout_s:g} s after SIGINT: {state}") from None


def _watch(sock: str, *extra) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([PY, "-m", "heapballoon", "status", "--watch", "--interval-s", "0.2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(sock),
                            preexec_fn=_as_from_a_shell)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines


def test_watch_redraws_until_ctrl_c(daemons):
    d = daemons.start()
    proc, lines = _watch(d.sock)
    try:
        wait_for(lambda: sum("JVMs (0)" in line for line in lines) >= 3, 20, what="three frames")
        assert _interrupt(proc) == 0
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_watch_json_and_a_dying_daemon(daemons):
    d = daemons.start()
    proc, lines = _watch(d.sock, "--json")
    try:
        wait_for(lambda: len(lines) >= 2, 20, what="two JSON frames")
        assert json.loads(lines[0])["jvms"] == []
        daemons.stop(d)
        assert proc.wait(10) == 1
    finally:
        proc.kill()
    err = [line for line in proc.stderr.read().splitlines() if line.strip()]
    assert len(err) == 1 and "stopped watching" in err[0], err


def test_on_a_terminal_it_redraws_in_place_and_leaves_the_last_frame(daemons):
    import fcntl
    import os
    import pty
    import struct
    import termios

    d = daemons.start()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in cli_env(d.sock).items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm"
    proc = subprocess.Popen([PY, "-m", "heapballoon", "status", "--watch", "--interval-s", "0.2"],
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env, preexec_fn=_as_from_a_shell)
    os.close(slave)
    out = b""

    def read_some() -> bytes:
        nonlocal out
        out += os.read(master, 65536)
        return out

    try:
        wait_for(lambda: read_some().count(b"JVMs (0)") >= 3, 20, what="three frames on the terminal")
        assert b"\x1b[?1049h" in out  # the alternate screen: redrawn in place, like top
        assert _interrupt(proc) == 0
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while chunk := os.read(master, 65536):
                out += chunk
    finally:
        proc.kill()
        os.close(master)
    assert b"\x1b[?1049l" in out  # the screen is given back, and the last frame printed after it
    assert b"JVMs (0)" in out.rsplit(b"\x1b[?1049l", 1)[1]
    assert b"Traceback" not in proc.stderr.read()
