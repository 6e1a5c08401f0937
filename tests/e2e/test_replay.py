"""``floodgate replay`` on the running stack, run as an operator runs it (a subprocess with the
deployment's environment): a request the worker dead-lettered becomes a completed job once
replayed from the dlq, a JSON-lines file of requests completes, and replaying a source again
(right away, and after the jobs finished) makes no second job and no second provider call."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from floodgate import codec
from floodgate.ids import job_token, new_job_id
from floodgate.replay import derived_job_id
from tests.e2e.stack_util import TERMINAL, get_job, make_stack, routing_file, simulator_config, until
from tests.integration.api_helpers import record_count
from tests.kafka_util import consume_until, produce

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    home = tmp_path_factory.mktemp("replay")
    # A routing file the last test can fix (it routes no sora-2 at first).
    routing = routing_file(home / "routing.json", {"kling": 10, "wan": 10})
    with make_stack(kafka_bootstrap, home, sim_config=simulator_config(home / "sim.json"),
                    routing_file=str(routing)) as s:
        yield s


def replay(stack: Any, *args: str) -> str:
    """Run ``floodgate replay`` as an operator would; its stdout (it must exit 0)."""
    done = subprocess.run([sys.executable, "-m", "floodgate.cli", "replay", "--no-progress", *args],
                          env=stack.env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def figure(output: str, label: str) -> int:
    """A figure of the summary, e.g. ``figure(out, "sent")``."""
    for line in output.splitlines():
        if line.startswith(label) and line[len(label):].strip().isdigit():
            return int(line[len(label):])
    raise AssertionError(f"no {label!r} in the summary:\n{output}")


async def finished(stack: Any, job_ids: list[str]) -> dict[str, str]:
    """Wait until every job is terminal; their statuses."""
    secret = stack.settings.secret.reveal().encode()
    async with aiohttp.ClientSession() as session:

        async def statuses() -> dict[str, str] | None:
            jobs = [await get_job(session, stack.api_url, j, job_token(secret, j)) for j in job_ids]
            return {j["job_id"]: j["status"] for j in jobs} if all(j["status"] in TERMINAL for j in jobs) else None

        result: dict[str, str] = await until(statuses, timeout=60, what=f"{len(job_ids)} jobs to finish")
        return result


async def provider_jobs(stack: Any) -> Counter[str]:
    """Floodgate job id → provider jobs created for it, over every simulated provider."""
    counts: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        for provider in ("sora", "kling", "wan"):
            async with session.get(f"{stack.simulator_url}/_admin/{provider}/jobs") as resp:
                for job in (await resp.json())["jobs"]:
                    counts[job["job_id"]] += 1
    return counts


def test_a_dead_lettered_request_becomes_a_job_once_replayed_and_only_once(stack) -> None:
    requests, dlq = stack.settings.topic("requests"), stack.settings.topic("dlq")
    # A kcat line without a job_id is dead-lettered by the worker; the replay is its fix.
    line = orjson.dumps({"model": "kling-2.1", "user_id": "erin", "input": {"prompt": "a harbour at night"}})
    produce(stack.bootstrap, requests, [(None, line), (None, b"{not json")])
    dead = consume_until(stack.bootstrap, dlq, lambda ms: len(ms) >= 2, timeout=60)
    reasons = [codec.decode("DeadLetter", m.value(), m.headers())["reason"] for m in dead]
    assert any("job_id" in r for r in reasons), reasons
    job_id, _ = derived_job_id(stack.settings.secret.reveal().encode(), "default", line)
    written = record_count(stack.bootstrap, requests)

    dry = replay(stack, "--topic", "dlq", "--dry-run")
    assert f"would send  {job_id}  kling-2.1" in dry and "derived from its bytes" in dry
    assert figure(dry, "skipped invalid") == 1  # the line that is not JSON stays parked
    assert record_count(stack.bootstrap, requests) == written  # a dry run sends nothing

    first = replay(stack, "--topic", "dlq", "--reason", "job_id")
    assert figure(first, "sent") == 1 and figure(first, "skipped by filters") == 1, first
    assert asyncio.run(finished(stack, [job_id])) == {job_id: "completed"}

    again = replay(stack, "--topic", "dlq", "--reason", "job_id")
    assert figure(again, "sent") == 0 and figure(again, "skipped as duplicate") == 1, again
    assert record_count(stack.bootstrap, requests) == written + 1
    assert asyncio.run(provider_jobs(stack))[job_id] == 1


@pytest.mark.slow  # about 10 s more on top of the test above, which covers the dlq path by default
def test_a_json_lines_file_completes_and_a_second_replay_makes_no_second_job(stack, tmp_path: Path) -> None:
    started = datetime.now(UTC).isoformat()
    ids = [new_job_id() for _ in range(3)]
    lines = [orjson.dumps({"job_id": j, "model": m, "user_id": "frank", "input": {"prompt": f"kites {i}"}})
             for i, (j, m) in enumerate(zip(ids, ("wan-2.6", "kling-2.1", "wan-2.6"), strict=True))]
    anonymous = orjson.dumps({"model": "kling-2.1", "user_id": "frank", "input": {"prompt": "no id of its own"}})
    ids.append(derived_job_id(stack.settings.secret.reveal().encode(), "default", anonymous)[0])
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b"\n".join([*lines, anonymous]) + b"\n")

    first = replay(stack, "--file", str(path), "--rate", "200")
    assert figure(first, "read") == 4 and figure(first, "sent") == 4, first
    # At once, before the jobs are through: whatever this run sends, the worker drops as duplicates.
    replay(stack, "--file", str(path))
    assert set(asyncio.run(finished(stack, ids)).values()) == {"completed"}
    after = replay(stack, "--file", str(path))
    assert figure(after, "sent") == 0 and figure(after, "skipped as duplicate") == 4, after

    made = asyncio.run(provider_jobs(stack))
    assert [made[j] for j in ids] == [1, 1, 1, 1]
    results = consume_until(stack.bootstrap, stack.settings.topic("results"),
                            lambda ms: {m.key() for m in ms} >= {j.encode() for j in ids}, timeout=30)
    assert Counter(m.key() for m in results if m.key() in {j.encode() for j in ids}) == {j.encode(): 1 for j in ids}

    # The same requests again from the topic itself, by time range: every one is a job already.
    ranged = replay(stack, "--topic", "requests", "--from", started, "--to", datetime.now(UTC).isoformat())
    assert figure(ranged, "read") >= 4 and figure(ranged, "sent") == 0, ranged
    assert figure(ranged, "skipped as duplicate") == figure(ranged, "read"), ranged


@pytest.mark.slow  # restarts the worker: about 15 s
def test_a_request_parked_for_an_unknown_model_completes_when_replayed_after_the_routing_is_fixed(stack) -> None:
    since = datetime.now(UTC).isoformat()
    job_id = new_job_id()
    line = orjson.dumps({"job_id": job_id, "model": "sora-2", "user_id": "gina", "input": {"prompt": "a comet"}})
    produce(stack.bootstrap, stack.settings.topic("requests"), [(job_id.encode(), line)])
    consume_until(stack.bootstrap, stack.settings.topic("dlq"), timeout=60, done=lambda ms: any(
        codec.decode("DeadLetter", m.value(), m.headers())["original"] == line for m in ms))

    # The fix: sora-2 gets a route, and the worker is restarted to read it.
    path = Path(stack.settings.routing_file)
    table = orjson.loads(path.read_bytes())
    table["routes"]["sora-2"] = [{"provider": "kling", "provider_model": "kling-2.1"}]
    path.write_bytes(orjson.dumps(table))
    stack.stop_child("worker-0")
    stack.start_worker(0)

    out = replay(stack, "--topic", "dlq", "--since", since, "--reason", "unknown model")
    assert figure(out, "sent") == 1, out
    assert asyncio.run(finished(stack, [job_id])) == {job_id: "completed"}
    assert asyncio.run(provider_jobs(stack))[job_id] == 1
