"""The only code that touches the kernel: ``/proc``, ``/sys`` (cgroupfs included), ctypes, syscalls.

Each adapter takes an overridable root so tests run on fixture trees; failures are
:class:`~heapballoon.errors.KernelError` one-liners. Standard library only (the guest imports it).

* ``procfs``  – ``/proc``: status, maps, cmdline, stat (state, start time, CPU time), open files,
  meminfo, vmstat, PSI (``pressure/memory``), a process's cgroup, boot_id
* ``cgroup``  – cgroup v1 memory groups: limit and usage; making, limiting and removing groups
* ``swap``    – swap files: make (``fallocate``/``dd``, ``mkswap``), ``swapon``/``swapoff``, ``/proc/swaps``
* ``pagemap`` – virtual → physical translation, reclaim accounting
* ``memfd``   – memfds a process holds, punching holes, allocated bytes, zero checks
* ``ksm``     – ``/sys/kernel/mm/ksm`` knobs and counters
* ``prctl``   – ``PR_SET_MEMORY_MERGE``
* ``virtio``  – virtio-serial ports by name (``/sys/class/virtio-ports``), device nodes
* ``devices`` – device nodes under ``/dev`` (is ``/dev/kvm`` usable)
* ``pidfile`` – pid files other root daemons wrote (libvirt's), refused unless root's alone
* ``libc``    – the one ctypes loader of the C library, used by the modules above
* ``safefs``  – root's file operations on paths another user controls: directory fds,
  ``O_NOFOLLOW``, ``openat``/``unlinkat``, ``fchown``, ownership checks, trusted run dirs

tests/unit/test_linux_boundary.py fails when code outside this package imports ctypes, names
a ``/proc``, ``/sys`` or ``/dev`` path, or opens a raw fd with ``os.open`` (files still doing
so are listed there, with the reason, to be moved here).
"""
