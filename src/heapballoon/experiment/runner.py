"""Runs the experiment: the leftovers of killed runs removed, the sandbox, then each cell of every
round (manager, services, load, samples), then the medians over the rounds and the report.
Progress on a rich console; SIGINT and SIGTERM stop the run and everything it started (JVMs, the
daemon, the cgroups, the swap file) is removed before it returns. SIGKILL cannot be caught: the
next run (or ``heapballoon experiment --clean``) removes what it left (``leftovers``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import tempfile
import time

from heapballoon.agent import build
from heapballoon.errors import HeapballoonError
from heapballoon.experiment import consolidation, leftovers, loadgen, managers, metrics, rounds, workload
from heapballoon.experiment.config import (SMALL_XMS_MANAGERS, Cell, Config, consolidation_cfg, consolidation_counts,
                                           estimated_s, plan)
from heapballoon.experiment.sandbox import Sandbox
from heapballoon.linux.procfs import ProcFS

log = logging.getLogger("heapballoon.experiment")


class Interrupted(HeapballoonError):
    exit_code = 130


_signalled: list[int] = []


def _on_signal(signum, _frame):
    for s in (signal.SIGINT, signal.SIGTERM):  # the clean-up that follows must not be interrupted
        signal.signal(s, signal.SIG_IGN)
    _signalled.append(signum)  # also checked between cells, should the exception land in a swallowing spot
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}; cleaned up")


def _services_up(cfg: Config, level_pct: int, manager, jar: str, children) -> list[workload.Service]:
    """Start the services one at a time, as a host admits them: each after the one before is
    ready (or was OOM-killed starting) and ``settle_s`` has passed, so a manager can act between."""
    services: list[workload.Service] = []
    jvm_args = manager.jvm_args(cfg, level_pct)
    for i in range(cfg.services):
        services.append(workload.start(cfg, i, jar, children[i], manager.env(), manager.with_agent, jvm_args))
        if workload.wait_ready_or_killed(services[-1]) and i + 1 < cfg.services:
            time.sleep(cfg.settle_s)
    return services


def run_cell(cfg: Config, cell: Cell, sandbox: Sandbox, jar: str, run_dir: str, baseline_ok: int | None) -> tuple[dict, object, metrics.Samples]:
    if cell.services:  # a consolidation cell: N services in the fixed memory
        cfg = consolidation_cfg(cfg, cell.services)
    limit = None if cell.manager == "unconstrained" else cfg.given_bytes(cell.level_pct)
    children = sandbox.cell_cgroups(cfg.services, limit)
    tag = f"n{cell.services}" if cell.services else str(cell.level_pct)
    manager = managers.make(cell.manager, run_dir, cfg.policy,
                            os.path.join(cfg.out_dir, f"daemon-{cell.manager}-{tag}.log"))
    manager.cgroup = sandbox.managers
    wall_t0 = time.monotonic()
    oom_kills_before = sandbox.oom_kills()
    fail_before = sandbox.parent.failcnt()
    vm_before = ProcFS().vmstat()  # before the JVMs start: pre-touching their heaps may already page
    services: list[workload.Service] = []
    try:
        manager.before_services(cfg, cell.level_pct)
        services = _services_up(cfg, cell.level_pct, manager, jar, children)
        alive = [s for s in services if s.proc.poll() is None]
        manager.after_services(cfg, cell.level_pct, [s.pid for s in alive], [s.cgroup for s in alive])
        label = {"cell": cell.index, "manager": cell.manager, "overcommit": cell.level_pct}
        sampler = metrics.Sampler(label, sandbox.parent, children, [s.pid for s in services],
                                  manager.reclaimed_bytes, cfg.sample_interval_s).start()
        try:  # a service killed at start has no port: its requests fail (refused), as its users' would
            load = loadgen.run(cfg, [s.port for s in services], cfg.cell_s, cfg.seed * 7919 + cell.index)
        finally:
            samples = sampler.stop()
        counters = {"jvm_oom": 0, "died": 0, "data_checks": 0, "data_errors": 0, "cgroup_major_faults": 0}
        p99s, committed = [], []
        for s in services:
            if s.proc.poll() is not None:
                counters["died"] += 1
                counters["jvm_oom"] += s.oom_lines
                continue
            try:
                st = s.stats()
            except workload.WorkloadError:
                counters["died"] += 1
                continue
            counters["jvm_oom"] += max(st["oom_errors"], s.oom_lines)
            counters["data_checks"] += st["data_checks"]
            counters["data_errors"] += st["data_errors"]
            p99s.append(st["p99_us"] / 1000)
            committed.append(st.get("heap_committed_bytes"))
        for c in children:
            counters["cgroup_major_faults"] += c.stat().get("total_pgmajfault", 0)
        counters["service_p99_ms"] = round(max(p99s), 2) if p99s else None
        counters["oom_kills"] = sandbox.oom_kills() - oom_kills_before
        counters["limit_hits"] = sandbox.parent.failcnt() - fail_before
        vm_after = ProcFS().vmstat()
        for key in ("pswpin", "pswpout", "swpin_zero", "swpout_zero", "pgmajfault"):
            counters[key] = vm_after.get(key, 0) - vm_before.get(key, 0)
    finally:
        workload.stop(services)
        manager.stop()
    counters["manager_cpu_s"] = manager.cpu_s()
    entry = metrics.summarize(cell, cfg, load, samples, counters, baseline_ok)
    entry["manager_settings"] = manager.settings if cell.manager != "unconstrained" else "no limit, no manager"
    entry["round"] = cell.round
    entry["heap_committed_end_bytes"] = sum(committed) if committed and None not in committed else None
    entry["services"] = cfg.services
    entry["heap_config"] = heap_config(cfg, cell.manager)
    entry["wall_s"] = round(time.monotonic() - wall_t0, 1)
    return entry, load, samples


def heap_config(cfg: Config, manager: str) -> str:
    """The services' heap configuration under ``manager``, as the report labels it."""
    if manager in SMALL_XMS_MANAGERS:
        return f"small -Xms ({managers.SELF_SIZING_MIN_HEAP_BYTES >> 20}m, started at -Xmx)"
    return "-Xms = -Xmx, " + ("pre-touched" if cfg.heaps == "pretouch" else f"grown by a {cfg.burst_s:g} s start-up burst")


def _write_csv(path: str, fields: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def clean(console, swap_dir: str) -> list[str]:
    """Remove what killed runs left (their owner PID dead); print one line per thing cleaned."""
    done = leftovers.clean(swap_dir)
    for line in done:
        prefix = "" if line.startswith(leftovers.NOTE) else "cleaned up a killed run: "
        console.print(f"{prefix}{line}", soft_wrap=True, highlight=False, markup=False)
    return done


def run(cfg: Config, console) -> dict:
    """Run every cell of ``plan(cfg)`` and write the output directory; the results document."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    os.makedirs(cfg.out_dir, exist_ok=True)
    cells = plan(cfg)
    est = estimated_s(cfg)
    sweep = (f" + the consolidation sweep (N = {', '.join(str(n) for n in consolidation_counts(cfg))} services "
             f"in {cfg.fixed_memory_bytes() >> 20} MiB, each round)" if cfg.consolidation else "")
    console.print(f"{len(cells)} cells ({cfg.rounds} round{'s' if cfg.rounds > 1 else ''} of "
                  f"{len(cells) // cfg.rounds}){sweep}, {cfg.cell_s:g} s of load each: at most about "
                  f"{est / 60:.0f} min (estimated {est:.0f} s)")
    _signalled.clear()
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    run_dir = None
    sandbox = Sandbox(cfg.swap_bytes, cfg.swap_dir, swap_on=cfg.swap)
    started = time.time()
    entries, loads, service_rows, host_rows = [], {}, [], []
    sweep_rows: list[dict] = []
    held_rounds: list[dict[str, int]] = []
    try:
        clean(console, cfg.swap_dir)
        # short: the daemon's socket path must fit sun_path; named after this PID for `--clean`
        run_dir = tempfile.mkdtemp(prefix=f"{leftovers.RUN_DIR_PREFIX}{os.getpid()}-")
        with console.status("building the workload and the agent (cached) …"):
            jar = str(build.experiment_jar())
            build.agent_jar()
            build.native_lib()
        sandbox.open()
        console.print((f"swap file {sandbox.swap_path} ({cfg.swap_bytes >> 20} MiB)" if cfg.swap else
                       "no swap (--swap off: swappiness 0 in the cgroups)") + f", cgroup {sandbox.parent.path}")
        sweep_cells = (cfg.rounds * sum(1 + len(cfg.managers) for _ in consolidation_counts(cfg))
                       if cfg.consolidation else 0)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} cells"),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("cells", total=len(cells) + sweep_cells)
            baseline_ok: list[int | None] = [None]

            def measure(cell: Cell) -> dict:
                if _signalled:
                    raise Interrupted(f"interrupted by {signal.Signals(_signalled[0]).name}; cleaned up")
                where = f"{cell.services} services in {cfg.fixed_memory_bytes() >> 20} MiB" if cell.services else \
                    f"{cell.level_pct}% overcommit"
                progress.update(task, description=f"round {cell.round + 1}: {cell.manager} at {where}")
                if cell.manager == "unconstrained" and cell.services:
                    baseline_ok[0] = None
                entry, load, samples = run_cell(cfg, cell, sandbox, jar, run_dir, baseline_ok[0])
                if cell.manager == "unconstrained":  # each round (and N) against its own baseline
                    baseline_ok[0] = entry["requests_ok"]
                    entry["throughput_ratio"] = 1.0
                loads[f"{cell.key}#{cell.round}"] = load
                service_rows.extend(samples.service_rows)
                host_rows.extend(samples.host_rows)
                progress.console.print(f"  r{cell.round + 1} {cell.manager:>23} @ {where}: "
                                       f"throughput {entry['throughput_ratio']}, p99 {entry['latency_p99_ms']} ms, "
                                       f"OOM {entry['oom_events']}, swap out {entry['swap_out_pages']} pages, "
                                       f"data errors {entry['data_errors']} ({entry['wall_s']} s)")
                progress.advance(task)
                return entry

            for cell in cells:
                entries.append(measure(cell))
            if cfg.consolidation:
                index = len(cells)
                for r in range(cfg.rounds):
                    sweep_entries, held = consolidation.sweep(cfg, r, index, measure)
                    index += len(sweep_entries)
                    sweep_rows.extend(sweep_entries)
                    held_rounds.append(held)
                    progress.console.print(f"  r{r + 1} services held in {cfg.fixed_memory_bytes() >> 20} MiB: " +
                                           ", ".join(f"{m} {n}" for m, n in held.items()))
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        sandbox.close()
        if run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    cons = consolidation.summarize(cfg, held_rounds, sweep_rows) if cfg.consolidation else None
    return write_outputs(cfg, started, entries, loads, service_rows, host_rows, cons)


def write_outputs(cfg: Config, started: float, entries: list[dict], loads: dict, service_rows: list[dict],
                  host_rows: list[dict], cons: dict | None = None) -> dict:
    """results.json (medians per manager and level, every round's entries), the CSVs, plots, report."""
    from heapballoon.experiment import plots, report

    base_rounds = [e for e in entries if e["manager"] == "unconstrained"]
    doc = {"command": cfg.command, "seed": cfg.seed, "machine": report.machine_line(),
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
           "duration_s": round(time.time() - started, 1), "config": report.config_dict(cfg),
           "rounds_run": cfg.rounds,
           "runs": rounds.aggregate([e for e in entries if e["manager"] != "unconstrained"]),
           "baseline": rounds.aggregate(base_rounds)[0], "baselines": base_rounds,
           "rounds": [e for e in entries if e["manager"] != "unconstrained"],
           "consolidation": cons}
    with open(os.path.join(cfg.out_dir, "results.json"), "w") as f:
        json.dump(doc, f, indent=2)
    _write_csv(os.path.join(cfg.out_dir, "memory.csv"), metrics.SERVICE_FIELDS, service_rows)
    _write_csv(os.path.join(cfg.out_dir, "host.csv"), metrics.HOST_FIELDS, host_rows)
    _write_csv(os.path.join(cfg.out_dir, "requests.csv"), ["cell", "round", "service", "t_s", "latency_ms", "ok"],
               ({"cell": key.split("#")[0], "round": int(key.split("#")[1]) + 1, "service": r.service,
                 "t_s": round(r.t_s, 3), "latency_ms": round(r.latency_ms, 3), "ok": int(r.ok)}
                for key, load in loads.items() for r in load.records))
    figures = plots.write_all(cfg, doc, service_rows, loads)
    report.write(cfg, doc, figures)
    return doc
