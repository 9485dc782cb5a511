"""VM mode under the automatic policy: hostd meets a memory budget across two guests by itself.

Two real 1 GiB QEMU guests (TCG here), each with a JVM that holds 150 MiB of checked data in a
768 MiB pre-touched heap, under ``hostd --policy auto --memory-budget 1400M``. Nobody types a
target: hostd takes the guests' free memory through virtio-balloon first, then idle heap
through heapballoon's balloons, until their host-resident total is within the budget.
Driven through the CLI, as a user would; the resident figures are measured from the host.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

from hbtest import MIB, wait_for
from heapballoon.host.autopolicy import guest_reserve_bytes
from test_vm_reclaim import KERNEL_ERRORS, Host, app_lines, memfd_resident_bytes

BUDGET_MIB = 1400
NAMES = ("pa", "pb")
# "pa [pa] target 300.0 MiB (guest_free=40.0 MiB heap=260.0 MiB): ..." (policy.workload_line)
DECISION = re.compile(r"policy INFO (\S+) \[\S+\] target .*\(guest_free=([^ ]+ \S+) heap=([^ ]+ \S+)\)")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (reported, never asserted: the host is shared)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def resident_total() -> int:
    return sum(memfd_resident_bytes(n) for n in NAMES)


class Sampler(threading.Thread):
    """The guests' host-resident total every second, measured from the host, while they start:
    the policy acts as soon as the total passes the budget, which is before both are up."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            try:
                self.samples.append((time.monotonic(), resident_total()))
            except Exception:  # noqa: BLE001 - a guest not started yet
                pass

    def over_budget_s(self, limit: int) -> float:
        """From the first sample over ``limit`` to the last one over it (0: never over)."""
        over = [t for t, total in self.samples if total > limit]
        return over[-1] - over[0] if over else 0.0


def test_two_guests_meet_the_budget_free_memory_first(vms):
    from heapballoon.agent import build

    host = Host(vms.run_dir, "--policy", "auto", "--memory-budget", f"{BUDGET_MIB}M")
    sampler = Sampler()
    limit = int(BUDGET_MIB * 1.05) * MIB
    try:
        for name in NAMES:
            vms.names.append(name)
            if name == NAMES[1]:
                sampler.start()  # the first guest alone is far below the budget
                cpu0, wall0 = cpu_s(host.proc.pid), time.monotonic()
            host.cli("vm", "start", name, "--memory", "1G", "--copy", f"{build.demo_jar()}:/opt/churn.jar", "--",
                     "java", "-Xms768m", "-Xmx768m", "-XX:+UseG1GC", "-XX:+AlwaysPreTouch", "-jar", "/opt/churn.jar",
                     "--live-mib", "150", "--churn-mib-per-s", "20")
        for name in NAMES:
            wait_for(lambda: (v := host.vm(name)) and v["jvms"] and v, 180, 1.0, what=f"{name}: guest JVM registered")
            wait_for(lambda: (lines := app_lines(host, name)) and lines[-1].get("checks", 0) >= 1, 120, 1.0,
                     what=f"{name}: the guest application running and checking its data")
        t0 = time.monotonic()
        print(f"both guests running: host-resident total {resident_total() >> 20} MiB, budget {BUDGET_MIB} MiB")

        try:
            wait_for(lambda: resident_total() <= limit, 120, 2.0,
                     what=f"host-resident total ≤ {limit >> 20} MiB")
        except AssertionError:
            print(host.cli("status", "--vms").stdout)
            print("\n".join(open(host.log_path).read().splitlines()[-40:]))
            raise
        sampler.done.set()
        sampler.join()
        over_s = sampler.over_budget_s(limit)
        peak = max(total for _, total in sampler.samples)
        print(f"budget met {time.monotonic() - t0:.1f} s after both applications ran; the total was over "
              f"{limit >> 20} MiB for {over_s:.0f} s (peak {peak >> 20} MiB); now {resident_total() >> 20} MiB "
              f"({', '.join(f'{n} {memfd_resident_bytes(n) >> 20} MiB' for n in NAMES)})")
        assert over_s <= 120, [(round(t - sampler.samples[0][0]), total >> 20) for t, total in sampler.samples]

        # Guest free memory first: heap is taken only once no guest has available memory above
        # its reserve left to give. (These guests have little: the pre-touched heap fills them.)
        log_text = open(host.log_path).read()
        assert DECISION.search(log_text), log_text[-3000:]
        vs = {n: host.vm(n) for n in NAMES}
        for name, v in vs.items():
            assert v["guest_available_bytes"] is not None and v["policy_reason"], v
            print(f"{name}: virtio balloon {v['virtio_target_bytes'] >> 20} MiB (guest free "
                  f"{v['guest_free_bytes'] >> 20} MiB, available {v['guest_available_bytes'] >> 20} MiB), heap target "
                  f"{v['target_bytes'] >> 20} MiB, reclaimed {(v['reclaimed_bytes'] or 0) >> 20} MiB: {v['policy_reason']}")
        assert any(v["target_bytes"] > 0 for v in vs.values())
        for v in vs.values():  # reserve 32 MiB, plus what the guest freed since the last decision
            assert v["guest_available_bytes"] <= guest_reserve_bytes(v["memory_bytes"]) + 32 * MIB, v

        # status explains who gave what
        text = host.cli("status", "--vms").stdout
        print(text)
        assert "VM policy:" in text and "budget 1.4 GiB" in text
        for name in NAMES:
            assert re.search(rf"^\s+{name}: guest free \S+ \S+ \+ heap", text, re.M), text
        body = json.loads(host.cli("status", "--vms", "--json").stdout)
        assert body["vm_policy"]

        # no guest data lost: each application checks its data again after the reclaim
        for name in NAMES:
            checks = app_lines(host, name)[-1]["checks"]
            wait_for(lambda: app_lines(host, name)[-1]["checks"] > checks, 60, 2.0, what=f"{name}: a data check")
            lines = app_lines(host, name)
            assert lines[-1]["errors"] == 0 and all("error" not in line for line in lines), lines[-3:]
            console = host.cli("vm", "logs", name).stdout
            assert not KERNEL_ERRORS.search(console), KERNEL_ERRORS.search(console).group(0)
            assert "HEAPBALLOON-CMD-EXIT" not in console
        wall = time.monotonic() - wall0
        print(f"hostd logged {len(log_text.splitlines())} lines ({len(log_text) >> 10} KiB); it used "
              f"{100 * (cpu_s(host.proc.pid) - cpu0) / wall:.1f} % of a core over the last {wall:.0f} s")
    finally:
        sampler.done.set()
        host.stop()


def test_free_guest_memory_goes_first_through_virtio_balloon(vms):
    """One small guest whose free memory is resident on the host (it filled a tmpfs with 200
    MiB and deleted it): under a budget, hostd inflates its virtio balloon, QEMU discards the
    pages, and the host-resident figure falls, with no JVM heap involved."""
    name = "free"
    vms.names.append(name)
    host = None
    try:
        vms.start(name, 512 * MIB, cmd=["sh", "-c", "head -c 209715200 /dev/zero > /tmp/fill && rm /tmp/fill && "
                                        "echo FILLED && exec sleep 100000"])
        from heapballoon.vm.qemu import vm_logs

        try:
            wait_for(lambda: "[cmd] FILLED" in vm_logs(name), 60, 1.0, what="the guest filled and freed 200 MiB")
        except AssertionError:
            print(vm_logs(name)[-2000:])
            raise
        before = memfd_resident_bytes(name)
        assert before >= 300 * MIB, before
        policy_file = os.path.join(vms.run_dir, "policy.toml")
        with open(policy_file, "w") as f:
            f.write("interval_s = 1.0\n")
        host = Host(vms.run_dir, "--policy", "auto", "--memory-budget", "200M", "--policy-file", policy_file)
        wait_for(lambda: memfd_resident_bytes(name) <= 210 * MIB, 60, 1.0,
                 what=f"host-resident ≤ 210 MiB (before {before >> 20} MiB)")
        # hostd reads the balloon's actual size on its own cadence: the host-resident figure can fall
        # before the status shows it (CI, 2026-12-05: resident 173 MiB, status still 512 MiB actual)
        v = wait_for(lambda: (v := host.vm(name)) and v["virtio_actual_bytes"] <= 512 * MIB - 100 * MIB and v, 20, 1.0,
                     what="status showing the virtio balloon's actual size 100 MiB or more under 512 MiB")
        print(f"resident {before >> 20} → {memfd_resident_bytes(name) >> 20} MiB; virtio balloon "
              f"{v['virtio_target_bytes'] >> 20} MiB, guest available {v['guest_available_bytes'] >> 20} MiB; "
              f"{v['policy_reason']}")
        assert v["virtio_target_bytes"] >= 100 * MIB
        assert v["target_bytes"] == 0 and "guest_free" in host.cli("policy", "explain", "--vms").stdout
        assert host.cli("vm", "exec", name, "--", "echo", "alive").stdout.strip() == "alive"
        assert not KERNEL_ERRORS.search(vm_logs(name))

        # a bad policy file on SIGHUP: one line naming the key, and hostd runs on with its last good policy
        with open(policy_file, "w") as f:
            f.write("interval_s = 1.0\nidle_tax = 7\n")
        host.proc.send_signal(signal.SIGHUP)
        line = wait_for(lambda: next((x for x in open(host.log_path).read().splitlines() if "not reloaded" in x), None),
                        20, 0.5, what="the bad file refused in the log")
        assert "idle_tax" in line and "line 2" in line, line
        assert host.proc.poll() is None and host.vm(name)["virtio_target_bytes"] > 0

        # hostd crashes; the next one, with room to spare, finds the balloon and gives it back
        host.proc.kill()
        host.proc.wait()
        os.unlink(host.env["HEAPBALLOON_HOST_SOCKET"])
        host = Host(vms.run_dir, "--policy", "auto", "--memory-budget", "2G")
        wait_for(lambda: host.vm(name)["virtio_actual_bytes"] == 512 * MIB, 60, 1.0, what="the virtio balloon given back")
    finally:
        if host is not None:
            host.stop()
