"""linux/devices.py: whether /dev/kvm is open to libvirt's QEMU user (a fake dev root)."""

import os

from heapballoon.linux.devices import kvm_closed_to

OTHER_UID = 54321  # neither the file's owner nor root


def _kvm(tmp_path, mode: int) -> os.stat_result:
    path = tmp_path / "kvm"
    path.write_bytes(b"")
    os.chmod(path, mode)
    return os.stat(path)


def test_root_only_kvm_is_closed_to_another_user_and_says_how(tmp_path):
    _kvm(tmp_path, 0o600)
    why = kvm_closed_to(OTHER_UID, [], str(tmp_path))
    assert why is not None and why.endswith(" 0600") and why.startswith(f"{tmp_path}/kvm is ")


def test_group_read_write_opens_it_to_the_group_only(tmp_path):
    st = _kvm(tmp_path, 0o660)
    assert kvm_closed_to(OTHER_UID, [st.st_gid], str(tmp_path)) is None  # udev's root:kvm 0660
    assert kvm_closed_to(OTHER_UID, [st.st_gid + 1], str(tmp_path)) is not None


def test_read_only_for_the_group_is_still_closed(tmp_path):
    st = _kvm(tmp_path, 0o640)
    assert kvm_closed_to(OTHER_UID, [st.st_gid], str(tmp_path)) is not None


def test_open_to_all_to_root_or_missing_is_no_note(tmp_path):
    assert kvm_closed_to(OTHER_UID, [], str(tmp_path)) is None  # no kvm device at all
    _kvm(tmp_path, 0o666)
    assert kvm_closed_to(OTHER_UID, [], str(tmp_path)) is None
    os.chmod(tmp_path / "kvm", 0o600)
    assert kvm_closed_to(0, [], str(tmp_path)) is None
    assert kvm_closed_to(os.stat(tmp_path / "kvm").st_uid, [], str(tmp_path)) is None  # its owner
