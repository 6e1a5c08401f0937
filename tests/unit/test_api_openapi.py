"""The hand-written OpenAPI document and the router agree, route for route, for every role set."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from connectors.storage import LocalVideoStore
from floodgate.api.app import build_app
from floodgate.api.common import ROLES
from floodgate.api.openapi import document
from floodgate.api.view import JobView
from floodgate.provider_config import dev_setup
from floodgate.settings import Settings

ROLE_SETS = [frozenset(c) for n in range(1, 4) for c in itertools.combinations(sorted(ROLES), n)]
METHODS = {"get", "post", "put", "patch", "delete"}


class _NoSend:
    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Any) -> None:
        raise AssertionError("not used")


def _routes(roles: frozenset[str], video_store: Any = None) -> set[tuple[str, str]]:
    app = build_app(Settings(), dev_setup("http://127.0.0.1:9"), roles=roles, producer=_NoSend(), view=JobView(),
                    video_store=video_store)
    out = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue  # the GET's own HEAD (stored videos), documented with the GET
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert isinstance(path, str)
        out.add((route.method.lower(), path))
    return out


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m, p) for p, ops in doc["paths"].items() for m in ops if m in METHODS}


@pytest.mark.parametrize("roles", ROLE_SETS, ids=lambda r: "+".join(sorted(r)))
def test_every_route_is_documented_and_vice_versa(roles: frozenset[str]) -> None:
    assert _routes(roles) == _documented(document(roles))


@pytest.mark.parametrize("roles", ROLE_SETS, ids=lambda r: "+".join(sorted(r)))
def test_with_a_video_store_the_read_role_serves_and_documents_videos(roles: frozenset[str],
                                                                       tmp_path: Path) -> None:
    routes = _routes(roles, LocalVideoStore(tmp_path))
    assert routes == _documented(document(roles, videos=True))
    assert (("get", "/v1/videos/{job_id}") in routes) == ("read" in roles)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_document_is_self_consistent() -> None:
    doc = document(ROLES, "http://api.example")
    assert doc["openapi"].startswith("3.1") and doc["servers"] == [{"url": "http://api.example"}]
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas
    schemes = doc["components"]["securitySchemes"]
    assert {"apiKey", "jobToken"} <= set(schemes)
    assert schemes["apiKey"] == {**schemes["apiKey"], "in": "header", "name": "X-API-Key"}
    assert schemes["jobToken"]["scheme"] == "bearer"
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for requirement in op.get("security", []):
                assert set(requirement) <= set(schemes), (method, path)
            for status, response in op["responses"].items():
                if int(status) >= 400 and path != "/healthz":  # /healthz's 503 is a health report
                    assert "application/problem+json" in response["content"], (method, path, status)


def test_served_document_lists_the_routable_models_and_leaves_the_template_alone() -> None:
    served = document(ROLES, models=["kling-2.1", "wan-2.6"])
    assert served["components"]["schemas"]["JobRequest"]["properties"]["model"]["enum"] == ["kling-2.1", "wan-2.6"]
    assert "enum" not in document(ROLES)["components"]["schemas"]["JobRequest"]["properties"]["model"]


def test_url_pattern_accepts_only_what_the_server_accepts() -> None:
    import re

    from floodgate.errors import ValidationError
    from floodgate.netguard import check_url_syntax

    pattern = re.compile(document(ROLES)["components"]["schemas"]["JobRequest"]["properties"]["webhook_url"]["pattern"])
    for url in ["http://a.b", "HTTPS://Example.COM:65535/x?y#z", "http://a_b.example/p@q", "http://x:1"]:
        assert pattern.search(url), url
        check_url_syntax(url)  # what the schema calls valid, the server accepts
    for url in ["ftp://a.b", "http://1.2", "http://a:0", "http://a:65536", "http://u@a.b", "http://a.b/ c", "http://"]:
        assert not pattern.search(url), url
        with pytest.raises(ValidationError):
            check_url_syntax(url)
