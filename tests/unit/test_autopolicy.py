"""Process mode's policy adapter (driver.autopolicy) on a fixture /proc and cgroupfs: what it
observes, the targets it hands the driver, the activity it derives, and SIGHUP reloads."""

import logging
from dataclasses import replace

from heapballoon import protocol
from heapballoon.driver.autopolicy import ActivityMeter, AutoPolicy, allocated_between
from heapballoon.driver.registry import JVMRecord
from heapballoon.linux.cgroupmem import CgroupMemory
from heapballoon.linux.procfs import PAGE_SIZE, ProcFS

MIB = 1 << 20
GIB = 1 << 30


def fake_proc(tmp_path, rss_mib: dict[int, int], group="/jobs", avail_gib=16):
    root = tmp_path / "proc"
    (root / "pressure").mkdir(parents=True)
    (root / "meminfo").write_text(f"MemTotal: {24 * GIB // 1024} kB\nMemAvailable: {avail_gib * GIB // 1024} kB\n")
    (root / "pressure" / "memory").write_text("some avg10=1.50 avg60=0.00 avg300=0.00 total=9\n"
                                              "full avg10=0.25 avg60=0.00 avg300=0.00 total=3\n")
    for pid, rss in rss_mib.items():
        (root / str(pid)).mkdir()
        (root / str(pid) / "status").write_text(f"Name:\tjava\nVmRSS:\t{rss * 1024} kB\n")
        (root / str(pid) / "statm").write_text(f"1 {rss * MIB // PAGE_SIZE} 0 0 0 0 0\n")
        (root / str(pid) / "cgroup").write_text(f"5:cpu:/\n4:memory:{group}\n")
    cg = tmp_path / "cg" / group.strip("/")
    cg.mkdir(parents=True)
    (cg / "memory.limit_in_bytes").write_text(str(8 * GIB))
    (cg / "memory.usage_in_bytes").write_text(str(3 * GIB))
    (tmp_path / "cg" / "memory.limit_in_bytes").write_text(str(1 << 63))  # the v1 root: none
    return ProcFS(str(root)), CgroupMemory(str(tmp_path / "cg"))


def record(pid, *, live_mib=150, balloon_max_mib=790, used_mib=400, gc_count=1, balloon_mib=0, reclaimed_mib=0):
    state = protocol.State(heap_max_bytes=GIB, heap_committed_bytes=GIB, heap_used_bytes=used_mib * MIB,
                           live_bytes=live_mib * MIB, balloon_max_bytes=balloon_max_mib * MIB, gc_count=gc_count,
                           balloon_bytes=balloon_mib * MIB)
    hello = protocol.Hello(pid=pid, name=f"j{pid}", agent_version="t", jvm_version="17", jvm_vendor="t", gc="G1",
                           region_bytes=0, address_mode="jni", reclaim_modes=("direct",), target_bytes=0, state=state)
    rec = JVMRecord(pid=pid, starttime=1, hello=hello, state=state)
    rec.reclaimed_bytes = reclaimed_mib * MIB
    return rec


def test_observations_come_from_proc_cgroup_and_the_registry(tmp_path):
    procfs, cg = fake_proc(tmp_path, {101: 1100, 102: 900})
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('budget = "1800M"\n')
    p = AutoPolicy(str(policy_file), procfs=procfs, cgroup=cg)
    recs = [record(101), record(102, reclaimed_mib=200)]
    obs = p.observe(recs, 0.0)
    assert obs.host.mem_available_bytes == 16 * GIB and obs.host.psi_some_avg10 == 1.5
    assert obs.host.cgroup_limit_bytes == 8 * GIB and obs.host.cgroup_usage_bytes == 3 * GIB
    w = {w.key: w for w in obs.workloads}
    assert w["101"].resident_bytes == 1100 * MIB and w["102"].held_bytes == 200 * MIB
    assert w["101"].sources[0].reclaimable_bytes == 790 * MIB
    assert (obs.host.psi_some_total_us, obs.host.psi_full_total_us) == (9, 3)  # the law's rate (issue 16)


def test_self_sizing_and_gc_cost_are_observed(tmp_path):
    """Issue 16: uncommitted heap (maximum − committed) and the share of time in GC, from the
    agent's states."""
    procfs, cg = fake_proc(tmp_path, {101: 700})
    p = AutoPolicy(None, procfs=procfs, cgroup=cg)
    rec = record(101)
    rec.state = replace(rec.state, heap_committed_bytes=600 * MIB, gc_time_ms=1000)
    p.on_state(101, rec.state, 0.0)
    rec.state = replace(rec.state, gc_time_ms=1300)
    w = p.observe([rec], 3.0).workloads[0]
    assert w.uncommitted_bytes == GIB - 600 * MIB
    assert abs(w.gc_cost - 0.1) < 1e-9  # 300 ms of GC in 3 s


def test_targets_follow_the_law_and_pins_win(tmp_path, caplog):
    procfs, cg = fake_proc(tmp_path, {101: 1100, 102: 1100, 103: 1100})
    p = AutoPolicy(None, 1800 * MIB, procfs=procfs, cgroup=cg)
    recs = [record(101), record(102), record(103)]
    assert p.targets(recs) == {101: 0, 102: 0, 103: 0}  # not decided yet: what each holds
    recs[2].explicit_target_bytes = 100 * MIB
    with caplog.at_level(logging.INFO, logger="heapballoon.policy"):
        assert p.maybe_tick(recs, 0.0)
    # low (3.3 GiB resident, 1.8 GiB budget): activity not measured yet, but the breach is
    # answered at once (issue 16), each counted as fully active
    first = p.targets(recs)
    assert first[103] == 100 * MIB and first[101] > 0 and first[102] > 0
    assert "not measured" not in p.reason(101)
    for t in range(1, 4):  # the agents' states: idle
        for r in recs:
            p.on_state(r.pid, replace(r.state, heap_used_bytes=r.state.heap_used_bytes + t * MIB), float(t))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="heapballoon.policy"):
        assert p.maybe_tick(recs, 3.0)
    t = p.targets(recs)
    assert t[103] == 100 * MIB and t[101] > 0 and t[102] > 0
    assert "pinned" in p.reason(103)
    assert not p.maybe_tick(recs, 3.5)  # its interval has not passed
    lines = [r.message for r in caplog.records]
    assert lines[0].startswith("policy low:") and len(lines[0]) < 300
    report = p.report()
    assert report.mode == "auto" and "to find" in report.state and "who gives" in report.text


def test_a_bad_file_on_reload_keeps_the_last_good_policy(tmp_path, caplog):
    procfs, cg = fake_proc(tmp_path, {})
    f = tmp_path / "policy.toml"
    f.write_text('budget = "1G"\n')
    p = AutoPolicy(str(f), procfs=procfs, cgroup=cg)
    f.write_text('budget = "1G"\nidle_tax = "lots"\n')
    with caplog.at_level(logging.ERROR, logger="heapballoon.policy"):
        assert not p.reload()
    assert p.config.budget_bytes == GIB
    msg = caplog.records[-1].getMessage()
    assert "idle_tax" in msg and "line 2" in msg and "\n" not in msg
    f.write_text('budget = "none"\n')
    assert p.reload() and p.config.budget_set and p.config.budget_bytes is None


def test_activity_counts_allocation_but_not_the_balloon():
    a = record(1, used_mib=300).state
    assert allocated_between(a, replace(a, heap_used_bytes=400 * MIB)) == 100 * MIB
    assert allocated_between(a, replace(a, heap_used_bytes=800 * MIB, balloon_bytes=500 * MIB)) == 0
    inflated = replace(a, heap_used_bytes=800 * MIB, balloon_bytes=500 * MIB)
    assert allocated_between(inflated, replace(inflated, balloon_bytes=300 * MIB)) == 0  # deflated: garbage
    assert allocated_between(a, replace(a, heap_used_bytes=250 * MIB, gc_count=2)) == 100 * MIB  # 250 - 150 live
    assert allocated_between(a, replace(a, heap_used_bytes=250 * MIB, gc_count=2), 240 * MIB) == 10 * MIB
    busy, idle = ActivityMeter(), ActivityMeter()
    used = 200
    for t in range(6):
        used = used + 100 if used < 900 else 200
        busy.update(replace(a, heap_used_bytes=used * MIB, gc_count=1 + (used == 200)), float(t))
        idle.update(replace(a, heap_used_bytes=(300 + t) * MIB), float(t))
    assert busy.active_fraction(GIB) > 0.9  # 100 MiB/s: its whole heap in about 10 s
    assert idle.active_fraction(GIB) < 0.02
    # a balloon inflating through several collections is not the application's allocation
    quiet = ActivityMeter()
    for t, (used, balloon, gcs) in enumerate([(161, 0, 3), (250, 88, 3), (400, 240, 5), (593, 432, 7), (594, 432, 7)]):
        quiet.update(replace(a, heap_used_bytes=used * MIB, balloon_bytes=balloon * MIB, gc_count=gcs,
                             live_bytes=145 * MIB), float(t))
    assert quiet.active_fraction(GIB) < 0.02


def test_jvms_in_sibling_cgroups_are_bound_by_their_parents_limit(tmp_path):
    """The experiment (and systemd slices, pods) put each JVM in its own child group under a
    limited parent: that parent's limit is the constraint, with its margin (issue 16)."""
    root = tmp_path / "proc"
    procfs, _ = fake_proc(tmp_path, {101: 500, 102: 400}, group="/exp/svc0")
    (root / "102" / "cgroup").write_text("5:cpu:/\n4:memory:/exp/svc1\n")
    cgdir = tmp_path / "cg"
    for g, limit, usage in (("exp", 1000 * MIB, 990 * MIB), ("exp/svc0", 1 << 63, 600 * MIB),
                            ("exp/svc1", 1 << 63, 390 * MIB)):
        (cgdir / g).mkdir(parents=True, exist_ok=True)
        (cgdir / g / "memory.limit_in_bytes").write_text(str(limit))
        (cgdir / g / "memory.usage_in_bytes").write_text(str(usage))
    p = AutoPolicy(None, None, procfs=procfs, cgroup=CgroupMemory(str(cgdir)))
    obs = p.observe([record(101), record(102)], 0.0)
    assert obs.host.cgroup_limit_bytes == 1000 * MIB and obs.host.cgroup_usage_bytes == 990 * MIB


def test_jvms_without_a_limited_ancestor_have_no_cgroup_constraint(tmp_path):
    root = tmp_path / "proc"
    procfs, _ = fake_proc(tmp_path, {101: 500, 102: 400}, group="/a/x")
    (root / "102" / "cgroup").write_text("5:cpu:/\n4:memory:/b/y\n")
    cgdir = tmp_path / "cg"
    for g in ("a", "a/x", "b", "b/y"):
        (cgdir / g).mkdir(parents=True, exist_ok=True)
        (cgdir / g / "memory.limit_in_bytes").write_text(str(1 << 63))
        (cgdir / g / "memory.usage_in_bytes").write_text(str(MIB))
    p = AutoPolicy(None, None, procfs=procfs, cgroup=CgroupMemory(str(cgdir)))
    obs = p.observe([record(101), record(102)], 0.0)
    assert obs.host.cgroup_limit_bytes is None and obs.host.cgroup_usage_bytes is None


def test_each_jvm_is_observed_in_every_limited_cgroup_it_is_in_on_v2(tmp_path):
    """Issue 18: a JVM in a pod's container on a v2 node (the fixture tree) is in the pod's
    group (memory.high binds) and kubepods'; one outside Kubernetes is in neither."""
    from pathlib import Path

    from test_cgroupmem import FIXTURES, V2_CONTAINER, V2_POD

    root = tmp_path / "proc"
    procfs, _ = fake_proc(tmp_path, {101: 900, 102: 400})
    (root / "101" / "cgroup").write_text(f"0::{V2_CONTAINER}\n")
    (root / "102" / "cgroup").write_text("0::/system.slice\n")
    cg = CgroupMemory(str(tmp_path / "no-v1"), str(Path(FIXTURES) / "v2"))
    obs = AutoPolicy(None, None, procfs=procfs, cgroup=cg).observe([record(101), record(102)], 0.0)
    assert [(g.path, g.limit_bytes, g.usage_bytes, g.keys) for g in obs.host.groups] == [
        (V2_POD, 1100 * MIB, 1000 * MIB, ("101",)), ("/kubepods.slice", 20 * GIB, 5 * GIB, ("101",))]


def test_pod_and_container_names_reach_the_policy_files_rules(tmp_path):
    """Issue 18: a JVM in a pod is selected by `pod = "ns/name"` and `container = "name"` in the
    policy file: the names the driver read at its hello (ids from its cgroup path, v1 kubelet
    cgroupfs layout; names from the kubelet's log directories, a fixture tree); a JVM outside
    Kubernetes has none."""
    from pathlib import Path

    from heapballoon.linux.kubelet import KubeletLogs
    from test_cgroupmem import CID, FIXTURES, UID, V1_CONTAINER

    procfs, _ = fake_proc(tmp_path, {101: 900, 102: 400})
    policy = tmp_path / "policy.toml"
    policy.write_text('[[workload]]\npod = "shop/orders-*"\ncontainer = "app"\nshares = 4000\n')
    kubelet = KubeletLogs(str(Path(FIXTURES).parent / "kubelet"))
    p = AutoPolicy(str(policy), None, procfs=procfs, cgroup=CgroupMemory(str(FIXTURES / "v1"), str(tmp_path)))
    recs = [record(101), record(102)]
    for rec, path in zip(recs, (V1_CONTAINER, "/system.slice")):  # what the driver reads at hello
        names = kubelet.names(path)
        rec.cgroup, rec.pod, rec.container = path, names.pod, names.container
    w = {w.key: w for w in p.observe(recs, 0.0).workloads}
    assert (w["101"].pod, w["101"].pod_uid, w["101"].container, w["101"].container_id) == (
        "shop/orders-7d9f", UID, "app", CID)
    assert (w["102"].pod, w["102"].container_id) == ("", "")
    p.maybe_tick(recs, 0.0)
    assert {d.key: d.shares for d in p.decisions.workloads} == {"101": 4000, "102": 1000}
    status = recs[0].status(0)
    assert (status.pod, status.container, status.pod_uid, status.container_id) == ("shop/orders-7d9f", "app", UID, CID)


def test_kubelet_log_directories_name_pods_and_containers(tmp_path):
    from pathlib import Path

    from heapballoon.linux.kubelet import KubeletLogs
    from test_cgroupmem import CID, FIXTURES

    kubelet = KubeletLogs(str(Path(FIXTURES).parent / "kubelet"))
    assert kubelet.pod("99999999-0000-4000-8000-000000000001") == "kube-system/coredns-5d78"
    assert kubelet.container("ab" * 32) == "coredns" and kubelet.pod("nope") == "" and kubelet.container("") == ""
    assert KubeletLogs(str(tmp_path / "none")).container(CID) == ""  # not a Kubernetes node
    (tmp_path / "pods" / "no-underscores-here").mkdir(parents=True)
    (tmp_path / "pods" / "a_b_c_d").mkdir()
    assert KubeletLogs(str(tmp_path)).pod("d") == "" and KubeletLogs(str(tmp_path)).pod("here") == ""
