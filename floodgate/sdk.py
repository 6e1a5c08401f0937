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

Failures: a :class:`DeliveryError` names its record's job id (``job_id``; a
:class:`BatchDeliveryError` lists them all in ``job_ids``). Each client bounds how long after its
hand-over a record can still be written (``send_timeout``, 8 s by default), and a call that
waits its default ``timeout`` reports a record unacknowledged only once that bound has passed:
"not sent" means it was not written, "outcome unknown" that it may have been written but will
not be later. Either way resubmit with the same ``idempotency_key``: the pipeline's jobs agent
drops a request whose job id it admitted already, so a retry cannot make a second job (an unkeyed
retry gets a new job id and can). After a fatal error of the idempotent producer, a client fails
what that producer held and uses a new one for the next call.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from floodgate import codec
from floodgate.errors import BatchDeliveryError, ConfigError, DeliveryError, Problem, ValidationError
from floodgate.fatal_errors import fatal_in, is_fatal
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

log = logging.getLogger(__name__)

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

_RETRY_ADVICE = "resubmit with the same idempotency_key: the pipeline drops a second record with the same job id"


def _kafka_error(err: KafkaError, fatal: KafkaError | None) -> DeliveryError:
    """A delivery report's error; ``fatal``: what broke the producer meanwhile, if anything."""
    code = err.code()
    if code == KafkaError._PURGE_QUEUE:  # still queued, never in a request
        cause = f"its producer failed for good ({fatal.str()})" if fatal is not None else "purged from the queue"
        return DeliveryError(f"not sent: {cause}", retriable=True)
    if code == KafkaError._PURGE_INFLIGHT:
        return DeliveryError(f"outcome unknown: purged while its request was in flight; {_RETRY_ADVICE}",
                             retriable=True)
    if is_fatal(err):
        return DeliveryError(f"its producer failed for good: {err.str()}; the next call uses a new producer",
                             retriable=True)
    return DeliveryError(f"broker did not accept the record: {err.str()}",
                         retriable=err.retriable() or code in _TRANSIENT)


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
"""Seconds past ``send_timeout`` that a call waits by default: librdkafka looks for expired
records about once a second (measured: up to 1.0 s late), and the async client needs a moment
to fail what a stopped producer held."""


def _check_send_timeout(send_timeout: float) -> None:
    if not isinstance(send_timeout, int | float) or not 0 < send_timeout < math.inf:
        raise ConfigError(f"send_timeout must be a positive number of seconds, not {send_timeout!r}")


def _message_timeout_ms(config: dict[str, Any], send_timeout: float) -> int:
    """librdkafka's ``message.timeout.ms`` for a client whose records must settle within
    ``send_timeout`` seconds: that bound, or a shorter one the caller configured (its alias
    ``delivery.timeout.ms`` too; both are taken out of ``config``). Without it librdkafka keeps
    an unacknowledged record queued for 300 s, long after its ``submit`` gave up."""
    _check_send_timeout(send_timeout)
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


class _Held:
    """One librdkafka producer and how many calls use it. ``fatal`` is set once it raised a fatal
    error: it then takes no more records, the next call gets a new producer, and this one is
    closed when its last call has ended (closing it under a call still flushing it is unsafe)."""

    __slots__ = ("producer", "users", "fatal")

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.users = 0
        self.fatal: KafkaError | None = None


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

    A fatal error of the idempotent producer (librdkafka's: e.g. an out-of-order sequence it
    cannot repair) fails the records of the calls using it (each with its job id; those still
    queued were not sent) and the next call uses a new producer (``renewals`` counts them).
    Nothing is sent again on the caller's behalf.

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
        self._config = {"partitioner": "murmur2_random", **options, "message.timeout.ms": message_timeout_ms,
                        "bootstrap.servers": bootstrap_servers, "acks": "all", "enable.idempotence": idempotence}
        self._lock = threading.Lock()
        self._current: _Held | None = _Held(self._new_producer())
        self._broken: list[_Held] = []  # failed for good, still used by a call
        self.renewals = 0
        """Producers replaced after a fatal error."""

    def _new_producer(self) -> Producer:
        try:
            return Producer(dict(self._config))
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
        job_ids = [p.job_id for p in prepared]
        try:
            held = self._acquire()
        except DeliveryError as exc:  # no producer could be made: nothing was sent
            _raise_failures({i: DeliveryError(str(exc), retriable=exc.retriable) for i in range(len(job_ids))},
                            job_ids)
            raise
        try:
            failures = self._deliver(held, prepared, timeout)
        finally:
            self._release(held)
        _raise_failures(failures, job_ids)
        return job_ids

    def _deliver(self, held: _Held, prepared: Sequence[_Prepared], timeout: float | None) -> dict[int, DeliveryError]:
        producer = held.producer
        wait = self.send_timeout + VERDICT_SLACK if timeout is None else timeout
        deadline = time.monotonic() + wait
        reports: dict[int, KafkaError | None] = {}
        refused: dict[int, DeliveryError] = {}
        handed = [False] * len(prepared)

        def on_delivery(index: int) -> Any:
            def callback(err: KafkaError | None, _msg: Any) -> None:
                reports[index] = err
                if err is not None and is_fatal(err):
                    self._broke(held, err)
            return callback

        queue_full = False
        for index, item in enumerate(prepared):
            while not queue_full and held.fatal is None:
                try:
                    producer.produce(self._prep.topic, item.value, item.key, headers=item.headers,
                                     on_delivery=on_delivery(index))
                    handed[index] = True
                    break
                except BufferError:
                    # Local queue full: serve delivery reports to make room, within the deadline.
                    queue_full = time.monotonic() >= deadline
                    if not queue_full:
                        self._serve(held, 0.05, poll=True)
                except KafkaException as exc:
                    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                    if err is not None and is_fatal(err):
                        self._broke(held, err)  # this record and the rest stay here
                    else:
                        refused[index] = DeliveryError(f"cannot produce: {exc}", retriable=False)
                    break
        self._serve(held, max(0.0, deadline - time.monotonic()))
        if held.fatal is not None:
            # A flush that raised the fatal error stopped serving reports there: serve the rest
            # (records still queued come back purged, those in flight with their real outcome).
            self._serve(held, max(0.0, deadline - time.monotonic()))
        return self._verdicts(held, refused, handed, reports, wait)

    def _verdicts(self, held: _Held, refused: dict[int, DeliveryError], handed: list[bool],
                  reports: dict[int, KafkaError | None], wait: float) -> dict[int, DeliveryError]:
        fatal = held.fatal
        failures: dict[int, DeliveryError] = {}
        for index, was_handed in enumerate(handed):
            if index in refused:
                failures[index] = refused[index]
            elif not was_handed and fatal is not None:
                failures[index] = DeliveryError(f"not sent: its producer failed for good ({fatal.str()}); "
                                                "the next call uses a new producer", retriable=True)
            elif not was_handed:
                failures[index] = DeliveryError(f"not sent: the producer's queue stayed full for {wait:g}s",
                                                retriable=True)
            elif index in reports:
                err = reports[index]
                if err is not None:
                    failures[index] = _kafka_error(err, fatal)
            elif fatal is not None:
                failures[index] = DeliveryError(
                    f"outcome unknown: its producer failed for good ({fatal.str()}) before reporting on it; "
                    f"{_RETRY_ADVICE}", retriable=True)
            else:
                failures[index] = DeliveryError(
                    f"no acknowledgement within {wait:g}s; it may still be written up to {self._record_bound:g}s "
                    "after it was handed over", retriable=True)
        return failures

    def _serve(self, held: _Held, timeout: float, *, poll: bool = False) -> None:
        """``flush`` (or ``poll``) the producer; a fatal error it raises marks it broken, and the
        reports still due are served by the next call to this."""
        try:
            if poll:
                held.producer.poll(timeout)
            else:
                held.producer.flush(timeout)
        except (KafkaException, SystemError) as exc:
            err = fatal_in(exc)
            if err is None:
                raise
            self._broke(held, err)

    def _broke(self, held: _Held, err: KafkaError) -> None:
        with self._lock:
            first = held.fatal is None
            # The error with its cause (from flush) beats the bare _FATAL that produce() answers.
            if held.fatal is None or (err.fatal() and not held.fatal.fatal()):
                held.fatal = err
        if first:
            log.warning("the Kafka producer failed for good (%s): the next call uses a new one", err.str())

    def _acquire(self) -> _Held:
        retire: _Held | None = None
        with self._lock:
            held = self._current
            if held is None:
                raise RuntimeError("FloodgateClient is closed")
            if held.fatal is not None:
                # Once, however many calls saw the error: they all marked the same instance.
                fresh = _Held(self._new_producer())
                self._current, self.renewals = fresh, self.renewals + 1
                if held.users:
                    self._broken.append(held)
                else:
                    retire = held
                held = fresh
            held.users += 1
        if retire is not None:
            _retire(retire.producer)
        return held

    def _release(self, held: _Held) -> None:
        with self._lock:
            held.users -= 1
            done = held.users == 0 and held in self._broken
            if done:
                self._broken.remove(held)
        if done:
            _retire(held.producer)

    def close(self, timeout: float = 10.0) -> None:
        """Flush outstanding records (up to ``timeout`` seconds) and shut the producer down.

        Records still unacknowledged then are dropped; their ``submit`` calls already raised.
        """
        with self._lock:
            held, self._current = self._current, None
            broken, self._broken = self._broken, []
        if held is not None:
            with contextlib.suppress(KafkaException, SystemError):  # a fatal error: nothing to deliver
                held.producer.flush(timeout)
            _retire(held.producer)
        for each in broken:
            _retire(each.producer)

    def __enter__(self) -> FloodgateClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _retire(producer: Producer) -> None:
    """Close a producer no call uses any more, dropping what it still holds."""
    producer.purge()  # so that close() below cannot wait on an unreachable broker
    with contextlib.suppress(KafkaException, SystemError):  # a fatal error not served yet
        producer.poll(0)
    producer.close()


# --- the async client ------------------------------------------------------------------------------

class _Abandoned(Exception):
    """What the records of a stopped aiokafka producer fail with (one argument: aiokafka copies it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _fatal_aiokafka_errors() -> tuple[type[Exception], ...]:
    """Errors after which aiokafka's idempotent producer cannot go on: aiokafka neither resets its
    producer id nor its sequence numbers, so every later batch to that partition fails too."""
    from aiokafka import errors

    return (errors.OutOfOrderSequenceNumber, errors.UnknownProducerId, errors.ProducerFenced,
            errors.InvalidProducerEpoch, errors.InvalidProducerIdMapping)


# aiokafka 0.14 has no public way to stop a producer without flushing it, and an idempotent one
# retries a batch the broker refuses or never answers with no deadline at all (its batches expire
# only while their partition has no leader). The two functions below are the only code that
# reaches into it (``_sender``, ``_message_accumulator`` and that one's ``_batches`` and
# ``_pending_batches``); tests/unit/test_sdk_async.py and test_sdk_aiokafka.py pin them against
# the installed aiokafka.

def _sender_died(producer: Any) -> bool:
    """aiokafka's sender task ended (it raised): the producer fails every record from now on."""
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    return task is not None and task.done()


async def _stop_sending(producer: Any, error: _Abandoned, wind_down: float) -> None:
    """Stop ``producer`` for good without waiting for the broker.

    1. Cancel its sender task: no batch is drained or retried again. The task first lets the
       produce requests already on their way finish (each within ``request_timeout_ms``), for at
       most ``wind_down`` seconds; then they are cancelled too.
    2. Fail every batch it still holds with ``error`` (what aiokafka does when its sender dies).
    3. ``stop()``: nothing is left to flush, so it closes the connections at once.
    """
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(producer._sender.close(), wind_down)
    accumulator = producer._message_accumulator
    queued = [batch for batches in accumulator._batches.values() for batch in batches]
    # A batch put back for a retry has left the in-flight set, and the callback run when it is
    # done removes it from there (KeyError otherwise): put it back, as its next drain would.
    accumulator._pending_batches.update(batch for batch in queued if batch.retry_count)
    accumulator.fail_all(error)
    for batch in queued:  # the error also went to its drain waiter, which nobody else reads now
        with contextlib.suppress(_Abandoned):
            await batch.wait_drain(0)
    await producer.stop()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a call that gave up does not read it: no "never retrieved" at exit


class _AioLink:
    """One aiokafka producer and the records handed to it.

    A record still unacknowledged ``patience`` seconds after its hand-over stops the producer
    (:func:`_stop_sending`): nothing it holds is sent again, its requests on their way finish
    within ``wind_down`` seconds, and every record it held fails with :class:`_Abandoned`. So each
    record is acknowledged, refused or abandoned within ``patience + wind_down`` seconds of its
    hand-over. Records share one bound, so the oldest is the only one the timer looks at."""

    def __init__(self, producer: Any, *, patience: float, wind_down: float) -> None:
        self.producer = producer
        self._patience = patience
        self._wind_down = wind_down
        self._loop = asyncio.get_running_loop()
        self._waiting: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.reason: str | None = None
        """Why the producer was stopped, once it is."""
        self._stopping: asyncio.Task[None] | None = None

    @property
    def usable(self) -> bool:
        return self.reason is None and not _sender_died(self.producer)

    async def send(self, topic: str, item: _Prepared) -> asyncio.Future[Any]:
        """Hand a record over; the future resolves on its acknowledgement (or failure)."""
        if self.reason is not None:
            raise _Abandoned(self.reason)
        # send() waits only while the accumulator is full or the topic's metadata is missing.
        future: asyncio.Future[Any] = await self.producer.send(topic, item.value, item.key, headers=item.headers)
        future.add_done_callback(_retrieve)
        self._waiting.append((self._loop.time() + self._patience, future))
        if self._timer is None and self._stopping is None:
            self._timer = self._loop.call_at(self._waiting[0][0], self._check)
        return future

    def _check(self) -> None:
        self._timer = None
        waiting = self._waiting
        while waiting and waiting[0][1].done():
            waiting.popleft()
        if not waiting:
            return
        if waiting[0][0] <= self._loop.time():
            self.stop(f"a record was not acknowledged within {self._patience:g}s of its hand-over")
        else:
            self._timer = self._loop.call_at(waiting[0][0], self._check)

    def stop(self, reason: str) -> asyncio.Task[None]:
        """Stop the producer for good (once, however many callers ask); returns the task doing it."""
        if self._stopping is None:
            self.reason = reason
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            log.warning("stopping an aiokafka producer: %s", reason)
            self._stopping = asyncio.create_task(_stop_sending(self.producer, _Abandoned(reason), self._wind_down),
                                                 name="floodgate-sdk-stop-producer")
        return self._stopping

    async def close(self, timeout: float) -> None:
        """Deliver what it holds (within ``timeout`` seconds), then stop."""
        if self._stopping is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.producer.flush()
        await self.stop("the client was closed")


def _aiokafka_timeouts(config: dict[str, Any], send_timeout: float) -> tuple[int, float]:
    """aiokafka's ``request_timeout_ms`` and the client's patience (seconds) for a client whose
    records must settle within ``send_timeout``: a request gets at most half of it (default: half),
    the patience what is left, so that patience + the wind-down of a stop fit in ``send_timeout``.
    aiokafka's default, 40 s, let a record go out long after its ``submit`` gave up."""
    _check_send_timeout(send_timeout)
    half = send_timeout * 1000 / 2
    given = config.pop("request_timeout_ms", None)
    if given is None:
        request_ms = max(1, math.floor(half))
    else:
        try:
            request_ms = int(given)
        except (TypeError, ValueError):
            raise ConfigError(f"request_timeout_ms must be milliseconds, not {given!r}") from None
        if not 0 < request_ms <= half:
            raise ConfigError(f"request_timeout_ms={request_ms} must be 1..{math.floor(half)} "
                              f"(half of send_timeout={send_timeout:g}s); raise send_timeout instead")
    patience = send_timeout - request_ms / 1000
    linger = config.get("linger_ms", 0)
    if not isinstance(linger, int | float) or not 0 <= linger < patience * 1000:
        raise ConfigError(f"linger_ms={linger!r} must be shorter than {patience * 1000:g} ms: a record lingering "
                          "that long would be abandoned before it is sent")
    return request_ms, patience


class AsyncFloodgateClient:
    """Asynchronous producer of job requests (aiokafka); same API as :class:`FloodgateClient`.

    Use ``async with`` or call :meth:`start` / :meth:`close`; ``submit`` starts it if needed.
    Options as for :class:`FloodgateClient`, except that ``producer_config`` is passed to
    ``aiokafka.AIOKafkaProducer`` as given (e.g. ``linger_ms=20``).

    ``send_timeout``: each record handed over is acknowledged, refused or abandoned within this
    many seconds. aiokafka's idempotent producer itself retries a record the broker refuses or
    never answers without any deadline, so the client enforces one: a record unacknowledged
    ``send_timeout - request_timeout_ms`` after its hand-over stops the producer (nothing it holds
    is sent again; its requests already on their way get ``request_timeout_ms`` to finish) and
    fails every record it held with "outcome unknown" (written or not, never later); the next
    call uses a new producer. ``request_timeout_ms`` is at most half of ``send_timeout`` (default:
    half). ``submit`` waits by default until ``send_timeout + 2`` seconds after its hand-over, so
    it learns its record's fate; given a shorter ``timeout`` it may give up first, and its record
    may then still be written up to ``send_timeout`` seconds after its hand-over.

    A fatal error of the idempotent producer (``OutOfOrderSequenceNumber``, ``ProducerFenced``,
    ``UnknownProducerId``...: aiokafka cannot recover from them) stops it the same way; the
    records it held fail with their job ids and the next call uses a new producer (``renewals``
    counts them). Nothing is sent again on the caller's behalf.
    """

    def __init__(self, bootstrap_servers: str, *, tenant: str = "default", topic_prefix: str = "floodgate.",
                 known_models: Collection[str] | None = None, idempotence: bool = True,
                 id_secret: bytes | None = None, limits: RequestLimits = DEFAULT_LIMITS,
                 allow_private_webhooks: bool = False, send_timeout: float = 8.0, **producer_config: Any) -> None:
        self._prep = _Preparer(tenant, topic_prefix, known_models, id_secret, limits, allow_private_webhooks)
        options = dict(producer_config)
        request_ms, self._patience = _aiokafka_timeouts(options, send_timeout)
        self.send_timeout = send_timeout
        self._wind_down = request_ms / 1000
        self._config = {**options, "request_timeout_ms": request_ms, "bootstrap_servers": bootstrap_servers,
                        "acks": "all", "enable_idempotence": idempotence}
        self._link: _AioLink | None = None
        self._starting = asyncio.Lock()
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False
        self.renewals = 0
        """Producers replaced after one was stopped (a fatal error, a record past its bound)."""

    @property
    def topic(self) -> str:
        """The requests topic this client writes to."""
        return self._prep.topic

    async def start(self) -> None:
        """Connect to the cluster; raises :class:`DeliveryError` if it cannot."""
        await self._usable_link()

    async def _usable_link(self) -> _AioLink:
        """The current producer, or a new one if it was stopped (once, however many calls ask)."""
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError as AIOKafkaError

        async with self._starting:
            if self._closed:
                raise RuntimeError("AsyncFloodgateClient is closed")
            old = self._link
            if old is not None and old.usable:
                return old
            if old is not None:
                task = old.stop("its producer failed for good")  # a no-op if it was stopped already
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)
                self._link = None
            producer = AIOKafkaProducer(**self._config)
            try:
                await producer.start()
            except AIOKafkaError as exc:
                await producer.stop()
                raise DeliveryError(f"cannot connect: {exc}", retriable=True) from exc
            self._link = _AioLink(producer, patience=self._patience, wind_down=self._wind_down)
            if old is not None:
                self.renewals += 1
            return self._link

    async def submit(self, model: str, prompt: str, *, user_id: str, image_url: str | None = None,
                     params: Mapping[str, str] | None = None, webhook_url: str | None = None,
                     metadata: Mapping[str, str] | None = None, idempotency_key: str | None = None,
                     push: PushTarget | None = None, timeout: float | None = None) -> str:
        """See :meth:`FloodgateClient.submit`; the default ``timeout`` waits until ``send_timeout
        + 2`` seconds after the hand-over (see the class)."""
        spec = _spec(model, prompt, user_id, image_url, params, webhook_url, metadata, idempotency_key, push)
        return (await self._send([self._prep.prepare(spec, _now_ms())], timeout))[0]

    async def submit_many(self, requests: Iterable[JobSpec], *, timeout: float = 60.0) -> list[str]:
        """See :meth:`FloodgateClient.submit_many`."""
        return await self._send(self._prep.prepare_all(requests), timeout)

    async def _send(self, prepared: Sequence[_Prepared], timeout: float | None) -> list[str]:
        job_ids = [p.job_id for p in prepared]
        try:
            link = await self._usable_link()
        except DeliveryError as exc:  # no producer: nothing was sent
            _raise_failures({i: DeliveryError(str(exc), retriable=True) for i in range(len(job_ids))}, job_ids)
            raise
        results = await self._send_all(link, prepared, timeout)
        _raise_failures({i: r for i, r in enumerate(results) if r is not None}, job_ids)
        return job_ids

    async def _send_all(self, link: _AioLink, prepared: Sequence[_Prepared],
                        timeout: float | None) -> list[DeliveryError | None]:
        from aiokafka.errors import KafkaError as AIOKafkaError

        loop = asyncio.get_running_loop()
        settle = self.send_timeout + VERDICT_SLACK
        wait = settle if timeout is None else timeout
        results: list[DeliveryError | None] = [None] * len(prepared)
        futures: list[tuple[int, asyncio.Future[Any]]] = []
        try:
            async with asyncio.timeout(wait) as scope:
                for index, item in enumerate(prepared):
                    try:
                        futures.append((index, await link.send(self._prep.topic, item)))
                    except (AIOKafkaError, _Abandoned) as exc:
                        # send() itself gives up: the buffer stayed full for request_timeout_ms, the
                        # topic's metadata never came, or the producer failed or was stopped. This
                        # record and the rest were not handed over; the ones before it were and
                        # are awaited below, so the caller learns which went out.
                        retriable = self._failed_for_good(link, exc) or _aiokafka_retriable(exc)
                        results[index] = DeliveryError(f"not sent: {_describe(exc)}", retriable=retriable)
                        for later in range(index + 1, len(prepared)):
                            results[later] = DeliveryError(f"not sent: record [{index}] before it could not be",
                                                           retriable=retriable)
                        break
                    if timeout is None:  # until every record handed over so far has settled
                        scope.reschedule(loop.time() + settle)
                for index, future in futures:
                    try:
                        await asyncio.shield(future)
                    except _Abandoned as exc:
                        results[index] = DeliveryError(
                            f"outcome unknown: {exc.reason}, so the client stopped its producer: it was not sent "
                            f"after that, but a request already sent may have written it; {_RETRY_ADVICE}",
                            retriable=True)
                    except AIOKafkaError as exc:
                        retriable = self._failed_for_good(link, exc) or _aiokafka_retriable(exc)
                        results[index] = DeliveryError(f"broker did not accept the record: {_describe(exc)}",
                                                       retriable=retriable)
        except TimeoutError:
            pass
        for index in range(len(prepared)):
            if results[index] is None and index >= len(futures):
                # Cancelled inside send(), before the accumulator took it: never handed over.
                results[index] = DeliveryError(f"not sent: the producer's buffer stayed full for {wait:g}s",
                                               retriable=True)
            elif results[index] is None and not _acked(futures, index):
                results[index] = DeliveryError(
                    f"no acknowledgement within {wait:g}s; it may still be written up to {self.send_timeout:g}s "
                    "after it was handed over", retriable=True)
        return results

    def _failed_for_good(self, link: _AioLink, exc: Exception) -> bool:
        """Stop ``link``'s producer if ``exc`` means it cannot go on; the next call gets a new one."""
        if isinstance(exc, _fatal_aiokafka_errors()) or _sender_died(link.producer):
            link.stop(f"its producer failed for good ({_describe(exc)})")
            return True
        return False

    async def close(self, timeout: float = 10.0) -> None:
        """Deliver outstanding records (up to ``timeout`` seconds), then stop the producer.

        Records still unacknowledged then fail with "outcome unknown"; nothing is sent after."""
        async with self._starting:
            self._closed = True
            link, self._link = self._link, None
        if link is not None:
            await link.close(timeout)
        for task in list(self._stopping):
            await task

    async def __aenter__(self) -> AsyncFloodgateClient:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


def _describe(exc: Exception) -> str:
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def _aiokafka_retriable(exc: Exception) -> bool:
    """aiokafka marks its KafkaTimeoutError not retriable, but a record that timed out (a full
    buffer or an expired batch during a broker outage) may go through later, as librdkafka's
    timeouts may (``_TRANSIENT``)."""
    from aiokafka.errors import KafkaTimeoutError

    return isinstance(exc, (KafkaTimeoutError, _Abandoned)) or bool(getattr(exc, "retriable", False))


def _acked(futures: Sequence[tuple[int, asyncio.Future[Any]]], index: int) -> bool:
    future = futures[index][1]
    return future.done() and not future.cancelled() and future.exception() is None
