"""Build (and cache) the guest image, stage by stage, with progress on stderr.

Owns the order of the stages and the cache's consistency (one build at a time: an ``flock``
on ``images/.lock``; a build goes into a temporary directory that is renamed into place when
complete). The stages, one module each:

1. ``debs``      resolve the Debian packages' versions, download the missing .debs (cached)
2. ``keys``      the cache key from every input: a cached image with that key is the answer
3. ``rootfs``    extract the packages, install the kernel and its modules (``kmods``), stage the tree
4. ``ext4``      the tree as the read-only root disk (``rootfs.img``)
5. ``initramfs`` the small initramfs that mounts it (``cpio``), and the KVM probe's
6. the manifest; old images are pruned (``cache``)

What the image holds, and how a guest boots from it (``/init`` stage 1 mounts the disk
read-only, puts a tmpfs overlay on it and ``switch_root``s, where ``/init`` runs again as
stage 2) is described in ``guest/init/init`` and docs/vm.md.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from heapballoon.vm.image import debs, keys, rootfs
from heapballoon.vm.image.cache import ROOTDISK_NAME, Image, image_from_dir, images_dir, prune_images
from heapballoon.vm.image.ext4 import make_rootdisk
from heapballoon.vm.image.initramfs import write_initrd, write_probe
from heapballoon.vm.image.progress import Progress


def build_image(progress: bool = True, force: bool = False) -> Image:
    """Return the guest image for the current inputs, building it if it is not cached."""
    prog = Progress(progress)
    try:
        images_dir().mkdir(parents=True, exist_ok=True)
        with open(images_dir() / ".lock", "w") as lockf:
            fcntl.flock(lockf, fcntl.LOCK_EX)
            packages = debs.resolve_packages(prog)
            jdk = keys.jdk_home()
            jar, native = keys.agent_artifacts(prog)
            inputs = keys.key_inputs(packages, jdk, jar, native)
            key = keys.image_key(inputs)
            out = images_dir() / key
            if (out / "manifest.json").exists() and not force:
                prog.step(f"cached image {key}")
                return image_from_dir(out, key)
            t0 = time.monotonic()
            deb_files = debs.fetch_debs(packages, prog)
            tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=images_dir()))
            try:
                _build(tmp, key, packages, deb_files, jdk, jar, native, inputs, prog)
                manifest = json.loads((tmp / "manifest.json").read_text())
                manifest["build_seconds"] = round(time.monotonic() - t0, 1)
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                if out.exists():
                    shutil.rmtree(out)
                os.rename(tmp, out)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            prune_images(keep={key})
            img = image_from_dir(out, key)
            prog.step(f"image {key} ready: initrd {img.initrd_bytes / 2**20:.1f} MiB, "
                      f"root disk {img.rootdisk_bytes / 2**20:.1f} MiB in {time.monotonic() - t0:.0f}s")
            return img
    finally:
        prog.close()


def _build(out: Path, key: str, packages: dict[str, str], deb_files: dict[str, Path], jdk: Path,
           jar: Path | None, native: Path | None, inputs: dict, prog: Progress) -> None:
    root = out / "rootfs"
    kdir = out / "kernel"
    root.mkdir()
    kdir.mkdir()
    kernel_pkg = next(n for n in packages if n.startswith("linux-image-"))

    prog.step(f"extracting {len(deb_files) - 1} packages")
    for name, deb in deb_files.items():
        debs.extract(deb, kdir if name == kernel_pkg else root)
    kver, mods, mdir = rootfs.install_kernel(kdir, root, out, kernel_pkg, prog)
    applets = rootfs.stage(root, jdk, jar, native, prog)
    (root / "etc" / "heapballoon" / "image.json").write_text(json.dumps(
        {"key": key, "kernel_version": kver, "agent": jar is not None, "agent_native": native is not None},
        sort_keys=True) + "\n")

    # the read-only root disk: the whole staged tree
    prog.step("writing the root disk (mke2fs -d)")
    raw_bytes = make_rootdisk(root, out / ROOTDISK_NAME, key)

    # the initramfs: just enough to mount the disk
    prog.step("writing initramfs")
    initramfs_raw = write_initrd(out, root, applets, mdir)
    write_probe(out, root / "bin" / "busybox")

    manifest = {
        "key": key,
        "kernel_version": kver,
        "kernel_package": kernel_pkg,
        "packages": packages,
        "jdk": str(jdk),
        "jre_modules": keys.JRE_MODULES,
        "modules": [n for n, _ in mods],
        "agent_jar": str(jar) if jar else None,
        "agent_native": str(native) if native else None,
        "rootfs_bytes": raw_bytes,
        "rootdisk_bytes": (out / ROOTDISK_NAME).stat().st_size,
        "initramfs_bytes": initramfs_raw,
        "initrd_bytes": (out / "initrd.img").stat().st_size,
        "inputs": inputs,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(root)
    shutil.rmtree(kdir)
