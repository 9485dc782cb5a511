"""The guest image (VM mode): a Debian cloud kernel, a small initramfs and a read-only root disk.

Everything comes from Debian packages (``apt-get download`` + ``dpkg-deb -x``) and the host
JDK; nothing else is downloaded. The root disk holds busybox, glibc, Debian's python3.11
runtime, a ``jlink``ed JRE, the heapballoon package source and the Java agent; every VM of an
image attaches it read-only, so its pages are evictable page cache in the guest and shared
through the host page cache. The build runs as named stages, one module each (see
:mod:`heapballoon.vm.image.build`): ``debs``, ``keys``, ``kmods``, ``rootfs``, ``ext4``,
``cpio``/``initramfs``; ``cache`` owns the cache directory and ``progress`` the output.

Importing this package is cheap (standard library only; rich is loaded when a build shows
progress on a TTY). The public API is re-exported here.
"""

from heapballoon.vm.image.build import build_image
from heapballoon.vm.image.cache import Image, cache_root, cached_image, debs_dir, images_dir

__all__ = ["Image", "build_image", "cache_root", "cached_image", "debs_dir", "images_dir"]
