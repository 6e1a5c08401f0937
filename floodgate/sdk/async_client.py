"""The asynchronous client, :class:`AsyncFloodgateClient`, over aiokafka, and the per-record
deadline it enforces (:class:`_AioLink`): a record unacknowledged past its bound stops its producer,
and the next call uses a new one. The only code that reaches into aiokafka's internals."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from floodgate.errors import DeliveryError
from floodgate.push import PushTarget
from floodgate.sdk.failures import RETRY_ADVICE, raise_failures
from floodgate.sdk.options import VERDICT_SLACK, aiokafka_timeouts
from floodgate.sdk.prepare import DEFAULT_LIMITS, JobSpec, Prepared, Preparer, job_spec, time_ms
from floodgate.validation import RequestLimits

log = logging.getLogger("floodgate.sdk")  # one logger for the SDK, as before it was a package


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

    async def send(self, topic: str, item: Prepared) -> asyncio.Future[Any]:
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
        self._prep = Preparer(tenant, topic_prefix, known_models, id_secret, limits, allow_private_webhooks)
        options = dict(producer_config)
        request_ms, self._patience = aiokafka_timeouts(options, send_timeout)
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
        spec = job_spec(model, prompt, user_id, image_url, params, webhook_url, metadata, idempotency_key, push)
        return (await self._send([self._prep.prepare(spec, time_ms())], timeout))[0]

    async def submit_many(self, requests: Iterable[JobSpec], *, timeout: float = 60.0) -> list[str]:
        """See :meth:`FloodgateClient.submit_many`."""
        return await self._send(self._prep.prepare_all(requests), timeout)

    async def _send(self, prepared: Sequence[Prepared], timeout: float | None) -> list[str]:
        job_ids = [p.job_id for p in prepared]
        try:
            link = await self._usable_link()
        except DeliveryError as exc:  # no producer: nothing was sent
            raise_failures({i: DeliveryError(str(exc), retriable=True) for i in range(len(job_ids))}, job_ids)
            raise
        results = await self._send_all(link, prepared, timeout)
        raise_failures({i: r for i, r in enumerate(results) if r is not None}, job_ids)
        return job_ids

    async def _send_all(self, link: _AioLink, prepared: Sequence[Prepared],
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
                            f"after that, but a request already sent may have written it; {RETRY_ADVICE}",
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
    timeouts may (``_TRANSIENT`` in :mod:`floodgate.sdk.failures`)."""
    from aiokafka.errors import KafkaTimeoutError

    return isinstance(exc, (KafkaTimeoutError, _Abandoned)) or bool(getattr(exc, "retriable", False))


def _acked(futures: Sequence[tuple[int, asyncio.Future[Any]]], index: int) -> bool:
    future = futures[index][1]
    return future.done() and not future.cancelled() and future.exception() is None
