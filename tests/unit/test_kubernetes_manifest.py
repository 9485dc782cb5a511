"""packaging/kubernetes/daemonset.yaml against the Kubernetes 1.35 schemas (kubernetes-validate,
strict: no unknown fields), and against what the driver needs: host pids, the socket's hostPath,
a command line our own CLI accepts. No cluster is involved."""

import copy
from pathlib import Path

import pytest

import kubernetes_validate.utils as kv  # pinned in the test extra (pyproject.toml)

MANIFEST = Path(__file__).parent.parent.parent / "packaging" / "kubernetes" / "daemonset.yaml"
K8S = "1.35.0"


def resources() -> dict[str, dict]:
    return {r["kind"]: r for r in kv.resources_from_file(str(MANIFEST))}


def test_the_1_35_schemas_are_the_ones_used():
    assert "1.35.0" in kv.all_versions()  # not a fallback to an older release's schemas


def test_every_resource_validates_against_kubernetes_1_35_strict():
    found = resources()
    assert sorted(found) == ["ConfigMap", "DaemonSet", "Namespace", "ServiceAccount"]
    for r in found.values():
        kv.validate(r, K8S, strict=True)  # raises ValidationError on any problem


def test_a_broken_daemonset_does_not_validate():
    ds = copy.deepcopy(resources()["DaemonSet"])
    ds["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, K8S, strict=True)
    ds = copy.deepcopy(resources()["DaemonSet"])
    ds["spec"]["template"]["spec"]["containers"][0]["hostPid"] = True  # a typo: unknown in strict
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, K8S, strict=True)


def test_the_driver_runs_with_host_pids_the_socket_hostpath_and_a_command_our_cli_accepts():
    from heapballoon.cli import build_parser

    spec = resources()["DaemonSet"]["spec"]["template"]["spec"]
    assert spec["hostPID"] is True and spec["automountServiceAccountToken"] is False
    driver = next(c for c in spec["containers"] if c["name"] == "driver")
    cmd = driver["command"]
    assert cmd[:3] == ["nsenter", "--cgroup=/proc/1/ns/cgroup", "--"] and cmd[3] == "heapballoon"
    args = build_parser().parse_args(cmd[4:])
    assert (args.policy, args.socket, args.socket_mode) == ("auto", "/run/heapballoon/heapballoon.sock", "666")
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in driver["volumeMounts"]}
    assert volumes[mounts["/run/heapballoon"]]["hostPath"]["path"] == "/run/heapballoon"
    assert volumes[mounts["/sys/fs/cgroup"]]["hostPath"]["path"] == "/sys/fs/cgroup"
    assert volumes[mounts["/etc/heapballoon"]]["configMap"]["name"] == resources()["ConfigMap"]["metadata"]["name"]


def test_the_policy_in_the_configmap_is_a_valid_policy_file():
    from heapballoon.policy import parse_config

    parse_config(resources()["ConfigMap"]["data"]["policy.toml"], source="the ConfigMap")  # raises if bad
