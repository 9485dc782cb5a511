"""The JVM options `heapballoon run` adds (agent/launch.py), against fake JDK layouts on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from heapballoon.agent import launch


def fake_jdk(root: Path, version: str | None) -> str:
    """A JDK directory with bin/java and, unless version is None, a release file; returns java's path."""
    (root / "bin").mkdir(parents=True)
    java = root / "bin" / "java"
    java.write_text("#!/bin/sh\n")
    java.chmod(0o755)
    if version is not None:
        (root / "release").write_text(f'IMPLEMENTOR="Debian"\nJAVA_VERSION="{version}"\n')
    return str(java)


@pytest.mark.parametrize("version,major", [("17.0.15", 17), ("21.0.8", 21), ("25.0.2", 25), ("1.8.0_402", 8), ("25", 25)])
def test_java_major_reads_the_release_file(tmp_path, version, major):
    assert launch.java_major(fake_jdk(tmp_path / "jdk", version)) == major


def test_java_major_follows_a_symlink_to_the_runtime(tmp_path):
    java = fake_jdk(tmp_path / "jdk", "21.0.8")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "java").symlink_to(java)
    assert launch.java_major(str(tmp_path / "bin" / "java")) == 21


def test_java_major_is_none_without_a_release_file_or_java(tmp_path):
    assert launch.java_major(fake_jdk(tmp_path / "jdk", None)) is None
    assert launch.java_major(str(tmp_path / "nowhere" / "java")) is None


def test_java_major_reads_no_device_fifo_or_huge_file(tmp_path):
    java = fake_jdk(tmp_path / "jdk", None)
    (tmp_path / "jdk" / "release").symlink_to("/dev/zero")
    assert launch.java_major(java) is None
    (tmp_path / "jdk" / "release").unlink()
    os.mkfifo(tmp_path / "jdk" / "release")  # no writer: opening it would block
    assert launch.java_major(java) is None
    (tmp_path / "jdk" / "release").unlink()
    (tmp_path / "jdk" / "release").write_text("X" * (1 << 20) + '\nJAVA_VERSION="17.0.15"\n')
    assert launch.java_major(java) is None  # past the first 64 KiB: not read


def test_parallel_on_jdk17_gets_all_three_options(tmp_path):
    java = fake_jdk(tmp_path / "jdk", "17.0.15")
    assert launch.java_options([java, "-XX:+UseParallelGC", "-jar", "app.jar"], {}) == [
        launch.NATIVE_ACCESS, launch.NO_SCAVENGE_BEFORE_FULL, launch.NO_MAX_COMPACTION_ON_SYSTEM_GC,
        launch.MAX_COMPACTION_INTERVAL]


def test_parallel_on_jdk25_does_not_get_an_option_it_rejects(tmp_path):
    java = fake_jdk(tmp_path / "jdk", "25.0.2")
    assert launch.java_options([java, "-XX:+UseParallelGC"], {}) == [
        launch.NATIVE_ACCESS, launch.NO_MAX_COMPACTION_ON_SYSTEM_GC, launch.MAX_COMPACTION_INTERVAL]


def test_parallel_of_unknown_version_gets_only_what_every_jdk_accepts(tmp_path):
    java = fake_jdk(tmp_path / "jdk", None)
    assert launch.java_options([java, "-XX:+UseParallelGC"], {}) == [
        launch.NATIVE_ACCESS, launch.NO_MAX_COMPACTION_ON_SYSTEM_GC, launch.MAX_COMPACTION_INTERVAL]


def test_parallel_from_the_environment_counts(tmp_path):
    java = fake_jdk(tmp_path / "jdk", "21.0.8")
    assert launch.NO_SCAVENGE_BEFORE_FULL in launch.java_options([java], {"JAVA_TOOL_OPTIONS": "-XX:+UseParallelGC"})


@pytest.mark.parametrize("gc", ["", "-XX:+UseSerialGC", "-XX:+UseG1GC", "-XX:+UseZGC", "-XX:+UseShenandoahGC"])
def test_other_collectors_get_nothing_more(tmp_path, gc):
    java = fake_jdk(tmp_path / "jdk", "17.0.15")
    assert launch.java_options([java, *filter(None, [gc])], {}) == [launch.NATIVE_ACCESS]


def test_the_users_own_setting_wins(tmp_path):
    java = fake_jdk(tmp_path / "jdk", "17.0.15")
    options = launch.java_options([java, "-XX:+UseParallelGC", "-XX:+ScavengeBeforeFullGC",
                                   "-XX:+UseMaximumCompactionOnSystemGC", "-XX:HeapMaximumCompactionInterval=20"], {})
    assert options == [launch.NATIVE_ACCESS]
