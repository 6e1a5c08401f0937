"""The demo's sample jobs: what a user would see of their place in line, in a few lines."""
from __future__ import annotations

import io
import json
from typing import Any

from floodgate.demo import SPILLOVER, Sample, Tally, print_summary
from floodgate.provider_config import dev_setup, dev_table, from_dict


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


def test_a_sample_served_by_another_model_says_which_and_why_when_it_leaves_the_line() -> None:
    sample = Sample(8, "kling-2.1", "job_01abcdefghijklmn", "tok", accepted=100.0)
    note = "spilled from kling-2.1 at kling: about 12s to wait there (max_wait_s 10), wan-2.6 at wan had room"
    assert sample.update(job("queued", 40, 12.0), 100.5) is not None
    moved = {**job("submitted"), "serving_model": "wan-2.6", "route_note": note}
    assert sample.update(moved, 110.0) == (
        f"  [job_01ab…klmn kling-2.1] submitted left the line after 10s, served by wan-2.6 ({note})")
    assert sample.served_by == f"wan-2.6 ({note})"
    # Served by the model asked for: nothing to say.
    own = Sample(9, "wan-2.6", "job_01abcdefghijklmo", "tok", accepted=100.0)
    own.update({**job("submitted"), "serving_model": "wan-2.6"}, 101.0)
    assert own.served_by is None


def test_the_tally_counts_the_jobs_another_model_served_by_their_latest_state() -> None:
    tally = Tally()
    snap = {"job_id": "job_a", "model": "kling-2.1", "status": "queued", "version": 1, "serving_model": None}
    tally.add(snap)
    tally.add({**snap, "status": "submitted", "version": 3, "serving_model": "wan-2.6"})
    tally.add({**snap, "status": "queued", "version": 2})  # older news: not taken
    tally.add({"job_id": "job_b", "model": "sora-2", "status": "completed", "version": 5, "serving_model": "wan-2.6"})
    tally.add({"job_id": "job_c", "model": "wan-2.6", "status": "completed", "version": 5, "serving_model": "wan-2.6"})
    assert tally.counts() == {"submitted": 1, "completed": 2}
    assert tally.served_elsewhere() == {"kling-2.1 → wan-2.6": 1, "sora-2 → wan-2.6": 1}


def test_the_summary_says_which_other_model_served_what() -> None:
    summary = {"offered": 2, "rate": 1.0, "accepted": 2, "errors": {}, "accept_p50_ms": 1.0, "accept_p99_ms": 2.0,
               "completed": 2, "failed": 0, "elapsed_s": 2.0, "jobs_per_s": 1.0, "providers": {},
               "served_elsewhere": {"sora-2 → wan-2.6": 3, "kling-2.1 → wan-2.6": 5},
               "samples": [{"job_id": "job_a", "model": "kling-2.1", "first_place": 40, "first_eta_s": 12.0,
                            "started_after_s": 10.0, "status": "completed", "served_by": "wan-2.6 (spilled)"}]}
    buffer = io.StringIO()
    print_summary(summary, buffer)
    out = buffer.getvalue()
    assert "served by another model: kling-2.1 → wan-2.6 5, sora-2 → wan-2.6 3" in out
    assert ("sample job_a (kling-2.1): first told place 40, eta 12s; left the line after 10s; "
            "served by wan-2.6 (spilled); completed") in out


def test_the_demo_routing_is_the_dev_table_with_its_spillover_rules() -> None:
    table = dev_table("http://127.0.0.1:9", spillover=SPILLOVER)
    setup = from_dict(json.loads(json.dumps(table)))  # as the demo writes and the stack reads it
    assert set(setup.routing.spillover) == {"kling-2.1", "sora-2"}
    assert all(rule.equivalents == ("wan-2.6",) and rule.max_wait_s == 10
               for rule in setup.routing.spillover.values())
    plain = dev_setup("http://127.0.0.1:9")
    assert not plain.routing.spillover
    assert set(plain.routing.routes) == set(setup.routing.routes) == {"wan-2.6", "kling-2.1", "sora-2"}
