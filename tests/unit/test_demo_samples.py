"""The demo's sample jobs: what a user would see of their place in line, in a few lines."""
from __future__ import annotations

import io
from typing import Any

from floodgate.demo import Sample, print_summary


def job(status: str, place: int | None = None, eta: float | None = None) -> dict[str, Any]:
    return {"status": status, "queue_position": place, "eta_seconds": eta}


def test_a_sample_prints_its_moves_in_a_few_lines_and_remembers_what_it_was_told() -> None:
    sample = Sample(7, "wan-2.6", "job_01abcdefghijklmn", "tok", accepted=100.0)
    said = [sample.update(job("queued"), 100.1),               # before the board has it: no place
            sample.update(job("queued", 200, 40.0), 100.5),
            sample.update(job("queued", 195, 39.0), 101.0),    # moved less than a tenth: quiet
            sample.update(job("queued", 170, 34.0), 102.0),
            sample.update(job("queued", 168, 33.0), 107.5),    # a little, but 5 s later
            sample.update(job("submitted"), 130.0),
            sample.update(job("running"), 131.0),
            sample.update(job("completed"), 160.0)]
    assert said[0] == "  [job_01ab…klmn wan-2.6  ] queued"
    assert said[1] == "  [job_01ab…klmn wan-2.6  ] queued    place  200  eta  40s"
    assert said[2] is None
    assert said[3] is not None and "place  170" in said[3]
    assert said[4] is not None and "place  168" in said[4]
    assert said[5] == "  [job_01ab…klmn wan-2.6  ] submitted left the line after 30s"
    assert said[6] == "  [job_01ab…klmn wan-2.6  ] running"
    assert said[7] == "  [job_01ab…klmn wan-2.6  ] completed"
    assert sample.first == (200, 40.0) and sample.started_after == 30.0 and sample.status == "completed"


def test_the_summary_compares_each_sample_first_eta_with_its_wait() -> None:
    summary = {"offered": 3, "rate": 1.0, "accepted": 3, "errors": {}, "accept_p50_ms": 1.0, "accept_p99_ms": 2.0,
               "completed": 3, "failed": 0, "elapsed_s": 3.0, "jobs_per_s": 1.0, "providers": {},
               "samples": [{"job_id": "job_a", "model": "wan-2.6", "first_place": 12, "first_eta_s": 9.5,
                            "started_after_s": 11.2, "status": "completed"},
                           {"job_id": "job_b", "model": "kling-2.1", "first_place": None, "first_eta_s": None,
                            "started_after_s": 0.3, "status": "completed"}]}
    buffer = io.StringIO()
    print_summary(summary, buffer)
    out = buffer.getvalue()
    assert "sample job_a (wan-2.6): first told place 12, eta 10s; left the line after 11s; completed" in out
    assert "sample job_b (kling-2.1): never waited in line; left the line after 0s; completed" in out
