"""heapballoon: cooperative reclaim of JVM heap memory on overcommitted hosts.

Folders show the architecture (docs/architecture.md draws the data flow):

* ``agent``  – builds and locates the Java balloon agent (Java source lives in ``/agent``),
  and attaches it to running JVMs (HotSpot attach protocol).
* ``driver`` – the balloon driver daemon: registry of agents, target policy, reclaim
  verification; runs on a node (process mode) or inside a guest (VM mode).
* ``guest``  – what runs inside a VM: the supervisor and the guest driver (driver + uplink).
* ``host``   – the host memory manager (VM mode, ``hostd``): reclaims guest pages by page
  number or KSM.
* ``vm``     – VM mode's host side: the VM directory contract, QEMU lifecycle, exec, guest images.
* ``linux``  – the only code that touches /proc, /sys, cgroupfs, ctypes and syscalls.

Top-level modules: ``cli`` (the ``heapballoon`` command), ``protocol`` and ``transport`` (the
wire protocol and its sockets), ``errors`` (the one exception tree), ``demo`` (``make demo``),
``render`` (status tables that fit the terminal), ``watch`` (``status --watch``), ``units``, ``poll``.
"""

__version__ = "0.1.0"
