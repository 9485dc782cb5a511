"""The read-only root disk: the staged tree written as a journal-less ext4 image (``mke2fs -d``)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from heapballoon.vm.image.progress import run

ROOTDISK_LABEL = "hbroot"


def make_rootdisk(root: Path, img: Path, key: str) -> int:
    """Write ``root`` as a journal-less ext4 image at ``img`` (mke2fs -d); bytes of file data in it.

    No root privileges or loop devices: mke2fs copies the tree itself. Sized to the tree plus
    ~10 % and 16 MiB (metadata, and room nobody writes to: the guest mounts it read-only).
    Files keep their owners (all root when the image is built as root).
    """
    data = 0
    blocks = 0
    inodes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        inodes += 1 + len(filenames) + sum(1 for d in dirnames if os.path.islink(os.path.join(dirpath, d)))
        blocks += 1
        for f in filenames:
            st = os.lstat(os.path.join(dirpath, f))
            if os.path.isfile(os.path.join(dirpath, f)) and not os.path.islink(os.path.join(dirpath, f)):
                data += st.st_size
            blocks += (st.st_size + 4095) // 4096
    if os.geteuid() == 0:
        for dirpath, dirnames, filenames in os.walk(root):
            for n in [dirpath] + [os.path.join(dirpath, x) for x in filenames + dirnames]:
                st = os.lstat(n)
                if st.st_uid or st.st_gid:
                    os.lchown(n, 0, 0)
    size_mib = (blocks * 4096 * 11 // 10 >> 20) + 16
    uuid = hashlib.sha256(key.encode()).hexdigest()[:32]
    uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:32]}"
    mke2fs = shutil.which("mke2fs") or shutil.which("mkfs.ext4") or "/sbin/mke2fs"
    with open(img, "wb") as f:
        f.truncate(size_mib << 20)
    run([mke2fs, "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-N", str(inodes + 2048),
          "-O", "^has_journal,^resize_inode", "-L", ROOTDISK_LABEL, "-U", uuid,
          "-E", f"hash_seed={uuid},root_owner=0:0", "-d", str(root), str(img)],
         "mke2fs -d (e2fsprogs)")
    e2fsck = shutil.which("e2fsck") or shutil.which("fsck.ext4")
    if e2fsck:
        run([e2fsck, "-fn", str(img)], "e2fsck -fn of the root disk")
    return data
