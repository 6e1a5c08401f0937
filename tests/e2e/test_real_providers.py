"""Each real-provider connector on the running stack, against the simulator speaking that
provider's dialect: a job with params completes through its webhooks (or polling), a forged or
stale signature is refused at the bridge (an unsigned callback is not believed without a status
call), cancel reaches the provider, 429s are retried and an outage moves jobs to the fallback.

One stack serves every provider: the simulator plays each one (limit 2, while Floodgate's
routing file allows 6, so 429s happen) plus ``wan``, the fallback in the simulator's own dialect,
and ``falq``, fal with one runner and a queue of its own (fal's limit counts running jobs only),
where a submitted job shows its place in fal's queue as it moves up, and when it should run.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from standardwebhooks.webhooks import Webhook

from connectors.providers import callback
from connectors.simulator.config import DEV_JWT_SECRET, DEV_WEBHOOK_SECRET
from connectors.simulator.dialects.fal import signing_seed
from floodgate.devstack import Stack
from floodgate.provider_config import DEV_WEBHOOK_SECRET_REF
from tests.e2e.stack_util import get_job, make_stack, submit, until

pytestmark = pytest.mark.kafka

CALLBACK_SECRET = "e2e-callback-secret-0123456789"
SIM_LIMIT, OUR_LIMIT = 2, 6
FALQ_JOBS = 5  # falq renders one at a time and queues the rest: places 0 to 3


@dataclass(frozen=True)
class Case:
    kind: str
    provider_model: str
    connection: dict[str, Any]
    sim: dict[str, Any] = field(default_factory=dict)
    signed: bool = True
    cancels: bool = True


def _base(kind: str) -> str:
    return f"env:FLOODGATE_SIMULATOR_URL/{kind}"


CASES = {
    "runway": Case("runway", "gen4_turbo", {"base_url": _base("runway"), "api_key": "env:E2E_PROVIDER_KEY"},
                   sim={"queue_over_limit": 1}),
    "kling": Case("kling", "kling-v2-1", {
        "base_url": _base("kling"), "access_key": "env:E2E_PROVIDER_KEY", "secret_key": "env:E2E_KLING_SECRET",
        "callback_secret": "env:E2E_CALLBACK_SECRET"}, signed=False, cancels=False),
    "runpod": Case("runpod", "ep-video", {
        "base_url": _base("runpod"), "api_key": "env:E2E_PROVIDER_KEY", "callback_secret": "env:E2E_CALLBACK_SECRET"},
        signed=False),
    "wavespeed": Case("wavespeed", "wavespeed-ai/wan-2.1/t2v-480p", {
        "base_url": _base("wavespeed"), "api_key": "env:E2E_PROVIDER_KEY", "webhook_secret": DEV_WEBHOOK_SECRET_REF,
        "callback_secret": "env:E2E_CALLBACK_SECRET"}),
    "fal": Case("fal", "fal-ai/video/v2/text-to-video", {
        "base_url": _base("fal"), "api_key": "env:E2E_PROVIDER_KEY", "callback_secret": "env:E2E_CALLBACK_SECRET",
        "jwks_url": _base("fal") + "/.well-known/jwks.json"}, sim={"queue_over_limit": 1}),
    "replicate": Case("replicate", "acme/video", {
        "base_url": _base("replicate"), "api_token": "env:E2E_PROVIDER_KEY", "webhook_secret": DEV_WEBHOOK_SECRET_REF,
        "callback_secret": "env:E2E_CALLBACK_SECRET"}),
}


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("providers")
    timing = {"render_time": {"kind": "uniform", "min": 0.8, "max": 1.0}, "queue_delay": 0.02}
    sim = {"providers": {"wan": {"concurrency_limit": 10, **timing},
                         **{k: {"concurrency_limit": SIM_LIMIT, "dialect": k, **timing, **c.sim}
                            for k, c in CASES.items()},
                         "falq": {"concurrency_limit": 1, "dialect": "fal", "queue_over_limit": FALQ_JOBS,
                                  "render_time": {"kind": "uniform", "min": 1.2, "max": 1.5}, "queue_delay": 0.02}},
           "seed": 3}
    (home / "sim.json").write_text(json.dumps(sim))
    wan = {"base_url": "env:FLOODGATE_SIMULATOR_URL", "api_key": "k", "webhook_secret": DEV_WEBHOOK_SECRET_REF}
    routes: dict[str, Any] = {}
    for kind, case in CASES.items():
        first = {"provider": kind, "provider_model": case.provider_model}
        routes[f"{kind}-video"] = [first]
        routes[f"{kind}-fallback"] = [first, {"provider": "wan", "provider_model": "wan-2.6"}]
    falq = {**CASES["fal"].connection, "base_url": _base("falq"), "jwks_url": _base("falq") + "/.well-known/jwks.json"}
    routes["falq-video"] = [{"provider": "falq", "provider_model": CASES["fal"].provider_model}]
    (home / "routes.json").write_text(json.dumps({
        "providers": {"wan": {"kind": "simulator", "concurrency_limit": 10, "connection": wan},
                      **{k: {"kind": k, "concurrency_limit": OUR_LIMIT, "connection": c.connection}
                         for k, c in CASES.items()},
                      # Room for every falq job in either dispatch partition's share of the limit
                      # (the stack has two), so all of them reach fal and queue there at once.
                      "falq": {"kind": "fal", "concurrency_limit": 2 * FALQ_JOBS, "connection": falq}},
        "routes": routes}))
    made = make_stack(kafka_bootstrap, home, sim_config=home / "sim.json", routing_file=str(home / "routes.json"),
                      poll_after=3.0, provider_status_poll=0.2)
    made.extra_env.update({"E2E_PROVIDER_KEY": "provider-key", "E2E_CALLBACK_SECRET": CALLBACK_SECRET,
                           "E2E_KLING_SECRET": DEV_JWT_SECRET})
    with made as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def job_body(model: str, **params: str) -> dict[str, Any]:
    return {"model": model, "user_id": "u-providers", "input": {"prompt": "a lighthouse", "params": params}}


async def wait_status(session: aiohttp.ClientSession, stack: Stack, job: dict[str, Any], wanted: set[str],
                      timeout: float = 60, interval: float = 0.2) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        found = await get_job(session, stack.api_url, job["job_id"], job["token"])
        return found if found["status"] in wanted else None

    return await until(check, timeout=timeout, interval=interval, what=f"{job['job_id']} to be {wanted}")


async def sim_jobs(session: aiohttp.ClientSession, stack: Stack, provider: str) -> list[dict[str, Any]]:
    async with session.get(f"{stack.simulator_url}/_admin/{provider}/jobs") as resp:
        return list((await resp.json())["jobs"])


async def sim_stats(session: aiohttp.ClientSession, stack: Stack, provider: str) -> dict[str, Any]:
    async with session.get(f"{stack.simulator_url}/stats") as resp:
        return dict((await resp.json())["providers"][provider])


async def outage(session: aiohttp.ClientSession, stack: Stack, provider: str, seconds: float) -> None:
    async with session.post(f"{stack.simulator_url}/_admin/{provider}/outage", json={"seconds": seconds}) as resp:
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_a_job_completes_with_its_params(stack: Stack, session: aiohttp.ClientSession, kind: str) -> None:
    job = await submit(session, stack.api_url, job_body(f"{kind}-video", duration="10", seed="7"))
    done = await wait_status(session, stack, job, {"completed", "failed", "cancelled"})
    assert done["status"] == "completed", done
    # The provider's video (a file of its dialect) was copied into Floodgate's store: the job links
    # to our copy, which serves it.
    link = done["result"]["video_url"]
    assert done["provider"] == kind and f"/v1/videos/{job['job_id']}?" in link, link
    assert await stored_video(session, link)
    mine = [j for j in await sim_jobs(session, stack, kind) if j["prompt"] == "a lighthouse"]
    assert any({k: str(v) for k, v in j["params"].items()}.items() >= {"duration": "10", "seed": "7"}.items()
               for j in mine), mine


async def stored_video(session: aiohttp.ClientSession, link: str, timeout: float = 30.0) -> bytes:
    """The bytes behind a stored-video link, once the copy is there (until then a redirect to the
    provider's copy, or 503 + Retry-After where that is not known)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with session.get(link, allow_redirects=False) as resp:
            if resp.status == 200:
                return await resp.read()
            assert resp.status in (307, 503), (resp.status, await resp.text())
            assert asyncio.get_running_loop().time() < deadline, "the video was never stored"
            await asyncio.sleep(min(float(resp.headers.get("Retry-After", "1")), 0.2))  # polling the API: its own pace


# Slow tier (about 35 s for the six): each connector's 429 and 503 mapping is checked in
# tests/integration/test_provider_dialects.py in well under a second, and the pipeline's handling of
# them in tests/e2e/test_provider_faults.py; these two run the same per provider on the stack.
@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CASES))
async def test_429s_are_retried_until_every_job_completes(stack: Stack, session: aiohttp.ClientSession,
                                                          kind: str) -> None:
    before = (await sim_stats(session, stack, kind))["rejected_429"]
    jobs = [await submit(session, stack.api_url, job_body(f"{kind}-video")) for _ in range(6 + CASES[kind].sim.get(
        "queue_over_limit", 0))]
    for job in jobs:
        assert (await wait_status(session, stack, job, {"completed", "failed"}, timeout=90))["status"] == "completed"
    assert (await sim_stats(session, stack, kind))["rejected_429"] > before, "the test must provoke 429s"


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_cancel_reaches_the_provider(stack: Stack, session: aiohttp.ClientSession, kind: str) -> None:
    job = await submit(session, stack.api_url, job_body(f"{kind}-video", tag=f"cancel-{kind}"))
    found = await wait_status(session, stack, job, {"submitted", "running", "completed"}, interval=0.05)
    assert found["status"] != "completed", "the render must outlast the cancel"
    async with session.post(f"{stack.api_url}/v1/jobs/{job['job_id']}/cancel",
                            headers={"Authorization": f"Bearer {job['token']}"}) as resp:
        assert resp.status == 202, await resp.text()
    assert (await wait_status(session, stack, job, {"cancelled", "completed"}))["status"] == "cancelled"
    if not CASES[kind].cancels:
        # The provider has no cancel: Floodgate's job is cancelled and its slot freed; the render runs on.
        mine = [j for j in await sim_jobs(session, stack, kind) if j["params"].get("tag") == f"cancel-{kind}"]
        assert mine and mine[0]["status"] != "cancelled"
        return

    async def at_provider() -> str | None:
        mine = [j for j in await sim_jobs(session, stack, kind) if j["params"].get("tag") == f"cancel-{kind}"]
        return mine[0]["status"] if mine and mine[0]["status"] == "cancelled" else None

    await until(at_provider, timeout=15, what=f"the {kind} job to be cancelled at the provider")


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CASES))
async def test_an_outage_moves_jobs_to_the_fallback(stack: Stack, session: aiohttp.ClientSession, kind: str) -> None:
    await outage(session, stack, kind, 300)
    try:
        job = await submit(session, stack.api_url, job_body(f"{kind}-fallback"))
        done = await wait_status(session, stack, job, {"completed", "failed"})
    finally:
        await outage(session, stack, kind, 0)
    assert done["status"] == "completed" and done["provider"] == "wan", done
    assert (await sim_stats(session, stack, kind))["outage_rejections"] > 0


def callback_path(kind: str, job_id: str) -> str:
    """The per-job path Floodgate gives ``kind`` for ``job_id`` (fal and RunPod add their app/endpoint)."""
    model = CASES[kind].provider_model
    extra = {"fal": "/".join(model.split("/")[:2]), "runpod": model, "kling": "text2video"}.get(kind, "")
    return f"{job_id}/{callback.mac(CALLBACK_SECRET, kind, job_id, extra)}" + (f"/{extra}" if extra else "")


def _forgeries(kind: str, job_id: str) -> list[tuple[str, dict[str, str], bytes]]:
    """(why, headers, body) of deliveries the bridge must refuse for a provider that signs."""
    body = json.dumps({"id": "p_forged", "status": "succeeded", "output": "https://evil.test/x.mp4"}).encode()
    now = int(time.time())
    if kind == "fal":
        body = json.dumps({"request_id": "r_forged", "status": "OK",
                           "payload": {"video": {"url": "https://evil.test/x.mp4"}}}).encode()

        def ed25519(key: Ed25519PrivateKey, ts: int) -> dict[str, str]:
            message = f"r_forged\nuser_x\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()
            return {"x-fal-webhook-request-id": "r_forged", "x-fal-webhook-user-id": "user_x",
                    "x-fal-webhook-timestamp": str(ts), "x-fal-webhook-signature": key.sign(message).hex()}

        # The simulated fal's key comes from its webhook secret: a stale signature by the right key.
        sim_key = Ed25519PrivateKey.from_private_bytes(signing_seed(DEV_WEBHOOK_SECRET))
        return [("forged", ed25519(Ed25519PrivateKey.generate(), now), body),
                ("stale", ed25519(sim_key, now - 600), body), ("unsigned", {}, body)]
    if kind == "replicate":
        def signed(secret: str, ts: int) -> dict[str, str]:
            sig = Webhook(secret).sign("msg_forged", datetime.fromtimestamp(ts, UTC), body.decode())
            return {"webhook-id": "msg_forged", "webhook-timestamp": str(ts), "webhook-signature": sig}

        other = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
        return [("forged", signed(other, now), body), ("stale", signed(DEV_WEBHOOK_SECRET, now - 600), body),
                ("unsigned", {}, body)]
    if kind == "wavespeed":
        def v3(secret: str, ts: int) -> dict[str, str]:
            key = secret.removeprefix("whsec_").encode()
            digest = hmac.new(key, f"wh_forged.{ts}.".encode() + body, hashlib.sha256).hexdigest()
            return {"webhook-id": "wh_forged", "webhook-timestamp": str(ts), "webhook-signature": f"v3,{digest}"}

        forged_body = json.dumps({"id": "p_forged", "status": "completed", "outputs": ["https://evil.test/x.mp4"]})
        body = forged_body.encode()
        return [("forged", v3("whsec_not-the-secret", now), body), ("stale", v3(DEV_WEBHOOK_SECRET, now - 600), body),
                ("unsigned", {}, body)]
    if kind == "runway":  # no webhooks at all: whatever arrives is refused
        return [("no webhooks", {}, json.dumps({"id": "t", "status": "SUCCEEDED", "output": ["https://evil.test"]})
                 .encode())]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", sorted(k for k, c in CASES.items() if c.signed))
async def test_forged_or_stale_signatures_are_refused_at_the_bridge(stack: Stack, session: aiohttp.ClientSession,
                                                                    kind: str) -> None:
    job = await submit(session, stack.api_url, job_body(f"{kind}-video"))
    path = callback_path(kind, job["job_id"])
    for why, headers, body in _forgeries(kind, job["job_id"]):
        async with session.post(f"{stack.api_url}/webhooks/{kind}/{path}", data=body,
                                headers={"content-type": "application/json", **headers}) as resp:
            assert resp.status == 401, (why, resp.status, await resp.text())
    done = await wait_status(session, stack, job, {"completed", "failed"})
    assert done["status"] == "completed" and "evil.test" not in done["result"]["video_url"]


def _claim(kind: str, provider_job_id: str) -> bytes:
    if kind == "runpod":
        return json.dumps({"id": provider_job_id, "status": "COMPLETED",
                           "output": {"video_url": "https://evil.test/x.mp4"}}).encode()
    return json.dumps({"task_id": provider_job_id, "task_status": "succeed",
                       "task_result": {"videos": [{"id": "v", "url": "https://evil.test/x.mp4"}]}}).encode()


@pytest.mark.parametrize("kind", sorted(k for k, c in CASES.items() if not c.signed))
async def test_an_unsigned_callback_is_not_believed_without_a_status_call(stack: Stack, session: aiohttp.ClientSession,
                                                                          kind: str) -> None:
    job = await submit(session, stack.api_url, job_body(f"{kind}-video", tag=f"claim-{kind}"))
    await wait_status(session, stack, job, {"submitted", "running"}, interval=0.05)
    mine = [j for j in await sim_jobs(session, stack, kind) if j["params"].get("tag") == f"claim-{kind}"]
    assert len(mine) == 1 and mine[0]["status"] in ("queued", "in_progress"), mine
    url = f"{stack.api_url}/webhooks/{kind}/{callback_path(kind, job['job_id'])}"
    # A claim about a job the provider does not know is refused outright.
    async with session.post(url, data=_claim(kind, "no-such-job")) as resp:
        assert resp.status == 401, await resp.text()
    # A claim of completion for a job still rendering is stored as what the provider says: not done.
    async with session.post(url, data=_claim(kind, mine[0]["id"])) as resp:
        assert resp.status == 200, await resp.text()
    early = await get_job(session, stack.api_url, job["job_id"], job["token"])
    assert early["status"] != "completed" or "evil.test" not in early["result"]["video_url"]
    done = await wait_status(session, stack, job, {"completed", "failed"})
    assert done["status"] == "completed" and "evil.test" not in done["result"]["video_url"], done


async def test_a_job_waiting_in_the_providers_own_queue_shows_its_place_and_when_it_should_run(
        stack: Stack, session: aiohttp.ClientSession) -> None:
    """fal counts only running jobs against its limit, so Floodgate's slots let it queue the rest,
    and it sends no webhook until a job ends: the place comes from following its status."""
    jobs = await asyncio.gather(*(submit(session, stack.api_url, job_body("falq-video", tag=f"falq-{i}"))
                                  for i in range(FALQ_JOBS)))
    seen: dict[str, list[tuple[str, int | None]]] = {job["job_id"]: [] for job in jobs}
    etas: dict[str, list[tuple[float, float, float | None]]] = {job["job_id"]: [] for job in jobs}
    """Per job, (when: wall clock, eta_seconds, eta_ready_seconds) of each answer while it waited in
    fal's queue."""

    async def all_done() -> bool | None:
        states = await asyncio.gather(*(get_job(session, stack.api_url, j["job_id"], j["token"]) for j in jobs))
        now = time.time()  # the simulator's clock: it says when each render started
        for found in states:
            step = (found["status"], found["provider_queue_position"])
            if not seen[found["job_id"]] or seen[found["job_id"]][-1] != step:
                seen[found["job_id"]].append(step)
            if found["provider_queue_position"] is not None and found["eta_seconds"] is not None:
                etas[found["job_id"]].append((now, found["eta_seconds"], found["eta_ready_seconds"]))
        return all(found["status"] == "completed" for found in states) or None

    await until(all_done, timeout=60, interval=0.05, what="the falq jobs to complete")
    places = {job_id: [p for _, p in steps if p is not None] for job_id, steps in seen.items()}
    assert max(max(p, default=-1) for p in places.values()) >= 1, seen  # someone waited behind another
    for job_id, steps in seen.items():
        assert all(status == "submitted" for status, place in steps if place is not None), steps
        assert places[job_id] == sorted(places[job_id], reverse=True), f"a place only moves up: {steps}"
        assert steps[-1] == ("completed", None), steps
    waited = [steps for job_id, steps in seen.items() if places[job_id]]
    # fal says nothing until the end: the start of each job that waited is known from its status.
    assert all(any(status == "running" for status, _ in steps) for steps in waited), seen
    # Once fal's queue was seen to move, a job still waiting in it was told when it should run
    # (falq runs one render of 1.2-1.5 s at a time). Once a render has been seen to end (the
    # answer's eta_ready_seconds is known), the first such ETA of each job lands within about a
    # render's time of its actual start at fal, as the simulator tells it (what Floodgate's own
    # answers say of the start lags it by a status call, and by more on a loaded machine); its
    # video is due after that. (The first moves, which do not count, include the idle runner
    # picking up the first job: every job behind it moves a place within milliseconds. Counted,
    # they made the pace twice too fast: in one CI run a job was told 0.9 s for a start 2.7 s
    # away.)
    tags = {job["job_id"]: f"falq-{i}" for i, job in enumerate(jobs)}
    started = {sim["params"].get("tag"): sim["started_at"] for sim in await sim_jobs(session, stack, "falq")}
    told = {job_id: known[0] for job_id, said in etas.items()
            if (known := [s for s in said if s[2] is not None])}
    assert told.keys() == {job_id for job_id, said in etas.items() if said}, etas
    # A job's first move does not count toward the pace, so with one runner the pace is known from
    # the second render's end: then the last two jobs still wait, at places 0 and 1.
    assert len(told) >= 2, etas
    for job_id, (at, eta, _) in told.items():
        start = started[tags[job_id]]
        assert start is not None and abs(at + eta - start) <= 1.5, (job_id, eta, start - at, etas[job_id])
    readies = [(eta, ready) for said in etas.values() for _, eta, ready in said]
    assert any(ready is not None for _, ready in readies) and all(ready is None or ready > eta
                                                                  for eta, ready in readies), etas


@pytest.mark.parametrize("kind", ["fal", "runpod", "runway", "wavespeed"])
async def test_a_job_at_a_provider_that_calls_back_only_at_the_end_or_never_shows_its_start(
        stack: Stack, session: aiohttp.ClientSession, kind: str) -> None:
    """These providers say nothing while a job waits or renders: their jobs are followed by status
    calls. The renders here end well before the late poll's first look (``poll_after``), so a job
    seen rendering was seen by those calls; Runway's, which never calls back, also its progress."""
    job = await submit(session, stack.api_url, job_body(f"{kind}-video", tag=f"followed-{kind}"))
    seen: list[tuple[str, float]] = []

    async def done() -> bool | None:
        found = await get_job(session, stack.api_url, job["job_id"], job["token"])
        if not seen or seen[-1] != (found["status"], found["progress"]):
            seen.append((found["status"], found["progress"]))
        return found["status"] in ("completed", "failed", "cancelled") or None

    await until(done, timeout=30, interval=0.05, what=f"the {kind} job to end")
    assert seen[-1] == ("completed", 1.0), seen
    assert any(status == "running" for status, _ in seen), seen
    if kind == "runway":
        assert any(status == "running" and 0 < progress < 1 for status, progress in seen), seen
