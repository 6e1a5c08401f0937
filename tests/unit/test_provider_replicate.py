"""The Replicate connector's pure parts: request building, the documented shapes, and webhook
verification against signatures made by the Standard Webhooks reference library."""
from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from connectors.providers import SubmitOrder, callback, create
from connectors.providers.base import CALLBACK_HEADER, WebhookDelivery
from connectors.providers.replicate import ReplicateProvider, parse_event, parse_prediction, submit_request
from floodgate.errors import ConfigError, WebhookVerificationError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "providers"
SECRET = "whsec_" + base64.b64encode(b"replicate-test-secret-32-bytes!!").decode()
CALLBACK_SECRET = "callback-secret-for-replicate-tests"
NOW = 1_780_000_000


def provider() -> ReplicateProvider:
    made = create("replicate", name="rep", api_token="r8_token", webhook_secret=SECRET,
                  callback_secret=CALLBACK_SECRET, base_url="https://api.replicate.test")
    assert isinstance(made, ReplicateProvider)
    return made


def order(model: str = "kwaivgi/kling-v2.1", image: str | None = "https://img.test/a.png") -> SubmitOrder:
    return SubmitOrder(job_id="job_01", model=model, prompt="dunes", image_url=image,
                       webhook_url="https://fg.test/webhooks/rep", idempotency_key="k", params={"duration": "10"})


def test_submit_uses_the_models_endpoint_with_params_in_input_and_a_per_job_webhook() -> None:
    p = provider()
    request = submit_request(p.base_url, "r8_token", order(), p.callback_for(order()), cancel_after="30m")
    assert (request.method, request.url) == ("POST", "https://api.replicate.test/v1/models/kwaivgi/kling-v2.1/predictions")
    assert request.headers["Authorization"] == "Bearer r8_token" and request.headers["Cancel-After"] == "30m"
    body = orjson.loads(request.body or b"")
    assert body["input"] == {"prompt": "dunes", "image": "https://img.test/a.png", "duration": 10}
    assert body["webhook"] == callback.callback_url("https://fg.test/webhooks/rep", CALLBACK_SECRET, "rep", "job_01")
    assert body["webhook_events_filter"] == ["start", "completed"]
    assert "r8_token" not in repr(p)


def test_a_pinned_version_goes_to_the_predictions_endpoint() -> None:
    request = submit_request("https://api.replicate.test", "t", order("acme/m:5c7d5dc6"), None)
    assert request.url == "https://api.replicate.test/v1/predictions"
    body = orjson.loads(request.body or b"")
    assert body["version"] == "5c7d5dc6" and "webhook" not in body


def test_documented_shapes_parse() -> None:
    starting = parse_prediction((FIXTURES / "replicate_webhook_starting.json").read_bytes())
    assert (starting.provider_job_id, starting.state) == ("ufawqhfynnddngldkgtslldrkq", "queued")
    assert starting.video_url is None
    done = parse_prediction((FIXTURES / "replicate_prediction_succeeded.json").read_bytes())
    assert done.state == "completed" and done.video_url == "https://replicate.delivery/xezq/abc/output.mp4"


@pytest.mark.parametrize(("status", "state", "error"), [
    ("processing", "running", None), ("failed", "failed", "boom"), ("canceled", "cancelled", None),
    ("aborted", "failed", "aborted: its deadline passed before it started")])
def test_statuses_map(status: str, state: str, error: str | None) -> None:
    body = {"id": "p1", "status": status, "error": "boom" if status == "failed" else None, "output": None}
    got = parse_prediction(orjson.dumps(body))
    assert (got.state, got.error) == (state, error)


def _signed(body: bytes, msg_id: str = "msg_1", ts: int = NOW) -> dict[str, str]:
    signature = Webhook(SECRET).sign(msg_id, datetime.fromtimestamp(ts, UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def _path() -> str:
    return f"job_01/{callback.mac(CALLBACK_SECRET, 'rep', 'job_01')}"


def test_a_reference_signature_verifies_and_the_event_names_the_job() -> None:
    body = (FIXTURES / "replicate_prediction_succeeded.json").read_bytes()
    p = provider()
    delivery = WebhookDelivery(_signed(body), body, _path())
    assert asyncio.run(p.authenticate_webhook(None, delivery, now=NOW + 10)) is delivery  # type: ignore[arg-type]
    event = parse_event({**delivery.headers, CALLBACK_HEADER: _path()}, body)
    assert (event.job_id, event.webhook_id, event.state) == ("job_01", "msg_1", "completed")


@pytest.mark.parametrize("case", ["tampered", "stale", "future", "other-secret", "wrong-path", "no-path"])
def test_bad_deliveries_are_refused(case: str) -> None:
    body = (FIXTURES / "replicate_prediction_succeeded.json").read_bytes()
    headers, path, now = _signed(body), _path(), NOW
    if case == "tampered":
        body = body.replace(b"succeeded", b"failed\x20\x20\x20")
    elif case == "stale":
        now = NOW + 301
    elif case == "future":
        now = NOW - 301
    elif case == "other-secret":
        other = "whsec_" + base64.b64encode(b"another-secret-of-thirty-two-by!").decode()
        headers["webhook-signature"] = Webhook(other).sign("msg_1", datetime.fromtimestamp(NOW, UTC), body.decode())
    elif case == "wrong-path":
        path = path.replace("job_01", "job_02")
    else:
        path = ""
    with pytest.raises(WebhookVerificationError):
        asyncio.run(provider().authenticate_webhook(None, WebhookDelivery(headers, body, path), now=now))  # type: ignore[arg-type]


def test_bad_settings_fail_at_start() -> None:
    with pytest.raises(ConfigError):
        create("replicate", name="rep", api_token="t", webhook_secret="whsec_not base64!",
               callback_secret=CALLBACK_SECRET)
    with pytest.raises(ConfigError):
        create("replicate", name="rep", api_token="t", webhook_secret=SECRET, callback_secret="short")
