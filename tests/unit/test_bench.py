"""The benchmark's pure parts: statistics, arrival schedules, HTTP response parsing, profile
summaries, target judgements, the generated nginx configuration, and what the command says without
the bench extra."""
from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from floodgate.bench import stats, targets
from floodgate.bench.arrivals import Phase, SpikePlan, constant, schedule
from floodgate.bench.http import HttpError, Response, build_request, parse_response
from floodgate.bench.nginx import nginx_conf
from floodgate.bench.profiling import summarize
from floodgate.bench.report import clean


# -- stats ------------------------------------------------------------------------------
@pytest.mark.parametrize(("q", "expected"), [(0.0, 1), (0.5, 50), (0.99, 99), (0.999, 100), (1.0, 100)])
def test_percentile_is_nearest_rank(q: float, expected: int) -> None:
    assert stats.percentile(list(range(100, 0, -1)), q) == expected


def test_percentile_of_nothing_is_nan_and_q_is_checked() -> None:
    assert math.isnan(stats.percentile([], 0.5))
    with pytest.raises(ValueError):
        stats.percentile([1.0], 1.5)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=300))
def test_summary_is_ordered_and_cdf_ends_at_one(values: list[float]) -> None:
    s = stats.summary(values)
    assert min(values) <= s["p50"] <= s["p90"] <= s["p99"] <= s["p999"] <= s["max"] == max(values)
    points = stats.cdf_points(values, max_points=50)
    assert points[-1] == (max(values), 1.0)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(points))


def test_rate_series_counts_per_second_in_bins() -> None:
    assert stats.rate_series([0.1, 0.2, 0.6, 1.4, 5.0], 0.0, 2.0, 0.5) == [4.0, 2.0, 2.0, 0.0]


def test_level_series_is_a_queue_depth() -> None:
    assert stats.level_series([0.1, 0.2, 0.3, 1.2], [0.6, 1.1, 1.9], 0.0, 2.0, 0.5) == [3, 2, 2, 1]


def test_ratio_and_finite() -> None:
    assert stats.ratio(5.0, 10.0) == 0.5
    assert math.isnan(stats.ratio(5.0, 0.0))
    assert stats.finite(math.nan) is None and stats.finite(1.23456, 2) == 1.23


# -- arrivals ---------------------------------------------------------------------------
def test_constant_rate() -> None:
    assert constant(4.0, 1.0) == [0.0, 0.25, 0.5, 0.75]


def test_fractional_arrivals_carry_over_between_phases() -> None:
    # 0.5 + 0.5 expected arrivals: neither phase alone makes one, together they make exactly one.
    out = schedule([Phase("a", 1.0, 0.5), Phase("b", 1.0, 0.5)])
    assert out == [1.0]


def test_spike_plan_counts_and_compression() -> None:
    plan = SpikePlan(time_factor=0.02, before_s=300, spike_s=15, after_s=600)
    arrivals = plan.schedule()
    before, spike_end = plan.spike_window()
    in_spike = [t for t in arrivals if before <= t < spike_end]
    assert len(in_spike) == 1250  # 5,000/min for 15 s
    assert len(arrivals) - len(in_spike) == 13  # 50/h for 15 min: 12.5, rounded half up
    assert arrivals == sorted(arrivals) and arrivals[-1] < plan.describe()["wall_seconds"]
    assert plan.describe()["spike_wall_rate_per_s"] == pytest.approx(4166.7, abs=0.1)


# -- HTTP parsing -----------------------------------------------------------------------
def test_request_bytes() -> None:
    raw = build_request("POST", "127.0.0.1:1", "/v1/jobs", b"{}")
    assert raw == (b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"
                   b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


def _complete(buf: bytes, eof: bool = False) -> tuple[Response, int]:
    parsed = parse_response(buf, eof=eof)
    assert parsed is not None, "parse_response found the response incomplete"
    return parsed


def test_content_length_response_and_leftover() -> None:
    buf = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1"
    response, used = _complete(buf)
    assert (response.status, response.body, response.keep_alive, used) == (202, b"{}", True, len(buf) - 8)


def test_incomplete_responses_wait_for_more() -> None:
    assert parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab") is None
    assert parse_response(b"HTTP/1.1 200 OK\r\nContent-Le") is None
    assert parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n") is None


def test_chunked_and_close_delimited_bodies() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
    response, used = _complete(chunked)
    assert (response.body, used) == (b"abcde", len(chunked))
    closed = b"HTTP/1.0 504 Gateway Time-out\r\nConnection: close\r\n\r\n<html>"
    assert parse_response(closed) is None
    response, _ = _complete(closed, eof=True)
    assert (response.status, response.body, response.keep_alive) == (504, b"<html>", False)


def test_garbage_is_an_error() -> None:
    with pytest.raises(HttpError):
        parse_response(b"SSH-2.0-OpenSSH\r\n\r\n")


# -- profiles ---------------------------------------------------------------------------
_LOOP = "main (/w/floodgate/cli.py:9);run_forever (/py/asyncio/base_events.py:1)"
COLLAPSED = f"""\
{_LOOP};_run (/py/asyncio/events.py:80);admission (/w/streams/admission.py:44);encode (/w/floodgate/codec.py:3) 30
{_LOOP};select (/py/selectors.py:468) 50
{_LOOP};_run (/py/asyncio/events.py:80);send (/v/aiokafka/producer/producer.py:1) 20
"""


def test_profile_summary_by_layer_and_task_frames() -> None:
    s = summarize(COLLAPSED)
    assert s["samples"] == 100
    layers = {x["where"]: x["share"] for x in s["layers"]}
    assert layers == {"waiting for I/O (epoll)": 0.5, "Floodgate code": 0.3, "Kafka client (aiokafka/librdkafka)": 0.2}
    inclusive = {x["where"] for x in s["floodgate_inclusive"]}
    assert inclusive == {"admission (streams/admission.py)", "encode (floodgate/codec.py)"}  # not main()
    assert s["self"][0] == {"where": "select (py/selectors.py)", "share": 0.5}


def test_empty_profile() -> None:
    assert summarize("")["samples"] == 0


# -- targets ----------------------------------------------------------------------------
def _accept(p99: float, rate: float = 1000.0, burst: int = 100_000, lost: int = 0) -> dict:
    block = {"offered_rate": rate, "errors": {}, "latency_ms": {"p50": 2.0, "p99": p99, "p999": p99}}
    return {"fixed": block, "sdk": {"per_s": 25_000.0, "records": 100_000, "failures": 0},
            "burst": {"accepted": burst - lost, "offered": burst, "errors": {}, "seconds": 60.0,
                      "accepted_per_s": 1500.0, "concurrency": 256, "lost": lost, "sdk_lost": 0}}


@pytest.mark.parametrize(("p99", "rate", "status"), [
    (20.0, 1000.0, targets.MET), (30.0, 1000.0, targets.NOT_MET), (5.0, 200.0, targets.NOT_MEASURED)])
def test_accept_target(p99: float, rate: float, status: str) -> None:
    assert targets.accept_p99({"accept": _accept(p99, rate)})["status"] == status


def test_burst_loss_is_not_met_and_small_bursts_are_not_measured() -> None:
    assert targets.burst({"accept": _accept(5.0, lost=1)})["status"] == targets.NOT_MET
    assert targets.burst({"accept": _accept(5.0, burst=300)})["status"] == targets.NOT_MEASURED
    assert targets.burst({"accept": _accept(5.0)})["status"] == targets.MET


def test_failed_or_skipped_scenarios_are_not_measured() -> None:
    rows = targets.evaluate({"accept": {"error": "boom"}, "baseline": {"skipped": "no nginx"}})
    assert {r["status"] for r in rows} == {targets.NOT_MEASURED}
    assert rows[0]["measured"] == "boom"


def test_memory_met_only_at_full_scale() -> None:
    def mem(large: int, growth: float) -> dict:
        return {"memory": {"config": {"small": 10_000, "large": large}, "rss_small": 100 * 2**20,
                           "rss_large": (1 + growth) * 100 * 2**20, "growth": growth,
                           "within_tolerance": abs(growth) <= 0.1, "bytes_per_queued_job": 1.0,
                           "dispatch_lag_large": large}}
    assert targets.memory(mem(1_000_000, 0.05))["status"] == targets.MET
    assert targets.memory(mem(100_000, 0.05))["status"] == targets.NOT_MEASURED
    assert targets.memory(mem(100_000, 0.5))["status"] == targets.NOT_MET


def test_clean_makes_json_safe() -> None:
    assert clean({"a": math.nan, "b": (1.23456789, math.inf), 3: "x"}) == {"a": None, "b": [1.2346, None], "3": "x"}


# -- nginx ------------------------------------------------------------------------------
def test_nginx_conf_scales_only_the_read_timeout_and_listens_on_loopback(tmp_path) -> None:
    conf = nginx_conf(tmp_path, 8081, 9091, 60.0 * 0.02)
    assert "listen 127.0.0.1:8081;" in conf
    assert "proxy_pass http://127.0.0.1:9091;" in conf
    assert "proxy_read_timeout 1200ms;" in conf
    assert "worker_connections 768;" in conf  # Debian's default
    assert "proxy_connect_timeout" not in conf and "proxy_send_timeout" not in conf


def test_moving_average_is_trailing() -> None:
    assert stats.moving_average([2.0, 4.0, 6.0, 8.0], 2) == [2.0, 3.0, 5.0, 7.0]


# -- the bench extra ----------------------------------------------------------------------
def test_bench_without_matplotlib_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from floodgate import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert cli.main(["bench", "--smoke"]) == 2
    assert "pip install -e '.[bench]'" in capsys.readouterr().err


def test_what_limits_memory_names_the_orders_the_fair_lines_held() -> None:
    from floodgate.bench.limits import limits

    m = {"config": {"small": 10_000, "large": 1_000_000}, "bytes_per_queued_job": 128.0, "table_store": "rocksdict",
         "rss_large": 254 << 20,
         "dispatch_lag_small": 0, "dispatch_lag_large": 953_512, "table_entry_bytes": {"jobs": 577.0}}
    [text] = [text for name, text in limits({"memory": m}, 2) if name == "Worker RSS"]
    assert "read 10,000 orders with 10,000 queued and 46,488 with 1,000,000" in text
    assert "36,488 more orders held account for about 36 MiB" in text


def test_a_reading_is_quiet_only_once_unchanged_for_the_whole_span() -> None:
    from floodgate.bench.memory import Quiet

    quiet = Quiet(3.0)
    assert not quiet.still(100, 0.0)
    assert not quiet.still(100, 2.9)
    assert not quiet.still(250, 3.5)  # changed: the span starts again
    assert not quiet.still(250, 6.4)
    assert quiet.still(250, 6.5)


def test_the_memory_rows_say_how_many_orders_the_lines_held_when_measured() -> None:
    from floodgate.bench.markdown import memory

    fill = {"admitted_per_s": 1000.0}
    m = {"config": {"small": 10_000, "large": 1_000_000, "tolerance": 0.1}, "rss_idle": 90 << 20,
         "rss_small": 110 << 20, "rss_large": 119 << 20, "growth": 0.082, "within_tolerance": True,
         "bytes_per_queued_job": 10.0, "dispatch_lag_large": 989_000, "fill_small": fill, "fill_large": fill,
         "lines_small": {"parked": 9_970, "seconds": 4.0, "settled": True},
         "lines_large": {"parked": 10_241, "seconds": 80.0, "settled": False}}
    text = "\n".join(memory(m))
    assert "9,970 orders parked in the dispatchers' lines)" in text
    assert "10,241 orders parked in the dispatchers' lines (still reading when measured)" in text
