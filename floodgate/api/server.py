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
import sys
from collections.abc import Iterable, Mapping
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
    """A listening API; ``close()`` stops serving, then everything else in the reverse order of
    its start (see ``_Assembly``). Safe to call twice."""

    def __init__(self, url: str, parts: _Assembly, exits: contextlib.AsyncExitStack) -> None:
        self.url = url
        self.view = parts.view
        self.outgoing = parts.outgoing
        self.push = parts.push
        self.producers = parts.producers
        """The Kafka producers this process writes with (the ingress's first, when it has its own)."""
        self.copier = parts.copier
        self.backlog = parts.backlog
        self.beacon = parts.beacon
        """This process's heartbeats, when it shares the tenants' quotas with others."""
        self.ended = parts.ended
        """Without a job view and with queued-jobs quotas: the reader of its own jobs' ends."""
        self.keyed = parts.keyed
        """Without a job view, with the ingress role: the reader of every process's keyed requests."""
        self._exits = exits
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._exits.aclose()


def queue_board(settings: Settings, setup: ProviderSetup, limits: Mapping[str, int]) -> QueueBoard:
    """The job view's queue board: the tenants' weights, the routing file's render times, routes
    and spillover rules."""
    weights, routing = settings.tenant_weight_map, setup.routing
    return QueueBoard(limits, weight_of=lambda tenant: weights.get(tenant, 1.0), configured_render=setup.render_times,
                      route=lambda model: first_provider(routing, model, datetime.now(UTC)),
                      spillover=routing.spillover)


def spill_dir(settings: Settings) -> Path:
    """The directory under which each API process of this deployment (topic prefix) makes its
    own spill store."""
    return settings.cache_dir / "api" / (settings.topic_prefix.strip(".") or "default")


class _Assembly:
    """One API process's parts for its roles, started in the order they depend on each other.

    Each part's stop goes on ``exits`` before the part starts, so a start that fails halfway and
    ``ApiServer.close`` both stop what was started, in reverse: the socket first (open streams
    end, handlers finish), then the admission's readers and the heartbeats (the last beat goes out
    through a producer still running), the job view's feed, the producers after everything that
    writes through them, the deliveries (Kafka clients of their own), the spill store after the
    feed that writes into it, and the video store after the copier and the handlers that use it."""

    def __init__(self, settings: Settings, setup: ProviderSetup, roles: frozenset[str],
                 exits: contextlib.AsyncExitStack) -> None:
        self.settings, self.setup, self.roles, self.exits = settings, setup, roles, exits
        self.names = TopicNames(settings)
        self.limits = {n: spec.concurrency_limit for n, spec in setup.routing.providers.items()}
        self.layout = self.names.layout(self.limits)
        self.idempotency = IdempotencyCache()
        self._connectors: dict[str, Any] | None = None
        self.intake: KafkaSender | None = None
        self.producer: KafkaSender | None = None
        self.producers: tuple[KafkaSender, ...] = ()
        self.store: Any = None
        self.board: QueueBoard | None = None
        self.view: JobView | None = None
        self.feed: NotificationFeed | None = None
        self.outgoing: Any = None
        self.push: Any = None
        self.copier: Any = None
        self.backlog: BacklogMonitor | None = None
        self.beacon: InstanceBeacon | None = None
        self.ended: EndedJobs | None = None
        self.keyed: KeyedRequests | None = None

    @property
    def ingress(self) -> bool:
        return "ingress" in self.roles

    async def create_topics(self) -> None:
        # confluent's admin client blocks; keep the loop free while topics are created.
        await asyncio.to_thread(ensure_topics, self.settings.kafka_bootstrap, self.layout,
                                self.settings.replication_factor)

    def make_producers(self) -> None:
        """Every role writes: ingress requests, read cancels (events), bridge webhooks. The
        ingress has a producer of its own that lingers longer (more requests per batch, fewer
        wake-ups of librdkafka's threads and of the loop per 202); the bridge's must not wait (its
        releases hand provider slots over)."""
        bootstrap = self.settings.kafka_bootstrap
        assert bootstrap is not None  # serve checked it
        if self.ingress:
            self.intake = KafkaSender(bootstrap, client_id="floodgate-api-ingress", linger_ms=INGRESS_LINGER_MS,
                                      poll_seconds=INGRESS_POLL_SECONDS)
        if self.intake is not None and self.roles == {"ingress"}:
            self.producer = self.intake  # nothing else writes
        else:
            self.producer = KafkaSender(bootstrap, linger_ms=BRIDGE_LINGER_MS)
        self.producers = (self.producer,) if self.intake in (None, self.producer) else (self.intake, self.producer)

    def open_store(self, given: Any, video_copier: bool) -> None:
        """The video store: ``given`` (tests), else the settings' one where the read role serves
        videos or the copier fills it."""
        self.store = given
        if self.store is None and ("read" in self.roles or video_copier):
            self.store = build_store(self.settings)
        if self.store is not None:
            self.exits.push_async_callback(self.store.close)

    @property
    def connectors(self) -> dict[str, Any]:
        """The providers' connectors, built once: the bridge authenticates and parses with them,
        the job view's feed parses the webhooks of watched jobs."""
        if self._connectors is None:
            self._connectors = self.setup.build_connectors()
        return self._connectors

    async def open_view(self, max_jobs: int) -> None:
        """The read role's job view, its spill store and its queue board; the feed that fills
        them is made here and started by ``start_feed``, once the producers run."""
        if "read" not in self.roles:
            return
        settings = self.settings
        spill = await asyncio.to_thread(SpillStore.private, spill_dir(settings))
        self.exits.push_async_callback(asyncio.to_thread, spill.close)  # waits for a write the feed left running
        self.board = queue_board(settings, self.setup, self.limits)
        self.view = JobView(max_jobs, spill, board=self.board)
        names = self.names
        slot_logs = {names.slot_log(p): self.layout[names.slot_log(p)][0] for p in self.limits}
        assert settings.kafka_bootstrap is not None
        self.feed = NotificationFeed(settings.kafka_bootstrap, names.notifications,
                                     self.layout[names.notifications][0], self.view, slot_logs=slot_logs,
                                     webhooks=(names.webhooks, self.layout[names.webhooks][0]),
                                     connectors=self.connectors,
                                     fetch_max_wait_ms=settings.fetch_max_wait_ms)

    async def start_producers(self) -> None:
        for producer in self.producers:
            self.exits.push_async_callback(producer.stop)
            await producer.start()

    async def start_deliveries(self, outgoing_webhooks: bool, video_copier: bool) -> None:
        """The signed outgoing webhooks and, where FCM or APNs is configured, push beside them;
        the video copier. Each reads ``results`` in a consumer group of its own."""
        settings = self.settings
        if outgoing_webhooks:
            from floodgate.notify.outgoing import OutgoingWebhooks

            self.outgoing = OutgoingWebhooks(settings)
            self.exits.push_async_callback(self.outgoing.stop)
            await self.outgoing.start()
            if settings.push_platforms:
                from floodgate.notify.push import PushDeliveries

                self.push = PushDeliveries(settings)
                self.exits.push_async_callback(self.push.stop)
                await self.push.start()
        if video_copier and self.store is not None:
            from floodgate.videos.copier import VideoCopier

            self.copier = VideoCopier(settings, self.store)
            self.exits.push_async_callback(self.copier.stop)
            await self.copier.start()

    async def start_feed(self, ready_timeout: float) -> None:
        if self.feed is None or self.view is None:
            return
        self.exits.push_async_callback(self.feed.stop)
        await self.feed.start()
        try:
            await asyncio.wait_for(self.view.ready.wait(), ready_timeout)
        except TimeoutError:
            log.warning("job view not caught up after %.0fs; serving anyway (/healthz says starting)", ready_timeout)

    async def start_admission(self) -> None:
        """What the ingress's admission reads: the backlog guard's monitor (when a bound is set;
        after the view has caught up), the heartbeats of quotas shared across processes, the ends
        of its own jobs (queued-jobs quotas without a view) and the keyed requests of every
        process (Idempotency-Key checks without a view)."""
        if not self.ingress:
            return
        settings, names, layout, view = self.settings, self.names, self.layout, self.view
        bootstrap = settings.kafka_bootstrap
        assert bootstrap is not None and self.producer is not None
        self.backlog = await start_monitor(settings, names, self.limits, {t: parts for t, (parts, _) in layout.items()},
                                           view.open_jobs if view is not None else None, routing=self.setup.routing,
                                           queued_at=self.board.queued_at if self.board is not None else None)
        if self.backlog is not None:
            self.exits.push_async_callback(self.backlog.stop)
        quotas = settings.quota_table
        # Without a view, the queued-jobs quota counts this process's own jobs until their results.
        own_queued = view is None and quotas.limits_queued
        if settings.quota_scope == "cluster" and (quotas.limits_rate or own_queued):
            # Quotas shared with the other API processes taking requests: counted before the first
            # request, so a process that starts into a running cluster takes its share at once.
            self.beacon = InstanceBeacon(bootstrap, names.instances, self.producer, settings.instance_heartbeat)
            self.exits.push_async_callback(self.beacon.stop)
            await self.beacon.start()
        if own_queued:  # reading from the end of results before the first job is accepted
            self.ended = EndedJobs(bootstrap, names.results, layout[names.results][0], JobsByTenant())
            self.exits.push_async_callback(self.ended.stop)
            await self.ended.start()
        if view is None:
            self.keyed = KeyedRequests(bootstrap, names.requests, layout[names.requests][0], self.idempotency)
            self.exits.push_async_callback(self.keyed.stop)
            await self.keyed.start()

    async def listen(self, host: str, port: int, app_options: dict[str, Any]) -> int:
        """Serve on ``host:port``; the port bound (port 0 picks a free one)."""
        app = build_app(self.settings, self.setup, roles=self.roles, producer=self.producer, view=self.view,
                        video_store=self.store, video_copier=self.copier, backlog=self.backlog, intake=self.intake,
                        roster=self.beacon.roster if self.beacon is not None else None,
                        own_jobs=self.ended.jobs if self.ended is not None else None,
                        idempotency=self.idempotency, **{"connectors": self.connectors, **app_options})
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        # Runs on_shutdown (open streams end) and waits for handlers; closes the listening socket.
        self.exits.push_async_callback(runner.cleanup)
        await runner.setup()
        sock = bind_socket(host, port)
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            raise
        bound: int = sock.getsockname()[1]
        return bound


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
    async with contextlib.AsyncExitStack() as exits:
        parts = _Assembly(settings, setup, chosen, exits)
        await parts.create_topics()
        parts.make_producers()
        parts.open_store(video_store, video_copier)
        await parts.open_view(view_max_jobs)
        await parts.start_deliveries(outgoing_webhooks, video_copier)
        await parts.start_producers()
        await parts.start_feed(ready_timeout)
        await parts.start_admission()
        bound = await parts.listen(host, port, app_options)
        # Started: from here the server's close unwinds what the stack holds.
        server = ApiServer(f"http://{f'[{host}]' if ':' in host else host}:{bound}", parts, exits.pop_all())
    for channel in (parts.outgoing, parts.push):  # where this API serves the videos the results link to
        if channel is not None and not channel.link_base and host not in ("", "0.0.0.0", "::"):
            channel.link_base = server.url
    return server


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
