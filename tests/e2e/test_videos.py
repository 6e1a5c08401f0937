"""Videos kept in our own store, on the running stack with the simulator: a job completes, GET
shows our signed link (never the provider's URL), the link serves the provider's bytes once the
copier has them, and a forged or expired link is refused. Run twice: on the local directory
store, and on a real local S3-compatible server (moto's server mode).

The worker of this stack refuses private URLs (the API and copier allow loopback, where the
simulator serves its files), so a JSON line whose image_url points at the metadata service is
dead-lettered at Kafka admission."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
import pytest

from connectors.storage.local import RECORD_ATTR
from floodgate import codec
from floodgate.devstack import Stack
from floodgate.ids import new_job_id
from tests.e2e.stack_util import get_job, make_stack, simulator_config, submit, until
from tests.helpers import moto_s3, scrape, value
from tests.kafka_util import consume_until, produce, unique_name

pytestmark = pytest.mark.kafka

LINK_TTL = 4.0  # seconds: long enough to fetch a fresh link, short enough to watch one expire
COLD_START = 0.5  # seconds before an idle model's first frame at the simulator


# The S3 store on the whole stack is in the slow tier (a second stack); the default tier runs the
# S3 store against the same moto server through the API in tests/integration/test_videos.py.
@pytest.fixture(scope="module", params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def stack(request: pytest.FixtureRequest, kafka_bootstrap: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp(f"videos-{request.param}")
    with contextlib.ExitStack() as stop:
        store_env = {}
        if request.param == "s3":
            store_env = stop.enter_context(moto_s3(unique_name("e2e-videos").replace(".", "-").replace("_", "-")))
        sim = simulator_config(home / "sim.json", cold_start=COLD_START)
        s = make_stack(kafka_bootstrap, home, sim_config=sim, workers=0)
        s.extra_env.update({**store_env, "FLOODGATE_VIDEO_LINK_TTL": str(LINK_TTL)})
        stop.enter_context(s)
        # Only the worker refuses private URLs: Kafka admission is its business.
        s.extra_env["FLOODGATE_ALLOW_PRIVATE_WEBHOOKS"] = "0"
        s.start_worker(0)
        yield s


def provider_video_url(stack: Stack, job_id: str) -> str:
    results = consume_until(stack.bootstrap, stack.settings.topic("results"),
                            lambda ms: any(m.key() == job_id.encode() for m in ms), timeout=60)
    snap = next(codec.decode("JobSnapshot", m.value(), m.headers()) for m in results if m.key() == job_id.encode())
    return str(snap["video_url"])


def stored_record(stack: Stack, job_id: str) -> bytes:
    """The store's record of the job, read behind the API's back (where the store says it is)."""
    env = stack.extra_env
    if env.get("FLOODGATE_VIDEO_STORE") == "s3":
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["FLOODGATE_VIDEO_S3_ENDPOINT"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=env["FLOODGATE_VIDEO_S3_BUCKET"])["Contents"]}
        assert f"videos/{job_id}" in keys
        record = s3.get_object(Bucket=env["FLOODGATE_VIDEO_S3_BUCKET"], Key=f"records/{job_id}.json")
        body: bytes = record["Body"].read()
        return body
    directory = stack.settings.with_overrides(cache_dir=stack.home / "cache").video_dir_path
    assert (directory / f"{job_id}.video").is_file()
    assert not (directory / f"{job_id}.json").exists()  # one file: the record is the video's attribute
    return os.getxattr(directory / f"{job_id}.video", RECORD_ATTR)


async def test_a_completed_job_links_to_its_stored_video(stack: Stack) -> None:
    api = stack.api_url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        accepted = await submit(http, api, {"model": "wan-2.6", "user_id": "u1", "input": {"prompt": "tides"}})
        job_id, token = accepted["job_id"], accepted["token"]

        async def completed() -> dict | None:
            job = await get_job(http, api, job_id, token)
            return job if job["status"] == "completed" else None

        job = await until(completed, timeout=60, what="the job to complete")
        done_at = time.monotonic()
        link = job["result"]["video_url"]
        assert link.startswith(f"{api}/v1/videos/{job_id}?expires=") and "&sig=" in link
        original = provider_video_url(stack, job_id)
        assert not original.startswith(f"{api}/v1/videos/")
        async with http.get(original) as resp:
            expected = await resp.read()

        async def served() -> bytes | None:
            fresh = (await get_job(http, api, job_id, token))["result"]["video_url"]
            async with http.get(fresh, allow_redirects=False) as resp:
                if resp.status == 307:  # still being copied: meanwhile the link leads to the provider's copy
                    assert resp.headers["Location"] == original
                    return None
                if resp.status == 503:  # still being copied, and no provider copy known here: when to come back
                    assert resp.headers["Retry-After"] and resp.content_type == "application/problem+json"
                    return None
                assert resp.status == 200, (resp.status, await resp.text())
                return await resp.read()

        body = await until(served, timeout=30, what="the stored video", interval=0.1)
        copied_in = time.monotonic() - done_at
        assert body == expected and hashlib.sha256(body).hexdigest() == hashlib.sha256(expected).hexdigest()
        kind = stack.extra_env.get("FLOODGATE_VIDEO_STORE", "local")
        print(f"video served from our {kind} store {copied_in:.3f}s after the job read completed")
        record = orjson.loads(await asyncio.to_thread(stored_record, stack, job_id))
        assert (record["status"], record["size"], record["sha256"]) == (
            "stored", len(expected), hashlib.sha256(expected).hexdigest())

        # Forged: a signature changed in one character; another job's id under this signature.
        query = {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}
        sig = query["sig"]
        forged = link.replace(sig, ("A" if sig[0] != "A" else "B") + sig[1:])
        other = link.replace(job_id, new_job_id())
        for bad in (forged, other):
            async with http.get(bad) as resp:
                assert resp.status == 403 and resp.content_type == "application/problem+json"

        # Expired: the first link, once its time has passed (LINK_TTL after the read that made it).
        async def refused_as_expired() -> bool:
            async with http.get(link) as resp:
                if resp.status == 200:
                    return False
                assert resp.status == 403
                return "expired" in (await resp.json())["detail"]

        assert await until(refused_as_expired, timeout=LINK_TTL + 20, what="the link to expire", interval=0.5)


async def test_a_private_image_url_on_kafka_is_dead_lettered_at_admission(stack: Stack) -> None:
    job_id, good_id = new_job_id(), new_job_id()
    line = orjson.dumps({"job_id": job_id, "model": "wan-2.6", "user_id": "eve",
                         "input": {"prompt": "x", "image_url": "http://169.254.169.254/latest/meta-data"}})
    good = orjson.dumps({"job_id": good_id, "model": "wan-2.6", "user_id": "eve",
                         "input": {"prompt": "x", "image_url": "https://img.example/cat.png"}})
    topic = stack.settings.topic("requests")
    await asyncio.to_thread(produce, stack.bootstrap, topic, [(job_id.encode(), line), (good_id.encode(), good)])

    def letters(ms: list) -> list[dict]:
        return [codec.decode("DeadLetter", m.value(), m.headers()) for m in ms]

    dead = await asyncio.to_thread(consume_until, stack.bootstrap, stack.settings.topic("dlq"),
                                   lambda ms: any(x["original"] == line for x in letters(ms)), timeout=60)
    letter = next(x for x in letters(dead) if x["original"] == line)
    assert "input.image_url" in letter["reason"] and "private" in letter["reason"]
    # The public one was admitted: it reaches the results topic (the simulator never fetches it).
    results = await asyncio.to_thread(consume_until, stack.bootstrap, stack.settings.topic("results"),
                                      lambda ms: any(m.key() == good_id.encode() for m in ms), timeout=60)
    assert any(m.key() == good_id.encode() for m in results)
    assert not any(x["original"] == good for x in letters(dead))


async def test_a_cold_start_shows_in_the_time_to_first_progress(stack: Stack) -> None:
    # kling-2.1 is used by no other test here: its first job finds the model cold.
    api = stack.api_url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        accepted = await submit(http, api, {"model": "kling-2.1", "user_id": "u1", "input": {"prompt": "dunes"}})

        async def completed() -> bool:
            return (await get_job(http, api, accepted["job_id"], accepted["token"]))["status"] == "completed"

        await until(completed, timeout=60, what="the job to complete")
        metrics = stack.metrics_urls["worker-0"]

        async def observed() -> dict | None:
            got = await scrape(http, metrics)
            labels = {"provider": "kling", "model": "kling-2.1"}
            counts = [value(got, f"floodgate_time_to_{m}_seconds_count", **labels)
                      for m in ("first_progress", "completion")]
            if counts != [1.0, 1.0]:
                return None
            return {m: value(got, f"floodgate_time_to_{m}_seconds_sum", **labels)
                    for m in ("first_progress", "completion")}

        sums = await until(observed, timeout=30, what="the milestones in the worker's metrics")
    # Renders take 20-80 ms here: a first progress past the cold start can only be the cold start.
    assert COLD_START <= sums["first_progress"] <= sums["completion"] < 30
