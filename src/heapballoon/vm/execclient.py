"""The host side of ``heapballoon vm exec``: one typed request over the VM's exec port.

Owns the client of the ``org.heapballoon.exec`` virtio-serial port (``exec.sock`` in the VM
directory): one request at a time per VM (an ``flock`` on ``exec.lock``), the request and the
reply as :mod:`heapballoon.vm.execproto` dataclasses (validated both ways), bounded waits, and
noticing when QEMU exits under us. The guest side is :mod:`heapballoon.guest.supervisor`.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import secrets
import socket
import time
from pathlib import Path

from heapballoon.errors import VMError
from heapballoon.vm import execproto
from heapballoon.vm.execproto import ExecError, ExecProtocolError, ExecRequest, ExecResult
from heapballoon.vm.registry import console_has, get_vm, qemu_alive

MAX_REPLY_BYTES = 8 << 20
LOCK_POLL_S = 0.05
RECV_POLL_S = 0.5
# A guest that has booted (its ready marker is on the console) answers within the command's own
# timeout plus this; only a booting guest gets ``ready_timeout_s`` more. A guest out of memory
# may never answer: ``vm exec --timeout-s 15`` then waited 205 s (the boot allowance) in the
# issue-17 test's diagnostics.
BOOTED_REPLY_GRACE_S = 30.0
BOOTING_SLACK_S = 10.0


def _lock(lock, deadline: float, name: str) -> None:
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError as err:
            if time.monotonic() > deadline:
                raise VMError(f"vm exec {name}: another exec did not finish in time") from err
            time.sleep(LOCK_POLL_S)


def _await_reply(s: socket.socket, rid: int, name: str, pid: int, vm_dir: Path, deadline: float,
                 why_budget: str) -> ExecResult:
    s.settimeout(RECV_POLL_S)
    buf = b""
    while True:
        if time.monotonic() > deadline:
            raise VMError(f"vm exec {name}: no reply within {why_budget}")
        try:
            chunk = s.recv(1 << 20)
        except socket.timeout as err:
            if not qemu_alive(pid, vm_dir):
                raise VMError(f"vm exec {name}: VM exited") from err
            continue
        if not chunk:
            raise VMError(f"vm exec {name}: connection closed by QEMU")
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                reply = execproto.parse_reply(line)
            except ExecProtocolError as err:
                if err.id == rid:
                    raise VMError(f"vm exec {name}: malformed reply from the guest: {err}") from err
                continue  # a stale or garbled line that is not ours
            if reply.id != rid:
                continue
            if isinstance(reply, ExecError):
                raise VMError(f"vm exec {name}: guest: {reply.error}")
            if isinstance(reply, ExecResult):
                return reply
        if len(buf) > MAX_REPLY_BYTES:
            raise VMError(f"vm exec {name}: reply too large")


def vm_exec(name: str, argv: list[str], timeout_s: float = 60, *, stdin: str | None = None,
            env: dict[str, str] | None = None, ready_timeout_s: float = 180.0,
            binary: bool = False) -> tuple[int, str | bytes, str | bytes]:
    """Run ``argv`` in the guest; ``(rc, stdout, stderr)``. rc 124 = timed out, 127 = not found.

    If the guest is still booting the request waits in the socket until the supervisor reads it
    (``ready_timeout_s`` more); once it has booted, only :data:`BOOTED_REPLY_GRACE_S` more.
    """
    if not argv or not all(isinstance(a, str) for a in argv):
        raise VMError("vm exec: argv must be a non-empty list of strings")
    info = get_vm(name)
    if info.state != "running":
        raise VMError(f"VM {name!r} is not running ({info.state})")
    rid = secrets.randbits(62)
    try:
        req = ExecRequest(id=rid, argv=tuple(argv), timeout_s=timeout_s,
                          encoding="base64" if binary else "text", stdin=stdin,
                          env=tuple(sorted((str(k), str(v)) for k, v in (env or {}).items())))
    except ExecProtocolError as err:
        raise VMError(f"vm exec {name}: {err}") from err
    vm_dir = Path(info.state_dir)
    if console_has(info):
        budget_s = timeout_s + BOOTED_REPLY_GRACE_S
        why = (f"{budget_s:.0f}s (the guest had booted: its supervisor did not answer; is the guest out of "
               "memory?)")
    else:
        budget_s = timeout_s + ready_timeout_s + BOOTING_SLACK_S
        why = f"{budget_s:.0f}s (the guest had not said it was ready: still booting?)"
    deadline = time.monotonic() + budget_s
    with open(info.paths.exec_lock, "w") as lock:
        _lock(lock, deadline, name)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(info.exec_socket))
            except OSError as err:
                raise VMError(f"vm exec {name}: cannot connect to {info.exec_socket}: {err}") from err
            s.sendall(execproto.encode(req))
            result = _await_reply(s, rid, name, info.pid, vm_dir, deadline, why)
    if result.encoding == "base64":
        try:
            return result.rc, base64.b64decode(result.stdout), base64.b64decode(result.stderr)
        except (binascii.Error, ValueError) as err:
            raise VMError(f"vm exec {name}: the guest's output is not valid base64") from err
    return result.rc, result.stdout, result.stderr
