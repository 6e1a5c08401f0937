"""413 and 415 problems name what is at fault in their ``errors`` list, as the 400s do (RFC 9457):
``body`` for a body too large, the ``Content-Type`` header for a media type we do not take. Every
edge that answers them, in memory (a fake producer stands in for Kafka)."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from connectors.simulator import DEV_WEBHOOK_SECRET
from floodgate.api.app import build_app
from floodgate.api.bridge import MAX_WEBHOOK_BYTES
from floodgate.api.view import JobView
from floodgate.errors import RecordTooLarge
from floodgate.provider_config import dev_setup
from floodgate.settings import Secret, Settings
from floodgate.signing import signature_headers
from tests.helpers import app_clients

SETUP = dev_setup("http://127.0.0.1:9")
JOB = {"model": "kling-2.1", "user_id": "u1", "input": {"prompt": "a cat"}}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
LIMIT = 200
"""FLOODGATE_MAX_BODY_BYTES here: a job padded past it is still far under aiohttp's own limit, so
the ingress's bounded read is what refuses it."""


class Sender:
    """Records nothing; raises ``refuse`` when set (the broker refusing a record for its size)."""

    def __init__(self) -> None:
        self.refuse: Exception | None = None

    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Any) -> None:
        if self.refuse is not None:
            raise self.refuse


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    async with app_clients() as serve:
        async def build(sender: Sender | None = None, **overrides: Any) -> TestClient:
            settings = Settings(secret=Secret("s" * 32), cache_dir=tmp_path,
                                **{"max_body_bytes": LIMIT, "upload_max_bytes": 50, **overrides})
            return await serve(build_app(settings, SETUP, producer=sender or Sender(), view=JobView(),
                                         wait_for_job=0.05))

        yield build


async def problem_of(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    problem: dict[str, Any] = await resp.json()
    assert problem["status"] == status
    return problem


def too_large(limit: int) -> list[dict[str, str]]:
    return [{"field": "body", "message": f"must be at most {limit} bytes"}]


async def chunks(total: int) -> AsyncIterator[bytes]:
    """A body sent without Content-Length: the limit must be found while reading."""
    for _ in range(total // 100):
        yield b"x" * 100


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_job_past_the_body_limit_names_the_body(make: Any, declared: bool) -> None:
    client = await make()
    data: Any = b'{"pad": "' + b"x" * LIMIT + b'"}' if declared else chunks(LIMIT * 3)
    resp = await client.post("/v1/jobs", data=data, headers={"Content-Type": "application/json"})
    problem = await problem_of(resp, 413)
    assert (problem["title"], problem["detail"]) == ("Content Too Large",
                                                     f"the request body must be at most {LIMIT} bytes")
    assert problem["errors"] == too_large(LIMIT)


async def test_a_job_the_broker_refuses_for_its_size_names_the_body(make: Any) -> None:
    sender = Sender()
    sender.refuse = RecordTooLarge("record for requests is too large")
    client = await make(sender)
    problem = await problem_of(await client.post("/v1/jobs", json=JOB), 413)
    assert problem["errors"] == too_large(LIMIT)


async def test_a_job_that_is_not_json_names_the_content_type(make: Any) -> None:
    client = await make()
    resp = await client.post("/v1/jobs", data=b"model=x", headers={"Content-Type": "text/plain"})
    problem = await problem_of(resp, 415)
    assert (problem["title"], problem["detail"]) == ("Unsupported Media Type", "send the job as application/json")
    assert problem["errors"] == [{"field": "Content-Type", "message": "must be application/json"}]


async def test_an_image_past_the_upload_limit_names_the_body(make: Any) -> None:
    client = await make()
    resp = await client.post("/v1/uploads", data=PNG, headers={"Content-Type": "image/png"})
    assert (await problem_of(resp, 413))["errors"] == too_large(50)


def webhook_headers(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json",
            **signature_headers(DEV_WEBHOOK_SECRET, "msg_abc", body, time.time())}


async def test_a_webhook_past_its_limit_names_the_body(make: Any) -> None:
    client = await make()
    big = b"x" * (MAX_WEBHOOK_BYTES + 1)
    resp = await client.post("/webhooks/kling", data=big, headers=webhook_headers(big))
    assert (await problem_of(resp, 413))["errors"] == too_large(MAX_WEBHOOK_BYTES)


async def test_a_webhook_the_broker_refuses_for_its_size_names_the_body(make: Any) -> None:
    sender = Sender()
    sender.refuse = RecordTooLarge("record for webhooks is too large")
    client = await make(sender)
    body = b'{"id": "x"}'  # authentic, whatever it says: it is stored before it is understood
    resp = await client.post("/webhooks/kling", data=body, headers=webhook_headers(body))
    assert (await problem_of(resp, 413))["errors"] == too_large(MAX_WEBHOOK_BYTES)


async def test_aiohttps_own_size_limit_names_the_body(make: Any) -> None:
    # The dashboard's spike reads its body with request.read(): past the app's client_max_size
    # (the larger of FLOODGATE_MAX_BODY_BYTES and the bridge's 1 MiB) aiohttp refuses it itself,
    # and the problem middleware answers.
    client = await make(dev_mode=True)
    resp = await client.post("/dashboard/spike", data=b"x" * (MAX_WEBHOOK_BYTES + 1),
                             headers={"Content-Type": "application/json"})
    problem = await problem_of(resp, 413)
    assert problem["errors"] == too_large(MAX_WEBHOOK_BYTES)
