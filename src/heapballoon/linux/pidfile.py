"""Pid files another root daemon wrote (libvirt's ``/run/libvirt/qemu/<domain>.pid``), read as root.

Owns reading one pid from a file only root can have written: the directory and the file are
opened with ``O_NOFOLLOW`` (the file ``openat`` the directory's fd), both must belong to root
and be writable by no one else, and the file must be a small regular file holding one positive
integer. Anything else is :class:`~heapballoon.errors.KernelError`, one line, so a pid a local
user planted is never taken for libvirt's.
"""

from __future__ import annotations

import os
import stat

from heapballoon.errors import KernelError

MAX_PIDFILE_BYTES = 64


def _check_owner(st: os.stat_result, what: str) -> None:
    if st.st_uid != 0:
        raise KernelError(f"{what} belongs to uid {st.st_uid}, not root")
    if st.st_mode & 0o022:
        raise KernelError(f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def read_root_pid(directory: str, name: str) -> int:
    """The pid in ``directory/name``, both root's and written by root only."""
    if "/" in name or name in ("", ".", ".."):
        raise KernelError(f"bad pid file name {name!r}")
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise KernelError(f"cannot open {directory}: {err.strerror or err}") from err
    try:
        _check_owner(os.fstat(dfd), directory)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as err:
            raise KernelError(f"cannot open {directory}/{name}: {err.strerror or err}") from err
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KernelError(f"{directory}/{name} is not a regular file")
            _check_owner(st, f"{directory}/{name}")
            data = os.read(fd, MAX_PIDFILE_BYTES + 1)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
    text = data.decode("ascii", "replace").strip()
    if len(data) > MAX_PIDFILE_BYTES or not text.isdigit() or int(text) <= 0:
        raise KernelError(f"{directory}/{name} does not hold a pid")
    return int(text)
