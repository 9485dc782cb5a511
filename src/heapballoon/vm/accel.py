"""Pick the QEMU accelerator: KVM when a real guest boots under it, TCG otherwise.

``/dev/kvm`` existing (and even KVM_CREATE_VM succeeding) is not proof: on some hosts (nested
virtualisation, sandboxes) a KVM guest spins at kernel start forever. So the probe boots the
image's kernel with a tiny busybox initramfs (``probe.cpio``) under KVM and waits, bounded, for
``HEAPBALLOON-PROBE-OK`` on the serial console. The verdict and its reason are cached in
``<cache>/accel.json`` per host kernel + QEMU version. ``HEAPBALLOON_ACCEL=kvm|tcg`` overrides.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from heapballoon.errors import VMError
from heapballoon.linux.devices import kvm_usable

QEMU = "qemu-system-x86_64"
PROBE_TIMEOUT_S = 20.0
PROBE_MARKER = b"HEAPBALLOON-PROBE-OK"


def qemu_binary() -> str:
    return os.environ.get("HEAPBALLOON_QEMU", QEMU)


_qemu_version_cache: dict[str, str] = {}


def qemu_version() -> str:
    binary = qemu_binary()
    if binary not in _qemu_version_cache:
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired) as e:
            raise VMError(f"{binary} not usable: {e} (install qemu-system-x86)") from e
        _qemu_version_cache[binary] = out.splitlines()[0].strip() if out else "unknown"
    return _qemu_version_cache[binary]


def _cache_file() -> Path:
    from heapballoon.vm.image.cache import cache_root

    return cache_root() / "accel.json"


def _host_key() -> str:
    return f"{platform.release()} {platform.version()} | {qemu_version()}"


def accel_verdict(image=None) -> tuple[str, str]:
    """``(accel, reason)``; probes (bounded) when there is no cached verdict for this host."""
    env = os.environ.get("HEAPBALLOON_ACCEL", "").strip().lower()
    if env:
        if env not in ("kvm", "tcg"):
            raise VMError(f"HEAPBALLOON_ACCEL must be kvm or tcg, not {env!r}")
        return env, "HEAPBALLOON_ACCEL"
    if not kvm_usable():
        return "tcg", "no usable KVM: /dev/kvm missing or not accessible"
    cache = _cache_file()
    cache.parent.mkdir(parents=True, exist_ok=True)
    key = _host_key()
    with open(cache.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(cache.read_text())
        except (OSError, ValueError):
            data = {}
        if key in data:
            return data[key]["accel"], data[key]["reason"]
        accel, reason = _probe(image)
        data[key] = {"accel": accel, "reason": reason, "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, cache)
        return accel, reason


def probe_accel(image=None) -> str:
    """``"kvm"`` or ``"tcg"`` (see :func:`accel_verdict`)."""
    return accel_verdict(image)[0]


def forget_verdict() -> None:
    """Drop the cached verdict for this host (the next call probes again)."""
    cache = _cache_file()
    try:
        data = json.loads(cache.read_text())
        data.pop(_host_key(), None)
        cache.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    except (OSError, ValueError):
        pass


def _probe(image=None) -> tuple[str, str]:
    if image is None:
        from heapballoon.vm.image import build_image

        image = build_image(progress=False)
    initrd = image.probe_initrd_path or image.initrd_path
    with tempfile.TemporaryDirectory(prefix="heapballoon-probe-") as tmp:
        console = Path(tmp) / "console.log"
        cmd = [qemu_binary(), "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "256",
               "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
               "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
               "-kernel", str(image.kernel_path), "-initrd", str(initrd),
               "-append", "console=ttyS0 panic=-1 quiet"]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            while time.monotonic() - t0 < PROBE_TIMEOUT_S:
                if console.exists() and PROBE_MARKER in console.read_bytes():
                    return "kvm", f"KVM guest reached the probe marker in {time.monotonic() - t0:.1f}s"
                if proc.poll() is not None:
                    err = (proc.stderr.read() or b"").decode(errors="replace").strip().splitlines()
                    if console.exists() and PROBE_MARKER in console.read_bytes():
                        return "kvm", f"KVM guest reached the probe marker in {time.monotonic() - t0:.1f}s"
                    return "tcg", f"KVM probe: qemu exited rc={proc.returncode}: {err[-1] if err else 'no output'}"
                time.sleep(0.1)
            size = console.stat().st_size if console.exists() else 0
            return "tcg", (f"KVM probe: guest printed {size} console bytes and no marker within "
                           f"{PROBE_TIMEOUT_S:.0f}s (KVM guest hangs on this host)")
        finally:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
