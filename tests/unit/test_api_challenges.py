"""Every 401 the API and the webhook bridge answer carries a ``WWW-Authenticate`` challenge, as
RFC 9110 (15.5.2) requires, and each is well formed (11.6.1) and names its realm. Found by asking
every route of an app with all roles, keys required, without any credential: a route added later
that answers 401 is checked too."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from connectors.storage import LocalVideoStore
from floodgate.api.app import build_app
from floodgate.api.view import JobView
from floodgate.ids import new_job_id
from floodgate.provider_config import dev_setup
from floodgate.settings import Secret, Settings

# RFC 9110, 11.6.1 (and 5.6.2, 5.6.4 for token and quoted-string): one challenge.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_PARAM = rf"{_TOKEN}[ \t]*=[ \t]*(?:{_TOKEN}|{_QUOTED})"
_TOKEN68 = r"[A-Za-z0-9\-._~+/]+=*"
CHALLENGE = re.compile(rf"(?P<scheme>{_TOKEN})(?: +(?:{_TOKEN68}|(?P<params>{_PARAM}(?:[ \t]*,[ \t]*{_PARAM})*)))?")
REALM = re.compile(rf'(?:^|,)[ \t]*realm[ \t]*=[ \t]*(?:{_TOKEN}|{_QUOTED})', re.IGNORECASE)

# The routes that need a credential the sweep does not send. Listed so that a sweep that reached
# none of them (a route renamed, a fixture that stopped requiring keys) fails instead of passing.
EXPECTED_401 = {
    ("post", "/v1/jobs"), ("post", "/v1/uploads"),  # X-API-Key
    ("get", "/v1/jobs/{job_id}"), ("get", "/v1/jobs/{job_id}/events"), ("post", "/v1/jobs/{job_id}/cancel"),  # token
    ("get", "/dashboard/data"), ("post", "/dashboard/spike"),  # X-Operator-Key
    # The bridge: no signature, and a callback path whose MAC is not the one Floodgate made.
    ("post", "/webhooks/{provider}"), ("post", "/webhooks/{provider}/{job_id}/{mac}"),
    ("post", "/webhooks/{provider}/{job_id}/{mac}/{extra}"),
}


class _NoSend:
    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Any) -> None:
        raise AssertionError("a request without credentials must not reach Kafka")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    settings = Settings(secret=Secret("s" * 32), cache_dir=tmp_path, api_keys=Secret("k1=acme"),
                        operator_key=Secret("op-secret"))
    app = build_app(settings, dev_setup("http://127.0.0.1:9"), producer=_NoSend(), view=JobView(),
                    wait_for_job=0.05, video_store=LocalVideoStore(tmp_path / "videos"))
    async with TestClient(TestServer(app)) as c:
        yield c


def routes(client: TestClient) -> list[tuple[str, str]]:
    out = []
    for route in client.app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert isinstance(path, str)
        out.append((route.method.lower(), path))
    return sorted(out)


PATH_PARAMS = {"job_id": new_job_id(), "provider": "kling", "mac": "0" * 64, "extra": "text2video",
               "name": "img_" + "a" * 32 + ".png"}


async def test_every_401_carries_a_well_formed_challenge_with_a_realm(client: TestClient) -> None:
    answered_401 = set()
    for method, path in routes(client):
        async with client.request(method.upper(), path.format(**PATH_PARAMS), data=b"{}",
                                  headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 401:
                continue
            answered_401.add((method, path))
            challenge = resp.headers.get("WWW-Authenticate")
            assert challenge is not None, (method, path)
            match = CHALLENGE.fullmatch(challenge)
            assert match is not None, (method, path, challenge)
            assert match["params"] is not None and REALM.search(match["params"]), (method, path, challenge)
    assert answered_401 == EXPECTED_401


@pytest.mark.parametrize(("value", "valid"), [
    ('ApiKey realm="floodgate", header="X-API-Key"', True),
    ('Bearer realm="floodgate"', True),
    ("Bearer", True),  # well formed, though it names no realm
    ("Bearer abc.def==", True),  # token68
    ('Signature realm="a \\"b\\""', True),
    ('realm="floodgate"', False),  # no scheme
    ('Bearer realm="unterminated', False),
    ("Bearer realm=a b", False),
    ('Api Key realm="x"', False),
    ('Bearer, realm="x"', False),
])
def test_the_challenge_grammar(value: str, valid: bool) -> None:
    # The checker above is only as good as its grammar: it must refuse what RFC 9110 does.
    assert (CHALLENGE.fullmatch(value) is not None) is valid
