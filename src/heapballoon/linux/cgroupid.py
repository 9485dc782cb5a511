"""Which container and which Kubernetes pod a cgroup path names (pure string parsing).

The path is a process's memory cgroup on v1 (or its unified one on v2), from
``/proc/PID/cgroup`` (:meth:`heapballoon.linux.procfs.ProcFS.cgroup`). Runtimes name their
cgroups after the container's 64-hex id, and the kubelet after the pod's UID:

==========================  ===================================================================
docker (cgroupfs)           ``/docker/<id>``
docker, podman, containerd,  ``.../docker-<id>.scope``, ``.../libpod-<id>.scope``,
CRI-O (systemd driver)      ``.../cri-containerd-<id>.scope``, ``.../crio-<id>.scope``
podman (cgroupfs manager)   ``/libpod_parent/libpod-<id>``
kubelet, cgroupfs driver    ``/kubepods/burstable/pod<uid>/<id>``, ``/kubepods/pod<uid>/<id>``
kubelet, systemd driver     ``/kubepods.slice/kubepods-burstable.slice/``
                            ``kubepods-burstable-pod<uid with _ for ->.slice/cri-containerd-<id>.scope``
==========================  ===================================================================

The cgroup path carries the pod's UID, not its namespace and name: those need the API server
(or the kubelet), which nothing here asks. ``conmon`` cgroups (``libpod-conmon-<id>``,
``crio-conmon-<id>``) are the runtime's monitor, not the container. Standard library only.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SCOPE = re.compile(r"^(?:docker|libpod|cri-containerd|crio|containerd)-([0-9a-f]{64})(?:\.scope)?$")
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
_POD = re.compile(rf"^(?:kubepods(?:-[a-z]+)?-)?pod({_UID})(?:\.slice)?$")


@dataclass(frozen=True)
class CgroupIdentity:
    """What a cgroup path says: the container's id and the pod's UID ("" when none)."""

    container_id: str = ""
    pod_uid: str = ""


@functools.lru_cache(maxsize=4096)  # every status of every JVM asks; paths change rarely
def identify(path: str) -> CgroupIdentity:
    """The container id (the innermost one named) and pod UID in cgroup ``path``."""
    container = pod = ""
    for part in path.split("/"):
        if "conmon" in part:
            continue
        scope = _SCOPE.match(part)
        if scope:
            container = scope.group(1)
        elif _HEX64.match(part):
            container = part
        else:
            found = _POD.match(part)
            if found:
                pod = found.group(1).replace("_", "-")
    return CgroupIdentity(container, pod)
