"""The Floodgate worker: every agent of the pipeline in one Faust app.

``floodgate worker`` (or ``python -m streams.worker``) runs it; scale out by starting more.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import faust

from floodgate import metrics, provider_config
from floodgate.eventloop import use_uvloop
from floodgate.kafka_admin import ensure_topics
from floodgate.looplag import LoopWatch
from floodgate.malloc import compact_malloc
from floodgate.procs import freeze_heap, lower_priority
from floodgate.settings import Settings
from floodgate.throttle import BreakerState, CircuitBreaker
from floodgate.topics import REPLAYED_TABLE_LOG, TopicNames
from streams import dispatcher, faust_fixes, jobs, lag, localstate
from streams.app import create_app
from streams.context import Pipeline
from streams.lines import LineBoard
from streams.static_member import leave_on_exit

log = logging.getLogger(__name__)


def build(settings: Settings, *, web_port: int | None = None) -> Pipeline:
    setup = provider_config.load(settings)
    names = TopicNames(settings)
    limits = {n: spec.concurrency_limit for n, spec in setup.routing.providers.items()}
    layout = names.layout(limits)
    ensure_topics(settings.kafka_bootstrap, layout, settings.replication_factor)
    # Tables on disk live in a directory of this worker's own, emptied if it belongs to another cluster.
    datadir = localstate.prepare(settings, localstate.cluster_id(settings.kafka_bootstrap))
    app = create_app(settings, web_port=web_port, datadir=datadir)
    pipe = Pipeline(app, settings, setup, setup.build_connectors())
    if setup.routing.spillover:
        pipe.lines = LineBoard(settings.kafka_bootstrap, names.lines)
    jobs.register(pipe)
    waiting: dict[str, Callable[[], int]] = {}
    breakers: dict[str, Callable[[], bool]] = {}
    for name in setup.routing.providers:
        pipe.metrics.for_provider(name)
        lane = dispatcher.register_provider(pipe, name)
        waiting[name] = lane.waiting_count
        breakers[name] = functools.partial(_breaker_open, lane.breaker)
    _observe(pipe, limits, waiting, breakers)
    faust_fixes.watch_stalled_partitions(
        app, on_stall=lambda tp: pipe.metrics.stalled_partitions.labels(tp.topic).inc())
    # Create the table changelogs ourselves, before Faust starts: two workers starting together
    # otherwise race to create them, and the loser's metadata says "0 partitions" until refreshed.
    ensure_topics(settings.kafka_bootstrap, changelog_layout(app, settings, layout), settings.replication_factor)

    announced = False
    # How long the agents wait on the loop (floodgate/looplag.py), from the moment the worker is ready.
    watch = LoopWatch(pipe.metrics.loop_lag, pipe.metrics.gc_pause)

    @app.on_rebalance_complete.connect
    async def _ready(app: faust.App, /, *args: object, **kwargs: object) -> None:
        # `floodgate dev` (and tests) wait for this line: partitions assigned, tables recovered.
        nonlocal announced
        if not announced:
            announced = True
            # Faust's and the agents' long-lived objects (and the recovered slot tables) leave
            # the collector's walk: a full collection would otherwise stall every agent at once.
            freeze_heap()
            watch.start()
            print("worker=ready", flush=True)

    @app.on_before_shutdown.connect
    async def _close(app: faust.App, /, *args: object, **kwargs: object) -> None:
        await watch.stop()
        await pipe.close()

    return pipe


def changelog_layout(app: faust.App, settings: Settings,
                     layout: Mapping[str, tuple[int, Mapping[str, Any]]]) -> dict[str, tuple[int, dict[str, str]]]:
    """topic → (partitions, config) for every table's changelog that ``layout`` (the topics'
    layout) does not name already. Those are the tables that live in memory and are replayed from
    their changelog's start (``REPLAYED_TABLE_LOG``); the jobs table's changelog, the
    ``notifications`` topic, is in the layout with a config of its own."""
    out: dict[str, tuple[int, dict[str, str]]] = {}
    for table in app.tables.values():
        topic = table.changelog_topic
        name = topic.get_topic_name()
        if name not in layout:
            out[name] = (topic.partitions or settings.partitions,
                         {**REPLAYED_TABLE_LOG, "min.insync.replicas": str(settings.min_insync_replicas)})
    return out


def _breaker_open(breaker: CircuitBreaker) -> bool:
    return breaker.state(time.monotonic()) is not BreakerState.CLOSED


def _observe(pipe: Pipeline, limits: dict[str, int], waiting: dict[str, Callable[[], int]],
             breakers: dict[str, Callable[[], bool]]) -> None:
    """A timer that refreshes the queue depth and limit-share gauges for this worker's partitions."""
    app, names = pipe.app, pipe.names
    dispatch = {p: (names.dispatch(p), names.dispatch_partitions(limit), limit) for p, limit in limits.items()}
    probe: lag.LagProbe | None = None

    @app.timer(interval=lag.REFRESH_SECONDS, name="metrics-refresh")
    async def refresh() -> None:
        nonlocal probe
        try:
            if probe is None:
                probe = lag.LagProbe(pipe.settings.kafka_bootstrap, pipe.settings.app_id)
            owned = [(tp.topic, tp.partition) for tp in app.consumer.assignment()]
            await lag.refresh(probe, pipe.metrics, dispatch, owned, waiting, breakers)
        except Exception:  # metrics must never stop a worker
            log.exception("metrics refresh failed")

    @app.on_before_shutdown.connect
    async def _close_probe(app: faust.App, /, *args: object, **kwargs: object) -> None:
        if probe is not None:
            await asyncio.to_thread(probe.close)


GIL_SWITCH_INTERVAL = 0.0005
"""Seconds the worker's main thread may hold the GIL while another thread waits for it
(CPython's default is 0.005)."""


def share_gil() -> None:
    """Let Faust's consumer thread run within half a millisecond of wanting to.

    The worker fetches in a thread of its own (Faust runs aiokafka on a second event loop), and its
    main thread, the agents, is busy whenever work waits. Each time the consumer thread wakes (a
    fetch's response, a call from the main thread) it waits for the GIL until the main thread's
    switch interval runs out, and one fetch takes several such wakes. With CPython's 5 ms, releases
    fetched while the worker admitted a burst of 1,000 jobs reached the release agent 130-160 ms
    after the bridge wrote them; with 0.5 ms, at most 47 ms. The pipeline bench did not slow
    (279 and 280 jobs/s against 278 and 261)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


def run(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper())
    compact_malloc()  # before any thread: RocksDB's and Kafka's threads would each get an arena
    lower_priority(settings.worker_nice)  # before any thread too: each thread has its own niceness
    use_uvloop(settings.event_loop)  # before Faust makes its loop (mode takes it from asyncio's policy)
    share_gil()
    pipe = build(settings)
    # Served from a thread, so a scrape never waits on (or stalls) the agents' event loop.
    print(f"metrics={metrics.serve(settings.metrics_host, settings.metrics_port)}", flush=True)
    # The worker CLI turns Faust's web server on (port 6066) unless told otherwise: two workers on
    # one host would collide, and Floodgate serves its own /metrics.
    sys.argv = [sys.argv[0], "worker", "--loglevel", settings.log_level, "--without-web"]
    try:
        pipe.app.main()  # (ends in SystemExit, once the consumer has stopped)
    finally:
        instance_id = pipe.app.conf.consumer_group_instance_id  # a static member's name (create_app)
        if instance_id and settings.leave_on_stop:
            # An orderly stop (SIGTERM: a scale-down, a deploy) gets this far: its partitions move
            # now, not at the session timeout. A crash never does: back under its name within the
            # session timeout, the worker gets them again without a rebalance. Without the leave,
            # an orderly restart is such a return too (FLOODGATE_LEAVE_ON_STOP).
            leave_on_exit(settings.kafka_bootstrap, pipe.app.conf.id, instance_id)


if __name__ == "__main__":
    run(Settings.from_env())
