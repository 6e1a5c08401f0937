"""The fal connector's pure parts and its webhook verification: Ed25519 signatures made with
``cryptography`` over fal's message, keys from a JWKS, cached at most 24 h, ±300 s."""
from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from connectors.providers import SubmitOrder, callback, create
from connectors.providers import fal as fal_module
from connectors.providers.base import CALLBACK_HEADER, CONFIRMED_HEADER, WebhookDelivery, same_provider_job
from connectors.providers.fal import (
    FalJob,
    FalProvider,
    app_of,
    parse_event,
    parse_queue_status,
    parse_result,
    parse_submit,
    submit_request,
)
from floodgate.errors import ProviderUnavailable, SchemaError, WebhookVerificationError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "providers"
CALLBACK_SECRET = "callback-secret-for-fal-tests"
APP = "fal-ai/kling-video"
NOW = 1_780_000_000.0


class FakeResponse:
    def __init__(self, body: bytes, status: int = 200) -> None:
        self.status, self._body = status, body
        self.headers: dict[str, str] = {}

    async def __aenter__(self) -> FakeResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read(self) -> bytes:
        return self._body


class FakeSession:
    """Answers every request with the current JWKS and counts the fetches."""

    def __init__(self, *keys: Ed25519PrivateKey) -> None:
        self.keys, self.fetches = list(keys), 0
        self.answers: dict[str, tuple[int, bytes]] = {}
        """Other URLs' answers (status, body); every request to them is counted in ``asked``."""
        self.asked: list[tuple[str, str]] = []

    def request(self, method: str, url: str, **_: Any) -> FakeResponse:
        if url in self.answers:
            self.asked.append((method, url))
            return FakeResponse(self.answers[url][1], self.answers[url][0])
        self.fetches += 1
        jwks = {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": str(i),
                          "x": base64.urlsafe_b64encode(k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
                          .decode()} for i, k in enumerate(self.keys)]}
        return FakeResponse(orjson.dumps(jwks))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def provider(clock: Clock | None = None) -> FalProvider:
    made = create("fal", name="fal", api_key="fal-key", callback_secret=CALLBACK_SECRET,
                  base_url="https://queue.fal.test", jwks_url="https://keys.fal.test/jwks.json",
                  clock=clock or Clock())
    assert isinstance(made, FalProvider)
    return made


def signed(key: Ed25519PrivateKey, body: bytes, ts: float = NOW, request_id: str | None = None) -> dict[str, str]:
    rid = request_id or orjson.loads(body)["request_id"]
    message = f"{rid}\nuser_1\n{int(ts)}\n{hashlib.sha256(body).hexdigest()}".encode()
    return {"x-fal-webhook-request-id": rid, "x-fal-webhook-user-id": "user_1",
            "x-fal-webhook-timestamp": str(int(ts)), "x-fal-webhook-signature": key.sign(message).hex()}


def path(job_id: str = "job_01") -> str:
    return f"{job_id}/{callback.mac(CALLBACK_SECRET, 'fal', job_id, APP)}/{APP}"


def authenticate(p: FalProvider, session: FakeSession, headers: dict[str, str], body: bytes, callback_path: str,
                 now: float = NOW) -> WebhookDelivery:
    return asyncio.run(p.authenticate_webhook(session, WebhookDelivery(headers, body, callback_path),  # type: ignore[arg-type]
                                              now=now))


def test_submit_puts_params_in_the_input_and_the_per_job_webhook_in_the_query() -> None:
    p = provider()
    order = SubmitOrder(job_id="job_01", model=f"{APP}/v2.1/master/text-to-video", prompt="dunes",
                        image_url="https://img.test/a.png", webhook_url="https://fg.test/webhooks/fal",
                        idempotency_key="k", params={"duration": "10"})
    request = submit_request(p.base_url, "fal-key", order, p.callback_for(order, APP))
    assert request.url.startswith(f"https://queue.fal.test/{APP}/v2.1/master/text-to-video?fal_webhook=")
    assert "job_01" in request.url and request.headers["Authorization"] == "Key fal-key"
    assert orjson.loads(request.body or b"") == {"duration": 10, "prompt": "dunes",
                                                 "image_url": "https://img.test/a.png"}


def test_queue_states_and_results_map() -> None:
    job = FalJob(APP, "r1")
    queued = parse_queue_status(job, b'{"status": "IN_QUEUE", "queue_position": 3}')
    assert queued is not None and (queued.state, queued.queue_position) == ("queued", 3)
    running = parse_queue_status(job, b'{"status": "IN_PROGRESS", "logs": []}')
    assert running is not None and running.state == "running"
    assert parse_queue_status(job, b'{"status": "COMPLETED"}') is None
    payload = orjson.loads((FIXTURES / "fal_webhook_ok.json").read_bytes())["payload"]
    done = parse_result(job, 200, orjson.dumps(payload))
    assert (done.state, done.video_url) == ("completed", "https://v3.fal.media/files/penguin/abc123/output.mp4")
    failed = parse_result(job, 422, b'{"detail": [{"msg": "field required"}]}')
    assert failed.state == "failed" and failed.error == "HTTP 422: field required"
    assert FalJob.parse(str(job)) == job and app_of(f"{APP}/v2") == APP
    with pytest.raises(SchemaError):
        app_of("just-one")


def test_documented_webhooks_parse_with_the_job_from_the_path() -> None:
    ok = parse_event({CALLBACK_HEADER: path()}, (FIXTURES / "fal_webhook_ok.json").read_bytes())
    assert (ok.job_id, ok.state, ok.provider_job_id) == ("job_01", "completed",
                                                          f"{APP}/024ca5b1-45d3-4afd-883e-ad3abe2a1c4d")
    err = parse_event({CALLBACK_HEADER: path()}, (FIXTURES / "fal_webhook_error.json").read_bytes())
    assert err.state == "failed" and err.error == "Invalid status code: 422"


def test_a_signature_by_a_jwks_key_verifies_and_the_jwks_is_cached() -> None:
    key, clock = Ed25519PrivateKey.generate(), Clock()
    p, session = provider(clock), FakeSession(Ed25519PrivateKey.generate(), key)
    body = (FIXTURES / "fal_webhook_ok.json").read_bytes()
    authenticate(p, session, signed(key, body), body, path())
    clock.now += 3600
    authenticate(p, session, signed(key, body, clock.now), body, path(), now=clock.now)
    assert session.fetches == 1, "the JWKS is fetched once, then cached"
    clock.now += 24 * 3600
    authenticate(p, session, signed(key, body, clock.now), body, path(), now=clock.now)
    assert session.fetches == 2, "a JWKS older than 24 h is fetched again"


def test_a_rotated_key_is_picked_up() -> None:
    old, new, clock = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), Clock()
    p, session = provider(clock), FakeSession(old)
    body = (FIXTURES / "fal_webhook_ok.json").read_bytes()
    authenticate(p, session, signed(old, body), body, path())
    session.keys = [new]
    clock.now += 120
    authenticate(p, session, signed(new, body, clock.now), body, path(), now=clock.now)
    assert session.fetches == 2


@pytest.mark.parametrize("case", ["tampered", "stale", "future", "unknown-key", "other-request", "wrong-path",
                                  "no-signature", "long-timestamp"])
def test_bad_deliveries_are_refused(case: str) -> None:
    key = Ed25519PrivateKey.generate()
    body = (FIXTURES / "fal_webhook_ok.json").read_bytes()
    headers, where, now = signed(key, body), path(), NOW
    if case == "tampered":
        body = body.replace(b"abc123", b"evil99")
    elif case == "stale":
        now = NOW + 301
    elif case == "future":
        now = NOW - 301
    elif case == "unknown-key":
        headers = signed(Ed25519PrivateKey.generate(), body)
    elif case == "other-request":
        headers = signed(key, body, request_id="another-request")
    elif case == "wrong-path":
        where = path("job_02").replace("job_02", "job_01", 1)
    elif case == "long-timestamp":  # past what int() takes from a string: refused, not a crash
        headers["x-fal-webhook-timestamp"] = "9" * 5000
    else:
        del headers["x-fal-webhook-signature"]
    with pytest.raises(WebhookVerificationError):
        authenticate(provider(), FakeSession(key), headers, body, where, now=now)


NO_OUTPUT = orjson.dumps({"request_id": "req-9", "gateway_request_id": "req-9", "status": "OK", "payload": None,
                          "payload_error": "Output could not be serialized"})
RESULT_URL = f"https://queue.fal.test/{APP}/requests/req-9"


@pytest.mark.parametrize(("answer", "state", "error"), [
    ((200, b'{"video": {"url": "https://v3.fal.media/files/out.mp4"}}'), "completed", None),
    ((422, b'{"detail": [{"msg": "generation failed"}]}'), "failed", "Output could not be serialized"),
])
def test_an_ok_without_its_output_is_told_by_fals_result(answer: tuple[int, bytes], state: str,
                                                         error: str | None) -> None:
    """fal made the video but could not put it in the webhook: its result says how it ended."""
    key = Ed25519PrivateKey.generate()
    session = FakeSession(key)
    session.answers[RESULT_URL] = answer
    forwarded = authenticate(provider(), session, signed(key, NO_OUTPUT), NO_OUTPUT, path())
    assert session.asked == [("GET", RESULT_URL)]
    event = parse_event({**forwarded.headers, CALLBACK_HEADER: path()}, forwarded.body)
    assert (event.job_id, event.state, event.error) == ("job_01", state, error)
    assert event.provider_job_id == f"{APP}/req-9" and event.webhook_id == "req-9:OK"
    if state == "completed":
        assert event.video_url == "https://v3.fal.media/files/out.mp4"


def test_an_ok_without_its_output_waits_while_fal_cannot_give_the_result() -> None:
    key = Ed25519PrivateKey.generate()
    session = FakeSession(key)
    session.answers[RESULT_URL] = (503, b"busy")
    with pytest.raises(ProviderUnavailable):  # the bridge answers 503: fal delivers it again later
        authenticate(provider(), session, signed(key, NO_OUTPUT), NO_OUTPUT, path())


def test_an_ok_with_its_output_is_forwarded_as_it_came() -> None:
    ok = (FIXTURES / "fal_webhook_ok.json").read_bytes()
    key = Ed25519PrivateKey.generate()
    session = FakeSession(key)
    forwarded = authenticate(provider(), session, signed(key, ok), ok, path())
    assert forwarded.body == ok and CONFIRMED_HEADER not in forwarded.headers and session.asked == []


def test_an_error_without_a_message_says_failed() -> None:
    body = orjson.dumps({"request_id": "req-9", "status": "ERROR", "payload": None})
    assert parse_event({CALLBACK_HEADER: path()}, body).error == "failed"


# -- the app a request is queued on, and the URLs fal returns -------------------------------------

BASE = "https://queue.fal.test"
WORKFLOW = "workflows/acme/video-pipeline"


@pytest.mark.parametrize(("model", "app"), [
    (f"{APP}/v2.1/master/text-to-video", APP),
    ("fal-ai/fast-sdxl", "fal-ai/fast-sdxl"),
    ("/fal-ai/veo3/", "fal-ai/veo3"),
    (WORKFLOW, WORKFLOW),  # fal's clients read these namespaces' ids as three segments
    (f"{WORKFLOW}/fast", WORKFLOW),
    ("comfy/acme/flow/v2", "comfy/acme/flow"),
])
def test_the_app_is_the_one_fals_clients_read_from_the_model_id(model: str, app: str) -> None:
    assert app_of(model) == app


@pytest.mark.parametrize("model", ["", "just-one", "workflows/acme", "fal-ai//x", "fal-ai/../x", "fal ai/x",
                                   "fal-ai/x%2Fy/z", "fal-ai/\u00e4pp"])
def test_model_ids_that_name_no_app_are_refused(model: str) -> None:
    with pytest.raises(SchemaError):
        app_of(model)


@pytest.mark.parametrize(("job_id", "app", "request_id"), [
    # As every earlier release wrote them (on Kafka records and in tables after an upgrade).
    (f"{APP}/764cabcf-b745-4b3e-ae38-1200304cf45b", APP, "764cabcf-b745-4b3e-ae38-1200304cf45b"),
    (f"{WORKFLOW}/req-1", WORKFLOW, "req-1"),
])
def test_provider_job_ids_old_and_new_read_the_same_way(job_id: str, app: str, request_id: str) -> None:
    job = FalJob.parse(job_id)
    assert (job.app, job.request_id, str(job)) == (app, request_id, job_id)


@pytest.mark.parametrize("job_id", ["req-1", "fal-ai/req-1", f"{APP}/", f"{APP}/req 1", "a/../req", f"{APP}\n/req",
                                    f"{APP}/" + "r" * 200, "/".join(["s"] * 8) + "/req", "x" * 100_000])
def test_ids_that_are_no_bounded_printable_fal_job_are_refused(job_id: str) -> None:
    with pytest.raises(SchemaError):
        FalJob.parse(job_id)


def answer(app: str = APP, host: str = BASE, rid: str = "req-1", **changed: object) -> bytes:
    """fal's submit answer (docs.fal.ai/model-endpoints/queue), its URLs under ``host``/``app``."""
    at = f"{host}/{app}/requests/{rid}"
    body: dict[str, object] = {"status": "IN_QUEUE", "request_id": rid, "response_url": at,
                               "status_url": f"{at}/status", "cancel_url": f"{at}/cancel", **changed}
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


FOLLOWED = f"{WORKFLOW}/req-1"  # fal's URLs followed where they differ from the app foreseen
REBUILT = "workflows/acme/req-1"  # the app foreseen (as if fal's namespaces were unknown to us)


@pytest.mark.parametrize(("base", "body", "job_id"), [
    (BASE, answer(), f"{APP}/req-1"),  # what was foreseen: the id is the rebuilt one
    (BASE, answer(WORKFLOW), FOLLOWED),
    (BASE, answer(WORKFLOW, response_url=f"{BASE}/{WORKFLOW}/requests/req-1/"), FOLLOWED),
    ("https://queue.fal.run", answer(WORKFLOW, "https://queue.falrun.com"), FOLLOWED),  # fal's backup host
    ("http://127.0.0.1:9/fal", answer(WORKFLOW, "http://127.0.0.1:9/fal"), FOLLOWED),  # a base with a path
    # Not followed, rebuilt: missing, foreign or not of fal's shape.
    (BASE, answer(WORKFLOW, response_url=None, status_url=None, cancel_url=None), REBUILT),
    (BASE, answer(WORKFLOW, "https://evil.test"), REBUILT),
    (BASE, answer(WORKFLOW, "http://queue.fal.test"), REBUILT),
    (BASE, answer(WORKFLOW, "https://queue.fal.test:8443"), REBUILT),
    (BASE, answer(WORKFLOW, "https://user@queue.fal.test"), REBUILT),
    (BASE, answer(WORKFLOW, "https://queue.fal.test.evil.test"), REBUILT),
    (BASE, answer(WORKFLOW, "https://queue.falrun.com"), REBUILT),  # the backup host is fal's own queue's
    ("http://127.0.0.1:9/fal", answer(WORKFLOW, "http://127.0.0.1:9"), REBUILT),
    (BASE, answer(WORKFLOW, status_url=f"{BASE}/{WORKFLOW}/requests/req-1/status?to=elsewhere"), REBUILT),
    (BASE, answer(WORKFLOW, cancel_url=f"{BASE}/other/app/requests/req-1/cancel"), REBUILT),
    (BASE, answer(WORKFLOW, status_url=f"{BASE}/{WORKFLOW}/requests/req-2/status"), REBUILT),
    (BASE, answer(WORKFLOW, status_url=f"{BASE}/{WORKFLOW}/requests/req-1/logs"), REBUILT),
    (BASE, answer("../admin"), REBUILT),
    (BASE, answer("acme%2Fx/app"), REBUILT),
    (BASE, answer("acme"), REBUILT),
    (BASE, answer(WORKFLOW, status_url=42), REBUILT),
    (BASE, answer(WORKFLOW, status_url=f"{BASE}:notaport/{WORKFLOW}/requests/req-1/status"), REBUILT),
])
def test_the_job_follows_fals_urls_only_on_its_queue(base: str, body: bytes, job_id: str) -> None:
    foreseen = APP if job_id.startswith(APP) else "workflows/acme"
    assert str(parse_submit(base, foreseen, body)) == job_id


class Queue:
    """fal's queue for the connector: answers by method and URL (the query aside), records each call."""

    def __init__(self, answers: dict[tuple[str, str], tuple[int, bytes]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str]] = []

    def request(self, method: str, url: str, **_: Any) -> FakeResponse:
        self.asked.append((method, url))
        status, body = self.answers.get((method, url.partition("?")[0]), (404, b'{"detail": "Not Found"}'))
        return FakeResponse(body, status)


def test_a_three_segment_app_is_followed_by_status_cancel_a_restart_and_its_webhook() -> None:
    at = f"{BASE}/{WORKFLOW}/requests/req-1"
    queue = Queue({("POST", f"{BASE}/{WORKFLOW}/fast"): (200, answer(WORKFLOW)),
                   ("GET", f"{at}/status"): (202, b'{"status": "IN_PROGRESS", "logs": null}'),
                   ("PUT", f"{at}/cancel"): (202, b'{"status": "CANCELLATION_REQUESTED"}')})
    order = SubmitOrder(job_id="job_01", model=f"{WORKFLOW}/fast", prompt="dunes", image_url=None,
                        webhook_url="https://fg.test/webhooks/fal", idempotency_key="k")
    submitted = asyncio.run(provider().submit(queue, order))  # type: ignore[arg-type]
    assert submitted.provider_job_id == f"{WORKFLOW}/req-1"
    restarted = provider()  # a new process, given only the provider job id
    for p in (provider(), restarted):
        assert asyncio.run(p.status(queue, submitted.provider_job_id)).state == "running"  # type: ignore[arg-type]
    asyncio.run(restarted.cancel(queue, submitted.provider_job_id))  # type: ignore[arg-type]
    assert queue.asked[1:] == [("GET", f"{at}/status")] * 2 + [("PUT", f"{at}/cancel")]
    # The webhook names the app through the callback path given before fal answered.
    given = dict(parse_qsl(urlsplit(queue.asked[0][1]).query))["fal_webhook"]
    where = given.removeprefix("https://fg.test/webhooks/fal/")
    event = parse_event({CALLBACK_HEADER: where}, (FIXTURES / "fal_webhook_ok.json").read_bytes())
    rid = orjson.loads((FIXTURES / "fal_webhook_ok.json").read_bytes())["request_id"]
    assert (event.job_id, event.provider_job_id) == ("job_01", f"{WORKFLOW}/{rid}")


def test_an_id_an_earlier_release_wrote_still_reaches_its_request() -> None:
    at = f"{BASE}/{APP}/requests/req-2"
    queue = Queue({("GET", f"{at}/status"): (200, b'{"status": "COMPLETED"}'),
                   ("GET", at): (200, b'{"video": {"url": "https://v3.fal.media/files/out.mp4"}}'),
                   ("PUT", f"{at}/cancel"): (400, b'{"status": "ALREADY_COMPLETED"}')})
    done = asyncio.run(provider().status(queue, f"{APP}/req-2"))  # type: ignore[arg-type]
    assert (done.state, done.video_url, done.provider_job_id) == ("completed", "https://v3.fal.media/files/out.mp4",
                                                                 f"{APP}/req-2")
    asyncio.run(provider().cancel(queue, f"{APP}/req-2"))  # type: ignore[arg-type]
    assert queue.asked == [("GET", f"{at}/status"), ("GET", at), ("PUT", f"{at}/cancel")]


def test_an_ok_without_its_output_on_a_three_segment_app_reads_the_result_there() -> None:
    key = Ed25519PrivateKey.generate()
    session = FakeSession(key)
    result = f"{BASE}/{WORKFLOW}/requests/req-9"
    session.answers[result] = (200, b'{"video": {"url": "https://v3.fal.media/files/out.mp4"}}')
    where = f"job_01/{callback.mac(CALLBACK_SECRET, 'fal', 'job_01', WORKFLOW)}/{WORKFLOW}"
    forwarded = authenticate(provider(), session, signed(key, NO_OUTPUT), NO_OUTPUT, where)
    assert session.asked == [("GET", result)]
    event = parse_event({**forwarded.headers, CALLBACK_HEADER: where}, forwarded.body)
    assert (event.state, event.provider_job_id) == ("completed", f"{WORKFLOW}/req-9")


# -- an app fal names otherwise than foreseen: the webhooks of the model's later requests name it --

NEW_NS = "pipelines/acme/video"  # fal's app for a namespace the connector does not know
NEW_NS_MODEL = f"{NEW_NS}/fast"  # foreseen: "pipelines/acme"


def fal_order(n: int, model: str = NEW_NS_MODEL) -> SubmitOrder:
    return SubmitOrder(job_id=f"job_{n:02d}", model=model, prompt="dunes", image_url=None,
                       webhook_url="https://fg.test/webhooks/fal", idempotency_key=f"k{n}")


def submitted_by(p: FalProvider, queue: Queue, n: int, app: str, model: str = NEW_NS_MODEL,
                 host: str = BASE) -> tuple[str, str]:
    """(the provider job id, the callback path given) of job ``n``, fal's URLs under ``host``/``app``."""
    queue.answers[("POST", f"{BASE}/{model}")] = (200, answer(app, host, rid=f"req-{n}"))
    job_id = asyncio.run(p.submit(queue, fal_order(n, model))).provider_job_id  # type: ignore[arg-type]
    given = dict(parse_qsl(urlsplit(queue.asked[-1][1]).query))["fal_webhook"]
    return job_id, given.removeprefix("https://fg.test/webhooks/fal/")


def webhook_id(where: str, n: int) -> str:
    body = orjson.dumps({"request_id": f"req-{n}", "status": "OK",
                         "payload": {"video": {"url": "https://v3.fal.media/files/out.mp4"}}})
    return parse_event({CALLBACK_HEADER: where}, body).provider_job_id


def test_once_fal_named_a_models_app_its_webhooks_name_the_job_as_its_submission_does() -> None:
    p, queue = provider(), Queue({})
    first, where = submitted_by(p, queue, 1, NEW_NS)
    assert first == f"{NEW_NS}/req-1"
    # Given before fal answered: the foreseen app, which fal's webhook cannot correct.
    assert webhook_id(where, 1) == "pipelines/acme/req-1"
    second, where = submitted_by(p, queue, 2, NEW_NS)
    assert webhook_id(where, 2) == second == f"{NEW_NS}/req-2"
    # An OK without its output reads the result where fal queued the request.
    key = Ed25519PrivateKey.generate()
    session = FakeSession(key)
    session.answers[f"{BASE}/{NEW_NS}/requests/req-2"] = (200, b'{"video": {"url": "https://v3.fal.media/o.mp4"}}')
    body = orjson.dumps({"request_id": "req-2", "status": "OK", "payload": None, "payload_error": "too big"})
    forwarded = authenticate(p, session, signed(key, body), body, where)
    event = parse_event({**forwarded.headers, CALLBACK_HEADER: where}, forwarded.body)
    assert (event.state, event.provider_job_id) == ("completed", second)
    # Other models are not affected: the app is remembered per model.
    other, where = submitted_by(p, queue, 3, "pipelines/acme", model="pipelines/acme")
    assert webhook_id(where, 3) == other == "pipelines/acme/req-3"


def test_a_first_requests_webhook_names_its_job_otherwise_than_its_submission_but_the_same() -> None:
    """Its callback path was given before fal named the app: the webhook's provider job id has
    the app foreseen, the slot's fal's. One request all the same: fal's request ids are unique."""
    p, queue = provider(), Queue({})
    first, where = submitted_by(p, queue, 1, NEW_NS)
    told = webhook_id(where, 1)
    assert (first, told) == (f"{NEW_NS}/req-1", "pipelines/acme/req-1")
    assert p.same_job(told, first) and same_provider_job(p, told, first)
    assert not p.same_job(told, f"{NEW_NS}/req-2") and not p.same_job("pipelines/acme/", f"{NEW_NS}/")


def test_a_connector_without_same_job_names_one_job_by_one_id_only() -> None:
    """The default, every provider but fal's: provider job ids are compared exactly."""
    assert same_provider_job(object(), "acme/app/req-1", "acme/app/req-1")
    assert not same_provider_job(object(), "acme/app/req-1", "acme/other/req-1")
    assert not same_provider_job(provider(), None, "acme/app/req-1") and not same_provider_job(object(), None, None)


def test_an_ok_without_its_output_of_a_first_request_is_not_failed_and_is_read_where_fal_keeps_it() -> None:
    """fal does not find the result under the app the callback path foresaw: the webhook tells no
    end (the job runs on, as far as it says), and the status call, by the id the slot recorded,
    reads the result under fal's app."""
    p, queue = provider(), Queue({})
    first, where = submitted_by(p, queue, 1, NEW_NS)
    key = Ed25519PrivateKey.generate()
    session = FakeSession(key)
    foreseen = f"{BASE}/pipelines/acme/requests/req-1"
    session.answers[foreseen] = (404, b'{"detail": "Request not found"}')
    body = orjson.dumps({"request_id": "req-1", "status": "OK", "payload": None, "payload_error": "too big"})
    forwarded = authenticate(p, session, signed(key, body), body, where)
    assert session.asked == [("GET", foreseen)]
    event = p.parse_webhook({**forwarded.headers, CALLBACK_HEADER: where}, forwarded.body)
    assert (event.job_id, event.state, event.video_url, event.error) == ("job_01", "running", None, None)
    assert p.same_job(event.provider_job_id, first)
    at = f"{BASE}/{NEW_NS}/requests/req-1"
    queue.answers[("GET", f"{at}/status")] = (200, b'{"status": "COMPLETED"}')
    queue.answers[("GET", at)] = (200, b'{"video": {"url": "https://v3.fal.media/files/out.mp4"}}')
    done = asyncio.run(provider().status(queue, first))  # type: ignore[arg-type]  # (in the dispatcher's process)
    assert (done.state, done.video_url) == ("completed", "https://v3.fal.media/files/out.mp4")


def test_an_app_fal_no_longer_names_otherwise_is_forgotten() -> None:
    p, queue = provider(), Queue({})
    submitted_by(p, queue, 1, NEW_NS)
    again, where = submitted_by(p, queue, 2, "pipelines/acme")  # fal now queues the model on the app foreseen
    assert (again, webhook_id(where, 2)) == ("pipelines/acme/req-2", f"{NEW_NS}/req-2")  # named before it answered
    third, where = submitted_by(p, queue, 3, "pipelines/acme")
    assert webhook_id(where, 3) == third == "pipelines/acme/req-3"


def test_an_answer_whose_urls_are_not_followed_teaches_nothing() -> None:
    p, queue = provider(), Queue({})
    foreign, where = submitted_by(p, queue, 1, NEW_NS, host="https://evil.test")
    assert webhook_id(where, 1) == foreign == "pipelines/acme/req-1"  # rebuilt, as before
    _, where = submitted_by(p, queue, 2, NEW_NS)
    assert webhook_id(where, 2) == "pipelines/acme/req-2"  # nothing was learned from the foreign URLs
    foreign, where = submitted_by(p, queue, 3, NEW_NS, host="https://evil.test")
    assert webhook_id(where, 3) == foreign == f"{NEW_NS}/req-3"  # and what was learned stays


def test_the_apps_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fal_module, "MAX_LEARNED", 2)
    p, queue = provider(), Queue({})
    for n, owner in enumerate("abc", start=1):
        submitted_by(p, queue, n, f"pipelines/{owner}/video", model=f"pipelines/{owner}/video/fast")
    wheres = [submitted_by(p, queue, n, f"pipelines/{owner}/video", model=f"pipelines/{owner}/video/fast")[1]
              for n, owner in enumerate("cba", start=4)]
    # "a", learned longest ago, made room for "c": its next request names the app foreseen.
    assert [webhook_id(where, n) for n, where in enumerate(wheres, start=4)] == [
        "pipelines/c/video/req-4", "pipelines/b/video/req-5", "pipelines/a/req-6"]
