"""Push to phones on the whole stack: a job submitted over HTTP with a device token runs to
completion on the simulator, and the FCM or APNs stand-in (real servers in this test process;
``tests/push_standins.py``) receives one correctly signed push for it, carrying its result."""
from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import aiohttp
import pytest

from floodgate.settings import Secret
from tests.e2e.stack_util import TERMINAL, get_job, make_stack, simulator_config, submit, until
from tests.push_standins import ApnsStandIn, FcmStandIn, Received, apns_credentials

pytestmark = pytest.mark.kafka

TOPIC = "com.example.floodgate"
FCM_TOKEN = "e2e-device:APA91bE2E"
APNS_TOKEN = "5e" * 32


async def test_a_job_with_a_device_token_ends_in_a_signed_push(kafka_bootstrap: str, tmp_path: Path) -> None:
    fcm, apns = FcmStandIn(), ApnsStandIn(apns_credentials(), topic=TOPIC)
    await fcm.start()
    await apns.start(tmp_path / "ca.pem")
    account = tmp_path / "service-account.json"
    account.write_text(json.dumps(fcm.account))
    stack = make_stack(
        kafka_bootstrap, tmp_path / "stack", sim_config=simulator_config(tmp_path / "sim.json"),
        fcm_service_account=Secret(str(account)), fcm_url=fcm.url,
        apns_key=Secret(apns.credentials.key_pem), apns_key_id=apns.credentials.key_id,
        apns_team_id=apns.credentials.team_id, apns_topic=TOPIC, apns_url=apns.url,
        push_ca_file=str(tmp_path / "ca.pem"))
    # The stand-ins keep serving on this loop while the stack starts in a thread.
    await asyncio.to_thread(stack.start)
    try:
        async with aiohttp.ClientSession() as session:
            jobs = {}
            for platform, token in (("fcm", FCM_TOKEN), ("apns", APNS_TOKEN)):
                accepted = await submit(session, stack.api_url, {
                    "model": "wan-2.6", "user_id": "u1", "input": {"prompt": f"a kite, told by {platform}"},
                    "notify": {"push": {"platform": platform, "token": token}}})
                jobs[platform] = accepted

            async def finished(platform: str) -> dict | None:
                job = await get_job(session, stack.api_url, jobs[platform]["job_id"], jobs[platform]["token"])
                return job if job["status"] in TERMINAL else None

            finals = {p: await until(functools.partial(finished, p), timeout=60, what=f"the {p} job to end")
                      for p in jobs}
            assert all(job["status"] == "completed" for job in finals.values()), finals
            assert all("push" not in job and "notify" not in job for job in finals.values())  # not for readers

            def delivered(log: list[Received]) -> bool:
                return any(r.status == 200 for r in log)

            fcm_log = await fcm.log.wait_for(delivered, timeout=30)
            apns_log = await apns.log.wait_for(delivered, timeout=30)
    finally:
        await asyncio.to_thread(stack.stop)
        await apns.close()
        await fcm.close()

    [fcm_push] = fcm_log  # one push per job: the states before the end are not pushed
    message = fcm_push.body["message"]
    assert fcm_push.status == 200 and message["token"] == FCM_TOKEN
    # The video link is ours (the stored copy), signed when sent: the same video as the job's, its
    # own expiry.
    assert message["data"] == {"job_id": jobs["fcm"]["job_id"], "status": "completed", "type": "job.completed",
                               "video_url": message["data"]["video_url"]}
    assert _video(message["data"]["video_url"]) == _video(finals["fcm"]["result"]["video_url"])
    assert fcm.token_requests == 1 and fcm.refused_assertions == 0

    [apns_push] = apns_log
    assert apns_push.status == 200 and apns_push.token == APNS_TOKEN
    assert apns_push.headers["apns-topic"] == TOPIC and apns_push.headers["apns-collapse-id"] == jobs["apns"]["job_id"]
    assert apns_push.body["status"] == "completed"
    assert _video(apns_push.body["video_url"]) == _video(finals["apns"]["result"]["video_url"])
    assert len(apns.tokens_seen) == 1  # its provider token verified against the .p8 key's public half


def _video(link: str) -> str:
    """A stored video's link without its signature and expiry: which video it names."""
    path, _, query = link.partition("?")
    assert "/v1/videos/" in path and "sig=" in query, f"not a signed link to a stored video: {link}"
    return path
