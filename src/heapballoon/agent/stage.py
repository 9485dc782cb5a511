"""What a JVM sees of the agent and of the driver's socket, and copies of the agent it can read.

``heapballoon attach`` hands the JVM paths: the agent jar, the native library (``native=`` in
the agent options) and the driver's socket (``socket=``). The JVM resolves them in its own mount
namespace, with its own uid. Two cases broke that (issue 18):

* **another user's JVM**: as root in a development checkout the jar is in root's cache
  (``~/.cache/heapballoon``, under 0700 ``/root``), which ``nobody`` cannot read;
* **a container**: its own mount namespace, a private ``/tmp``; our paths are not there at all.

So, as jattach and async-profiler do: when the JVM would not open *our very file* (same device
and inode, every directory on the way searchable, the file readable, for the JVM's uid and
groups, walked inside ``/proc/PID/root`` without following symlinks), both files are copied into
the JVM's ``/tmp``, into ``heapballoon-agent-<hash of their bytes>``: a directory owned by root,
mode 0755, files 0644, made through :mod:`heapballoon.linux.safetree` (nothing there is
followed or trusted unless it is exactly ours). The JVM gets those in-namespace paths. The copy
stays: the JVM opens the jar and loads the library when the agent starts, and one directory per
agent build is reused by every later attach in that namespace.

The socket is not copied: it must be the same directory in the JVM's namespace (a container
needs the driver's directory mounted in, see docs/containers.md), and a socket the JVM's user
cannot connect to is an error here, one line, not an agent that retries forever.

The permission rule is :func:`may` (pure): owner, else group, else other bits; superuser only
for uid 0 in our own user namespace (root in a container's user namespace is not root for our
files). ACLs are not read: at worst a file an ACL lets the JVM read is copied anyway.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from heapballoon.errors import AttachError, KernelError, NotAJVM
from heapballoon.linux import safefs, safetree
from heapballoon.linux.procfs import ProcessGone, ProcFS

log = logging.getLogger("heapballoon.agent")

READ, WRITE, SEARCH = 4, 2, 1
STAGE_PREFIX = "heapballoon-agent-"
CONTAINERS_DOC = "docs/containers.md"


@dataclass(frozen=True)
class Creds:
    """Who a JVM is, for file permissions: its euid, its egid plus supplementary groups, and
    whether it overrides permissions (uid 0 in our user namespace)."""

    uid: int
    gids: frozenset
    superuser: bool = False


def may(creds: Creds, chain: Sequence[os.stat_result], want: int) -> bool:
    """Whether ``creds`` reach the last of ``chain`` (stats of ``/``, each directory, the
    file) with permission bits ``want`` (READ, WRITE): every entry before it must grant
    SEARCH. The owner's bits apply to the owner, else the group's to a member, else the
    others'; a superuser may everything."""
    if not chain:
        return False
    if creds.superuser:
        return True
    return all(_grants(creds, st, SEARCH) for st in chain[:-1]) and _grants(creds, chain[-1], want)


def _grants(creds: Creds, st: os.stat_result, bits: int) -> bool:
    if st.st_uid == creds.uid:
        shift = 6
    elif st.st_gid in creds.gids:
        shift = 3
    else:
        shift = 0
    return (st.st_mode >> shift) & bits == bits


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def jvm_creds(procfs: ProcFS, pid: int) -> Creds:
    euid, egid = procfs.euid_egid(pid)
    same_userns = procfs.namespace(pid, "user") == procfs.namespace("self", "user")
    return Creds(euid, frozenset({egid, *procfs.groups(pid)}), superuser=euid == 0 and same_userns)


def _chain_in(procfs: ProcFS, pid: int, path: str) -> Optional[list[os.stat_result]]:
    """The lstat chain of absolute ``path`` inside PID's root; None when we cannot look."""
    try:
        root = safefs.open_dir(procfs.path(pid, "root"), follow=True)  # the kernel's magic link
    except safefs.UnsafePath:
        return None  # no ptrace access (not root), or gone
    try:
        return safetree.lstat_chain(root, path)
    finally:
        os.close(root)


def _complete(chain: Sequence[os.stat_result], path: str) -> bool:
    return len(chain) == len(_parts(path)) + 1 and not any(stat.S_ISLNK(st.st_mode) for st in chain)


def sees_our_file(procfs: ProcFS, pid: int, path: str, creds: Creds) -> bool:
    """True when JVM ``pid`` would open absolute ``path`` (no symlinks in our namespace) as our
    very file, and may read it; also when we cannot look (the JVM then says why)."""
    chain = _chain_in(procfs, pid, path)
    if chain is None:
        return True
    if not _complete(chain, path):
        return False
    ours, theirs = os.stat(path), chain[-1]
    return ((theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino) and stat.S_ISREG(theirs.st_mode)
            and may(creds, chain, READ))


def check_socket(procfs: ProcFS, pid: int, socket_path: str, creds: Creds) -> None:
    """AttachError, one line, when JVM ``pid`` will not reach the driver's socket: its
    directory is missing or another one in the JVM's mount namespace, or the JVM's user may not
    connect. Silent when we cannot tell (no access, a symlink on the way inside, no driver
    running yet: the agent keeps retrying until one listens)."""
    path = os.path.abspath(socket_path)
    directory = os.path.dirname(path)
    try:
        ours_dir = os.stat(directory)
    except OSError:
        return
    chain = _chain_in(procfs, pid, path)
    if chain is None or any(stat.S_ISLNK(st.st_mode) for st in chain):
        return
    n = len(_parts(path))
    hint = f"mount {directory} into its container (see {CONTAINERS_DOC})"
    if len(chain) < n:
        raise AttachError(f"the driver socket {path} is not visible to PID {pid}: no {directory} in its "
                          f"mount namespace; {hint}")
    seen = chain[n - 1]
    if (seen.st_dev, seen.st_ino) != (ours_dir.st_dev, ours_dir.st_ino):
        raise AttachError(f"the driver socket {path} is not visible to PID {pid}: its {directory} is "
                          f"another directory (another mount namespace); {hint}")
    try:
        ours = os.stat(path)
    except OSError:
        return  # no driver listening yet
    if not stat.S_ISSOCK(ours.st_mode) or len(chain) != n + 1:
        return
    if not may(creds, chain, WRITE):
        raise AttachError(f"PID {pid} runs as uid {creds.uid}, which may not connect to the driver socket {path} "
                          f"(mode {stat.S_IMODE(ours.st_mode):o}, uid {ours.st_uid}): start the daemon with "
                          "--socket-mode 666 (its directory must let that user search it)")


def stage_name(files: dict[str, bytes]) -> str:
    """``heapballoon-agent-<16 hex>``: one name per set of file names and bytes (per build)."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name] + b"\0")
    return STAGE_PREFIX + h.hexdigest()[:16]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:  # our own artifact, in our cache or the package
            return f.read()
    except OSError as err:
        raise AttachError(f"cannot read {path}: {err.strerror or err}") from err


def stage(procfs: ProcFS, pid: int, paths: Sequence[str]) -> str:
    """Copy ``paths`` into ``/tmp/heapballoon-agent-<hash>`` of PID's mount namespace (reused
    when already there, exactly ours); that directory as the JVM sees it."""
    files = {os.path.basename(p): _read(p) for p in paths}
    name = stage_name(files)
    try:
        root = safefs.open_dir(procfs.path(pid, "root"), follow=True)
        try:
            tmp = safefs.open_subdir(root, "tmp", f"/tmp of PID {pid}")
        finally:
            os.close(root)
        try:
            used = safetree.stage_copies(tmp, name, files, f"/tmp/{name} of PID {pid}")
        finally:
            os.close(tmp)
    except safefs.UnsafePath as err:
        raise AttachError(f"cannot copy the agent for PID {pid}, which cannot read ours: {err}") from None
    if used != name:
        log.warning("/tmp/%s of PID %d is not ours: not using it; the copies are in /tmp/%s", name, pid, used)
    return f"/tmp/{used}"


def for_jvm(pid: int, jar: Path, native: Optional[Path], socket_path: str,
            procfs: Optional[ProcFS] = None) -> tuple[str, Optional[str], bool]:
    """The agent jar and native library paths to hand JVM ``pid`` (ours, or copies in its
    /tmp), and whether they are copies. Checks first that the JVM will reach ``socket_path``.
    NotAJVM / AttachError, one line."""
    procfs = procfs or ProcFS()
    try:
        if not procfs.exists(pid):
            raise NotAJVM(f"no process with PID {pid}")
        if not procfs.is_jvm(pid):
            raise NotAJVM(f"PID {pid} is not a Java virtual machine")
        creds = jvm_creds(procfs, pid)
        check_socket(procfs, pid, socket_path, creds)
        real = [os.path.realpath(p) for p in ([jar] if native is None else [jar, native])]
        if all(sees_our_file(procfs, pid, p, creds) for p in real):  # the paths checked, symlinks resolved
            return real[0], None if native is None else real[1], False
        where = stage(procfs, pid, real)
    except ProcessGone:
        raise NotAJVM(f"no process with PID {pid}") from None
    except KernelError as err:
        raise AttachError(f"cannot attach to PID {pid}: {err}") from None
    names = [os.path.basename(p) for p in real]
    return f"{where}/{names[0]}", f"{where}/{names[1]}" if native is not None else None, True
