"""``python -m floodgate.api [--host H] [--port P] [--roles ingress,read,bridge]``."""
from __future__ import annotations

import argparse

from floodgate.api.server import run
from floodgate.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m floodgate.api", description="Serve the Floodgate HTTP API.")
    parser.add_argument("--host", default=None, help="default: FLOODGATE_API_HOST")
    parser.add_argument("--port", type=int, default=None, help="default: FLOODGATE_API_PORT; 0 picks a free port")
    parser.add_argument("--roles", default=None, help="comma-separated subset of ingress,read,bridge (default all)")
    args = parser.parse_args(argv)
    run(Settings.from_env(), args.host, args.port, args.roles)


if __name__ == "__main__":
    main()
