"""The webhook bridge's guards on the real broker: a webhook secret rotates without refusing a
delivery (the old secret accepted until its configured end, refused after), and a flood of
forged deliveries writes nothing to Kafka and costs a bounded, constant amount of CPU each."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from floodgate import provider_config, signing
from floodgate.ids import new_job_id
from floodgate.provider_config import ProviderSetup
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from tests.integration.api_helpers import DEV_SIMULATOR, record_count, running_api

pytestmark = pytest.mark.kafka

NEW = signing.new_secret()
OLD = signing.new_secret()
START = 1_900_000_000.0
UNTIL = START + 3600
FLOOD = 400
CPU_PER_REJECTION = 0.005
"""Seconds of CPU per rejected webhook, client and server together (both run in this process).
Measured at about 0.4 ms on the project's 2-core machine; the bound leaves room for a loaded one."""


class Clock:
    """The bridge's clock, moved by the test: the rotation window passes without waiting."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rotating_setup() -> ProviderSetup:
    """A routing file's content: kling's webhook secret is rotating from OLD to NEW until UNTIL
    (2030-03-17T18:46:40Z)."""
    return provider_config.from_dict({
        "providers": {"kling": {"kind": "simulator", "concurrency_limit": 5, "connection": {
            "base_url": DEV_SIMULATOR, "api_key": "k", "webhook_secret": NEW,
            "previous_webhook_secret": OLD, "previous_webhook_secret_until": "2030-03-17T18:46:40Z"}}},
        "routes": {"kling-2.1": [{"provider": "kling"}]},
    })


def event_body(job_id: str) -> bytes:
    return orjson.dumps({
        "id": "evt_1", "object": "event", "type": "video.in_progress", "created_at": int(START),
        "data": {"id": "video_1", "object": "video", "status": "in_progress", "progress": 10,
                 "metadata": {"job_id": job_id}},
    })


@pytest.fixture
def settings(settings_for: Callable[..., Settings]) -> Settings:
    return settings_for(simulator_url=DEV_SIMULATOR)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def deliver(http: aiohttp.ClientSession, url: str, secret: str | None, at: float) -> int:
    body = event_body(new_job_id())
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers.update(signing.signature_headers(secret, f"msg_{new_job_id()}", body, at))
    async with http.post(f"{url}/webhooks/kling", data=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_a_rotating_secret_accepts_old_and_new_until_the_end_then_only_new(
        settings: Settings, http: aiohttp.ClientSession) -> None:
    clock = Clock(START)
    webhooks = TopicNames(settings).webhooks
    async with running_api(settings, roles={"bridge"}, setup=rotating_setup(), clock=clock) as bridge:
        assert await deliver(http, bridge.url, OLD, clock.now) == 200  # old, within the window
        assert await deliver(http, bridge.url, NEW, clock.now) == 200  # new, within the window
        clock.now = UNTIL - 1
        assert await deliver(http, bridge.url, OLD, clock.now) == 200  # old, its last second
        assert record_count(settings.kafka_bootstrap, webhooks) == 3
        clock.now = UNTIL
        assert await deliver(http, bridge.url, OLD, clock.now) == 401  # old, after the window
        clock.now = UNTIL + 86_400
        assert await deliver(http, bridge.url, OLD, clock.now) == 401
        assert await deliver(http, bridge.url, NEW, clock.now) == 200  # new, after the window
        assert await deliver(http, bridge.url, signing.new_secret(), clock.now) == 401  # neither
    assert record_count(settings.kafka_bootstrap, webhooks) == 4


async def test_a_rotation_without_an_end_does_not_start() -> None:
    from floodgate.errors import ConfigError

    setup = provider_config.from_dict({
        "providers": {"kling": {"kind": "simulator", "concurrency_limit": 5, "connection": {
            "base_url": DEV_SIMULATOR, "api_key": "k", "webhook_secret": NEW, "previous_webhook_secret": OLD}}},
        "routes": {"kling-2.1": [{"provider": "kling"}]},
    })
    with pytest.raises(ConfigError, match="providers.kling.connection: previous_webhook_secret needs"):
        setup.build_connectors()


async def test_a_flood_of_forged_webhooks_writes_nothing_and_costs_bounded_cpu(
        settings: Settings, http: aiohttp.ClientSession) -> None:
    """Bounded CPU, not a rate limit: a rejection does no Kafka I/O and verification costs the
    same whatever the forgery (at most ``signing.MAX_SIGNATURES`` entries, two HMACs while a
    secret rotates, a body of at most 1 MiB). A rate limit per source would also refuse a
    provider's honest burst of callbacks, which all come from a few addresses."""
    names = TopicNames(settings)
    now = time.time()
    forged_signature = " ".join([signing.sign(signing.new_secret(), "m", int(now), b"x")] * 20)
    kinds: list[Callable[[bytes], dict[str, str]]] = [
        lambda body: {},  # unsigned
        lambda body: signing.signature_headers(signing.new_secret(), "msg_1", body, now),  # wrong secret
        lambda body: {**signing.signature_headers(NEW, "msg_1", body, now), "webhook-signature": forged_signature},
        lambda body: signing.signature_headers(OLD, "msg_1", body, UNTIL + 1),  # old secret, too late anyway
    ]
    async with running_api(settings, roles={"bridge"}, setup=rotating_setup()) as bridge:
        url = f"{bridge.url}/webhooks/kling"
        bodies = [event_body(new_job_id()) for _ in range(FLOOD)]

        async def forge(i: int) -> int:
            body = bodies[i]
            headers: dict[str, Any] = {"Content-Type": "application/json", **kinds[i % len(kinds)](body)}
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        await forge(0)  # warm up connections and code paths before measuring
        started_cpu, started = time.process_time(), time.monotonic()
        statuses = await asyncio.gather(*(forge(i) for i in range(FLOOD)))
        cpu, wall = time.process_time() - started_cpu, time.monotonic() - started
    assert set(statuses) == {401}
    per_rejection = cpu / FLOOD
    print(f"forged webhooks: {FLOOD} in {wall:.2f}s wall, {per_rejection * 1000:.2f} ms CPU each (client + server)")
    assert per_rejection < CPU_PER_REJECTION
    # Not one record: the bridge writes only after a delivery verified.
    assert record_count(settings.kafka_bootstrap, names.webhooks) == 0
    assert record_count(settings.kafka_bootstrap, names.release("kling")) == 0
