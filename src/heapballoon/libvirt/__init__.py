"""heapballoon with libvirt: hostd manages libvirt domains, ``heapballoon libvirt`` prepares them.

* :mod:`.domxml`: the rules on domain XML (what a domain needs; the edit that adds it), pure;
* :mod:`.conn`: every call into libvirt's Python binding (connection, events, monitor, QEMU pid);
* :mod:`.backend`: hostd's libvirt backend (discovery, lifecycle, reasons for domains left alone);
* :mod:`.cli`: ``heapballoon libvirt check|prepare``.
"""
