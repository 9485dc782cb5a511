"""VM mode, host side: guest images and QEMU virtual machines (everything but hostd).

One module per role:

* :mod:`heapballoon.vm.vmdir`      – the VM-directory contract: paths, ``vm.json`` (:class:`VMDir`),
  :class:`VMHandles` (what any backend's VM offers hostd and the CLI).
* :mod:`heapballoon.vm.registry`   – which VMs exist and their state (``VMInfo``, ``list_vms``, console).
* :mod:`heapballoon.vm.launcher`   – QEMU argv, ``start_vm``/``stop_vm``, the RAM layout read from QEMU.
* :mod:`heapballoon.vm.execclient` – ``vm_exec`` over the exec port; :mod:`heapballoon.vm.execproto`
  its typed messages (shared with the guest supervisor, standard library only).
* :mod:`heapballoon.vm.ramfile`    – the one guest-RAM rule (exactly one memfd of the RAM size).
* :mod:`heapballoon.vm.image`      – the guest image, built in named stages (package).
* :mod:`heapballoon.vm.accel`      – KVM if a guest really boots under it, else TCG.
* :mod:`heapballoon.vm.qmp`        – one QMP command (qemu.qmp), synchronously.
* :mod:`heapballoon.vm.cli`        – the ``image`` and ``vm`` subcommands.
* :mod:`heapballoon.vm.qemu`       – re-exports the public functions above under their old home.

Import the submodules directly; this package imports nothing.
"""
