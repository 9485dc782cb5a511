"""Fixtures for the VM tests: a factory that owns every VM a test starts and checks teardown.

Every test here boots real QEMU guests (TCG when KVM does not work; see heapballoon.vm.accel).
The run dir is a short private directory under /tmp (unix socket paths are limited to 108 bytes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

QEMU = "qemu-system-x86_64"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/vm/" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


def _skip_reason() -> str | None:
    if shutil.which(QEMU) is None:
        return f"{QEMU} not installed (apt-get install qemu-system-x86)"
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} not available: the guest image is built from Debian packages"
    return None


@pytest.fixture(scope="session")
def vm_image():
    reason = _skip_reason()
    if reason:
        print(f"skipping VM tests: {reason}")
        pytest.skip(reason)
    from heapballoon.vm.image import build_image

    return build_image(progress=False)


@pytest.fixture(scope="session")
def vm_accel(vm_image):
    from heapballoon.vm.accel import accel_verdict

    accel, reason = accel_verdict(vm_image)
    print(f"VM accel: {accel} ({reason})")
    return accel


def qemu_pids_for(path: str) -> list[int]:
    """Live QEMU processes whose command line mentions ``path``."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
        except OSError:
            continue
        if b"qemu-system" in cmd and path.encode() in cmd and st[st.rindex(")") + 2] not in "ZX":
            out.append(int(pid))
    return out


class VMFactory:
    """Starts VMs in a private run dir; teardown stops them and checks nothing is left."""

    def __init__(self, image, accel):
        self.image = image
        self.accel = accel
        self.run_dir = tempfile.mkdtemp(prefix="hbvm-", dir="/tmp")
        self._old = os.environ.get("HEAPBALLOON_RUN_DIR")
        os.environ["HEAPBALLOON_RUN_DIR"] = self.run_dir
        self.names: list[str] = []

    def start(self, name: str, memory_bytes: int = 512 << 20, **kw):
        from heapballoon.vm.qemu import start_vm

        self.names.append(name)
        kw.setdefault("image", self.image)
        kw.setdefault("accel", self.accel)
        return start_vm(name, memory_bytes, **kw)

    def teardown(self):
        from heapballoon.vm.qemu import list_vms, stop_vm

        errors = []
        try:
            for info in list_vms():
                try:
                    stop_vm(info.name)
                except Exception as e:  # keep going: leave nothing running
                    errors.append(f"stop {info.name}: {e}")
            left = qemu_pids_for(self.run_dir)
            for pid in left:
                subprocess.run(["kill", "-9", str(pid)])
            vms = os.path.join(self.run_dir, "vms")
            leftover_dirs = os.listdir(vms) if os.path.isdir(vms) else []
        finally:
            if self._old is None:
                os.environ.pop("HEAPBALLOON_RUN_DIR", None)
            else:
                os.environ["HEAPBALLOON_RUN_DIR"] = self._old
        shutil.rmtree(self.run_dir, ignore_errors=True)
        assert not errors, errors
        assert not left, f"QEMU still running after teardown: pids {left}"
        assert not leftover_dirs, f"state dirs left after teardown: {leftover_dirs}"


@pytest.fixture
def vms(vm_image, vm_accel):
    f = VMFactory(vm_image, vm_accel)
    yield f
    f.teardown()


@pytest.fixture(scope="module")
def module_vms(vm_image, vm_accel):
    f = VMFactory(vm_image, vm_accel)
    yield f
    f.teardown()
