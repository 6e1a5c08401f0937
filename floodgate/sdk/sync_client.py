"""The synchronous client, :class:`FloodgateClient`, over confluent-kafka (librdkafka): one
producer shared by every call, replaced after a fatal error of the idempotent producer."""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from floodgate.errors import DeliveryError
from floodgate.fatal_errors import fatal_in, is_fatal
from floodgate.push import PushTarget
from floodgate.sdk.failures import RETRY_ADVICE, kafka_error, raise_failures
from floodgate.sdk.options import VERDICT_SLACK, librdkafka_config, librdkafka_timeout_ms
from floodgate.sdk.prepare import DEFAULT_LIMITS, JobSpec, Prepared, Preparer, job_spec, time_ms
from floodgate.validation import RequestLimits

log = logging.getLogger("floodgate.sdk")  # one logger for the SDK, as before it was a package


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
    package docs (:mod:`floodgate.sdk`) on idempotency. ``allow_private_webhooks``: accept ``webhook_url`` and
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
        self._prep = Preparer(tenant, topic_prefix, known_models, id_secret, limits, allow_private_webhooks)
        options = librdkafka_config(producer_config)
        message_timeout_ms = librdkafka_timeout_ms(options, send_timeout)
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
        spec = job_spec(model, prompt, user_id, image_url, params, webhook_url, metadata, idempotency_key, push)
        return self._send([self._prep.prepare(spec, time_ms())], timeout)[0]

    def submit_many(self, requests: Iterable[JobSpec], *, timeout: float = 60.0) -> list[str]:
        """Publish many job requests with one flush; returns their job ids in input order.

        Every request is validated before anything is produced (``ValidationError`` with fields
        like ``[3].input.prompt``). Raises :class:`BatchDeliveryError` if any record was not
        acknowledged within ``timeout`` seconds; it lists which. Each record settles within
        ``send_timeout`` (+2) seconds of its hand-over, so a ``timeout`` that long past the last
        hand-over learns every record's fate.
        """
        return self._send(self._prep.prepare_all(requests), timeout)

    def _send(self, prepared: Sequence[Prepared], timeout: float | None) -> list[str]:
        job_ids = [p.job_id for p in prepared]
        try:
            held = self._acquire()
        except DeliveryError as exc:  # no producer could be made: nothing was sent
            raise_failures({i: DeliveryError(str(exc), retriable=exc.retriable) for i in range(len(job_ids))},
                           job_ids)
            raise
        try:
            failures = self._deliver(held, prepared, timeout)
        finally:
            self._release(held)
        raise_failures(failures, job_ids)
        return job_ids

    def _deliver(self, held: _Held, prepared: Sequence[Prepared], timeout: float | None) -> dict[int, DeliveryError]:
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
                    failures[index] = kafka_error(err, fatal)
            elif fatal is not None:
                failures[index] = DeliveryError(
                    f"outcome unknown: its producer failed for good ({fatal.str()}) before reporting on it; "
                    f"{RETRY_ADVICE}", retriable=True)
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

