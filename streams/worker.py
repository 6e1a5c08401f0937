"""The Floodgate worker: every agent of the pipeline in one Faust app.

``floodgate worker`` (or ``python -m streams.worker``) runs it; scale out by starting more.
"""
from __future__ import annotations

import logging
import sys

import faust

from floodgate import provider_config
from floodgate.kafka_admin import ensure_topics
from floodgate.settings import Settings
from streams import admission, job_state, normaliser, submitter
from streams.app import create_app
from streams.context import Pipeline
from streams.topics import TopicNames


def build(settings: Settings, *, web_port: int | None = None) -> Pipeline:
    setup = provider_config.load(settings)
    names = TopicNames(settings)
    limits = {n: spec.concurrency_limit for n, spec in setup.routing.providers.items()}
    ensure_topics(settings.kafka_bootstrap, names.layout(limits), settings.replication_factor)
    app = create_app(settings, web_port=web_port)
    pipe = Pipeline(app, settings, setup, setup.build_connectors())
    admission.register(pipe)
    job_state.register(pipe)
    normaliser.register(pipe)
    for name in setup.routing.providers:
        submitter.register_provider(pipe, name)

    announced = False

    @app.on_rebalance_complete.connect
    async def _ready(app: faust.App, **kwargs: object) -> None:
        # `floodgate dev` (and tests) wait for this line: partitions assigned, tables recovered.
        nonlocal announced
        if not announced:
            announced = True
            print("worker=ready", flush=True)

    @app.on_before_shutdown.connect
    async def _close(app: faust.App, **kwargs: object) -> None:
        await pipe.close()

    return pipe


def run(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper())
    pipe = build(settings)
    sys.argv = [sys.argv[0], "worker", "--loglevel", settings.log_level]
    pipe.app.main()


if __name__ == "__main__":
    run(Settings.from_env())
