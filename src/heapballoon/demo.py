"""`make demo`: heapballoon's main job, shown on one machine with real JVMs.

It runs the commands a user would run (printed as it goes), in a private socket so it never
disturbs a daemon already running:

1. `heapballoon daemon` in the background;
2. `heapballoon run -- java -Xms1g -Xmx1g ... ChurnApp` (200 MiB live data, churning);
3. `heapballoon target PID 512M` — the balloon inflates and the JVM's RSS falls;
4. the application grows its live set to 700 MiB — the balloon gives way, no OOM;
5. `heapballoon target PID 0` — everything is given back;
6. VM mode, when QEMU is installed: a guest JVM's memory reclaimed by the host (``--no-vm``
   skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from heapballoon.errors import KernelError
from heapballoon.linux.procfs import ProcFS
from heapballoon.poll import Timeout, wait_until
from heapballoon.render import render_status
from heapballoon.units import format_size

PY = sys.executable
MIB = 1 << 20


class Narrator:
    """What the demo shows: headings, the commands it runs and their output, on one rich console.

    Made in :func:`main` (nothing is created at import time) and handed to each part of the
    demo, the VM part included (``heapballoon.demo_vm`` never imports this module).
    """

    def __init__(self, console) -> None:
        self.console = console

    def say(self, text: str) -> None:
        self.console.print(f"\n[bold cyan]▶ {text}[/]")

    def show_cmd(self, args: list[str]) -> None:
        self.console.print(f"[dim]$ heapballoon {shlex.join(map(str, args))}[/]")

    def cli(self, args: list, env: dict, check: bool = True) -> subprocess.CompletedProcess:
        self.show_cmd(args)
        proc = subprocess.run([PY, "-m", "heapballoon", *map(str, args)], env=env, capture_output=True, text=True)
        if proc.stdout.strip() and "--json" not in args:
            self.console.print(proc.stdout.rstrip())
        if check and proc.returncode != 0:
            raise SystemExit(f"demo: `heapballoon {' '.join(map(str, args))}` failed: {proc.stderr.strip()}")
        return proc

    @staticmethod
    def wait(pred, timeout_s: float, what: str):
        try:
            return wait_until(pred, timeout_s, what)
        except Timeout as err:
            raise SystemExit(f"demo: {err}") from err


def status(env: dict) -> dict:
    proc = subprocess.run([PY, "-m", "heapballoon", "status", "--json"], env=env, capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"jvms": []}


def rss_bytes(pid: int, procfs: ProcFS | None = None) -> int:
    try:
        return (procfs or ProcFS()).rss_bytes(pid)
    except KernelError:
        return 0


def process_demo(env: dict, ui: Narrator) -> None:
    from heapballoon.agent import build

    say, show_cmd, cli, wait, console = ui.say, ui.show_cmd, ui.cli, ui.wait, ui.console

    say("Building the Java balloon agent (cached after the first run)")
    console.print(f"agent jar: {build.agent_jar()}\nnative library: {build.native_lib() or 'unavailable (KSM path only)'}")

    say("Starting the balloon driver daemon")
    show_cmd(["daemon"])
    log = open(os.path.join(env["HEAPBALLOON_DEMO_DIR"], "daemon.log"), "w")
    daemon = subprocess.Popen([PY, "-m", "heapballoon", "daemon", "--interval-s", "0.5"], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    app = None
    try:
        wait(lambda: os.path.exists(env["HEAPBALLOON_SOCKET"]), 20, "the daemon's socket")
        say("Starting a JVM: 1 GiB heap, 200 MiB of live data, churning 200 MiB/s, after a 700 MiB load spike")
        java = ["java", "-Xms1g", "-Xmx1g", "-XX:+UseG1GC", "-jar", str(build.demo_jar()),
                "--live-mib", "200", "--churn-mib-per-s", "200", "--spike-mib", "700"]
        show_cmd(["run", "--name", "orders", "--", *java])
        app = subprocess.Popen([PY, "-m", "heapballoon", "run", "--name", "orders", "--", *java], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        last: dict = {}

        def pump():
            for line in app.stdout:
                try:
                    last.update(json.loads(line))
                except ValueError:
                    pass

        threading.Thread(target=pump, daemon=True).start()
        pid = app.pid
        wait(lambda: any(j["pid"] == pid for j in status(env)["jvms"]), 30, "the agent to register")
        wait(lambda: last.get("allocated_mib", 0) > 1500, 60, "the application to warm up")
        rss_before = rss_bytes(pid)
        console.print(f"JVM {pid} resident memory: [bold]{format_size(rss_before)}[/]")
        render_status(status(env), console)

        say("Asking the JVM for 512 MiB")
        cli(["target", pid, "512M"], env)
        t0 = time.monotonic()

        def reclaimed():
            j = next((j for j in status(env)["jvms"] if j["pid"] == pid), None)
            return j if j and j["reclaimed_bytes"] >= 460 * MIB and rss_before - rss_bytes(pid) >= 400 * MIB else None

        j = wait(reclaimed, 30, "the balloon to be reclaimed")
        console.print(f"reclaimed [bold green]{format_size(j['reclaimed_bytes'])}[/] (verified in pagemap) in "
                      f"{time.monotonic() - t0:.1f} s; RSS {format_size(rss_before)} → "
                      f"[bold green]{format_size(rss_bytes(pid))}[/]")
        render_status(status(env), console)

        say("The application grows its live data to 700 MiB: the balloon gives way")
        app.stdin.write("live 700\n")
        app.stdin.flush()
        wait(lambda: last.get("live_mib") == 700 or app.poll() is not None, 90, "the live set to grow")
        if app.poll() is not None or last.get("error"):
            raise SystemExit(f"demo: the application failed: {last}")
        j = wait(lambda: next((j for j in status(env)["jvms"] if j["pid"] == pid and j["balloon_bytes"] <= 324 * MIB), None),
                 15, "the balloon to give way")
        console.print(f"no OutOfMemoryError; data checks passed: {last.get('checks')}, errors: {last.get('errors', 0)}; "
                      f"balloon now {format_size(j['balloon_bytes'])}")

        say("Giving everything back")
        cli(["target", pid, "0"], env)
        wait(lambda: next((j for j in status(env)["jvms"] if j["pid"] == pid and j["balloon_bytes"] == 0), None),
             15, "the balloon to deflate")
        render_status(status(env), console)
    finally:
        if app is not None and app.poll() is None:
            app.kill()
            app.wait()
        daemon.terminate()
        daemon.wait(15)


def vm_demo(env: dict, ui: Narrator) -> None:
    try:
        from heapballoon import demo_vm as vmdemo
    except ImportError:
        ui.console.print("[yellow]VM mode is not available in this build; skipped.[/]")
        return
    vmdemo.run(env, ui)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="heapballoon.demo")
    p.add_argument("--no-vm", action="store_true", help="skip the VM-mode part")
    args = p.parse_args(argv)
    if shutil.which("java") is None:
        print("demo: java is not installed (make demo installs openjdk-17-jdk-headless)", file=sys.stderr)
        return 1
    from rich.console import Console

    ui = Narrator(Console())
    with tempfile.TemporaryDirectory(prefix="heapballoon-demo-") as tmp:
        env = dict(os.environ, HEAPBALLOON_SOCKET=os.path.join(tmp, "hb.sock"), HEAPBALLOON_DEMO_DIR=tmp)
        process_demo(env, ui)
        if not args.no_vm and shutil.which("qemu-system-x86_64"):
            vm_demo(env, ui)
    ui.console.print("\n[bold green]demo finished[/]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
