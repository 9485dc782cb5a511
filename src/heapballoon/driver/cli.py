"""The driver's command, added to ``heapballoon``'s parser by :func:`add_commands`::

    heapballoon daemon [--ksm auto|on|off] [--reclaim auto|direct|ksm] [--interval-s 1.0]
                       [--socket-mode 600] [--metrics ADDR:PORT] [--log-level info]
                       [--policy manual|auto] [--memory-budget SIZE] [--policy-file PATH]

Guest side too (pure standard library, Python 3.9+): only ``--metrics`` needs a PyPI package.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

from heapballoon import transport
from heapballoon.errors import UsageError


def cmd_daemon(args) -> int:
    from heapballoon.driver.daemon import Driver, serve
    from heapballoon.policy.config import memory_budget_option  # tomllib: not on the guest's side

    policy = None
    memory_budget_bytes = memory_budget_option(args.policy, args.memory_budget, args.policy_file)
    if args.policy == "auto":
        from heapballoon.driver.autopolicy import AutoPolicy

        policy = AutoPolicy(args.policy_file, memory_budget_bytes)  # a bad policy file: one line, exit 2
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    driver = Driver(transport.socket_path(args.socket), ksm_mode=args.ksm, reclaim=args.reclaim,
                    interval_s=args.interval_s, socket_mode=int(args.socket_mode, 8), policy=policy)
    if args.metrics:
        if importlib.util.find_spec("prometheus_client") is None:
            raise UsageError("--metrics needs prometheus_client: pip install 'heapballoon[host]'")
        from heapballoon.driver.metrics import start_metrics

        start_metrics(driver, args.metrics)
    return serve(driver)


def add_commands(sub, with_socket) -> None:
    """Add ``daemon`` to the ``heapballoon`` subparsers (``with_socket`` adds --socket)."""
    d = with_socket(sub.add_parser("daemon", help="run the balloon driver daemon"))
    d.add_argument("--ksm", choices=("auto", "on", "off"), default="auto", help="configure KSM (default auto)")
    d.add_argument("--reclaim", choices=("auto", "direct", "ksm"), default="auto",
                   help="how balloon pages are freed: direct (agent madvise, default when available) or ksm")
    d.add_argument("--interval-s", type=float, default=1.0, help="control loop period in seconds")
    d.add_argument("--socket-mode", default="600", help="octal mode of the socket (default 600: root only)")
    d.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics, e.g. 127.0.0.1:9477")
    d.add_argument("--log-level", default="info")
    d.add_argument("--policy", choices=("manual", "auto"), default="manual",
                   help="manual: targets by hand (default); auto: decided from pressure, shares and idleness")
    d.add_argument("--memory-budget", metavar="SIZE",
                   help="--policy auto: cap the JVMs' resident total (the policy file's budget wins)")
    d.add_argument("--policy-file", metavar="PATH",
                   help="--policy auto: TOML policy, reloaded on SIGHUP (default /etc/heapballoon/policy.toml)")
    d.set_defaults(func=cmd_daemon)
