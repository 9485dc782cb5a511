"""HotSpot dynamic attach, in pure Python: load a Java agent jar into a running JVM.

Owns the client side of the protocol that ``jcmd`` / ``VirtualMachine.loadAgent`` speak
(OpenJDK ``VirtualMachineImpl.java`` for Linux and ``attachListener_linux.cpp``):

1. The JVM listens on a Unix socket ``/tmp/.java_pid<nspid>`` once its attach listener runs.
   Paths are seen from the target's mount namespace (``/proc/PID/root/tmp``) and named after
   its PID in its own (innermost) pid namespace, so containers work.
2. If the socket is missing, create ``.attach_pid<nspid>`` in the JVM's cwd (falling back to its
   ``/tmp``) and send SIGQUIT: the JVM sees the trigger file and starts the listener instead of
   printing a thread dump. Poll (bounded) for the socket, then remove the trigger file.
   SIGQUIT is only sent when the JVM has a handler installed (``SigCgt``): a JVM started with
   ``-Xrs``, or not yet done starting, would die of it (the check JDK 24 added, JDK-8342449).
3. Request, protocol version 1: ``"1\\0" cmd "\\0"`` then exactly three NUL-terminated
   arguments. For a jar: ``load\\0instrument\\0false\\0<jar>=<options>\\0``.
4. Reply: first line the status ("0" = command ran), then output. For ``load`` the output
   begins ``return code: N`` (JDK 9+; JDK 8 printed the bare number): the result of the
   instrument library's ``Agent_OnAttach``. Non-zero → AttachError with the output.

Credentials: the listener checks the peer's euid/egid (``SO_PEERCRED``) against its own; JDK 11+
also accepts root, JDK 8 does not. When we are root and the JVM runs as another user, the
connect is done in a forked child that first switches its effective gid/uid to the JVM's and
passes the connected socket back (``SCM_RIGHTS``): the kernel records credentials at connect
time, so the parent then talks with the JVM's identity. The trigger file is chowned likewise
(JDK 8 ignores trigger files owned by another user).

Hostile JVM owners (issue 14): the JVM's user controls its cwd and may plant anything in /tmp.
Every file operation goes through :mod:`heapballoon.linux.safefs` relative to directory fds
(``/proc/PID/root`` then ``tmp`` with ``O_NOFOLLOW``; ``/proc/PID/cwd`` only when that directory
is the JVM user's own): the trigger file is made with ``O_CREAT|O_EXCL|O_NOFOLLOW`` and chowned
through its fd, a planted symlink or another user's file there is unlinked (never followed),
and ``.java_pid<N>`` is talked to only when it is a socket owned by the JVM's euid.

The jar path must be one the JVM can open, in its namespace, as its user: ``heapballoon attach``
gets one from :mod:`heapballoon.agent.stage` (copies in the JVM's /tmp when ours will not do).
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import time

from heapballoon.errors import AttachError, KernelError, NotAJVM
from heapballoon.linux import safefs
from heapballoon.linux.procfs import ProcessGone, ProcFS

PROTOCOL_VERSION = b"1"
# Error codes of the instrument library's Agent_OnAttach (JPLIS, InvocationAdapter.c).
JPLIS_ERRORS = {
    100: "the agent jar could not be opened or has no Agent-Class in its manifest",
    101: "the agent jar could not be added to the system class path",
    102: "the agent's agentmain failed (exception thrown or class not found); see the JVM's stderr",
}
_MAX_REPLY_BYTES = 1 << 20


class _Refused(AttachError):
    """connect() got ECONNREFUSED: a socket file with no listener (left by a dead JVM)."""


def attach_agent(pid: int, jar_path: str, options: str = "", timeout_s: float = 10.0,
                 procfs: ProcFS | None = None) -> str:
    """Load ``jar_path`` as a Java agent into JVM ``pid``; returns the JVM's reply text.

    Raises NotAJVM (no such process / not a HotSpot JVM) or AttachError, with one-line messages.
    """
    procfs = procfs or ProcFS()
    if not isinstance(pid, int) or pid <= 0:
        raise NotAJVM(f"invalid PID {pid!r}")
    if "\0" in jar_path or "\0" in options:
        raise AttachError("agent path and options must not contain NUL characters")
    jar_path = os.path.abspath(jar_path)
    deadline = time.monotonic() + timeout_s
    try:
        return _attach(procfs, pid, jar_path, options, deadline, timeout_s)
    except ProcessGone:
        raise NotAJVM(f"no process with PID {pid}") from None
    except KernelError as exc:
        raise AttachError(f"cannot attach to PID {pid}: {exc}") from None


class _Dirs:
    """The JVM's /tmp and cwd as directory fds (``linux.safefs``): every file operation of an
    attach happens relative to them, and nothing in them is followed. Only the JVM's cwd of its
    own user is written to (a root-owned cwd such as / or /etc is not made to hold a file of
    another user); /tmp (the JVM's own, through /proc/PID/root) always may be."""

    def __init__(self, procfs: ProcFS, pid: int, euid: int) -> None:
        self.tmp = self.cwd = -1
        root = safefs.open_dir(procfs.path(pid, "root"), follow=True)  # the kernel's magic link
        try:
            self.tmp = safefs.open_subdir(root, "tmp", f"/tmp of PID {pid}")
        finally:
            os.close(root)
        try:
            cwd = safefs.open_dir(procfs.path(pid, "cwd"), follow=True)
        except safefs.UnsafePath:
            return  # no ptrace access to it, or gone: /tmp only
        if os.fstat(cwd).st_uid == euid:
            self.cwd = cwd
        else:
            os.close(cwd)

    def trigger_dirs(self) -> list[tuple[int, str]]:
        """Where HotSpot looks for ``.attach_pid<N>``, in its order: cwd, then /tmp."""
        return [(fd, where) for fd, where in ((self.cwd, "working directory"), (self.tmp, "/tmp")) if fd >= 0]

    def close(self) -> None:
        for fd in (self.tmp, self.cwd):
            if fd >= 0:
                os.close(fd)
        self.tmp = self.cwd = -1


def _attach(procfs: ProcFS, pid: int, jar_path: str, options: str, deadline: float, timeout_s: float) -> str:
    if not procfs.exists(pid):
        raise NotAJVM(f"no process with PID {pid}")
    if not procfs.is_jvm(pid):
        raise NotAJVM(f"PID {pid} is not a Java virtual machine")
    ns_pid = procfs.nspid(pid)[-1]
    euid, egid = procfs.euid_egid(pid)
    _check_jar_visible(procfs, pid, jar_path)
    try:
        dirs = _Dirs(procfs, pid, euid)
    except safefs.UnsafePath as err:
        raise AttachError(f"cannot attach to PID {pid}: {err}") from None
    try:
        return _attach_in(dirs, procfs, pid, ns_pid, euid, egid, jar_path, options, deadline, timeout_s)
    finally:
        dirs.close()


def _attach_in(dirs: _Dirs, procfs: ProcFS, pid: int, ns_pid: int, euid: int, egid: int, jar_path: str,
               options: str, deadline: float, timeout_s: float) -> str:
    name = f".java_pid{ns_pid}"
    socket_path = safefs.fd_path(dirs.tmp, name)  # connect through the fd of the JVM's /tmp
    started = False
    if not _listener_socket(dirs, name, euid):
        # Missing, or not the JVM's own socket (a stale or planted file): remove the name
        # (never what it points to) and have the JVM start its listener, which makes it anew.
        safefs.remove_at(dirs.tmp, name)
        _start_listener(dirs, procfs, pid, ns_pid, euid, egid, name, deadline, timeout_s)
        started = True

    request = b"\0".join([PROTOCOL_VERSION, b"load", b"instrument", b"false",
                          f"{jar_path}={options}".encode()]) + b"\0"
    try:
        sock = _connect(socket_path, pid, euid, egid, deadline)
    except _Refused:
        if started:
            raise
        # A stale socket of an earlier process with the same PID (killed with SIGKILL, or pid
        # reuse): the JVM re-creates it when its listener starts. Remove it and trigger.
        safefs.remove_at(dirs.tmp, name)
        _start_listener(dirs, procfs, pid, ns_pid, euid, egid, name, deadline, timeout_s)
        sock = _connect(socket_path, pid, euid, egid, deadline)
    try:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock.sendall(request)
            reply = _read_all(sock)
        except socket.timeout:
            raise AttachError(f"PID {pid} did not answer the attach request within {timeout_s:g} s") from None
        except OSError as exc:
            raise AttachError(f"attach connection to PID {pid} failed: {exc.strerror or exc}") from None
    finally:
        sock.close()
    return _parse_load_reply(pid, reply)


def _check_jar_visible(procfs: ProcFS, pid: int, jar_path: str) -> None:
    """The JVM opens the jar in its own mount namespace: make sure it is there."""
    inside = procfs.path(pid, "root", jar_path.lstrip("/"))
    try:
        os.stat(inside)
    except FileNotFoundError:
        raise AttachError(f"agent jar {jar_path} is not visible to PID {pid} (missing, or in another mount namespace)") from None
    except OSError:
        pass  # cannot look inside (no ptrace access): let the JVM report it


def _listener_socket(dirs: _Dirs, name: str, euid: int) -> bool:
    """True when the JVM's /tmp holds ``name`` as a socket (not a symlink) of the JVM's user:
    HotSpot makes it with the JVM's euid; anything else is not its listener."""
    try:
        st = safefs.lstat_at(dirs.tmp, name)
    except safefs.UnsafePath:
        return False
    return st is not None and stat.S_ISSOCK(st.st_mode) and st.st_uid == euid


def _create_trigger(dirs: _Dirs, pid: int, name: str, euid: int, egid: int) -> tuple[int, os.stat_result]:
    """``.attach_pid<N>`` in the JVM's cwd, else its /tmp, owned by the JVM's user (JDK 8
    ignores a trigger file of another user): made with O_EXCL|O_NOFOLLOW through the
    directory's fd and chowned through its own fd, so a planted symlink is never followed."""
    owner = (euid, egid) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    why = []
    for fd, where in dirs.trigger_dirs():
        try:
            return fd, safefs.claim_file_at(fd, name, *owner, mode=0o600, shown=f"{name} in the {where} of PID {pid}")
        except safefs.UnsafePath as err:
            why.append(str(err))
    raise AttachError(f"cannot create {name} in the working directory or /tmp of PID {pid}"
                      + (f": {'; '.join(why)}" if why else ""))


def _start_listener(dirs: _Dirs, procfs: ProcFS, pid: int, ns_pid: int, euid: int, egid: int, sock_name: str,
                    deadline: float, timeout_s: float) -> None:
    trigger_dir, trigger = _create_trigger(dirs, pid, f".attach_pid{ns_pid}", euid, egid)
    try:
        _wait_for_sigquit_handler(procfs, pid, deadline, timeout_s)
        try:
            os.kill(pid, signal.SIGQUIT)
        except ProcessLookupError:
            raise NotAJVM(f"no process with PID {pid}") from None
        except PermissionError:
            raise AttachError(f"not allowed to signal PID {pid} (run as its user or root)") from None
        delay = 0.005
        while not _listener_socket(dirs, sock_name, euid):
            if not procfs.exists(pid):
                raise NotAJVM(f"no process with PID {pid}")
            if time.monotonic() >= deadline:
                raise AttachError(
                    f"PID {pid} did not start its attach listener within {timeout_s:g} s "
                    "(started with -XX:+DisableAttachMechanism, or /tmp not writable for it?)"
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.2)
    finally:
        safefs.remove_at(trigger_dir, f".attach_pid{ns_pid}", expect=trigger)


def _wait_for_sigquit_handler(procfs: ProcFS, pid: int, deadline: float, timeout_s: float) -> None:
    delay = 0.005
    while not procfs.catches_signal(pid, signal.SIGQUIT):
        if time.monotonic() >= deadline:
            raise AttachError(
                f"PID {pid} does not handle SIGQUIT (started with -Xrs, or still starting); "
                "not sending it, it would kill the JVM"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _connect(path: str, pid: int, euid: int, egid: int, deadline: float) -> socket.socket:
    if os.geteuid() == 0 and (euid, egid) != (0, 0) and (euid, egid) != (os.geteuid(), os.getegid()):
        return _connect_as(path, pid, euid, egid, deadline)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        sock.connect(path)
    except OSError as exc:
        sock.close()
        cls = _Refused if isinstance(exc, ConnectionRefusedError) else AttachError
        raise cls(f"cannot connect to the attach socket of PID {pid}: {exc.strerror or exc}") from None
    return sock


def _connect_as(path: str, pid: int, euid: int, egid: int, deadline: float) -> socket.socket:
    """Connect with effective uid/gid (euid, egid) in a forked child; receive the socket."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = os.fork()
    if child == 0:  # child: only syscalls, then _exit; never returns into the caller's code
        code = 1
        try:
            parent_end.close()
            os.setgroups([egid])
            os.setegid(egid)
            os.seteuid(euid)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            sock.connect(path)
            socket.send_fds(child_end, [b"ok"], [sock.fileno()])
            code = 0
        except BaseException as exc:  # noqa: BLE001 - report anything, then exit
            try:
                msg = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                refused = b"refused:" if isinstance(exc, ConnectionRefusedError) else b"error:"
                child_end.sendall(refused + msg.encode(errors="replace")[:500])
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code)
    child_end.close()
    try:
        parent_end.settimeout(max(0.1, deadline - time.monotonic()) + 1.0)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(parent_end, 1024, 1)
        except OSError as exc:
            raise AttachError(f"cannot connect to the attach socket of PID {pid} as uid {euid}: {exc}") from None
    finally:
        parent_end.close()
        os.waitpid(child, 0)
    if not fds:
        text = msg.decode(errors="replace")
        cls = _Refused if text.startswith("refused:") else AttachError
        text = text.partition(":")[2] or "helper process failed"
        raise cls(f"cannot connect to the attach socket of PID {pid} as uid {euid}: {text}")
    for extra in fds[1:]:
        os.close(extra)
    sock = socket.socket(fileno=fds[0])
    # The child's settimeout() left O_NONBLOCK on the shared file description, and a socket
    # made from a descriptor keeps the flags it finds while reporting "blocking": give it the
    # same timeout _connect's socket has, which also sets the descriptor's mode to match.
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    total = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > _MAX_REPLY_BYTES:
            raise AttachError("attach reply larger than 1 MiB")


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def _parse_load_reply(pid: int, reply: bytes) -> str:
    text = reply.decode("utf-8", "replace")
    if not text:
        raise AttachError(
            f"PID {pid} closed the attach connection without a reply (credentials rejected, or the JVM is exiting)"
        )
    status_line, _, output = text.partition("\n")
    try:
        status = int(status_line.strip())
    except ValueError:
        raise AttachError(f"unexpected attach reply from PID {pid}: {_one_line(text)[:200]}") from None
    if status != 0:
        raise AttachError(f"PID {pid} refused to load the agent (status {status}): {_one_line(output)[:300] or 'no message'}")
    first, _, rest = output.partition("\n")
    first = first.strip()
    code_text = first.removeprefix("return code:").strip()  # JDK 9+: "return code: N"; JDK 8: "N"
    try:
        code = int(code_text)
    except ValueError:
        # Not a code: the JVM's own error text (e.g. library not found).
        raise AttachError(f"PID {pid} could not load the agent: {_one_line(output)[:300] or 'no message'}") from None
    if code != 0:
        why = JPLIS_ERRORS.get(code, f"Agent_OnAttach returned {code}")
        extra = _one_line(rest)
        raise AttachError(f"agent failed to start in PID {pid}: {why}" + (f" ({extra[:200]})" if extra else ""))
    return output
