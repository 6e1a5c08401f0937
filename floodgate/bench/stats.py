"""Pure numbers: percentiles, latency summaries, CDF points, rates over time bins."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method; NaN for no values.

    Nearest-rank never interpolates: p99.9 of 1,000 samples is the worst one, not a blend.
    """
    if not values:
        return math.nan
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be between 0 and 1")
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """count, mean, p50, p90, p99, p99.9 and max of ``values`` (NaN when empty)."""
    ordered = sorted(values)
    n = len(ordered)
    return {
        "count": n,
        "mean": sum(ordered) / n if n else math.nan,
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "p999": percentile(ordered, 0.999),
        "max": ordered[-1] if n else math.nan,
    }


def cdf_points(values: Sequence[float], max_points: int = 400) -> list[tuple[float, float]]:
    """(value, fraction ≤ value) pairs, thinned to about ``max_points`` for plotting and JSON."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return []
    step = max(1, n // max_points)
    points = [(ordered[i], (i + 1) / n) for i in range(0, n, step)]
    if points[-1][1] != 1.0:
        points.append((ordered[-1], 1.0))
    return points


def rate_series(times: Iterable[float], start: float, end: float, bin_s: float) -> list[float]:
    """Events per second in consecutive bins of ``bin_s`` from ``start`` to ``end``."""
    if bin_s <= 0 or end <= start:
        raise ValueError("need bin_s > 0 and end > start")
    bins = [0] * math.ceil((end - start) / bin_s)
    for t in times:
        i = int((t - start) // bin_s)
        if 0 <= i < len(bins):
            bins[i] += 1
    return [count / bin_s for count in bins]


def level_series(added: Iterable[float], removed: Iterable[float], start: float, end: float,
                 bin_s: float) -> list[int]:
    """How many items are in (added, not yet removed) at the end of each bin: a queue's depth
    from the times items joined and left it."""
    adds, removes = sorted(added), sorted(removed)
    out, i, j = [], 0, 0
    edge = start
    while edge < end:
        edge += bin_s
        while i < len(adds) and adds[i] <= edge:
            i += 1
        while j < len(removes) and removes[j] <= edge:
            j += 1
        out.append(i - j)
    return out


def moving_average(values: Sequence[float], width: int) -> list[float]:
    """Each value averaged with up to ``width - 1`` values before it (a trailing window)."""
    if width < 1:
        raise ValueError("width must be at least 1")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def ratio(value: float, baseline: float) -> float:
    """``value / baseline``; NaN when either is missing or the baseline is zero."""
    if not baseline or math.isnan(baseline) or math.isnan(value):
        return math.nan
    return value / baseline


def finite(value: float | None, digits: int = 3) -> float | int | None:
    """JSON-safe number: NaN and infinities become None; floats are rounded."""
    if value is None:
        return None
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    return value
