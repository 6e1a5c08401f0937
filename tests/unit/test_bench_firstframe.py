"""The bench report's time-to-first-frame table, from workers' expositions (no bench run)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from floodgate.bench.firstframe import milestones, quantile, section
from floodgate.metrics import WorkerMetrics


def exposition(observations: dict[tuple[str, str], tuple[list[float], list[float]]]) -> str:
    metrics = WorkerMetrics(CollectorRegistry())
    for (provider, model), (firsts, completions) in observations.items():
        for x in firsts:
            metrics.first_progress.labels(provider, model).observe(x)
        for x in completions:
            metrics.completion.labels(provider, model).observe(x)
    return generate_latest(metrics.registry).decode()


def test_quantile_interpolates_within_a_bucket() -> None:
    buckets = [(1.0, 0.0), (2.0, 10.0), (float("inf"), 10.0)]
    assert quantile(buckets, 0.5) == 1.5
    assert quantile([(1.0, 0.0), (float("inf"), 0.0)], 0.5) is None
    assert quantile([(1.0, 0.0), (float("inf"), 4.0)], 0.5) == 1.0  # beyond the last bound


def test_workers_are_summed_and_each_provider_model_gets_a_row() -> None:
    one = exposition({("kling", "kling-2.1"): ([21.0, 22.0], [80.0, 90.0])})
    two = exposition({("kling", "kling-2.1"): ([1.0, 2.0], [60.0, 70.0]), ("wan", "wan-2.6"): ([3.0], [])})
    rows = milestones([one, two])
    assert set(rows) == {"kling/kling-2.1", "wan/wan-2.6"}
    kling = rows["kling/kling-2.1"]
    assert kling["first_progress"]["count"] == 4 and kling["first_progress"]["mean"] == 11.5
    assert kling["completion"]["count"] == 4 and kling["completion"]["mean"] == 75.0
    assert "completion" not in rows["wan/wan-2.6"]


def test_the_section_formats_one_row_per_provider_and_model() -> None:
    rows = milestones([exposition({("kling", "kling-2.1"): ([0.4], [2.0]), ("wan", "wan-2.6"): ([0.1], [])})])
    text = "\n".join(section(rows, time_factor=0.02))
    assert text.startswith("## Time to first frame")
    assert "| provider | model | jobs | to first progress | to completion |" in text
    kling = next(line for line in text.splitlines() if line.startswith("| kling |"))
    # 0.4 s lands in the (0.25, 0.5] bucket: p50 interpolates to 0.375 s, 18.75 s simulated at 50×;
    # 2.0 s in (1.0, 2.5]: p50 1.75 s, p90 2.35 s
    assert kling == ("| kling | kling-2.1 | 1 | p50 0.4 / p90 0.5 / mean 0.4 s wall (p50 19 / p90 24 s simulated) "
                     "| p50 1.8 / p90 2.4 / mean 2.0 s wall (p50 88 / p90 118 s simulated) |")
    wan = next(line for line in text.splitlines() if line.startswith("| wan |"))
    assert wan.endswith("| – |")
    assert "simulated" not in "\n".join(section(rows, time_factor=1.0))
