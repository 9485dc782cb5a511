"""heapballoon: cooperative reclaim of JVM heap memory on overcommitted hosts.

Folders show the architecture:

* ``agent``  – builds and locates the Java balloon agent (Java source lives in ``/agent``),
  and attaches it to running JVMs (HotSpot attach protocol).
* ``driver`` – the balloon driver daemon: registry of agents, target policy, reclaim
  verification; runs on a node (process mode) or inside a guest (VM mode).
* ``linux``  – the only code that reads or writes /proc, /sys and cgroupfs.
* ``host``   – the host memory manager (VM mode): reclaims guest pages by page number or KSM.
* ``vm``     – guest images and QEMU virtual machines.
"""

__version__ = "0.1.0"
