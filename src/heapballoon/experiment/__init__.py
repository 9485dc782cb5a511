"""The overcommit experiment (``heapballoon experiment``): the same Java services under several
memory managers, interleaved in one run, with real memory pressure (a v1 memory cgroup and a
swap file, or none: ``--swap off``), written out as report.md, results.json, CSV time series
and PNG plots.

* ``config``   – the run's settings, the cells (round × manager × overcommit level) and their order
* ``workload`` – the Java services (CacheService JVMs) in their cgroups
* ``loadgen``  – the phase-shifted asyncio load generator and its latency records
* ``sandbox``  – the swap file and the memory cgroups, made and always removed
* ``managers`` – none, JVM self-sizing, cgroup-limit stepping (senpai-like), heapballoon,
  heapballoon+self-sizing
* ``consolidation`` – the headline: the most services each manager holds at the SLO in a fixed memory
* ``metrics``  – the sampler (memory, swap, faults, PSI) and per-cell summaries
* ``report``   – results.json and report.md; ``plots`` – the PNG figures
* ``runner``   – runs the cells with progress and cleans up on any exit
* ``rounds``   – medians over repeated rounds; ``leftovers`` – what a SIGKILLed run left, removed
* ``cli``      – ``heapballoon experiment``'s arguments, turned into a process- or VM-mode config
* VM mode: ``vmconfig`` (sizes, what overcommit means for guests), ``vmguests`` (the QEMU guests
  in the cgroup, port forwards), ``momrule`` (the MoM-like virtio-balloon rule), ``vmmanagers``,
  ``vmmode`` (the runner), ``vmreport``
"""
