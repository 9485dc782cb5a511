"""A libvirtd for the tests, and a domain made from our guest image (direct kernel boot).

If a libvirtd already answers at $HEAPBALLOON_TEST_LIBVIRT_URI (or qemu:///system) it is used;
otherwise, as root, one is started by hand (``libvirtd -d``) with a private config whose
sockets live under /tmp (URI ``qemu:///system?socket=...``), plus ``virtlogd -d`` if none runs,
and stopped at the end. The domain boots the image's kernel and initrd (with our cmd.json
and the demo app appended, as vm.launcher does) and its read-only root disk; it has neither
memfd RAM nor the channel, as an operator's domain would before ``libvirt prepare``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

PRIVATE_DIR = "/tmp/hb-libvirtd"
PRIVATE_URI = f"qemu:///system?socket={PRIVATE_DIR}/libvirt-sock"


def _answers(uri: str) -> bool:
    try:
        import libvirt
    except ImportError:
        return False
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        libvirt.open(uri).close()
        return True
    except libvirt.libvirtError:
        return False


def _listening(path: str) -> bool:
    """Something accepts connections on the Unix socket ``path`` (a file left by a killed
    daemon refuses them)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
            return True
        except OSError:
            return False


KVM_DEV = "/dev/kvm"


def _open_kvm_to_its_group() -> tuple[int, int] | None:
    """A host without udev (this CI machine: a microVM) leaves /dev/kvm root:root 0600, where a
    stock Debian host's udev rule makes it root:kvm 0660. libvirt 9.0 probes QEMU's
    capabilities as root (KVM found) but judges KVM as its qemu user (libvirt-qemu, group kvm:
    "not available now"), so it throws its capability cache away and probes QEMU again (~4 s)
    on every lookup: a ``virsh define`` took 70 s, the first test 152 s (its debug log:
    "KVM was enabled when probing '/usr/bin/qemu-system-x86_64', but it is not available
    now"). For the tests' own libvirtd, give the device udev's group and mode; returns what to
    restore at stop, or None when nothing was changed."""
    import grp
    import pwd

    from heapballoon.linux.devices import kvm_closed_to

    try:
        st = os.stat(KVM_DEV)
        kvm_gid = grp.getgrnam("kvm").gr_gid
        qemu = pwd.getpwnam("libvirt-qemu")
    except (OSError, KeyError):
        return None
    mode = st.st_mode & 0o777
    # what `heapballoon libvirt check` judges, and only the root-owned case udev would change
    if st.st_gid != 0 or not kvm_closed_to(qemu.pw_uid, os.getgrouplist(qemu.pw_name, qemu.pw_gid)):
        return None
    os.chown(KVM_DEV, -1, kvm_gid)
    os.chmod(KVM_DEV, mode | 0o060)
    print(f"libvirt tests: {KVM_DEV} was root:root {mode:o} (no udev): set to group kvm, mode "
          f"{mode | 0o060:o} as udev does, while the tests' libvirtd runs")
    return st.st_gid, mode


def _pid_alive(pidfile: str) -> int:
    try:
        pid = int(open(pidfile).read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return 0


class Libvirtd:
    """``uri`` of a working libvirtd; ``restart()`` (only for one we started); ``stop()``."""

    def __init__(self) -> None:
        self.started = False
        self.kvm_restore: tuple[int, int] | None = None
        uri = os.environ.get("HEAPBALLOON_TEST_LIBVIRT_URI", "qemu:///system")
        if _answers(uri):
            self.uri = uri
            return
        self.uri = PRIVATE_URI
        self.started = True  # the private one is the tests' own, left running or not
        self.kvm_restore = _open_kvm_to_its_group()
        if _answers(self.uri):
            return
        os.makedirs(PRIVATE_DIR, exist_ok=True)
        with open(f"{PRIVATE_DIR}/libvirtd.conf", "w") as f:
            f.write(f'unix_sock_dir = "{PRIVATE_DIR}"\nunix_sock_rw_perms = "0700"\n'
                    'auth_unix_rw = "none"\nauth_unix_ro = "none"\n')
        # QEMU's logs go through virtlogd; its socket file outlives a virtlogd killed with -9, and
        # then every domain fails to start, so the test is whether it answers, not whether it exists
        if not _listening("/run/libvirt/virtlogd-sock"):
            subprocess.run(["virtlogd", "-d", "-p", f"{PRIVATE_DIR}/virtlogd.pid"], check=True)
        self.start()

    def start(self) -> None:
        subprocess.run(["libvirtd", "-d", "-f", f"{PRIVATE_DIR}/libvirtd.conf", "-p", f"{PRIVATE_DIR}/libvirtd.pid"],
                       check=True, cwd=PRIVATE_DIR)
        deadline = time.monotonic() + 30
        while not _answers(self.uri):
            assert time.monotonic() < deadline, "libvirtd did not answer within 30 s"
            time.sleep(0.2)

    def kill(self) -> None:
        pid = _pid_alive(f"{PRIVATE_DIR}/libvirtd.pid")
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _pid_alive(f"{PRIVATE_DIR}/libvirtd.pid") and time.monotonic() < deadline:
                time.sleep(0.1)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.started:
            self.kill()
            pid = _pid_alive(f"{PRIVATE_DIR}/virtlogd.pid")  # only one the tests started
            if pid:
                os.kill(pid, signal.SIGTERM)
        if self.kvm_restore is not None:
            gid, mode = self.kvm_restore
            os.chown(KVM_DEV, -1, gid)
            os.chmod(KVM_DEV, mode)


def virsh(uri: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode:
        raise AssertionError(f"virsh {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def domain_xml(name: str, memory_mib: int, kernel: str, initrd: str, rootdisk: str, console_log: str,
               accel: str = "tcg", memballoon: str = "<memballoon model='virtio'/>", devices: str = "") -> str:
    """A plain domain: direct kernel boot of our image, no memfd, no heapballoon channel.

    ``memballoon``: the balloon device's element; ``devices``: more devices (a channel)."""
    cpu = "<cpu mode='host-passthrough'/>" if accel == "kvm" else \
        "<cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>"
    append = "console=ttyS0 quiet panic=-1 loglevel=4" + (" mitigations=off" if accel == "tcg" else "")
    return f"""<domain type='{"kvm" if accel == "kvm" else "qemu"}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{append}</cmdline>
  </os>
  {cpu}
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{rootdisk}'/>
      <target dev='vda' bus='virtio'/>
      <readonly/>
    </disk>
    <serial type='file'>
      <source path='{console_log}'/>
      <target port='0'/>
    </serial>
    {memballoon}{devices}
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>
"""


def guest_files(image, name: str, cmd: list[str], copies: list[tuple[str, str]], reclaim: str = "pfn",
                driver_args: list[str] | None = None) -> dict:
    """Kernel, initrd (image + our cmd and copies) and root disk in a directory QEMU (user
    libvirt-qemu) can read; the console log's path. ``reclaim="virtio"``: the guest driver frees
    idle heap itself (``--reclaim direct``), as in a ``vm start --reclaim virtio`` guest."""
    from heapballoon.vm.launcher import COPIES_DIR, extra_initrd

    d = tempfile.mkdtemp(prefix=f"hblv-{name}-", dir="/tmp")
    os.chmod(d, 0o777)
    kernel, initrd, rootdisk = (os.path.join(d, n) for n in ("vmlinuz", "initrd.img", "rootfs.img"))
    shutil.copyfile(image.kernel_path, kernel)
    spec = {"argv": cmd, "env": {}, "name": name, "reclaim": reclaim}
    if driver_args is not None:
        spec["driver_args"] = driver_args
    extra = extra_initrd(spec, copies, name, COPIES_DIR)
    with open(image.initrd_path, "rb") as src, open(initrd, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.write(b"\0" * ((-dst.tell()) % 512) + extra)
    shutil.copyfile(image.rootdisk_path, rootdisk)
    for p in (kernel, initrd, rootdisk):
        os.chmod(p, 0o644)
    return {"dir": d, "kernel": kernel, "initrd": initrd, "rootdisk": rootdisk,
            "console_log": os.path.join(d, "console.log")}


EXEC_CHANNEL = ("<channel type='unix'><source mode='bind'/>"
                "<target type='virtio' name='org.heapballoon.exec'/></channel>")


def channel_path(uri: str, name: str, port: str = "org.heapballoon.exec") -> str:
    """The host path libvirt chose for the running domain's unix channel ``port``."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(virsh(uri, "dumpxml", name).stdout)
    for ch in root.iter("channel"):
        target, source = ch.find("target"), ch.find("source")
        if target is not None and target.get("name") == port and source is not None and source.get("path"):
            return source.get("path")
    raise AssertionError(f"domain {name} has no unix channel {port}")


def guest_exec(sock_path: str, argv: list[str], timeout_s: float = 20) -> tuple[int, str]:
    """Run ``argv`` in the guest through its exec channel (the guest supervisor's protocol, as
    ``vm exec`` speaks it); ``(rc, stdout)``, rc -1 when the guest did not answer in time."""
    import secrets
    import socket

    from heapballoon.vm import execproto

    rid = secrets.randbits(62)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        s.sendall(execproto.encode(execproto.ExecRequest(id=rid, argv=tuple(argv), timeout_s=timeout_s)))
        s.settimeout(timeout_s + 10)  # the guest's own timeout, and time to answer
        try:
            for line in s.makefile("rb"):
                try:
                    reply = execproto.parse_reply(line)
                except execproto.ExecProtocolError:
                    continue  # not a reply line of this protocol (a stale or garbled one)
                if reply.id == rid and isinstance(reply, execproto.ExecResult):
                    return reply.rc, reply.stdout
                if reply.id == rid:
                    raise AssertionError(f"guest exec {argv}: {reply}")
        except socket.timeout:
            pass
    return -1, ""
