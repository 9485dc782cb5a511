"""VM mode, inside the guest: what the guest image runs (standard library only; no PyPI there).

* :mod:`heapballoon.guest.supervisor` – the one service ``/init`` starts: finds the virtio-serial
  ports, serves the exec port (typed by :mod:`heapballoon.vm.execproto`), runs the VM's command,
  keeps the guest balloon driver running.
* :mod:`heapballoon.guest.driver`     – the guest balloon driver: the process-mode driver plus an
  uplink to hostd, reporting balloon pages as guest frame numbers.
* :mod:`heapballoon.guest.systemd`    – an ordinary guest's systemd unit and JVM drop-in, rendered
  for this installation (``heapballoon guest-unit``; docs/guest.md).
* ``init/init``                        – PID 1 (busybox sh): mounts the root disk, ``switch_root``.

Everything the guest side imports runs on Python 3.9+ (tests/unit/test_guest_compat.py).

Kernel interfaces (``/proc``, ``/sys/class/virtio-ports``) are reached through
:mod:`heapballoon.linux`.
"""
