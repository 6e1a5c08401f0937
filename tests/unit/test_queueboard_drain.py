"""The board's ETAs over a simulated drain: a burst on a provider with ten slots, renders of 30 s
to 3 min, a slot taken again half a second after its job ends, and a worker that is too busy to
start anything for half a minute and then starts what waited in a bunch (as a worker admitting a
spike does). The board sees every change at the moment it happens; the ETA of every queued job
is read at a few moments of the drain and set against when the job actually started.

Pure: no Kafka, no clock. The spike bench measures the same thing on the running stack; this
pins the estimator's behaviour where it is cheap to see."""
from __future__ import annotations

import heapq
import random
import statistics
from dataclasses import dataclass
from typing import Any

import pytest

from floodgate.queueboard import QueueBoard

T0 = 1_800_000_000.0
LIMIT = 10
READS = (5.0, 20.0, 45.0, 70.0, 100.0, 140.0)
"""Seconds after the burst at which every queued job's ETA is read (45 s: during the stall)."""


@dataclass(frozen=True)
class Life:
    created: float
    start: float
    end: float


def plan(seed: int, *, burst: int = 300, handover: float = 0.5,
         stall: tuple[float, float] = (30.0, 60.0)) -> dict[str, Life]:
    """When each job is created, starts and ends: four jobs spread over the five minutes before
    the burst, then ``burst`` jobs at once, served in order on ``LIMIT`` slots."""
    rng = random.Random(seed)
    jobs = [(f"early{k}", -300.0 + 60 * k) for k in range(4)] + [(f"j{i}", i / 1000) for i in range(burst)]
    free = [float("-inf")] * LIMIT  # when each slot is free
    out: dict[str, Life] = {}
    for job, created in jobs:
        freed = heapq.heappop(free)
        start = max(created, freed + handover)
        if stall[0] <= start < stall[1]:
            start = stall[1] + len(out) / 10_000  # the worker catches up: a bunch of starts at once
        end = start + rng.uniform(30.0, 180.0)
        heapq.heappush(free, end)
        out[job] = Life(created, start, end)
    return out


def snapshot(job: str, status: str, life: Life, at: float) -> dict[str, Any]:
    return {"job_id": job, "status": status, "provider": "kling", "tenant": "a",
            "created_at": int((T0 + life.created) * 1000), "updated_at": int((T0 + at) * 1000)}


def eta_errors(lives: dict[str, Life], reads: tuple[float, ...] = READS) -> list[float]:
    """Absolute percentage errors of every ETA read at ``reads`` for jobs that then waited ≥ 10 s."""
    changes = sorted((at, order, job, status) for job, life in lives.items()
                     for order, (status, at) in enumerate((("queued", life.created), ("submitted", life.start),
                                                           ("completed", life.end))))
    board = QueueBoard({"kling": LIMIT})
    errors: list[float] = []
    seen = 0
    for read in reads:
        while seen < len(changes) and changes[seen][0] <= read:
            at, _, job, status = changes[seen]
            board.observe(snapshot(job, status, lives[job], at), T0 + at)
            seen += 1
        for job, life in lives.items():
            if board.position(job) is None:
                continue
            eta = board.standing(snapshot(job, "queued", life, life.created), T0 + read).eta_seconds
            actual = life.start - read
            assert eta is not None, "every queued job has an ETA once a render has been seen"
            if actual >= 10.0:
                errors.append(abs(eta - actual) / actual)
    return errors


def test_the_eta_through_a_drain_with_a_stalled_worker() -> None:
    """Before render times counted settled renders only and the observed pace was blended in over a
    round of the slots, the short renders that end first and the bunch of starts after the stall
    made the median error 19% (30-48% for the reads during and after the stall); now about 7%."""
    errors = sorted(e for seed in range(5) for e in eta_errors(plan(seed)))
    assert len(errors) > 8000
    assert statistics.median(errors) <= 0.12
    assert errors[int(0.9 * len(errors))] <= 0.5  # the jobs near the head wait on a few renders' luck


@pytest.mark.parametrize("read", READS)
def test_no_moment_of_the_drain_is_far_off(read: float) -> None:
    errors = eta_errors(plan(11), (read,))
    assert statistics.median(errors) <= 0.2, f"read at {read:g} s"
