"""The provider simulator over real HTTP on 127.0.0.1: limits, idempotency, lifecycle, chaos, admin."""
from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from connectors.simulator import (
    Distribution,
    ProviderConfig,
    SimulatorConfig,
    config_from_dict,
    dev_config,
    load_config,
    realistic_config,
    run_receiver,
    run_simulator,
)
from connectors.simulator.jobs import SAMPLE_VIDEO, CreateRequest, Job
from connectors.simulator.receiver import Delivery
from connectors.simulator.state import Created, ProviderState
from floodgate import signing
from floodgate.errors import ConfigError

SECRET = signing.new_secret()
REPO = Path(__file__).resolve().parents[2]


def fast(**overrides: Any) -> ProviderConfig:
    """A provider that finishes in tens of milliseconds and retries webhooks quickly."""
    settings: dict[str, Any] = {
        "concurrency_limit": 5,
        "render_time": Distribution("fixed", seconds=0.05),
        "queue_delay": 0.01,
        "webhook_secret": SECRET,
        "webhook_backoff": 0.01,
        "webhook_timeout": 2.0,
    }
    settings.update(overrides)
    return ProviderConfig(**settings)


def one(**overrides: Any) -> SimulatorConfig:
    return SimulatorConfig(providers={"sora": fast(**overrides)}, seed=7)


def auth(key: str = "key-a", idempotency_key: str | None = None) -> dict[str, str]:
    out = {"Authorization": f"Bearer {key}"}
    if idempotency_key is not None:
        out["Idempotency-Key"] = idempotency_key
    return out


def body(webhook_url: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": "sora-2", "prompt": "a lighthouse at dusk", "metadata": {"job_id": "job-1"}}
    if webhook_url:
        out["webhook_url"] = webhook_url
    out.update(extra)
    return out


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` against a deadline (the simulator's own timers drive the change)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def events(deliveries: list[Delivery]) -> list[tuple[str, str]]:
    return [(d.headers["webhook-id"], orjson.loads(d.body)["type"]) for d in deliveries]


async def create(http: aiohttp.ClientSession, url: str, key: str = "key-a", **kw: Any) -> dict[str, Any]:
    async with http.post(f"{url}/sora/v1/videos", json=body(**kw), headers=auth(key)) as r:
        assert r.status == 200, await r.text()
        result: dict[str, Any] = await r.json()
        return result


async def test_concurrency_limit_under_concurrent_submits() -> None:
    config = one(concurrency_limit=3, render_time=Distribution("fixed", seconds=30))
    async with run_simulator(config) as sim, aiohttp.ClientSession() as http:

        async def submit(key: str) -> tuple[int, str | None, dict[str, Any]]:
            async with http.post(f"{sim.url}/sora/v1/videos", json=body(), headers=auth(key)) as r:
                return r.status, r.headers.get("Retry-After"), await r.json(content_type=None)

        results = await asyncio.gather(*(submit("key-a") for _ in range(12)))
        other = await submit("key-b")  # limits are per API key

        statuses = sorted(status for status, _, _ in results)
        assert statuses == [200] * 3 + [429] * 9
        for status, retry_after, payload in results:
            if status == 429:
                assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1
                assert payload["status"] == 429 and payload["title"] == "Too Many Requests"
        assert other[0] == 200

        async with http.get(f"{sim.url}/stats") as r:
            stats = (await r.json())["providers"]["sora"]
        key_a = stats["keys"]["key-a"]
        counts = ("jobs_created", "rejected_429", "max_concurrency", "in_flight")
        assert tuple(key_a[k] for k in counts) == (3, 9, 3, 3)
        assert tuple(stats[k] for k in counts) == (4, 9, 3, 4)
        assert stats["concurrency_limit"] == 3


async def test_idempotency_key_returns_the_existing_job_even_at_the_limit() -> None:
    config = one(concurrency_limit=1, render_time=Distribution("fixed", seconds=30))
    async with run_simulator(config) as sim, aiohttp.ClientSession() as http:
        url = f"{sim.url}/sora/v1/videos"
        async with http.post(url, json=body(), headers=auth(idempotency_key="idem-1")) as r:
            first = await r.json()
        async with http.post(url, json=body(), headers=auth(idempotency_key="idem-1")) as r:
            assert r.status == 200
            assert (await r.json())["id"] == first["id"]
        async with http.post(url, json=body(), headers=auth(idempotency_key="idem-2")) as r:
            assert r.status == 429
        async with http.post(url, json=body(), headers=auth("key-b", "idem-1")) as r:
            assert (await r.json())["id"] != first["id"]  # keys are scoped to the API key
        stats = sim.stats()["providers"]["sora"]
        assert stats["keys"]["key-a"]["jobs_created"] == 1
        assert stats["keys"]["key-a"]["duplicate_idempotency_keys"] == 1
        assert stats["jobs_created"] == 2


async def test_job_lifecycle_webhooks_are_signed_and_the_file_downloads() -> None:
    async with run_receiver() as hooks, run_simulator(one()) as sim, aiohttp.ClientSession() as http:
        job = await create(http, sim.url, webhook_url=hooks.url)
        assert (job["object"], job["status"], job["progress"], job["metadata"]) == (
            "video", "queued", 0, {"job_id": "job-1"})
        seen = await hooks.wait_count(2)
        assert [kind for _, kind in events(seen)] == ["video.in_progress", "video.completed"]
        for delivery in seen:
            signing.verify(SECRET, delivery.headers, delivery.body, now=time.time())
            assert orjson.loads(delivery.body)["id"] == delivery.headers["webhook-id"]
        completed = orjson.loads(seen[1].body)["data"]
        assert completed["status"] == "completed" and completed["progress"] == 100
        async with http.get(f"{sim.url}/sora/v1/videos/{job['id']}", headers=auth()) as r:
            assert (await r.json())["video_url"] == completed["video_url"]
        async with http.get(completed["video_url"]) as r:
            assert r.status == 200 and r.content_type == "video/mp4"
            video = await r.read()
            assert video == SAMPLE_VIDEO.read_bytes() and video[4:8] == b"ftyp"  # the real, playable sample
        async with http.get(completed["video_url"], headers={"Range": "bytes=4-7"}) as r:  # as a <video> asks
            assert (r.status, await r.read()) == (206, b"ftyp")
            assert r.headers["Content-Range"] == f"bytes 4-7/{len(video)}"
        stats = sim.stats()["providers"]["sora"]
        assert (stats["completed"], stats["webhooks_sent"], stats["in_flight"]) == (1, 2, 0)
        # The provider's work and first submission, as the bench's drain-vs-ideal reads them.
        assert stats["render_seconds"] == stats["keys"]["key-a"]["render_seconds"] > 0
        assert stats["first_created_at"] == stats["keys"]["key-a"]["first_created_at"]
        assert int(stats["first_created_at"]) == job["created_at"]


async def test_failure_rate_one_fails_every_job() -> None:
    async with run_receiver() as hooks, run_simulator(one(failure_rate=1.0)) as sim, aiohttp.ClientSession() as http:
        job = await create(http, sim.url, webhook_url=hooks.url)
        seen = await hooks.wait_count(2)
        failed = orjson.loads(seen[-1].body)
        assert failed["type"] == "video.failed"
        assert failed["data"]["status"] == "failed" and failed["data"]["video_url"] is None
        assert failed["data"]["error"]["code"] == "generation_failed"
        async with http.get(f"{sim.url}/sora/files/{job['id']}.mp4") as r:
            assert r.status == 404
        assert sim.stats()["providers"]["sora"]["failed"] == 1


async def test_admin_outage_returns_503_with_retry_after_until_ended() -> None:
    async with run_simulator(one()) as sim, aiohttp.ClientSession() as http:
        async with http.post(f"{sim.url}/_admin/sora/outage", json={"seconds": 30}) as r:
            assert r.status == 200
        async with http.post(f"{sim.url}/sora/v1/videos", json=body(), headers=auth()) as r:
            assert r.status == 503
            assert 1 <= int(r.headers["Retry-After"]) <= 30
        async with http.post(f"{sim.url}/_admin/sora/outage", json={"seconds": 0}) as r:
            assert r.status == 200
        await create(http, sim.url)
        stats = sim.stats()["providers"]["sora"]
        assert (stats["outage_rejections"], stats["jobs_created"]) == (1, 1)


async def test_configured_outage_window_is_scaled_by_time_factor() -> None:
    config = SimulatorConfig(providers={"sora": fast(outages=((0.0, 3600.0),))}, time_factor=0.01)
    async with run_simulator(config) as sim, aiohttp.ClientSession() as http, \
            http.get(f"{sim.url}/sora/v1/videos/anything", headers=auth()) as r:
        assert r.status == 503
        assert 30 <= int(r.headers["Retry-After"]) <= 36  # 3600 simulated s * 0.01


async def test_cancel_stops_the_job_and_frees_its_slot() -> None:
    config = one(concurrency_limit=1, render_time=Distribution("fixed", seconds=30))
    async with run_receiver() as hooks, run_simulator(config) as sim, aiohttp.ClientSession() as http:
        job = await create(http, sim.url, webhook_url=hooks.url)
        await hooks.wait_count(1)  # in_progress: the render has started
        cancel_url = f"{sim.url}/sora/v1/videos/{job['id']}/cancel"
        async with http.post(cancel_url, headers=auth("key-b")) as r:
            assert r.status == 404  # only the owner may touch it
        async with http.post(cancel_url, headers=auth()) as r:
            assert (await r.json())["status"] == "cancelled"
        async with http.post(cancel_url, headers=auth()) as r:
            assert r.status == 200 and (await r.json())["status"] == "cancelled"
        await create(http, sim.url)  # the slot is free again
        stats = sim.stats()["providers"]["sora"]
        assert (stats["cancelled"], stats["in_flight"], stats["max_concurrency"]) == (1, 1, 1)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "m", "prompt": ""}, "prompt"),
        ({"model": "m", "prompt": "x", "webhook_url": "ftp://x"}, "webhook_url"),
        ({"model": "m", "prompt": "x", "image_url": 5}, "image_url"),
        ({"model": "m", "prompt": "x", "metadata": {"a": 1}}, "metadata.a"),
        ({"model": "m", "prompt": "x", "seconds": 4}, "seconds"),
        ([1, 2], "body"),
    ],
)
async def test_bad_request_names_the_field(payload: Any, field: str) -> None:
    async with run_simulator(one()) as sim, aiohttp.ClientSession() as http:
        async with http.post(f"{sim.url}/sora/v1/videos", json=payload, headers=auth()) as r:
            assert r.status == 400
            assert r.content_type == "application/problem+json"
            problem = await r.json(content_type=None)
            assert problem["field"] == field and problem["errors"][0]["field"] == field
        assert sim.stats()["providers"]["sora"]["jobs_created"] == 0


async def test_auth_unknown_provider_and_foreign_jobs() -> None:
    async with run_simulator(one(api_keys=("key-a", "key-b"))) as sim, aiohttp.ClientSession() as http:
        url = f"{sim.url}/sora/v1/videos"
        async with http.post(url, json=body()) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        async with http.post(url, json=body(), headers=auth("key-z")) as r:
            assert r.status == 401
        async with http.post(f"{sim.url}/runway/v1/videos", json=body(), headers=auth()) as r:
            assert r.status == 404
        job = await create(http, sim.url)
        async with http.get(f"{url}/{job['id']}", headers=auth("key-b")) as r:
            assert r.status == 404
        async with http.get(f"{url}/{job['id']}", headers=auth("key-a")) as r:
            assert r.status == 200


async def test_duplicate_rate_one_resends_every_event_with_the_same_id() -> None:
    async with run_receiver() as hooks, run_simulator(one(duplicate_rate=1.0)) as sim, aiohttp.ClientSession() as http:
        await create(http, sim.url, webhook_url=hooks.url)
        seen = events(await hooks.wait_count(4))
        assert seen[0] == seen[1] and seen[2] == seen[3] and seen[0][0] != seen[2][0]
        assert [kind for _, kind in seen] == ["video.in_progress"] * 2 + ["video.completed"] * 2
        await until(lambda: sim.stats()["providers"]["sora"]["webhooks_sent"] == 4)
        assert sim.stats()["providers"]["sora"]["webhooks_duplicated"] == 2


async def test_reorder_rate_one_sends_in_progress_after_the_terminal_event() -> None:
    async with run_receiver() as hooks, run_simulator(one(reorder_rate=1.0)) as sim, aiohttp.ClientSession() as http:
        await create(http, sim.url, webhook_url=hooks.url)
        seen = await hooks.wait_count(2)
        assert [kind for _, kind in events(seen)] == ["video.completed", "video.in_progress"]
        late = orjson.loads(seen[1].body)
        assert late["data"]["status"] == "in_progress"
        assert late["created_at"] <= orjson.loads(seen[0].body)["created_at"]
        assert sim.stats()["providers"]["sora"]["webhooks_reordered"] == 1


async def test_drop_rate_one_sends_nothing_but_the_job_still_completes() -> None:
    async with run_receiver() as hooks, run_simulator(one(drop_rate=1.0)) as sim, aiohttp.ClientSession() as http:
        await create(http, sim.url, webhook_url=hooks.url)
        await until(lambda: sim.stats()["providers"]["sora"]["completed"] == 1)
        stats = sim.stats()["providers"]["sora"]
        assert (stats["webhooks_dropped"], stats["webhooks_sent"]) == (2, 0)
        assert hooks.deliveries == []
        async with http.get(f"{sim.url}/_admin/sora/jobs") as r:
            [seen] = (await r.json())["jobs"]
        assert seen["webhooks_dropped"] == ["video.in_progress", "video.completed"]
        assert seen["webhooks_delivered"] == []


async def test_failed_deliveries_are_retried_with_the_same_webhook_id() -> None:
    # The first two attempts get a 500; the third succeeds.
    async with run_receiver(lambda _, n: 500 if n < 2 else 200) as hooks, run_simulator(one()) as sim, \
            aiohttp.ClientSession() as http:
        await create(http, sim.url, webhook_url=hooks.url)
        seen = await hooks.wait_count(4)
        ids = [d.headers["webhook-id"] for d in seen]
        assert ids[0] == ids[1] == ids[2] != ids[3]
        for delivery in seen:
            signing.verify(SECRET, delivery.headers, delivery.body, now=time.time())
        await until(lambda: sim.stats()["providers"]["sora"]["webhooks_sent"] == 2)
        assert sim.stats()["providers"]["sora"]["webhooks_failed"] == 0


async def test_deliveries_give_up_after_the_configured_attempts() -> None:
    async with run_receiver(lambda _, n: 503) as hooks, run_simulator(one(webhook_attempts=2)) as sim, \
            aiohttp.ClientSession() as http:
        await create(http, sim.url, webhook_url=hooks.url)
        await until(lambda: sim.stats()["providers"]["sora"]["webhooks_failed"] == 2)
        assert len(hooks.deliveries) == 4
        assert sim.stats()["providers"]["sora"]["webhooks_sent"] == 0


async def test_unreachable_webhook_url_counts_as_failed() -> None:
    async with run_receiver() as hooks:
        dead_url = hooks.url  # closed once this block exits
    async with run_simulator(one(webhook_attempts=2)) as sim, aiohttp.ClientSession() as http:
        await create(http, sim.url, webhook_url=dead_url)
        await until(lambda: sim.stats()["providers"]["sora"]["webhooks_failed"] == 2)


async def test_cold_start_applies_only_after_idle() -> None:
    config = one(cold_start=0.01, idle_after=3600.0)
    async with run_simulator(config) as sim, aiohttp.ClientSession() as http:
        await create(http, sim.url)
        await until(lambda: sim.stats()["providers"]["sora"]["completed"] == 1)
        await create(http, sim.url)  # the model was busy moments ago: warm
        await until(lambda: sim.stats()["providers"]["sora"]["completed"] == 2)
        assert sim.stats()["providers"]["sora"]["cold_starts"] == 1


async def test_a_cold_start_holds_the_first_progress_back() -> None:
    # The job reads queued, without progress, while the model boots; in_progress comes after.
    async with run_receiver() as hooks, run_simulator(one(cold_start=0.6)) as sim, aiohttp.ClientSession() as http:
        job = await create(http, sim.url, webhook_url=hooks.url)
        created = time.monotonic()
        await until(lambda: sim.stats()["providers"]["sora"]["cold_starts"] == 1)
        async with http.get(f"{sim.url}/sora/v1/videos/{job['id']}", headers=auth()) as r:
            booting = await r.json()
        assert (booting["status"], booting["progress"]) == ("queued", 0)
        first = await hooks.wait_count(1)
        assert events(first)[0][1] == "video.in_progress" and time.monotonic() - created >= 0.6
        await hooks.wait_count(2)


async def test_admin_reset_clears_jobs_and_counters() -> None:
    config = one(render_time=Distribution("fixed", seconds=30))
    async with run_simulator(config) as sim, aiohttp.ClientSession() as http:
        job = await create(http, sim.url)
        async with http.post(f"{sim.url}/_admin/reset") as r:
            assert r.status == 200
        stats = sim.stats()["providers"]["sora"]
        assert (stats["jobs_created"], stats["in_flight"], stats["keys"]) == (0, 0, {})
        async with http.get(f"{sim.url}/sora/v1/videos/{job['id']}", headers=auth()) as r:
            assert r.status == 404  # (a status call: it counts for key-a from here on)


async def test_admin_jobs_lists_creation_and_completion_times() -> None:
    async with run_simulator(one()) as sim, aiohttp.ClientSession() as http:
        before = time.time()
        job = await create(http, sim.url)
        await until(lambda: sim.stats()["providers"]["sora"]["completed"] == 1)
        async with http.get(f"{sim.url}/_admin/sora/jobs") as r:
            body = await r.json()
        async with http.get(f"{sim.url}/_admin/nope/jobs") as missing:
            assert missing.status == 404
    [seen] = body["jobs"]
    assert (body["provider"], seen["id"], seen["status"]) == ("sora", job["id"], "completed")
    assert before <= seen["created_at"] <= seen["completed_at"] <= time.time()


async def test_admin_jobs_names_each_jobs_attempt_and_the_webhooks_answered() -> None:
    async with run_receiver() as receiver, run_simulator(one()) as sim, aiohttp.ClientSession() as http:
        async with http.post(f"{sim.url}/sora/v1/videos", json=body(webhook_url=receiver.url),
                             headers=auth(idempotency_key="job-1:0")) as r:
            assert r.status == 200
        await until(lambda: len(receiver.deliveries) == 2)
        async with http.get(f"{sim.url}/_admin/sora/jobs") as r:
            [seen] = (await r.json())["jobs"]
    assert (seen["job_id"], seen["idempotency_key"]) == ("job-1", "job-1:0")
    assert seen["webhooks_delivered"] == [d.headers["webhook-id"] for d in receiver.deliveries]


async def test_a_hanging_provider_accepts_and_then_never_answers() -> None:
    async with run_receiver() as receiver, run_simulator(one(hang_rate=1.0)) as sim, \
            aiohttp.ClientSession() as http:
        job = await create(http, sim.url, webhook_url=receiver.url)
        healthy = SimulatorConfig(providers={"sora": fast()}, seed=7)
        async with run_simulator(healthy) as fine:
            await create(http, fine.url, webhook_url=receiver.url)
            await until(lambda: len(receiver.deliveries) == 2)  # the healthy one's two events
        async with http.get(f"{sim.url}/sora/v1/videos/{job['id']}", headers=auth()) as r:
            assert (await r.json())["status"] == "queued"
        assert sim.stats()["providers"]["sora"]["in_flight"] == 1  # it still holds its slot
        async with http.post(f"{sim.url}/sora/v1/videos/{job['id']}/cancel", headers=auth()) as r:
            assert (await r.json())["status"] == "cancelled"
    assert all(orjson.loads(d.body)["data"]["id"] != job["id"] for d in receiver.deliveries)
    with pytest.raises(ConfigError, match="hang_rate"):
        fast(hang_rate=1.5)


async def test_a_hung_job_does_not_hold_up_the_jobs_behind_it() -> None:
    """The provider lost it: it stays queued for good, but the line moves past it (jobs of the same
    key render in turn, so a hung job counted as ahead would stall every later one until cancelled)."""
    async with run_receiver() as receiver, run_simulator(one(hang_rate=1.0)) as sim, \
            aiohttp.ClientSession() as http:
        hung = await create(http, sim.url, webhook_url=receiver.url)
        state = sim.states["sora"]
        state.config = dataclasses.replace(state.config, hang_rate=0.0)
        later = await create(http, sim.url, webhook_url=receiver.url)
        await until(lambda: len(receiver.deliveries) == 2)  # the later job's in_progress and completed
        async with http.get(f"{sim.url}/sora/v1/videos/{later['id']}", headers=auth()) as r:
            assert (await r.json())["status"] == "completed"
        async with http.get(f"{sim.url}/sora/v1/videos/{hung['id']}", headers=auth()) as r:
            assert (await r.json())["status"] == "queued"


async def test_presets_and_config_loading(tmp_path: Path) -> None:
    assert set(dev_config().providers) == {"sora", "kling", "wan"}
    assert all(p.concurrency_limit == 10 for p in dev_config().providers.values())
    realistic = realistic_config(0.01)
    assert realistic.time_factor == 0.01
    assert realistic.providers["sora"].render_time.min >= 30
    path = tmp_path / "sim.json"
    path.write_bytes(orjson.dumps({
        "time_factor": 0.5,
        "seed": 3,
        "providers": {"p1": {"render_time": {"kind": "lognormal", "median": 2, "sigma": 0.3},
                             "outages": [[10, 20]], "api_keys": ["a"]}},
    }))
    loaded = load_config(path)
    assert loaded.providers["p1"].outages == ((10.0, 20.0),)
    assert loaded.providers["p1"].render_time.kind == "lognormal"
    with pytest.raises(ConfigError, match="unknown setting"):
        config_from_dict({"providers": {"p": {"concurency_limit": 3}}})
    with pytest.raises(ConfigError, match="failure_rate"):
        config_from_dict({"providers": {"p": {"failure_rate": 2}}})
    with pytest.raises(ConfigError):
        config_from_dict({"providers": {"_admin": {}}})


def test_state_is_deterministic_per_seed_and_cold_starts_follow_the_idle_window() -> None:
    """``ProviderState`` is synchronous with injected clocks, so this needs no server at all."""
    request = CreateRequest(model="m", prompt="p", image_url=None, webhook_url=None, metadata={})
    provider = fast(failure_rate=0.5, render_time=Distribution("uniform", min=10, max=20),
                    cold_start=100.0, idle_after=60.0, concurrency_limit=100)

    def run(clock: list[float]) -> list[tuple[bool, float]]:
        sim = SimulatorConfig(providers={"sora": provider}, time_factor=0.5, seed=42)
        state = ProviderState("sora", provider, sim, monotonic=lambda: clock[0], wall=lambda: 1e9 + clock[0])
        out = []
        for _ in range(3):
            created = state.submit("k", request, None)
            assert isinstance(created, Created)
            out.append((created.job.will_fail, state.begin_render(created.job)))
            state.finish(created.job, "completed")
            clock[0] += 10  # idle 10 simulated-and-scaled seconds: < 60 * 0.5
        clock[0] += 30  # now idle 40 s >= 30 s: the next job is cold again
        created = state.submit("k", request, None)
        assert isinstance(created, Created)
        out.append((created.job.will_fail, state.begin_render(created.job)))
        assert state.stats()["cold_starts"] == 2
        return out

    first, second = run([0.0]), run([0.0])
    assert first == second
    renders = [seconds for _, seconds in first]
    assert renders[0] >= 55 and renders[3] >= 55  # (10..20 + 100 cold) * 0.5
    assert all(5 <= seconds <= 10 for seconds in renders[1:3])


def test_each_key_renders_its_jobs_in_turn_and_a_hung_one_holds_no_place() -> None:
    """Who renders next is the first of its key's line (kept as jobs come and go, not found by a
    pass over every job ever created): positions follow creation, another key's jobs and a hung
    job are not ahead of anyone, and a cancelled queued job leaves the line."""
    request = CreateRequest(model="m", prompt="p", image_url=None, webhook_url=None, metadata={})
    provider = fast(concurrency_limit=1, queue_over_limit=10)  # it queues past its one render slot
    state = ProviderState("sora", provider, SimulatorConfig(providers={"sora": provider}, seed=1),
                          monotonic=lambda: 0.0, wall=lambda: 1e9)

    def submit(key: str, *, hang: bool = False) -> Job:
        state.config = dataclasses.replace(provider, hang_rate=1.0 if hang else 0.0)
        created = state.submit(key, request, None)
        assert isinstance(created, Created)
        return created.job

    first, hung, second, other, third = submit("a"), submit("a", hang=True), submit("a"), submit("b"), submit("a")
    assert [state.queue_position(j) for j in (first, second, other, third)] == [0, 1, 0, 2]
    assert state.queue_position(hung) == 1  # the queued jobs of its key created before it
    assert state.may_render(first) and not state.may_render(second) and state.may_render(other)
    state.begin_render(first)
    assert not state.may_render(second), "the key's one slot is taken"
    state.finish(first, "completed")
    assert state.may_render(second) and state.queue_position(third) == 1
    state.finish(second, "cancelled")  # cancelled while queued: out of the line
    assert state.may_render(third) and state.queue_position(third) == 0
    assert state.queue_position(hung) == 0 and hung.status == "queued"  # those created before it are gone


async def test_command_line_prints_its_url_and_exits_cleanly_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "error", "-m", "connectors.simulator", "--host", "127.0.0.1", "--port", "0",
        "--preset", "realistic", "--time-factor", "0.001",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(15):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("simulator=http://127.0.0.1:")
        url = line.strip().removeprefix("simulator=")
        async with aiohttp.ClientSession() as http, http.get(f"{url}/stats") as r:
            assert set((await r.json())["providers"]) == {"sora", "kling", "wan"}
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rest, errors = await proc.communicate()
        assert proc.returncode == 0
        assert rest == b"" and errors == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_status_calls_past_the_read_limit_are_refused_with_retry_after_per_key() -> None:
    """A provider's read limit is its own (Replicate: 3,000 a minute): past it, a 429 that says
    when to come back, counted apart from the submissions refused for the concurrency limit."""
    async with run_simulator(one(status_rate_per_second=2.0)) as sim, aiohttp.ClientSession() as http:
        job = await create(http, sim.url)
        url = f"{sim.url}/sora/v1/videos/{job['id']}"

        async def read(key: str = "key-a") -> tuple[int, str | None]:
            async with http.get(url, headers=auth(key)) as r:
                return r.status, r.headers.get("Retry-After")

        answers = [await read() for _ in range(4)]
        assert [status for status, _ in answers] == [200, 200, 429, 429], "a burst of the rate, then 429"
        assert all(retry == "1" for status, retry in answers if status == 429)
        assert (await read("key-b"))[0] == 404, "another key has a budget of its own (and no such job)"
        stats = sim.stats()["providers"]["sora"]
        assert (stats["keys"]["key-a"]["status_calls"], stats["keys"]["key-a"]["status_rejected_429"]) == (2, 2)
        assert stats["rejected_429"] == 0, "submissions are counted apart"
