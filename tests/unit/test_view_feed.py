"""The job view's feed hands the loop back while it applies a backlog (``floodgate.api.feed``);
no Kafka: its records are handed to the applier as the feed thread would."""
from __future__ import annotations

import asyncio
from typing import Any

from floodgate.api.feed import NotificationFeed
from floodgate.api.view import YIELD_EVERY, JobView
from floodgate.jobs.record import JobRecord
from floodgate.jobs.state import JobState

TOPIC = "fg.notifications"


class Record:
    """What librdkafka hands the feed thread, as much of it as the applier reads."""

    def __init__(self, job_id: str) -> None:
        state = JobState(job_id=job_id, tenant="t", model="kling-2.1", version=1)
        self._value = JobRecord(state).encode()

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
