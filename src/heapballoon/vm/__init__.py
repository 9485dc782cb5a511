"""Guest images and QEMU virtual machines (VM mode).

* :mod:`heapballoon.vm.image` – ``build_image()``: Debian kernel + initramfs, cached.
* :mod:`heapballoon.vm.accel` – ``probe_accel()``: KVM if a guest really boots, else TCG.
* :mod:`heapballoon.vm.qemu`  – ``start_vm``/``stop_vm``/``list_vms``/``vm_logs``/``vm_exec``/
  ``open_guest_ram``.

Import the submodules directly; this package imports nothing heavy.
"""
