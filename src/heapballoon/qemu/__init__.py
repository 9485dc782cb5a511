"""QEMU as heapballoon talks to it: one monitor client and the guest RAM layout.

* :mod:`.monitor` – the one QMP client: :class:`~.monitor.QMPMonitor` (blocking, for worker
  threads: the pause path, virtio-balloon) and :func:`~.monitor.connect_async` /
  :func:`~.monitor.execute_once` (asyncio, qemu.qmp). libvirt domains answer the same
  :class:`~.monitor.Monitor` interface through libvirt (heapballoon.libvirt.conn.DomainMonitor).
* :mod:`.layout` – guest-physical → RAM-file offsets, parsed from ``info mtree -f`` (read once
  per VM, at launch, into ``vm.json``).
"""
