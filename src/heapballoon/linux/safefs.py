"""File operations as root on paths another user may control: the one helper for all of them.

Root (``heapballoon attach``, the daemons) creates, removes and replaces files in directories
that another user can write: a JVM's working directory and ``/tmp``, a run dir taken from the
environment. A plain ``open``/``chown``/``chmod`` by path follows a symlink that user planted,
and root ends up handing a file of its choice to that user. Everything here works on a
directory *file descriptor* instead, and never follows a symlink at the last component:

* :func:`open_dir` / :func:`open_subdir`: ``O_DIRECTORY``, ``O_NOFOLLOW`` (a ``/proc/PID/cwd``
  or ``/proc/PID/root`` magic link is followed on purpose, with ``follow=True``).
* :func:`claim_file_at`: ``openat(O_CREAT|O_EXCL|O_NOFOLLOW)``, then ``fchown`` on the fd. A
  name already there is used only when it is a regular file of the wanted owner; anything else
  (a symlink, another user's file) is removed with ``unlinkat`` (which never follows) and the
  file made anew.
* :func:`remove_at`: ``unlinkat``, only while the name is still the file we made.
* :func:`fd_path`: ``/proc/self/fd/N/name``, to ``connect``/``bind`` a Unix socket in a directory
  held by fd (a swapped parent directory cannot redirect it).
* :func:`check_trusted_dir`: a directory a root process keeps state or sockets in must be owned
  by root (or us) and not writable by group or others, and so must every directory above it
  (sticky ones such as ``/tmp`` excepted); else :class:`UnsafePath`, one line.
* :func:`write_atomic` / :func:`read_small`: state files through a directory fd, ``O_NOFOLLOW``.
* :func:`bind_unix`: a listening socket made with its mode set before ``bind`` (no path chmod).

Failures are :class:`UnsafePath` (a :class:`~heapballoon.errors.KernelError`), one line each.
Standard library only (the guest imports ``linux/``).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Optional

from heapballoon.errors import KernelError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_MAX_SYMLINKS = 40


class UnsafePath(KernelError):
    """A path another user controls in a way a root process must not go along with."""


def _why(err: OSError) -> str:
    return err.strerror or errno.errorcode.get(err.errno or 0, str(err))


def trusted_uids() -> frozenset:
    """Owners whose files and directories we trust: root and ourselves."""
    return frozenset({0, os.geteuid()})


# ------------------------------------------------------------------ directory fds

def open_dir(path: str, *, follow: bool = False) -> int:
    """An fd of directory ``path``; its last component is not followed unless ``follow``
    (for the kernel's own magic links, ``/proc/PID/cwd``). The caller closes it."""
    try:
        return os.open(path, _DIR_FLAGS | (0 if follow else os.O_NOFOLLOW))
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise UnsafePath(f"{path} is a symlink; not following it") from err
        raise UnsafePath(f"cannot open directory {path}: {_why(err)}") from err


def open_subdir(dir_fd: int, name: str, shown: str = "") -> int:
    """An fd of directory ``name`` inside ``dir_fd``, never through a symlink."""
    _check_name(name)
    try:
        return os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as err:
        what = shown or name
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(f"{what} is not a directory (a symlink?); not following it") from err
        raise UnsafePath(f"cannot open directory {what}: {_why(err)}") from err


def lstat_at(dir_fd: int, name: str) -> Optional[os.stat_result]:
    """``fstatat(AT_SYMLINK_NOFOLLOW)`` of ``name`` in ``dir_fd``; None when there is none."""
    _check_name(name)
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UnsafePath(f"cannot stat {name}: {_why(err)}") from err


def fd_path(dir_fd: int, name: str) -> str:
    """A path naming ``name`` in the directory held by ``dir_fd`` (for connect/bind by path)."""
    _check_name(name)
    return f"/proc/self/fd/{dir_fd}/{name}"


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise UnsafePath(f"invalid file name {name!r}")


# ------------------------------------------------------------------ files in others' directories

def _same(a: os.stat_result, b: os.stat_result) -> bool:
    """The same file: an inode number freed by an unlink is soon reused, so the type counts too."""
    return (a.st_dev, a.st_ino, stat.S_IFMT(a.st_mode)) == (b.st_dev, b.st_ino, stat.S_IFMT(b.st_mode))


def claim_file_at(dir_fd: int, name: str, uid: int, gid: int, mode: int = 0o600,
                  shown: str = "") -> os.stat_result:
    """Make sure ``name`` in ``dir_fd`` is a regular file owned by ``uid``; its stat.

    Created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` and chowned through its fd. An existing regular
    file owned by ``uid`` (with one link) is kept as it is; a symlink, another user's file, a
    socket... is unlinked (``unlinkat`` removes the name, never what it points to) and the file
    made anew, once. UnsafePath when that fails too (a race we do not chase)."""
    what = shown or name
    for attempt in (1, 2):
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         mode, dir_fd=dir_fd)
        except FileExistsError:
            st = lstat_at(dir_fd, name)
            if st is None:
                continue  # removed meanwhile: try again
            if stat.S_ISREG(st.st_mode) and st.st_uid == uid and st.st_nlink == 1:
                return st
            if attempt == 2 or stat.S_ISDIR(st.st_mode):
                raise UnsafePath(f"{what} exists and is not a plain file of uid {uid}; not using it") from None
            _unlink_quiet(dir_fd, name)
            continue
        except OSError as err:
            raise UnsafePath(f"cannot create {what}: {_why(err)}") from err
        try:
            if os.fstat(fd).st_uid != uid:
                os.fchown(fd, uid, gid)
            return os.fstat(fd)
        except OSError as err:
            _unlink_quiet(dir_fd, name)
            raise UnsafePath(f"cannot hand {what} to uid {uid}: {_why(err)}") from err
        finally:
            os.close(fd)
    raise UnsafePath(f"{what} keeps changing under us; not using it")


def remove_at(dir_fd: int, name: str, expect: Optional[os.stat_result] = None) -> bool:
    """``unlinkat`` ``name`` (never a directory); with ``expect``, only while it is still that
    file. True when something was removed."""
    st = lstat_at(dir_fd, name)
    if st is None or stat.S_ISDIR(st.st_mode) or (expect is not None and not _same(st, expect)):
        return False
    return _unlink_quiet(dir_fd, name)


def _unlink_quiet(dir_fd: int, name: str) -> bool:
    try:
        os.unlink(name, dir_fd=dir_fd)
        return True
    except OSError:
        return False


# ------------------------------------------------------------------ directories a root process keeps

def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def check_trusted_dir(path: str, uids: Optional[frozenset] = None, missing_ok: bool = False) -> None:
    """UnsafePath unless ``path`` is a directory that only trusted users can change.

    Trusted: owned by one of ``uids`` (root and us), not writable by group or others; every
    directory above it owned by one of ``uids`` and either not group/other-writable or sticky
    (``/tmp``); every symlink on the way owned by one of ``uids``. ``..`` is resolved as the
    kernel does, after the symlinks before it. With ``missing_ok``, a path that does not exist
    (yet) passes when what does exist of it passes as the directories above it must."""
    uids = uids if uids is not None else trusted_uids()
    todo = _split(os.path.abspath(path))
    done: list[str] = []
    links = 0
    _check_dir_stat("/", _lstat("/"), uids, final=not todo)
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = "/" + "/".join(done + [part])
        if missing_ok and not os.path.lexists(here):
            return
        st = _lstat(here)
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                raise UnsafePath(f"{path}: too many symlinks")
            if st.st_uid not in uids:
                raise UnsafePath(f"{here} is a symlink owned by uid {st.st_uid}; a root daemon will not follow it")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo = _split(target) + todo
            continue
        done.append(part)
        _check_dir_stat(here, st, uids, final=not todo)


def _lstat(path: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as err:
        raise UnsafePath(f"cannot check {path}: {_why(err)}") from err


def _check_dir_stat(path: str, st: os.stat_result, uids: frozenset, final: bool) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is not a directory")
    if st.st_uid not in uids:
        raise UnsafePath(f"{path} is owned by uid {st.st_uid}, not root: refusing to use it as root")
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and (final or not st.st_mode & stat.S_ISVTX):
        raise UnsafePath(f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}): "
                         "refusing to use it as root")


def ensure_trusted_dir(path: str, mode: int = 0o755) -> None:
    """Create ``path`` (and its parents) with ``mode`` if missing; then, when we are root,
    UnsafePath unless it is trusted (:func:`check_trusted_dir`)."""
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
    except OSError as err:
        raise UnsafePath(f"cannot create directory {path}: {_why(err)}") from err
    if os.geteuid() == 0:
        check_trusted_dir(path)


# ------------------------------------------------------------------ state files and sockets

def _open_state_dir(directory: str) -> int:
    fd = open_dir(directory, follow=True)
    if os.geteuid() == 0:
        st = os.fstat(fd)
        try:
            _check_dir_stat(directory, st, trusted_uids(), final=True)
        except UnsafePath:
            os.close(fd)
            raise
    return fd


def write_atomic(directory: str, name: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``directory/name`` with ``data`` atomically (a reader sees old or new, never half):
    ``name.tmp`` made with ``O_EXCL|O_NOFOLLOW`` in the directory's fd, then ``renameat``. As
    root, the directory must be trusted (owned by root/us, not group/other-writable)."""
    fd = _open_state_dir(directory)
    tmp = name + ".tmp"
    try:
        remove_at(fd, tmp)  # a stale one (or anything planted there): the name, never its target
        _create_and_write(fd, tmp, data, mode, directory)
        try:
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError as err:
            _unlink_quiet(fd, tmp)
            raise UnsafePath(f"cannot replace {os.path.join(directory, name)}: {_why(err)}") from err
    finally:
        os.close(fd)


def write_new(directory: str, name: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``directory/name`` afresh, also in a directory others may write (a sticky /var/tmp):
    whatever is at ``name`` is unlinked (never followed), then the file is made with
    ``O_CREAT|O_EXCL|O_NOFOLLOW`` through the directory's fd, owned by us."""
    fd = open_dir(directory, follow=True)
    try:
        remove_at(fd, name)
        _create_and_write(fd, name, data, mode, directory)
    finally:
        os.close(fd)


def _create_and_write(dir_fd: int, name: str, data: bytes, mode: int, shown_dir: str) -> None:
    """Make ``name`` in ``dir_fd`` with ``O_CREAT|O_EXCL|O_NOFOLLOW`` and write ``data`` (the
    file is unlinked again if writing fails)."""
    try:
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as err:
        raise UnsafePath(f"cannot create {os.path.join(shown_dir, name)}: {_why(err)}") from err
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]
    except OSError as err:
        _unlink_quiet(dir_fd, name)
        raise UnsafePath(f"cannot write {os.path.join(shown_dir, name)}: {_why(err)}") from err
    finally:
        os.close(out)


def read_small(path: str, max_bytes: int = 1 << 20, owner: Optional[int] = None) -> bytes:
    """The bytes of regular file ``path``, opened with ``O_NOFOLLOW``; FileNotFoundError when it
    is missing, UnsafePath when it is a symlink, not a regular file, over ``max_bytes``, or
    (with ``owner``) owned by another uid."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symlink; not following it") from err
        raise UnsafePath(f"cannot read {path}: {_why(err)}") from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{path} is not a regular file")
        if owner is not None and st.st_uid != owner:
            raise UnsafePath(f"{path} is owned by uid {st.st_uid}, not {owner}")
        if st.st_size > max_bytes:
            raise UnsafePath(f"{path} is larger than {max_bytes} bytes")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > max_bytes:
                raise UnsafePath(f"{path} is larger than {max_bytes} bytes")
            chunks.append(chunk)
    finally:
        os.close(fd)


def bind_unix(path: str, mode: int = 0o600) -> socket.socket:
    """A listening Unix stream socket at ``path``, its file mode exactly ``mode``.

    The parent directory is created if missing and, as root, must be trusted. A stale socket
    (or a symlink) at ``path`` is removed with ``unlinkat``; any other file there is refused.
    The mode is set on the socket before ``bind`` (the kernel takes the new node's mode from
    it, less the umask); bits the umask took are put back through an ``O_PATH|O_NOFOLLOW`` fd
    of the node just made, never by following ``path``."""
    directory, name = os.path.split(os.path.abspath(path))
    ensure_trusted_dir(directory)
    dfd = open_dir(directory, follow=True)
    try:
        st = lstat_at(dfd, name)
        if st is not None:
            if not (stat.S_ISSOCK(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise UnsafePath(f"{path} exists and is not a socket; not replacing it")
            _unlink_quiet(dfd, name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.fchmod(sock.fileno(), mode)
            sock.bind(fd_path(dfd, name))
            _fix_mode(dfd, name, mode)
            sock.listen(128)
        except OSError as err:
            sock.close()
            raise UnsafePath(f"cannot listen on {path}: {_why(err)}") from err
        except BaseException:
            sock.close()
            raise
        return sock
    finally:
        os.close(dfd)


def _fix_mode(dir_fd: int, name: str, mode: int) -> None:
    node = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(node)
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, "replaced by something that is not our socket")
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(f"/proc/self/fd/{node}", mode)  # the node itself, through its O_PATH fd
    finally:
        os.close(node)
