"""Each real-provider connector against the simulator speaking that provider's dialect, over real
HTTP: submit, status, webhooks authenticated as the bridge would, params, cancel, 429, outage."""
from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from connectors.providers import SubmitOrder, VideoProvider, create
from connectors.providers import fal as fal_connector_module
from connectors.providers.base import CALLBACK_HEADER, WebhookDelivery, same_provider_job
from connectors.providers.kling import token as kling_token
from connectors.simulator import Distribution, ProviderConfig, SimulatorConfig, run_receiver, run_simulator
from connectors.simulator.config import DEV_JWT_SECRET
from connectors.simulator.dialects.fal import signing_seed
from connectors.simulator.receiver import Delivery, WebhookReceiver
from connectors.simulator.server import Simulator
from floodgate import signing
from floodgate.errors import ProviderUnavailable, RateLimited, WebhookVerificationError

WEBHOOK_SECRET = signing.new_secret()
CALLBACK_SECRET = "callback-secret-for-the-dialect-tests"


@dataclass(frozen=True)
class Case:
    kind: str
    model: str
    connection: Callable[[str], dict[str, Any]]  # simulator root -> connection settings
    sim: dict[str, Any] = field(default_factory=dict)
    webhooks: int = 2  # deliveries for one job that runs to completion (0: polling only)
    signed: bool = True
    cancels: bool = True
    retry_after: bool = True  # the provider says when to retry a 429


CASES = {
    "runway": Case("runway", "gen4_turbo", lambda root: {"base_url": root, "api_key": "rw_key"},
                   sim={"queue_over_limit": 1}, webhooks=0),
    "kling": Case("kling", "kling-v2-1", lambda root: {
        "base_url": root, "access_key": "ak_test", "secret_key": DEV_JWT_SECRET, "callback_secret": CALLBACK_SECRET},
        webhooks=2, signed=False, cancels=False, retry_after=False),
    "runpod": Case("runpod", "ep-video", lambda root: {
        "base_url": root, "api_key": "rp_key", "callback_secret": CALLBACK_SECRET}, webhooks=1, signed=False,
        retry_after=False),
    "wavespeed": Case("wavespeed", "wavespeed-ai/wan-2.1/t2v-480p", lambda root: {
        "base_url": root, "api_key": "ws_key", "webhook_secret": WEBHOOK_SECRET, "callback_secret": CALLBACK_SECRET},
        webhooks=1),
    "fal": Case("fal", "fal-ai/video-model/v2/text-to-video", lambda root: {
        "base_url": root, "api_key": "fal_key", "callback_secret": CALLBACK_SECRET,
        "jwks_url": f"{root}/.well-known/jwks.json"}, sim={"queue_over_limit": 1}, webhooks=1),
    "replicate": Case("replicate", "acme/video-model", lambda root: {
        "base_url": root, "api_token": "r8_test", "webhook_secret": WEBHOOK_SECRET,
        "callback_secret": CALLBACK_SECRET}),
}


def sim_config(case: Case, **overrides: Any) -> SimulatorConfig:
    settings: dict[str, Any] = {"concurrency_limit": 2, "render_time": Distribution("fixed", seconds=0.05),
                                "queue_delay": 0.01, "webhook_secret": WEBHOOK_SECRET, "webhook_backoff": 0.01,
                                "dialect": case.kind, **case.sim, **overrides}
    return SimulatorConfig(providers={case.kind: ProviderConfig(**settings)}, seed=5)


def order(case: Case, n: int, webhook: str | None = None, *, model: str | None = None, **params: str) -> SubmitOrder:
    return SubmitOrder(job_id=f"job_{n:04d}", model=model or case.model, prompt=f"a lighthouse {n}",
                       image_url=None, webhook_url=webhook, idempotency_key=f"idem-{n}", params=params)


@dataclass
class Rig:
    case: Case
    sim: Simulator
    hooks: WebhookReceiver
    http: aiohttp.ClientSession
    provider: VideoProvider


async def rig(case: Case, **overrides: Any) -> AsyncIterator[Rig]:
    async with run_receiver() as hooks, run_simulator(sim_config(case, **overrides)) as sim, \
            aiohttp.ClientSession() as http:
        provider = create(case.kind, name=case.kind, **case.connection(f"{sim.url}/{case.kind}"))
        assert isinstance(provider, VideoProvider)
        yield Rig(case, sim, hooks, http, provider)


def sim_job(r: Rig, provider_job_id: str) -> Any:
    """The simulator's job behind a provider job id (fal's carry the app before the request id)."""
    return r.sim.states[r.case.kind].jobs[provider_job_id.rpartition("/")[2]]


def delivery(got: Delivery) -> WebhookDelivery:
    return WebhookDelivery({k.lower(): v for k, v in got.headers.items()}, got.body, got.callback)


async def accept(r: Rig, got: Delivery) -> Any:
    """What the bridge does with one delivery, then what the jobs agent parses from it."""
    forwarded = await r.provider.authenticate_webhook(r.http, delivery(got), now=time.time())
    headers = {**forwarded.headers, CALLBACK_HEADER: got.callback}
    return r.provider.parse_webhook(headers, forwarded.body)


async def until_state(r: Rig, provider_job_id: str, state: str) -> Any:
    async with asyncio.timeout(10):
        while (status := await r.provider.status(r.http, provider_job_id)).state != state:
            await asyncio.sleep(0.02)
    return status


@pytest.fixture(params=sorted(CASES))
async def r(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    async for made in rig(CASES[request.param]):
        yield made


async def test_a_job_runs_to_completion_with_params_and_webhooks(r: Rig) -> None:
    submitted = await r.provider.submit(r.http, order(r.case, 1, r.hooks.url, duration="10", ratio="9:16"))
    assert submitted.state == "queued"
    job = sim_job(r, submitted.provider_job_id)
    assert {k: str(v) for k, v in job.request.params.items()}.items() >= {"duration": "10", "ratio": "9:16"}.items()
    done = await until_state(r, submitted.provider_job_id, "completed")
    assert done.video_url and done.video_url.endswith(".mp4") and done.error is None
    if not r.case.webhooks:
        return
    got = await r.hooks.wait_count(r.case.webhooks)
    events = [await accept(r, d) for d in got]
    assert all(e.job_id == "job_0001" and e.provider_job_id == submitted.provider_job_id for e in events)
    assert events[-1].state == "completed" and events[-1].video_url == done.video_url


async def test_forged_or_misaddressed_webhooks_are_refused(r: Rig) -> None:
    if not r.case.webhooks:
        pytest.skip("polling only: this provider sends no webhooks")
    submitted = await r.provider.submit(r.http, order(r.case, 2, r.hooks.url))
    await until_state(r, submitted.provider_job_id, "completed")
    got = (await r.hooks.wait_count(r.case.webhooks))[-1]
    other_job = got.callback.replace("job_0002", "job_0003")
    with pytest.raises(WebhookVerificationError):
        await r.provider.authenticate_webhook(r.http, WebhookDelivery(delivery(got).headers, got.body, other_job),
                                              now=time.time())
    if r.case.signed:
        tampered = got.body.replace(b"job", b"jab") if b"job" in got.body else got.body + b" "
        with pytest.raises(WebhookVerificationError):
            await r.provider.authenticate_webhook(r.http, WebhookDelivery(delivery(got).headers, tampered,
                                                                          got.callback), now=time.time())
        with pytest.raises(WebhookVerificationError):
            await r.provider.authenticate_webhook(r.http, delivery(got), now=time.time() + 301)


async def test_over_the_limit_is_rate_limited() -> None:
    for case in CASES.values():
        async for r in rig(case, render_time=Distribution("fixed", seconds=30)):
            outcomes = await asyncio.gather(*(r.provider.submit(r.http, order(case, n)) for n in range(8)),
                                            return_exceptions=True)
            limited = [o for o in outcomes if isinstance(o, RateLimited)]
            assert limited, f"{case.kind}: no 429 past the limit"
            if case.retry_after:
                assert all(e.retry_after is not None and e.retry_after >= 1 for e in limited), case.kind


async def test_an_outage_is_provider_unavailable(r: Rig) -> None:
    r.sim.start_outage(r.case.kind, 60)
    with pytest.raises(ProviderUnavailable) as caught:
        await r.provider.submit(r.http, order(r.case, 4))
    assert caught.value.status == 503 and caught.value.retry_after


async def test_cancel_stops_the_job(r: Rig) -> None:
    async for slow in rig(r.case, render_time=Distribution("fixed", seconds=30)):
        submitted = await slow.provider.submit(slow.http, order(slow.case, 5))
        await slow.provider.cancel(slow.http, submitted.provider_job_id)
        job = sim_job(slow, submitted.provider_job_id)
        if slow.case.cancels:
            assert job.status == "cancelled"
        else:
            assert job.status != "cancelled"  # the provider has no cancel: the job runs on


async def test_an_unsigned_callback_is_believed_only_as_the_provider_confirms_it() -> None:
    for case in (c for c in CASES.values() if not c.signed):
        async for r in rig(case, render_time=Distribution("fixed", seconds=30)):
            submitted = await r.provider.submit(r.http, order(case, 6, r.hooks.url))
            await until_state(r, submitted.provider_job_id, "running")
            where = callback_path(r, submitted.provider_job_id)
            claim = forged_completion(case, submitted.provider_job_id)
            forwarded = await r.provider.authenticate_webhook(r.http, WebhookDelivery({}, claim, where),
                                                              now=time.time())
            event = r.provider.parse_webhook({**forwarded.headers, CALLBACK_HEADER: where}, forwarded.body)
            assert (event.state, event.video_url, event.job_id) == ("running", None, "job_0006"), case.kind
            with pytest.raises(WebhookVerificationError):  # a job the provider does not know
                unknown = forged_completion(case, submitted.provider_job_id.replace("video_", "video_0"))
                await r.provider.authenticate_webhook(r.http, WebhookDelivery({}, unknown, where), now=time.time())


def callback_path(r: Rig, provider_job_id: str) -> str:
    """The per-job path the connector gave the provider (as the simulator recorded its URL)."""
    url = sim_job(r, provider_job_id).request.webhook_url
    return str(url).split("/hooks/", 1)[1]


def forged_completion(case: Case, provider_job_id: str) -> bytes:
    job = provider_job_id.rpartition("/")[2]
    if case.kind == "runpod":
        return orjson.dumps({"id": job, "status": "COMPLETED", "output": {"video_url": "https://evil.test/x.mp4"}})
    return orjson.dumps({"task_id": job, "task_status": "succeed",
                         "task_result": {"videos": [{"id": "v", "url": "https://evil.test/x.mp4"}]}})


async def test_providers_that_queue_past_their_limit_report_the_queue() -> None:
    for kind in ("fal", "runway"):
        async for r in rig(CASES[kind], render_time=Distribution("fixed", seconds=30), queue_over_limit=2):
            jobs = [await r.provider.submit(r.http, order(r.case, n)) for n in range(4)]
            async with asyncio.timeout(5):
                while (await r.provider.status(r.http, jobs[1].provider_job_id)).state != "running":
                    await asyncio.sleep(0.02)
            waiting = [await r.provider.status(r.http, j.provider_job_id) for j in jobs[2:]]
            assert [s.state for s in waiting] == ["queued", "queued"], kind
            if kind == "fal":
                assert [s.queue_position for s in waiting] == [0, 1]
            else:
                url = f"{r.sim.url}/runway/v1/tasks/{jobs[3].provider_job_id}"
                async with r.http.get(url, headers={"Authorization": "Bearer rw_key"}) as resp:
                    assert (await resp.json())["status"] == "THROTTLED"
            with pytest.raises(RateLimited):
                await r.provider.submit(r.http, order(r.case, 9))


async def test_webhook_chaos_applies_to_every_dialect() -> None:
    """Duplicated deliveries keep their identity, so the jobs agent can drop the copy."""
    for case in (c for c in CASES.values() if c.webhooks):
        async for r in rig(case, duplicate_rate=1.0):
            submitted = await r.provider.submit(r.http, order(case, 7, r.hooks.url))
            got = await r.hooks.wait_count(2 * case.webhooks)
            events = [await accept(r, d) for d in got]
            assert all(e.provider_job_id == submitted.provider_job_id for e in events), case.kind
            assert len({e.webhook_id for e in events}) <= case.webhooks, case.kind
            assert r.sim.stats()["providers"][case.kind]["webhooks_duplicated"] == case.webhooks, case.kind


async def test_the_simulated_fal_publishes_the_key_its_secret_derives() -> None:
    """What lets the stack test sign a stale-but-valid fal webhook (tests/e2e/test_real_providers.py)."""
    async for r in rig(CASES["fal"]):
        async with r.http.get(f"{r.sim.url}/fal/.well-known/jwks.json") as resp:
            published = (await resp.json())["keys"][0]["x"]
        derived = Ed25519PrivateKey.from_private_bytes(signing_seed(WEBHOOK_SECRET)).public_key()
        raw = derived.public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert published == base64.urlsafe_b64encode(raw).decode()


async def test_a_status_answer_says_how_many_reads_it_took_at_the_provider(r: Rig) -> None:
    """What a read budget pays for an answer: the simulator counts each status call it answers
    (fal's end takes two, its status and then its result)."""
    submitted = await r.provider.submit(r.http, order(r.case, 1))
    state = r.sim.states[r.case.kind]
    async with asyncio.timeout(10):
        while True:
            before = state.stats()["status_calls"]
            status = await r.provider.status(r.http, submitted.provider_job_id)
            assert status.reads == state.stats()["status_calls"] - before, (r.case.kind, status)
            if status.state == "completed":
                break
            await asyncio.sleep(0.02)


async def test_a_status_call_past_the_read_limit_is_rate_limited_in_every_dialect() -> None:
    for case in CASES.values():
        async for r in rig(case, status_rate_per_second=1.0):
            job = await r.provider.submit(r.http, order(case, 1))
            await r.provider.status(r.http, job.provider_job_id)
            with pytest.raises(RateLimited) as caught:
                await r.provider.status(r.http, job.provider_job_id)
            assert caught.value.status == 429, case.kind
            if case.retry_after:
                assert caught.value.retry_after is not None and caught.value.retry_after >= 1, case.kind


# -- fal: apps of more than two segments, restarts, ids of earlier releases -----------------------

WORKFLOW = "workflows/acme/video-pipeline"  # a namespaced app: three segments, as fal's clients read it


def fal_connector(r: Rig) -> VideoProvider:
    """Another fal connector on the same queue: what a restarted worker has, the provider job id aside."""
    made = create("fal", name="fal", **CASES["fal"].connection(f"{r.sim.url}/fal"))
    assert isinstance(made, VideoProvider)
    return made


async def test_a_three_segment_fal_app_runs_is_followed_after_a_restart_and_tells_its_end() -> None:
    case = CASES["fal"]
    async for r in rig(case):
        submitted = await r.provider.submit(r.http, order(case, 1, r.hooks.url, model=f"{WORKFLOW}/fast"))
        assert submitted.provider_job_id.rpartition("/")[0] == WORKFLOW
        done = await until_state(r, submitted.provider_job_id, "completed")
        restarted = await fal_connector(r).status(r.http, submitted.provider_job_id)
        assert (restarted.state, restarted.video_url) == ("completed", done.video_url)
        [got] = await r.hooks.wait_count(1)
        event = await accept(r, got)
        assert (event.job_id, event.provider_job_id, event.state) == ("job_0001", submitted.provider_job_id,
                                                                      "completed")
        # The stand-in serves a request only under its app, as fal does: not under its first two segments.
        request_id = submitted.provider_job_id.rpartition("/")[2]
        async with r.http.get(f"{r.sim.url}/fal/workflows/acme/requests/{request_id}/status",
                              headers={"Authorization": "Key fal_key"}) as resp:
            assert resp.status == 404


async def test_a_restarted_connector_cancels_a_three_segment_fal_app() -> None:
    case = CASES["fal"]
    async for r in rig(case, render_time=Distribution("fixed", seconds=30)):
        submitted = await r.provider.submit(r.http, order(case, 2, model=WORKFLOW))
        await fal_connector(r).cancel(r.http, submitted.provider_job_id)
        assert sim_job(r, submitted.provider_job_id).status == "cancelled"


async def test_a_fal_id_written_by_an_earlier_release_still_works() -> None:
    """``{owner}/{app}/{request_id}``, as found on Kafka records and tables after an upgrade."""
    case = CASES["fal"]
    async for r in rig(case, render_time=Distribution("fixed", seconds=30)):
        await r.provider.submit(r.http, order(case, 3))
        [request_id] = r.sim.states["fal"].jobs
        old = f"fal-ai/video-model/{request_id}"
        restarted = fal_connector(r)
        assert (await restarted.status(r.http, old)).provider_job_id == old
        await restarted.cancel(r.http, old)
        assert sim_job(r, old).status == "cancelled"


async def test_fals_returned_urls_are_followed_where_they_differ_from_the_app_foreseen(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Were fal's namespaces unknown to the connector, it would foresee ``workflows/acme``; fal's
    URLs say ``workflows/acme/video-pipeline``, and they are what status and a restart follow."""
    monkeypatch.setattr(fal_connector_module, "NAMESPACES", ())
    case = CASES["fal"]
    async for r in rig(case):
        submitted = await r.provider.submit(r.http, order(case, 4, model=f"{WORKFLOW}/fast"))
        assert submitted.provider_job_id.rpartition("/")[0] == WORKFLOW
        await until_state(r, submitted.provider_job_id, "completed")
        assert (await fal_connector(r).status(r.http, submitted.provider_job_id)).state == "completed"



def fal_blind_to_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """The connector as it would be before it knew fal's namespaces: it foresees ``workflows/acme``
    for ``WORKFLOW``'s models, while the stand-in, as fal, queues them on ``WORKFLOW``."""
    monkeypatch.setattr(fal_connector_module, "NAMESPACES", ())


def webhook_of(got: list[Delivery], job_id: str) -> Delivery:
    [mine] = [d for d in got if d.callback.startswith(f"{job_id}/")]
    return mine


async def test_the_first_fal_job_on_an_app_not_foreseen_is_the_same_job_to_submission_and_webhook(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its callback path was fixed before fal named the app, and fal's webhook names none: the
    webhook names the job under the app foreseen, its submission under fal's. The connector says
    both name one job (by fal's request id), which is how the bridge's release frees its slot."""
    fal_blind_to_namespaces(monkeypatch)
    case = CASES["fal"]
    async for r in rig(case):
        submitted = await r.provider.submit(r.http, order(case, 1, r.hooks.url, model=f"{WORKFLOW}/fast"))
        event = await accept(r, webhook_of(await r.hooks.wait_count(1), "job_0001"))
        assert (event.job_id, event.state) == ("job_0001", "completed")
        assert same_provider_job(r.provider, event.provider_job_id, submitted.provider_job_id)


async def test_a_fal_job_on_an_app_not_foreseen_is_named_alike_by_submission_and_webhook_once_fal_named_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Once fal's URLs have named the model's app, the callback path of its later requests names
    that app (their webhooks name the job as the slot does, and an ``OK`` without its output reads
    the result there), and status, result and cancel, by a restarted connector too, go where fal's
    URLs said."""
    fal_blind_to_namespaces(monkeypatch)
    case = CASES["fal"]
    model = f"{WORKFLOW}/fast"
    async for r in rig(case):
        first = await r.provider.submit(r.http, order(case, 1, r.hooks.url, model=model))
        await r.hooks.wait_count(1)
        second = await r.provider.submit(r.http, order(case, 2, r.hooks.url, model=model))
        assert [j.provider_job_id.rpartition("/")[0] for j in (first, second)] == [WORKFLOW, WORKFLOW]
        event = await accept(r, webhook_of(await r.hooks.wait_count(2), "job_0002"))
        assert (event.job_id, event.provider_job_id, event.state) == ("job_0002", second.provider_job_id,
                                                                      "completed")
        restarted = await fal_connector(r).status(r.http, second.provider_job_id)  # its status, then its result
        assert (restarted.state, restarted.video_url) == ("completed", event.video_url)
    async for r in rig(case, render_time=Distribution("fixed", seconds=30)):
        await r.provider.submit(r.http, order(case, 3, r.hooks.url, model=model))
        slow = await r.provider.submit(r.http, order(case, 4, r.hooks.url, model=model))
        assert callback_path(r, slow.provider_job_id).endswith(f"/{WORKFLOW}")
        await fal_connector(r).cancel(r.http, slow.provider_job_id)
        assert sim_job(r, slow.provider_job_id).status == "cancelled"


# -- Kling: duration is a string --------------------------------------------------------------------

async def test_the_kling_stand_in_refuses_a_duration_that_is_not_a_string() -> None:
    case = CASES["kling"]
    async for r in rig(case):
        headers = {"Authorization": f"Bearer {kling_token('ak_test', DEV_JWT_SECRET, time.time())}"}
        for duration, status in ((5, 422), ("5", 200)):
            body = {"model_name": "kling-v2-1", "prompt": "dunes", "duration": duration}
            async with r.http.post(f"{r.sim.url}/kling/v1/videos/text2video", json=body, headers=headers) as resp:
                answer = await resp.json()
                assert (resp.status, answer["code"]) == (status, 1201 if status == 422 else 0), duration
