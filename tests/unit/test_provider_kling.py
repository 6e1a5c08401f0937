"""The Kling connector's pure parts: its JWT, the create request, the documented shapes and codes."""
from __future__ import annotations

from pathlib import Path

import aiohttp
import jwt
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from connectors.providers import SubmitOrder, callback, create
from connectors.providers.base import CALLBACK_HEADER
from connectors.providers.kling import KlingProvider, KlingTask, parse_answer, parse_event, submit_request, token
from floodgate.errors import ProviderRejected, ProviderUnavailable, RateLimited

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "providers"
SECRET_KEY = "kling-secret-key-for-the-unit-tests"
CALLBACK_SECRET = "callback-secret-for-kling-tests"


def test_the_token_is_an_hs256_jwt_from_the_access_key() -> None:
    claims = jwt.decode(token("ak_1", SECRET_KEY, 1_780_000_000), SECRET_KEY, algorithms=["HS256"],
                        options={"verify_exp": False, "verify_nbf": False})
    assert claims == {"iss": "ak_1", "exp": 1_780_001_800, "nbf": 1_779_999_995}


def test_the_token_is_reused_until_near_its_end() -> None:
    now = [1_780_000_000.0]
    p = create("kling", name="kl", access_key="ak", secret_key=SECRET_KEY, callback_secret=CALLBACK_SECRET,
               clock=lambda: now[0])
    assert isinstance(p, KlingProvider)
    first = p._auth()["Authorization"]
    now[0] += 1000
    assert p._auth()["Authorization"] == first
    now[0] += 600
    assert p._auth()["Authorization"] != first


def test_submit_uses_image2video_for_an_image_and_carries_our_idempotency_key() -> None:
    order = SubmitOrder(job_id="job_01", model="kling-v2-1", prompt="dunes", image_url="https://img.test/a.png",
                        webhook_url="https://fg.test/webhooks/kl", idempotency_key="fg-job_01-0",
                        params={"duration": "10", "mode": "pro"})
    cb = callback.callback_url("https://fg.test/webhooks/kl", CALLBACK_SECRET, "kl", "job_01", "image2video")
    request = submit_request("https://kling.test", "tok", order, cb)
    assert request.url == "https://kling.test/v1/videos/image2video"
    # Kling's duration is a string ("5", "10"); other params that read as numbers go as numbers.
    assert orjson.loads(request.body or b"") == {
        "duration": "10", "mode": "pro", "model_name": "kling-v2-1", "prompt": "dunes",
        "external_task_id": "fg-job_01-0", "image": "https://img.test/a.png", "callback_url": cb}


def test_duration_stays_the_string_kling_takes_while_other_numbers_are_numbers() -> None:
    order = SubmitOrder(job_id="job_01", model="kling-v2-1", prompt="dunes", image_url=None, webhook_url=None,
                        idempotency_key="k", params={"duration": "5", "cfg_scale": "0.5", "aspect_ratio": "16:9"})
    body = orjson.loads(submit_request("https://kling.test", "tok", order, None).body or b"")
    assert (body["duration"], body["cfg_scale"], body["aspect_ratio"]) == ("5", 0.5, "16:9")


def test_documented_shapes_parse() -> None:
    created = parse_answer("text2video", (FIXTURES / "kling_submit.json").read_bytes())
    assert (created.provider_job_id, created.state) == ("text2video/CjikY2gHPbcAAAAADnh4sw", "queued")
    path = f"job_01/{callback.mac(CALLBACK_SECRET, 'kl', 'job_01', 'text2video')}/text2video"
    event = parse_event({CALLBACK_HEADER: path}, (FIXTURES / "kling_callback_succeed.json").read_bytes())
    assert (event.job_id, event.state, event.provider_job_id) == ("job_01", "completed",
                                                                  "text2video/CjikY2gHPbcAAAAADnh4sw")
    assert event.video_url == "https://cdn.klingai.test/bs2/upload-kling-api/output.mp4"
    assert event.occurred_at == pytest.approx(1774805191.502)


@pytest.mark.parametrize(("code", "error"), [(1303, RateLimited), (5000, ProviderUnavailable),
                                             (1004, ProviderRejected), (1201, ProviderRejected)])
def test_codes_map_onto_the_error_tree(code: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_answer("text2video", orjson.dumps({"code": code, "message": "no", "request_id": "r"}))


def test_failed_tasks_carry_their_reason() -> None:
    body = orjson.dumps({"code": 0, "data": {"task_id": "t", "task_status": "failed",
                                             "task_status_msg": "content moderation"}})
    got = parse_answer("text2video", body)
    assert (got.state, got.error) == ("failed", "content moderation")
    assert str(KlingTask.parse("image2video/t")) == "image2video/t"


async def _submit_against(status: int, body: dict[str, object], headers: dict[str, str]) -> Exception:
    """What a submit raises when Kling answers ``status`` with ``body`` (a stand-in server)."""
    async def create_task(request: web.Request) -> web.Response:
        return web.json_response(body, status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/videos/text2video", create_task)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        p = create("kling", name="kl", access_key="ak", secret_key=SECRET_KEY, callback_secret=CALLBACK_SECRET,
                   base_url=str(server.make_url("")).rstrip("/"))
        order = SubmitOrder(job_id="job_01", model="kling-v2-1", prompt="dunes", image_url=None, webhook_url=None,
                            idempotency_key="job_01:0", params={})
        with pytest.raises(Exception) as raised:
            await p.submit(session, order)
    return raised.value


@pytest.mark.parametrize("status", [400, 403, 429, 500])
async def test_too_many_parallel_tasks_waits_whatever_http_status_comes_with_it(status: int) -> None:
    """Code 1303 is a wait for one of Kling's slots, never the job's failure (the HTTP status that
    accompanies it is not documented)."""
    error = await _submit_against(status, {"code": 1303, "message": "parallel task over resource pack limit"},
                                  {"Retry-After": "7"})
    assert isinstance(error, RateLimited) and error.retriable
    assert error.retry_after == 7.0 and "1303" in str(error)


async def test_other_refusals_keep_their_http_meaning() -> None:
    rejected = await _submit_against(400, {"code": 1201, "message": "bad params"}, {})
    assert isinstance(rejected, ProviderRejected) and not rejected.retriable
    unavailable = await _submit_against(502, {"code": 5000, "message": "internal"}, {})
    assert isinstance(unavailable, ProviderUnavailable)
    not_json = await _submit_against(400, {"code": "x"}, {})
    assert isinstance(not_json, ProviderRejected)
