"""Guest-image stages that need no apt or QEMU: the kernel-module graph, cache keys, the cache."""

from __future__ import annotations

import gzip
import lzma
import os
import time
from pathlib import Path

import pytest

from heapballoon.errors import ImageError
from heapballoon.vm.image import cache, keys, kmods


def ko(depends: str) -> bytes:
    return b"\x7fELF....\0license=GPL\0depends=" + depends.encode() + b"\0vermagic=6.1\0"


@pytest.fixture
def moddir(tmp_path) -> Path:
    d = tmp_path / "6.1.0-test"
    k = d / "kernel" / "drivers"
    k.mkdir(parents=True)
    (k / "virtio_ring.ko.xz").write_bytes(lzma.compress(ko("")))
    (k / "virtio.ko.gz").write_bytes(gzip.compress(ko("virtio_ring")))
    (k / "virtio_pci.ko").write_bytes(ko("virtio,virtio_ring,crc32c"))
    (k / "virtio-blk.ko").write_bytes(ko("virtio"))         # dash in the file name
    (k / "loop_a.ko").write_bytes(ko("loop_b"))
    (k / "loop_b.ko").write_bytes(ko("loop_a"))
    (d / "modules.builtin").write_text("kernel/lib/crc32c.ko\n")
    return d


def test_dependencies_come_first_once_and_uncompressed(moddir):
    order = kmods.select_modules(moddir, ["virtio_pci", "virtio_blk"])
    assert [n for n, _ in order] == ["virtio_ring", "virtio", "virtio_pci", "virtio_blk"]
    assert all(data.startswith(b"\x7fELF") for _, data in order)


def test_builtins_are_skipped_and_missing_or_cyclic_modules_fail(moddir):
    assert kmods.select_modules(moddir, ["crc32c"]) == []
    with pytest.raises(ImageError, match="kernel module nosuch not found"):
        kmods.select_modules(moddir, ["nosuch"])
    with pytest.raises(ImageError, match="dependency cycle: loop_a -> loop_b -> loop_a"):
        kmods.select_modules(moddir, ["loop_a"])


def test_modinfo_depends_parser():
    assert kmods._modinfo_depends(ko("a,b-c")) == ["a", "b-c"]
    assert kmods._modinfo_depends(ko("")) == []
    assert kmods._modinfo_depends(b"no modinfo here") == []


def test_image_key_is_stable_and_changes_with_any_input():
    inputs = {"builder": keys.BUILDER_VERSION, "packages": {"libc6": "2.36"}, "source": "abc"}
    assert keys.image_key(inputs) == keys.image_key(dict(reversed(list(inputs.items()))))
    assert len(keys.image_key(inputs)) == 20
    assert keys.image_key({**inputs, "source": "abd"}) != keys.image_key(inputs)


def test_source_tree_hash_ignores_bytecode_and_sees_edits(tmp_path):
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    before = keys.source_tree_hash(tmp_path)
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "pkg" / "b.pyc").write_bytes(b"junk")
    assert keys.source_tree_hash(tmp_path) == before
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert keys.source_tree_hash(tmp_path) != before


def make_image(root: Path, key: str, age_s: float) -> Path:
    d = root / "images" / key
    d.mkdir(parents=True)
    for name in ("vmlinuz", "initrd.img", "rootfs.img", "probe.cpio"):
        (d / name).write_bytes(b"x" * 10)
    (d / "manifest.json").write_text('{"kernel_version": "6.1"}')
    t = time.time() - age_s
    os.utime(d / "manifest.json", (t, t))
    os.utime(d, (t, t))
    return d


def test_cache_newest_image_and_pruning(tmp_path, monkeypatch):
    monkeypatch.setenv("HEAPBALLOON_CACHE", str(tmp_path))
    assert cache.cached_image() is None
    for i, key in enumerate(["k4", "k3", "k2", "k1", "k0"]):   # k0 is the oldest
        make_image(tmp_path, key, age_s=100 * i + 10)
    img = cache.cached_image()
    assert (img.key, img.kernel_version, img.rootdisk_bytes) == ("k4", "6.1", 10)
    cache.prune_images(keep={"k0"})
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["k0", "k2", "k3", "k4"]
