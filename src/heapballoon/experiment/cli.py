"""``heapballoon experiment``: its arguments and how they become a run, added to heapballoon's
parser by :func:`add_commands`::

    heapballoon experiment --out DIR [--quick] [--mode process|vm] [--levels 0,50]
                           [--managers none,heapballoon] [--rounds N] [--cell-s S] [--seed N]
                           [--policy proactive|auto|manual] [--swap on|off] [--heaps pretouch|burst]
                           [--consolidation on|off] [--settle-s S]
    heapballoon experiment --clean

Process mode's settings are experiment.config's, VM mode's experiment.vmconfig's; every bad
value is refused in one line (UsageError) before anything starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys

from heapballoon.errors import UsageError


def add_commands(sub) -> None:
    e = sub.add_parser("experiment", help="compare memory managers under overcommit (writes a report and plots)")
    e.add_argument("--quick", action="store_true",
                   help="process mode: 0%% and 50%%, three managers, 1 round (< 5 min); VM mode: 50%%, none, "
                        "heapballoon and heapballoon+virtio (< 8 min). Default: the full run (0,25,50,100%%; "
                        "process mode: four managers, 3 rounds, ~35 min; VM mode: four managers, ~25 min)")
    e.add_argument("--mode", choices=("process", "vm"), default="process",
                   help="process: JVMs in a memory cgroup (default); vm: two QEMU guests, one JVM in each")
    e.add_argument("--out", metavar="DIR", help="output directory (report.md, results.json, CSV, PNG); required")
    e.add_argument("--levels", metavar="PCTS", help="overcommit levels, e.g. 0,50")
    e.add_argument("--managers", metavar="NAMES",
                   help="managers, e.g. none,heapballoon (process mode: none, self-sizing, cgroup-step, "
                        "heapballoon; VM mode: none, virtio-balloon, heapballoon, heapballoon+virtio)")
    e.add_argument("--rounds", type=int, metavar="N",
                   help="repeat the interleaved plan N times (medians reported)")
    e.add_argument("--cell-s", type=float, metavar="S", help="seconds of load per cell")
    e.add_argument("--clean", action="store_true",
                   help="only remove what killed runs left (cgroups, their processes, swap files) and exit")
    e.add_argument("--seed", type=int, default=1, help="seed of the data sets and the load (default 1)")
    e.add_argument("--policy", choices=("manual", "auto", "proactive"), default="proactive",
                   help="process mode, heapballoon's policy: proactive (default: daemon --policy auto "
                        "--memory-budget with `proactive = true` in a policy file, idle heap taken ahead of need), "
                        "auto (the budget alone: takes only once memory is short) or manual (target all)")
    e.add_argument("--swap", choices=("on", "off"), default="on",
                   help="on: a swap file, the kernel swaps at the limit (default); off: no swap (the Kubernetes "
                        "default), overcommit the managers do not absorb ends in cgroup OOM kills")
    e.add_argument("--heaps", choices=("pretouch", "burst"), default="pretouch",
                   help="production heaps, -Xms = -Xmx: pretouch (AlwaysPreTouch, default) or burst (grown by a "
                        "start-up burst); self-sizing keeps its small -Xms either way (labelled in the report)")
    e.add_argument("--settle-s", type=float, metavar="S",
                   help="process mode: seconds between one service being ready and the next starting (default 1)")
    e.add_argument("--consolidation", choices=("on", "off"),
                   help="process mode: after the levels, the most services each manager holds at the SLO in a fixed "
                        "memory (N = 2..5); default on in the full run, off with --quick")
    e.set_defaults(func=cmd_experiment)


def config_of(args: argparse.Namespace, command: str):
    """The run's frozen config from the command line; UsageError on a bad value."""
    from heapballoon.experiment import config

    if args.seed < 0:
        raise UsageError(f"invalid seed {args.seed}: must be >= 0")
    if args.mode == "vm":
        from heapballoon.experiment import vmconfig

        if args.consolidation == "on":
            raise UsageError("--consolidation: process mode only")
        mode, known = vmconfig, vmconfig.VM_MANAGERS
    else:
        mode, known = config, config.MANAGERS
    make = mode.quick if args.quick else mode.full
    cfg = make(os.path.abspath(args.out), args.seed, command)
    changes = {"policy": args.policy, "swap": args.swap == "on", "heaps": args.heaps}
    if args.consolidation is not None and args.mode != "vm":
        changes["consolidation"] = args.consolidation == "on"
    if args.levels is not None:
        changes["levels_pct"] = config.parse_levels(args.levels)
    if args.managers is not None:
        changes["managers"] = config.parse_managers(args.managers, known)
    if args.rounds is not None:
        changes["rounds"] = args.rounds
    if args.cell_s is not None:
        changes["cell_s"] = args.cell_s
    if getattr(args, "settle_s", None) is not None:
        if not 0 <= args.settle_s <= 600:
            raise UsageError(f"invalid --settle-s {args.settle_s:g}: must be 0..600 seconds")
        changes["settle_s"] = args.settle_s
    cfg = dataclasses.replace(cfg, **changes)
    mode.validate(cfg)
    return cfg


def cmd_experiment(args) -> int:
    from rich.console import Console

    from heapballoon.experiment import config, runner

    if args.clean:
        if os.geteuid() != 0:
            raise UsageError("--clean needs root (memory cgroups, swapoff)")
        if not runner.clean(Console(stderr=False), config.Config(out_dir="").swap_dir):
            print("nothing to clean")
        return 0
    if not args.out:
        raise UsageError("the following arguments are required: --out")
    command = "heapballoon " + shlex.join(sys.argv[1:] if sys.argv[1:2] == ["experiment"] else ["experiment"])
    cfg = config_of(args, command)
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
        if not os.access(cfg.out_dir, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as err:
        raise UsageError(f"cannot write the output directory {args.out}: {err.strerror}") from None
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if args.mode == "vm":
        from heapballoon.experiment import vmmode as run_mode
    else:
        run_mode = runner
    run_mode.run(cfg, Console(stderr=True))
    print(os.path.join(cfg.out_dir, "report.md"))
    return 0
