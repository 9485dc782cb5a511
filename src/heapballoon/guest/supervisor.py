"""The guest supervisor: the one long-lived service /init runs inside a heapballoon VM.

Pure standard library (the guest has Debian's python3.11 and nothing from PyPI). It

* finds the virtio-serial ports by name (``/sys/class/virtio-ports/*/name``; device nodes are
  created from ``.../dev`` if devtmpfs has not made them);
* serves ``org.heapballoon.exec``: each line is validated into a typed request by
  :mod:`heapballoon.vm.execproto` (the wire format lives there) and answered with an
  ``exec_result``, a ``pong`` or an ``error`` naming the request id when it could be read;
* starts the guest balloon driver (``python3 -m heapballoon.guest.driver --uplink <port>
  --socket /run/heapballoon/heapballoon.sock``) when that module exists, restarting it if it dies;
* sets ``JAVA_TOOL_OPTIONS`` so every JVM loads the heapballoon agent (when the image has it);
* runs the VM's command (``/heapballoon/cmd.json``) once, its output prefixed ``[cmd]`` on the
  console and copied to ``/var/log/cmd.log``;
* prints markers on the console: ``HEAPBALLOON-READY``, ``HEAPBALLOON-CMD-START``,
  ``HEAPBALLOON-CMD-EXIT rc=N``.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time

from heapballoon.errors import KernelError
from heapballoon.linux.virtio import PortFile, VirtioPorts
from heapballoon.vm import execproto
from heapballoon.vm.execproto import ExecError, ExecProtocolError, ExecRequest, ExecResult, Ping, Pong

CHANNEL_PORT = "org.heapballoon.0"
EXEC_PORT = "org.heapballoon.exec"
SOCKET = "/run/heapballoon/heapballoon.sock"
CMD_FILE = "/heapballoon/cmd.json"
CMD_STARTED = "/run/heapballoon/cmd.started"
CMD_LOG = "/var/log/cmd.log"
DRIVER_LOG = "/var/log/driver.log"
AGENT_JAR = "/opt/heapballoon/heapballoon-agent.jar"
AGENT_NATIVE = "/opt/heapballoon/libheapballoon.so"
MAX_LINE = 1 << 20          # protocol v1 line limit
MAX_OUTPUT = 256 << 10      # per stream in an exec_result, before encoding

_console_lock = threading.Lock()


def console(msg: str) -> None:
    with _console_lock:
        try:
            sys.stdout.write(msg.rstrip("\n") + "\n")
            sys.stdout.flush()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# virtio ports

def find_ports(wanted: tuple[str, ...], timeout_s: float = 10.0,
               ports: VirtioPorts | None = None) -> dict[str, str]:
    """Port name → device path for the names in ``wanted`` that show up within ``timeout_s``."""
    ports = ports or VirtioPorts()
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            names = ports.names()
        except KernelError as err:
            console(f"heapballoon-supervisor: {err}")
            names = {}
        for name, entry in names.items():
            if name in wanted and name not in found:
                try:
                    found[name] = ports.ensure_node(entry)
                except KernelError as err:
                    console(f"heapballoon-supervisor: {err}")
        if len(found) == len(wanted) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


class Port:
    """The exec port: lines in (:class:`heapballoon.linux.virtio.PortFile`, the one port
    reader; an over-long line is ``None``), replies out, one whole reply at a time."""

    def __init__(self, path: str) -> None:
        self.file = PortFile(path, MAX_LINE)
        self.wlock = threading.Lock()

    def lines(self):
        return self.file.lines()

    def send(self, msg: execproto.Reply) -> None:
        data = execproto.encode(msg)
        with self.wlock:
            try:
                self.file.write_all(data)
            except OSError:
                return  # host went away; the reply is lost, the host side times out


# ---------------------------------------------------------------------------------------------
# exec service

def _encode(data: bytes, encoding: str, limit: int) -> tuple[str, bool]:
    truncated = len(data) > limit
    data = data[:limit]
    if encoding == "base64":
        return base64.b64encode(data).decode(), truncated
    return data.decode("utf-8", errors="replace"), truncated


def run_exec(req: ExecRequest) -> ExecResult:
    """Run one validated request; its result, output cut so the reply fits one line."""
    argv = list(req.argv)
    env = dict(os.environ)
    env.update(dict(req.env))
    t0 = time.monotonic()
    timed_out = False
    try:
        proc = subprocess.run(argv, input=req.stdin.encode() if req.stdin is not None else None,
                              stdin=None if req.stdin is not None else subprocess.DEVNULL,
                              capture_output=True, timeout=req.timeout_s, env=env, cwd=req.cwd,
                              start_new_session=True)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
        if rc < 0:
            rc = 128 - rc
    except subprocess.TimeoutExpired as e:
        rc, out, err = 124, e.stdout or b"", (e.stderr or b"") + f"\ntimed out after {req.timeout_s}s\n".encode()
        timed_out = True
    except FileNotFoundError:
        rc, out, err = 127, b"", f"{argv[0]}: command not found\n".encode()
    except PermissionError:
        rc, out, err = 126, b"", f"{argv[0]}: permission denied\n".encode()
    except OSError as e:
        rc, out, err = 126, b"", f"{argv[0]}: {e}\n".encode()
    limit = MAX_OUTPUT
    while True:
        so, t1 = _encode(out, req.encoding, limit)
        se, t2 = _encode(err, req.encoding, limit)
        result = ExecResult(id=req.id, rc=rc, stdout=so, stderr=se, encoding=req.encoding,
                            elapsed_ms=int((time.monotonic() - t0) * 1000), timed_out=timed_out,
                            truncated=t1 or t2)
        if len(execproto.encode(result)) < MAX_LINE - 1024 or limit < 1024:
            return result
        limit //= 2


def handle_line(line: bytes | None) -> execproto.Reply | ExecRequest:
    """The answer to one line from the host, or the request to run (validated here)."""
    if line is None:
        return ExecError(None, "line too long")
    try:
        req = execproto.parse_request(line)
    except ExecProtocolError as err:
        return ExecError(err.id, str(err)[:200])
    if isinstance(req, Ping):
        return Pong(req.id)
    return req


def serve_exec(port: Port) -> None:
    for line in port.lines():
        if line is not None and not line.strip():
            continue
        answer = handle_line(line)
        if isinstance(answer, ExecRequest):
            threading.Thread(target=lambda r=answer: port.send(run_exec(r)), daemon=True).start()
        else:
            port.send(answer)


# ---------------------------------------------------------------------------------------------
# guest driver

def java_tool_options() -> str | None:
    if not os.path.exists(AGENT_JAR):
        return None
    opts = f"socket={SOCKET}"
    if os.path.exists(AGENT_NATIVE):
        opts += f",native={AGENT_NATIVE}"
    return f"-javaagent:{AGENT_JAR}={opts}"


def driver_available() -> bool:
    try:
        return importlib.util.find_spec("heapballoon.guest.driver") is not None
    except (ImportError, ValueError):
        return False


def driver_args(spec: dict) -> list[str]:
    """The guest driver's extra arguments for this VM: ``spec["driver_args"]`` if given, else for
    a ``--reclaim virtio`` VM the direct way with every freed 4 KiB page reported (issue 17)."""
    args = spec.get("driver_args")
    if isinstance(args, list):
        return [str(a) for a in args]
    if spec.get("reclaim") == "virtio":
        return ["--reclaim", "direct", "--report-order", "0"]
    return []


def supervise_driver(uplink: str | None, extra: list[str]) -> None:
    backoff = 1.0
    while True:
        argv = [sys.executable, "-m", "heapballoon.guest.driver", "--socket", SOCKET, *extra]
        if uplink:
            argv += ["--uplink", uplink]
        t0 = time.monotonic()
        with open(DRIVER_LOG, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            console(f"HEAPBALLOON-DRIVER-START pid={proc.pid}")
            rc = proc.wait()
        console(f"HEAPBALLOON-DRIVER-EXIT rc={rc} (see {DRIVER_LOG}); restarting")
        backoff = 1.0 if time.monotonic() - t0 > 30 else min(backoff * 2, 30.0)
        time.sleep(backoff)


# ---------------------------------------------------------------------------------------------
# the VM's command

def load_cmd() -> dict:
    try:
        with open(CMD_FILE) as f:
            spec = json.load(f)
        return spec if isinstance(spec, dict) else {}
    except (OSError, ValueError):
        return {}


def run_cmd(spec: dict) -> None:
    argv = spec.get("argv") or []
    if not argv or os.path.exists(CMD_STARTED):
        return
    with open(CMD_STARTED, "w") as f:
        f.write(str(os.getpid()))
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
    console(f"HEAPBALLOON-CMD-START {json.dumps(argv)}")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, cwd=spec.get("cwd") or "/root")
    except OSError as e:
        console(f"[cmd] {argv[0]}: {e}")
        console("HEAPBALLOON-CMD-EXIT rc=127")
        return
    with open(CMD_LOG, "ab", buffering=0) as log:
        for line in iter(proc.stdout.readline, b""):
            log.write(line)
            console("[cmd] " + line.decode("utf-8", errors="replace"))
    rc = proc.wait()
    if rc < 0:
        rc = 128 - rc
    console(f"HEAPBALLOON-CMD-EXIT rc={rc}")


def main() -> int:
    os.makedirs("/run/heapballoon", exist_ok=True)
    os.makedirs("/var/log", exist_ok=True)
    spec = load_cmd()
    jto = spec.get("java_tool_options", java_tool_options())
    if jto:
        os.environ["JAVA_TOOL_OPTIONS"] = jto
    os.environ.setdefault("JAVA_HOME", "/opt/heapballoon/jre")

    ports = find_ports((CHANNEL_PORT, EXEC_PORT))
    missing = [p for p in (CHANNEL_PORT, EXEC_PORT) if p not in ports]
    if missing:
        console(f"heapballoon-supervisor: virtio ports missing: {', '.join(missing)}")
    if EXEC_PORT in ports:
        threading.Thread(target=serve_exec, args=(Port(ports[EXEC_PORT]),), daemon=True,
                         name="exec").start()
    if driver_available():
        threading.Thread(target=supervise_driver, args=(ports.get(CHANNEL_PORT), driver_args(spec)), daemon=True,
                         name="driver").start()
    else:
        console("heapballoon-supervisor: no heapballoon.guest.driver in this image; balloon driver not started")
    console(f"HEAPBALLOON-READY ports={','.join(sorted(ports))} agent={'yes' if jto else 'no'}")
    threading.Thread(target=run_cmd, args=(spec,), daemon=True, name="cmd").start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
