"""Publish job requests straight to Kafka from an application backend.

The SDK applies the same validation as the HTTP API (:func:`floodgate.validation.validate_job_request`)
and writes the same ``JobRequest`` record (``source="sdk"``) to ``<topic_prefix>requests``, keyed
by job id. A call returns only once the broker acknowledged the record (``acks=all``, idempotent
producer), so a returned job id is durable::

    from floodgate.sdk import FloodgateClient

    with FloodgateClient("localhost:9092", tenant="acme") as client:
        job_id = client.submit("kling-2.1", "a paper boat in the rain", user_id="u-1")

Idempotency: with ``idempotency_key`` the job id is derived with HMAC from ``(tenant, key)``
under the client's ``id_secret``, so resubmitting gives the same id and the pipeline drops the
duplicate. The default secret is random *per client instance*: it makes retries within one
client idempotent, but another process (or a restarted one) derives different ids. For
idempotency across processes, pass the same ``id_secret`` (at least 16 bytes) everywhere.

Timeouts: a :class:`DeliveryError` names its record's job id (``job_id``; a
:class:`BatchDeliveryError` lists them all in ``job_ids``). With ``retriable=True`` the record may
have been written or may still be, within the bound each client documents; resubmit with an
``idempotency_key`` to make that safe.
"""
from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from floodgate import codec
from floodgate.errors import BatchDeliveryError, ConfigError, DeliveryError, Problem, ValidationError
from floodgate.ids import job_id_for_key, new_job_id
from floodgate.push import PushTarget, notify_record
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from floodgate.validation import RequestLimits, keyed_headers, request_hash, validate_job_request

__all__ = [
    "AsyncFloodgateClient",
    "BatchDeliveryError",
    "DeliveryError",
    "FloodgateClient",
    "JobSpec",
    "Problem",
    "PushTarget",
    "ValidationError",
]

MAX_IDEMPOTENCY_KEY_CHARS = 255
DEFAULT_LIMITS = RequestLimits()  # the HTTP API's
SOURCE = "sdk"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job request for :meth:`FloodgateClient.submit_many`; fields as in ``submit``."""

    model: str
    prompt: str
    user_id: str
    image_url: str | None = None
    params: Mapping[str, str] | None = None
    webhook_url: str | None = None
    metadata: Mapping[str, str] | None = None
    idempotency_key: str | None = None
    push: PushTarget | None = None
    """A phone to tell when the job completes or fails (``notify.push`` of the HTTP API)."""


@dataclass(frozen=True, slots=True)
class _Prepared:
    job_id: str
    key: bytes
    value: bytes
    headers: list[tuple[str, str | bytes | None]]  # the type confluent-kafka declares


class _Preparer:
    """Validation and encoding shared by both clients: pure apart from the id secret and clock."""

    def __init__(self, tenant: str, topic_prefix: str, known_models: Collection[str] | None,
                 id_secret: bytes | None, limits: RequestLimits, allow_private_webhooks: bool) -> None:
        if not isinstance(tenant, str) or not tenant:
            raise ValidationError(Problem("tenant", "must be a non-empty string"))
        settings = Settings(topic_prefix=topic_prefix)
        settings.validate()  # ConfigError for a prefix Kafka would reject
        self.topic = TopicNames(settings).requests
        self.tenant = tenant
        self.known_models = frozenset(_dev_models() if known_models is None else known_models)
        self.id_secret = secrets.token_bytes(32) if id_secret is None else id_secret
        self.limits = limits
        self.allow_private_webhooks = allow_private_webhooks
        job_id_for_key(self.id_secret, tenant, "probe")  # ConfigError now, not at the first keyed submit

    def prepare(self, spec: JobSpec, now_ms: int) -> _Prepared:
        """Validate and encode; raises ``ValidationError`` naming every field at fault."""
        problems = _key_problems(spec.idempotency_key)
        payload = {
            "model": spec.model,
            "user_id": spec.user_id,
            "input": {"prompt": spec.prompt, "image_url": spec.image_url, "params": spec.params},
            "webhook_url": spec.webhook_url,
            "metadata": spec.metadata,
            "notify": notify_record(spec.push),
        }
        try:
            # As the HTTP ingress does: a URL naming a private address is refused at the door.
            normalized = validate_job_request(payload, known_models=self.known_models, limits=self.limits,
                                              allow_private=self.allow_private_webhooks)
        except ValidationError as exc:
            raise ValidationError(exc.problems + problems) from None
        if problems:
            raise ValidationError(problems)
        if spec.idempotency_key is None:
            job_id = new_job_id(now_ms)
        else:
            job_id = job_id_for_key(self.id_secret, self.tenant, spec.idempotency_key)
        digest = request_hash(normalized, self.tenant)
        value, headers = codec.encode("JobRequest", {
            "job_id": job_id,
            "tenant": self.tenant,
            "user_id": normalized.user_id,
            "model": normalized.model,
            "input": {"prompt": normalized.prompt, "image_url": normalized.image_url, "params": normalized.params},
            "webhook_url": normalized.webhook_url,
            "metadata": normalized.metadata,
            "idempotency_key": spec.idempotency_key,
            "request_hash": digest,
            "accepted_at": now_ms,
            "source": SOURCE,
            "notify": notify_record(normalized.push),
        })
        keyed_headers(headers, spec.idempotency_key, digest)  # for API processes without a job view
        return _Prepared(job_id, job_id.encode("ascii"), value, list(headers))

    def prepare_all(self, specs: Iterable[JobSpec]) -> list[_Prepared]:
        """Every spec, or ``ValidationError`` with problems prefixed ``[index].`` for all bad ones."""
        now_ms = _now_ms()
        out: list[_Prepared] = []
        problems: list[Problem] = []
        for index, spec in enumerate(specs):
            try:
                out.append(self.prepare(spec, now_ms))
            except ValidationError as exc:
                problems.extend(Problem(f"[{index}].{p.field}", p.message) for p in exc.problems)
        if problems:
            raise ValidationError(problems)
        return out


def _dev_models() -> tuple[str, ...]:
    """The models of the dev routing table (wan-2.6, kling-2.1, sora-2): the SDK's default."""
    from floodgate.provider_config import dev_setup
    from floodgate.routing import known_models

    # The URL is never contacted: the dev table needs one to build, the SDK only reads its routes.
    return known_models(dev_setup("http://simulator.invalid").routing, datetime.now(UTC))


def _key_problems(key: object) -> list[Problem]:
    if key is None:
        return []
    if not isinstance(key, str) or not key:
        return [Problem("idempotency_key", "must be a non-empty string")]
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        return [Problem("idempotency_key", f"must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters")]
    if not key.isascii() or not key.isprintable():  # the HTTP API's Idempotency-Key rule
        return [Problem("idempotency_key", "must be printable ASCII")]
    return []


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _spec(model: str, prompt: str, user_id: str, image_url: str | None, params: Mapping[str, str] | None,
          webhook_url: str | None, metadata: Mapping[str, str] | None, idempotency_key: str | None,
          push: PushTarget | None) -> JobSpec:
    return JobSpec(model, prompt, user_id, image_url, params, webhook_url, metadata, idempotency_key, push)


# librdkafka sets ``retriable()`` on few delivery reports; these codes mean "the same record may
# succeed later" (timeouts, leadership moves, a topic not created yet), so say so to the caller.
_TRANSIENT = frozenset(
    getattr(KafkaError, name) for name in (
        "_MSG_TIMED_OUT", "_TIMED_OUT", "_TRANSPORT", "_ALL_BROKERS_DOWN", "_UNKNOWN_TOPIC", "UNKNOWN_TOPIC_OR_PART",
        "LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION", "NOT_LEADER_OR_FOLLOWER", "REQUEST_TIMED_OUT",
        "NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "_QUEUE_FULL",
    ) if hasattr(KafkaError, name)
)


def _kafka_error(err: KafkaError) -> DeliveryError:
    return DeliveryError(f"broker did not accept the record: {err.str()}",
                         retriable=err.retriable() or err.code() in _TRANSIENT)


def _raise_failures(failures: dict[int, DeliveryError], job_ids: list[str]) -> None:
    """Raise what a call ends with if any record failed. Each failure carries its record's
    ``job_id``, so that a caller can look for that job or resubmit it with its idempotency key."""
    if not failures:
        return
    for index, error in failures.items():
        error.job_id = job_ids[index]
    if len(job_ids) == 1:
        raise failures[0]
    raise BatchDeliveryError(job_ids, failures)


# confluent-kafka's own (Python-level) options, spelled with underscores on purpose.
_PYTHON_OPTIONS = frozenset({"error_cb", "throttle_cb", "stats_cb", "oauth_cb", "on_delivery", "logger"})


def _librdkafka_config(options: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword options → librdkafka names: ``linger_ms`` → ``linger.ms`` (keywords cannot hold dots)."""
    return {k if k in _PYTHON_OPTIONS else k.replace("_", "."): v for k, v in options.items()}


VERDICT_SLACK = 2.0
"""Seconds librdkafka may take past ``message.timeout.ms`` to report a record it gave up: it looks
for expired records about once a second (measured: up to 1.0 s late)."""


def _message_timeout_ms(config: dict[str, Any], send_timeout: float) -> int:
    """librdkafka's ``message.timeout.ms`` for a client whose records must settle within
    ``send_timeout`` seconds: that bound, or a shorter one the caller configured (its alias
    ``delivery.timeout.ms`` too; both are taken out of ``config``). Without it librdkafka keeps
    an unacknowledged record queued for 300 s, long after its ``submit`` gave up."""
    if not isinstance(send_timeout, int | float) or not 0 < send_timeout < math.inf:
        raise ConfigError(f"send_timeout must be a positive number of seconds, not {send_timeout!r}")
    bound = math.ceil(send_timeout * 1000)
    given = [config.pop(name) for name in ("message.timeout.ms", "delivery.timeout.ms") if name in config]
    if not given:
        return bound
    try:
        chosen = int(given[-1])  # librdkafka applies the later of two aliases too
    except (TypeError, ValueError):
        raise ConfigError(f"message_timeout_ms must be milliseconds, not {given[-1]!r}") from None
    if not 0 < chosen <= bound:  # 0 is librdkafka's "never"
        raise ConfigError(f"message_timeout_ms={chosen} would let a record be written after its submit gave up: "
                          f"it must be 1..{bound} (send_timeout={send_timeout:g}s); raise send_timeout instead")
    return chosen


class FloodgateClient:
    """Synchronous producer of job requests (confluent-kafka).

    ``submit`` and ``submit_many`` may run in several threads at once; ``close`` must not race them.

    ``known_models``: the models to accept (default: the dev table's). ``id_secret``: see the
    module docs on idempotency. ``allow_private_webhooks``: accept ``webhook_url`` and
    ``input.image_url`` s naming loopback/private addresses (dev only; mirrors
    ``FLOODGATE_ALLOW_PRIVATE_WEBHOOKS``). ``limits``: size limits, the HTTP API's by default.
    ``producer_config`` goes to ``confluent_kafka.Producer`` with underscores read as dots
    (``linger_ms=20`` is librdkafka's ``linger.ms``, so the same keywords work for both clients);
    it cannot override ``acks`` or idempotence.

    ``send_timeout``: librdkafka acknowledges or gives up each record within this many seconds
    of its hand-over (its ``message.timeout.ms``; a shorter ``message_timeout_ms`` may be
    given, a longer one is refused). It reports giving up up to about a second later, so
    ``submit`` waits ``send_timeout + 2`` seconds unless told otherwise: a call that waits that
    long learns every record's fate, and none it reports unacknowledged is still queued when it
    returns (a retriable error may still mean the broker wrote it before librdkafka gave up). A
    call given a shorter ``timeout`` may give up first: its record may then still be written up
    to ``send_timeout`` seconds after it was handed over.

    Raises ``ConfigError`` for a bad ``topic_prefix``, ``id_secret`` or ``send_timeout`` and
    ``ValidationError`` for an empty tenant.
    """

    def __init__(self, bootstrap_servers: str, *, tenant: str = "default", topic_prefix: str = "floodgate.",
                 known_models: Collection[str] | None = None, idempotence: bool = True,
                 id_secret: bytes | None = None, limits: RequestLimits = DEFAULT_LIMITS,
                 allow_private_webhooks: bool = False, send_timeout: float = 8.0, **producer_config: Any) -> None:
        self._prep = _Preparer(tenant, topic_prefix, known_models, id_secret, limits, allow_private_webhooks)
        options = _librdkafka_config(producer_config)
        message_timeout_ms = _message_timeout_ms(options, send_timeout)
        self.send_timeout = send_timeout
        self._record_bound = message_timeout_ms / 1000  # when librdkafka gives a record up
        # murmur2_random is the Java client's (and aiokafka's) partitioner: a job id then lands on
        # the partition Floodgate's own producers would pick, and admission need not re-route it.
        config = {"partitioner": "murmur2_random", **options, "message.timeout.ms": message_timeout_ms,
                  "bootstrap.servers": bootstrap_servers, "acks": "all", "enable.idempotence": idempotence}
        try:
            self._producer: Producer | None = Producer(config)
        except KafkaException as exc:
            raise DeliveryError(f"cannot create producer: {exc}", retriable=False) from exc

    @property
    def topic(self) -> str:
        """The requests topic this client writes to."""
        return self._prep.topic

    def submit(self, model: str, prompt: str, *, user_id: str, image_url: str | None = None,
               params: Mapping[str, str] | None = None, webhook_url: str | None = None,
               metadata: Mapping[str, str] | None = None, idempotency_key: str | None = None,
               push: PushTarget | None = None, timeout: float | None = None) -> str:
        """Publish one job request and return its job id once the broker acknowledged it.

        Raises ``ValidationError`` (nothing is produced) or :class:`DeliveryError` (with the
        ``job_id``) on refusal or after ``timeout`` seconds, by default ``send_timeout + 2``
        (see the class on what a shorter one leaves open).
        """
        spec = _spec(model, prompt, user_id, image_url, params, webhook_url, metadata, idempotency_key, push)
        return self._send([self._prep.prepare(spec, _now_ms())], timeout)[0]

    def submit_many(self, requests: Iterable[JobSpec], *, timeout: float = 60.0) -> list[str]:
        """Publish many job requests with one flush; returns their job ids in input order.

        Every request is validated before anything is produced (``ValidationError`` with fields
        like ``[3].input.prompt``). Raises :class:`BatchDeliveryError` if any record was not
        acknowledged within ``timeout`` seconds; it lists which. Each record settles within
        ``send_timeout`` (+2) seconds of its hand-over, so a ``timeout`` that long past the last
        hand-over learns every record's fate.
        """
        return self._send(self._prep.prepare_all(requests), timeout)

    def _send(self, prepared: Sequence[_Prepared], timeout: float | None) -> list[str]:
        producer = self._open()
        wait = self.send_timeout + VERDICT_SLACK if timeout is None else timeout
        deadline = time.monotonic() + wait
        failures: dict[int, DeliveryError] = {}
        acked = [False] * len(prepared)
        handed = [False] * len(prepared)

        def on_delivery(index: int) -> Any:
            def callback(err: KafkaError | None, _msg: Any) -> None:
                if err is None:
                    acked[index] = True
                else:
                    failures[index] = _kafka_error(err)
            return callback

        queue_full = False
        for index, item in enumerate(prepared):
            while not queue_full:
                try:
                    producer.produce(self._prep.topic, item.value, item.key, headers=item.headers,
                                     on_delivery=on_delivery(index))
                    handed[index] = True
                    break
                except BufferError:
                    # Local queue full: serve delivery reports to make room, within the deadline.
                    queue_full = time.monotonic() >= deadline
                    if not queue_full:
                        producer.poll(0.05)
                except KafkaException as exc:
                    failures[index] = DeliveryError(f"cannot produce: {exc}", retriable=False)
                    break
        producer.flush(max(0.0, deadline - time.monotonic()))
        for index, ok in enumerate(acked):
            if ok or index in failures:
                continue
            if handed[index]:
                failures[index] = DeliveryError(
                    f"no acknowledgement within {wait:g}s; it may still be written up to {self._record_bound:g}s "
                    "after it was handed over", retriable=True)
            else:
                failures[index] = DeliveryError(f"not sent: the producer's queue stayed full for {wait:g}s",
                                                retriable=True)
        job_ids = [p.job_id for p in prepared]
        _raise_failures(failures, job_ids)
        return job_ids

    def close(self, timeout: float = 10.0) -> None:
        """Flush outstanding records (up to ``timeout`` seconds) and shut the producer down.

        Records still unacknowledged then are dropped; their ``submit`` calls already raised.
        """
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.flush(timeout)
            producer.purge()  # so that close() below cannot wait on an unreachable broker
            producer.poll(0)
            producer.close()

    def _open(self) -> Producer:
        if self._producer is None:
            raise RuntimeError("FloodgateClient is closed")
        return self._producer

    def __enter__(self) -> FloodgateClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncFloodgateClient:
    """Asynchronous producer of job requests (aiokafka); same API as :class:`FloodgateClient`.

    Use ``async with`` or call :meth:`start` / :meth:`close`; ``submit`` starts it if needed.
    Options as for :class:`FloodgateClient`, except that ``producer_config`` is passed to
    ``aiokafka.AIOKafkaProducer`` as given (e.g. ``linger_ms=20``).
    """

    def __init__(self, bootstrap_servers: str, *, tenant: str = "default", topic_prefix: str = "floodgate.",
                 known_models: Collection[str] | None = None, idempotence: bool = True,
                 id_secret: bytes | None = None, limits: RequestLimits = DEFAULT_LIMITS,
                 allow_private_webhooks: bool = False, **producer_config: Any) -> None:
        self._prep = _Preparer(tenant, topic_prefix, known_models, id_secret, limits, allow_private_webhooks)
        self._config = {**producer_config, "bootstrap_servers": bootstrap_servers, "acks": "all",
                        "enable_idempotence": idempotence}
        self._producer: Any = None
        self._closed = False

    @property
    def topic(self) -> str:
        """The requests topic this client writes to."""
        return self._prep.topic

    async def start(self) -> None:
        """Connect to the cluster; raises :class:`DeliveryError` if it cannot."""
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError as AIOKafkaError

        if self._closed:
            raise RuntimeError("AsyncFloodgateClient is closed")
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(**self._config)
        try:
            await producer.start()
        except AIOKafkaError as exc:
            await producer.stop()
            raise DeliveryError(f"cannot connect: {exc}", retriable=True) from exc
        self._producer = producer

    async def submit(self, model: str, prompt: str, *, user_id: str, image_url: str | None = None,
                     params: Mapping[str, str] | None = None, webhook_url: str | None = None,
                     metadata: Mapping[str, str] | None = None, idempotency_key: str | None = None,
                     push: PushTarget | None = None, timeout: float = 10.0) -> str:
        """See :meth:`FloodgateClient.submit`."""
        spec = _spec(model, prompt, user_id, image_url, params, webhook_url, metadata, idempotency_key, push)
        return (await self._send([self._prep.prepare(spec, _now_ms())], timeout))[0]

    async def submit_many(self, requests: Iterable[JobSpec], *, timeout: float = 60.0) -> list[str]:
        """See :meth:`FloodgateClient.submit_many`."""
        return await self._send(self._prep.prepare_all(requests), timeout)

    async def _send(self, prepared: Sequence[_Prepared], timeout: float) -> list[str]:
        await self.start()
        results = await self._send_all(prepared, timeout)
        failures = {i: r for i, r in enumerate(results) if isinstance(r, DeliveryError)}
        job_ids = [p.job_id for p in prepared]
        _raise_failures(failures, job_ids)
        return job_ids

    async def _send_all(self, prepared: Sequence[_Prepared], timeout: float) -> list[DeliveryError | None]:
        from aiokafka.errors import KafkaError as AIOKafkaError

        results: list[DeliveryError | None] = [None] * len(prepared)
        futures: list[tuple[int, asyncio.Future[Any]]] = []
        try:
            async with asyncio.timeout(timeout):
                for index, item in enumerate(prepared):
                    try:
                        # send() waits only while the accumulator is full; the future resolves on the ack.
                        futures.append((index, await self._producer.send(
                            self._prep.topic, item.value, item.key, headers=item.headers)))
                    except AIOKafkaError as exc:
                        # send() itself gives up: the buffer stayed full for request_timeout_ms, the
                        # topic's metadata never came, or the producer holds a fatal error. This
                        # record and the rest were not handed over; the ones before it were and
                        # are awaited below, so the caller learns which went out.
                        retriable = _aiokafka_retriable(exc)
                        results[index] = DeliveryError(f"not sent: {type(exc).__name__}: {exc}", retriable=retriable)
                        for later in range(index + 1, len(prepared)):
                            results[later] = DeliveryError(f"not sent: record [{index}] before it could not be",
                                                           retriable=retriable)
                        break
                for index, future in futures:
                    try:
                        await asyncio.shield(future)
                    except AIOKafkaError as exc:
                        results[index] = DeliveryError(f"broker did not accept the record: {exc}",
                                                       retriable=_aiokafka_retriable(exc))
        except TimeoutError:
            pass
        for index in range(len(prepared)):
            if results[index] is None and index >= len(futures):
                # Cancelled inside send(), before the accumulator took it: never handed over.
                results[index] = DeliveryError(f"not sent: the producer's buffer stayed full for {timeout:g}s",
                                               retriable=True)
            elif results[index] is None and not _acked(futures, index):
                results[index] = DeliveryError(f"no acknowledgement within {timeout:g}s", retriable=True)
        return results

    async def close(self) -> None:
        """Flush outstanding records and stop the producer."""
        self._closed = True
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def __aenter__(self) -> AsyncFloodgateClient:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


def _aiokafka_retriable(exc: Exception) -> bool:
    """aiokafka marks its KafkaTimeoutError not retriable, but a record that timed out (a full
    buffer or an expired batch during a broker outage) may go through later, as librdkafka's
    timeouts may (``_TRANSIENT``)."""
    from aiokafka.errors import KafkaTimeoutError

    return isinstance(exc, KafkaTimeoutError) or bool(getattr(exc, "retriable", False))


def _acked(futures: Sequence[tuple[int, asyncio.Future[Any]]], index: int) -> bool:
    future = futures[index][1]
    return future.done() and not future.cancelled() and future.exception() is None
