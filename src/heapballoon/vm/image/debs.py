"""The guest's Debian packages: which ones, at which versions, downloaded into a .deb cache.

Owns the package lists, resolving candidate versions with ``apt-cache`` (the kernel through
the ``linux-image-cloud-amd64`` meta package), ``apt-get update`` at most once per process
and only when needed, the ``.deb`` cache (``<cache>/debs``, kept across builds) and
``dpkg-deb -x`` extraction. Nothing else is downloaded.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from heapballoon.errors import ImageError
from heapballoon.vm.image.cache import debs_dir
from heapballoon.vm.image.progress import Progress, run

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BASE_PACKAGES = ["libc6", "libgcc-s1", "libstdc++6", "zlib1g", "busybox-static"]
# what `import asyncio, json, socket, mmap, ctypes, struct, logging, ssl, hashlib` needs
PYTHON_PACKAGES = [
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libuuid1", "libcrypt1",
]


_apt_updated = False


def _apt_update(progress: Progress) -> None:
    global _apt_updated
    if _apt_updated:
        return
    progress.step("apt-get update")
    run(["apt-get", "update", "-qq"], "apt-get update")
    _apt_updated = True


def _candidates(names: list[str]) -> dict[str, str]:
    proc = subprocess.run(["apt-cache", "policy", *names], capture_output=True, text=True)
    out: dict[str, str] = {}
    current = None
    for line in proc.stdout.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
        elif current and line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                out[current] = version
    return out


def _kernel_package() -> str | None:
    proc = subprocess.run(["apt-cache", "depends", KERNEL_META_PACKAGE], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        m = re.match(r"\s*(?:\|)?Depends:\s*(linux-image-\S+)", line)
        if m and not m.group(1).startswith("<"):
            return m.group(1)
    return None


def resolve_packages(progress: Progress | None = None) -> dict[str, str]:
    """Package name → candidate version for everything in the image (kernel resolved)."""
    progress = progress or Progress(False)
    for attempt in range(2):
        kernel = _kernel_package()
        names = BASE_PACKAGES + PYTHON_PACKAGES + ([kernel] if kernel else [])
        versions = _candidates(names) if kernel else {}
        missing = [n for n in names if n not in versions] if kernel else [KERNEL_META_PACKAGE]
        if not missing:
            return {n: versions[n] for n in names}
        if attempt == 0:
            _apt_update(progress)
    raise ImageError(f"Debian packages not available from apt: {', '.join(missing)} "
                     "(is this a Debian 12 host with apt sources configured?)")


def _deb_filename_version(version: str) -> str:
    return version.replace(":", "%3a")


def fetch_debs(packages: dict[str, str], progress: Progress | None = None) -> dict[str, Path]:
    """Download (or reuse from the cache) each ``name=version`` .deb; returns name → path."""
    progress = progress or Progress(False)
    ddir = debs_dir()
    ddir.mkdir(parents=True, exist_ok=True)

    def find(name: str, version: str) -> Path | None:
        hits = sorted(ddir.glob(f"{name}_{_deb_filename_version(version)}_*.deb"))
        return hits[0] if hits else None

    missing = [n for n, v in packages.items() if find(n, v) is None]
    if missing:
        progress.step(f"apt-get download {len(missing)} packages: {' '.join(missing)}")
        specs = [f"{n}={packages[n]}" for n in missing]
        try:
            run(["apt-get", "download", "-qq", *specs], "apt-get download", cwd=ddir)
        except ImageError:
            _apt_update(progress)
            run(["apt-get", "download", "-qq", *specs], "apt-get download", cwd=ddir)
    out = {}
    for n, v in packages.items():
        p = find(n, v)
        if p is None:
            raise ImageError(f"apt-get download did not produce {n} {v}")
        out[n] = p
    return out


def extract(deb: Path, dest: Path) -> None:
    run(["dpkg-deb", "-x", str(deb), str(dest)], f"dpkg-deb -x {deb.name}")
