"""The `heapballoon` command line. Parses arguments, calls the library, prints results.

Every error heapballoon raises on purpose becomes one line on stderr and a non-zero exit
(:class:`~heapballoon.errors.HeapballoonError.exit_code`); no traceback reaches a user.
Sizes are converted from text to bytes here and nowhere else.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys

from heapballoon import __version__, protocol, transport
from heapballoon.errors import HeapballoonError, UsageError
from heapballoon.units import format_size, parse_size


def _pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise UsageError(f"invalid PID {text!r}: expected a process number or 'all'") from None
    if pid <= 0 or pid > (1 << 22):
        raise UsageError(f"invalid PID {text!r}: out of range")
    return pid


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid interval {text!r}: expected seconds, e.g. 2 or 0.5") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"invalid interval {text!r}: between 0.1 and 3600 seconds")
    return value


# ---------------------------------------------------------------------- host or guest

# The guest side (guest-driver, daemon, run, attach, agent-path, guest-unit, status, target)
# runs on Python 3.9+ with the standard library only. These commands are the host side: they
# are tested on Python 3.11+ and need the host extras (pip install 'heapballoon[host]').
HOST_COMMANDS = ("hostd", "vm", "image", "libvirt", "experiment")
HOST_MIN_PYTHON = (3, 11)
HOST_EXTRAS = ("qemu.qmp", "prometheus_client", "rich")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a missing parent package
        return False


def require_host(command: str) -> None:
    """UsageError (one line) unless this Python can run the host-side ``command``."""
    if sys.version_info < HOST_MIN_PYTHON:
        raise UsageError(f"`heapballoon {command}` is host side and needs Python "
                         f"{'.'.join(map(str, HOST_MIN_PYTHON))}+, this is {platform.python_version()}"
                         " (in a guest, only guest-driver, run, attach, agent-path, status and target are needed)")
    missing = [m for m in HOST_EXTRAS if not _importable(m)]
    if missing:
        raise UsageError(f"`heapballoon {command}` is host side and needs {', '.join(missing)}:"
                         " pip install 'heapballoon[host]'")


# ---------------------------------------------------------------------- process mode

def cmd_run(args) -> int:
    from heapballoon.agent import build, launch
    from heapballoon.errors import KernelError
    from heapballoon.linux import prctl

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("run needs a command after --, e.g.: heapballoon run -- java -Xmx1g -jar app.jar")
    if shutil.which(cmd[0]) is None:
        raise UsageError(f"command not found: {cmd[0]}")
    agent_arg = build.javaagent_arg(transport.socket_path(args.socket), args.name)
    env = dict(os.environ)
    if os.path.basename(cmd[0]) == "java":
        cmd[1:1] = [*launch.java_options(cmd, env), agent_arg]
    else:  # a wrapper script: every JVM it starts picks the agent up (its JDK is unknown here)
        env["JAVA_TOOL_OPTIONS"] = (env.get("JAVA_TOOL_OPTIONS", "") + " " + agent_arg).strip()
        env["JDK_JAVA_OPTIONS"] = (env.get("JDK_JAVA_OPTIONS", "") + " " + launch.NATIVE_ACCESS).strip()
    if args.ksm_merge:
        try:
            prctl.set_memory_merge(True)  # inherited through exec: KSM may merge the JVM's pages
        except KernelError as err:
            print(f"heapballoon: warning: KSM merging not enabled for this process: {err}", file=sys.stderr)
    try:
        os.execvpe(cmd[0], cmd, env)
    except FileNotFoundError:
        raise UsageError(f"command not found: {cmd[0]}") from None
    except PermissionError:
        raise UsageError(f"command not executable: {cmd[0]}") from None
    return 127  # not reached


def cmd_attach(args) -> int:
    from heapballoon.agent import build, stage
    from heapballoon.agent.attach import attach_agent

    pid = _pid(args.pid)
    sock = transport.socket_path(args.socket)
    # The JVM opens these in its own mount namespace as its own user: copies in its /tmp
    # when it could not read ours (another user's JVM, a container), see agent/stage.py.
    jar, native, copied = stage.for_jvm(pid, build.agent_jar(), build.native_lib(), sock)
    options = build.agent_options(sock, args.name, native)
    out = attach_agent(pid, jar, options)
    print(f"agent loaded into JVM {pid}" + (f" (from {os.path.dirname(jar)}, a copy it can read)" if copied else "")
          + (f": {out.strip()}" if out.strip() else ""))
    return 0


def cmd_agent_path(args) -> int:
    from heapballoon.agent import build

    if args.javaagent:
        print(build.javaagent_arg(transport.socket_path(args.socket), args.name))
    elif args.native:
        lib = build.native_lib()
        if lib is None:
            raise UsageError("no native library for this machine (see the warning above)")
        print(lib)
    else:
        print(build.agent_jar())
    return 0


def cmd_guest_unit(args) -> int:
    from heapballoon.guest import systemd

    sock = transport.socket_path(args.socket)
    if args.drop_in:
        from heapballoon.agent import build

        if not args.name:
            raise UsageError("guest-unit --drop-in needs --name SERVICE (the JVM's name in status)")
        print(systemd.drop_in_text(args.name, build.javaagent_arg(sock, args.name)), end="")
    else:
        print(systemd.unit_text(sock, stock=args.stock), end="")
    return 0


def _status_body(args) -> dict:
    """The driver's status, validated at the boundary (a malformed reply is a clear error)."""
    from heapballoon.status import DriverStatus

    body = transport.request(transport.socket_path(args.socket), protocol.StatusRequest(id=1)).body
    return DriverStatus.from_dict(body).to_dict()


def _host_request(args, msg: protocol.Message) -> protocol.Reply:
    """One request to hostd: an error names hostd (`heapballoon hostd`), not the driver."""
    return transport.request(transport.host_socket_path(args.host_socket), msg,
                             start_hint=transport.HOSTD_START_HINT)


def _gather_status(args) -> dict:
    """The driver's status, plus hostd's VMs when hostd runs (or is required by --vms)."""
    body: dict = {}
    driver_error = None
    hostd_runs = os.path.exists(transport.host_socket_path(args.host_socket))
    try:
        body = _status_body(args)
    except HeapballoonError as err:
        if not args.vms and not hostd_runs:
            raise
        driver_error = err  # VM mode only: hostd's VMs are the status
    if args.vms or hostd_runs:
        try:
            from heapballoon.status import HostStatus

            host_status = HostStatus.from_dict(_host_request(args, protocol.StatusRequest(id=1)).body).to_dict()
            body["vms"] = host_status["vms"]
            if host_status["policy"]:
                body["vm_policy"] = host_status["policy"]
            if "left_alone" in host_status:
                body["left_alone"] = host_status["left_alone"]
        except HeapballoonError:
            if args.vms or driver_error is not None:
                raise
    body.setdefault("jvms", [])
    return body


def cmd_status(args) -> int:
    if args.interval_s is not None and not args.watch:
        raise UsageError("--interval-s goes with --watch, e.g.: heapballoon status --watch --interval-s 2")
    if args.watch:
        from heapballoon.watch import watch_status

        return watch_status(lambda: _gather_status(args), args.interval_s or 2.0, as_json=args.json)
    body = _gather_status(args)
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
        return 0
    from heapballoon.render import render_status

    render_status(body)
    return 0


def cmd_target(args) -> int:
    auto = args.size == "auto"
    if auto and not args.vm and args.what in (None, "all"):
        raise UsageError("'auto' unpins one JVM or VM: heapballoon target PID auto, or target --vm NAME auto")
    size_bytes = 0 if auto else parse_size(args.size)
    if args.vm:
        if args.what is not None:
            raise UsageError("give either --vm NAME or a PID/'all', not both")
        _host_request(args, protocol.VMTarget(vm=args.vm, target_bytes=size_bytes, id=1, auto=auto))
        print(f"VM {args.vm}: target auto (hostd's policy decides)" if auto else
              f"target of VM {args.vm} set to {format_size(size_bytes)}")
        return 0
    if args.what is None:
        raise UsageError("target needs a PID or 'all' (or --vm NAME) and a SIZE, e.g.: heapballoon target all 512M")
    pid = None if args.what == "all" else _pid(args.what)
    reply = transport.request(transport.socket_path(args.socket),
                              protocol.SetTarget(pid=pid, target_bytes=size_bytes, id=1, auto=auto))
    who = "all JVMs" if pid is None else f"JVM {pid}"
    print(f"target of {who} set to {'auto (unpinned)' if auto else format_size(size_bytes)}")
    if pid is None:
        from heapballoon.status import TargetsReply

        for p, t in sorted(TargetsReply.from_dict(reply.body).targets.items()):
            print(f"  JVM {p}: {format_size(t)}")
    return 0


def cmd_policy(args) -> int:
    from heapballoon.status import PolicyReport

    if args.action != "explain":
        raise UsageError(f"unknown policy action {args.action!r}: try `heapballoon policy explain`")
    if args.vms:
        reply = _host_request(args, protocol.PolicyExplainRequest(id=1))
    else:
        reply = transport.request(transport.socket_path(args.socket), protocol.PolicyExplainRequest(id=1))
    report = PolicyReport.from_dict(reply.body)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(report.text)


# ---------------------------------------------------------------------- parser

class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="heapballoon", description="Reclaim idle JVM heap memory on overcommitted hosts.")
    p.add_argument("--version", action="version", version=f"heapballoon {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def with_socket(sp):
        sp.add_argument("--socket", help="driver socket (default $HEAPBALLOON_SOCKET or %s)" % transport.DEFAULT_SOCKET)
        return sp

    from heapballoon.driver import cli as driver_cli  # the driver daemon

    driver_cli.add_commands(sub, with_socket)

    r = with_socket(sub.add_parser("run", help="run a command with the agent loaded into its JVMs",
                                   description="Run a command with the agent loaded into its JVMs. A java command "
                                               "with -XX:+UseParallelGC also gets Parallel's compaction options "
                                               "(docs/agent.md, Parallel) unless it sets them."))
    r.add_argument("--name", help="name shown in status (default: the main class)")
    r.add_argument("--no-ksm-merge", dest="ksm_merge", action="store_false",
                   help="do not enable KSM merging (PR_SET_MEMORY_MERGE) for the process")
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    r.set_defaults(func=cmd_run)

    a = with_socket(sub.add_parser("attach", help="load the agent into a running JVM"))
    a.add_argument("pid")
    a.add_argument("--name")
    a.set_defaults(func=cmd_attach)

    ap = with_socket(sub.add_parser("agent-path", help="print the agent jar's path (or the -javaagent: option)"))
    ap.add_argument("--javaagent", action="store_true",
                    help="print the whole -javaagent:JAR=OPTIONS option, e.g. for JAVA_TOOL_OPTIONS")
    ap.add_argument("--native", action="store_true", help="print the native library's path")
    ap.add_argument("--name", help="with --javaagent: the name shown in status")
    ap.set_defaults(func=cmd_agent_path)

    gu = with_socket(sub.add_parser("guest-unit", help="print the guest driver's systemd unit (or a JVM drop-in)"))
    gu.add_argument("--drop-in", action="store_true", help="print a JVM service's drop-in (JAVA_TOOL_OPTIONS)")
    gu.add_argument("--name", help="with --drop-in: the JVM's name in status")
    gu.add_argument("--stock", action="store_true",
                    help="a stock host (no hostd: virtio-balloon, free page reporting): the direct way, no channel")
    gu.set_defaults(func=cmd_guest_unit)

    s = with_socket(sub.add_parser("status", help="show JVMs (and VMs) and their balloons"))
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--vms", action="store_true", help="require hostd (VM mode) to answer too")
    s.add_argument("--host-socket", help="hostd socket (default $HEAPBALLOON_HOST_SOCKET or %s)" % transport.DEFAULT_HOST_SOCKET)
    s.add_argument("--watch", action="store_true", help="redraw in place until Ctrl-C")
    s.add_argument("--interval-s", type=_interval, help="seconds between redraws with --watch (default 2)")
    s.set_defaults(func=cmd_status)

    t = with_socket(sub.add_parser("target", help="set a balloon target: PID, all, or --vm NAME"))
    t.add_argument("what", nargs="?", metavar="PID|all")
    t.add_argument("size", metavar="SIZE", help="e.g. 512M, 1G; 0 deflates; auto unpins a JVM or VM (--policy auto)")
    t.add_argument("--vm", metavar="NAME", help="target a VM (through hostd)")
    t.add_argument("--host-socket")
    t.set_defaults(func=cmd_target)

    pol = with_socket(sub.add_parser("policy", help="the automatic policy: `policy explain` (its last tick)"))
    pol.add_argument("action", choices=("explain",))
    pol.add_argument("--json", action="store_true", help="machine-readable output")
    pol.add_argument("--vms", action="store_true", help="hostd's policy (VM mode) instead of the driver's")
    pol.add_argument("--host-socket", help="hostd socket (default $HEAPBALLOON_HOST_SOCKET or %s)" % transport.DEFAULT_HOST_SOCKET)
    pol.set_defaults(func=cmd_policy)
    from heapballoon.experiment import cli as experiment_cli  # the overcommit experiment

    experiment_cli.add_commands(sub)

    from heapballoon.vm import cli as vm_cli  # VM mode: image, vm

    vm_cli.add_commands(sub)
    from heapballoon.libvirt import cli as libvirt_cli  # libvirt domains: check, prepare

    libvirt_cli.add_commands(sub)
    for name, (help_text, _run) in PASSTHROUGH.items():
        # listed in --help; the arguments are parsed by the command itself (see main)
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def _hostd(argv: list[str]) -> int:
    from heapballoon.host import hostd

    def libvirt_source(uri: str, engine: str):
        from heapballoon.libvirt.backend import LibvirtBackend  # libvirt/ imports host/, not the reverse

        return LibvirtBackend(uri, engine)

    return hostd.main(argv, libvirt_source=libvirt_source)


def _guest_driver(argv: list[str]) -> int:
    from heapballoon.guest import driver

    return driver.main(argv)


# Commands that parse their own arguments (every word after the command name is theirs,
# --help included): name → (help, run(argv) → exit code). main() dispatches them before
# argparse sees the command line, so no parser internals are involved.
PASSTHROUGH = {
    "hostd": ("run the host memory manager (VM mode)", _hostd),
    "guest-driver": ("run the guest balloon driver (inside a VM; docs/guest.md)", _guest_driver),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in HOST_COMMANDS:
        try:
            require_host(argv[0])
        except UsageError as err:
            print(f"heapballoon: error: {err}", file=sys.stderr)
            return err.exit_code
    if argv and argv[0] in PASSTHROUGH:
        try:
            return PASSTHROUGH[argv[0]][1](argv[1:])
        except HeapballoonError as err:
            print(f"heapballoon: error: {err}", file=sys.stderr)
            return err.exit_code
        except KeyboardInterrupt:
            return 130
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except HeapballoonError as err:
        print(f"heapballoon: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
