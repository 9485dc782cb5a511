"""The experiment's load generator against a real HTTP server on loopback (a small threaded one
here, so the test needs no JVM): every request is recorded, the load follows the phases, a
server that stops answering shows as failed or dropped requests, and the run always ends."""

from __future__ import annotations

import dataclasses
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from heapballoon.experiment import config, loadgen

# serial: request rates and wall-clock bounds on a Python HTTP server, not beside a busy neighbour.
pytestmark = [pytest.mark.serial]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stall_s = 0.0

    def do_GET(self):  # noqa: N802 - http.server's name
        time.sleep(self.stall_s)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve(stall_s: float = 0.0) -> ThreadingHTTPServer:
    handler = type("H", (Handler,), {"stall_s": stall_s})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_requests_follow_the_phases_and_all_succeed():
    cfg = dataclasses.replace(config.quick("/tmp/x"), cell_s=3.0, busy_rate_per_s=100, idle_rate_per_s=10)
    servers = [serve() for _ in range(cfg.services)]
    try:
        started = time.monotonic()
        result = loadgen.run(cfg, [s.server_address[1] for s in servers], cfg.cell_s, seed=1)
        assert time.monotonic() - started < cfg.cell_s + 3
    finally:
        for s in servers:
            s.shutdown()
    assert result.errors() == 0 and result.ok_count() > 100
    # service 0 is busy in the first third of the cell, service 2 in the last
    first = [r.service for r in result.records if r.t_s < 0.9]
    assert first.count(0) > 3 * first.count(2)


def test_a_stalled_service_loses_requests_and_the_run_still_ends():
    cfg = dataclasses.replace(config.quick("/tmp/x"), services=1, cell_s=2.0, busy_rate_per_s=100,
                              connections=2)
    server = serve(stall_s=0.5)
    try:
        started = time.monotonic()
        result = loadgen.run(cfg, [server.server_address[1]], cfg.cell_s, seed=1)
        assert time.monotonic() - started < cfg.cell_s + 2 * loadgen.REQUEST_TIMEOUT_S + 3
    finally:
        server.shutdown()
    assert result.ok_count() < 20 and result.dropped > 100
