"""``SimulatorProvider`` against the real simulator over HTTP: the connector contract end to end."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from connectors.providers import SubmitOrder, VideoProvider, create
from connectors.providers.simulator import SimulatorProvider, submit_request
from connectors.simulator import Distribution, ProviderConfig, SimulatorConfig, run_receiver, run_simulator
from floodgate import signing
from floodgate.errors import (
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    SchemaError,
    WebhookVerificationError,
)
from floodgate.procs import bind_socket

SECRET = signing.new_secret()


def config(**overrides: Any) -> SimulatorConfig:
    settings: dict[str, Any] = {
        "concurrency_limit": 5,
        "render_time": Distribution("fixed", seconds=0.05),
        "queue_delay": 0.01,
        "webhook_secret": SECRET,
        "webhook_backoff": 0.01,
    }
    settings.update(overrides)
    return SimulatorConfig(providers={"kling": ProviderConfig(**settings)}, seed=11)


def connector(url: str, *, api_key: str = "key-a", timeout: float = 5.0) -> SimulatorProvider:
    provider = create("simulator", name="kling", base_url=url, api_key=api_key, webhook_secret=SECRET, timeout=timeout)
    assert isinstance(provider, SimulatorProvider)
    return provider


def order(n: int = 1, webhook_url: str | None = None) -> SubmitOrder:
    return SubmitOrder(
        job_id=f"job-{n}",
        model="kling-v2",
        prompt="a paper boat in the rain",
        image_url="https://example.test/boat.png",
        webhook_url=webhook_url,
        idempotency_key=f"idem-{n}",
        metadata={"tenant": "acme"},
    )


async def wait_state(provider: SimulatorProvider, http: aiohttp.ClientSession, job: str, state: str) -> Any:
    """Poll ``status`` against a deadline, as the pipeline's reconciler would."""
    async with asyncio.timeout(5):
        while (status := await provider.status(http, job)).state != state:
            await asyncio.sleep(0.01)
    return status


def test_submit_request_is_built_purely() -> None:
    provider = connector("http://sim.test:9/")
    request = submit_request(provider.endpoint, order(3, "https://hooks.test/x"))
    assert (request.method, request.url) == ("POST", "http://sim.test:9/kling/v1/videos")
    assert request.headers["Idempotency-Key"] == "idem-3"
    assert request.headers["Authorization"] == "Bearer key-a"
    assert orjson.loads(request.body or b"") == {
        "model": "kling-v2",
        "prompt": "a paper boat in the rain",
        "image_url": "https://example.test/boat.png",
        "webhook_url": "https://hooks.test/x",
        "metadata": {"tenant": "acme", "job_id": "job-3"},
    }
    assert "key-a" not in repr(provider)


async def test_submit_status_and_verified_webhooks_end_to_end() -> None:
    async with run_receiver() as hooks, run_simulator(config()) as sim, aiohttp.ClientSession() as http:
        provider = connector(sim.url)
        assert isinstance(provider, VideoProvider)
        submitted = await provider.submit(http, order(1, hooks.url))
        assert submitted.state == "queued" and submitted.provider_job_id.startswith("video_")

        done = await wait_state(provider, http, submitted.provider_job_id, "completed")
        assert done.progress == 1.0 and done.error is None
        async with http.get(done.video_url) as r:
            assert r.status == 200 and r.content_type == "video/mp4" and len(await r.read()) > 0

        deliveries = await hooks.wait_count(2)
        parsed = []
        for delivery in deliveries:
            provider.verify_webhook(delivery.headers, delivery.body, now=time.time())
            parsed.append(provider.parse_webhook(delivery.headers, delivery.body))
        assert [e.state for e in parsed] == ["running", "completed"]
        assert all(e.job_id == "job-1" and e.provider_job_id == submitted.provider_job_id for e in parsed)
        assert parsed[0].webhook_id == deliveries[0].headers["webhook-id"] != parsed[1].webhook_id
        assert parsed[1].video_url == done.video_url
        assert abs(parsed[1].occurred_at - time.time()) < 60


async def test_params_reach_the_simulated_provider() -> None:
    async with run_simulator(config()) as sim, aiohttp.ClientSession() as http:
        provider = connector(sim.url)
        with_params = SubmitOrder(job_id="job-p", model="kling-v2", prompt="dunes", image_url=None, webhook_url=None,
                                  idempotency_key="idem-p", params={"duration": "10", "aspect_ratio": "9:16"})
        submitted = await provider.submit(http, with_params)
        job = sim.states["kling"].jobs[submitted.provider_job_id]
        assert dict(job.request.params) == {"duration": "10", "aspect_ratio": "9:16"}
        plain = await provider.submit(http, order(2))
        assert dict(sim.states["kling"].jobs[plain.provider_job_id].request.params) == {}


async def test_resubmitting_the_same_order_is_idempotent() -> None:
    async with run_simulator(config(render_time=Distribution("fixed", seconds=30))) as sim, \
            aiohttp.ClientSession() as http:
        provider = connector(sim.url)
        first = await provider.submit(http, order(1))
        again = await provider.submit(http, order(1))
        assert first.provider_job_id == again.provider_job_id
        assert sim.stats()["providers"]["kling"]["duplicate_idempotency_keys"] == 1


async def test_over_the_limit_raises_rate_limited_with_retry_after() -> None:
    async with run_simulator(config(concurrency_limit=2, render_time=Distribution("fixed", seconds=30))) as sim, \
            aiohttp.ClientSession() as http:
        provider = connector(sim.url)
        outcomes = await asyncio.gather(*(provider.submit(http, order(n)) for n in range(6)), return_exceptions=True)
        limited = [o for o in outcomes if isinstance(o, RateLimited)]
        assert len(limited) == 4 and len(outcomes) - len(limited) == 2
        assert all(e.status == 429 and e.retry_after is not None and e.retry_after >= 1 for e in limited)
        assert all(e.retriable for e in limited)
        assert sim.stats()["providers"]["kling"]["rejected_429"] == 4


async def test_outage_raises_provider_unavailable() -> None:
    async with run_simulator(config()) as sim, aiohttp.ClientSession() as http:
        provider = connector(sim.url)
        sim.start_outage("kling", 20)
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.submit(http, order())
        assert caught.value.status == 503 and caught.value.retry_after is not None
        assert caught.value.retriable and caught.value.reroute


async def test_failed_job_reports_its_error() -> None:
    async with run_simulator(config(failure_rate=1.0)) as sim, aiohttp.ClientSession() as http:
        provider = connector(sim.url)
        job = (await provider.submit(http, order())).provider_job_id
        failed = await wait_state(provider, http, job, "failed")
        assert failed.video_url is None and failed.error is not None and "generation_failed" in failed.error


async def test_cancel_through_the_connector() -> None:
    async with run_simulator(config(render_time=Distribution("fixed", seconds=30))) as sim, \
            aiohttp.ClientSession() as http:
        provider = connector(sim.url)
        job = (await provider.submit(http, order())).provider_job_id
        await provider.cancel(http, job)
        await provider.cancel(http, job)  # already terminal: not an error
        assert (await provider.status(http, job)).state == "cancelled"


async def test_client_errors_are_rejected_not_retried() -> None:
    async with run_simulator(config(api_keys=("key-a",))) as sim, aiohttp.ClientSession() as http:
        with pytest.raises(ProviderRejected) as caught:
            await connector(sim.url, api_key="wrong").submit(http, order())
        assert caught.value.status == 401 and not caught.value.retriable
        with pytest.raises(ProviderRejected) as missing:
            await connector(sim.url).status(http, "video_does_not_exist")
        assert missing.value.status == 404


async def test_connection_refused_is_unavailable_with_cause() -> None:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ProviderUnavailable) as caught:
            await connector(f"http://127.0.0.1:{port}").submit(http, order())
        assert isinstance(caught.value.__cause__, aiohttp.ClientError)


@dataclass
class Stall:
    url: str
    release: asyncio.Event


@pytest.fixture
async def stall() -> AsyncIterator[Stall]:
    """A server that accepts requests and never answers until released."""
    release = asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hang)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    sock = bind_socket("127.0.0.1", 0)
    await web.SockSite(runner, sock).start()
    try:
        yield Stall(f"http://127.0.0.1:{sock.getsockname()[1]}", release)
    finally:
        release.set()
        await runner.cleanup()


async def test_timeout_is_unavailable_with_cause(stall: Stall) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ProviderUnavailable) as caught:
            await connector(stall.url, timeout=0.2).status(http, "video_1")
        assert isinstance(caught.value.__cause__, TimeoutError)


async def test_webhook_verification_and_parsing_failures() -> None:
    provider = connector("http://127.0.0.1:1")
    body = orjson.dumps({"id": "evt_1", "type": "video.completed", "created_at": 1,
                         "data": {"id": "v", "status": "completed"}})
    headers = signing.signature_headers(signing.new_secret(), "evt_1", body, time.time())
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        provider.verify_webhook(headers, body, now=time.time())
    good = signing.signature_headers(SECRET, "evt_1", body, time.time())
    provider.verify_webhook(good, body, now=time.time())
    event = provider.parse_webhook(good, body)
    assert (event.state, event.job_id, event.progress) == ("completed", None, None)
    for junk in (b"not json", b"[]", b'{"data": {"id": "v", "status": "exploded"}, "created_at": 1}',
                 b'{"data": {"status": "completed"}, "created_at": 1}', b'{"id": "e", "created_at": 1}'):
        with pytest.raises(SchemaError):
            provider.parse_webhook(good, junk)
