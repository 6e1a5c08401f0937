"""The chaos checker on hand-made histories: each promise broken once, and a clean run passing."""
from __future__ import annotations

import pytest

from floodgate.chaos.checker import (
    Accepted,
    Fault,
    FinalRead,
    History,
    ProviderJob,
    ResultRecord,
    check,
    over_limit_moments,
    recoveries,
)


def provider_job(n: int, job: str, created: float, done: float | None, *, attempt: int = 0,
                 provider: str = "wan", hooks: tuple[str, ...] = ()) -> ProviderJob:
    return ProviderJob(provider, f"video_{n}", job, f"{job}:{attempt}", created, done, hooks)


def clean(n: int = 4) -> History:
    jobs = [f"j{i}" for i in range(n)]
    return History(
        "clean", accepted=[Accepted(j, float(i)) for i, j in enumerate(jobs)],
        finals=[FinalRead(j, "completed") for j in jobs],
        results=[ResultRecord(j, "completed", 10.0 + i) for i, j in enumerate(jobs)],
        requested=set(jobs), webhook_ids={f"evt_{j}" for j in jobs},
        provider_jobs=[provider_job(i, j, float(i), float(i) + 0.5, hooks=(f"evt_{j}",)) for i, j in enumerate(jobs)],
        limits={"wan": 1}, started_at=0.0, ended_at=20.0)


def test_a_clean_history_meets_the_bar() -> None:
    verdict = check(clean())
    assert verdict.passed
    assert (verdict.accepted, verdict.terminal, verdict.completed) == (4, 4, 4)
    assert verdict.max_concurrency == {"wan": 1}


def test_an_accepted_job_floodgate_never_heard_of_is_lost() -> None:
    history = clean()
    history.accepted.append(Accepted("ghost", 5.0))
    history.finals.append(FinalRead("ghost", None))
    verdict = check(history)
    assert verdict.lost == ["ghost"] and verdict.unstored_requests == ["ghost"]
    assert not verdict.stuck and not verdict.passed


def test_a_known_job_without_an_end_is_stuck() -> None:
    history = clean()
    history.results = [r for r in history.results if r.job_id != "j2"]
    history.finals = [FinalRead(f.job_id, "in_progress" if f.job_id == "j2" else f.status) for f in history.finals]
    verdict = check(history)
    assert verdict.stuck == ["j2"] and not verdict.lost and verdict.terminal == 3 and not verdict.passed


def test_the_final_get_alone_counts_as_terminal() -> None:
    history = clean()
    history.results = [r for r in history.results if r.job_id != "j1"]
    assert check(history).passed


def test_two_provider_jobs_for_one_attempt_are_a_duplicate_and_a_new_attempt_is_not() -> None:
    history = clean()
    history.limits = {"wan": 5}
    history.provider_jobs.append(provider_job(9, "j0", 0.1, 0.2))
    history.provider_jobs.append(provider_job(10, "j1", 1.1, 1.2, attempt=1))
    verdict = check(history)
    assert verdict.duplicated == {"j0:0": 2} and verdict.duplicated_count == 1 and not verdict.passed


def test_overlapping_provider_jobs_beyond_the_limit_are_counted() -> None:
    jobs = [provider_job(0, "a", 0.0, 2.0), provider_job(1, "b", 1.0, 3.0), provider_job(2, "c", 1.5, 4.0),
            provider_job(3, "d", 3.0, None)]
    assert over_limit_moments(jobs, 3) == (0, 3)
    assert over_limit_moments(jobs, 2) == (1, 3)  # "c" made three; "d" came after "a" and "b" ended
    # A slot freed and taken in the same instant is not an overlap.
    assert over_limit_moments([provider_job(0, "a", 0.0, 1.0), provider_job(1, "b", 1.0, 2.0)], 1) == (0, 1)


def test_over_limit_fails_the_verdict_per_provider() -> None:
    history = clean()
    history.provider_jobs.append(provider_job(7, "j0x", 0.2, 0.4))
    verdict = check(history)
    assert verdict.over_limit == {"wan": 1} and not verdict.passed


def test_a_webhook_answered_2xx_but_not_in_kafka_is_reported() -> None:
    history = clean()
    history.webhook_ids = {"evt_j0", "evt_j1", "evt_j2"}
    verdict = check(history)
    assert verdict.unstored_webhooks == ["evt_j3"] and not verdict.passed


def test_conflicting_terminal_states_are_reported() -> None:
    history = clean()
    history.results.append(ResultRecord("j3", "failed", 15.0))
    assert check(history).conflicting == ["j3"]


def test_recovery_is_the_time_to_the_next_completion_and_to_half_the_rate() -> None:
    # 10 completions/s before the fault at t=10, nothing for 3 s, then 10/s again.
    before = [i / 10 for i in range(50, 100)]
    after = [13 + i / 10 for i in range(100)]
    (rec,) = recoveries(before + after, [Fault("kill", 10.0)], ended_at=23.0, window=5.0, step=0.25)
    assert rec.to_next_completion == pytest.approx(3.0)
    # The first 5-s window with at least 25 completions (half of 50) ends 2.5 s after they resume.
    assert rec.to_half_rate == pytest.approx(5.5, abs=0.3)


def test_no_recovery_is_claimed_when_the_rate_never_comes_back() -> None:
    before = [i / 10 for i in range(50, 100)]
    (rec,) = recoveries(before + [12.0], [Fault("kill", 10.0)], ended_at=30.0, window=5.0)
    assert rec.to_next_completion == pytest.approx(2.0) and rec.to_half_rate is None
