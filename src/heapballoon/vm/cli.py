"""CLI commands of VM mode, added to ``heapballoon``'s parser by :func:`add_commands`::

    heapballoon image build [--force] [--quiet]
    heapballoon image show
    heapballoon vm accel [--reprobe]
    heapballoon vm start NAME [--memory 1G] [--cpus 1] [--reclaim pfn|ksm|virtio] [--copy HOST:GUEST]...
                              [--env K=V]... [--no-wait] [-- CMD...]
    heapballoon vm stop NAME
    heapballoon vm list [--json]
    heapballoon vm logs NAME [--follow]
    heapballoon vm exec NAME [--timeout-s 60] -- CMD...     (exit code = the guest command's)
    heapballoon vm balloon NAME [SIZE]                      (virtio-balloon: RAM left to the guest)

``heapballoon hostd`` is registered by heapballoon.cli (it hands every argument to hostd's
own parser).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from heapballoon.errors import UsageError, VMError


def _cmd_argv(rest: list[str]) -> list[str]:
    return rest[1:] if rest and rest[0] == "--" else rest


def cmd_image_build(args) -> int:
    from heapballoon.vm.image import build_image

    img = build_image(progress=not args.quiet, force=args.force)
    print(f"image {img.key}: kernel {img.kernel_version}, initrd {img.initrd_bytes / 2**20:.1f} MiB, "
          f"root disk {img.rootdisk_bytes / 2**20:.1f} MiB")
    print(f"  {img.kernel_path}\n  {img.initrd_path}\n  {img.rootdisk_path}")
    return 0


def cmd_image_show(args) -> int:
    from heapballoon.vm.image import cached_image

    img = cached_image()
    if img is None:
        print("no guest image built yet (heapballoon image build)")
        return 1
    print(json.dumps({"key": img.key, "kernel": str(img.kernel_path), "initrd": str(img.initrd_path),
                      "rootdisk": str(img.rootdisk_path) if img.rootdisk_path else None,
                      "kernel_version": img.kernel_version, "initrd_bytes": img.initrd_bytes,
                      "rootdisk_bytes": img.rootdisk_bytes}, indent=2))
    return 0


def cmd_vm_accel(args) -> int:
    from heapballoon.vm.accel import accel_verdict, forget_verdict

    if args.reprobe:
        forget_verdict()
    accel, reason = accel_verdict()
    print(f"{accel}: {reason}")
    return 0


def _parse_copy(text: str) -> tuple[str, str]:
    host, sep, guest = text.rpartition(":")
    if not sep or not host or not guest:
        raise UsageError(f"invalid --copy {text!r}: expected HOST_PATH:GUEST_PATH")
    return host, guest


def _start_options(p: argparse.ArgumentParser, defaults: bool = True) -> argparse.ArgumentParser:
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    p.add_argument("--memory", default=d("1G"), help="guest RAM (default 1G)")
    p.add_argument("--cpus", type=int, default=d(1))
    p.add_argument("--reclaim", choices=("pfn", "ksm", "virtio"), default=d("pfn"),
                   help="pfn: shared memfd RAM reclaimed by page number (default); ksm: mergeable private RAM; "
                        "virtio: no hostd, the stock virtio-balloon with free page reporting (vm balloon)")
    p.add_argument("--copy", action="append", metavar="HOST:GUEST", help="put a file or directory into the guest")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="environment of CMD")
    p.add_argument("--no-wait", action="store_true", default=d(False), help="return once QEMU runs, before the guest is ready")
    return p


class _OptionsParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"vm start: {message}")


def cmd_vm_start(args) -> int:
    from heapballoon.units import format_size, parse_size
    from heapballoon.vm.launcher import start_vm

    # options may also follow NAME (argparse hands them over with the command): re-parse them
    rest = list(args.rest)
    cut = rest.index("--") if "--" in rest else len(rest)
    opts, args.cmd = rest[:cut], rest[cut + 1:]
    if opts:
        if not all(o.startswith("-") for o in opts[:1]):
            raise UsageError(f"vm start: put the command after --: heapballoon vm start NAME [OPTIONS] -- {' '.join(opts)}")
        _start_options(_OptionsParser(prog="heapballoon vm start", add_help=False), defaults=False
                       ).parse_args(opts, namespace=args)

    env = {}
    for kv in args.env or []:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise UsageError(f"invalid --env {kv!r}: expected KEY=VALUE")
        env[k] = v
    t0 = time.monotonic()
    info = start_vm(args.name, parse_size(args.memory), cpus=args.cpus,
                    copies=[_parse_copy(c) for c in args.copy or []], reclaim=args.reclaim,
                    cmd=_cmd_argv(args.cmd), env=env, wait=not args.no_wait, progress=True)
    state = "ready" if not args.no_wait else "started"
    print(f"vm {info.name} {state} in {time.monotonic() - t0:.1f}s: pid {info.pid}, "
          f"{format_size(info.memory_bytes)}, {info.cpus} cpu, accel {info.accel}, reclaim {info.reclaim}")
    print(f"  state dir {info.state_dir}")
    return 0


def cmd_vm_stop(args) -> int:
    from heapballoon.vm.launcher import stop_vm

    stop_vm(args.name)
    print(f"vm {args.name} stopped")
    return 0


def cmd_vm_list(args) -> int:
    from dataclasses import asdict

    from heapballoon.units import format_size
    from heapballoon.vm.registry import list_vms

    vms = list_vms()
    if args.json:
        print(json.dumps([asdict(v) for v in vms], indent=2))
        return 0
    if not vms:
        print("no VMs")
        return 0
    print(f"{'NAME':<20} {'STATE':<8} {'PID':>8} {'MEMORY':>10} {'CPUS':>4} {'ACCEL':<5} {'RECLAIM':<7} CMD")
    for v in vms:
        print(f"{v.name:<20} {v.state:<8} {v.pid:>8} {format_size(v.memory_bytes):>10} {v.cpus:>4} "
              f"{v.accel:<5} {v.reclaim:<7} {' '.join(v.cmd)}")
    return 0


def cmd_vm_logs(args) -> int:
    from heapballoon.vm.registry import get_vm, vm_logs

    text = vm_logs(args.name)
    sys.stdout.write(text)
    sys.stdout.flush()
    if not args.follow:
        return 0
    pos = len(text.encode())
    info = get_vm(args.name)
    try:
        while True:
            with open(info.console_log, "rb") as f:
                f.seek(pos)
                chunk = f.read()
            if chunk:
                pos += len(chunk)
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
            elif get_vm(args.name).state != "running":
                return 0
            else:
                time.sleep(0.2)
    except VMError:
        return 0


def _exec_options(timeout_s: float, rest: list[str]) -> tuple[float, list[str]]:
    """``--timeout-s`` written after NAME (argparse hands it over in the command's remainder)."""
    while rest and rest[0] != "--" and rest[0].startswith("--timeout-s"):
        opt = rest.pop(0)
        value = opt.partition("=")[2] if "=" in opt else (rest.pop(0) if rest else "")
        try:
            timeout_s = float(value)
        except ValueError:
            raise UsageError(f"vm exec: --timeout-s takes seconds, not {value!r}") from None
        if not 0 < timeout_s <= 86400:
            raise UsageError(f"vm exec: --timeout-s must be in (0, 86400], not {value}")
    return timeout_s, rest


def cmd_vm_exec(args) -> int:
    from heapballoon.vm.execclient import vm_exec

    timeout_s, rest = _exec_options(args.timeout_s, list(args.cmd))
    argv = _cmd_argv(rest)
    if not argv:
        raise UsageError("vm exec: no command given (heapballoon vm exec NAME -- CMD...)")
    rc, out, err = vm_exec(args.name, argv, timeout_s=timeout_s)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return rc


def cmd_vm_balloon(args) -> int:
    from heapballoon.units import format_size, parse_size
    from heapballoon.vm.balloon import query_balloon, set_balloon

    if args.size is not None:
        size = parse_size(args.size)
        b = set_balloon(args.name, size)
        print(f"vm {b.name}: asked the guest to go to {format_size(size)} (the virtio-balloon moves on the guest's "
              f"time; it has {format_size(b.actual_bytes)} now)")
        return 0
    b = query_balloon(args.name)
    print(f"vm {b.name}: guest has {format_size(b.actual_bytes)} of {format_size(b.memory_bytes)} "
          f"(the virtio-balloon holds {format_size(b.memory_bytes - b.actual_bytes)})")
    return 0


def add_commands(sub) -> None:
    """Add ``image`` and ``vm`` to the top-level subparsers ``sub``."""
    img = sub.add_parser("image", help="build or show the guest image (VM mode)")
    isub = img.add_subparsers(dest="image_command", metavar="build|show")
    b = isub.add_parser("build", help="build the guest image (cached; rebuilt when inputs change)")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.add_argument("--quiet", action="store_true", help="no progress output")
    b.set_defaults(func=cmd_image_build)
    isub.add_parser("show", help="show the newest cached image").set_defaults(func=cmd_image_show)

    vm = sub.add_parser("vm", help="QEMU guests: start, stop, list, logs, exec")
    vsub = vm.add_subparsers(dest="vm_command", metavar="start|stop|list|logs|exec|balloon|accel")
    s = vsub.add_parser("start", help="boot a VM (waits until the guest is ready)")
    s.add_argument("name")
    _start_options(s)
    s.add_argument("rest", nargs=argparse.REMAINDER, metavar="[OPTIONS] -- CMD...",
                   help="command the guest runs once it is up")
    s.set_defaults(func=cmd_vm_start)

    st = vsub.add_parser("stop", help="stop a VM and remove its state")
    st.add_argument("name")
    st.set_defaults(func=cmd_vm_stop)

    ls = vsub.add_parser("list", help="list VMs")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_vm_list)

    lg = vsub.add_parser("logs", help="print a VM's console")
    lg.add_argument("name")
    lg.add_argument("-f", "--follow", action="store_true")
    lg.set_defaults(func=cmd_vm_logs)

    ex = vsub.add_parser("exec", help="run a command in a VM; exits with its exit code")
    ex.add_argument("name")
    ex.add_argument("--timeout-s", type=float, default=60.0)
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    ex.set_defaults(func=cmd_vm_exec)

    bl = vsub.add_parser("balloon", help="show or set the guest RAM the virtio-balloon leaves (QMP balloon)")
    bl.add_argument("name")
    bl.add_argument("size", nargs="?", help="guest RAM to leave, e.g. 624M (omit: show)")
    bl.set_defaults(func=cmd_vm_balloon)

    ac = vsub.add_parser("accel", help="show (or --reprobe) the accelerator verdict: kvm or tcg")
    ac.add_argument("--reprobe", action="store_true")
    ac.set_defaults(func=cmd_vm_accel)
