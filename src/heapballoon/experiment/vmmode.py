"""Runs VM mode (``heapballoon experiment --mode vm``): per cell, fresh guests booted into the
experiment's memory cgroup, the manager, the phase-shifted load through the port forwards,
the samples; then results.json, report.md, CSV and PNG plots as process mode writes them.

Guests are booted per cell (cleaner: no balloon, swap or page-cache state carries from one
manager to the next); the boot-to-service time of each cell is recorded (``guests_ready_s``).
SIGINT and SIGTERM stop the run; every QEMU, hostd, cgroup and the swap file is removed
before it returns (guests are also found by listing the private run dir).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import time

from heapballoon.agent import build
from heapballoon.experiment import loadgen, metrics, rounds, vmguests, vmmanagers
from heapballoon.experiment.config import Cell
from heapballoon.experiment.runner import _on_signal, _write_csv
from heapballoon.experiment.sandbox import Sandbox
from heapballoon.experiment.vmconfig import VMConfig, plan
from heapballoon.linux.procfs import ProcFS

log = logging.getLogger("heapballoon.experiment")


def _counters(guests, sandbox, children, oom_before, fail_before, vm_before) -> dict:
    c = {"jvm_oom": 0, "died": 0, "data_checks": 0, "data_errors": 0, "cgroup_major_faults": 0, "guest_oom_kills": 0}
    p99s = []
    for g in guests:
        f = g.failures()
        c["guest_oom_kills"] += f["guest_oom_kills"]
        try:
            if f["exited"]:
                raise vmguests.GuestError(f"{g.name}: the service exited")
            st = g.stats()
        except vmguests.GuestError:
            c["died"] += 1
            c["jvm_oom"] += f["jvm_oom"]
            continue
        c["jvm_oom"] += max(f["jvm_oom"], st["oom_errors"])
        c["data_checks"] += st["data_checks"]
        c["data_errors"] += st["data_errors"]
        p99s.append(st["p99_us"] / 1000)
    for child in children:
        c["cgroup_major_faults"] += child.stat().get("total_pgmajfault", 0)
    c["service_p99_ms"] = round(max(p99s), 2) if p99s else None
    c["oom_kills"] = sandbox.oom_kills() - oom_before + c["guest_oom_kills"]
    c["limit_hits"] = sandbox.parent.failcnt() - fail_before
    vm_after = ProcFS().vmstat()
    for key in ("pswpin", "pswpout", "swpin_zero", "swpout_zero", "pgmajfault"):
        c[key] = vm_after.get(key, 0) - vm_before.get(key, 0)
    return c


def run_cell(cfg: VMConfig, cell: Cell, sandbox: Sandbox, jar: str, run_dir: str,
             baseline_ok: int | None) -> tuple[dict, object, metrics.Samples]:
    limit = None if cell.manager == "unconstrained" else cfg.given_bytes(cell.level_pct)
    children = sandbox.cell_cgroups(cfg.services, limit)
    manager = vmmanagers.make(cell.manager, run_dir,
                              os.path.join(cfg.out_dir, f"hostd-{cell.manager}-{cell.level_pct}.log"))  # appended per round
    oom_before = sandbox.oom_kills()
    fail_before = sandbox.parent.failcnt()
    vm_before = ProcFS().vmstat()
    started: list[str] = []
    guests: list[vmguests.Guest] = []
    t0 = time.monotonic()
    try:
        manager.before_guests(cfg, cell.level_pct)
        guests = vmguests.start(cfg, jar, children, manager.with_agent, started)
        manager.after_guests(cfg, cell.level_pct, guests, sandbox.parent)
        ready_s = round(time.monotonic() - t0, 1)
        label = {"cell": cell.index, "manager": cell.manager, "overcommit": cell.level_pct}
        sampler = metrics.Sampler(label, sandbox.parent, children, [g.pid for g in guests], manager.reclaimed_bytes,
                                  cfg.sample_interval_s).start()
        try:
            load = loadgen.run(cfg, [g.port for g in guests], cfg.cell_s, cfg.seed * 7919 + cell.index)
        finally:
            samples = sampler.stop()
        counters = _counters(guests, sandbox, children, oom_before, fail_before, vm_before)
        qemu_peak = max((r["rss_bytes"] for r in samples.service_rows), default=0)
        os.makedirs(os.path.join(cfg.out_dir, "consoles"), exist_ok=True)
        for g in guests:
            with open(os.path.join(cfg.out_dir, "consoles", f"{cell.manager}-{cell.level_pct}-r{cell.round + 1}-{g.name}.log"),
                      "w") as f:
                f.write(g.console())
    finally:
        manager.stop()
        problems = vmguests.stop_all(started)
        for p in problems:
            log.error("cleanup: %s", p)
    counters["manager_cpu_s"] = manager.cpu_s()
    entry = metrics.summarize(cell, cfg, load, samples, counters, baseline_ok)
    entry["manager_settings"] = manager.settings if cell.manager != "unconstrained" else "no limit, no manager"
    entry.update({"guests": cfg.services, "guest_memory_bytes": cfg.guest_memory_bytes,
                  "guest_ram_given_bytes": None if limit is None else cfg.budget_bytes(cell.level_pct),
                  "guest_oom_kills": counters["guest_oom_kills"], "guests_boot_s": [g.boot_s for g in guests],
                  "guests_ready_s": ready_s, "qemu_rss_peak_bytes": qemu_peak,
                  # the experiment's own paging (host-wide swap counters include other jobs')
                  "cgroup_swap_peak_bytes": max((r["cgroup_swap_bytes"] for r in samples.host_rows), default=0)})
    return entry, load, samples


def results_doc(cfg: VMConfig, started: float, entries: list[dict]) -> dict:
    """results.json: per manager and level the median over the rounds (each round's cells measured
    against that round's baseline), every round's entries, the baselines."""
    from heapballoon.experiment import report

    cells = [r for r in entries if r["manager"] != "unconstrained"]
    bases = [r for r in entries if r["manager"] == "unconstrained"]
    return {"command": cfg.command, "seed": cfg.seed, "machine": report.machine_line(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": round(time.time() - started, 1), "config": report.config_dict(cfg),
            "rounds_run": cfg.rounds, "runs": rounds.aggregate(cells), "baseline": rounds.aggregate(bases)[0],
            "baselines": bases, "rounds": cells}


def run(cfg: VMConfig, console) -> dict:
    """Run every cell of ``plan(cfg)`` with guests and write the output directory."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from heapballoon.experiment import plots, report, vmreport
    from heapballoon.vm.image import build_image

    os.makedirs(cfg.out_dir, exist_ok=True)
    cells = plan(cfg)
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    run_dir = tempfile.mkdtemp(prefix="hbv-")  # short: QEMU's and hostd's socket paths must fit sun_path
    old_env = os.environ.get("HEAPBALLOON_RUN_DIR")
    os.environ["HEAPBALLOON_RUN_DIR"] = run_dir  # the guests live in the experiment's own run dir
    sandbox = Sandbox(cfg.swap_bytes, cfg.swap_dir, swap_on=cfg.swap)
    started = time.time()
    runs, loads, service_rows, host_rows = [], {}, [], []
    try:
        with console.status("building the workload, the agent and the guest image (cached) …"):
            jar = str(build.experiment_jar())
            build.agent_jar()
            build.native_lib()
            build_image()
        sandbox.open()
        console.print((f"swap file {sandbox.swap_path} ({cfg.swap_bytes >> 20} MiB)" if cfg.swap else "no swap") +
                      f", cgroup {sandbox.parent.path}, "
                      f"{cfg.services} guests of {cfg.guest_memory_bytes >> 20} MiB")
        baseline_ok = None
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} cells"),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("cells", total=len(cells))
            for cell in cells:
                progress.update(task, description=f"round {cell.round + 1}: {cell.manager} at {cell.level_pct}% overcommit")
                entry, load, samples = run_cell(cfg, cell, sandbox, jar, run_dir, baseline_ok)
                if cell.manager == "unconstrained":  # each round against its own baseline
                    baseline_ok = entry["requests_ok"]
                    entry["throughput_ratio"] = 1.0
                entry["round"] = cell.round
                runs.append(entry)
                loads[f"{cell.key}#{cell.round}"] = load
                service_rows += samples.service_rows
                host_rows += samples.host_rows
                progress.console.print(
                    f"  r{cell.round + 1} {cell.manager:>18} @ {cell.level_pct:>3}%: throughput {entry['throughput_ratio']}, "
                    f"p99 {entry['latency_p99_ms']} ms, OOM {entry['oom_events']}, swap out {entry['swap_out_pages']} "
                    f"pages, data errors {entry['data_errors']}, guests ready after {entry['guests_ready_s']} s")
                progress.advance(task)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for p in vmguests.stop_all([]):
            log.error("cleanup: %s", p)
        sandbox.close()
        if old_env is None:
            os.environ.pop("HEAPBALLOON_RUN_DIR", None)
        else:
            os.environ["HEAPBALLOON_RUN_DIR"] = old_env
        shutil.rmtree(run_dir, ignore_errors=True)
    doc = results_doc(cfg, started, runs)
    with open(os.path.join(cfg.out_dir, "results.json"), "w") as f:
        json.dump(doc, f, indent=2)
    _write_csv(os.path.join(cfg.out_dir, "memory.csv"), metrics.SERVICE_FIELDS, service_rows)
    _write_csv(os.path.join(cfg.out_dir, "host.csv"), metrics.HOST_FIELDS, host_rows)
    _write_csv(os.path.join(cfg.out_dir, "requests.csv"), ["cell", "round", "service", "t_s", "latency_ms", "ok"],
               ({"cell": key.split("#")[0], "round": int(key.split("#")[1]) + 1, "service": r.service, "t_s": round(r.t_s, 3), "latency_ms": round(r.latency_ms, 3),
                 "ok": int(r.ok)} for key, load in loads.items() for r in load.records))
    figures = plots.write_all(cfg, doc, service_rows, loads)
    vmreport.write(cfg, doc, figures)
    return doc
