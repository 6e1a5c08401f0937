"""The WaveSpeed connector's pure parts and its ``v3`` webhook signatures, checked against digests
computed here the way WaveSpeed's "Verifying webhooks" page describes (key: the secret's text
after ``whsec_``, not base64-decoded)."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
from pathlib import Path

import orjson
import pytest

from connectors.providers import SubmitOrder, callback, create
from connectors.providers.base import CALLBACK_HEADER, WebhookDelivery
from connectors.providers.wavespeed import WaveSpeedProvider, parse_answer, parse_event, submit_request
from floodgate import signing
from floodgate.errors import RateLimited, WebhookVerificationError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "providers"
SECRET = "whsec_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
CALLBACK_SECRET = "callback-secret-for-wavespeed-tests"
NOW = 1_780_000_000


def provider() -> WaveSpeedProvider:
    made = create("wavespeed", name="ws", api_key="ws-key", webhook_secret=SECRET, callback_secret=CALLBACK_SECRET,
                  base_url="https://api.wavespeed.test")
    assert isinstance(made, WaveSpeedProvider)
    return made


def documented_headers(body: bytes, webhook_id: str = "wh_1", ts: int = NOW, secret: str = SECRET) -> dict[str, str]:
    key = secret[len("whsec_"):].encode()
    digest = hmac.new(key, f"{webhook_id}.{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {"webhook-id": webhook_id, "webhook-timestamp": str(ts), "webhook-signature": f"v3,{digest}"}


def path(job_id: str = "job_01") -> str:
    return f"{job_id}/{callback.mac(CALLBACK_SECRET, 'ws', job_id)}"


def authenticate(headers: dict[str, str], body: bytes, where: str, now: float = NOW) -> WebhookDelivery:
    return asyncio.run(provider().authenticate_webhook(None, WebhookDelivery(headers, body, where),  # type: ignore[arg-type]
                                                       now=now))


def test_submit_puts_params_in_the_input_and_the_callback_in_the_query() -> None:
    p = provider()
    order = SubmitOrder(job_id="job_01", model="wavespeed-ai/wan-2.1/i2v-480p", prompt="dunes",
                        image_url="https://img.test/a.png", webhook_url="https://fg.test/webhooks/ws",
                        idempotency_key="k", params={"duration": "5"})
    request = submit_request(p.base_url, "ws-key", order, p.callback_for(order))
    assert request.url.startswith("https://api.wavespeed.test/api/v3/wavespeed-ai/wan-2.1/i2v-480p?webhook=")
    assert orjson.loads(request.body or b"") == {"duration": 5, "prompt": "dunes", "image": "https://img.test/a.png"}


def test_documented_shapes_parse() -> None:
    created = parse_answer((FIXTURES / "wavespeed_submit.json").read_bytes())
    assert (created.provider_job_id, created.state) == ("pred_8b1c2f6e4d0a4f2e9c3b7a1d5e6f0a2b", "queued")
    body = (FIXTURES / "wavespeed_webhook_completed.json").read_bytes()
    event = parse_event({**documented_headers(body), CALLBACK_HEADER: path()}, body)
    assert (event.job_id, event.state, event.webhook_id) == ("job_01", "completed", "wh_1")
    assert event.video_url == "https://d1q70pf5vjeyhc.cloudfront.net/predictions/8b1c2f6e/1.mp4"


def test_a_non_200_code_inside_the_envelope_is_that_error() -> None:
    with pytest.raises(RateLimited):
        parse_answer(b'{"code": 429, "message": "too many requests", "data": null}')


def test_a_documented_signature_verifies() -> None:
    body = (FIXTURES / "wavespeed_webhook_completed.json").read_bytes()
    delivery = authenticate(documented_headers(body), body, path())
    assert delivery.body == body


@pytest.mark.parametrize("case", ["tampered", "stale", "future", "standard-webhooks", "base64-key", "wrong-path",
                                  "long-timestamp", "non-ascii-signature", "non-hex-signature"])
def test_bad_deliveries_are_refused(case: str) -> None:
    body = (FIXTURES / "wavespeed_webhook_completed.json").read_bytes()
    headers, where, now = documented_headers(body), path(), NOW
    if case == "tampered":
        body = body.replace(b"completed", b"failed\x20\x20\x20")
    elif case == "stale":
        now = NOW + 301
    elif case == "future":
        now = NOW - 301
    elif case == "standard-webhooks":
        # The same header names, but a Standard Webhooks v1 signature is not WaveSpeed's scheme.
        headers = signing.signature_headers("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB", "wh_1", body, NOW)
    elif case == "base64-key":
        key = b"\xf7\xf1\xef\x77\x4e\x9c\xe5\xbe\x1d\xfc\xdf\x6d\x7b\xbd\x35\xfe\x3d\x78\x73\x5a\xd1\xad\x34"
        digest = hmac.new(key, f"wh_1.{NOW}.".encode() + body, hashlib.sha256).hexdigest()
        headers["webhook-signature"] = f"v3,{digest}"
    elif case == "long-timestamp":
        # Past int()'s 4,300-digit limit: refused as a format, never handed to int().
        headers["webhook-timestamp"] = "9" * 5000
    elif case == "non-ascii-signature":
        headers["webhook-signature"] = "v3," + "é" * 64
    elif case == "non-hex-signature":
        headers["webhook-signature"] = "v3," + "z" * 64
    else:
        where = path("job_02").replace("job_02", "job_01", 1)
    with pytest.raises(WebhookVerificationError):
        authenticate(headers, body, where, now)


def test_a_signature_verifies_in_either_case_of_hex() -> None:
    body = (FIXTURES / "wavespeed_webhook_completed.json").read_bytes()
    headers = documented_headers(body)
    headers["webhook-signature"] = headers["webhook-signature"].upper().replace("V3,", "v3,")
    assert authenticate(headers, body, path()).body == body


def test_at_most_max_signatures_v3_entries_are_checked() -> None:
    """A header stuffed with forged entries costs a bounded number of comparisons; the real
    signature past the cap is not looked at."""
    body = (FIXTURES / "wavespeed_webhook_completed.json").read_bytes()
    good = documented_headers(body)["webhook-signature"]
    forged = documented_headers(body, secret="whsec_another-secret")["webhook-signature"]
    stuffed = {**documented_headers(body), "webhook-signature": " ".join([forged] * signing.MAX_SIGNATURES + [good])}
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        authenticate(stuffed, body, path())
    within = {**stuffed, "webhook-signature": " ".join([forged] * (signing.MAX_SIGNATURES - 1) + [good])}
    assert authenticate(within, body, path()).body == body


def test_a_webhook_id_that_is_not_utf8_is_verified_over_the_bytes_sent() -> None:
    """aiohttp hands such a header over with its bytes surrogate-escaped; they are what was signed."""
    body = (FIXTURES / "wavespeed_webhook_completed.json").read_bytes()
    key = SECRET[len("whsec_"):].encode()
    digest = hmac.new(key, b"wh_\xff." + str(NOW).encode() + b"." + body, hashlib.sha256).hexdigest()
    headers = {"webhook-id": b"wh_\xff".decode("utf-8", "surrogateescape"), "webhook-timestamp": str(NOW),
               "webhook-signature": f"v3,{digest}"}
    assert authenticate(headers, body, path()).body == body
