"""guard.process: poison is parked at once, a passing fault is retried, a lasting one is parked."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from floodgate.errors import SchemaError
from floodgate.throttle import Backoff
from streams import guard
from streams.emit import Emitter


class FakeEmitter(Emitter):
    """Records what would be dead-lettered; no Faust app behind it."""

    def __init__(self) -> None:
        self.parked: list[str] = []

    async def dead_letter(self, topic: str, message: object, reason: str, exc: BaseException | None) -> None:
        self.parked.append(reason)


MSG = SimpleNamespace(topic="t", partition=0, offset=7)
SCHEDULE = guard.BACKOFF


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "BACKOFF", Backoff(base=1e-6, cap=1e-6, jitter="none"))


async def test_transient_failure_is_retried_until_it_passes() -> None:
    calls = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("metadata not ready")

    emit = FakeEmitter()
    await guard.process(flaky, emit=emit, dlq="dlq", message=MSG, stage="s")
    assert len(calls) == 3 and emit.parked == []


async def test_poison_is_parked_without_retry() -> None:
    calls = []

    async def poison() -> None:
        calls.append(1)
        raise SchemaError("bad bytes")

    emit = FakeEmitter()
    counted = []
    await guard.process(poison, emit=emit, dlq="dlq", message=MSG, stage="s", on_dead_letter=lambda: counted.append(1))
    assert len(calls) == 1 and len(emit.parked) == 1 and "invalid record" in emit.parked[0] and counted == [1]


def test_the_schedule_is_short_and_fixed() -> None:
    assert [SCHEDULE.delay(n) for n in range(guard.RETRIES)] == [0.2, 1.0, 3.0]


async def test_lasting_failure_is_parked_after_every_retry() -> None:
    calls = []

    async def broken() -> None:
        calls.append(1)
        raise RuntimeError("still broken")

    emit = FakeEmitter()
    await guard.process(broken, emit=emit, dlq="dlq", message=MSG, stage="s")
    assert len(calls) == guard.RETRIES + 1
    assert len(emit.parked) == 1 and "after 4 attempts" in emit.parked[0]
