"""The `heapballoon` command line. Parses arguments, calls the library, prints results.

Every error heapballoon raises on purpose becomes one line on stderr and a non-zero exit
(:class:`~heapballoon.errors.HeapballoonError.exit_code`); no traceback reaches a user.
Sizes are converted from text to bytes here and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


# ---------------------------------------------------------------------- process mode

def cmd_daemon(args) -> int:
    from heapballoon.driver.daemon import Driver, serve

    _setup_logging(args.log_level)
    driver = Driver(transport.socket_path(args.socket), ksm_mode=args.ksm, reclaim=args.reclaim,
                    interval_s=args.interval_s, socket_mode=int(args.socket_mode, 8))
    if args.metrics:
        from heapballoon.driver.metrics import start_metrics

        start_metrics(driver, args.metrics)
    return serve(driver)


def cmd_run(args) -> int:
    from heapballoon.agent import build
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
    # The agent's JNI library is a restricted method call on JDK 24+ (JEP 472): allow it, so the
    # JVM prints no warning. JDK 17 to 23 accept the option silently.
    native_access = "--enable-native-access=ALL-UNNAMED"
    if os.path.basename(cmd[0]) == "java":
        cmd[1:1] = [native_access, agent_arg]
    else:  # a wrapper script: every JVM it starts picks the agent up
        env["JAVA_TOOL_OPTIONS"] = (env.get("JAVA_TOOL_OPTIONS", "") + " " + agent_arg).strip()
        env["JDK_JAVA_OPTIONS"] = (env.get("JDK_JAVA_OPTIONS", "") + " " + native_access).strip()
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
    from heapballoon.agent import build
    from heapballoon.agent.attach import attach_agent

    pid = _pid(args.pid)
    options = build.agent_options(transport.socket_path(args.socket), args.name, build.native_lib())
    out = attach_agent(pid, str(build.agent_jar()), options)
    print(f"agent loaded into JVM {pid}" + (f": {out.strip()}" if out.strip() else ""))
    return 0


def _status_body(args) -> dict:
    """The driver's status, validated at the boundary (a malformed reply is a clear error)."""
    from heapballoon.status import DriverStatus

    body = transport.request(transport.socket_path(args.socket), protocol.StatusRequest(id=1)).body
    return DriverStatus.from_dict(body).to_dict()


def cmd_status(args) -> int:
    body: dict = {}
    errors = []
    try:
        body = _status_body(args)
    except HeapballoonError as err:
        if not args.vms:
            raise
        errors.append(str(err))
    if args.vms or os.path.exists(transport.host_socket_path(args.host_socket)):
        try:
            from heapballoon.status import HostStatus

            host = transport.request(transport.host_socket_path(args.host_socket), protocol.StatusRequest(id=1)).body
            hs = HostStatus.from_dict(host).to_dict()
            body["vms"] = hs["vms"]
            if "left_alone" in hs:
                body["left_alone"] = hs["left_alone"]
        except HeapballoonError as err:
            if args.vms:
                raise
    body.setdefault("jvms", [])
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
        return 0
    from heapballoon.render import render_status

    render_status(body)
    return 0


def cmd_target(args) -> int:
    size_bytes = parse_size(args.size)
    if args.vm:
        if args.what is not None:
            raise UsageError("give either --vm NAME or a PID/'all', not both")
        reply = transport.request(transport.host_socket_path(args.host_socket),
                                  protocol.VMTarget(vm=args.vm, target_bytes=size_bytes, id=1))
        print(f"target of VM {args.vm} set to {format_size(size_bytes)}")
        return 0
    if args.what is None:
        raise UsageError("target needs a PID or 'all' (or --vm NAME) and a SIZE, e.g.: heapballoon target all 512M")
    pid = None if args.what == "all" else _pid(args.what)
    reply = transport.request(transport.socket_path(args.socket),
                              protocol.SetTarget(pid=pid, target_bytes=size_bytes, id=1))
    who = "all JVMs" if pid is None else f"JVM {pid}"
    print(f"target of {who} set to {format_size(size_bytes)}")
    if pid is None:
        from heapballoon.status import TargetsReply

        for p, t in sorted(TargetsReply.from_dict(reply.body).targets.items()):
            print(f"  JVM {p}: {format_size(t)}")
    return 0


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

    d = with_socket(sub.add_parser("daemon", help="run the balloon driver daemon"))
    d.add_argument("--ksm", choices=("auto", "on", "off"), default="auto", help="configure KSM (default auto)")
    d.add_argument("--reclaim", choices=("auto", "direct", "ksm"), default="auto",
                   help="how balloon pages are freed: direct (agent madvise, default when available) or ksm")
    d.add_argument("--interval-s", type=float, default=1.0, help="control loop period in seconds")
    d.add_argument("--socket-mode", default="600", help="octal mode of the socket (default 600: root only)")
    d.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics, e.g. 127.0.0.1:9477")
    d.add_argument("--log-level", default="info")
    d.set_defaults(func=cmd_daemon)

    r = with_socket(sub.add_parser("run", help="run a command with the agent loaded into its JVMs"))
    r.add_argument("--name", help="name shown in status (default: the main class)")
    r.add_argument("--no-ksm-merge", dest="ksm_merge", action="store_false",
                   help="do not enable KSM merging (PR_SET_MEMORY_MERGE) for the process")
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    r.set_defaults(func=cmd_run)

    a = with_socket(sub.add_parser("attach", help="load the agent into a running JVM"))
    a.add_argument("pid")
    a.add_argument("--name")
    a.set_defaults(func=cmd_attach)

    s = with_socket(sub.add_parser("status", help="show JVMs (and VMs) and their balloons"))
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--vms", action="store_true", help="require hostd (VM mode) to answer too")
    s.add_argument("--host-socket", help="hostd socket (default $HEAPBALLOON_HOST_SOCKET or %s)" % transport.DEFAULT_HOST_SOCKET)
    s.set_defaults(func=cmd_status)

    t = with_socket(sub.add_parser("target", help="set a balloon target: PID, all, or --vm NAME"))
    t.add_argument("what", nargs="?", metavar="PID|all")
    t.add_argument("size", metavar="SIZE", help="e.g. 512M, 1G; 0 deflates")
    t.add_argument("--vm", metavar="NAME", help="target a VM (through hostd)")
    t.add_argument("--host-socket")
    t.set_defaults(func=cmd_target)

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

    return hostd.main(argv)


# Commands that parse their own arguments (every word after the command name is theirs,
# --help included): name → (help, run(argv) → exit code). main() dispatches them before
# argparse sees the command line, so no parser internals are involved.
PASSTHROUGH = {
    "hostd": ("run the host memory manager (VM mode)", _hostd),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
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
