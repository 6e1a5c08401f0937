"""The smallest real Floodgate stream: count events per key in a table, emit the running count.

It exists to prove the substrate (faust-streaming + aiokafka + Kafka 3.9, table changelog
recovery across a worker restart): ``tests/integration/test_substrate.py`` runs it across a restart,
and ``tests/integration/test_start_after_recovery.py`` starts it with a changelog to recover (the
start race in ``streams/faust_fixes.py``). There is no ``floodgate`` command for it.
Run a worker: ``python -m streams.substrate`` (reads FLOODGATE_* and SUBSTRATE_* env).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import faust
import orjson

from floodgate.settings import Settings
from streams.app import create_app


def build(settings: Settings, *, app_id: str, datadir: Path) -> tuple[faust.App, faust.TopicT, faust.TopicT]:
    app = create_app(settings, app_id=app_id, datadir=datadir)
    source = app.topic(settings.topic("substrate.in"), partitions=settings.partitions)
    sink = app.topic(settings.topic("substrate.out"), partitions=settings.partitions)
    counts = app.Table("substrate-counts", default=int, partitions=settings.partitions, key_type=bytes, value_type=int)

    @app.agent(source)
    async def count(stream: faust.StreamT) -> None:
        async for event in stream.events():
            key = event.key or b""
            counts[key] = counts[key] + 1
            await sink.send(key=key, value=orjson.dumps({"key": key.decode(), "count": counts[key]}))

    return app, source, sink


def main() -> None:
    settings = Settings.from_env()
    app, _, _ = build(settings, app_id=os.environ.get("SUBSTRATE_APP_ID", "floodgate-substrate"),
                      datadir=Path(os.environ.get("SUBSTRATE_DATADIR", settings.cache_dir / "substrate")))
    # The worker CLI turns Faust's web server on (port 6066) unless told otherwise: two workers on
    # one host would collide, and Floodgate serves its own /metrics.
    sys.argv = [sys.argv[0], "worker", "--loglevel", settings.log_level, "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
