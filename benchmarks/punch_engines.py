"""hostd's punch engines side by side on a scratch QEMU (memfd guest RAM, no guest OS).

Fills guest pages with dirty zeros (mapped by QEMU too) and reclaims them with the batch engine
(fixed batches) and the short engine (pre-check + time-budgeted pauses): throughput, pauses and
their parts. Command (docs/benchmarks.md):

    flock /work/heavy.lock .venv/bin/python benchmarks/punch_engines.py --rounds 3

(was ``python -m heapballoon.host.scratchvm`` until issue 19 moved the scratch QEMU to tests/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from scratchvm import ScratchVM  # noqa: E402 - the tests' scratch QEMU


def _qemu_touch(vm: ScratchVM, gpa: int, size_bytes: int):
    """Make QEMU read guest RAM through its own mapping (``pmemsave`` to /dev/null), so its
    page tables map the pages as a running guest's would: a punch then unmaps them too."""
    return vm.qmp.execute("pmemsave", {"val": gpa, "size": size_bytes, "filename": os.devnull})


async def reclaim_benchmark(memory_bytes: int = 512 << 20, pages: int = 131072,
                            batch_pages: int | None = None, running: bool = True, engine: str = "batch",
                            pause_budget_ms: float | None = None) -> dict:
    """Fill ``pages`` guest pages with dirty zeros (mapped by QEMU too), reclaim them with
    ``engine`` ("batch": the first engine, fixed batches; "short": pre-check + time-budgeted
    pauses); throughput, pauses and their parts."""
    from heapballoon.host.guestram import GuestRam
    from heapballoon.units import PAGE_BYTES
    from heapballoon.qemu.layout import GuestLayout
    from heapballoon.host.pausestats import breakdown
    from heapballoon.qemu.monitor import QMPMonitor
    from heapballoon.host.reclaim import DEFAULT_BATCH_PAGES, Reclaimer
    from heapballoon.host.shortpause import DEFAULT_PAUSE_BUDGET_MS, PauseModel, ShortPauseReclaimer

    batch_pages = batch_pages or DEFAULT_BATCH_PAGES
    budget = pause_budget_ms or DEFAULT_PAUSE_BUDGET_MS
    vm_dir = tempfile.mkdtemp(prefix="hb-scratchvm-")
    sync_path = os.path.join(vm_dir, "qmp-hostd.sock")
    async with ScratchVM(memory_bytes, vm_dir=vm_dir,
                         extra_args=("-qmp", f"unix:{sync_path},server=on,wait=off")) as vm:
        ram = GuestRam.open(vm.pid, memory_bytes)
        layout = await GuestLayout.from_qmp(vm.qmp, ram_bytes=memory_bytes)
        first_pfn = layout.ranges[-1].gpa // PAGE_BYTES  # the big range starting at 1 MiB
        pages = min(pages, layout.ranges[-1].size_bytes // PAGE_BYTES)
        zeros = bytes(1 << 20)
        off0 = layout.offset_of(first_pfn)
        for off in range(off0, off0 + pages * PAGE_BYTES, len(zeros)):
            os.pwrite(ram.fd, zeros[: min(len(zeros), off0 + pages * PAGE_BYTES - off)], off)
        await _qemu_touch(vm, first_pfn * PAGE_BYTES, pages * PAGE_BYTES)
        if running:
            await vm.qmp.execute("cont")
        before = ram.resident_bytes()
        t0 = time.perf_counter()
        if engine == "batch":
            res = await Reclaimer(ram, layout, vm.qmp, batch_pages=batch_pages).reclaim([(first_pfn, pages)])
        elif engine == "short":
            def work():
                with QMPMonitor(sync_path) as q:
                    return ShortPauseReclaimer(ram, layout, q, PauseModel(budget)).reclaim([(first_pfn, pages)])
            res = await asyncio.to_thread(work)
        else:
            raise ValueError(f"unknown engine {engine!r}")
        wall_s = time.perf_counter() - t0
        after = ram.resident_bytes()
        status = (await vm.qmp.execute("query-status"))["status"]
        ram.close()
    shutil.rmtree(vm_dir, ignore_errors=True)
    total_pause_ms = sum(res.pauses_ms)
    freed = before - after
    return {
        "engine": engine, "pages": pages, "batch_pages": batch_pages if engine == "batch" else None,
        "pause_budget_ms": budget if engine == "short" else None, "pauses": len(res.pauses),
        "punched_pages": res.punched_pages, "freed_bytes": freed, "error": res.error,
        "wall_ms": round(wall_s * 1000, 1), "precheck_ms": round(res.precheck_ms, 1),
        "throughput_gib_per_s": round(freed / wall_s / (1 << 30), 2),
        "pause_total_ms": round(total_pause_ms, 1),
        "pause_ms_per_gib": round(total_pause_ms / (freed / (1 << 30)), 1) if freed > 0 else None,
        "guest_pause_ms_per_gib": round(sum(s.guest_ms for s in res.pauses) / (freed / (1 << 30)), 1)
        if freed > 0 else None,
        "breakdown_ms": breakdown(res.pauses),
        "vm_status_after": status,
    }


def _row(r: dict) -> str:
    b = r["breakdown_ms"]
    parts = " | ".join(f"{b[p]['p50']:.2f} / {b[p]['p99']:.2f}" for p in ("stop", "check", "punch", "cont", "total", "guest"))
    how = f"batch {r['batch_pages']} pages" if r["engine"] == "batch" else f"budget {r['pause_budget_ms']} ms"
    return (f"| {r['engine']} ({how}) | {r['wall_ms']:.0f} ms | {r['throughput_gib_per_s']:.2f} GiB/s | "
            f"{r['pauses']} | {parts} | {b['total']['max']:.2f} | {r['pause_ms_per_gib']} ({r['guest_pause_ms_per_gib']}) |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="hostd punch benchmark on a scratch QEMU: engines side by side")
    p.add_argument("--pages", type=int, default=131072)
    p.add_argument("--engine", choices=("batch", "short", "both"), default="both")
    p.add_argument("--batch-pages", type=int, nargs="*", default=[8192], help="batch engine")
    p.add_argument("--pause-budget-ms", type=float, nargs="*", default=[5.0], help="short engine")
    p.add_argument("--rounds", type=int, default=3, help="rounds; engines alternate within a round")
    p.add_argument("--paused", action="store_true", help="leave the VM paused (-S) instead of running: "
                   "hostd defers a VM paused by others, so nothing is punched (docs/vm.md)")
    p.add_argument("--json", action="store_true", help="one JSON line per run instead of a table")
    args = p.parse_args(argv)
    runs = []
    if args.engine in ("batch", "both"):
        runs += [dict(engine="batch", batch_pages=b) for b in args.batch_pages]
    if args.engine in ("short", "both"):
        runs += [dict(engine="short", pause_budget_ms=b) for b in args.pause_budget_ms]
    rows = []
    for r in range(args.rounds):
        for kw in (runs if r % 2 == 0 else list(reversed(runs))):
            res = asyncio.run(reclaim_benchmark(pages=args.pages, running=not args.paused, **kw))
            rows.append(res)
            print(json.dumps(res) if args.json else _row(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
