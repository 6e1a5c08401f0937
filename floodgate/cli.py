"""The ``floodgate`` command. Subcommands are registered in ``COMMANDS``; each imports lazily so
``floodgate broker status`` does not pay for Faust's import time."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from floodgate.errors import FloodgateError


def _broker(args: argparse.Namespace) -> int:
    from floodgate.broker.local import LocalBroker
    from floodgate.settings import Settings

    settings = Settings.from_env()
    broker = LocalBroker(settings.cache_dir / "broker", version=settings.kafka_version,
                         cache_dir=settings.cache_dir, heap=settings.broker_heap)
    if args.action == "start":
        info = broker.start(port=args.port or settings.broker_port, detach=True, timeout=args.timeout)
        print(f"broker={info.bootstrap}")
        print(f"pid={info.pid} log={broker.log_file}", file=sys.stderr)
        return 0
    if args.action == "stop":
        stopped = broker.stop()
        print("stopped" if stopped else "no broker running")
        return 0
    info = broker.info()
    if info is None:
        print("no broker running")
        return 3
    print(f"broker={info.bootstrap} pid={info.pid} version={info.version}")
    return 0


def _add_broker(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("broker", help="start/stop/status of the local single-node Kafka broker")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--port", type=int, default=0, help="listener port (default: FLOODGATE_BROKER_PORT or a free one)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the broker to answer")
    p.set_defaults(func=_broker)


def _substrate(args: argparse.Namespace) -> int:
    from streams.substrate_demo import run_demo

    return run_demo(events=args.events)


def _add_substrate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("substrate-demo", help="broker + a tiny Faust app with a table, end to end")
    p.add_argument("--events", type=int, default=1000)
    p.set_defaults(func=_substrate)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_broker, _add_substrate]  # type: ignore[type-arg]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="floodgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FloodgateError as exc:
        print(f"floodgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
