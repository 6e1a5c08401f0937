"""The job view's feed hands the loop back while it applies a backlog, and tells watchers what the
providers' webhooks say (``floodgate.api.feed``); no Kafka: its records are handed to the applier
as the feed thread would."""
from __future__ import annotations

import asyncio
from typing import Any

import orjson

from connectors.providers.simulator import SimulatorProvider
from connectors.simulator import DEV_WEBHOOK_SECRET
from floodgate import codec
from floodgate.api.bridge import envelope
from floodgate.api.feed import NotificationFeed
from floodgate.api.view import YIELD_EVERY, JobView
from floodgate.jobs.record import JobRecord
from floodgate.jobs.state import JobState

TOPIC = "fg.notifications"
WEBHOOKS = "fg.webhooks"


class Record:
    """What librdkafka hands the feed thread, as much of it as the applier reads."""

    def __init__(self, job_id: str, src: tuple[int, int] | None = None) -> None:
        state = JobState(job_id=job_id, tenant="t", model="kling-2.1", version=1)
        self._value = JobRecord(state, admitted_by=src).encode()

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def value(self) -> bytes:
        return self._value

    def headers(self) -> None:
        return None


async def _apply_watched(batches: list[list[Any]]) -> tuple[list[int], JobView]:
    """Hand ``batches`` over at once and apply them; how many snapshots the view held each time
    another task got the loop meanwhile."""
    view = JobView()
    feed = NotificationFeed("127.0.0.1:9", TOPIC, 1, view)  # never started: nothing connects
    try:
        for batch in batches:
            feed._batches.put_nowait((batch, False))
        applier = asyncio.create_task(feed._apply_batches())
        seen: list[int] = []
        while len(view) < sum(map(len, batches)):
            seen.append(len(view))
            await asyncio.sleep(0)
        applier.cancel()
        return seen, view
    finally:
        feed._consumer.close()


async def test_decoding_a_full_batch_hands_the_loop_back() -> None:
    seen, view = await _apply_watched([[Record(f"j{i}") for i in range(3 * YIELD_EVERY)]])
    # Decoding alone took turns (the view still empty), then applying did.
    assert seen.count(0) >= 3 and len(view) == 3 * YIELD_EVERY


async def test_batches_ready_back_to_back_take_turns_with_the_loop() -> None:
    small = YIELD_EVERY // 2  # each batch too small to yield within itself
    seen, _ = await _apply_watched([[Record(f"b{b}-{i}") for i in range(small)] for b in range(3)])
    assert {small, 2 * small} <= set(seen)


class WebhookRecord(Record):
    """A bridge's ``webhooks`` record (the simulator's event shape, keyed by job id)."""

    def __init__(self, job_id: str, value: bytes | None = None) -> None:
        body = orjson.dumps({"id": "evt_1", "object": "event", "type": "video.in_progress", "created_at": 5,
                             "data": {"id": "pj-1", "object": "video", "status": "in_progress", "progress": 30,
                                      "metadata": {"job_id": job_id}}})
        self._key = job_id.encode()
        encoded, headers = codec.encode("WebhookEnvelope", envelope(
            "kling", {"content-type": "application/json"}, body, "msg_1", 5_000))
        self._value, self._headers = (encoded, headers) if value is None else (value, [])

    def topic(self) -> str:
        return WEBHOOKS

    def key(self) -> bytes:
        return self._key

    def headers(self) -> Any:
        return self._headers

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


async def test_the_feed_tells_watchers_what_a_webhook_record_says_and_decodes_no_other_jobs() -> None:
    view = JobView()
    kling = SimulatorProvider("kling", "http://127.0.0.1:9", "key", DEV_WEBHOOK_SECRET)
    feed = NotificationFeed("127.0.0.1:9", TOPIC, 1, view, webhooks=(WEBHOOKS, 1), connectors={"kling": kling})
    try:
        for job_id in ("watched", "unwatched", "garbled"):
            view.apply({"job_id": job_id, "version": 1, "status": "submitted", "provider": "kling",
                        "provider_job_id": "pj-1", "attempt": 0, "progress": 0.0, "tenant": "t", "updated_at": 1})
        queue, garbled = view.subscribe("watched"), view.subscribe("garbled")
        decoded: list[str] = []
        word = feed._word

        def counted(msg: Any) -> Any:
            decoded.append(msg.key().decode())
            return word(msg)

        feed._word = counted  # type: ignore[method-assign]
        await feed._apply([WebhookRecord("unwatched"), WebhookRecord("garbled", b"\x00 not avro"),
                           WebhookRecord("watched")], False)
        assert decoded == ["garbled", "watched"], "only watched jobs' records are decoded"
        told = queue.get_nowait()
        assert (told["status"], told["progress"]) == ("running", 0.3)
        assert garbled.empty() and view.get("unwatched")["status"] == "submitted"  # type: ignore[index]
    finally:
        feed._consumer.close()


async def test_the_feed_tells_the_view_how_far_the_workers_read_each_requests_partition_to_admit() -> None:
    # The backlog guard counts the requests past these as not yet admitted: the jobs they admitted
    # are counted as queued already, whatever offset the workers committed.
    batches = [[Record("j1", (0, 3)), Record("j2", (1, 7)), Record("j3", (0, 5)), Record("j4")],
               [Record("j5", (0, 1))]]  # a change of an older job names its older request
    _, view = await _apply_watched(batches)
    assert view.open_jobs.admitted_to == {0: 6, 1: 8}
