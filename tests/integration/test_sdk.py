"""The producer SDK against the real broker: what it writes, what it refuses, how fast."""
from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from floodgate import codec
from floodgate.errors import ValidationError
from floodgate.ids import is_job_id, job_id_time
from floodgate.sdk import AsyncFloodgateClient, BatchDeliveryError, DeliveryError, FloodgateClient, JobSpec
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from floodgate.validation import request_hash, validate_job_request
from tests.kafka_util import consume_until, create_topics

pytestmark = pytest.mark.kafka

SHARED_SECRET = b"s" * 32


@pytest.fixture
def env(settings_for: Callable[..., Settings]) -> tuple[str, str, str]:
    """(bootstrap, topic prefix, requests topic), the topic created."""
    settings = settings_for()
    topic = TopicNames(settings).requests
    create_topics(settings.kafka_bootstrap, [topic], partitions=2)
    return settings.kafka_bootstrap, settings.topic_prefix, topic


def read(bootstrap: str, topic: str, count: int) -> list[tuple[bytes, dict]]:
    messages = consume_until(bootstrap, topic, lambda m: len(m) >= count, timeout=60)
    return [(m.key(), codec.decode_request(m.value(), m.headers())) for m in messages]


def read_until_sentinel(bootstrap: str, topic: str, sentinel: str) -> list[dict]:
    """Everything on the topic up to the sentinel job: proves what was *not* produced before it."""
    messages = consume_until(bootstrap, topic, lambda m: any(m_.key() == sentinel.encode() for m_ in m))
    return [codec.decode_request(m.value(), m.headers()) for m in messages]


def check_record(key: bytes, record: dict, job_id: str, tenant: str) -> None:
    assert key == job_id.encode()
    assert record["job_id"] == job_id and record["tenant"] == tenant and record["source"] == "sdk"
    body = {"model": record["model"], "user_id": record["user_id"], "webhook_url": record["webhook_url"],
            "metadata": record["metadata"], "input": record["input"]}
    normalized = validate_job_request(body, known_models={record["model"]})
    assert record["request_hash"] == request_hash(normalized, tenant)
    assert abs(record["accepted_at"] - time.time() * 1000) < 60_000


def test_sync_submit_writes_a_job_request(env: tuple[str, str, str]) -> None:
    bootstrap, prefix, topic = env
    with FloodgateClient(bootstrap, tenant="acme", topic_prefix=prefix) as client:
        assert client.topic == topic
        job_id = client.submit("kling-2.1", "a paper boat in the rain", user_id="u-1",
                               image_url="https://img.example.com/boat.png", params={"seconds": "5"},
                               webhook_url="https://hooks.example.com/in", metadata={"order": "42"})
    assert is_job_id(job_id) and job_id_time(job_id) > 0
    ((key, record),) = read(bootstrap, topic, 1)
    check_record(key, record, job_id, "acme")
    assert record["input"] == {"prompt": "a paper boat in the rain", "image_url": "https://img.example.com/boat.png",
                               "params": {"seconds": "5"}}
    assert record["webhook_url"] == "https://hooks.example.com/in"
    assert record["metadata"] == {"order": "42"}
    assert record["idempotency_key"] is None


async def test_async_submit_writes_a_job_request(env: tuple[str, str, str]) -> None:
    bootstrap, prefix, topic = env
    async with AsyncFloodgateClient(bootstrap, tenant="beta", topic_prefix=prefix) as client:
        job_id = await client.submit("wan-2.6", "a lighthouse at dusk", user_id="u-2")
        more = await client.submit_many([JobSpec("sora-2", f"shot {i}", "u-2") for i in range(3)])
    records = read(bootstrap, topic, 4)
    assert {r["job_id"] for _, r in records} == {job_id, *more}
    for key, record in records:
        check_record(key, record, record["job_id"], "beta")


def test_validation_errors_name_every_field_and_produce_nothing(env: tuple[str, str, str]) -> None:
    bootstrap, prefix, topic = env
    with FloodgateClient(bootstrap, topic_prefix=prefix) as client:
        with pytest.raises(ValidationError) as info:
            client.submit("no-such-model", "  ", user_id="bad user", webhook_url="ftp://x",
                          metadata={"k": 1}, idempotency_key="")  # type: ignore[dict-item]
        fields = {p.field for p in info.value.problems}
        assert fields == {"model", "input.prompt", "user_id", "webhook_url", "metadata.k", "idempotency_key"}
        good = JobSpec("kling-2.1", "fine", "u-1")
        with pytest.raises(ValidationError) as info:
            client.submit_many([good, JobSpec("kling-2.1", "", "u-1"), good, JobSpec("x", "y", "u")])
        assert [p.field for p in info.value.problems] == ["[1].input.prompt", "[3].model"]
        with pytest.raises(ValidationError, match="private") as info:
            client.submit("kling-2.1", "x", user_id="u", webhook_url="http://169.254.169.254/latest")
        assert [p.field for p in info.value.problems] == ["webhook_url"]
        with pytest.raises(ValidationError, match="private") as info:
            client.submit("kling-2.1", "x", user_id="u", image_url="http://localhost./secrets.png")
        assert [p.field for p in info.value.problems] == ["input.image_url"]
        sentinel = client.submit("kling-2.1", "sentinel", user_id="u-9")
    assert [r["job_id"] for r in read_until_sentinel(bootstrap, topic, sentinel)] == [sentinel]


def test_private_webhook_targets_can_be_allowed_for_dev(env: tuple[str, str, str]) -> None:
    bootstrap, prefix, topic = env
    with FloodgateClient(bootstrap, topic_prefix=prefix, allow_private_webhooks=True) as client:
        job_id = client.submit("kling-2.1", "x", user_id="u", webhook_url="http://127.0.0.1:8080/hooks")
    ((_, record),) = read(bootstrap, topic, 1)
    assert record["job_id"] == job_id and record["webhook_url"] == "http://127.0.0.1:8080/hooks"


async def test_async_validation_errors_produce_nothing(env: tuple[str, str, str]) -> None:
    bootstrap, prefix, topic = env
    async with AsyncFloodgateClient(bootstrap, topic_prefix=prefix) as client:
        with pytest.raises(ValidationError) as info:
            await client.submit("kling-2.1", "x" * 5000, user_id="u")
        assert [p.field for p in info.value.problems] == ["input.prompt"]
        with pytest.raises(ValidationError):
            await client.submit_many([JobSpec("kling-2.1", "ok", "u"), JobSpec("kling-2.1", "ok", "")])
        sentinel = await client.submit("kling-2.1", "sentinel", user_id="u-9")
    assert [r["job_id"] for r in read_until_sentinel(bootstrap, topic, sentinel)] == [sentinel]


def test_known_models_can_be_given(env: tuple[str, str, str]) -> None:
    bootstrap, prefix, _ = env
    with FloodgateClient(bootstrap, topic_prefix=prefix, known_models={"house-model"}) as client:
        with pytest.raises(ValidationError, match="house-model"):
            client.submit("kling-2.1", "x", user_id="u")
        assert is_job_id(client.submit("house-model", "x", user_id="u"))


async def test_idempotency_key_gives_the_same_job_id(env: tuple[str, str, str]) -> None:
    bootstrap, prefix, topic = env
    with FloodgateClient(bootstrap, tenant="acme", topic_prefix=prefix, id_secret=SHARED_SECRET) as sync:
        first = sync.submit("kling-2.1", "x", user_id="u", idempotency_key="order-42")
        again = sync.submit("kling-2.1", "x", user_id="u", idempotency_key="order-42")
        other_key = sync.submit("kling-2.1", "x", user_id="u", idempotency_key="order-43")
    async with AsyncFloodgateClient(bootstrap, tenant="acme", topic_prefix=prefix, id_secret=SHARED_SECRET) as aio:
        from_async = await aio.submit("kling-2.1", "x", user_id="u", idempotency_key="order-42")
    with FloodgateClient(bootstrap, tenant="other", topic_prefix=prefix, id_secret=SHARED_SECRET) as other:
        other_tenant = other.submit("kling-2.1", "x", user_id="u", idempotency_key="order-42")
    with FloodgateClient(bootstrap, tenant="acme", topic_prefix=prefix) as unshared:
        random_secret = unshared.submit("kling-2.1", "x", user_id="u", idempotency_key="order-42")
    assert first == again == from_async
    assert len({first, other_key, other_tenant, random_secret}) == 4
    assert job_id_time(first) == 0  # keyed ids carry no time
    records = read(bootstrap, topic, 6)
    keyed = [r for k, r in records if k == first.encode()]
    assert len(keyed) == 3 and {r["idempotency_key"] for r in keyed} == {"order-42"}
    assert len({r["request_hash"] for r in keyed}) == 1  # same body → same hash: the pipeline sees a replay


def test_submit_many_5000(env: tuple[str, str, str]) -> None:
    bootstrap, prefix, topic = env
    specs = [JobSpec("kling-2.1", f"clip {i}", f"user-{i % 50}", metadata={"n": str(i)}) for i in range(5000)]
    with FloodgateClient(bootstrap, topic_prefix=prefix) as client:
        client.submit("kling-2.1", "warm-up", user_id="u")  # connection and metadata, not measured
        started = time.perf_counter()
        job_ids = client.submit_many(specs)
        elapsed = time.perf_counter() - started
    print(f"\nsync submit_many: 5000 requests in {elapsed:.3f}s = {5000 / elapsed:,.0f}/s")
    assert len(set(job_ids)) == 5000
    on_topic = {r["job_id"] for _, r in read(bootstrap, topic, 5001)}
    assert set(job_ids) <= on_topic


async def test_async_submit_many_5000(env: tuple[str, str, str]) -> None:
    bootstrap, prefix, topic = env
    specs = [JobSpec("wan-2.6", f"clip {i}", f"user-{i % 50}") for i in range(5000)]
    async with AsyncFloodgateClient(bootstrap, topic_prefix=prefix) as client:
        await client.submit("wan-2.6", "warm-up", user_id="u")
        started = time.perf_counter()
        job_ids = await client.submit_many(specs)
        elapsed = time.perf_counter() - started
    print(f"\nasync submit_many: 5000 requests in {elapsed:.3f}s = {5000 / elapsed:,.0f}/s")
    assert len(set(job_ids)) == 5000
    assert set(job_ids) <= {r["job_id"] for _, r in read(bootstrap, topic, 5001)}


def test_missing_topic_is_a_retriable_delivery_error(kafka_bootstrap: str) -> None:
    client = FloodgateClient(kafka_bootstrap, topic_prefix="no-such-prefix-", message_timeout_ms=1000)
    try:
        # Our own deadline first, then librdkafka's delivery report (message timeout) within ours.
        with pytest.raises(DeliveryError, match=r"no acknowledgement within 0\.3s") as info:
            client.submit("kling-2.1", "x", user_id="u", timeout=0.3)
        assert info.value.retriable
        with pytest.raises(BatchDeliveryError) as batch:
            client.submit_many([JobSpec("kling-2.1", "x", "u")] * 2, timeout=20.0)
        assert sorted(batch.value.failures) == [0, 1] and len(batch.value.job_ids) == 2
        assert batch.value.retriable
        assert all("broker did not accept" in str(e) for e in batch.value.failures.values())
    finally:
        client.close(timeout=5.0)


async def test_async_missing_topic_is_a_retriable_delivery_error(kafka_bootstrap: str) -> None:
    async with AsyncFloodgateClient(kafka_bootstrap, topic_prefix="no-such-prefix-") as client:
        with pytest.raises(DeliveryError) as info:
            await client.submit("kling-2.1", "x", user_id="u", timeout=1.0)
    assert info.value.retriable


async def test_async_unreachable_broker_is_a_delivery_error() -> None:
    client = AsyncFloodgateClient("127.0.0.1:1")
    with pytest.raises(DeliveryError, match="cannot connect") as info:
        await client.start()
    assert info.value.retriable
    await client.close()


async def test_async_client_goes_on_with_a_new_producer_after_one_was_stopped(env: tuple[str, str, str]) -> None:
    """What a fatal error or a record past its bound does to a live aiokafka producer (its sender
    running, its connections open): stopped for good; the next call starts another, and nothing
    of the first is sent again."""
    bootstrap, prefix, topic = env
    async with AsyncFloodgateClient(bootstrap, tenant="acme", topic_prefix=prefix) as client:
        first = await client.submit("kling-2.1", "first", user_id="u")
        link = client._link
        assert link is not None
        await link.stop("stopped by the test")
        assert link.producer._closed  # aiokafka's own flag: stop() ran to its end
        second = await client.submit("kling-2.1", "second", user_id="u")
        assert client.renewals == 1 and client._link is not link
    records = read(bootstrap, topic, 2)
    assert sorted(r["job_id"] for _, r in records) == sorted([first, second])
