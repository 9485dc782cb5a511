"""Copies of the agent for a JVM that cannot read ours (agent/stage.py, linux/safetree.py):
the permission rule, the staging directory in a directory others write (real files, real
symlinks; the hostile cases chown to nobody, so they need root), and the socket check seen
from our own process (its /proc/PID/root is our /).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from heapballoon.agent import stage
from heapballoon.agent.stage import READ, SEARCH, WRITE, Creds, may
from heapballoon.errors import AttachError
from heapballoon.linux import safetree
from heapballoon.linux.procfs import ProcFS

NOBODY = 65534
FILES = {"heapballoon-agent.jar": b"PK jar bytes", "libheapballoon.so": b"\x7fELF lib bytes"}
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files of nobody")


def st(mode: int, uid: int = 0, gid: int = 0):
    return SimpleNamespace(st_mode=mode, st_uid=uid, st_gid=gid)


DIR, FILE = stat.S_IFDIR, stat.S_IFREG
ME = Creds(1000, frozenset({1000, 50}))


# ---------------------------------------------------------------- the permission rule (pure)

@pytest.mark.parametrize("chain, want, expected", [
    ([st(DIR | 0o755), st(FILE | 0o644)], READ, True),                      # world-readable
    ([st(DIR | 0o755), st(DIR | 0o700), st(FILE | 0o644)], READ, False),    # root's 0700 home on the way
    ([st(DIR | 0o755), st(DIR | 0o711), st(FILE | 0o644)], READ, True),     # search without listing is enough
    ([st(DIR | 0o755), st(FILE | 0o600)], READ, False),                     # root's file
    ([st(DIR | 0o755), st(FILE | 0o600, uid=1000)], READ, True),            # its own file
    ([st(DIR | 0o755), st(FILE | 0o066, uid=1000)], READ, False),           # owner bits rule the owner
    ([st(DIR | 0o755), st(FILE | 0o640, gid=50)], READ, True),              # a supplementary group
    ([st(DIR | 0o755), st(FILE | 0o604, gid=50)], READ, False),             # group bits rule a member
    ([st(DIR | 0o750, gid=7), st(FILE | 0o644)], READ, False),              # not in the directory's group
    ([st(DIR | 0o755), st(stat.S_IFSOCK | 0o600)], WRITE, False),           # a root-only socket
    ([st(DIR | 0o755), st(stat.S_IFSOCK | 0o666)], WRITE, True),
    ([st(DIR | 0o755), st(stat.S_IFSOCK | 0o644)], WRITE, False),
    ([], READ, False),
])
def test_may_follows_owner_then_group_then_other(chain, want, expected):
    assert may(ME, chain, want) is expected


def test_a_superuser_may_everything_and_only_a_superuser():
    chain = [st(DIR | 0o700), st(FILE | 0o000)]
    assert may(Creds(0, frozenset({0}), superuser=True), chain, READ)
    assert not may(Creds(0, frozenset({0}), superuser=False), chain, READ)  # root of a container's userns
    assert may(Creds(0, frozenset({0})), [st(DIR | 0o700), st(FILE | 0o600)], READ)  # owner bits


def test_search_bits_are_what_directories_need():
    assert not may(ME, [st(DIR | 0o744), st(FILE | 0o644)], READ)
    assert SEARCH == 1


def test_stage_name_is_one_per_set_of_bytes():
    a = stage.stage_name(FILES)
    assert a.startswith(stage.STAGE_PREFIX) and len(a) == len(stage.STAGE_PREFIX) + 16
    assert stage.stage_name(dict(reversed(list(FILES.items())))) == a
    assert stage.stage_name({**FILES, "libheapballoon.so": b"other"}) != a


# ---------------------------------------------------------------- staging in a directory others write

@pytest.fixture
def tmpdir_fd(tmp_path):
    """A sticky world-writable directory like /tmp (as a dir fd), and a root-only "vault"."""
    t = tmp_path / "tmp"
    t.mkdir()
    t.chmod(0o1777)
    tmp_path.chmod(0o755)
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    (vault / "secret").write_text("root only\n")
    (vault / "secret").chmod(0o600)
    fd = os.open(t, os.O_RDONLY | os.O_DIRECTORY)
    yield t, fd, vault
    os.close(fd)


def listing(d: Path) -> dict:
    return {p.name: (p.lstat().st_uid, stat.S_IMODE(p.lstat().st_mode), p.read_bytes() if p.is_file() else None)
            for p in d.iterdir()}


def assert_staged(d: Path) -> None:
    s = d.lstat()
    assert stat.S_ISDIR(s.st_mode) and s.st_uid == os.geteuid() and stat.S_IMODE(s.st_mode) == 0o755
    assert sorted(p.name for p in d.iterdir()) == sorted(FILES)
    for name, data in FILES.items():
        f = (d / name).lstat()
        assert stat.S_ISREG(f.st_mode) and stat.S_IMODE(f.st_mode) == 0o644 and f.st_uid == os.geteuid()
        assert (d / name).read_bytes() == data


def test_stage_makes_a_directory_of_ours_and_reuses_it(tmpdir_fd):
    t, fd, _ = tmpdir_fd
    name = stage.stage_name(FILES)
    assert safetree.stage_copies(fd, name, FILES) == name
    assert_staged(t / name)
    inodes = {p.name: p.stat().st_ino for p in (t / name).iterdir()}
    assert safetree.stage_copies(fd, name, FILES) == name  # a second attach: the same files, untouched
    assert {p.name: p.stat().st_ino for p in (t / name).iterdir()} == inodes


def test_a_damaged_copy_in_our_directory_is_replaced(tmpdir_fd):
    t, fd, _ = tmpdir_fd
    name = stage.stage_name(FILES)
    safetree.stage_copies(fd, name, FILES)
    (t / name / "heapballoon-agent.jar").write_bytes(b"half")
    (t / name / "libheapballoon.so").chmod(0o666)
    assert safetree.stage_copies(fd, name, FILES) == name
    assert_staged(t / name)


@needs_root
@pytest.mark.parametrize("planted", ["symlink to a root-only dir", "symlink to a root file", "nobody's file",
                                     "nobody's directory", "a group-writable root directory"])
def test_what_another_user_planted_at_the_name_is_never_followed_or_used(tmpdir_fd, planted):
    t, fd, vault = tmpdir_fd
    name = stage.stage_name(FILES)
    at = t / name
    if planted.startswith("symlink"):
        os.symlink(vault if "dir" in planted else vault / "secret", at)
        os.chown(at, NOBODY, NOBODY, follow_symlinks=False)
    elif planted == "nobody's file":
        at.write_bytes(b"nobody's")
        os.chown(at, NOBODY, NOBODY)
    else:
        at.mkdir()
        for fname, data in FILES.items():  # the right bytes even: still not ours
            (at / fname).write_bytes(data)
            (at / fname).chmod(0o644)
        if planted == "nobody's directory":
            for p in [at, *at.iterdir()]:
                os.chown(p, NOBODY, NOBODY)
        else:
            at.chmod(0o775)
    before_vault = listing(vault)
    before_at = at.lstat()
    used = safetree.stage_copies(fd, name, FILES)
    assert used != name and used.startswith(name + "-")
    assert_staged(t / used)
    assert listing(vault) == before_vault  # nothing written through the symlink
    s = vault.stat()
    assert (s.st_uid, stat.S_IMODE(s.st_mode)) == (0, 0o700)
    after = at.lstat()  # the planted entry is left as it was
    assert (after.st_ino, after.st_uid, after.st_mode) == (before_at.st_ino, before_at.st_uid, before_at.st_mode)
    assert safetree.stage_copies(fd, name, FILES) == used  # the next attach reuses that directory


@needs_root
def test_a_fresh_name_of_another_user_is_not_reused(tmpdir_fd):
    t, fd, vault = tmpdir_fd
    name = stage.stage_name(FILES)
    (t / name).write_bytes(b"nobody's")
    os.chown(t / name, NOBODY, NOBODY)
    decoy = t / f"{name}-00000000"
    os.symlink(vault, decoy)
    os.chown(decoy, NOBODY, NOBODY, follow_symlinks=False)
    used = safetree.stage_copies(fd, name, FILES)
    assert used not in (name, decoy.name)
    assert_staged(t / used)
    assert sorted(p.name for p in vault.iterdir()) == ["secret"]


def test_lstat_chain_stops_at_a_symlink_and_at_a_missing_name(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    os.symlink(tmp_path / "a", tmp_path / "link")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(safetree.lstat_chain(fd, "a/b/f")) == 4
        chain = safetree.lstat_chain(fd, "link/b/f")
        assert len(chain) == 2 and stat.S_ISLNK(chain[-1].st_mode)
        assert len(safetree.lstat_chain(fd, "a/nope/f")) == 2
        assert len(safetree.lstat_chain(fd, "a/../a/b/f")) == 2  # ".." is not walked
    finally:
        os.close(fd)


# ---------------------------------------------------------------- what a process sees (our own: root is /)

@pytest.fixture
def open_tmp():
    """A root-owned 0755 directory in /tmp (pytest's tmp_path is 0700: nobody sees nothing there)."""
    d = Path(tempfile.mkdtemp(prefix="hb-stage-unit-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@needs_root
def test_sees_our_file_follows_the_jvm_users_permissions(open_tmp):
    me, procfs, tmp_path = os.getpid(), ProcFS(), open_tmp
    open_dir, closed_dir = tmp_path / "open", tmp_path / "closed"
    open_dir.mkdir(mode=0o755)
    closed_dir.mkdir(mode=0o700)
    for d in (open_dir, closed_dir):
        (d / "agent.jar").write_bytes(b"jar")
        (d / "agent.jar").chmod(0o644)
    nobody = Creds(NOBODY, frozenset({NOBODY}))
    assert stage.sees_our_file(procfs, me, str(open_dir / "agent.jar"), nobody) is True
    assert stage.sees_our_file(procfs, me, str(closed_dir / "agent.jar"), nobody) is False
    assert stage.sees_our_file(procfs, me, str(closed_dir / "agent.jar"), stage.jvm_creds(procfs, me)) is True
    assert stage.sees_our_file(procfs, me, str(closed_dir / "missing.jar"), nobody) is False


@needs_root
def test_a_socket_the_jvm_user_may_not_connect_to_is_one_line_error(open_tmp):
    me, procfs, tmp_path = os.getpid(), ProcFS(), open_tmp
    path = tmp_path / "hb.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    try:
        nobody = Creds(NOBODY, frozenset({NOBODY}))
        os.chmod(path, 0o600)
        with pytest.raises(AttachError, match="may not connect to the driver socket .*--socket-mode 666") as err:
            stage.check_socket(procfs, me, str(path), nobody)
        assert "\n" not in str(err.value)
        os.chmod(path, 0o666)
        stage.check_socket(procfs, me, str(path), nobody)
        os.chmod(path, 0o600)
        stage.check_socket(procfs, me, str(path), Creds(0, frozenset({0}), superuser=True))
        stage.check_socket(procfs, me, str(tmp_path / "no-daemon-yet.sock"), nobody)  # the agent keeps trying
    finally:
        s.close()
