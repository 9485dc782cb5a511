"""Start and stop QEMU VMs: the QEMU command line, the per-VM initrd, boot, shutdown.

Owns the *lifecycle*: :func:`start_vm` validates the request, fills the VM directory
(:mod:`heapballoon.vm.vmdir`), builds QEMU's argv (:func:`qemu_command`), starts QEMU
(``-daemonize``: it outlives the CLI and is not our child, nothing to reap), reads the guest
RAM layout from QEMU itself (``info mtree -f`` through QMP, parsed by
:mod:`heapballoon.qemu.layout`; never assumed) and records it in ``vm.json``; :func:`stop_vm`
asks QEMU to quit (QMP), then signals, all bounded, and removes the directory.

Guest RAM is one memory backend ``ram0``: a shared memfd for ``reclaim="pfn"`` (hostd maps it
and punches holes by guest page number), private, KSM-mergeable anonymous memory for
``reclaim="ksm"``, or private memory for ``reclaim="virtio"`` (issue 17: no hostd; the stock
virtio-balloon with free page reporting takes what the guest frees, and the guest driver frees
idle heap itself, ``reclaim: direct``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from heapballoon.errors import HeapballoonError, VMError
from heapballoon.vm import vmdir
from heapballoon.vm.registry import (READY_MARKER, VMInfo, get_vm, load_info, qemu_alive, read_console)
from heapballoon.vm.vmdir import CHANNEL_PORT, EXEC_PORT, RamRangeRecord, VMDir, VMPaths

COPIES_DIR = ".heapballoon-copies"
QEMU_START_TIMEOUT_S = 60.0
LAYOUT_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------------------------------
# what QEMU is given

def extra_initrd(spec: dict, copies: list[tuple[str, str]], name: str, copies_prefix: str = "") -> bytes:
    """An uncompressed newc archive layered on the image: cmd.json, hostname, copied files.

    ``copies_prefix``: where copied files go in the archive (``GUEST`` → ``prefix/GUEST``). Images
    with a root disk use :data:`COPIES_DIR`; their stage-1 ``/init`` copies that tree (and
    ``/heapballoon``) into the overlay root before ``switch_root``.
    """
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


def check_copies(copies) -> list[tuple[str, str]]:
    out = []
    for item in copies or []:
        try:
            host, guest = item
        except (TypeError, ValueError) as err:
            raise VMError(f"invalid copy {item!r}: expected (host_path, guest_path)") from err
        host, guest = str(host), str(guest)
        if not os.path.exists(host):
            raise VMError(f"copy: {host} does not exist")
        if not guest.startswith("/") or ".." in guest.split("/") or guest.rstrip("/") in ("", "/"):
            raise VMError(f"copy: guest path {guest!r} must be absolute, without '..', and not /")
        # a symlink given as the source is copied as what it points to
        out.append((os.path.realpath(host), "/" + guest.strip("/")))
    return out


def qemu_command(paths: VMPaths, memory_bytes: int, cpus: int, reclaim: str, accel: str,
                 kernel: Path, initrd: Path, rootdisk: Path | None = None,
                 forwards: tuple[tuple[int, int], ...] = ()) -> list[str]:
    """QEMU's argv for the VM at ``paths`` (every socket and log named by the VM directory).

    ``forwards``: ``(host_port, guest_port)`` TCP forwards from the host's 127.0.0.1 to the guest
    (user-mode network, ``restrict=on``: the guest reaches nothing outside; the guest sets up
    ``eth0`` as 10.0.2.15/24 itself). No forwards: no network device at all."""
    from heapballoon.vm.accel import qemu_binary

    name = paths.name
    mib = memory_bytes >> 20
    balloon = "virtio-balloon-pci,id=balloon0,deflate-on-oom=on"
    if reclaim == "pfn":
        backend = f"memory-backend-memfd,id=ram0,size={mib}M,share=on"
    elif reclaim == "virtio":
        backend = f"memory-backend-ram,id=ram0,size={mib}M"
        # the guest hands freed pages back by itself (Linux 5.7+, QEMU 5.1+): no pause, no hostd
        balloon += ",free-page-reporting=on"
    else:
        backend = f"memory-backend-ram,id=ram0,size={mib}M,merge=on"
    append = "console=ttyS0 quiet panic=-1 loglevel=4"
    if accel == "tcg":
        # no KPTI & co.: every syscall's CR3 switch is very expensive under TCG
        append += " mitigations=off"
    # the read-only root disk, shared by every VM of the image (page cache in the guest and the host)
    disk = ["-drive", f"file={rootdisk},if=none,id=rootdisk,format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=rootdisk"] if rootdisk else []
    net = []
    if forwards:
        fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{int(h)}-:{int(g)}" for h, g in forwards)
        net = ["-netdev", f"user,id=net0,restrict=on,{fwd}", "-device", "virtio-net-pci,netdev=net0"]
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
        "-chardev", f"file,id=console,path={paths.console_log}",
        "-serial", "chardev:console",
        "-chardev", f"socket,id=channel,path={paths.channel_socket},server=on,wait=off",
        "-chardev", f"socket,id=exec,path={paths.exec_socket},server=on,wait=off",
        "-device", "virtio-serial-pci,id=vser0",
        "-device", f"virtserialport,bus=vser0.0,chardev=channel,name={CHANNEL_PORT}",
        "-device", f"virtserialport,bus=vser0.0,chardev=exec,name={EXEC_PORT}",
        "-device", balloon,
        "-device", "virtio-rng-pci",
        *disk,
        *net,
        "-qmp", f"unix:{paths.qmp_socket},server=on,wait=off",
        "-qmp", f"unix:{paths.hostd_qmp_socket},server=on,wait=off",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
        "-pidfile", str(paths.pidfile), "-D", str(paths.qemu_log),
        "-daemonize",
    ]


def read_ram_layout(qmp_socket: Path, memory_bytes: int) -> tuple[RamRangeRecord, ...]:
    """Where guest RAM sits in guest-physical address space, as QEMU says (``info mtree -f``)."""
    from heapballoon.qemu.layout import GuestLayout
    from heapballoon.vm.qmp import hmp

    text = hmp(qmp_socket, "info mtree -f", timeout_s=LAYOUT_TIMEOUT_S)
    try:
        layout = GuestLayout.from_mtree(text, "ram0", memory_bytes)
    except HeapballoonError as err:
        raise VMError(f"cannot read the guest RAM layout from QEMU: {err}") from err
    return tuple(RamRangeRecord(r.gpa, r.size_bytes, r.offset) for r in layout.ranges)


# ---------------------------------------------------------------------------------------------
# start

def _claim_dir(paths: VMPaths) -> None:
    """Create the VM directory, replacing a stale one; VMError if the name is in use."""
    paths.dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        paths.dir.mkdir(mode=0o700)
        return
    except FileExistsError:
        pass
    existing = load_info(paths)
    if existing.state == "running":
        raise VMError(f"VM {paths.name!r} already exists (pid {existing.pid}); stop it first")
    if existing.state == "starting":
        raise VMError(f"VM {paths.name!r} is being started right now")
    shutil.rmtree(paths.dir, ignore_errors=True)  # stale: QEMU is gone
    try:
        paths.dir.mkdir(mode=0o700)
    except FileExistsError as err:
        raise VMError(f"VM {paths.name!r} is being started by someone else") from err


def start_vm(name: str, memory_bytes: int, cpus: int = 1, copies=(), reclaim: str = "pfn",
             cmd: list[str] | None = None, *, env: dict[str, str] | None = None,
             accel: str | None = None, image=None, wait: bool = True,
             ready_timeout_s: float = 180.0, progress: bool = False,
             forwards: tuple[tuple[int, int], ...] = (), preexec_fn=None,
             driver_args: list[str] | None = None) -> VMInfo:
    """Boot a VM and return its :class:`VMInfo` (after ``HEAPBALLOON-READY`` when ``wait``).

    ``copies``: ``(host_path, guest_path)`` pairs put into the guest before init runs.
    ``cmd``: argv the guest supervisor runs once (output on the console and /var/log/cmd.log).
    ``forwards``: host→guest TCP port forwards (:func:`qemu_command`). ``preexec_fn``: run in the
    QEMU child before exec (e.g. entering a memory cgroup, so guest RAM is charged there).
    ``driver_args``: the guest driver's extra arguments (default: per ``reclaim``, see
    guest.supervisor.driver_args).
    """
    paths = VMPaths.of(vmdir.run_dir(), name)
    vmdir.validate_memory(memory_bytes)
    vmdir.validate_cpus(cpus)
    vmdir.validate_reclaim(reclaim)
    cmd = [str(a) for a in (cmd or [])]
    copies = check_copies(copies)
    from heapballoon.vm.accel import qemu_binary

    if shutil.which(qemu_binary()) is None:
        raise VMError("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    paths.check_socket_lengths()
    _claim_dir(paths)

    try:
        if image is None:
            from heapballoon.vm.image import build_image

            image = build_image(progress=progress)
        if accel is None:
            from heapballoon.vm.accel import probe_accel

            accel = probe_accel(image)
        if accel not in vmdir.ACCELS:
            raise VMError(f"invalid accel {accel!r}: kvm or tcg")

        spec = {"argv": cmd, "env": dict(env or {}), "name": name, "reclaim": reclaim}
        if driver_args is not None:
            spec["driver_args"] = [str(a) for a in driver_args]
        rootdisk = getattr(image, "rootdisk_path", None)
        extra = extra_initrd(spec, copies, name, COPIES_DIR if rootdisk else "")
        initrd = paths.dir / "initrd.img"
        with open(image.initrd_path, "rb") as src, open(initrd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            pad = (-dst.tell()) % 512   # the kernel needs the next archive 4-byte aligned
            dst.write(b"\0" * pad + extra)

        argv = qemu_command(paths, memory_bytes, cpus, reclaim, accel, image.kernel_path, initrd, rootdisk,
                            tuple(forwards))
        record = VMDir(paths=paths, pid=0, memory_bytes=memory_bytes, cpus=cpus, reclaim=reclaim,
                       accel=accel, cmd=tuple(cmd), copies=tuple(copies), image_key=image.key,
                       started_at_s=time.time(), qemu_argv=tuple(argv))
        record.save()
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=QEMU_START_TIMEOUT_S, preexec_fn=preexec_fn)
        except subprocess.TimeoutExpired as err:
            raise VMError(f"QEMU did not finish starting VM {name!r} within {QEMU_START_TIMEOUT_S:.0f}s") from err
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise VMError(f"QEMU failed to start VM {name!r}: {lines[-1] if lines else f'exit {proc.returncode}'}")
        pid = paths.read_pid()
        if not qemu_alive(pid, paths.dir):
            raise VMError(f"QEMU for VM {name!r} exited right after starting (see {paths.qemu_log})")
        try:
            initrd.unlink()  # QEMU has loaded it into guest RAM
        except OSError:
            pass
        record = replace(record, pid=pid, ram_layout=read_ram_layout(paths.qmp_socket, memory_bytes))
        record.save()
    except BaseException:
        _kill_and_remove(paths)
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
    return VMInfo.of(record, "running")


def wait_ready(name: str, timeout_s: float = 180.0, marker: str = READY_MARKER) -> float:
    """Wait until ``marker`` is on the VM console; seconds waited. VMError if QEMU dies or time runs out."""
    info = get_vm(name)
    t0 = time.monotonic()
    delay = 0.02
    while True:
        text = read_console(info)
        if marker in text:
            return time.monotonic() - t0
        if not qemu_alive(info.pid, Path(info.state_dir)):
            raise VMError(f"VM {name!r} stopped while booting: {_tail(text)}")
        if time.monotonic() - t0 > timeout_s:
            raise VMError(f"VM {name!r} not ready after {timeout_s:.0f}s: {_tail(text)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-3:]) if lines else "no console output"


# ---------------------------------------------------------------------------------------------
# stop

def _wait_gone(pid: int, vm_dir: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while qemu_alive(pid, vm_dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return True


def _signal_until_gone(pid: int, vm_dir: Path, steps: tuple[tuple[int, float], ...]) -> None:
    for sig, wait_s in steps:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if _wait_gone(pid, vm_dir, wait_s):
            return


def _kill_and_remove(paths: VMPaths) -> None:
    pid = paths.read_pid()
    if qemu_alive(pid, paths.dir):
        _signal_until_gone(pid, paths.dir, ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)))
    shutil.rmtree(paths.dir, ignore_errors=True)


def stop_vm(name: str, timeout_s: float = 10.0) -> None:
    """Quit the VM (QMP ``quit``, then SIGTERM, then SIGKILL, all bounded) and remove its directory."""
    info = get_vm(name)
    vm_dir = Path(info.state_dir)
    pid = info.pid
    if qemu_alive(pid, vm_dir):
        from heapballoon.vm.qmp import qmp_execute

        try:
            qmp_execute(info.qmp_socket, "quit", timeout_s=min(3.0, timeout_s))
        except VMError:
            pass
        if not _wait_gone(pid, vm_dir, timeout_s / 2):
            _signal_until_gone(pid, vm_dir, ((signal.SIGTERM, timeout_s / 4), (signal.SIGKILL, 5.0)))
        if qemu_alive(pid, vm_dir):
            raise VMError(f"VM {name!r} (pid {pid}) did not exit")
    shutil.rmtree(vm_dir, ignore_errors=True)
