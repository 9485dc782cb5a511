"""The image cache: where images live, which ones exist, and which to keep.

Layout (``HEAPBALLOON_CACHE`` or ``~/.cache/heapballoon``)::

    debs/                      downloaded .debs, kept across builds (debs.py)
    images/<key>/vmlinuz       the kernel
    images/<key>/initrd.img    the initramfs (gzip-compressed newc cpio)
    images/<key>/rootfs.img    the read-only root disk (ext4, raw, no journal)
    images/<key>/probe.cpio    a tiny busybox initramfs for the KVM probe (see accel.py)
    images/<key>/manifest.json what went in
    accel.json                 the accelerator verdicts (accel.py)

Owns :class:`Image` (a built image's files), reading one back from its directory, the newest
complete image (:func:`cached_image`, no apt, no hashing) and pruning old ones.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

ROOTDISK_NAME = "rootfs.img"
KEEP_IMAGES = 3


@dataclass(frozen=True)
class Image:
    """A built image: its files under ``images/<key>/`` and their sizes in bytes."""

    kernel_path: Path
    initrd_path: Path
    key: str
    probe_initrd_path: Path | None = None
    kernel_version: str = ""
    initrd_bytes: int = 0
    rootdisk_path: Path | None = None
    rootdisk_bytes: int = 0


def cache_root() -> Path:
    env = os.environ.get("HEAPBALLOON_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "heapballoon"


def images_dir() -> Path:
    return cache_root() / "images"


def debs_dir() -> Path:
    return cache_root() / "debs"


def image_from_dir(d: Path, key: str) -> Image:
    manifest = json.loads((d / "manifest.json").read_text())
    probe = d / "probe.cpio"
    disk = d / ROOTDISK_NAME
    return Image(kernel_path=d / "vmlinuz", initrd_path=d / "initrd.img", key=key,
                 probe_initrd_path=probe if probe.exists() else None,
                 kernel_version=manifest.get("kernel_version", ""),
                 initrd_bytes=(d / "initrd.img").stat().st_size,
                 rootdisk_path=disk if disk.exists() else None,
                 rootdisk_bytes=disk.stat().st_size if disk.exists() else 0)


def cached_image() -> Image | None:
    """The newest complete image in the cache without checking inputs (no apt, no hashing)."""
    best = None
    d = images_dir()
    if not d.is_dir():
        return None
    for m in d.glob("*/manifest.json"):
        if best is None or m.stat().st_mtime > best.stat().st_mtime:
            best = m
    return image_from_dir(best.parent, best.parent.name) if best else None


def prune_images(keep: set[str]) -> None:
    """Delete all but the newest KEEP_IMAGES images (and stale half-built directories)."""
    d = images_dir()
    done = sorted((m.parent for m in d.glob("*/manifest.json")), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in done[KEEP_IMAGES:]:
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in d.glob(".build-*"):
        try:
            if time.time() - tmp.stat().st_mtime > 3600:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass
