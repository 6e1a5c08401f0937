"""Running the API: ``serve`` (async, for tests and embedding) and ``run`` (blocking, for the CLI).

Startup order matters: topics exist → producer connected → job view caught up → socket
listening. So the first request already finds Kafka reachable and the view complete, and
``api=http://HOST:PORT`` is printed only when the API can answer correctly.

Each process starts only what its roles use. The job view (its ``notifications`` feed and its
spill store) belongs to the read role: an ingress-only process follows no job's changes (with
queued-jobs quotas it reads the keys of ``results``, one per job that ends), so a spike of job
updates cannot take CPU from the accept path (see ``floodgate.api.idempotency`` for what the
Idempotency-Key check rests on there). Outgoing webhooks and the video copier
(:mod:`floodgate.videos.copier`) run by default except in an ingress-only process; the read role
serves the stored videos.

A process with the ingress role and a backlog bound (``FLOODGATE_BACKLOG_MAX_*``) also runs the
backlog guard's monitor (:mod:`floodgate.api.backlog`), started once the view has caught up; with
quotas shared across processes (``FLOODGATE_QUOTA_SCOPE=cluster``, the default), its
heartbeats (:mod:`floodgate.api.instances`), started before the socket listens. One without the
job view and with queued-jobs quotas reads the ends of the jobs it accepted
(:mod:`floodgate.api.ended`), from the end of ``results`` before the socket listens. One without
the job view learns the keyed requests of every process from ``requests``
(:mod:`floodgate.api.keyed`), in the background, for the Idempotency-Key check.

The job view spills what it evicts to ``<cache_dir>/api/<topic prefix>/<host>-<pid>-*/view.sqlite``
(see ``floodgate.api.spill``): a new, empty file per process, removed when the server closes.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from connectors.storage import build_store
from floodgate import provider_config
from floodgate.api.app import build_app, parse_roles
from floodgate.api.backlog import BacklogMonitor, start_monitor
from floodgate.api.ended import EndedJobs
from floodgate.api.feed import NotificationFeed
from floodgate.api.idempotency import IdempotencyCache
from floodgate.api.instances import InstanceBeacon
from floodgate.api.kafka_io import KafkaSender
from floodgate.api.keyed import KeyedRequests
from floodgate.api.spill import SpillStore
from floodgate.api.view import DEFAULT_MAX_JOBS, JobView
from floodgate.errors import ConfigError
from floodgate.eventloop import use_uvloop
from floodgate.kafka_admin import ensure_topics
from floodgate.procs import bind_socket, freeze_heap
from floodgate.provider_config import ProviderSetup
from floodgate.queueboard import QueueBoard
from floodgate.quotas import JobsByTenant
from floodgate.routing import first_provider
from floodgate.settings import Settings
from floodgate.topics import TopicNames

log = logging.getLogger(__name__)

INGRESS_LINGER_MS = 5
"""How long an accepted request's record waits for others to share its batch (librdkafka's own
default). At 1,000 requests/s the ingress then sends a batch of several records where it sent
one, and wakes librdkafka's threads and the event loop once for them: 0.88-0.92x of the API's
CPU per accepted request against 1 ms (``dev/accept_cpu.py``, three or four rounds each), for
about 4 ms more on each 202 (p50 2.9 → 6.7 ms with the acknowledgements served by the loop)."""
INGRESS_POLL_SECONDS = 0.002
"""How often the ingress's event loop polls its producer while records wait: a record lingers
5 ms before it is even sent, so polling every millisecond found nothing four times in five.
Every 2 ms costs a 202 half a millisecond more on average; with the single bound on all waits
(``floodgate.api.kafka_io``) the API's CPU per accepted request was 0.99x and 0.92x in two sets of
four rounds (``dev/accept_cpu.py``, ingress role, 1,000 requests/s). The bridge polls every
millisecond (its 200s answer providers)."""
BRIDGE_LINGER_MS = 0
"""The bridge's records (webhooks, slot releases) and the read role's cancels go out at once: a
completion's release is what hands its slot to the next job (the slot handover), and it is written
only after its webhook is acknowledged (``floodgate.api.bridge``), so a linger would be paid twice.
In turns at 1, 0, 0 and 1 ms, ``--only handover`` gave a handover p50 of 10.0, 8.1, 7.9 and
9.4 ms (p99 27.3, 25.2, 29.4, 30.7); the accept bench's API CPU per 202, with the bridge busy
beside the 202s, was 0.487 ms at 0 and 0.497 at 1 (one run each)."""


class ApiServer:
    """A listening API; ``close()`` stops serving, then the Kafka clients. Safe to call twice."""

    def __init__(self, url: str, runner: web.AppRunner, producers: Iterable[KafkaSender],
                 feed: NotificationFeed | None, view: JobView | None, outgoing: Any = None,
                 spill: SpillStore | None = None, push: Any = None, copier: Any = None,
                 store: Any = None, backlog: BacklogMonitor | None = None,
                 beacon: InstanceBeacon | None = None, ended: EndedJobs | None = None,
                 keyed: KeyedRequests | None = None) -> None:
        self.url = url
        self.view = view
        self.outgoing = outgoing
        self.push = push
        self._runner = runner
        self.producers = tuple(producers)
        """The Kafka producers this process writes with (the ingress's first, when it has its own)."""
        self._feed = feed
        self._spill = spill
        self.copier = copier
        self._store = store
        self.backlog = backlog
        self.beacon = beacon
        """This process's heartbeats, when it shares the tenants' quotas with others."""
        self.ended = ended
        """Without a job view and with queued-jobs quotas: the reader of its own jobs' ends."""
        self.keyed = keyed
        """Without a job view, with the ingress role: the reader of every process's keyed requests."""
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._runner.cleanup()  # runs on_shutdown (open streams end) and waits for handlers
        if self.beacon is not None:  # (before the producers: its last beat says it is gone)
            await self.beacon.stop()
        if self.ended is not None:
            await self.ended.stop()
        if self.keyed is not None:
            await self.keyed.stop()
        if self.backlog is not None:
            await self.backlog.stop()
        if self.outgoing is not None:
            await self.outgoing.stop()
        if self.push is not None:
            await self.push.stop()
        if self.copier is not None:
            await self.copier.stop()
        if self._store is not None:
            await self._store.close()
        if self._feed is not None:
            await self._feed.stop()
        for producer in self.producers:
            await producer.stop()
        if self._spill is not None:
            await asyncio.to_thread(self._spill.close)  # waits for a write the feed left running


def spill_dir(settings: Settings) -> Path:
    """The directory under which each API process of this deployment (topic prefix) makes its
    own spill store."""
    return settings.cache_dir / "api" / (settings.topic_prefix.strip(".") or "default")


async def serve(settings: Settings, *, host: str | None = None, port: int | None = None,
                roles: Iterable[str] | str | None = None, setup: ProviderSetup | None = None,
                ready_timeout: float = 60.0, outgoing_webhooks: bool = False, video_copier: bool = False,
                video_store: Any = None, view_max_jobs: int = DEFAULT_MAX_JOBS, **app_options: Any) -> ApiServer:
    """Start the API for ``roles`` (default all) on ``host:port`` (default from settings; port 0
    picks a free one) and return once it listens.

    Raises ``ConfigError`` for a missing bootstrap or bad roles and ``KafkaUnavailable`` if the
    broker does not answer. ``app_options`` go to :func:`build_app` (e.g. ``keepalive``).
    ``outgoing_webhooks`` also runs the signed outgoing-webhook deliveries (a consumer group on
    ``results``, so several API processes share them) and, when the settings configure FCM or
    APNs, the push deliveries beside them (a consumer group of their own). ``view_max_jobs`` bounds the job
    snapshots held in memory; older ones are read back from the spill store on disk.
    ``video_copier`` also runs the copy of completed jobs' videos into the store
    (``FLOODGATE_VIDEO_STORE``; a consumer group on ``results`` too); with a store, the read role
    links to and serves the videos. ``video_store`` replaces the one the settings name (tests).
    """
    chosen = parse_roles(roles)
    if not settings.kafka_bootstrap:
        raise ConfigError("FLOODGATE_KAFKA_BOOTSTRAP must be resolved before starting the API")
    setup = setup or provider_config.load(settings)
    host = settings.api_host if host is None else host
    port = settings.api_port if port is None else port
    names = TopicNames(settings)
    limits = {n: spec.concurrency_limit for n, spec in setup.routing.providers.items()}
    # confluent's admin client blocks; keep the loop free while topics are created.
    layout = names.layout(limits)
    await asyncio.to_thread(ensure_topics, settings.kafka_bootstrap, layout, settings.replication_factor)

    # Every role writes: ingress requests, read cancels (events), bridge webhooks. The ingress
    # has a producer of its own that lingers longer (more requests per batch, fewer wake-ups of
    # librdkafka's threads and of the loop per 202); the bridge's must not wait (its releases
    # hand provider slots over).
    intake = (KafkaSender(settings.kafka_bootstrap, client_id="floodgate-api-ingress", linger_ms=INGRESS_LINGER_MS,
                          poll_seconds=INGRESS_POLL_SECONDS)
              if "ingress" in chosen else None)
    producer = intake if intake is not None and chosen == {"ingress"} else KafkaSender(
        settings.kafka_bootstrap, linger_ms=BRIDGE_LINGER_MS)
    producers = [producer] if intake is None or intake is producer else [intake, producer]
    spill: SpillStore | None = None
    board: QueueBoard | None = None
    view: JobView | None = None
    feed: NotificationFeed | None = None
    runner: web.AppRunner | None = None
    sock: socket.socket | None = None
    outgoing = None
    push = None
    copier = None
    store = video_store
    backlog: BacklogMonitor | None = None
    beacon: InstanceBeacon | None = None
    ended: EndedJobs | None = None
    keyed: KeyedRequests | None = None
    idempotency = IdempotencyCache()
    if store is None and ("read" in chosen or video_copier):
        store = build_store(settings)
    try:
        if "read" in chosen:
            spill = await asyncio.to_thread(SpillStore.private, spill_dir(settings))
            weights = settings.tenant_weight_map
            routing = setup.routing
            board = QueueBoard(limits, weight_of=lambda tenant: weights.get(tenant, 1.0),
                               configured_render=setup.render_times,
                               route=lambda model: first_provider(routing, model, datetime.now(UTC)))
            view = JobView(view_max_jobs, spill, board=board)
            slot_logs = {names.slot_log(p): layout[names.slot_log(p)][0] for p in limits}
            feed = NotificationFeed(settings.kafka_bootstrap, names.notifications,
                                    layout[names.notifications][0], view, slot_logs=slot_logs,
                                    fetch_max_wait_ms=settings.fetch_max_wait_ms)
        if outgoing_webhooks:
            from floodgate.notify.outgoing import OutgoingWebhooks

            outgoing = OutgoingWebhooks(settings)
            await outgoing.start()
            if settings.push_platforms:  # push runs beside the webhooks, where push is configured
                from floodgate.notify.push import PushDeliveries

                push = PushDeliveries(settings)
                await push.start()
        if video_copier and store is not None:
            from floodgate.videos.copier import VideoCopier

            copier = VideoCopier(settings, store)
            await copier.start()
        for started in producers:
            await started.start()
        if feed is not None and view is not None:
            await feed.start()
            try:
                await asyncio.wait_for(view.ready.wait(), ready_timeout)
            except TimeoutError:
                log.warning("job view not caught up after %.0fs; serving anyway (/healthz says starting)",
                            ready_timeout)
        if "ingress" in chosen:  # the backlog guard, when a bound is set; after the view has caught up
            backlog = await start_monitor(settings, names, limits, {t: parts for t, (parts, _) in layout.items()},
                                          view.open_jobs if view is not None else None, routing=setup.routing,
                                          queued_at=board.queued_at if board is not None else None)
        quotas = settings.quota_table
        # Without a view, the queued-jobs quota counts this process's own jobs until their results.
        own_queued = "ingress" in chosen and view is None and quotas.limits_queued
        if "ingress" in chosen and settings.quota_scope == "cluster" and (quotas.limits_rate or own_queued):
            # Quotas shared with the other API processes taking requests: counted before the first
            # request, so a process that starts into a running cluster takes its share at once.
            beacon = InstanceBeacon(settings.kafka_bootstrap, names.instances, producer, settings.instance_heartbeat)
            await beacon.start()
        if own_queued:  # reading from the end of results before the first job is accepted
            ended = EndedJobs(settings.kafka_bootstrap, names.results, layout[names.results][0], JobsByTenant())
            await ended.start()
        if "ingress" in chosen and view is None:  # Idempotency-Key checks across processes, without a view
            keyed = KeyedRequests(settings.kafka_bootstrap, names.requests, layout[names.requests][0], idempotency)
            await keyed.start()
        app = build_app(settings, setup, roles=chosen, producer=producer, view=view, video_store=store,
                        backlog=backlog, intake=intake, roster=beacon.roster if beacon is not None else None,
                        own_jobs=ended.jobs if ended is not None else None, idempotency=idempotency, **app_options)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        sock = bind_socket(host, port)
        bound = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        sock = None  # the site owns it now
    except BaseException:
        if sock is not None:
            sock.close()
        if runner is not None:
            await runner.cleanup()
        if beacon is not None:
            await beacon.stop()
        if ended is not None:
            await ended.stop()
        if keyed is not None:
            await keyed.stop()
        if backlog is not None:
            await backlog.stop()
        if feed is not None:
            await feed.stop()
        for made in producers:
            await made.stop()
        if outgoing is not None:
            await outgoing.stop()
        if push is not None:
            await push.stop()
        if copier is not None:
            await copier.stop()
        if spill is not None:
            await asyncio.to_thread(spill.close)
        raise
    shown = f"[{host}]" if ":" in host else host
    for channel in (outgoing, push):  # where this API serves the videos the results link to
        if channel is not None and not channel.link_base and host not in ("", "0.0.0.0", "::"):
            channel.link_base = f"http://{shown}:{bound}"
    return ApiServer(f"http://{shown}:{bound}", runner, producers, feed, view, outgoing, spill, push, copier, store,
                     backlog, beacon, ended, keyed)


async def _main(settings: Settings, host: str | None, port: int | None, roles: Iterable[str] | str | None,
                outgoing_webhooks: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The video copier goes with the outgoing webhooks: both read results, neither belongs on the
    # accept path's core.
    server = await serve(settings, host=host, port=port, roles=roles, outgoing_webhooks=outgoing_webhooks,
                         video_copier=outgoing_webhooks)
    if server.view is not None:
        freeze_heap()  # the view has caught up; the URL is not out yet, so no request is waiting
    try:
        print(f"api={server.url}", flush=True)
        await stop.wait()
    finally:
        await server.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    # asyncio.run would cancel stragglers silently; name them so a leak gets fixed, not hidden.
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    if leftover:
        log.warning("tasks still running after shutdown: %s", ", ".join(sorted(t.get_name() for t in leftover)))


def ingress_only(roles: Iterable[str] | str | None) -> bool:
    return parse_roles(roles) == {"ingress"}


def run(settings: Settings, host: str | None = None, port: int | None = None,
        roles: Iterable[str] | str | None = None, outgoing_webhooks: bool | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then shut down cleanly. Prints ``api=http://HOST:PORT`` once listening.

    ``outgoing_webhooks`` None: deliver them unless the process is ingress-only (it keeps its
    core for the accept path; another role's process delivers them).
    """
    if outgoing_webhooks is None:
        outgoing_webhooks = not ingress_only(roles)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr)
    use_uvloop(settings.event_loop)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(settings, host, port, roles, outgoing_webhooks))


__all__ = ["ApiServer", "run", "serve"]
