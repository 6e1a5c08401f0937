"""The Runway connector's pure parts: the request (version header, endpoint by image), task states."""
from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from connectors.providers import SubmitOrder, create
from connectors.providers.base import WebhookDelivery
from connectors.providers.runway import API_VERSION, RunwayProvider, parse_task, submit_request
from floodgate.errors import WebhookVerificationError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "providers"


def order(image: str | None) -> SubmitOrder:
    return SubmitOrder(job_id="job_01", model="gen4_turbo", prompt="dunes", image_url=image, webhook_url=None,
                       idempotency_key="k", params={"ratio": "1280:720", "duration": "10"})


def test_requests_carry_the_version_and_pick_the_endpoint_by_image() -> None:
    text = submit_request("https://rw.test", "key", order(None))
    assert text.url == "https://rw.test/v1/text_to_video" and text.headers["X-Runway-Version"] == API_VERSION
    assert orjson.loads(text.body or b"") == {"ratio": "1280:720", "duration": 10, "model": "gen4_turbo",
                                              "promptText": "dunes"}
    image = submit_request("https://rw.test", "key", order("https://img.test/a.png"))
    assert image.url == "https://rw.test/v1/image_to_video"
    assert orjson.loads(image.body or b"")["promptImage"] == "https://img.test/a.png"


def test_documented_tasks_parse() -> None:
    running = parse_task((FIXTURES / "runway_task_running.json").read_bytes())
    assert (running.state, running.progress) == ("running", 0.42)
    done = parse_task((FIXTURES / "runway_task_succeeded.json").read_bytes())
    assert done.state == "completed" and str(done.video_url).startswith("https://dnznrvs05pmza.cloudfront.net/")


@pytest.mark.parametrize(("status", "state"), [("PENDING", "queued"), ("THROTTLED", "queued"),
                                               ("CANCELLED", "cancelled")])
def test_waiting_states_are_queued(status: str, state: str) -> None:
    assert parse_task(orjson.dumps({"id": "t", "status": status})).state == state


def test_a_failure_carries_its_code() -> None:
    got = parse_task(orjson.dumps({"id": "t", "status": "FAILED", "failure": "unsafe input",
                                   "failureCode": "SAFETY.INPUT.TEXT"}))
    assert (got.state, got.error) == ("failed", "SAFETY.INPUT.TEXT: unsafe input")


def test_anything_claiming_to_be_a_runway_webhook_is_refused() -> None:
    p = create("runway", name="rw", api_key="key")
    assert isinstance(p, RunwayProvider)
    with pytest.raises(WebhookVerificationError):
        asyncio.run(p.authenticate_webhook(None, WebhookDelivery({}, b"{}", "job/x"), now=0))  # type: ignore[arg-type]
