"""linux/safefs.py: root's file operations in directories another user controls (issue 14
rows 1 and 17). Real files, symlinks and sockets in tmp dirs; "another user" is nobody (65534),
so the ownership cases need root and are skipped without it. Races are simulated by planting
the file the racing user would have planted, at the moment it matters.
"""

from __future__ import annotations

import os
import socket
import stat

import pytest

from heapballoon.linux import safefs
from heapballoon.linux.safefs import UnsafePath

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (files of another user)")


@pytest.fixture
def secret(tmp_path):
    """A root-only file (0600) that a planted symlink points at."""
    vault = tmp_path / "vault"
    vault.mkdir(mode=0o700)
    f = vault / "secret"
    f.write_text("root only\n")
    f.chmod(0o600)
    return f


@pytest.fixture
def userdir(tmp_path):
    """A directory another user (nobody) owns and writes: its cwd, or like /tmp."""
    d = tmp_path / "user"
    d.mkdir()
    if os.geteuid() == 0:
        os.chown(d, NOBODY, NOBODY)
    return d


def untouched(f) -> bool:
    st = f.stat()
    return (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o600) and f.read_text() == "root only\n"


def planted_symlink(d, name, target) -> None:
    os.symlink(target, d / name)
    if os.geteuid() == 0:
        os.chown(d / name, NOBODY, NOBODY, follow_symlinks=False)


# ------------------------------------------------------------------ claim_file_at / remove_at

@as_root
def test_claim_makes_a_file_of_the_wanted_owner(userdir):
    fd = safefs.open_dir(str(userdir))
    try:
        st = safefs.claim_file_at(fd, ".attach_pid1", NOBODY, NOBODY)
    finally:
        os.close(fd)
    made = (userdir / ".attach_pid1").lstat()
    assert (made.st_uid, made.st_gid, stat.S_IMODE(made.st_mode)) == (NOBODY, NOBODY, 0o600)
    assert (st.st_ino, st.st_uid) == (made.st_ino, NOBODY)


@pytest.mark.parametrize("target_kind", ["file", "missing"])
def test_claim_replaces_a_planted_symlink_and_never_follows_it(userdir, secret, target_kind):
    target = secret if target_kind == "file" else secret.parent / "not-there"
    planted_symlink(userdir, "trigger", target)
    fd = safefs.open_dir(str(userdir))
    try:
        st = safefs.claim_file_at(fd, "trigger", NOBODY if os.geteuid() == 0 else os.geteuid(), os.getegid())
    finally:
        os.close(fd)
    assert untouched(secret)
    assert not (secret.parent / "not-there").exists()  # a dangling link was not created through
    assert stat.S_ISREG((userdir / "trigger").lstat().st_mode)
    assert st.st_ino == (userdir / "trigger").lstat().st_ino


@as_root
def test_claim_replaces_another_users_file_and_keeps_the_owners_own(userdir):
    (userdir / "theirs").write_text("x")
    os.chown(userdir / "theirs", 1234, 1234)  # a third user got the name first
    (userdir / "owners").write_text("y")
    os.chown(userdir / "owners", NOBODY, NOBODY)
    fd = safefs.open_dir(str(userdir))
    try:
        a = safefs.claim_file_at(fd, "theirs", NOBODY, NOBODY)
        b = safefs.claim_file_at(fd, "owners", NOBODY, NOBODY)
    finally:
        os.close(fd)
    assert a.st_uid == NOBODY and (userdir / "theirs").read_text() == ""  # made anew
    assert b.st_uid == NOBODY and (userdir / "owners").read_text() == "y"  # kept as it was


def test_claim_refuses_a_directory_in_the_way(userdir):
    (userdir / "trigger").mkdir()
    fd = safefs.open_dir(str(userdir))
    try:
        with pytest.raises(UnsafePath, match="not a plain file"):
            safefs.claim_file_at(fd, "trigger", os.geteuid(), os.getegid())
    finally:
        os.close(fd)


def test_claim_gives_up_when_the_name_is_replanted_every_time(userdir, secret, monkeypatch):
    """The other user wins every race: a symlink reappears after each unlink. One line, no follow."""
    planted_symlink(userdir, "trigger", secret)
    real_unlink = os.unlink

    def unlink_then_replant(name, *, dir_fd=None):
        real_unlink(name, dir_fd=dir_fd)
        planted_symlink(userdir, "trigger", secret)

    monkeypatch.setattr(safefs.os, "unlink", unlink_then_replant)
    fd = safefs.open_dir(str(userdir))
    try:
        with pytest.raises(UnsafePath) as info:
            safefs.claim_file_at(fd, "trigger", os.geteuid(), os.getegid())
    finally:
        os.close(fd)
    assert "\n" not in str(info.value)
    assert untouched(secret)


def test_remove_at_removes_only_the_file_it_was_given(userdir, secret):
    fd = safefs.open_dir(str(userdir))
    try:
        st = safefs.claim_file_at(fd, "t", os.geteuid(), os.getegid())
        os.unlink(userdir / "t")  # the user swaps it for a symlink to root's file
        planted_symlink(userdir, "t", secret)
        assert safefs.remove_at(fd, "t", expect=st) is False
        assert os.path.islink(userdir / "t")
        assert safefs.remove_at(fd, "t") is True  # without expect: the link itself goes
    finally:
        os.close(fd)
    assert untouched(secret) and not os.path.lexists(userdir / "t")


def test_open_dir_and_subdir_refuse_symlinks(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(UnsafePath, match="symlink"):
        safefs.open_dir(str(tmp_path / "link"))
    os.close(safefs.open_dir(str(tmp_path / "link"), follow=True))  # on purpose, for magic links
    fd = safefs.open_dir(str(tmp_path))
    try:
        with pytest.raises(UnsafePath, match="not a directory"):
            safefs.open_subdir(fd, "link")
        os.close(safefs.open_subdir(fd, "real"))
        with pytest.raises(UnsafePath, match="invalid file name"):
            safefs.lstat_at(fd, "../etc")
    finally:
        os.close(fd)


# ------------------------------------------------------------------ trusted directories

@as_root
def test_check_trusted_dir_accepts_root_dirs_under_sticky_tmp(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o755)
    safefs.check_trusted_dir(str(d))
    safefs.check_trusted_dir(str(d / ".." / "run"))  # ".." resolved as the kernel does
    os.symlink(d, tmp_path / "link")  # a symlink of root's, in root's directory: followed
    safefs.check_trusted_dir(str(tmp_path / "link"))


@as_root
@pytest.mark.parametrize("how, why", [
    ("nobody's", "owned by uid 65534"),
    ("world-writable", "writable by group or others"),
    ("sticky-final", "writable by group or others"),
    ("parent nobody's", "owned by uid 65534"),
    ("parent writable", "writable by group or others"),
    ("nobody's symlink", "symlink owned by uid 65534"),
    ("a file", "not a directory"),
])
def test_check_trusted_dir_refuses_what_another_user_can_change(tmp_path, how, why):
    parent = tmp_path / "p"
    parent.mkdir(mode=0o755)
    d = parent / "run"
    d.mkdir(mode=0o755)
    path = d
    if how == "nobody's":
        os.chown(d, NOBODY, NOBODY)
    elif how == "world-writable":
        d.chmod(0o777)
    elif how == "sticky-final":
        d.chmod(0o1777)  # fine above a run dir (/tmp), not as the run dir itself
    elif how == "parent nobody's":
        os.chown(parent, NOBODY, NOBODY)
    elif how == "parent writable":
        parent.chmod(0o777)
    elif how == "nobody's symlink":
        path = tmp_path / "link"
        os.symlink(d, path)
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    elif how == "a file":
        path = parent / "f"
        path.write_text("")
    with pytest.raises(UnsafePath, match=why) as info:
        safefs.check_trusted_dir(str(path))
    assert "\n" not in str(info.value)


@as_root
def test_check_trusted_dir_missing_ok_checks_what_exists(tmp_path):
    safefs.check_trusted_dir(str(tmp_path / "a" / "b"), missing_ok=True)
    (tmp_path / "w").mkdir(mode=0o777)
    (tmp_path / "w").chmod(0o777)
    with pytest.raises(UnsafePath, match="writable by group or others"):
        safefs.check_trusted_dir(str(tmp_path / "w" / "new"), missing_ok=True)
    with pytest.raises(UnsafePath, match="cannot check"):
        safefs.check_trusted_dir(str(tmp_path / "a" / "b"))


# ------------------------------------------------------------------ state files

def test_write_atomic_replaces_a_planted_tmp_symlink_without_following_it(tmp_path, secret):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    os.symlink(secret, d / "s.json.tmp")  # planted where the old code opened the tmp file by path
    safefs.write_atomic(str(d), "s.json", b'{"a": 1}')
    assert untouched(secret)
    assert (d / "s.json").read_bytes() == b'{"a": 1}'
    assert stat.S_IMODE((d / "s.json").stat().st_mode) == 0o600
    assert not os.path.lexists(d / "s.json.tmp")


@as_root
def test_write_atomic_as_root_refuses_a_directory_others_can_write(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(UnsafePath, match="writable by group or others"):
        safefs.write_atomic(str(d), "s.json", b"{}")
    assert list(d.iterdir()) == []


def test_read_small_refuses_symlinks_and_big_files(tmp_path, secret):
    os.symlink(secret, tmp_path / "link")
    with pytest.raises(UnsafePath, match="symlink"):
        safefs.read_small(str(tmp_path / "link"))
    (tmp_path / "big").write_bytes(b"x" * 2048)
    with pytest.raises(UnsafePath, match="larger than 1024 bytes"):
        safefs.read_small(str(tmp_path / "big"), max_bytes=1024)
    with pytest.raises(FileNotFoundError):
        safefs.read_small(str(tmp_path / "none"))
    assert safefs.read_small(str(tmp_path / "big")) == b"x" * 2048


# ------------------------------------------------------------------ listening sockets

@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
def test_bind_unix_sets_the_mode_exactly_whatever_the_umask(tmp_path, mode):
    old = os.umask(0o022)
    try:
        sock = safefs.bind_unix(str(tmp_path / "s.sock"), mode)
    finally:
        os.umask(old)
    try:
        st = (tmp_path / "s.sock").lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == mode
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(tmp_path / "s.sock"))  # listening, reachable by its plain path
        c.close()
    finally:
        sock.close()


def test_bind_unix_replaces_a_planted_symlink_and_never_chmods_its_target(tmp_path, secret):
    os.symlink(secret, tmp_path / "s.sock")
    sock = safefs.bind_unix(str(tmp_path / "s.sock"), 0o666)
    sock.close()
    assert untouched(secret)
    assert stat.S_ISSOCK((tmp_path / "s.sock").lstat().st_mode)


def test_bind_unix_refuses_to_replace_a_regular_file(tmp_path):
    (tmp_path / "s.sock").write_text("data")
    with pytest.raises(UnsafePath, match="not a socket"):
        safefs.bind_unix(str(tmp_path / "s.sock"))
    assert (tmp_path / "s.sock").read_text() == "data"
