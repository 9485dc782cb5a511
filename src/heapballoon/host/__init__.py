"""The host memory manager (VM mode): frees the machine pages behind guests' zero balloon pages.

Layers, bottom up, one module each:

(QEMU's monitor and the guest RAM layout are heapballoon.qemu's: one client, QMP or libvirt.)

* ``guestram``  the memfd (found by vm.ramfile's rule): check pages for zero, punch holes, count blocks
* ``reclaim``   the batch engine: fixed batches, QMP stop → check+punch → cont; virtio-balloon baseline
* ``shortpause`` the short-pause engine (default): pre-check live, time-bounded pauses that
                re-check in place and punch; its pause model and priority boost
* ``pausestats`` pause parts (stop, check, punch, cont, total) and their p50/p99/max
* ``vmreclaim`` hostd's per-VM glue: QMP, RAM file, layout, engine, acks
* ``vmstatus``  status figures and Prometheus metrics of hostd
* ``ksm``       ksm VMs (private RAM): smaps Rss of guest RAM, temporary KSM boost
* ``pageset``   interval set for balloon accounting (blocked, capped: cheap whatever a guest sends)
* ``vmsession`` one VM: its identity, and hostd's session (every piece of per-VM state, one owner)
* ``vmregistry`` where VMs come from: the VMSource protocol, the run dir's (vm.vmdir's contract)
* ``sessions``  the sessions table and pins: what the policy and the metrics get instead of hostd
* ``guestlimits`` what one guest may cost hostd: budgets, bad lines, faults logged once, its worker
* ``guestsession`` the channel to each guest: handshake, pages reports, acks, KSM boost
* ``hostd``     the daemon: scan loop, control socket, state file, the command line
"""
