"""The VM part of `make demo`: a guest JVM's heap reclaimed by the host, by page number.

Runs in a private run dir (its own hostd and VM), so it never touches VMs a user runs:

1. `heapballoon hostd` in the background;
2. `heapballoon vm start demo --memory 1G -- java -Xmx768m ... ChurnApp` (150 MiB live);
3. `heapballoon target --vm demo 400M` — the guest driver has the agent inflate, translates
   the balloon to guest page numbers, hostd checks each page is zero and punches it out of
   the guest's memfd; the memfd's resident size (measured from the host) falls;
4. `heapballoon target --vm demo 0`, then the VM and hostd stop.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from heapballoon.render import render_status
from heapballoon.units import format_size

PY = sys.executable
MIB = 1 << 20


def _resident_bytes(name: str) -> int:
    from heapballoon.vm.ramfile import resident_bytes

    return resident_bytes(name)




def run(env: dict, ui) -> None:
    """The VM part; ``ui`` is the process demo's :class:`heapballoon.demo.Narrator` (passed in,
    never imported: this module does not depend on heapballoon.demo)."""
    from heapballoon.agent import build

    say, cli, console, _wait = ui.say, ui.cli, ui.console, ui.wait

    run_dir = tempfile.mkdtemp(prefix="hbdemo-", dir="/tmp")  # short: socket paths max 108 bytes
    env = dict(env, HEAPBALLOON_RUN_DIR=run_dir, HEAPBALLOON_HOST_SOCKET=os.path.join(run_dir, "hostd.sock"))
    os.environ["HEAPBALLOON_RUN_DIR"] = run_dir  # for open_guest_ram in this process

    def vm_status() -> dict:
        proc = subprocess.run([PY, "-m", "heapballoon", "status", "--json", "--vms"], env=env,
                              capture_output=True, text=True)
        body = json.loads(proc.stdout) if proc.returncode == 0 else {}
        return next((v for v in body.get("vms", []) if v["name"] == "demo"), {})

    say("VM mode: starting the host memory manager")
    console.print("[dim]$ heapballoon hostd &[/]")
    log = open(os.path.join(run_dir, "hostd.log"), "w")
    hostd = subprocess.Popen([PY, "-m", "heapballoon", "hostd"], env=env, stdout=log, stderr=subprocess.STDOUT)
    started = False
    try:
        _wait(lambda: os.path.exists(env["HEAPBALLOON_HOST_SOCKET"]), 20, "hostd")
        say("Booting a 1 GiB guest whose JVM (G1, -Xms768m -Xmx768m, pre-touched) holds 150 MiB of data (the guest image is built once, then cached)")
        cli(["vm", "start", "demo", "--memory", "1G", "--copy", f"{build.demo_jar()}:/opt/churn.jar", "--",
             "java", "-Xms768m", "-Xmx768m", "-XX:+UseG1GC", "-XX:+AlwaysPreTouch", "-jar", "/opt/churn.jar",
             "--live-mib", "150", "--churn-mib-per-s", "100"], env)
        started = True
        _wait(lambda: (v := vm_status()) and v.get("jvms") and v["jvms"][0]["heap_committed_bytes"] >= 600 * MIB,
              180, "the guest JVM to register with hostd")
        before = _resident_bytes("demo")
        console.print(f"guest RAM resident on the host: [bold]{format_size(before)}[/]")
        render_status({"vms": [vm_status()]}, console)

        say("The host asks the VM for 400 MiB")
        t0 = time.monotonic()
        cli(["target", "--vm", "demo", "400M"], env)
        _wait(lambda: before - _resident_bytes("demo") >= 360 * MIB, 90, "the host to reclaim the guest's balloon")
        v = vm_status()
        console.print(f"guest RAM resident on the host: {format_size(before)} → [bold green]{format_size(_resident_bytes('demo'))}"
                      f"[/] in {time.monotonic() - t0:.1f} s (TCG); VM pause p99 {v.get('pause_ms_p99', 0):.1f} ms")
        render_status({"vms": [v]}, console)

        say("Giving it back")
        cli(["target", "--vm", "demo", "0"], env)
        _wait(lambda: (v := vm_status()) and v.get("jvms") and v["jvms"][0]["balloon_bytes"] == 0, 90, "the deflate")
        console.print("the guest JVM's balloon is empty; its pages fault back in as zero pages when touched")
    finally:
        if started:
            subprocess.run([PY, "-m", "heapballoon", "vm", "stop", "demo"], env=env, capture_output=True)
        hostd.terminate()
        hostd.wait(15)
        shutil.rmtree(run_dir, ignore_errors=True)
