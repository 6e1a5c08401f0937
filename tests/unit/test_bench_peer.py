"""The peer comparison's pure parts: the ideal drain, each system's figures, the side-by-side
section of the report and the drain target's judgement."""
from __future__ import annotations

import math
from typing import Any

import pytest

from floodgate.bench import peerreport, targets
from floodgate.bench.peer import PeerConfig

SIM = {"concurrency_limit": 10, "max_concurrency": 10, "rejected_429": 0, "jobs_created": 2000,
       "render_seconds": 1200.0, "first_created_at": 1000.05}


def system(share_work: float = 1200.0, n429: int = 0, offered: int = 2000, delivered: int = 2000,
           last_done: float = 1124.0) -> dict[str, Any]:
    sim = {**SIM, "render_seconds": share_work, "rejected_429": n429, "jobs_created": delivered}
    return {"answer": "202 at once", "offered": offered, "accepted": offered, "delivered": delivered,
            "unfinished": 0, "drain": peerreport.drain(1000.0, [1010.0, last_done], sim, 10),
            "provider": peerreport.provider(sim, offered),
            "accept_ms": {"count": offered, "p50": 1.5, "p99": 12.25}}


def test_ideal_drain_is_first_submission_plus_work_over_the_limit() -> None:
    assert peerreport.ideal_drain_s(0.05, 1200.0, 10) == pytest.approx(120.05)
    # 2,000 jobs of a 0.6 s mean render at limit 10: jobs × mean render / limit
    assert peerreport.ideal_drain_s(0.0, 2000 * 0.6, 10) == pytest.approx(120.0)
    with pytest.raises(ValueError):
        peerreport.ideal_drain_s(0.0, 1.0, 0)
    with pytest.raises(ValueError):
        peerreport.ideal_drain_s(0.0, -1.0, 10)


def test_drain_is_measured_from_the_first_arrival_and_counts_queue_delay_as_work() -> None:
    d = peerreport.drain(1000.0, [1050.0, 1124.0, 1100.0], SIM, 10, queue_delay_s=0.01)
    assert d["drain_s"] == pytest.approx(124.0)
    assert d["first_submission_s"] == pytest.approx(0.05)
    assert d["work_s"] == pytest.approx(1200.0 + 2000 * 0.01)
    assert d["ideal_s"] == pytest.approx(0.05 + 122.0)
    assert d["share_of_ideal"] == pytest.approx(122.05 / 124.0)
    assert d["mean_render_s"] == pytest.approx(0.61)


def test_drain_with_nothing_done_is_not_a_number() -> None:
    d = peerreport.drain(1000.0, [], {"jobs_created": 0, "render_seconds": 0.0, "first_created_at": None}, 10)
    assert math.isnan(d["drain_s"]) and math.isnan(d["share_of_ideal"]) and math.isnan(d["mean_render_s"])


def test_provider_figures_count_429s_per_job_offered_and_moments_over_the_limit() -> None:
    p = peerreport.provider({**SIM, "rejected_429": 23_800, "max_concurrency": 12}, 2000)
    assert (p["rejected_429"], p["rejected_429_per_job"], p["over_limit"]) == (23_800, 11.9, 2)
    assert peerreport.provider(SIM, 2000)["over_limit"] == 0


def test_figure_quotes_share_and_429s_or_why_not() -> None:
    assert peerreport.figure(system(n429=23_800)) == "96.8% of ideal, 23,800 × 429 (11.90 per job)"
    assert peerreport.figure(system(delivered=170, share_work=102.0)).endswith("170 of 2,000 videos delivered")
    assert peerreport.figure({"skipped": "redis-server is not installed"}) == "– (redis-server is not installed)"
    assert peerreport.figure(None) == "– (not run)"


def test_section_shows_the_systems_side_by_side_in_a_fixed_order() -> None:
    cfg = PeerConfig().__dict__
    p = {"config": cfg, "systems": {"naive": {"skipped": "nginx is not installed"},
                                    "celery": system(n429=23_800, last_done=1120.0), "floodgate": system()}}
    md = "\n".join(peerreport.section(p))
    head = next(line for line in md.splitlines() if line.startswith("|  |"))
    assert head == "|  | Floodgate | Celery + Redis | naive + nginx |"
    share = next(line for line in md.splitlines() if line.startswith("| **drain vs ideal**"))
    assert share == "| **drain vs ideal** | **96.8%** | **100.0%** | – |"
    row429 = next(line for line in md.splitlines() if line.startswith("| provider 429s"))
    assert row429 == "| provider 429s (per job offered) | 0 (0.00) | 23,800 (11.90) | – |"
    assert "Not measured — naive + nginx: nginx is not installed." in md
    assert "first submission 0.05 s + 1,200.0 s of renders ÷ 10" in md
    assert "2,000 jobs at 200 req/s" in md


def test_drain_target_is_judged_on_floodgate_with_the_peers_quoted() -> None:
    def results(fg: dict[str, Any]) -> dict[str, Any]:
        return {"peer": {"systems": {"floodgate": fg, "celery": system(n429=23_800), "naive": {"skipped": "x"}}}}

    met = targets.drain(results(system(last_done=1123.0)))
    assert met["status"] == targets.MET and met["value"] == pytest.approx(120.05 / 123.0)
    assert "Celery + Redis 96.8% of ideal, 23,800 × 429" in met["measured"] and "naive – (x)" in met["measured"]
    assert targets.drain(results(system()))["status"] == targets.NOT_MET  # 96.8% < 97%
    assert targets.drain(results(system(n429=1, last_done=1121.0)))["status"] == targets.NOT_MET
    assert targets.drain(results(system(offered=60)))["status"] == targets.NOT_MEASURED
    assert targets.drain({})["status"] == targets.NOT_MEASURED
    assert targets.drain(results({"error": "boom"}))["status"] == targets.NOT_MEASURED
