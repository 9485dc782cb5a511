"""The host memory manager (VM mode): frees the machine pages behind guests' zero balloon pages.

Layers, bottom up, one module each:

* ``layout``    guest page frame → offset in the guest-RAM memfd (from QEMU's ``info mtree -f``)
* ``guestram``  the memfd: find it in /proc/PID/fd, check pages for zero, punch holes, count blocks
* ``reclaim``   batches and the QMP stop → check+punch → cont pause; virtio-balloon baseline
* ``ksm``       ksm VMs (private RAM): smaps Rss of guest RAM, temporary KSM boost
* ``pageset``   interval set for balloon accounting
* ``hostd``     the daemon: VM registry, guest channels, control socket, state file
* ``scratchvm`` a throwaway guest-less QEMU for tests and the punch benchmark
"""
