"""The typed status payloads: what the daemon sends round-trips, and a malformed body is refused
with an error naming the field (never a traceback in the CLI)."""

import pytest
from hypothesis import given, strategies as st

from heapballoon.errors import ProtocolError
from heapballoon.status import DriverStatus, JvmStatus, NodeStatus, TargetsReply

u = st.integers(0, 1 << 40)
jvm = st.builds(JvmStatus, pid=st.integers(1, 1 << 22), name=st.text(max_size=20), gc=st.sampled_from(["G1", "Serial"]),
                jvm_version=st.just("21.0.8"), connected=st.booleans(), heap_max_bytes=u, heap_committed_bytes=u,
                heap_used_bytes=u, live_bytes=u, live_source=st.text(max_size=30), excess_bytes=u, balloon_max_bytes=u,
                target_bytes=u, flaps=u, balloon_bytes=u, reclaimed_bytes=u, reclaim=st.sampled_from(["direct", "ksm"]),
                address_mode=st.just("jni"), chunks=u, gc_count=u, gc_time_ms=u, moved_chunks=u, drift_pages=u,
                events=st.dictionaries(st.sampled_from(["moved", "pressure_release"]), u))
node = st.builds(NodeStatus, target_bytes=u, balloon_bytes=u, reclaimed_bytes=u, ksm=st.just("active"),
                 ksm_boosted=st.booleans(), zero_pfn_known=st.booleans(), bad_messages=u)


@given(st.lists(jvm, max_size=4).map(tuple), node)
def test_status_roundtrips(jvms, node_status):
    status = DriverStatus(jvms, node_status)
    again = DriverStatus.from_dict(status.to_dict())
    assert again.to_dict() == status.to_dict()


def _valid() -> dict:
    return DriverStatus((), NodeStatus(0, 0, 0, "off", False, True, 0)).to_dict()


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d.update(jvms="no"), "jvms"),
    (lambda d: d["node"].update(bad_messages="7"), "bad_messages"),
    (lambda d: d["node"].update(ksm_boosted=1), "ksm_boosted"),
    (lambda d: d["node"].pop("ksm"), "ksm"),
    (lambda d: d.update(jvms=[{"pid": 1}]), "name"),
])
def test_a_malformed_body_names_the_field(mutate, field):
    body = _valid()
    mutate(body)
    with pytest.raises(ProtocolError, match=field):
        DriverStatus.from_dict(body)


def test_targets_reply():
    assert dict(TargetsReply.from_dict({"targets": {"12": 5}}).targets) == {12: 5}
    assert TargetsReply({12: 5}).to_dict() == {"targets": {"12": 5}}
    for bad in ({"targets": {"x": 1}}, {"targets": {"1": -1}}, {"targets": []}, "nope"):
        with pytest.raises(ProtocolError):
            TargetsReply.from_dict(bad)


def _vm(**over):
    vm = dict(name="web", pid=7, memory_bytes=1 << 30, reclaim="pfn", target_bytes=0, balloon_bytes=0,
              reclaimed_bytes=None, host_resident_bytes=None, pause_ms_p50=0.0, pause_ms_p99=1.5,
              pause_breakdown_ms={"stop": {"p50": 0.5, "p99": 1, "max": 2}}, pauses=3, pause_ms_sum=4.5,
              pause_ms_per_gib=0.0, guest_pause_ms_sum=0.0, guest_pause_ms_per_gib=0.0, pause_window=3,
              engine="short", soft_dirty=False, drift_pages=0, connected=True, guest_hello=True,
              guest_balloon_bytes=None, guest_target_bytes=None, totals_pages={"punched": 1}, jvms=[],
              balloon_max_bytes=None, guest_free_bytes=300 << 20, guest_available_bytes=None,
              virtio_actual_bytes=1 << 30, virtio_target_bytes=0, policy_reason="idle 2%, shares 1000: gives 1 GiB",
              pinned=False, cont_owed=False)
    vm.update(over)
    return vm


def test_host_status_roundtrips_and_refuses_bad_fields():
    from heapballoon.status import HostStatus

    body = {"vms": [_vm()]}
    assert HostStatus.from_dict(body).to_dict() == {"vms": [{**_vm(), "pause_breakdown_ms": {"stop": {
        "p50": 0.5, "p99": 1, "max": 2}}}], "policy": ""}
    assert HostStatus.from_dict({**body, "policy": "soft: 312 MiB to find"}).policy == "soft: 312 MiB to find"
    with pytest.raises(ProtocolError, match="policy"):
        HostStatus.from_dict({**body, "policy": 3})
    for field, bad in (("reclaimed_bytes", "1"), ("pause_breakdown_ms", {"stop": 3}), ("jvms", [{"pid": 1}]),
                       ("soft_dirty", 0), ("pause_ms_p99", None), ("guest_free_bytes", -1.5),
                       ("virtio_target_bytes", None)):
        with pytest.raises(ProtocolError, match=field if field != "jvms" else "name"):
            HostStatus.from_dict({"vms": [_vm(**{field: bad})]})
    with pytest.raises(ProtocolError, match="vms"):
        HostStatus.from_dict({"vms": "x"})
    # an older hostd says nothing of virtio-balloon: those figures read as unknown
    old = {k: v for k, v in _vm().items() if "virtio" not in k and k not in ("guest_free_bytes", "policy_reason", "pinned")}
    vm = HostStatus.from_dict({"vms": [old]}).vms[0]
    assert (vm.guest_free_bytes, vm.virtio_actual_bytes, vm.virtio_target_bytes, vm.pinned) == (None, None, 0, False)
