"""The waiting user's figures in the spike bench, without a stack: the ETA's error, per-tenant
waits, the fair-share ratio, the spillover reduction and spill counts, the tenants by arrival,
the ETA sample, the spillover routing file, and their target rows and report section."""
from __future__ import annotations

import asyncio
import collections
import math
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, Counter, generate_latest

from floodgate.bench import load, markdown, targets, waits
from floodgate.bench.arrivals import SpikePlan
from floodgate.bench.etaprobe import EtaProbe
from floodgate.bench.fairshare import FairConfig
from floodgate.bench.http import build_request
from floodgate.bench.spike import SpikeConfig
from floodgate.bench.stacks import providers, routing_table
from floodgate.bench.waits import TENANT_A, TENANT_B, EtaReading
from floodgate.provider_config import from_dict


# -- the ETA's error ---------------------------------------------------------------------
def test_ape_is_relative_to_the_actual_value() -> None:
    assert waits.ape(12.0, 10.0) == pytest.approx(0.2)
    assert waits.ape(8.0, 10.0) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        waits.ape(1.0, 0.0)


def reading(job: str, eta: float, read_at: float = 100.0, accepted_at: float = 99.99) -> EtaReading:
    return EtaReading(job, accepted_at, read_at, eta)


def test_eta_error_counts_from_the_reading_and_leaves_out_short_and_unstarted_waits() -> None:
    readings = [reading("a", 10.0), reading("b", 30.0), reading("c", 5.0), reading("d", 1.0), reading("e", 9.0)]
    started = {"a": 110.0,  # waited 10 s: exact
               "b": 120.0,  # waited 20 s, told 30: +50%
               "c": 110.0,  # waited 10 s, told 5: -50%
               "d": 100.1}  # waited 0.1 s: under min_wait
    out = waits.eta_error(readings, started, min_wait=1.0)
    assert out["count"] == 3 and out["readings"] == 5
    assert out["unstarted"] == 1 and out["shorter_than_min_wait"] == 1
    assert out["ape_p50"] == pytest.approx(0.5) and out["ape_p90"] == pytest.approx(0.5)
    assert out["signed_p50"] == pytest.approx(0.0)
    assert out["read_after_accept_ms"]["p50"] == pytest.approx(10.0)


def test_eta_points_say_when_and_which_way() -> None:
    placed = EtaReading("c", 99.99, 100.0, 4.0, queue_position=7)
    points = waits.eta_points([reading("a", 10.0), reading("b", 3.0), placed], {"a": 112.0, "c": 105.0}, origin=90.0,
                              model_of={"c": "kling-2.1"})
    assert points == [(10.0, 10.0, 12.0, None, None), (10.0, 4.0, 5.0, 7, "kling-2.1")]


def test_eta_error_of_nothing_is_nan_not_zero() -> None:
    out = waits.eta_error([], {}, 1.0)
    assert out["count"] == 0 and math.isnan(out["ape_p50"])


# -- tenants and waits ---------------------------------------------------------------------
@pytest.mark.parametrize(("due", "tenant"), [(0.0, TENANT_B), (9.99, TENANT_B), (10.0, TENANT_A), (17.9, TENANT_A),
                                             (18.0, TENANT_B), (25.0, TENANT_B)])
def test_tenant_a_sends_the_first_share_of_the_spike(due: float, tenant: str) -> None:
    assert waits.tenant_of_arrival(due, (10.0, 20.0), 0.8) == tenant


def test_sample_every_keeps_at_most_about_the_maximum() -> None:
    assert waits.sample_every(1262, 500) == 3
    assert waits.sample_every(100, 500) == 1
    with pytest.raises(ValueError):
        waits.sample_every(10, 0)


def test_tenant_waits_per_tenant_with_unstarted_and_early_starts() -> None:
    tenant_of = {"a1": TENANT_A, "a2": TENANT_A, "a3": TENANT_A, "b1": TENANT_B}
    accepted = {"a1": 10.0, "a2": 10.0, "a3": 10.0, "b1": 12.0}
    started = {"a1": 20.0, "a2": 30.0, "b1": 11.9}  # b1 started before its 202 reached the client
    out = waits.tenant_waits(tenant_of, accepted, started)
    assert out[TENANT_A]["count"] == 2 and out[TENANT_A]["unstarted"] == 1
    assert out[TENANT_A]["p50"] == 10.0 and out[TENANT_A]["p90"] == 20.0
    assert out[TENANT_B]["p50"] == 0.0 and out[TENANT_B]["unstarted"] == 0


def test_fair_ratio_and_reduction() -> None:
    assert waits.fair_ratio({TENANT_A: {"p50": 20.0}, TENANT_B: {"p50": 1.0}}) == pytest.approx(0.05)
    assert math.isnan(waits.fair_ratio({TENANT_A: {"p50": 20.0}}))
    assert waits.reduction(200.0, 150.0) == pytest.approx(0.25)
    assert math.isnan(waits.reduction(None, 150.0)) and math.isnan(waits.reduction(0.0, 1.0))


def test_spilled_counts_read_the_workers_metric() -> None:
    registry = CollectorRegistry()
    spilled = Counter("floodgate_spilled_total", "spills", ["from_provider", "to_provider"], registry=registry)
    spilled.labels("kling", "wan").inc(41)
    Counter("floodgate_other_total", "other", registry=registry).inc(5)
    assert waits.spilled_counts(generate_latest(registry).decode()) == {"kling→wan": 41.0}
    assert waits.spilled_counts("") == {}


def test_spilled_jobs_are_those_served_by_another_model() -> None:
    assert waits.spilled_jobs({"1": ("kling-2.1", "wan-2.6"), "2": ("kling-2.1", None),
                               "3": ("sora-2", "wan-2.6"), "4": ("wan-2.6", "wan-2.6")}) == 2


def test_fair_schedule_sends_b_a_moment_after_a() -> None:
    cfg = FairConfig(burst=3, late=2, delay_s=1.0, rate=10.0)
    assert cfg.schedule() == pytest.approx([0.0, 0.1, 0.2, 1.2, 1.3])
    assert [cfg.tenant(i) for i in range(5)] == [TENANT_A] * 3 + [TENANT_B] * 2


# -- the spillover routing file ----------------------------------------------------------
def test_the_spillover_rules_load_as_a_routing_file_and_scale_with_time() -> None:
    cfg = SpikeConfig(plan=SpikePlan(time_factor=0.02), spillover_max_wait=60.0)
    table = routing_table(providers(10, (30.0, 180.0)), "http://127.0.0.1:9", spillover=cfg.spillover_rules())
    routing = from_dict(table).routing
    assert set(routing.spillover) == {"kling-2.1", "sora-2"}
    assert routing.spillover["sora-2"].equivalents == ("wan-2.6",)
    assert routing.spillover["kling-2.1"].max_wait_s == pytest.approx(1.2)
    assert "spillover" not in routing_table(providers(10, (30.0, 180.0)), "http://127.0.0.1:9")


def test_the_spikes_render_times_load_as_a_routing_file_and_scale_with_time() -> None:
    """The prior of the paces: the renders' range (30 s to 3 min simulated), in wall seconds."""
    cfg = SpikeConfig(plan=SpikePlan(time_factor=0.02))
    setup = from_dict(routing_table(cfg.providers(), "http://127.0.0.1:9", render_times=cfg.render_times()))
    assert setup.render_times == {"kling": pytest.approx(2.1), "wan": pytest.approx(2.1)}
    assert from_dict(routing_table(cfg.providers(), "http://127.0.0.1:9")).render_times == {}


# -- the load's hooks ----------------------------------------------------------------------
def test_build_request_adds_headers() -> None:
    raw = build_request("GET", "h:1", "/v1/jobs/j", headers={"Authorization": "Bearer t"})
    assert raw == b"GET /v1/jobs/j HTTP/1.1\r\nHost: h:1\r\nAuthorization: Bearer t\r\n\r\n"


def test_on_accept_hears_of_202s_only() -> None:
    answers = {0: (202, "job_0", "tok0"), 1: (429, None, None), 2: (202, "job_2", "tok2")}

    async def request(client: Any, i: int, timeout: float) -> load.Answer:
        return answers[i]

    heard: list[tuple[int, str, str]] = []
    wrapped = load.on_accept(request, lambda i, job, token: heard.append((i, job, token)))
    assert [asyncio.run(wrapped(None, i, 1.0)) for i in range(3)] == list(answers.values())  # type: ignore[arg-type]
    assert heard == [(0, "job_0", "tok0"), (2, "job_2", "tok2")]


def test_the_probe_reads_until_a_number_and_counts_what_left_the_line() -> None:
    """Against a tiny server: job q has no place for its first two reads, then an ETA; job s is
    already submitted; job x (not in the sample) is never read."""
    reads: dict[str, int] = {}

    async def job(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        assert request.headers["Authorization"] == f"Bearer tok-{job_id}"
        reads[job_id] = reads.get(job_id, 0) + 1
        if job_id == "s":
            return web.json_response({"status": "submitted", "eta_seconds": None})
        if reads[job_id] < 3:
            return web.json_response({"status": "queued", "queue_position": None, "eta_seconds": None})
        return web.json_response({"status": "queued", "queue_position": 7, "eta_seconds": 4.5})

    async def main() -> EtaProbe:
        app = web.Application()
        app.router.add_get("/v1/jobs/{job_id}", job)
        async with TestServer(app, host="127.0.0.1") as server:
            probe = EtaProbe(str(server.make_url("")).rstrip("/"), every=2, max_samples=2, rate=1000.0,
                             retry=0.01)
            task = asyncio.create_task(probe.run())
            # Requests in the sample (about one in two, by a hash of the index) are q and s.
            taken = [i for i in range(64) if waits.in_sample(i, 2)][:2]
            left = [i for i in range(64) if not waits.in_sample(i, 2)][:2]
            for i, job_id in sorted(zip(taken + left, ["q", "s", "x", "y"], strict=True)):
                probe.offer(i, job_id, f"tok-{job_id}")
            await probe.finish(timeout=5.0)
            await asyncio.wait_for(task, 5.0)
            return probe

    probe = asyncio.run(main())
    assert reads == {"q": 3, "s": 1}
    [got] = probe.readings
    assert (got.job_id, got.eta_seconds, got.queue_position) == ("q", 4.5, 7)
    assert got.read_at >= got.accepted_at
    assert probe.describe()["left_before_eta"] == 1 and probe.describe()["gave_up"] == 0


# -- target rows and the report section ------------------------------------------------------
def sim(created: int, n429: int = 0, peak: int = 10) -> dict[str, Any]:
    return {"concurrency_limit": 10, "max_concurrency": peak, "rejected_429": n429, "jobs_created": created}


def spike_results(*, ape50: float = 0.2, count: int = 400, ratio: float = 0.05, burst: int = 300,
                  with_s: float = 140.0, n429: int = 0, offered: int = 1262) -> dict[str, Any]:
    tenants = {TENANT_A: {"count": 1000, "p50": 60.0, "p90": 100.0, "max": 120.0, "unstarted": 0},
               TENANT_B: {"count": 262, "p50": 20.0, "p90": 40.0, "max": 50.0, "unstarted": 0}}
    return {"spike": {
        "config": {"burst_share": 0.8, "plan": {"time_factor": 0.02}},
        "unfinished": 0, "providers": {"kling": sim(842), "wan": sim(420)},
        "tenants": tenants,
        "eta": {"count": count, "readings": count + 20, "min_wait_s": 0.2, "ape_p50": ape50, "ape_p90": 0.6,
                "signed_p50": -0.1, "unstarted": 0, "shorter_than_min_wait": 20,
                "read_after_accept_ms": {"count": count, "p50": 12.0, "p90": 900.0, "p99": 2000.0,
                                         "p999": 2100.0, "max": 2100.0},
                "by_tenant": {TENANT_A: {"count": 300, "ape_p50": 0.3, "ape_p90": 0.9, "signed_p50": -0.2},
                              TENANT_B: {"count": 100, "ape_p50": 0.1, "ape_p90": 0.4, "signed_p50": 0.05}},
                "probe": {"offered": count + 30, "reads": count + 100, "with_eta": count + 20, "left_before_eta": 10,
                          "gave_up": 0, "errors": 0, "every": 3, "max_rate_per_s": 50.0}},
        "fair": {"config": {"burst": burst, "late": 10, "delay_s": 1.0}, "ratio": ratio,
                 "waits": {TENANT_A: {"count": burst, "p50": 20.0, "p90": 30.0, "max": 33.0, "unstarted": 0},
                           TENANT_B: {"count": 10, "p50": 20.0 * ratio, "p90": 2.0, "max": 2.5, "unstarted": 0}}},
        "spillover": {"offered": offered, "accepted": offered, "errors": {}, "completed": offered, "failed": 0,
                      "unfinished": 0, "drain_wall_s": with_s, "without_drain_wall_s": 200.0,
                      "reduction": waits.reduction(200.0, with_s),
                      "providers": {"kling": sim(600), "wan": sim(662, n429)},
                      "tenants": tenants, "spilled_jobs": 242, "spilled_metric": {"kling→wan": 242.0},
                      "max_wait_s": 60.0, "max_wait_wall_s": 1.2},
        "series": {},
    }}


def test_eta_row_is_judged_on_the_median_error() -> None:
    assert targets.eta_error(spike_results(ape50=0.2))["status"] == targets.MET
    row = targets.eta_error(spike_results(ape50=0.3))
    assert row["status"] == targets.NOT_MET and "p50 30%" in row["measured"] and "p90 60%" in row["measured"]
    assert "by tenant: tenant-a p50 30% (signed -20%); tenant-b p50 10% (signed +5%)" in row["measured"]
    assert targets.eta_error(spike_results(count=20))["status"] == targets.NOT_MEASURED
    assert targets.eta_error({"spike": {"error": "boom"}})["status"] == targets.NOT_MEASURED
    assert "render_time" not in row["measured"]
    configured = spike_results(ape50=0.3)
    times = SpikeConfig(plan=SpikePlan(time_factor=0.02)).render_times()
    configured["spike"]["config"] = {"render_time_configured": times}
    assert "prior until renders are seen): kling 0.6-3.6 s, wan 0.6-3.6 s" in targets.eta_error(configured)["measured"]


def test_fair_share_row_wants_b_under_a_tenth_of_a() -> None:
    assert targets.fair_share(spike_results(ratio=0.05))["status"] == targets.MET
    row = targets.fair_share(spike_results(ratio=0.12))
    assert row["status"] == targets.NOT_MET and "12.0%" in row["measured"]
    assert targets.fair_share(spike_results(burst=30))["status"] == targets.NOT_MEASURED


def test_spillover_row_wants_a_quarter_off_the_drain_and_no_429() -> None:
    row = targets.spillover(spike_results(with_s=140.0))
    assert row["status"] == targets.MET and "30.0% shorter" in row["measured"]
    assert "could give 25%" in row["measured"]  # kling carried 842 of 1,262: 1 - 631/842
    assert targets.spillover(spike_results(with_s=160.0))["status"] == targets.NOT_MET
    assert targets.spillover(spike_results(with_s=140.0, n429=1))["status"] == targets.NOT_MET
    assert targets.spillover(spike_results(offered=100))["status"] == targets.NOT_MEASURED


def test_spillover_row_gives_the_floor_from_the_renders_done() -> None:
    """With the simulator's render-seconds, the row says how short the drain could be at all."""
    results = spike_results(with_s=140.0)
    for provider, seconds in (("kling", 1500.0), ("wan", 1300.0)):
        results["spike"]["spillover"]["providers"][provider]["render_seconds"] = seconds - 12.62
    results["spike"]["config"].update({"queue_delay": 1.0})  # simulated; 0.02 s wall per job at 0.02
    row = targets.spillover(results)
    # 2,800 slot-seconds (renders, and 1,262 jobs × 0.02 s queueing) over 20 slots: 140 s, 30%
    # shorter than 200 s; the run kept every slot busy.
    assert "is 140.0 s: 30.0% shorter" in row["measured"] and "kept 100.0% of the slots' time busy" in row["measured"]
    assert "could give" not in row["measured"]
    results["spike"]["providers"]["kling"]["render_seconds"] = 1500.0 - 16.84  # 842 jobs × 0.02 s queueing
    results["spike"]["drain_wall_s"] = 200.0
    assert "kling's without it 75.0%" in targets.spillover(results)["measured"]  # 1,500 over 10 slots, 200 s


def test_tenant_row_reports_both_tenants_with_and_without_spillover() -> None:
    row = targets.tenant_waits(spike_results())
    assert row["status"] == targets.REPORTED
    assert row["measured"].count("tenant-a: p50 60.00 / p90 100.00 s") == 2


def test_every_new_row_is_in_the_evaluation() -> None:
    names = [row["target"] for row in targets.evaluate(spike_results())]
    assert any(n.startswith("ETA at acceptance") for n in names)
    assert any(n.startswith("Fair queue") for n in names)
    assert any(n.startswith("Spike drain with spillover") for n in names)
    assert any(n.startswith("Per-tenant waits") for n in names)


def test_the_report_section_shows_each_figure() -> None:
    text = "\n".join(markdown.waiting(spike_results()["spike"]))
    assert "## The waiting user and the fair queue" in text
    assert "20% / 60% over 400 jobs" in text
    assert "tenant-a: 30% / 90%, -20% over 300" in text
    assert "200.0 s / 140.0 s wall: 30.0% shorter" in text
    assert "B's median wait is 5.0% of A's" in text
    assert "spike wait: tenant-b | p50 20.00 / p90 40.00" in text


def test_what_limits_the_drain_names_the_spillover_run() -> None:
    from floodgate.bench.limits import limits

    s = spike_results()["spike"]
    s.update({"capacity_per_s": 9.3, "utilisation": {}})
    s["config"].update({"limit": 10, "render": [30.0, 180.0]})
    [text] = [text for name, text in limits({"spike": s}, 2) if name == "Spike drain time"]
    assert "With spillover (242 jobs moved; jobs per provider: kling 600, wan 662)" in text
    assert "every 0.1 s wall here" in text
    del s["spillover"]
    [text] = [text for name, text in limits({"spike": s}, 2) if name == "Spike drain time"]
    assert "spillover" not in text


def test_the_eta_error_of_the_run_with_spillover_is_reported_beside_the_judged_one() -> None:
    results = spike_results(ape50=0.3)
    assert "with spillover" not in targets.eta_error(results)["measured"]  # none read: nothing said
    text = "\n".join(markdown.waiting(results["spike"]))
    assert "… with spillover: ETA absolute error (p50 / p90) | – |" in text
    results["spike"]["spillover"]["eta"] = {"count": 380, "ape_p50": 0.12, "ape_p90": 0.41, "signed_p50": 0.03}
    row = targets.eta_error(results)
    assert row["status"] == targets.NOT_MET, "the verdict stays the first run's"
    assert ("in the run with spillover (the lines pooled; reported, not judged): p50 12%, p90 41% (signed +3%) "
            "over 380") in row["measured"]
    text = "\n".join(markdown.waiting(results["spike"]))
    assert "… with spillover: ETA absolute error (p50 / p90) | 12% / 41% over 380 jobs; median signed 3% |" in text


def test_the_eta_error_is_shown_per_model_in_both_runs() -> None:
    results = spike_results()
    text = "\n".join(markdown.waiting(results["spike"]))
    assert "… per model (asked → serving where another served it) | – |" in text
    results["spike"]["eta"]["by_model"] = {"kling-2.1": {"count": 130, "ape_p50": 0.08, "ape_p90": 0.2,
                                                         "signed_p50": -0.02}}
    results["spike"]["spillover"]["eta"] = {"count": 380, "ape_p50": 0.12, "ape_p90": 0.41, "signed_p50": 0.03,
                                            "by_model": {"kling-2.1 → wan-2.6": {"count": 60, "ape_p50": 0.5,
                                                                                 "ape_p90": 0.9, "signed_p50": 0.5}}}
    text = "\n".join(markdown.waiting(results["spike"]))
    assert "… per model (asked → serving where another served it) | kling-2.1: 8% / 20%, -2% over 130 |" in text
    assert ("… with spillover, per model (asked → serving where another served it) | "
            "kling-2.1 → wan-2.6: 50% / 90%, 50% over 60 |") in text


def test_the_eta_sample_takes_every_model_of_the_loads_cycle() -> None:
    """The load asks for MODELS[i % 3]: a sample of every third index was one model alone."""
    every = waits.sample_every(1263, 500)
    sampled = [i for i in range(1263) if waits.in_sample(i, every)]
    assert 330 <= len(sampled) <= 510
    by_model = collections.Counter(i % 3 for i in sampled)
    assert all(by_model[m] >= len(sampled) / 5 for m in range(3)), by_model
    assert sampled == [i for i in range(1263) if waits.in_sample(i, every)]  # the same every run
    assert all(waits.in_sample(i, 1) for i in range(10))
