"""Device nodes under ``/dev`` that heapballoon looks at (the root is overridable for tests).

Owns: whether this host's ``/dev/kvm`` is there and usable by us (read and write), which is
what vm/accel.py needs before it probes KVM. Standard library only.
"""

from __future__ import annotations

import os

DEV_ROOT = "/dev"


def kvm_usable(dev_root: str = DEV_ROOT) -> bool:
    """``dev_root/kvm`` exists and this process may open it read-write."""
    return os.access(os.path.join(dev_root, "kvm"), os.R_OK | os.W_OK)


def kvm_closed_to(uid: int, gids: list[int], dev_root: str = DEV_ROOT) -> str | None:
    """Why ``dev_root/kvm`` is closed to a process of ``uid`` and ``gids`` (read-write, judged
    from its owner, group and mode bits as the kernel would for a non-root user), or None when
    it is open to it or missing. A host without udev leaves it root:root 0600, where udev's rule
    makes it root:kvm 0660."""
    import grp
    import pwd
    import stat

    path = os.path.join(dev_root, "kvm")
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if uid == 0:
        return None
    if st.st_uid == uid:
        bits = mode >> 6
    elif st.st_gid in gids:
        bits = mode >> 3
    else:
        bits = mode
    if bits & 0o6 == 0o6:
        return None
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{path} is {owner}:{group} {mode:04o}"
