"""Property-based tests of the HTTP API from its own contract: schemathesis reads ``/openapi.json``
from a running API (every role, real Kafka on the test broker), generates input for every route
(valid and invalid bodies, headers, path and query values) and checks each answer: no 5xx, the
status code documented, the body matching the documented schema, headers and content type as
documented.

The default run is bounded (``MAX_EXAMPLES`` per route) to stay within seconds; the
``slow``-marked run asks for many more.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from floodgate.api.common import ROLES
from floodgate.api.openapi import document
from floodgate.api.server import ApiServer, serve
from floodgate.ids import job_token, new_job_id
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from tests.integration.api_helpers import DEV_SIMULATOR, produce_snapshots, snapshot
from tests.kafka_util import unique_name

pytestmark = [
    pytest.mark.kafka,
    # schemathesis' strategies draw from `random`; hypothesis deprecates that, which is theirs to fix.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

MAX_EXAMPLES = 25
DEEP_EXAMPLES = 500


@dataclass
class ServedApi:
    """An API served by an event loop of its own on a background thread: schemathesis calls it
    synchronously from the test's thread, as any outside client would."""

    url: str
    loop: asyncio.AbstractEventLoop
    server: ApiServer
    thread: threading.Thread

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


def serve_in_thread(settings_: Settings, **options: Any) -> ServedApi:
    loop = asyncio.new_event_loop()
    started: Future[ApiServer] = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            try:
                started.set_result(await serve(settings_, host="127.0.0.1", port=0, **options))
            except BaseException as exc:
                started.set_exception(exc)

        loop.create_task(start())
        loop.run_forever()

    thread = threading.Thread(target=run, name="api-under-test", daemon=True)
    thread.start()
    server = started.result(timeout=90)
    return ServedApi(server.url, loop, server, thread)


@pytest.fixture(scope="module")
def served_api(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    cache: Path = tmp_path_factory.mktemp("schema-cache")
    settings_ = Settings.from_env({}).with_overrides(
        kafka_bootstrap=kafka_bootstrap, topic_prefix=unique_name("t") + ".", cache_dir=cache, partitions=2,
        simulator_url=DEV_SIMULATOR,
        # Large enough that the documented field limits, not the body limit (its own tests), decide.
        max_body_bytes=1024 * 1024)
    # Jobs the generated requests can really read, follow and cancel: a finished one (its SSE stream
    # ends after the first event) and a running one (SSE left out: it would stream until the job ends).
    api = serve_in_thread(settings_, wait_for_job=0.05)
    try:
        for job in JOBS.values():
            job.token = job_token(settings_.secret.reveal().encode(), job.job_id)
        produce_snapshots(kafka_bootstrap, TopicNames(settings_).notifications,
                          [snapshot(job.job_id, 4, job.status, progress=0.5,
                                    video_url="https://cdn.example/v.mp4" if job.status == "completed" else None)
                           for job in JOBS.values()])
        for job in JOBS.values():
            wait_until_seen(api.url, job)
        yield api
    finally:
        api.close()


def wait_until_seen(url: str, job: KnownJob, timeout: float = 20.0) -> None:
    """Until the API's job view has the job's snapshot (it reads notifications on its own)."""
    deadline = time.monotonic() + timeout
    while True:
        got = requests.get(f"{url}/v1/jobs/{job.job_id}", params={"token": job.token}, timeout=5).json()
        if got["status"] == job.status:
            return
        assert time.monotonic() < deadline, f"{job.job_id} not {job.status} in the view after {timeout}s: {got}"
        time.sleep(0.05)  # a poll interval, not a synchronisation: the condition above decides


@dataclass
class KnownJob:
    job_id: str
    status: str
    token: str = ""


JOBS = {"completed": KnownJob(new_job_id(), "completed"), "running": KnownJob(new_job_id(), "running")}


@pytest.fixture(scope="module")
def api_schema(served_api: ServedApi) -> Any:
    return schemathesis.openapi.from_url(f"{served_api.url}/openapi.json", config=CONFIG)


CONFIG = SchemathesisConfig.from_dict({"checks": {
    # A wrong token is a 404 on purpose, like an unknown job (floodgate/api/read.py), where this
    # check expects 401/403; a missing token is the documented 401.
    "ignored_auth": {"enabled": False},
    # A valid WebSocket handshake is answered 101: not an error, and the right answer to valid input.
    "not_a_server_error": {"expected-statuses": ["101", "2xx", "3xx", "4xx"]},
    # 422 too: the generator may send one Idempotency-Key with two different bodies, which the
    # contract answers 422 (the key is taken) however valid each body is on its own.
    "positive_data_acceptance": {"expected-statuses": ["101", "2xx", "401", "403", "404", "409", "422"]},
    # A WebSocket handshake in another version than 13 is refused with RFC 6455's 426 (and the
    # version spoken), which the check's default list of refusals leaves out.
    "negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "406", "409", "413", "415",
                                                      "422", "426", "428", "429", "5xx"]},
}})


# Every documented route, whatever the configuration: the parametrisation is fixed at collection
# time (schemathesis' own lazy loader needs pytest internals that pytest 9 no longer has).
_DOC = document(ROLES)
ROUTES = sorted((method.upper(), path) for path, ops in _DOC["paths"].items() for method in ops)


def _can_be_wrong(operation: dict[str, Any]) -> bool:
    """Negative cases need something to get wrong: a parameter, or a body whose schema says more
    than "any bytes" (an image upload's body is any bytes as far as a schema can say; the server
    reads its kind from them, tests/unit/test_api_pages.py)."""
    bodies = operation.get("requestBody", {}).get("content", {}).values()
    return "parameters" in operation or any(body["schema"].get("format") != "binary" for body in bodies)


CASES = [(method, path, mode) for method, path in ROUTES for mode in GenerationMode
         if mode is GenerationMode.POSITIVE or _can_be_wrong(_DOC["paths"][path][method.lower()])]


def exercise(api_schema: Any, method: str, path: str, mode: GenerationMode, examples: int) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        case.call_and_validate(timeout=10)

    check()


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=lambda v: str(v))
def test_every_route_answers_as_documented(api_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    exercise(api_schema, method, path, mode, MAX_EXAMPLES)


# The job routes of readers (a provider's per-job callback path names a job too, but answers to
# the provider's signature or a status call, not to a reader's token).
JOB_ROUTES = [(method, path, status) for method, path in ROUTES
              if "{job_id}" in path and not path.startswith("/webhooks/") for status in JOBS
              if not (path.endswith("/events") and status == "running")]


@pytest.mark.parametrize(("method", "path", "status"), JOB_ROUTES, ids=lambda v: str(v))
def test_job_routes_answer_as_documented_for_a_real_job(api_schema: Any, method: str, path: str, status: str) -> None:
    """With the right job id and token, so the answers are the job itself (200, 202, 409), checked
    against the Job schema, not only refusals."""
    job = JOBS[status]
    operation = api_schema[path][method]
    strategy = operation.as_strategy(path_parameters={"job_id": job.job_id},
                                     headers={"Authorization": f"Bearer {job.token}"})
    seen: set[int] = set()

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES // 5, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        seen.add(case.call_and_validate(timeout=10).status_code)

    check()
    assert seen & {200, 202, 409}, seen  # the job was reached, not only refused


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=lambda v: str(v))
def test_every_route_answers_as_documented_deeply(api_schema: Any, method: str, path: str,
                                                  mode: GenerationMode) -> None:
    exercise(api_schema, method, path, mode, DEEP_EXAMPLES)
