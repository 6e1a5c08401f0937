"""No secret ever reaches a log: a whole job runs through the real processes (simulator, API,
worker) with DEBUG logging in every one, every credential configured to a value of its own, and
then every log line is scanned for every secret in every form it could be printed in.

The job uses every path a secret touches: an API key at the ingress, the provider's API key on
submission, the provider's webhook secret (a rotating one: old and new) at the bridge, the job
token in a header and in query strings (SSE, WebSocket), the tenant's outgoing webhook secret
signing the result's delivery, and the server secret behind tokens and ids.
"""
from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Iterator

import aiohttp
import pytest

from connectors.simulator.receiver import run_receiver
from floodgate import signing
from floodgate.devstack import Stack
from floodgate.settings import Secret, Settings
from tests.e2e.stack_util import TERMINAL, until
from tests.kafka_util import unique_name

pytestmark = pytest.mark.kafka

# Fresh random values, each distinctive enough that a hit in a log cannot be a coincidence.
SERVER_SECRET = "srv-" + secrets.token_urlsafe(24)
API_KEY = "apikey-" + secrets.token_urlsafe(24)
TENANT_WEBHOOK_SECRET = signing.new_secret()
PROVIDER_API_KEY = "provkey-" + secrets.token_urlsafe(24)
PROVIDER_WEBHOOK_SECRET = signing.new_secret()
PREVIOUS_PROVIDER_WEBHOOK_SECRET = signing.new_secret()


def forms(secret: str) -> set[str]:
    """The ways a secret could show up in a log: as given, its key bytes as base64 and hex, and
    (for URL-borne ones) percent-encoded."""
    out = {secret}
    if secret.startswith(signing.SECRET_PREFIX):
        key = signing.secret_key(secret)
        out |= {secret[len(signing.SECRET_PREFIX):], key.hex(), base64.urlsafe_b64encode(key).decode()}
    return out


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("secrets")
    sim = home / "sim.json"
    sim.write_text(json.dumps({"seed": 3, "providers": {"kling": {
        "concurrency_limit": 5, "render_time": {"kind": "uniform", "min": 0.02, "max": 0.05}, "queue_delay": 0.005,
        "api_keys": [PROVIDER_API_KEY], "webhook_secret": PROVIDER_WEBHOOK_SECRET}}}))
    routing = home / "routing.json"
    routing.write_text(json.dumps({
        "providers": {"kling": {"kind": "simulator", "concurrency_limit": 5, "connection": {
            "base_url": "env:FLOODGATE_SIMULATOR_URL", "api_key": PROVIDER_API_KEY,
            "webhook_secret": PROVIDER_WEBHOOK_SECRET, "previous_webhook_secret": PREVIOUS_PROVIDER_WEBHOOK_SECRET,
            "previous_webhook_secret_until": "2100-01-01T00:00:00Z"}}},
        "routes": {"kling-2.1": [{"provider": "kling"}]},
    }))
    prefix = unique_name("e2e") + "."
    settings = Settings.from_env({}).with_overrides(
        kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix, app_id=prefix + "app", partitions=2,
        session_timeout=6.0, poll_after=5.0, cache_dir=home / "cache", log_level="debug",
        routing_file=str(routing), secret=Secret(SERVER_SECRET), api_keys=Secret(f"{API_KEY}=acme"),
        webhook_secrets=Secret(f"acme={TENANT_WEBHOOK_SECRET}"))
    with Stack(settings, home, simulator_args=["--config", str(sim), "--log-level", "DEBUG"]) as running:
        yield running


async def run_one_job(stack: Stack) -> tuple[str, str]:
    """Submit, follow by GET, SSE and WebSocket (token in the query), receive the signed result;
    return the job's token and the delivery's signature header."""
    async with run_receiver() as receiver, aiohttp.ClientSession() as http:
        async with http.post(f"{stack.api_url}/v1/jobs", headers={"X-API-Key": API_KEY}, json={
                "model": "kling-2.1", "user_id": "u1", "input": {"prompt": "a quiet harbour"},
                "webhook_url": receiver.url}) as resp:
            assert resp.status == 202, await resp.text()
            accepted = await resp.json()
        job_id, token = accepted["job_id"], accepted["token"]

        async def follow_sse() -> None:
            async with http.get(accepted["events_url"], params={"token": token}) as events:
                assert events.status == 200
                async for raw in events.content:
                    if raw.startswith(b"data:") and json.loads(raw[5:])["status"] in TERMINAL:
                        return

        async def follow_ws() -> None:
            url = stack.api_url.replace("http://", "ws://") + "/v1/stream"
            async with http.ws_connect(url, params={"job_id": job_id, "token": token}) as ws:
                async for msg in ws:
                    data = msg.json()
                    if data.get("type") == "job" and data["job"]["status"] in TERMINAL:
                        return

        await asyncio.wait_for(asyncio.gather(follow_sse(), follow_ws()), timeout=60)

        async def done() -> bool:
            async with http.get(f"{stack.api_url}/v1/jobs/{job_id}",
                                headers={"Authorization": f"Bearer {token}"}) as got:
                return (await got.json())["status"] == "completed"

        await until(done, timeout=60, what=f"{job_id} completed")
        [delivery] = await receiver.wait_count(1, timeout=60)
    # The result was signed with the tenant's secret: the secret was used, so it had its chance to leak.
    signing.verify(TENANT_WEBHOOK_SECRET, dict(delivery.headers), delivery.body, now=delivery.received_at)
    return token, delivery.headers["webhook-signature"]


async def test_no_secret_appears_in_any_log(stack: Stack) -> None:
    token, _ = await run_one_job(stack)
    secrets_ = {
        "FLOODGATE_SECRET": SERVER_SECRET, "FLOODGATE_API_KEYS key": API_KEY,
        "FLOODGATE_WEBHOOK_SECRETS (tenant)": TENANT_WEBHOOK_SECRET, "provider api_key": PROVIDER_API_KEY,
        "provider webhook_secret": PROVIDER_WEBHOOK_SECRET,
        "provider previous_webhook_secret": PREVIOUS_PROVIDER_WEBHOOK_SECRET, "job token": token,
    }
    logs = {path.name: path.read_text(errors="replace") for path in sorted((stack.home / "logs").glob("*.log"))}
    assert set(logs) >= {"simulator.log", "api.log", "worker-0.log"}
    for name in ("api.log", "worker-0.log"):
        # DEBUG really was on, so a secret logged at any level would be here. (The simulator,
        # started with --log-level DEBUG too, has nothing of its own to say at DEBUG.)
        assert "DEBUG" in logs[name], f"{name} has no DEBUG lines: logging was not at DEBUG"
    found = leaks(logs, secrets_)
    assert not found, found


def leaks(logs: dict[str, str], secrets_: dict[str, str]) -> list[str]:
    """``"<what> in <log>"`` for every form of every secret found in any log."""
    return sorted({f"{what} in {name}" for what, secret in secrets_.items() for form in forms(secret)
                   for name, text in logs.items() if form in text})


def test_the_scan_finds_a_secret_in_any_of_its_forms() -> None:
    """The scan itself can fail: a secret printed as given, as its key's hex or base64, is found."""
    secret = signing.new_secret()
    key = signing.secret_key(secret)
    for printed in (secret, key.hex(), secret.removeprefix("whsec_"), base64.urlsafe_b64encode(key).decode()):
        assert leaks({"api.log": f"DEBUG x: {printed}\n"}, {"hook": secret}) == ["hook in api.log"]
    assert leaks({"api.log": "DEBUG nothing here\n"}, {"hook": secret, "token": "abc-123"}) == []
