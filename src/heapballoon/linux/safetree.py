"""Walks and a directory of copies, as root, in a file tree another user (or a container) controls.

Built on :mod:`heapballoon.linux.safefs` (its directory fds and ``O_NOFOLLOW`` rules), for two
jobs of ``heapballoon attach`` in a JVM's own mount namespace (``/proc/PID/root``):

* :func:`lstat_chain`: what each component of a path is, seen from a directory fd, never
  following a symlink (an absolute symlink inside a container would be resolved in *our*
  namespace by a plain ``stat``, and lie).
* :func:`stage_copies`: a directory of ours (owned by us, mode 0755, its files 0644, made with
  ``mkdirat`` and ``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to fds, modes set with ``fchmod``) in a
  directory others may write, such as a container's ``/tmp``. An entry of that name that is not
  exactly such a directory of ours (a symlink, a file, another user's directory, a
  group/other-writable one) is never followed, entered or trusted: the copies go into a
  directory ``<name>-<8 hex>`` of ours instead (one made earlier, checked likewise, else a fresh
  one). Inside our directory, a file is kept only when it is a
  regular file of ours with the wanted bytes and mode; anything else is replaced with
  ``renameat`` from a new file (never written through).

Standard library only (the guest imports ``linux/``).
"""

from __future__ import annotations

import os
import secrets
import stat

from heapballoon.linux.safefs import UnsafePath, lstat_at, open_subdir

DIR_MODE = 0o755
FILE_MODE = 0o644
_FRESH_TRIES = 8


def _why(err: OSError) -> str:
    return err.strerror or str(err)


def lstat_chain(dir_fd: int, path: str) -> list[os.stat_result]:
    """``[fstat(dir_fd), lstat(c1), lstat(c2), ...]`` for the components of ``path`` below
    ``dir_fd``, opening each directory with ``O_NOFOLLOW``. It stops after the first component
    that is missing (left out), that is a symlink or not a directory (kept), that cannot be
    entered, or at ``..``: the chain is complete only when it has one entry per component, plus
    one, and none of them is a symlink."""
    parts = [p for p in path.split("/") if p and p != "."]
    fd = os.dup(dir_fd)
    try:
        chain = [os.fstat(fd)]
        for i, part in enumerate(parts):
            if part == "..":
                return chain
            st = lstat_at(fd, part)
            if st is None:
                return chain
            chain.append(st)
            if i == len(parts) - 1 or not stat.S_ISDIR(st.st_mode):
                return chain
            try:
                sub = open_subdir(fd, part)
            except UnsafePath:
                return chain
            os.close(fd)
            fd = sub
        return chain
    finally:
        os.close(fd)


def _ours(st: os.stat_result) -> bool:
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _open_own_dir(parent_fd: int, name: str, create: bool = True) -> int | None:
    """An fd of directory ``name`` when it is ours (made now, or earlier by us); else None."""
    try:
        if create:
            os.mkdir(name, 0o700, dir_fd=parent_fd)  # mkdirat: never follows a symlink at name
    except FileExistsError:
        pass
    except OSError as err:
        raise UnsafePath(f"cannot create directory {name}: {_why(err)}") from err
    st = lstat_at(parent_fd, name)
    if st is None or not _ours(st):
        return None
    try:
        fd = open_subdir(parent_fd, name)
    except UnsafePath:
        return None
    fst = os.fstat(fd)
    if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not _ours(fst):
        os.close(fd)
        return None
    return fd


def _holds(dir_fd: int, name: str, data: bytes) -> bool:
    """True when ``name`` is a regular file of ours, mode 0644, with exactly ``data``."""
    st = lstat_at(dir_fd, name)
    if (st is None or not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
            or stat.S_IMODE(st.st_mode) != FILE_MODE or st.st_size != len(data)):
        return False
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        chunks, total = [], 0
        while total <= len(data):
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks) == data
    finally:
        os.close(fd)


def _put(dir_fd: int, name: str, data: bytes, shown: str) -> None:
    """``name`` := ``data`` (mode 0644) by ``renameat`` of a new ``O_EXCL|O_NOFOLLOW`` file."""
    tmp = f".{name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as err:
        raise UnsafePath(f"cannot create a file in {shown}: {_why(err)}") from err
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as err:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise UnsafePath(f"cannot write {shown}/{name}: {_why(err)}") from err


def _fresh_names(parent_fd: int, name: str) -> list[str]:
    """The ``name-<8 hex>`` entries in ``parent_fd`` (the fresh directories made before)."""
    try:
        entries = os.listdir(parent_fd)
    except OSError:
        return []
    tail = len(name) + 1 + 8
    return sorted(e for e in entries if len(e) == tail and e.startswith(name + "-")
                  and all(c in "0123456789abcdef" for c in e[len(name) + 1:]))


def stage_copies(parent_fd: int, name: str, files: dict[str, bytes], shown: str = "") -> str:
    """Directory ``name`` in ``parent_fd`` holding ``files`` (file name → bytes), owned by us:
    mode 0755, files 0644. Returns the directory's name: ``name``, or ``name-<random>`` when
    ``name`` is taken by anything that is not exactly a directory of ours. UnsafePath, one
    line, when no directory can be made or written."""
    shown = shown or name
    used = name
    fd = _open_own_dir(parent_fd, name)
    if fd is None:  # taken: an earlier fresh directory of ours, if there is one
        for entry in _fresh_names(parent_fd, name):
            fd = _open_own_dir(parent_fd, entry, create=False)
            if fd is not None:
                used = entry
                break
    tries = 0
    while fd is None:
        tries += 1
        if tries > _FRESH_TRIES:
            raise UnsafePath(f"{shown} is taken by something not ours, and no fresh directory could be made next to it")
        used = f"{name}-{secrets.token_hex(4)}"
        if lstat_at(parent_fd, used) is None:
            fd = _open_own_dir(parent_fd, used)
    where = f"{shown.rsplit('/', 1)[0]}/{used}" if "/" in shown else used
    try:
        for fname, data in files.items():
            if not _holds(fd, fname, data):
                _put(fd, fname, data, where)
        if stat.S_IMODE(os.fstat(fd).st_mode) != DIR_MODE:
            os.fchmod(fd, DIR_MODE)
    except OSError as err:
        raise UnsafePath(f"cannot prepare {where}: {_why(err)}") from err
    finally:
        os.close(fd)
    return used
