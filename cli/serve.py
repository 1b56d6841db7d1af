"""`ddnm serve`: the whole service on this machine (Redis, a worker, the API); Ctrl-C, SIGTERM or
the terminal closing stop it, and its processes die with it however it ends."""

from __future__ import annotations

import argparse
import signal
import time
from types import FrameType


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run redis-server, a worker and the REST API on this machine",
        description=(
            "Start a private redis-server on a free port, one worker process and the API. "
            "Settings come from DDNM_* environment variables (README, 'Configuration')."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    parser.set_defaults(func=run)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from cli.embedded import Stack

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
        signal.signal(signum, _interrupt)
    stack = Stack(args.host, args.port)
    try:
        with stack:
            print(f"ddnm-service ready on {stack.url} (API docs: {stack.url}/docs); Ctrl-C stops")
            while True:
                stack.check_alive()
                time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopped")
        return 0
    except (RuntimeError, TimeoutError) as err:
        print(f"ddnm serve: {err}")
        return 1
