"""``python -m connectors.simulator``: serve the simulator until SIGINT/SIGTERM.

Prints exactly one line, ``simulator=<url>``, once listening, so scripts can read the port.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys

from floodgate.errors import ConfigError
from floodgate.eventloop import use_uvloop
from floodgate.settings import Settings

from .config import SimulatorConfig, dev_config, load_config, realistic_config
from .server import run_simulator


def _config(args: argparse.Namespace) -> SimulatorConfig:
    if args.config:
        config = load_config(args.config)
    elif args.preset == "realistic":
        config = realistic_config(args.time_factor if args.time_factor is not None else 0.01)
    else:
        config = dev_config()
    if args.time_factor is not None:
        config = dataclasses.replace(config, time_factor=args.time_factor)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    return config


async def _serve(config: SimulatorConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_simulator(config, host=host, port=port) as sim:
        print(f"simulator={sim.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--config", help="JSON config file (overrides --preset)")
    parser.add_argument("--preset", choices=("dev", "realistic"), default="dev")
    parser.add_argument("--time-factor", type=float, help="scale every simulated duration")
    parser.add_argument("--seed", type=int, help="seed the simulator's RNG")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    use_uvloop(Settings.from_env().event_loop)
    asyncio.run(_serve(config, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
