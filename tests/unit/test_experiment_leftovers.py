"""experiment/leftovers.py (issue 14 row 15): a run is cleaned only when its owner is provably
gone. Fakes through the linux/ adapter roots: a cgroup tree and a procfs fake; no process is
signalled (the runs that would be killed have no processes in their fixture cgroups).
tests/integration/test_experiment_leftovers_ns.py does the same with a real second pid namespace.
"""

from __future__ import annotations

import json
import os

import pytest

from heapballoon.experiment import leftovers

MY_NS, OTHER_NS = 4026531836, 4026532999
BOOT = "0f0e0d0c-boot"


class Procs:
    """A procfs fake: ``procs`` maps pid → (starttime, pid namespace, argv)."""

    def __init__(self, procs: dict[int, tuple[int, int, list[str]]]) -> None:
        self.procs = {os.getpid(): (7, MY_NS, ["python3", "-m", "heapballoon", "experiment", "--clean"]), **procs}

    def alive(self, pid):
        return pid in self.procs

    def _get(self, pid):
        from heapballoon.linux.procfs import ProcessGone

        if pid not in self.procs:
            raise ProcessGone(f"no process with PID {pid}")
        return self.procs[pid]

    def starttime(self, pid):
        return self._get(pid)[0]

    def pid_namespace(self, pid):
        return self._get(pid)[1]

    def cmdline(self, pid):
        return self._get(pid)[2]

    def boot_id(self):
        return BOOT


@pytest.fixture
def tree(tmp_path):
    dirs = {n: tmp_path / n for n in ("cg", "proc", "swapdir", "tmp")}
    for d in dirs.values():
        d.mkdir()
    (dirs["proc"] / "swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n")
    return dirs


def run_of(tree, pid: int, procs_in_cgroup=(), marker: dict | None = None) -> None:
    g = tree["cg"] / f"heapballoon-experiment-{pid}"
    (g / "svc0").mkdir(parents=True)
    if procs_in_cgroup:  # (a fixture file would keep the directory from being removed)
        (g / "svc0" / "cgroup.procs").write_text("".join(f"{p}\n" for p in procs_in_cgroup))
    (tree["cg"] / f"heapballoon-experiment-{pid}-managers").mkdir()
    (tree["swapdir"] / f"heapballoon-experiment-{pid}.swap").write_text("")
    (tree["tmp"] / f"hbx-{pid}-abc").mkdir()
    if marker is not None:
        (tree["swapdir"] / leftovers.marker_name(pid)).write_text(json.dumps({"pid": pid, **marker}))


def clean(tree, procs: Procs) -> list[str]:
    return leftovers.clean(str(tree["swapdir"]), str(tree["cg"]), procs, str(tree["tmp"]), str(tree["proc"]))


def left(tree) -> set[str]:
    return {p.name for d in ("cg", "swapdir", "tmp") for p in tree[d].iterdir()}


def everything_of(pid: int, marker: bool = True) -> set[str]:
    names = {f"heapballoon-experiment-{pid}", f"heapballoon-experiment-{pid}-managers",
             f"heapballoon-experiment-{pid}.swap", f"hbx-{pid}-abc"}
    return names | ({leftovers.marker_name(pid)} if marker else set())


def test_a_run_of_another_pid_namespace_is_left_alone_with_one_line(tree):
    # Run "7" of a container: in our namespace PID 7 is dead (or someone else): not its owner.
    run_of(tree, 7, procs_in_cgroup=[900001], marker={"starttime": 5, "pidns": OTHER_NS, "boot_id": BOOT})
    procs = Procs({900001: (6, OTHER_NS, ["java", "Service"])})
    done = clean(tree, procs)
    assert left(tree) == everything_of(7)
    assert len(done) == 1 and done[0].startswith(leftovers.NOTE) and "another pid namespace" in done[0]
    assert str(OTHER_NS) in done[0] and "\n" not in done[0]


def test_a_live_owner_is_not_killed_even_without_heapballoon_in_its_argv(tree):
    run_of(tree, 555, marker={"starttime": 42, "pidns": MY_NS, "boot_id": BOOT})
    procs = Procs({555: (42, MY_NS, ["/usr/bin/python3", "/opt/bench/run.py"])})  # an embedding program
    assert clean(tree, procs) == []
    assert left(tree) == everything_of(555)


def test_a_reused_pid_an_exited_owner_and_an_earlier_boot_are_cleaned(tree):
    run_of(tree, 601, marker={"starttime": 42, "pidns": MY_NS, "boot_id": BOOT})          # pid reused
    run_of(tree, 602, marker={"starttime": 42, "pidns": MY_NS, "boot_id": BOOT})          # exited
    run_of(tree, 603, marker={"starttime": 42, "pidns": OTHER_NS, "boot_id": "earlier"})  # before reboot
    procs = Procs({601: (43, MY_NS, ["python3", "-m", "heapballoon", "experiment"])})
    done = clean(tree, procs)
    assert left(tree) == set()
    assert not any(line.startswith(leftovers.NOTE) for line in done)
    assert clean(tree, procs) == []


def test_without_a_marker_processes_of_another_namespace_keep_the_run(tree):
    run_of(tree, 8, procs_in_cgroup=[900002])  # an older heapballoon's run, or its marker unseen
    procs = Procs({900002: (6, OTHER_NS, ["java", "Service"])})
    done = clean(tree, procs)
    assert left(tree) == everything_of(8, marker=False)
    assert len(done) == 1 and done[0].startswith(leftovers.NOTE) and "another pid namespace" in done[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file of another user")
def test_a_planted_marker_of_another_user_is_not_believed(tree):
    run_of(tree, 9, marker={"starttime": 1, "pidns": OTHER_NS, "boot_id": BOOT})
    os.chown(tree["swapdir"] / leftovers.marker_name(9), 65534, 65534)  # "another namespace": a lie
    done = clean(tree, Procs({}))
    assert left(tree) == set()  # cleaned as the dead run it is (the planted name unlinked, not followed)
    assert not any(line.startswith(leftovers.NOTE) for line in done)


def test_write_marker_replaces_a_planted_symlink(tmp_path):
    (tmp_path / "vault").mkdir(mode=0o700)
    secret = tmp_path / "vault" / "secret"
    secret.write_text("root only\n")
    os.symlink(secret, tmp_path / leftovers.marker_name(os.getpid()))
    owner = leftovers.write_marker(str(tmp_path))
    assert secret.read_text() == "root only\n"
    assert leftovers.read_marker(str(tmp_path), os.getpid()) == owner
    leftovers.remove_marker(str(tmp_path))
    assert list(tmp_path.iterdir()) == [tmp_path / "vault"]
