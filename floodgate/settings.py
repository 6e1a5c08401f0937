"""Floodgate's settings: the one place that reads the environment.

Every field can be given as ``FLOODGATE_<FIELD NAME IN CAPITALS>``. Values are parsed by the
field's type; a malformed value raises ``ConfigError`` naming the variable, and so does a float
setting that is not a finite number (``float()`` takes ``nan`` and ``inf``). Secrets are wrapped
in ``Secret`` so they never appear in logs, reprs or tracebacks.

Faust lets environment variables override ``App()`` arguments; we never rely on that: every
Faust option we care about is passed explicitly from here (see ``streams.app``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import secrets as _secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from floodgate.errors import ConfigError
from floodgate.origins import OriginPolicy
from floodgate.quotas import Quota, QuotaTable
from floodgate.signing import SecretRing, rotation

PREFIX = "FLOODGATE_"


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "floodgate"


@dataclass(frozen=True)
class Settings:
    """All of Floodgate's configuration. Documented field by field in docs/settings.md's table."""

    # --- Kafka -----------------------------------------------------------------
    kafka_bootstrap: str = ""
    """Explicit bootstrap address (host:port[,host:port]). Wins over Docker and the local broker."""
    topic_prefix: str = "floodgate."
    """Prefix of every topic name (requests, dispatch.<provider>, events, ...)."""
    partitions: int = 4
    """Partitions of requests/events/notifications/results (and the app's internal topics)."""
    dispatch_partitions: int = 1
    """Partitions of each dispatch.<provider> topic. One keeps a provider's slots and queue in one
    place (no share idles while another partition's orders wait); more split its limit into
    fixed shares, for a provider whose submission rate one worker cannot carry."""
    replication_factor: int = 1
    """For every topic Floodgate creates, table changelogs included (3 on a real cluster)."""
    min_insync_replicas: int = 1
    """min.insync.replicas of the topics Floodgate creates (2 on a 3-broker cluster)."""
    session_timeout: float = 10.0
    """Seconds before a dead worker's partitions move to another worker (Faust's default is 60)."""
    app_id: str = "floodgate"
    """Faust application id: the consumer group and the prefix of table changelog topics."""
    table_store: str = "rocksdict"
    """Where a worker keeps its per-job tables: rocksdict (on disk; memory stays flat) or memory."""
    worker_id: str = ""
    """Names a worker's local table directory; give each worker on one host its own. Empty: the host name."""
    static_membership: bool = True
    """A worker joins its consumer group as a static member named by its worker id (Kafka's
    group.instance.id): back within FLOODGATE_SESSION_TIMEOUT after a crash, it gets its partitions
    back without a rebalance, and the other workers go on meanwhile. A worker stopped in order
    (SIGTERM) leaves the group as it exits, so its partitions move at once (unless
    FLOODGATE_LEAVE_ON_STOP is off). Every worker of the group needs a name of its own: its worker
    id, else its host name."""
    leave_on_stop: bool = True
    """A static member stopped in order (SIGTERM) leaves its group as it exits, so its partitions
    move at once: right for a scale-down. Off where a stopped worker comes back under its name
    within FLOODGATE_SESSION_TIMEOUT (a StatefulSet's rolling update, a systemctl restart): its
    partitions wait for it, and a deploy rebalances no worker. A worker stopped for good then holds
    its partitions until the session timeout, or until `floodgate leave <worker id>`."""
    fetch_max_wait_ms: int = 20
    """How long the worker's consumer and the API's job view long-poll an idle broker. Records of
    other partitions consumed meanwhile wait for the poll to return: it bounds a hop's added latency."""
    producer_linger_ms: int = 5
    """How long the worker's producer holds a record for others to share its request to the broker
    (librdkafka's default). At 0 (Faust's) it sends what waits as soon as its last request returns:
    more, smaller requests, and the pipeline bench's jobs cost all processes 6.8 ms of CPU each
    against 6.0 ms at 5 (259 against 291 jobs/s). The price is up to this long on every hop's write
    (notification p50 6.5 → 11.1 ms at 50 jobs/s)."""
    poll_records: int = 10
    """Most records a worker takes from its consumer at a time (Kafka's ``max.poll.records``). It
    hands them to its agents one per turn of its event loop, and a record fetched meanwhile,
    however urgent, waits until they are handed out (``floodgate/readorder.py``). 10 rather than
    20: the slot handover's p99 during a burst's admission 29.0-29.9 ms against 27.8-34.1 in four
    runs each, the pipeline's jobs/s 0.98x on the means of three runs each (README)."""
    slot_producer_limit: int = 50
    """Providers whose concurrency limit is at most this write their slot tables through a producer
    of their own, one request per write, without the linger (``streams/slotwriter.py``): a slot
    refilled sooner, for a produce request per slot write. 0: every provider through the worker's
    producer."""
    stream_buffer: int = 4096
    """Records a worker buffers per agent before it pauses fetching the agent's partitions."""
    fetch_partition_bytes: int = 256 * 1024
    """Most bytes one fetch brings per partition (Kafka's ``max.partition.fetch.bytes``; Kafka's
    default is 1 MiB). What was fetched for a paused partition stays in the worker's memory until
    it resumes, and under a backlog every dispatch partition waits paused: this bounds what a
    backlog costs there. A fetch still brings hundreds of records (an order is about 500 bytes)."""
    worker_nice: int = 0
    """The least niceness a worker runs at (0-19; 0 leaves it as started). On a host the worker
    shares with an API and a broker, 10 gives them the CPU first: 202s stop waiting behind the
    worker, while the work it has not done yet waits on Kafka. The price is the worker's own pace
    whenever the host is busy (README: "The worker's priority")."""

    # --- Local broker (the embedded default) ---------------------------------------
    kafka_version: str = "3.9.1"
    """Apache Kafka release the local broker runs (fetched from Maven Central once)."""
    broker_port: int = 0
    """Port of the local broker; 0 picks a free one."""
    cache_dir: Path = field(default_factory=_default_cache)
    """Where the Kafka jars, the local broker's data and Faust's data live."""
    broker_heap: str = "1g"
    """JVM heap (-Xmx) of the local broker."""

    # --- HTTP services -------------------------------------------------------------
    api_host: str = "127.0.0.1"
    """Interface the API binds."""
    api_port: int = 8000
    """Port the API binds."""
    max_body_bytes: int = 65536
    """Largest accepted request body; larger gets 413."""
    api_keys: Secret = field(default_factory=lambda: Secret(""))
    """Comma-separated key=tenant pairs. Empty: the API runs open, one tenant named 'default'."""
    secret: Secret = field(default_factory=lambda: Secret(""))
    """Server secret for job tokens and idempotency-derived job ids. Empty: a random one per process."""
    webhook_secrets: Secret = field(default_factory=lambda: Secret(""))
    """Comma-separated tenant=whsec_... secrets for signing outgoing webhooks."""
    previous_webhook_secrets: Secret = field(default_factory=lambda: Secret(""))
    """While tenants' outgoing webhook secrets rotate: comma-separated tenant=whsec_... secrets used
    before the current ones. Deliveries carry a signature by each until the instant below."""
    previous_webhook_secrets_until: str = ""
    """ISO 8601 instant (e.g. 2026-12-08T00:00:00Z) after which the previous webhook secrets no
    longer sign; required with them."""
    allow_private_webhooks: bool = False
    """Allow user-given URLs (webhook_url, input.image_url) and provider video URLs to point at
    loopback/private addresses (dev and tests only)."""
    public_url: str = ""
    """Base URL clients use to reach the API (for status_url/events_url). Empty: from the request."""
    ws_allowed_origins: str = ""
    """Comma-separated origins (scheme://host[:port]) whose pages may open the WebSocket, or *
    for any. Empty: only the API's own origin; clients that send no Origin (not browsers) always may."""
    ws_ping_interval: float = 15.0
    """Seconds between the WebSocket's pings; a client that has not answered one within half that
    is dropped. Keeps load balancers from seeing an idle connection and finds dead peers."""
    ws_idle_timeout: float = 300.0
    """Seconds a WebSocket may stay open with no subscription and no message from its client
    before it is closed (a subscription waiting for news is not idle)."""
    operator_key: Secret = field(default_factory=lambda: Secret(""))
    """Key of the operations dashboard's data (/dashboard), sent as X-Operator-Key. Needed whenever
    FLOODGATE_API_KEYS is set (empty then: the dashboard's data is refused); without API keys the dashboard is open."""
    tenant_rate_limit: int = 0
    """Job requests (POST /v1/jobs) per minute each tenant may send, in bursts of up to that many;
    past it, 429 with Retry-After. Shared by the API processes taking requests (see
    FLOODGATE_QUOTA_SCOPE). 0: no limit."""
    quota_scope: str = "cluster"
    """cluster: each API process with the ingress role enforces its share of a tenant's rate quota
    (and, without the job view, of its queued-jobs quota), the limit divided by the processes
    alive (heartbeats on the instances topic), so the limits hold across processes behind a
    balancer that spreads requests; process: each process enforces the whole limit on its own
    (for a balancer that sends each tenant to one process)."""
    instance_heartbeat: float = 2.0
    """Seconds between an API process's heartbeats on the instances topic (cluster quota scope); a
    process not heard of for three of them no longer counts."""
    tenant_rate_limits: str = ""
    """Per-tenant overrides of FLOODGATE_TENANT_RATE_LIMIT: comma-separated tenant=N pairs (0: no limit)."""
    tenant_queued_limit: int = 0
    """Jobs each tenant may have accepted and not yet completed, failed or cancelled; past it, 429
    with Retry-After. Counted by the job view (read role) over every API process; an API without
    the view counts the jobs it accepted, against its share (see FLOODGATE_QUOTA_SCOPE). 0: no limit."""
    tenant_queued_limits: str = ""
    """Per-tenant overrides of FLOODGATE_TENANT_QUEUED_LIMIT: comma-separated tenant=N pairs (0: no limit)."""
    backlog_max_depth: int = 0
    """Jobs queued across providers (accepted, not yet taken by a provider) past which POST /v1/jobs
    answers 503 with Retry-After. 0: no bound."""
    backlog_max_wait: float = 0.0
    """Estimated wait in seconds past which POST /v1/jobs answers 503 with Retry-After, for the
    models whose line is that long: a job's wait is the jobs queued for the provider it would go to
    / the pace of that provider's full lines (its equivalent's, where the model spills over). While
    no line's pace is known: all queued jobs / jobs finished per second over the last minute, for
    every model. 0: no bound."""
    backlog_refresh: float = 1.0
    """Seconds between two readings of the backlog's figures (Kafka offsets, in the background)."""
    dev_mode: bool = False
    """Dev-only conveniences: the dashboard's fire-a-spike button. floodgate dev and the demo turn it on."""
    dashboard_targets: str = ""
    """Other processes' Prometheus endpoints the dashboard sums with the API's own: comma-separated
    URLs, or paths of Prometheus file_sd JSON files (re-read when they change; floodgate dev writes one)."""
    upload_max_bytes: int = 5_242_880
    """Largest image (a selfie) accepted by POST /v1/uploads; JPEG, PNG and WebP only."""
    upload_ttl: float = 86400.0
    """Seconds an uploaded image is kept for providers to fetch, then deleted."""
    upload_max_total_bytes: int = 1_073_741_824
    """Bytes the upload store may hold in all; past it, uploads get 503 until expired images are deleted."""
    metrics_host: str = "127.0.0.1"
    """Interface a worker's Prometheus endpoint binds (the API serves GET /metrics on its own port)."""
    metrics_port: int = 0
    """Port of a worker's Prometheus endpoint (/metrics); 0 picks a free one, printed as metrics=URL."""

    # --- Providers -----------------------------------------------------------------
    routing_file: str = ""
    """JSON routing table (providers, models). Empty: the dev table (simulated providers)."""
    simulator_url: str = ""
    """Base URL of the provider simulator for the dev routing table."""
    webhook_base_url: str = ""
    """Base URL providers call back (the HTTP bridge). Empty: no webhooks; jobs are followed by polling."""
    poll_after: float = 30.0
    """Seconds without news of an in-flight job before its status is polled (lost webhooks); where webhooks are on,
    polled less and less often after that, up to every this many seconds."""
    provider_status_poll: float = 5.0
    """Seconds between two status calls for a job at a provider that calls back only at the end
    (fal, RunPod, WaveSpeed: until it starts; fal's queue place: provider_queue_position) or never
    (Runway: until it ends). 0: none (the FLOODGATE_POLL_AFTER poll still finds them)."""
    job_timeout: float = 900.0
    """Seconds after submission before an in-flight job its provider does not say has ended is
    cancelled at its provider, failed and its slot freed."""
    breaker_reset_after: float = 30.0
    """Seconds a provider's circuit breaker stays open (its jobs go to their fallback) before one
    probe submission may try the provider again."""

    # --- The waiting line: fairness, priority, deadlines ---------------------------------------
    tenant_weights: str = ""
    """Comma-separated tenant=weight pairs: each tenant's share of a provider's capacity while
    several wait (weights are relative; a tenant not listed weighs 1)."""
    priority_grants: str = ""
    """Comma-separated tenants whose API keys may ask for priority high (standard and low are
    open to all)."""
    default_deadline_s: int = 0
    """Deadline of a request that names none (deadline_s): seconds after acceptance past which a
    job still waiting ends expired, unsubmitted. 0: no deadline."""
    fair_window: int = 10_000
    """Waiting orders a worker reads ahead into its providers' fair lines, in all, while their
    slots are full: fair share reaches over these, so a tenant's burst larger than this is served
    in arrival order beyond it. The rest of the backlog waits in Kafka. Memory: about 1 KB each."""
    line_report_interval: float = 1.0
    """Seconds between a dispatcher's looks at its lines: waiting orders moved after a restart,
    deadlines, and (with spillover) the line reports and the moves to equivalents."""

    # --- Push to phones (requests with notify.push) ------------------------------------------
    fcm_service_account: Secret = field(default_factory=lambda: Secret(""))
    """Firebase service-account key (JSON) for push via FCM: a file path, env:NAME, or the JSON. Empty: FCM off."""
    fcm_project_id: str = ""
    """Firebase project to send through. Empty: the service account's project_id."""
    fcm_url: str = "https://fcm.googleapis.com"
    """Base URL of the FCM HTTP v1 API."""
    apns_key: Secret = field(default_factory=lambda: Secret(""))
    """APNs token-auth signing key (the .p8 file's PEM): a file path, env:NAME, or the PEM itself. Empty: APNs off."""
    apns_key_id: str = ""
    """The 10-character id of that key (the JWT's kid)."""
    apns_team_id: str = ""
    """The Apple developer team id (the JWT's iss)."""
    apns_topic: str = ""
    """The app's bundle id (apns-topic)."""
    apns_url: str = "https://api.push.apple.com"
    """Base URL of APNs; development builds' tokens need https://api.sandbox.push.apple.com."""
    push_ca_file: str = ""
    """PEM file of extra CA certificates trusted for the FCM and APNs endpoints (a TLS-inspecting gateway; tests)."""
    # --- Videos kept in our own store --------------------------------------------------
    video_store: str = "local"
    """Where completed jobs' videos are copied and served from: local (a directory served by the
    API), s3 (any S3-compatible bucket), or off (result.video_url stays the provider's URL)."""
    video_dir: str = ""
    """Directory of the local video store. Empty: <cache_dir>/videos/<topic prefix>."""
    video_link_secret: Secret = field(default_factory=lambda: Secret(""))
    """HMAC key of signed video links. Empty: derived from FLOODGATE_SECRET."""
    video_link_ttl: float = 3600.0
    """Seconds a signed video link stays valid after the job was read."""
    video_max_bytes: int = 536870912
    """Largest video copied from a provider (bytes); larger is refused and not stored."""
    video_breaker_failures: int = 5
    """Copies from one source host (host:port of the provider's video_url: its CDN, a bucket) that
    fail in a row before the copier's breaker for that host opens: its copies then wait without an
    attempt, one probe every FLOODGATE_VIDEO_BREAKER_OPEN_FOR seconds, and are given up on with
    their retry budget, while the other hosts' copies go on."""
    video_breaker_open_for: float = 30.0
    """Seconds between two probes of a source host whose copier breaker is open
    (FLOODGATE_VIDEO_BREAKER_FAILURES); the first probe that copies closes it."""
    video_s3_bucket: str = ""
    """Bucket of the s3 video store."""
    video_s3_endpoint: str = ""
    """Endpoint URL of an S3-compatible store (MinIO, Ceph, R2...). Empty: AWS S3."""
    video_s3_region: str = "us-east-1"
    """Region of the s3 video store."""
    video_s3_prefix: str = ""
    """Key prefix inside the bucket (several deployments may share one)."""
    video_s3_access_key_id: str = ""
    """Access key id of the s3 video store. Empty: from the usual AWS sources."""
    video_s3_secret_access_key: Secret = field(default_factory=lambda: Secret(""))
    """Secret access key of the s3 video store."""

    log_level: str = "info"
    """Log level of every process."""
    event_loop: str = "uvloop"
    """Event loop of every process: uvloop, or asyncio (the standard loop, to compare or debug)."""

    # ------------------------------------------------------------------------------
    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def api_key_map(self) -> dict[str, str]:
        return _pairs(self.api_keys.reveal(), "FLOODGATE_API_KEYS")

    @property
    def quota_table(self) -> QuotaTable:
        """The default per-tenant quota and the tenants' own (``floodgate.quotas``)."""
        return QuotaTable.build(
            Quota(per_minute=self.tenant_rate_limit, queued=self.tenant_queued_limit),
            _pairs(self.tenant_rate_limits, f"{PREFIX}TENANT_RATE_LIMITS"),
            _pairs(self.tenant_queued_limits, f"{PREFIX}TENANT_QUEUED_LIMITS"),
            where=(f"{PREFIX}TENANT_RATE_LIMITS", f"{PREFIX}TENANT_QUEUED_LIMITS"))

    @property
    def webhook_secret_map(self) -> dict[str, str]:
        return _pairs(self.webhook_secrets.reveal(), "FLOODGATE_WEBHOOK_SECRETS")

    @property
    def tenant_weight_map(self) -> dict[str, float]:
        weights = {}
        for tenant, raw in _pairs(self.tenant_weights, "FLOODGATE_TENANT_WEIGHTS").items():
            try:
                weight = float(raw)
            except ValueError:
                weight = 0.0
            if not weight > 0 or weight == float("inf"):
                raise ConfigError(f"FLOODGATE_TENANT_WEIGHTS: the weight of {tenant!r} must be a positive number")
            weights[tenant] = weight
        return weights

    @property
    def priority_grant_set(self) -> frozenset[str]:
        return frozenset(filter(None, (t.strip() for t in self.priority_grants.split(","))))

    @property
    def push_platforms(self) -> frozenset[str]:
        """The push platforms this deployment has credentials for (``fcm``, ``apns``)."""
        return frozenset(name for name, on in (("fcm", self.fcm_service_account), ("apns", self.apns_key)) if on)

    @property
    def previous_webhook_secret_map(self) -> dict[str, str]:
        return _pairs(self.previous_webhook_secrets.reveal(), "FLOODGATE_PREVIOUS_WEBHOOK_SECRETS")

    def webhook_secret_ring(self, tenant: str, current: str) -> SecretRing:
        """The secrets outgoing webhooks of ``tenant`` are signed with: ``current`` and, during a
        rotation, the tenant's previous secret until ``previous_webhook_secrets_until``."""
        previous = self.previous_webhook_secret_map.get(tenant)
        if previous is None:
            return SecretRing(current)
        return rotation(current, previous, self.previous_webhook_secrets_until or None,
                        where=f"{PREFIX}PREVIOUS_WEBHOOK_SECRETS")

    @property
    def origin_policy(self) -> OriginPolicy:
        return OriginPolicy.parse(self.ws_allowed_origins, f"{PREFIX}WS_ALLOWED_ORIGINS")

    @property
    def video_dir_path(self) -> Path:
        if self.video_dir:
            return Path(self.video_dir).expanduser()
        return self.cache_dir / "videos" / (self.topic_prefix.strip(".") or "default")

    @property
    def video_link_key(self) -> bytes:
        from floodgate.videolinks import link_key

        return link_key(self.video_link_secret.reveal(), self.secret.reveal())

    def to_env(self) -> dict[str, str]:
        """Every field as the ``FLOODGATE_*`` variable ``from_env`` reads back: how a parent
        process hands its whole configuration to its children."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                value = value.reveal()
            elif isinstance(value, bool):
                value = "1" if value else "0"
            out[PREFIX + f.name.upper()] = str(value)
        return out

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = PREFIX + f.name.upper()
            if var in env:
                values[f.name] = _parse(hints[f.name], env[var], var)
        for name in _REFERENCES:
            if name in values:
                values[name] = _dereference(values[name], PREFIX + name.upper(), env)
        settings = cls(**values)
        if not settings.secret:
            # Tokens must verify in every process of one deployment; a random per-process secret
            # is fine for a single process (tests), and `floodgate dev` passes one to its children.
            settings = dataclasses.replace(settings, secret=Secret(_secrets.token_urlsafe(32)))
        settings.validate()
        return settings

    def validate(self) -> None:
        # Before the checks below: nan passes each one written as a refusal ("nan <= 0" is false),
        # and inf makes a timeout, interval or bound never end, or overflows where it becomes
        # milliseconds or a link's expiry. No float setting says "none" with inf: those that have
        # a "none" say it with 0 (FLOODGATE_BACKLOG_MAX_WAIT, FLOODGATE_PROVIDER_STATUS_POLL).
        hints = get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if hints[f.name] is float and not math.isfinite(value):
                raise ConfigError(f"{PREFIX}{f.name.upper()} must be a finite number, not {value}")
        for name in ("partitions", "dispatch_partitions", "replication_factor", "min_insync_replicas", "max_body_bytes",
                     "stream_buffer", "poll_records", "fetch_max_wait_ms", "fetch_partition_bytes", "upload_max_bytes",
                     "upload_max_total_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{PREFIX}{name.upper()} must be at least 1")
        if self.upload_ttl <= 0:
            raise ConfigError(f"{PREFIX}UPLOAD_TTL must be positive")
        if self.slot_producer_limit < 0:
            raise ConfigError(f"{PREFIX}SLOT_PRODUCER_LIMIT must be 0 (none) or more")
        if not 0 <= self.producer_linger_ms <= 1000:
            raise ConfigError(f"{PREFIX}PRODUCER_LINGER_MS must be 0 to 1000")
        if not 0 <= self.worker_nice <= 19:
            raise ConfigError(f"{PREFIX}WORKER_NICE must be 0 to 19")
        if self.default_deadline_s < 0 or self.fair_window < 1:
            raise ConfigError(f"{PREFIX}DEFAULT_DEADLINE_S must be >= 0 and {PREFIX}FAIR_WINDOW >= 1")
        self.tenant_weight_map  # noqa: B018 - parse now, fail early
        for name in ("tenant_rate_limit", "tenant_queued_limit", "backlog_max_depth", "backlog_max_wait",
                     "provider_status_poll"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{PREFIX}{name.upper()} must be 0 (no limit) or more")
        # (poll_after or job_timeout at 0 would poll every job in flight without pause, or fail
        # every one at once.)
        for name in ("session_timeout", "ws_ping_interval", "ws_idle_timeout", "breaker_reset_after",
                     "backlog_refresh", "line_report_interval", "poll_after", "job_timeout", "video_breaker_open_for"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{PREFIX}{name.upper()} must be positive")
        if self.quota_scope not in ("cluster", "process"):
            raise ConfigError(f"{PREFIX}QUOTA_SCOPE must be cluster or process, got {self.quota_scope!r}")
        if not 0 < self.instance_heartbeat <= 60:
            raise ConfigError(f"{PREFIX}INSTANCE_HEARTBEAT must be more than 0 and at most 60 seconds")
        if self.event_loop not in ("uvloop", "asyncio"):
            raise ConfigError(f"{PREFIX}EVENT_LOOP must be uvloop or asyncio, got {self.event_loop!r}")
        if self.video_store not in ("local", "s3", "off"):
            raise ConfigError(f"{PREFIX}VIDEO_STORE must be local, s3 or off, got {self.video_store!r}")
        if self.video_store == "s3" and not self.video_s3_bucket:
            raise ConfigError(f"{PREFIX}VIDEO_S3_BUCKET is required when {PREFIX}VIDEO_STORE=s3")
        if self.video_link_ttl <= 0 or self.video_max_bytes < 1:
            raise ConfigError(f"{PREFIX}VIDEO_LINK_TTL and {PREFIX}VIDEO_MAX_BYTES must be positive")
        if self.video_breaker_failures < 1:
            raise ConfigError(f"{PREFIX}VIDEO_BREAKER_FAILURES must be at least 1")
        if self.table_store not in ("rocksdict", "memory"):
            raise ConfigError(f"{PREFIX}TABLE_STORE must be rocksdict or memory, got {self.table_store!r}")
        if any(c not in _TOPIC_CHARS for c in self.worker_id):
            raise ConfigError(f"{PREFIX}WORKER_ID may hold only letters, digits, '.', '_' and '-'")
        if not self.topic_prefix or any(c not in _TOPIC_CHARS for c in self.topic_prefix):
            raise ConfigError(f"{PREFIX}TOPIC_PREFIX may hold only letters, digits, '.', '_' and '-'")
        self.api_key_map, self.webhook_secret_map, self.origin_policy  # noqa: B018 - parse now, fail early
        # A quota for a tenant no API key maps to would never apply: most likely a typo.
        tenants = set(self.api_key_map.values()) or {"default"}
        strangers = sorted(set(self.quota_table.overrides) - tenants)
        if strangers:
            raise ConfigError(f"{PREFIX}TENANT_RATE_LIMITS / {PREFIX}TENANT_QUEUED_LIMITS name tenant(s) "
                              f"{', '.join(strangers)} that no key of {PREFIX}API_KEYS maps to")
        previous = self.previous_webhook_secret_map
        if bool(previous) != bool(self.previous_webhook_secrets_until):
            raise ConfigError(f"{PREFIX}PREVIOUS_WEBHOOK_SECRETS and {PREFIX}PREVIOUS_WEBHOOK_SECRETS_UNTIL "
                              "go together: an old secret must stop signing at a set instant")
        for tenant, secret in previous.items():
            self.webhook_secret_ring(tenant, secret)  # malformed secrets or instants fail here
        if self.apns_key:
            missing = [n for n in ("apns_key_id", "apns_team_id", "apns_topic") if not getattr(self, n)]
            if missing:
                raise ConfigError(f"{PREFIX}APNS_KEY is set: {', '.join(PREFIX + n.upper() for n in missing)} "
                                  "must be set too")


# Secrets that may name another variable ("env:NAME") instead of holding the value: the key files
# of the push services are often mounted into an environment variable under a name of their own.
_REFERENCES = ("fcm_service_account", "apns_key")


def _dereference(value: Secret, var: str, env: Mapping[str, str]) -> Secret:
    text = value.reveal()
    if not text.startswith("env:"):
        return value
    name = text[4:]
    if name not in env:
        raise ConfigError(f"{var}: environment variable {name} is not set")
    return Secret(env[name])


_TOPIC_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _pairs(text: str, var: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{var}: expected comma-separated name=value pairs")
        out[key.strip()] = value.strip()
    return out


def _parse(kind: Any, raw: str, var: str) -> Any:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw).expanduser()
        if kind is Secret:
            return Secret(raw)
        return raw
    except ValueError as exc:
        shown = "<secret>" if kind is Secret else repr(raw)
        raise ConfigError(f"{var}={shown} is not a valid {getattr(kind, '__name__', kind)}") from exc


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting: the rows of docs/settings.md's table, which
    ``tests/unit/test_readme.py`` holds to this."""
    rows = []
    docs = _field_docs()
    defaults = Settings()
    for f in fields(Settings):
        default = getattr(defaults, f.name)
        shown = "(empty)" if isinstance(default, Secret) or default == "" else str(default)
        if f.name == "cache_dir":
            shown = "~/.cache/floodgate"
        rows.append((PREFIX + f.name.upper(), shown, docs.get(f.name, "")))
    return rows


def _field_docs() -> dict[str, str]:
    """Field docstrings (the string literal right after a field) read from this module's source."""
    import ast
    import inspect
    import itertools

    cls = ast.parse(inspect.getsource(Settings)).body[0]
    assert isinstance(cls, ast.ClassDef)
    body = cls.body
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs
