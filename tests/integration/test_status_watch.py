"""`heapballoon status --watch` against a real daemon: it redraws until Ctrl-C (exit 0, no
traceback) and ends with one line when the daemon dies."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading

from hbtest import PY, cli_env, wait_for


def _watch(sock: str, *extra) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([PY, "-m", "heapballoon", "status", "--watch", "--interval-s", "0.2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(sock))
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines


def test_watch_redraws_until_ctrl_c(daemons):
    d = daemons.start()
    proc, lines = _watch(d.sock)
    try:
        wait_for(lambda: sum("JVMs (0)" in line for line in lines) >= 3, 20, what="three frames")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
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
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    out = b""

    def read_some() -> bytes:
        nonlocal out
        out += os.read(master, 65536)
        return out

    try:
        wait_for(lambda: read_some().count(b"JVMs (0)") >= 3, 20, what="three frames on the terminal")
        assert b"\x1b[?1049h" in out  # the alternate screen: redrawn in place, like top
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while chunk := os.read(master, 65536):
                out += chunk
    finally:
        proc.kill()
        os.close(master)
    assert b"\x1b[?1049l" in out  # the screen is given back, and the last frame printed after it
    assert b"JVMs (0)" in out.rsplit(b"\x1b[?1049l", 1)[1]
    assert b"Traceback" not in proc.stderr.read()
