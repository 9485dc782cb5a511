"""The load generator: asyncio HTTP/1.1 keep-alive clients on loopback, one group per service.

Why Python asyncio and not a Java client: it adds no JVM (no heap of its own to account for,
inside or outside the cgroup), its schedule is the experiment's own clock, and at the few
hundred requests a second a service gets here one event loop keeps up on a shared 2-core box.

Each service gets requests at ``Config.load(service, t)`` × ``busy_rate_per_s`` (a token every
1/rate seconds), served by ``connections`` workers. Tokens that wait more than a second
because every worker is stuck on a slow service are dropped: what the service did not serve is
what its throughput lost. Keys are drawn from ``[0, load × max_keys)``, so the cache's working
set follows the load.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from heapballoon.errors import HeapballoonError
from heapballoon.experiment.config import Config

REQUEST_TIMEOUT_S = 5.0


@dataclass
class Record:
    service: int
    t_s: float          # send time, seconds into the cell
    latency_ms: float
    ok: bool


@dataclass
class LoadResult:
    records: list[Record] = field(default_factory=list)
    dropped: int = 0

    def ok_count(self) -> int:
        return sum(1 for r in self.records if r.ok)

    def errors(self) -> int:
        return sum(1 for r in self.records if not r.ok)


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: int) -> bool:
    writer.write(f"GET /get?k={key} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status == 200


async def _worker(port: int, service: int, queue: asyncio.Queue, result: LoadResult, t0: float,
                  end: float) -> None:
    """Serve tokens until ``end`` (monotonic). Workers end by themselves rather than by
    cancellation: Python 3.11's ``wait_for`` can swallow a cancel that races a completed request."""
    conn = None
    try:
        while time.monotonic() < end:
            try:
                key = await asyncio.wait_for(queue.get(), 0.2)
            except asyncio.TimeoutError:
                continue
            sent = time.monotonic()
            ok = False
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), REQUEST_TIMEOUT_S)
                ok = await asyncio.wait_for(_request(*conn, key), REQUEST_TIMEOUT_S)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
                if conn is not None:
                    conn[1].close()
                conn = None
            result.records.append(Record(service, sent - t0, (time.monotonic() - sent) * 1000, ok))
    finally:
        if conn is not None:
            conn[1].close()


async def _ticker(cfg: Config, service: int, queue: asyncio.Queue, result: LoadResult, t0: float,
                  duration_s: float, rnd: random.Random) -> None:
    next_t = t0
    while True:
        now = time.monotonic()
        if now - t0 >= duration_s:
            return
        load = cfg.load(service, now - t0)
        if next_t < now - 1.0:  # workers stuck for over a second: those requests are lost
            result.dropped += int((now - 1.0 - next_t) * load * cfg.busy_rate_per_s)
            next_t = now - 1.0
        while next_t <= now:
            keys = max(1, int(load * cfg.max_keys))
            try:
                queue.put_nowait(rnd.randrange(keys))
            except asyncio.QueueFull:
                result.dropped += 1
            next_t += 1.0 / (load * cfg.busy_rate_per_s)
        await asyncio.sleep(max(0.0, min(next_t - time.monotonic(), 0.05)))


async def _run(cfg: Config, ports: list[int], duration_s: float, seed: int) -> LoadResult:
    result = LoadResult()
    t0 = time.monotonic()
    end = t0 + duration_s + 0.5
    rnd = random.Random(seed)
    tasks = []
    tickers = []
    for service, port in enumerate(ports):
        queue: asyncio.Queue = asyncio.Queue(maxsize=cfg.connections * 4)
        tickers.append(asyncio.create_task(_ticker(cfg, service, queue, result, t0, duration_s,
                                                   random.Random(rnd.random()))))
        tasks += [asyncio.create_task(_worker(port, service, queue, result, t0, end)) for _ in range(cfg.connections)]
    await asyncio.gather(*tickers)
    # in-flight requests finish or time out; the workers stop by themselves at `end`
    done, _ = await asyncio.wait(tasks, timeout=2 * REQUEST_TIMEOUT_S + 2)
    for task in done:  # the runner's SIGINT/SIGTERM exception, should it land in a worker, is not lost
        if not task.cancelled() and isinstance(task.exception(), HeapballoonError):
            raise task.exception()
    return result


def run(cfg: Config, ports: list[int], duration_s: float, seed: int) -> LoadResult:
    """Drive the services at ``ports`` for ``duration_s``; every request's latency and outcome."""
    return asyncio.run(_run(cfg, ports, duration_s, seed))
