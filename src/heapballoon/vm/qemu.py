"""QEMU virtual machines: start, stop, list, logs, exec, and the host's view of guest RAM.

Each VM has a state directory ``<run dir>/vms/<name>/`` (run dir: ``HEAPBALLOON_RUN_DIR`` or
``/run/heapballoon``)::

    vm.json           name, pid, memory_bytes, cpus, reclaim, cmd, accel, copies, ram_layout, ...
    qemu.pid          written by QEMU (-pidfile)
    qmp.sock          QMP (lifecycle: the CLI, stop_vm)
    qmp-hostd.sock    a second QMP socket, so hostd can hold a connection while the CLI uses qmp.sock
    channel.sock      host side of virtio-serial port org.heapballoon.0 (hostd connects)
    exec.sock         host side of virtio-serial port org.heapballoon.exec (vm_exec)
    console.log       the guest serial console
    qemu.log          QEMU's own messages until it daemonized

QEMU runs with ``-daemonize``: it outlives the CLI, and is not our child (nothing to reap).
Guest RAM is one memory backend ``ram0``: a shared memfd for ``reclaim="pfn"`` (the host
manager maps it and punches holes by guest page number) or private, KSM-mergeable anonymous
memory for ``reclaim="ksm"``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from heapballoon.errors import VMError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MIN_MEMORY = 256 << 20
MAX_MEMORY = 1 << 40
MAX_CPUS = 64
RECLAIM_MODES = ("pfn", "ksm")
READY_MARKER = "HEAPBALLOON-READY"
CMD_EXIT_RE = re.compile(r"HEAPBALLOON-CMD-EXIT rc=(-?\d+)")
CHANNEL_PORT = "org.heapballoon.0"
EXEC_PORT = "org.heapballoon.exec"
SOCKET_PATH_MAX = 107
GiB = 1 << 30


@dataclass(frozen=True)
class VMInfo:
    name: str
    pid: int
    memory_bytes: int
    cpus: int = 1
    reclaim: str = "pfn"
    cmd: list[str] = field(default_factory=list)
    accel: str = ""
    state: str = "running"          # running | stopped | dead (| starting while start_vm runs)
    state_dir: str = ""
    copies: list[list[str]] = field(default_factory=list)
    image_key: str = ""
    started_at: float = 0.0
    ram_layout: list[dict] = field(default_factory=list)

    @property
    def qmp_socket(self) -> Path:
        return Path(self.state_dir) / "qmp.sock"

    @property
    def hostd_qmp_socket(self) -> Path:
        return Path(self.state_dir) / "qmp-hostd.sock"

    @property
    def channel_socket(self) -> Path:
        return Path(self.state_dir) / "channel.sock"

    @property
    def exec_socket(self) -> Path:
        return Path(self.state_dir) / "exec.sock"

    @property
    def console_log(self) -> Path:
        return Path(self.state_dir) / "console.log"


# ---------------------------------------------------------------------------------------------
# paths, validation

def run_dir() -> Path:
    return Path(os.environ.get("HEAPBALLOON_RUN_DIR") or "/run/heapballoon")


def vms_dir() -> Path:
    return run_dir() / "vms"


def state_dir(name: str) -> Path:
    return vms_dir() / name


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise VMError(f"invalid VM name {name!r}: use 1-32 of a-z 0-9 _ - starting with a letter or digit")
    return name


def _validate_memory(memory_bytes: int) -> int:
    if not isinstance(memory_bytes, int) or isinstance(memory_bytes, bool):
        raise VMError(f"invalid VM memory {memory_bytes!r}: expected a number of bytes")
    if memory_bytes < MIN_MEMORY:
        raise VMError(f"VM memory {memory_bytes} bytes is too small: at least {MIN_MEMORY >> 20} MiB")
    if memory_bytes > MAX_MEMORY:
        raise VMError(f"VM memory {memory_bytes} bytes is too large: at most {MAX_MEMORY >> 30} GiB")
    if memory_bytes % (1 << 20):
        raise VMError(f"VM memory {memory_bytes} bytes is not a whole number of MiB")
    return memory_bytes


def ram_layout(memory_bytes: int) -> list[dict]:
    """Where guest RAM sits in guest physical address space (QEMU q35 rules), by ram0 offset.

    q35 keeps all RAM below 4 GiB when it is smaller than 2.75 GiB; otherwise 2 GiB stays
    below and the rest starts at 4 GiB. Each entry: ``{"gpa": start, "size": n, "offset": o}``
    (guest physical ``gpa + x`` is byte ``o + x`` of the memfd).
    """
    lowmem = 0x80000000 if memory_bytes >= 0xB0000000 else 0xB0000000
    if memory_bytes <= lowmem:
        return [{"gpa": 0, "size": memory_bytes, "offset": 0}]
    return [{"gpa": 0, "size": lowmem, "offset": 0},
            {"gpa": 4 * GiB, "size": memory_bytes - lowmem, "offset": lowmem}]


def gpa_to_ram_offset(gpa: int, layout: list[dict] | int) -> int:
    """Offset in guest RAM (the memfd) of guest physical address ``gpa``; VMError if not RAM.

    ``layout`` is a VM's ``ram_layout`` (or its memory size). Guest page number ``pfn`` is
    ``gpa = pfn * 4096``.
    """
    if isinstance(layout, int):
        layout = ram_layout(layout)
    for r in layout:
        if r["gpa"] <= gpa < r["gpa"] + r["size"]:
            return r["offset"] + gpa - r["gpa"]
    raise VMError(f"guest physical address {gpa:#x} is not guest RAM")


# ---------------------------------------------------------------------------------------------
# processes

def _pid_alive(pid: int, sdir: Path | None = None) -> bool:
    """True if ``pid`` is a live (not zombie) QEMU for this state dir."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        if st[st.rindex(")") + 2] in "ZX":
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, ValueError):
        return False
    if b"qemu-system" not in cmdline and b"qemu" not in cmdline.split(b"\0")[0]:
        return False
    return sdir is None or str(sdir).encode() in cmdline


def _read_pidfile(sdir: Path) -> int:
    try:
        return int((sdir / "qemu.pid").read_text().strip())
    except (OSError, ValueError):
        return 0


STARTING_GRACE_S = 120.0


def _starting(sdir: Path) -> bool:
    """A state dir another start_vm is still filling in (no pidfile yet, created just now)."""
    try:
        return not (sdir / "qemu.pid").exists() and time.time() - sdir.stat().st_mtime < STARTING_GRACE_S
    except OSError:
        return False


def _load(sdir: Path) -> VMInfo:
    name = sdir.name
    try:
        data = json.loads((sdir / "vm.json").read_text())
    except (OSError, ValueError):
        pid = _read_pidfile(sdir)
        state = "running" if _pid_alive(pid, sdir) else "starting" if _starting(sdir) else "dead"
        return VMInfo(name=name, pid=pid, memory_bytes=0, state=state, state_dir=str(sdir))
    known = {f for f in VMInfo.__dataclass_fields__}
    data = {k: v for k, v in data.items() if k in known}
    data["state_dir"] = str(sdir)
    pid = int(data.get("pid") or _read_pidfile(sdir))
    data["pid"] = pid
    if _pid_alive(pid, sdir):
        data["state"] = "running"
    elif _starting(sdir):
        data["state"] = "starting"
    else:
        data["state"] = "stopped" if _powered_off(sdir) else "dead"
    return VMInfo(**data)


def _powered_off(sdir: Path) -> bool:
    try:
        with open(sdir / "console.log", "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            return b"reboot: Power down" in f.read()
    except OSError:
        return False


def get_vm(name: str) -> VMInfo:
    validate_name(name)
    sdir = state_dir(name)
    if not sdir.is_dir():
        raise VMError(f"no VM named {name!r}")
    return _load(sdir)


def list_vms() -> list[VMInfo]:
    d = vms_dir()
    if not d.is_dir():
        return []
    return [_load(p) for p in sorted(d.iterdir()) if p.is_dir() and NAME_RE.match(p.name)]


# ---------------------------------------------------------------------------------------------
# start

COPIES_DIR = ".heapballoon-copies"


def _extra_initrd(spec: dict, copies: list[tuple[str, str]], name: str, copies_prefix: str = "") -> bytes:
    """An uncompressed newc archive layered on the image: cmd.json, hostname, copied files.

    ``copies_prefix``: where copied files go in the archive (``GUEST`` → ``prefix/GUEST``). Images
    with a root disk use :data:`COPIES_DIR`; their stage-1 ``/init`` copies that tree (and
    ``/heapballoon``) into the overlay root before ``switch_root``.
    """
    import io

    from heapballoon.vm.image.cpio import CpioWriter

    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.dir("heapballoon", 0o755)
    w.file("heapballoon/cmd.json", json.dumps(spec).encode(), 0o644, int(time.time()))
    w.file("heapballoon/hostname", name.encode() + b"\n", 0o644)
    for host, guest in copies:
        gname = "/".join(p for p in (copies_prefix.strip("/"), guest.strip("/")) if p)
        w.parents(gname)
        if os.path.isdir(host):
            w.tree(Path(host), gname)
        else:
            w.path(host, gname)
    w.close()
    return buf.getvalue()


def _check_copies(copies) -> list[tuple[str, str]]:
    out = []
    for item in copies or []:
        try:
            host, guest = item
        except (TypeError, ValueError):
            raise VMError(f"invalid copy {item!r}: expected (host_path, guest_path)") from None
        host, guest = str(host), str(guest)
        if not os.path.exists(host):
            raise VMError(f"copy: {host} does not exist")
        if not guest.startswith("/") or ".." in guest.split("/") or guest.rstrip("/") in ("", "/"):
            raise VMError(f"copy: guest path {guest!r} must be absolute, without '..', and not /")
        # a symlink given as the source is copied as what it points to
        out.append((os.path.realpath(host), "/" + guest.strip("/")))
    return out


def qemu_command(info_dir: Path, name: str, memory_bytes: int, cpus: int, reclaim: str, accel: str,
                 kernel: Path, initrd: Path, rootdisk: Path | None = None) -> list[str]:
    from heapballoon.vm.accel import qemu_binary

    mib = memory_bytes >> 20
    if reclaim == "pfn":
        backend = f"memory-backend-memfd,id=ram0,size={mib}M,share=on"
    else:
        backend = f"memory-backend-ram,id=ram0,size={mib}M,merge=on"
    append = "console=ttyS0 quiet panic=-1 loglevel=4"
    if accel == "tcg":
        # no KPTI & co.: every syscall's CR3 switch is very expensive under TCG
        append += " mitigations=off"
    d = info_dir
    # the read-only root disk, shared by every VM of the image (page cache in the guest and the host)
    disk = ["-drive", f"file={rootdisk},if=none,id=rootdisk,format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=rootdisk"] if rootdisk else []
    return [
        qemu_binary(),
        "-name", f"heapballoon-{name},process=hb-{name}",
        "-machine", "q35,memory-backend=ram0",
        "-accel", accel,
        "-cpu", "host" if accel == "kvm" else "qemu64",
        "-smp", str(cpus),
        "-m", f"{mib}M",
        "-object", backend,
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-chardev", f"file,id=console,path={d}/console.log",
        "-serial", "chardev:console",
        "-chardev", f"socket,id=channel,path={d}/channel.sock,server=on,wait=off",
        "-chardev", f"socket,id=exec,path={d}/exec.sock,server=on,wait=off",
        "-device", "virtio-serial-pci,id=vser0",
        "-device", f"virtserialport,bus=vser0.0,chardev=channel,name={CHANNEL_PORT}",
        "-device", f"virtserialport,bus=vser0.0,chardev=exec,name={EXEC_PORT}",
        "-device", "virtio-balloon-pci,id=balloon0,deflate-on-oom=on",
        "-device", "virtio-rng-pci",
        *disk,
        "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off",
        "-qmp", f"unix:{d}/qmp-hostd.sock,server=on,wait=off",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
        "-pidfile", f"{d}/qemu.pid", "-D", f"{d}/qemu.log",
        "-daemonize",
    ]


def start_vm(name: str, memory_bytes: int, cpus: int = 1, copies=(), reclaim: str = "pfn",
             cmd: list[str] | None = None, *, env: dict[str, str] | None = None,
             accel: str | None = None, image=None, wait: bool = True,
             ready_timeout_s: float = 180.0, progress: bool = False) -> VMInfo:
    """Boot a VM and return its :class:`VMInfo` (after ``HEAPBALLOON-READY`` when ``wait``).

    ``copies``: ``(host_path, guest_path)`` pairs put into the guest before init runs.
    ``cmd``: argv the guest supervisor runs once (output on the console and /var/log/cmd.log).
    """
    validate_name(name)
    _validate_memory(memory_bytes)
    if not isinstance(cpus, int) or not 1 <= cpus <= MAX_CPUS:
        raise VMError(f"invalid cpus {cpus!r}: 1..{MAX_CPUS}")
    if reclaim not in RECLAIM_MODES:
        raise VMError(f"invalid reclaim mode {reclaim!r}: one of {', '.join(RECLAIM_MODES)}")
    cmd = [str(a) for a in (cmd or [])]
    copies = _check_copies(copies)
    from heapballoon.vm.accel import qemu_binary

    if shutil.which(qemu_binary()) is None:
        raise VMError("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")

    sdir = state_dir(name)
    if len(str(sdir / "qmp-hostd.sock")) > SOCKET_PATH_MAX:
        raise VMError(f"state dir {sdir} is too long for unix sockets; set HEAPBALLOON_RUN_DIR to a shorter path")
    vms_dir().mkdir(parents=True, exist_ok=True)
    try:
        sdir.mkdir(mode=0o700)
    except FileExistsError:
        existing = _load(sdir)
        if existing.state == "running":
            raise VMError(f"VM {name!r} already exists (pid {existing.pid}); stop it first") from None
        if existing.state == "starting":
            raise VMError(f"VM {name!r} is being started right now") from None
        shutil.rmtree(sdir, ignore_errors=True)  # stale: QEMU is gone
        try:
            sdir.mkdir(mode=0o700)
        except FileExistsError:
            raise VMError(f"VM {name!r} is being started by someone else") from None

    try:
        if image is None:
            from heapballoon.vm.image import build_image

            image = build_image(progress=progress)
        if accel is None:
            from heapballoon.vm.accel import probe_accel

            accel = probe_accel(image)
        if accel not in ("kvm", "tcg"):
            raise VMError(f"invalid accel {accel!r}: kvm or tcg")

        spec = {"argv": cmd, "env": dict(env or {}), "name": name}
        rootdisk = getattr(image, "rootdisk_path", None)
        extra = _extra_initrd(spec, copies, name, COPIES_DIR if rootdisk else "")
        initrd = sdir / "initrd.img"
        with open(image.initrd_path, "rb") as src, open(initrd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            pad = (-dst.tell()) % 512   # the kernel needs the next archive 4-byte aligned
            dst.write(b"\0" * pad + extra)

        argv = qemu_command(sdir, name, memory_bytes, cpus, reclaim, accel, image.kernel_path, initrd, rootdisk)
        info = VMInfo(name=name, pid=0, memory_bytes=memory_bytes, cpus=cpus, reclaim=reclaim, cmd=cmd,
                      accel=accel, state="starting", state_dir=str(sdir), copies=[list(c) for c in copies],
                      image_key=image.key, started_at=time.time(), ram_layout=ram_layout(memory_bytes))
        _write_info(sdir, info, argv)
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise VMError(f"QEMU did not finish starting VM {name!r} within 60s") from None
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise VMError(f"QEMU failed to start VM {name!r}: {lines[-1] if lines else f'exit {proc.returncode}'}")
        pid = _read_pidfile(sdir)
        if not _pid_alive(pid, sdir):
            raise VMError(f"QEMU for VM {name!r} exited right after starting (see {sdir}/qemu.log)")
        try:
            initrd.unlink()  # QEMU has loaded it into guest RAM
        except OSError:
            pass
        info = VMInfo(**{**asdict(info), "pid": pid, "state": "running"})
        _write_info(sdir, info, argv)
    except BaseException:
        _kill_and_remove(sdir)
        raise

    if wait:
        try:
            wait_ready(name, ready_timeout_s)
        except BaseException:
            try:
                stop_vm(name)
            except VMError:
                pass
            raise
    return info


def _write_info(sdir: Path, info: VMInfo, argv: list[str]) -> None:
    data = asdict(info)
    data.pop("state", None)
    data.pop("state_dir", None)
    data["qemu_argv"] = argv
    tmp = sdir / "vm.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, sdir / "vm.json")


def wait_ready(name: str, timeout_s: float = 180.0, marker: str = READY_MARKER) -> float:
    """Wait until ``marker`` is on the VM console; seconds waited. VMError if QEMU dies or time runs out."""
    info = get_vm(name)
    t0 = time.monotonic()
    delay = 0.02
    while True:
        text = _read_console(info)
        if marker in text:
            return time.monotonic() - t0
        if not _pid_alive(info.pid, Path(info.state_dir)):
            raise VMError(f"VM {name!r} stopped while booting: {_tail(text)}")
        if time.monotonic() - t0 > timeout_s:
            raise VMError(f"VM {name!r} not ready after {timeout_s:.0f}s: {_tail(text)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _read_console(info: VMInfo) -> str:
    try:
        return info.console_log.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _tail(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return " | ".join(lines[-3:]) if lines else "no console output"


def cmd_exit_code(name: str) -> int | None:
    """The VM command's exit code once ``HEAPBALLOON-CMD-EXIT`` is on the console, else None."""
    m = CMD_EXIT_RE.search(_read_console(get_vm(name)))
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# stop

def _wait_gone(pid: int, sdir: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while _pid_alive(pid, sdir):
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return True


def _kill_and_remove(sdir: Path) -> None:
    pid = _read_pidfile(sdir)
    if _pid_alive(pid, sdir):
        for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if _wait_gone(pid, sdir, wait_s):
                break
    shutil.rmtree(sdir, ignore_errors=True)


def stop_vm(name: str, timeout_s: float = 10.0) -> None:
    """Quit the VM (QMP ``quit``, then SIGTERM, then SIGKILL, all bounded) and remove its state dir."""
    info = get_vm(name)
    sdir = Path(info.state_dir)
    pid = info.pid
    if _pid_alive(pid, sdir):
        from heapballoon.vm.qmp import qmp_execute

        try:
            qmp_execute(info.qmp_socket, "quit", timeout_s=min(3.0, timeout_s))
        except VMError:
            pass
        if not _wait_gone(pid, sdir, timeout_s / 2):
            for sig, wait_s in ((signal.SIGTERM, timeout_s / 4), (signal.SIGKILL, 5.0)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                if _wait_gone(pid, sdir, wait_s):
                    break
        if _pid_alive(pid, sdir):
            raise VMError(f"VM {name!r} (pid {pid}) did not exit")
    shutil.rmtree(sdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# logs, exec

def vm_logs(name: str) -> str:
    """The guest serial console so far."""
    return _read_console(get_vm(name))


def vm_exec(name: str, argv: list[str], timeout_s: float = 60, *, stdin: str | None = None,
            env: dict[str, str] | None = None, ready_timeout_s: float = 180.0,
            binary: bool = False) -> tuple[int, str | bytes, str | bytes]:
    """Run ``argv`` in the guest; ``(rc, stdout, stderr)``. rc 124 = timed out, 127 = not found.

    Requests go over the ``org.heapballoon.exec`` port; one at a time per VM (a lock file).
    If the guest is still booting the request waits in the socket until the supervisor reads it.
    """
    if not argv or not all(isinstance(a, str) for a in argv):
        raise VMError("vm exec: argv must be a non-empty list of strings")
    info = get_vm(name)
    sdir = Path(info.state_dir)
    if info.state != "running":
        raise VMError(f"VM {name!r} is not running ({info.state})")
    rid = secrets.randbits(62)
    req = {"v": 1, "type": "exec", "id": rid, "argv": list(argv), "timeout_s": timeout_s,
           "encoding": "base64" if binary else "text"}
    if stdin is not None:
        req["stdin"] = stdin
    if env:
        req["env"] = dict(env)
    budget = timeout_s + ready_timeout_s + 10
    deadline = time.monotonic() + budget
    with open(sdir / "exec.lock", "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise VMError(f"vm exec {name}: another exec did not finish in time") from None
                time.sleep(0.05)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(info.exec_socket))
            except OSError as e:
                raise VMError(f"vm exec {name}: cannot connect to {info.exec_socket}: {e}") from None
            s.sendall(json.dumps(req).encode() + b"\n")
            s.settimeout(0.5)
            buf = b""
            while True:
                if time.monotonic() > deadline:
                    raise VMError(f"vm exec {name}: no reply within {budget:.0f}s")
                try:
                    chunk = s.recv(1 << 20)
                except socket.timeout:
                    if not _pid_alive(info.pid, sdir):
                        raise VMError(f"vm exec {name}: VM exited") from None
                    continue
                if not chunk:
                    raise VMError(f"vm exec {name}: connection closed by QEMU")
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(msg, dict) or msg.get("id") != rid:
                        continue
                    if msg.get("type") == "error":
                        raise VMError(f"vm exec {name}: guest: {msg.get('error')}")
                    out, err = msg.get("stdout", ""), msg.get("stderr", "")
                    if msg.get("encoding") == "base64":
                        import base64

                        out, err = base64.b64decode(out), base64.b64decode(err)
                    return int(msg.get("rc", 1)), out, err
                if len(buf) > (8 << 20):
                    raise VMError(f"vm exec {name}: reply too large")


# ---------------------------------------------------------------------------------------------
# guest RAM for the host reclaim engine

def qemu_ram_fd_path(name: str) -> tuple[str, int]:
    """``("/proc/PID/fd/N", size)`` of the VM's guest RAM memfd. VMError if none."""
    info = get_vm(name)
    if info.state != "running":
        raise VMError(f"VM {name!r} is not running ({info.state})")
    if info.reclaim != "pfn":
        raise VMError(f"VM {name!r} guest RAM is private memory (reclaim={info.reclaim}), not a shared memfd")
    fddir = f"/proc/{info.pid}/fd"
    best = None
    try:
        entries = os.listdir(fddir)
    except OSError as e:
        raise VMError(f"cannot read {fddir}: {e.strerror} (need the same user as QEMU, or root)") from None
    for fd in entries:
        path = f"{fddir}/{fd}"
        try:
            target = os.readlink(path)
            if not target.startswith("/memfd:"):
                continue
            size = os.stat(path).st_size
        except OSError:
            continue
        score = (size == info.memory_bytes, "ram0" in target, size)
        if best is None or score > best[0]:
            best = (score, path, size)
    if best is None:
        raise VMError(f"VM {name!r}: no memfd among QEMU's open files")
    return best[1], best[2]


def open_guest_ram(name: str, writable: bool = True) -> tuple[int, int]:
    """``(fd, size)``: a new file descriptor on the VM's guest RAM memfd (caller closes it).

    Byte ``o`` of the fd is guest RAM offset ``o``; translate guest physical addresses with
    :func:`gpa_to_ram_offset` and the VM's ``ram_layout``. Punching holes in it
    (``fallocate(PUNCH_HOLE)``) frees host memory; the guest reads zeros there afterwards.
    """
    path, size = qemu_ram_fd_path(name)
    try:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    except OSError as e:
        raise VMError(f"cannot open guest RAM of VM {name!r}: {e.strerror}") from None
    return fd, os.fstat(fd).st_size
