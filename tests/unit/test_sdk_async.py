"""The async SDK client on a stand-in for aiokafka's producer: what a call reports when a record
is refused, fails or is never acknowledged; that a record past its bound or a fatal error stops
the producer (nothing it held is sent again) before any call reports its records' fate; and that
the next call gets a new producer. The last test pins the aiokafka internals the client needs
against the installed aiokafka; tests/integration/test_sdk.py checks the same promise on a broker."""
from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import pytest

import floodgate.sdk.async_client as async_sdk
from floodgate.errors import ConfigError
from floodgate.ids import job_id_for_key
from floodgate.sdk import AsyncFloodgateClient, BatchDeliveryError, DeliveryError, JobSpec

SECRET = b"k" * 16

Verdict = Exception | str | None
"""What the fake does with a send(): None (queued, acknowledged once the loop runs on),
"silent" (queued, never answered: a broker that refuses it and aiokafka retrying for ever) or an
exception instance (queued, then the broker fails it with that). :class:`Raise` instead makes
send() itself raise."""


class Raise:
    """send() raises ``error``: the record is not handed over."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class FakeSender:
    """aiokafka's ``Sender`` as far as stopping a producer touches it."""

    def __init__(self) -> None:
        self.sender_task: asyncio.Future[None] | None = None
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class FakeAccumulator:
    """aiokafka's ``MessageAccumulator`` as far as stopping a producer touches it; it holds no
    batches of its own (the fake's futures stand for them)."""

    def __init__(self, producer: FakeAIOProducer) -> None:
        self._producer = producer
        self._batches: dict[object, list[object]] = {}
        self._pending_batches: set[object] = set()
        self.failed_with: Exception | None = None

    def fail_all(self, error: Exception) -> None:
        self.failed_with = error
        for future in self._producer.pending:
            if not future.done():
                future.set_exception(copy.copy(error))  # as aiokafka does


class FakeAIOProducer:
    """aiokafka's producer as the async client uses it, with the two internals it stops one by.
    ``verdict(n)`` says what happens to send() number n."""

    def __init__(self, config: dict[str, Any], verdict: Callable[[int], Verdict | Raise]) -> None:
        self.config = config
        self.verdict = verdict
        self.calls = 0
        self.queued_keys: list[bytes] = []
        self.pending: list[asyncio.Future[None]] = []
        self.stopped = False
        self.sends_after_stop = 0
        self._sender = FakeSender()
        self._message_accumulator = FakeAccumulator(self)

    async def start(self) -> None: ...

    async def stop(self) -> None:
        self.stopped = True

    async def flush(self) -> None:
        await asyncio.gather(*self.pending, return_exceptions=True)

    async def send(self, topic: str, value: bytes, key: bytes, headers: Any = None) -> asyncio.Future[None]:
        if self.stopped or self._sender.closed:
            self.sends_after_stop += 1
        verdict = self.verdict(self.calls)
        self.calls += 1
        if isinstance(verdict, Raise):
            raise verdict.error
        self.queued_keys.append(key)
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[None] = loop.create_future()
        self.pending.append(acked)
        if verdict is None:
            loop.call_soon(acked.set_result, None)  # the ack comes after send() returns
        elif isinstance(verdict, Exception):
            loop.call_soon(acked.set_exception, verdict)
        return acked


def async_client(monkeypatch: pytest.MonkeyPatch, *verdicts: Callable[[int], Verdict | Raise],
                 **options: Any) -> tuple[AsyncFloodgateClient, list[FakeAIOProducer]]:
    """A client whose n-th producer follows ``verdicts[n]`` (the last one for any further)."""
    import aiokafka

    made: list[FakeAIOProducer] = []

    def factory(**config: Any) -> FakeAIOProducer:
        made.append(FakeAIOProducer(config, verdicts[min(len(made), len(verdicts) - 1)]))
        return made[-1]

    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", factory)
    return AsyncFloodgateClient("broker:9092", tenant="acme", id_secret=SECRET, **options), made


def ack(n: int) -> Verdict:
    return None


def key_id(key: str) -> str:
    return job_id_for_key(SECRET, "acme", key)


# --- producer options --------------------------------------------------------------------------

async def test_aiokafka_requests_get_at_most_half_of_the_send_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # aiokafka's default request timeout is 40 s: a submit that gave up after 10 s could still make its job later.
    cases: list[tuple[dict[str, Any], int]] = [({}, 4000), ({"send_timeout": 3.0}, 1500),
                                                ({"request_timeout_ms": 900}, 900)]
    for options, expected in cases:
        client, made = async_client(monkeypatch, ack, **options)
        await client.start()
        assert made[0].config["request_timeout_ms"] == expected
        assert made[0].config["acks"] == "all" and made[0].config["enable_idempotence"] is True
        await client.close()


@pytest.mark.parametrize("options", [
    {"request_timeout_ms": 40_000}, {"request_timeout_ms": 4001}, {"request_timeout_ms": 0},
    {"linger_ms": 4000}, {"send_timeout": 0}, {"send_timeout": float("inf")},
])
def test_a_request_timeout_or_linger_that_would_outlast_the_send_timeout_is_refused(
        monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        async_client(monkeypatch, ack, **options)


# --- refusals ------------------------------------------------------------------------------------

async def test_a_send_that_raises_mid_batch_ends_in_a_batch_error_naming_what_went_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka.errors import KafkaTimeoutError

    # The 4th send() finds the buffer still full after request_timeout_ms (a broker outage).
    client, made = async_client(monkeypatch, lambda n: Raise(KafkaTimeoutError()) if n == 3 else None)
    keys = [f"k{i}" for i in range(5)]
    ids = [key_id(k) for k in keys]
    with pytest.raises(BatchDeliveryError) as info:
        await client.submit_many([JobSpec("sora-2", "a whale", "u", idempotency_key=k) for k in keys])
    assert info.value.job_ids == ids
    assert [k.decode() for k in made[0].queued_keys] == ids[:3] and made[0].calls == 4  # none after it
    assert sorted(info.value.failures) == [3, 4]  # the first three were acknowledged
    assert all(type(e) is DeliveryError and e.retriable for e in info.value.failures.values())
    assert "KafkaTimeoutError" in str(info.value.failures[3]) and "not sent" in str(info.value.failures[4])
    assert [getattr(e, "job_id", None) for e in info.value.failures.values()] == ids[3:]
    assert client.renewals == 0  # a full buffer is no reason to replace the producer
    await client.close()


async def test_a_single_async_submit_whose_send_raises_gets_a_delivery_error_with_its_job_id(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka.errors import UnknownTopicOrPartitionError

    client, _ = async_client(monkeypatch, lambda n: Raise(UnknownTopicOrPartitionError()))
    with pytest.raises(DeliveryError) as info:
        await client.submit("sora-2", "a whale", user_id="u", idempotency_key="solo")
    assert type(info.value) is DeliveryError and info.value.retriable
    assert getattr(info.value, "job_id", None) == key_id("solo")
    await client.close()


# --- the bound on a record ---------------------------------------------------------------------

async def test_a_record_past_its_bound_is_abandoned_before_its_submit_reports_and_never_sent_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The first producer never hears back about its record (aiokafka would retry it for ever).
    client, made = async_client(monkeypatch, lambda n: "silent", ack, send_timeout=0.4)
    with pytest.raises(DeliveryError, match="outcome unknown") as info:
        await client.submit("sora-2", "a whale", user_id="u", idempotency_key="late")  # the default timeout
    assert info.value.retriable and getattr(info.value, "job_id", None) == key_id("late")
    # By the time the caller hears "unknown", that producer was told to send nothing more and is
    # stopped: the record cannot be written later by this client.
    first = made[0]
    assert first._sender.closed and first.stopped
    assert isinstance(first._message_accumulator.failed_with, async_sdk._Abandoned)
    # The next call gets a new producer; the abandoned record is not sent again on its own.
    assert await client.submit("sora-2", "next", user_id="u", idempotency_key="next") == key_id("next")
    assert [k.decode() for k in made[1].queued_keys] == [key_id("next")]
    assert client.renewals == 1 and first.sends_after_stop == 0
    await client.close()


async def test_a_call_given_a_shorter_timeout_says_how_long_its_record_may_still_be_written(
        monkeypatch: pytest.MonkeyPatch) -> None:
    client, made = async_client(monkeypatch, lambda n: "silent", send_timeout=8.0)
    with pytest.raises(DeliveryError, match=r"no acknowledgement within 0\.05s; it may still be written up to 8s"):
        await client.submit("sora-2", "a whale", user_id="u", timeout=0.05)
    assert not made[0]._sender.closed  # one caller's short patience does not stop the others' producer
    await client.close(timeout=0.0)
    assert made[0].stopped  # and close() never waits on a broker that does not answer


# --- fatal errors ----------------------------------------------------------------------------------

async def test_a_fatal_error_fails_what_the_producer_held_and_the_next_call_uses_a_new_producer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka.errors import OutOfOrderSequenceNumber

    def first(n: int) -> Verdict:  # record 0 is acknowledged, 1 refused for good, 2 in flight meanwhile
        return [None, OutOfOrderSequenceNumber(), "silent"][n]

    client, made = async_client(monkeypatch, first, ack)
    keys = ["a", "b", "c"]
    with pytest.raises(BatchDeliveryError) as info:
        await client.submit_many([JobSpec("sora-2", "a whale", "u", idempotency_key=k) for k in keys], timeout=30)
    failures = info.value.failures
    assert sorted(failures) == [1, 2] and info.value.retriable
    assert "OutOfOrderSequenceNumber" in str(failures[1])
    # The one in flight is settled by the stop, not by the call's 30 s deadline.
    assert "outcome unknown" in str(failures[2])
    assert [getattr(failures[i], "job_id", None) for i in (1, 2)] == [key_id("b"), key_id("c")]
    assert made[0]._sender.closed and made[0].stopped
    assert await client.submit("sora-2", "next", user_id="u", idempotency_key="d") == key_id("d")
    # Nothing from before is sent again, acknowledged or not: only the new record goes out.
    assert [k.decode() for k in made[1].queued_keys] == [key_id("d")]
    assert client.renewals == 1
    await client.close()


async def test_calls_that_all_see_the_fatal_error_replace_the_producer_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka.errors import ProducerFenced

    client, made = async_client(monkeypatch, lambda n: ProducerFenced(), ack)
    results = await asyncio.gather(*(client.submit("sora-2", f"p{i}", user_id="u") for i in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, DeliveryError) and r.retriable for r in results), results
    await asyncio.gather(*(client.submit("sora-2", f"q{i}", user_id="u") for i in range(3)))
    assert len(made) == 2 and client.renewals == 1 and made[1].calls == 3
    await client.close()


async def test_a_producer_whose_sender_task_died_is_replaced_before_the_next_call_uses_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka.errors import KafkaError

    # aiokafka's sender task ended on an unexpected error: that producer fails every send from now on.
    client, made = async_client(monkeypatch, lambda n: Raise(KafkaError("Unexpected error during batch delivery")),
                                ack)
    await client.start()
    died: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    died.set_result(None)
    made[0]._sender.sender_task = died
    await client.submit("sora-2", "a whale", user_id="u")
    assert made[0].calls == 0 and made[1].calls == 1 and client.renewals == 1
    await client.close()
    assert made[0].stopped  # in the background meanwhile; close() waits for it


# --- the aiokafka internals the client relies on ----------------------------------------------

async def test_the_installed_aiokafka_can_be_stopped_the_way_the_client_stops_it() -> None:
    """Fails on an aiokafka upgrade that renames or changes what ``async_sdk._stop_sending`` uses."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.structs import TopicPartition

    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", acks="all", enable_idempotence=True)
    # A record in the accumulator, as send() leaves it (never started: no broker is needed).
    queued = await producer._message_accumulator.add_message(TopicPartition("t", 0), b"k", b"v", 1.0)
    assert not async_sdk._sender_died(producer) and producer._sender.sender_task is None
    await async_sdk._stop_sending(producer, async_sdk._Abandoned("why"), wind_down=1.0)
    error = queued.exception()
    assert isinstance(error, async_sdk._Abandoned) and error.reason == "why"  # aiokafka copied it intact
