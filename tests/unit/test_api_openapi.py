"""The hand-written OpenAPI document and the router agree, route for route, for every role set; the
stored video's route answers nothing the document does not list; every documented 401 names the
challenge the running app sends with it; and every path the router answers 405 on documents that
405 with the Allow the app sends, whose problem's detail says the same."""
from __future__ import annotations

import fnmatch
import hashlib
import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from connectors.storage import LocalVideoStore, VideoRecord
from floodgate.api.app import build_app
from floodgate.api.common import ROLES
from floodgate.api.openapi import document
from floodgate.api.view import JobView
from floodgate.errors import StorageError
from floodgate.ids import new_job_id
from floodgate.provider_config import dev_setup
from floodgate.settings import Secret, Settings
from floodgate.videolinks import VideoLinks

ROLE_SETS = [frozenset(c) for n in range(1, 4) for c in itertools.combinations(sorted(ROLES), n)]
METHODS = {"get", "post", "put", "patch", "delete"}


class _NoSend:
    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Any) -> None:
        raise AssertionError("not used")


def _routes(roles: frozenset[str], video_store: Any = None) -> set[tuple[str, str]]:
    return _routes_of(build_app(Settings(), dev_setup("http://127.0.0.1:9"), roles=roles, producer=_NoSend(),
                                view=JobView(), video_store=video_store))


def _routes_of(app: web.Application) -> set[tuple[str, str]]:
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


# The stored video's 412 and 416 carry headers only, no problem: aiohttp's FileResponse answers
# the date conditions and the range itself, and the route's own If-Match answers as it does.
BODILESS_ERRORS = {("get", "/v1/videos/{job_id}", "412"), ("get", "/v1/videos/{job_id}", "416")}


def test_document_is_self_consistent() -> None:
    doc = document(ROLES, "http://api.example", videos=True)
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
                if (method, path, status) in BODILESS_ERRORS:
                    assert "content" not in response, (method, path, status)
                elif int(status) >= 400 and path != "/healthz":  # /healthz's 503 is a health report
                    assert "application/problem+json" in response["content"], (method, path, status)


def test_served_document_lists_the_routable_models_and_leaves_the_template_alone() -> None:
    served = document(ROLES, models=["kling-2.1", "wan-2.6"])
    assert served["components"]["schemas"]["JobRequest"]["properties"]["model"]["enum"] == ["kling-2.1", "wan-2.6"]
    assert "enum" not in document(ROLES)["components"]["schemas"]["JobRequest"]["properties"]["model"]


def test_url_pattern_accepts_only_what_the_server_accepts() -> None:
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


# The video route, answering for real: each (why, which video, method, request headers, status)
# is one answer it gives. Every status must be documented, every header that drew it a documented
# parameter, and every documented status drawn by one of these.
VIDEO = bytes(range(100))
ETAG = f'"{hashlib.sha256(VIDEO).hexdigest()}"'
NOW = 1_900_000_000.0
SETTINGS = Settings(secret=Secret("s" * 32), video_link_ttl=60.0)
LINKS = VideoLinks(SETTINGS.video_link_key, SETTINGS.video_link_ttl)
"""The links the app built from ``SETTINGS`` signs and checks."""
LATER, EARLIER = "Tue, 01 Jan 2999 00:00:00 GMT", "Mon, 01 Jan 1990 00:00:00 GMT"
VIDEO_ANSWERS: list[tuple[str, str, str, dict[str, str], int]] = [
    ("the whole video", "stored", "GET", {}, 200),
    ("its headers", "stored", "HEAD", {}, 200),
    ("several ranges are ignored", "stored", "GET", {"Range": "bytes=0-1,5-9"}, 200),
    ("a range under another validator is ignored", "stored", "GET", {"Range": "bytes=0-9", "If-Range": '"x"'}, 200),
    ("one range", "stored", "GET", {"Range": "bytes=0-9"}, 206),
    ("one range of this version", "stored", "GET", {"Range": "bytes=0-9", "If-Range": ETAG}, 206),
    ("a suffix of no bytes", "stored", "GET", {"Range": "bytes=-0"}, 416),
    ("a range past the end", "stored", "GET", {"Range": "bytes=100-"}, 416),
    ("the client's copy is this one", "stored", "GET", {"If-None-Match": ETAG}, 304),
    ("the client's copy is as new", "stored", "GET", {"If-Modified-Since": LATER}, 304),
    ("the client wants another version", "stored", "GET", {"If-Match": '"other"'}, 412),
    ("the copy changed since the client's date", "stored", "GET", {"If-Unmodified-Since": EARLIER}, 412),
    ("a forged link", "forged", "GET", {}, 403),
    ("not copied yet, the provider's copy known", "pending-known", "GET", {}, 307),
    ("not copied yet, the provider's copy not known here", "pending", "GET", {}, 503),
    ("the store unreachable", "unreachable", "GET", {}, 503),
    ("the copy refused for good", "refused", "GET", {}, 502),
    ("a method the route does not serve", "stored", "POST", {}, 405),
]


class _Unreachable(LocalVideoStore):
    """A local store whose record of ``down`` cannot be read (an outage)."""

    down = ""

    async def record(self, job_id: str) -> VideoRecord | None:
        if job_id == self.down:
            raise StorageError("video store: unreachable", retriable=True)
        return await super().record(job_id)


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
async def video_route(tmp_path: Path) -> AsyncIterator[tuple[TestClient, dict[str, str]]]:
    """A client of the video route and a signed path to each kind of video VIDEO_ANSWERS names."""
    store = _Unreachable(tmp_path / "videos")
    jobs = {kind: new_job_id() for kind in ("stored", "pending-known", "pending", "unreachable", "refused")}
    stored = VideoRecord(jobs["stored"], "stored", at_ms=1, size=len(VIDEO),
                         sha256=hashlib.sha256(VIDEO).hexdigest(), content_type="video/mp4")
    await store.put_video(jobs["stored"], _one_chunk(VIDEO), "video/mp4", lambda: stored)
    await store.put_record(VideoRecord(jobs["refused"], "failed", at_ms=1, reason="too large"))
    store.down = jobs["unreachable"]
    view = JobView()
    view.apply({"job_id": jobs["pending-known"], "tenant": "default", "user_id": "u1", "model": "kling-2.1",
                "status": "completed", "version": 1, "created_at": 1, "updated_at": 1, "progress": 1.0,
                "metadata": {}, "video_url": "https://cdn.example/v.mp4"})
    # The app as the API builds it (its middleware, the router's own answers), with the read role only.
    app = build_app(SETTINGS.with_overrides(cache_dir=tmp_path), dev_setup("http://127.0.0.1:9"), roles={"read"},
                    producer=_NoSend(), view=view, clock=lambda: NOW, video_store=store)
    paths = {kind: LINKS.path(job_id, NOW) for kind, job_id in jobs.items()}
    good = paths["stored"]
    paths["forged"] = good[:-1] + ("A" if good[-1] != "A" else "B")
    async with TestClient(TestServer(app)) as client:
        yield client, paths


async def test_every_answer_of_the_video_route_is_documented(
        video_route: tuple[TestClient, dict[str, str]]) -> None:
    client, paths = video_route
    operation = document({"read"}, videos=True)["paths"]["/v1/videos/{job_id}"]["get"]
    documented_headers = {p["name"].lower() for p in operation["parameters"] if p["in"] == "header"}
    drawn = set()
    for why, video, method, headers, status in VIDEO_ANSWERS:
        async with client.request(method, paths[video], headers=headers, allow_redirects=False) as resp:
            assert resp.status == status, why
            assert str(status) in operation["responses"], why
            _answers_as_documented(resp, operation["responses"][str(status)], why)
        assert {name.lower() for name in headers} <= documented_headers, why
        drawn.add(str(status))
    assert drawn == set(operation["responses"])


def _answers_as_documented(resp: Any, documented: dict[str, Any], why: str) -> None:
    """Every header the document says the answer carries is there, with its value where the
    document fixes one; the body is of a documented media type (``video/*`` matching ``video/mp4``)."""
    for name, header in documented.get("headers", {}).items():
        if header.get("required"):
            assert name in resp.headers, (why, name)
        if "const" in header["schema"] and name in resp.headers:
            assert resp.headers[name] == header["schema"]["const"], (why, name)
    if "content" in documented:
        assert any(fnmatch.fnmatchcase(resp.content_type, kind) for kind in documented["content"]), (
            why, resp.content_type)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_the_video_routes_405_is_a_problem_naming_the_methods_the_document_lists(
        video_route: tuple[TestClient, dict[str, str]], method: str) -> None:
    """Answered by aiohttp's router, not by the route: as problem+json through the app's middleware,
    with the Allow header RFC 9110 requires, which lists what the document calls the route's methods."""
    client, paths = video_route
    doc = document({"read"}, videos=True)
    path_item = doc["paths"]["/v1/videos/{job_id}"]
    answer = path_item["get"]["responses"]["405"]
    async with client.request(method, paths["stored"]) as resp:
        assert resp.status == 405
        _answers_as_documented(resp, answer, method)
        assert resp.content_type == "application/problem+json"
        body = await resp.json()
    served = {m.upper() for m in path_item if m in METHODS} | {"HEAD"}  # the GET's own HEAD
    assert set(resp.headers["Allow"].split(",")) == served
    assert set(doc["components"]["schemas"]["Problem"]["required"]) <= set(body) and body["status"] == 405


# Every route asked without any credential, by an app with every role, API keys and an operator
# key required: the 401s it answers are the ones the document lists, each with the challenge the
# app sends. A route that starts answering 401 later, or a challenge changed on one side only, fails.
PATH_PARAMS = {"job_id": new_job_id(), "provider": "kling", "mac": "0" * 64, "extra": "text2video",
               "name": "img_" + "a" * 32 + ".png"}


async def test_every_401_documents_the_challenge_the_app_sends(tmp_path: Path) -> None:
    settings = Settings(secret=Secret("s" * 32), cache_dir=tmp_path, api_keys=Secret("k1=acme"),
                        operator_key=Secret("op-secret"))
    app = build_app(settings, dev_setup("http://127.0.0.1:9"), producer=_NoSend(), view=JobView(),
                    wait_for_job=0.05, video_store=LocalVideoStore(tmp_path / "videos"))
    sent: dict[tuple[str, str], str | None] = {}
    async with TestClient(TestServer(app)) as client:
        for method, path in sorted(_routes_of(app)):
            async with client.request(method.upper(), path.format(**PATH_PARAMS), data=b"{}",
                                      headers={"Content-Type": "application/json"}) as resp:
                if resp.status == 401:
                    sent[(method, path)] = resp.headers.get("WWW-Authenticate")
    challenges = {(method, path): op["responses"]["401"].get("headers", {}).get("WWW-Authenticate", {})
                  for path, ops in document(ROLES, videos=True)["paths"].items()
                  for method, op in ops.items() if "401" in op["responses"]}
    assert len(sent) >= 10  # the sweep reached the key, token, operator and signature routes
    assert sent == {route: header.get("schema", {}).get("const") for route, header in challenges.items()}
    assert all(header["required"] for header in challenges.values())  # every 401 carries one


def _answers_405(app: web.Application) -> dict[str, str]:
    """Path → the Allow the router answers 405 with, for every path of ``app`` that does not serve
    every method (aiohttp's ``*`` route would), read from the router itself."""
    out = {}
    for resource in app.router.resources():
        methods = {route.method for route in resource}
        if "*" in methods:
            continue
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        assert isinstance(path, str)
        out[path] = ",".join(sorted(methods))  # as aiohttp writes Allow
    return out


@pytest.mark.parametrize("roles", ROLE_SETS, ids=lambda r: "+".join(sorted(r)))
def test_every_path_the_router_answers_405_on_documents_that_405_on_each_method(roles: frozenset[str],
                                                                                  tmp_path: Path) -> None:
    app = build_app(Settings(), dev_setup("http://127.0.0.1:9"), roles=roles, producer=_NoSend(), view=JobView(),
                    video_store=LocalVideoStore(tmp_path))
    answers = _answers_405(app)
    assert len(answers) >= 3  # the healthz, openapi and metrics paths at least
    # Path → the Allow documented by each of its operations (None where one documents no 405).
    documented = {path: {op["responses"].get("405", {}).get("headers", {}).get("Allow", {}).get("schema", {})
                         .get("const") for op in ops.values()}
                  for path, ops in document(roles, videos=True)["paths"].items()}
    assert documented == {path: {allow} for path, allow in answers.items()}


async def test_every_405_names_the_method_and_the_served_ones_as_its_allow_does(tmp_path: Path) -> None:
    """Each path of an app with every role, asked with each method it does not serve: the router's
    405, as problem+json through the middleware, its Allow the documented one, its detail naming the
    method asked and then exactly the methods Allow lists."""
    settings = Settings(secret=Secret("s" * 32), cache_dir=tmp_path)
    app = build_app(settings, dev_setup("http://127.0.0.1:9"), producer=_NoSend(), view=JobView(),
                    video_store=LocalVideoStore(tmp_path / "videos"))
    doc = document(ROLES, videos=True)
    asked = 0
    async with TestClient(TestServer(app)) as client:
        for path, allow in sorted(_answers_405(app).items()):
            documented = next(iter(doc["paths"][path].values()))["responses"]["405"]
            for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} - set(allow.split(","))):
                async with client.request(method, path.format(**PATH_PARAMS)) as resp:
                    assert resp.status == 405, (method, path)
                    _answers_as_documented(resp, documented, f"{method} {path}")
                    assert resp.headers["Allow"] == allow
                    body = await resp.json()
                named = re.findall(r"\b(?:GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS)\b", body["detail"])
                assert named[0] == method and set(named[1:]) == set(allow.split(",")), body["detail"]
                asked += 1
    assert asked >= 50  # every path, with four or five methods each
