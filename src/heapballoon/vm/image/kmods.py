"""The guest's kernel modules: the ones wanted, their dependencies first, uncompressed.

Owns the kernel-module graph: an index of ``.ko``/``.ko.xz``/``.ko.gz``/``.ko.zst`` files of one
kernel, dependencies read from each module's ``.modinfo`` (``depends=``), built-ins skipped
(``modules.builtin``), a dependency cycle or a missing module reported as ImageError.
"""

from __future__ import annotations

import gzip
import lzma
import re
import subprocess
from pathlib import Path

from heapballoon.errors import ImageError

# kernel modules to load in the guest (their dependencies are added from .modinfo); virtio_net
# for VMs started with port forwards (the experiment's VM mode reaches guest services that way)
GUEST_MODULES = ["virtio_pci", "virtio_blk", "overlay", "virtio_console", "virtio_balloon", "virtio_rng",
                 "virtio_net"]


def _modinfo_depends(data: bytes) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    if not m or not m.group(1):
        return []
    return [d.decode() for d in m.group(1).split(b",") if d]


def _read_module(path: Path) -> bytes:
    name = path.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        proc = subprocess.run(["zstd", "-dc", str(path)], capture_output=True)
        if proc.returncode != 0:
            raise ImageError(f"zstd -d {name} failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout
    return path.read_bytes()


def _modname(path: Path) -> str:
    return re.sub(r"\.ko(\.(xz|gz|zst))?$", "", path.name).replace("-", "_")


def select_modules(moddir: Path, wanted: list[str]) -> list[tuple[str, bytes]]:
    """(name, uncompressed .ko) for ``wanted`` and their dependencies, dependencies first."""
    index: dict[str, Path] = {}
    for p in (moddir / "kernel").rglob("*.ko*"):
        index[_modname(p)] = p
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        builtin = {_modname(Path(line.strip())) for line in bfile.read_text().splitlines() if line.strip()}
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name in chain:
            raise ImageError(f"kernel module dependency cycle: {' -> '.join(chain + (name,))}")
        if name not in index:
            raise ImageError(f"kernel module {name} not found in {moddir.name} (and not built in)")
        data = _read_module(index[name])
        for dep in _modinfo_depends(data):
            visit(dep, chain + (name,))
        seen.add(name)
        order.append((name, data))

    for w in wanted:
        visit(w, ())
    return order
