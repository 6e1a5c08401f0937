"""Every Prometheus metric Floodgate exports, defined once, grouped by the process that owns it.

``ApiMetrics`` (the API process: ingress, webhook bridge, job reads, outgoing webhooks) and
``WorkerMetrics`` (a pipeline worker's agents) each register their metrics on one registry when
built. A process builds its group once, on prometheus_client's default registry, through
:func:`api_metrics` / :func:`worker_metrics`; tests pass a fresh ``CollectorRegistry`` instead.
The provider simulator exports its ``/stats`` counters through :class:`SimulatorCollector`.

Conventions: base units (seconds), ``_total`` on counters, ``_seconds`` on durations, and only
low-cardinality labels (provider, channel, reason, outcome...) — never a job id. Every process
exposes only its own share: counters and per-provider gauges add up across processes by ``sum``.

:func:`describe` lists every metric for the table in docs/metrics.md (``tests/unit/test_metrics.py``
checks that the table is current).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

# 1 ms .. 1 s, fine-grained where a Kafka round trip lands (a few ms to a few tens of ms).
ACCEPT_BUCKETS = (0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
                  0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
# A webhook's answer waits for one or two writes Kafka acknowledged; providers deliver again what is
# not answered within seconds (the simulator: 5 s), so the buckets reach past that.
WEBHOOK_ANSWER_BUCKETS = (*ACCEPT_BUCKETS, 2.5, 5.0, 10.0)
# A snapshot travels events → job state → notifications → the API: tens of ms when healthy.
NOTIFY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Accepted → terminal: seconds for fast renders, minutes for real ones, 30 min for the worst backlogs.
JOB_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0,
               450.0, 600.0, 900.0, 1200.0, 1800.0)

# The event loop's lag: a healthy loop wakes within a millisecond; a stall is tens of ms to seconds.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REJECT_REASONS = ("validation", "auth", "too_large", "idempotency_conflict", "kafka_unavailable", "quota", "backlog")
WEBHOOK_OUTCOMES = ("accepted", "bad_signature", "unknown_provider", "too_large", "kafka_unavailable")
OUTGOING_OUTCOMES = ("delivered", "failed", "skipped", "invalid")
VIDEO_OUTCOMES = ("stored", "failed", "already_stored", "skipped")
VIDEO_REFUSALS = ("malformed", "forged", "expired")
CHANNELS = ("sse", "websocket")
BREAKER_CHANNELS = ("webhooks", "push", "videos")
"""The services whose destinations have circuit breakers (:mod:`floodgate.lanes`): the outgoing
webhooks, the pushes, the video copier's source hosts."""
UNKNOWN_PROVIDER = "unknown"
"""The ``provider`` label of webhooks to a provider we do not know: the path segment is the
caller's, and a label taken from it would let anyone create series at will."""


class _Group:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.specs: list[tuple[str, str, tuple[str, ...], str]] = []
        """(name, type, labels, meaning) of each metric, in definition order."""

    def _counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        self.specs.append((name, "counter", tuple(labels), doc))
        return Counter(name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        self.specs.append((name, "gauge", tuple(labels), doc))
        return Gauge(name, doc, labels, registry=self.registry)

    def _histogram(self, name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> Histogram:
        self.specs.append((name, "histogram", tuple(labels), doc))
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def _loop_stalls(self, process: str, whose: str, waiting: str) -> tuple[Histogram, Histogram]:
        """The event loop lag and garbage collection histograms of an ``api`` or ``worker``
        process (``floodgate.looplag`` feeds them)."""
        lag = self._histogram(
            f"floodgate_{process}_event_loop_lag_seconds",
            f"How much later than due {whose} event loop woke a probe that sleeps 50 ms at a time: what "
            f"{waiting} waited for work that held the loop.", LOOP_LAG_BUCKETS)
        pause = self._histogram(
            f"floodgate_{process}_gc_pause_seconds",
            f"How long each of {whose} garbage collections held the process, by generation (2: a full "
            "collection, which walks every object the process tracks).", LOOP_LAG_BUCKETS, ["generation"])
        for generation in ("0", "1", "2"):
            pause.labels(generation)
        return lag, pause


class ApiMetrics(_Group):
    """The API process's metrics; handlers reach them through ``Deps.metrics``."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__(registry)
        self.accepted = self._counter(
            "floodgate_requests_accepted_total",
            "Job requests answered 202 (idempotent replays included); source is http (SDK and replayed "
            "requests never pass the API: see floodgate_jobs_admitted_total).", ["source"])
        self.rejected = self._counter(
            "floodgate_requests_rejected_total",
            "Job requests refused: validation, auth, too_large, idempotency_conflict, kafka_unavailable, "
            "quota (a tenant's rate or queued-jobs quota: 429), backlog (the backlog guard: 503).",
            ["reason"])
        self.backlog_depth = self._gauge(
            "floodgate_backlog_depth",
            "Jobs queued across providers as this API's backlog guard last read them (-1: unknown).")
        self.backlog_wait = self._gauge(
            "floodgate_backlog_estimated_wait_seconds",
            "The backlog guard's estimated wait: queued jobs / the pace of the providers' full lines, else "
            "jobs finished per second (-1: unknown).")
        self.backlog_line_wait = self._gauge(
            "floodgate_backlog_line_wait_seconds",
            "The backlog guard's wait of a job joining the provider's line now: the jobs waiting for it / the "
            "pace of its full dispatch partitions (0: a slot is free). Only where known: a provider's series goes "
            "once its reports stop.", ["provider"])
        self.backlog_shedding = self._gauge(
            "floodgate_backlog_shedding", "1 while the backlog guard answers new jobs 503 (all, or a model's), else 0.")
        self.quota_instances = self._gauge(
            "floodgate_quota_instances",
            "API processes taking requests that this one counts (itself included): each enforces its share, "
            "the limit divided by this, of every tenant's rate quota (FLOODGATE_QUOTA_SCOPE=cluster).")
        self.accept_latency = self._histogram(
            "floodgate_accept_latency_seconds",
            "Time from a job request's arrival to its 202 (Kafka acknowledged the record).", ACCEPT_BUCKETS)
        self.loop_lag, self.gc_pause = self._loop_stalls("api", "the API's", "every request in flight")
        self.webhooks_received = self._counter(
            "floodgate_webhooks_received_total",
            "Provider webhooks at the bridge, by provider and outcome (accepted, bad_signature, "
            "unknown_provider, too_large, kafka_unavailable, unconfirmed: an unsigned callback its provider "
            "could not confirm yet).", ["provider", "outcome"])
        self.webhook_answer = self._histogram(
            "floodgate_webhook_answer_seconds",
            "Time from a provider webhook's arrival at the bridge to its 200 (Kafka acknowledged it, and its "
            "slot's release for an end). A provider delivers again what it does not see answered in time.",
            WEBHOOK_ANSWER_BUCKETS)
        self.notification_latency = self._histogram(
            "floodgate_notification_latency_seconds",
            "From a snapshot's updated_at to its push to an SSE or WebSocket client (live changes only).",
            NOTIFY_BUCKETS, ["channel"])
        self.subscribers = self._gauge(
            "floodgate_notification_subscribers",
            "Open job subscriptions: SSE streams, WebSocket job subscriptions.", ["channel"])
        self.outgoing = self._counter(
            "floodgate_outgoing_webhooks_total",
            "Final results handled by the outgoing webhooks: delivered, failed (dead-lettered), "
            "skipped (no webhook_url), invalid (undecodable, dead-lettered).", ["outcome"])
        self.outgoing_retries = self._counter(
            "floodgate_outgoing_webhook_retries_total",
            "Outgoing webhook attempts that were retried.")
        self.push = self._counter(
            "floodgate_push_notifications_total",
            "Final results handled by the push deliveries (FCM, APNs): delivered, failed (dead-lettered), "
            "skipped (no device or a state that is not pushed), invalid (undecodable, dead-lettered).", ["outcome"])
        self.push_retries = self._counter(
            "floodgate_push_notification_retries_total", "Push attempts that were retried.")
        self.videos = self._counter(
            "floodgate_videos_total",
            "Final results handled by the video copier: stored (copied and checked), failed (refused for good "
            "or out of retries), already_stored (a repeat), skipped (not completed).", ["outcome"])
        self.video_retries = self._counter(
            "floodgate_video_copy_retries_total", "Video copies retried after a passing failure.")
        self.video_copies_again = self._counter(
            "floodgate_video_copies_again_total",
            "Video copies given up on, started again because someone asked for the video.")
        self.video_copies_shed = self._counter(
            "floodgate_video_copies_shed_total",
            "Video copies given up on without an attempt: their source host held as many copies as the copier "
            "lets one host hold, and its breaker was open (recorded as given up: a request for the video starts "
            "the copy).")
        self.video_copy_lag = self._histogram(
            "floodgate_video_copy_lag_seconds",
            "From a job's completion to its video stored in Floodgate's store.", JOB_BUCKETS)
        self.video_links_refused = self._counter(
            "floodgate_video_links_refused_total", "Requests for a stored video refused: malformed, forged, "
            "expired link.", ["reason"])
        self.breakers_open = self._gauge(
            "floodgate_destination_breakers_open",
            "Destinations whose circuit breaker is open or half-open now (one probe at a time), by channel: "
            "webhooks (receivers' host:port), push (platforms), videos (hosts the copier fetches from). Never "
            "by destination: hosts are tenants' data, without bound.", ["channel"])
        self.deliveries_shed = self._counter(
            "floodgate_deliveries_shed_total",
            "Outgoing webhooks and pushes given up on without an attempt, by channel: their destination held "
            "as many deliveries as one may hold, and its breaker was open (dead-lettered, counted as failed).",
            ["channel"])
        self.breaker_openings = self._counter(
            "floodgate_destination_breaker_openings_total",
            "Circuit breakers of destinations opened after failed attempts in a row, by channel: webhooks, "
            "push, videos.", ["channel"])
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for outcome in VIDEO_OUTCOMES:
            self.videos.labels(outcome)
        for reason in VIDEO_REFUSALS:
            self.video_links_refused.labels(reason)
        for channel in CHANNELS:
            self.notification_latency.labels(channel)
            self.subscribers.labels(channel)
        for channel in BREAKER_CHANNELS:
            self.breakers_open.labels(channel)
            self.breaker_openings.labels(channel)
        for channel in ("webhooks", "push"):
            self.deliveries_shed.labels(channel)
        for outcome in OUTGOING_OUTCOMES:
            self.outgoing.labels(outcome)
            self.push.labels(outcome)
        self.accepted.labels("http")

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()


class WorkerMetrics(_Group):
    """A worker's metrics; agents reach them through ``Pipeline.metrics``."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__(registry)
        self.admitted = self._counter(
            "floodgate_jobs_admitted_total",
            "Jobs admitted (validated, deduplicated, routed), by the request's source (http, sdk, replay).",
            ["source"])
        self.duplicates = self._counter(
            "floodgate_duplicates_total", "Requests dropped at admission as replays of an admitted job.")
        self.rehomed = self._counter(
            "floodgate_requests_rehomed_total",
            "Requests moved to their job id's partition (produced with another partitioner, e.g. kcat).")
        self.dead_letters = self._counter(
            "floodgate_dead_letters_total", "Records parked in the dlq topic, by the stage that gave up.",
            ["stage"])
        self.inflight = self._gauge(
            "floodgate_provider_inflight", "Slots this worker holds at a provider (jobs submitted, not ended).",
            ["provider"])
        self.concurrency_limit = self._gauge(
            "floodgate_provider_concurrency_limit",
            "This worker's share of a provider's concurrency limit (its dispatch partitions' shares).",
            ["provider"])
        self.breaker_open = self._gauge(
            "floodgate_provider_breaker_open",
            "1 while this worker's circuit breaker for a provider of its partitions is open or half-open "
            "(submissions move to the next provider), else 0.", ["provider"])
        self.start_rate = self._gauge(
            "floodgate_provider_start_rate",
            "Jobs per second this worker's dispatch partitions of a provider start while jobs wait: their "
            "pace, from the slots they take and give back, which spillover and the backlog guard go by "
            "(-1: not known yet).", ["provider"])
        self.submissions = self._counter(
            "floodgate_provider_submissions_total", "Jobs a provider accepted (submit calls that succeeded).",
            ["provider"])
        self.rate_limited = self._counter(
            "floodgate_provider_rate_limited_total", "Submit calls answered 429 (or another retriable refusal).",
            ["provider"])
        self.retries = self._counter(
            "floodgate_provider_retries_total", "Submit calls retried after a backoff or Retry-After.",
            ["provider"])
        self.reroutes = self._counter(
            "floodgate_provider_reroutes_total", "Jobs moved from a provider to the next one in their route.",
            ["from_provider"])
        self.spilled = self._counter(
            "floodgate_spilled_total", "Waiting jobs moved to an equivalent model's provider with room (spillover).",
            ["from_provider", "to_provider"])
        self.polls = self._counter(
            "floodgate_provider_polls_total",
            "Status calls about in-flight jobs: quiet ones (lost webhooks), and those followed at providers "
            "that call back only at the end or never.",
            ["provider"])
        self.status_calls_waiting = self._gauge(
            "floodgate_provider_status_calls_waiting",
            "Status calls due about a provider's jobs that wait for their turn within its read budget "
            "(status_rate_per_second), or for the Retry-After of a status call it refused.", ["provider"])
        self.status_rate_limited = self._counter(
            "floodgate_provider_status_rate_limited_total",
            "Status calls a provider refused for its rate (429): every status call to it then waits for "
            "the Retry-After.", ["provider"])
        self.timeouts = self._counter(
            "floodgate_provider_timeouts_total", "In-flight jobs failed after FLOODGATE_JOB_TIMEOUT.",
            ["provider"])
        self.parked = self._counter(
            "floodgate_orders_parked_total",
            "Dispatch orders that found no free slot and waited in line (each costs one waiting-entry record).",
            ["provider"])
        self.window_holds = self._counter(
            "floodgate_read_ahead_holds_total",
            "Times a dispatch partition stopped fetching because the worker's read-ahead window "
            "(FLOODGATE_FAIR_WINDOW waiting orders over all its lines) was full.", ["provider"])
        self.expired = self._counter(
            "floodgate_jobs_expired_total", "Jobs whose deadline passed while they waited: never submitted.",
            ["provider"])
        self.webhooks = self._counter(
            "floodgate_webhooks_normalised_total", "Provider webhooks turned into job events (duplicates dropped).",
            ["provider"])
        self.job_latency = self._histogram(
            "floodgate_job_latency_seconds", "From a job's acceptance to its terminal state, by outcome.",
            JOB_BUCKETS, ["outcome"])
        self.first_progress = self._histogram(
            "floodgate_time_to_first_progress_seconds",
            "From a job's submission to the provider's first progress (its queue and cold start behind it), "
            "by provider and model.", JOB_BUCKETS, ["provider", "model"])
        self.completion = self._histogram(
            "floodgate_time_to_completion_seconds",
            "From a job's submission to its completion, by provider and model.", JOB_BUCKETS,
            ["provider", "model"])
        self.transitions = self._counter(
            "floodgate_job_transitions_total", "Job state changes, by the status entered.", ["status"])
        self.queue_depth = self._gauge(
            "floodgate_queue_depth",
            "Orders waiting for <provider> on this worker's partitions: unread on dispatch.<provider> "
            "(end offset - committed offset) plus read and waiting for a slot.",
            ["provider"])
        self.events_processed = self._counter(
            "floodgate_events_processed_total", "Records read by each agent.", ["agent"])
        self.loop_lag, self.gc_pause = self._loop_stalls("worker", "a worker's", "every agent")
        self.stalled_partitions = self._counter(
            "floodgate_stalled_partitions_total",
            "Stream partitions the stall watchdog found with records waiting and no progress for 30 s, "
            "and sought back to their committed offset (should stay 0).", ["topic"])

    def for_provider(self, name: str) -> None:
        """Create the provider's series at zero, so dashboards see them before the first job."""
        for metric in (self.inflight, self.concurrency_limit, self.breaker_open, self.submissions,
                       self.rate_limited, self.retries, self.reroutes, self.polls, self.timeouts, self.webhooks,
                       self.queue_depth, self.expired, self.parked, self.window_holds, self.status_calls_waiting,
                       self.status_rate_limited):
            metric.labels(name)
        self.start_rate.labels(name).set(-1)


# The provider simulator's /stats, as metrics: (name, type, stats field, meaning). Read from its
# counters at scrape time, so the simulator keeps no second set of books.
SIMULATOR_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("floodgate_sim_inflight", "gauge", "in_flight", "Jobs the simulated provider is rendering now."),
    ("floodgate_sim_max_concurrency", "gauge", "max_concurrency",
     "Most jobs in flight at once for one API key since start (compare with the limit)."),
    ("floodgate_sim_concurrency_limit", "gauge", "concurrency_limit", "The simulated provider's concurrency limit."),
    ("floodgate_sim_jobs_created_total", "counter", "jobs_created", "Jobs the simulated provider created."),
    ("floodgate_sim_rejected_429_total", "counter", "rejected_429", "Submissions refused with 429 (limit reached)."),
    ("floodgate_sim_duplicate_idempotency_keys_total", "counter", "duplicate_idempotency_keys",
     "Submissions that reused an Idempotency-Key (answered with the first job)."),
    ("floodgate_sim_completed_total", "counter", "completed", "Jobs the simulated provider completed."),
    ("floodgate_sim_failed_total", "counter", "failed", "Jobs the simulated provider failed."),
    ("floodgate_sim_webhooks_sent_total", "counter", "webhooks_sent", "Webhooks the simulator delivered."),
    ("floodgate_sim_webhooks_retried_total", "counter", "webhooks_retried",
     "Webhook deliveries the simulator made again: the one before was not answered 2xx in time."),
    ("floodgate_sim_webhooks_timed_out_total", "counter", "webhooks_timed_out",
     "Webhook deliveries not answered within the simulator's webhook timeout."),
    ("floodgate_sim_status_calls_total", "counter", "status_calls", "Status calls the simulated provider answered."),
    ("floodgate_sim_status_rejected_429_total", "counter", "status_rejected_429",
     "Status calls refused with 429 (past the provider's status_rate_per_second)."),
)


class SimulatorCollector:
    """Prometheus families from a simulator's ``stats()`` (provider → counters), per scrape."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]]) -> None:
        self._stats = stats  # () -> {"providers": {name: {field: number}}}

    def collect(self) -> Iterator[Metric]:
        providers: Mapping[str, Mapping[str, Any]] = self._stats()["providers"]
        for name, kind, fieldname, doc in SIMULATOR_METRICS:
            family: GaugeMetricFamily | CounterMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(name.removesuffix("_total"), doc, labels=["provider"])
            else:
                family = GaugeMetricFamily(name, doc, labels=["provider"])
            for provider, numbers in sorted(providers.items()):
                family.add_metric([provider], float(numbers.get(fieldname, 0)))
            yield family


@functools.cache
def api_metrics() -> ApiMetrics:
    """This process's API metrics, on the default registry (built on first use)."""
    return ApiMetrics()


@functools.cache
def worker_metrics() -> WorkerMetrics:
    """This process's worker metrics, on the default registry (built on first use)."""
    return WorkerMetrics()


def render(registry: CollectorRegistry = REGISTRY, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition of ``registry`` in the format the ``Accept`` header asks for, and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def serve(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> str:
    """Serve ``registry`` over HTTP from a daemon thread (off any event loop); ``port`` 0 picks a
    free one. Returns the URL. Raises ``OSError`` if the address is taken."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr=host, registry=registry)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{server.server_port}/metrics"


def describe() -> list[tuple[str, str, str, str]]:
    """(name, type, labels, meaning) of every metric: the rows of docs/metrics.md's table."""
    registry = CollectorRegistry()
    rows = [(name, kind, ", ".join(labels) or "-", doc)
            for group in (ApiMetrics(registry), WorkerMetrics(registry))
            for name, kind, labels, doc in group.specs]
    rows += [(name, kind, "provider", doc) for name, kind, _, doc in SIMULATOR_METRICS]
    return rows


__all__ = ["ApiMetrics", "SimulatorCollector", "WorkerMetrics", "api_metrics", "describe", "render", "serve",
           "worker_metrics"]
