"""Kubernetes names from the node's disk: a pod's namespace/name from its UID, a container's name
from its id, read from the kubelet's log directories (no API server, no credentials).

The kubelet (with any CRI runtime) keeps every pod's logs in ``/var/log/pods/`` and links each
container's log from ``/var/log/containers/``, both named after what the cgroup path lacks:

* ``/var/log/pods/<namespace>_<pod name>_<pod uid>/``
* ``/var/log/containers/<pod name>_<namespace>_<container name>-<64-hex container id>.log``

Namespaces and pod names are DNS labels/subdomains (no ``_``), so the fields split cleanly.
A node without them (not a Kubernetes node, or the DaemonSet did not mount ``/var/log``)
simply has no names: the pod UID and container id from the cgroup path still identify the
JVM (linux/cgroupid.py). ``root`` is overridable (fixture trees in tests).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from heapballoon.linux.cgroupid import identify

DEFAULT_ROOT = "/var/log"
_CONTAINER_LOG = re.compile(r"^([^_]+)_([^_]+)_(.+)-([0-9a-f]{64})\.log$")


@dataclass(frozen=True)
class Names:
    """Who a JVM is, from its cgroup path and the kubelet: ids ("" none) and names ("" unknown)."""

    container_id: str = ""
    pod_uid: str = ""
    container: str = ""  # the container's name
    pod: str = ""  # namespace/name


class KubeletLogs:
    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = root

    def _names(self, sub: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(os.path.join(self.root, sub)))
        except OSError:
            return []

    def names(self, cgroup_path: str) -> Names:
        """The ids a cgroup path names (linux/cgroupid.py) and, where the kubelet has them, the names."""
        ident = identify(cgroup_path)
        return Names(ident.container_id, ident.pod_uid, self.container(ident.container_id), self.pod(ident.pod_uid))

    def pod(self, pod_uid: str) -> str:
        """``namespace/name`` of the pod with ``pod_uid``; "" when not found."""
        if not pod_uid:
            return ""
        for name in self._names("pods"):
            parts = name.split("_")
            if len(parts) == 3 and parts[2] == pod_uid and parts[0] and parts[1]:
                return f"{parts[0]}/{parts[1]}"
        return ""

    def container(self, container_id: str) -> str:
        """The name of the container with ``container_id`` (64 hex); "" when not found."""
        if not container_id:
            return ""
        for name in self._names("containers"):
            m = _CONTAINER_LOG.match(name)
            if m and m.group(4) == container_id:
                return m.group(3)
        return ""
