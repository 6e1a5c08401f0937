"""The capacity calculation behind ``floodgate plan``: pure, no I/O, no clock.

A provider is a queue with ``c`` servers (its concurrency limit) and a mean service time ``S``
(render plus the provider's own queue delay), so it completes ``mu = c / S`` jobs per second
at most. Traffic is piecewise-constant arrival rates ``lambda(t)``. The model is the
deterministic fluid queue: the waiting line ``Q`` grows at ``lambda - mu`` while arrivals
outpace service and shrinks at ``mu - lambda`` until empty; with ``Q`` piecewise linear, every
figure is computed exactly from the segments (no simulation, no randomness):

* peak queue: the largest ``Q``;
* a job arriving at ``t`` waits ``Q(t) / mu`` (FIFO: the line ahead of it at the service rate),
  so p50/p95 wait are percentiles of that over all arrivals;
* time to drain: from the moment ``Q`` starts growing until it is empty again, plus ``S`` (the
  last job queued then is served): when the last job of a spike is done (with several
  overloads, the longest);
* Little's law: ``lambda * S`` jobs in flight are needed to keep up with ``lambda``; more than
  ``c`` means a line grows;
* the tier: the smallest ``c`` keeping the p95 wait within a target.

What the model leaves out: the spread of render times (it uses their mean: the drain of a
large backlog depends on the sum of renders, not on each one), Floodgate's own handover time
per slot (milliseconds, against renders of tens of seconds), retries and fallbacks (a job is
planned on its route's first available provider).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from floodgate.errors import ConfigError

# Which percentile of the wait the tier keeps under the target.
TIER_PERCENTILE = 0.95
_MAX_TIER = 100_000


@dataclass(frozen=True)
class RenderTime:
    """A render-time distribution, as the simulator's config and routing targets give it:
    ``fixed`` (``seconds``), ``uniform`` (``min``..``max``), ``lognormal`` (``median``, ``sigma``)."""

    kind: str = "fixed"
    seconds: float = 0.0
    min: float = 0.0
    max: float = 0.0
    median: float = 0.0
    sigma: float = 0.0

    @property
    def mean(self) -> float:
        if self.kind == "uniform":
            return (self.min + self.max) / 2
        if self.kind == "lognormal":
            return self.median * math.exp(self.sigma ** 2 / 2)
        return self.seconds

    @property
    def slowest(self) -> float:
        """The longest render to expect: the maximum, or a lognormal's 99.9th percentile."""
        if self.kind == "uniform":
            return self.max
        if self.kind == "lognormal":
            return self.median * math.exp(3.09 * self.sigma)
        return self.seconds

    @classmethod
    def parse(cls, raw: Any, where: str = "render_time") -> RenderTime:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw >= 0:
            return cls("fixed", seconds=float(raw))
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: must be seconds or an object with 'kind'")
        kind = raw.get("kind", "fixed")
        allowed = {"fixed": {"seconds"}, "uniform": {"min", "max"}, "lognormal": {"median", "sigma"}}
        if kind not in allowed:
            raise ConfigError(f"{where}.kind: must be fixed, uniform or lognormal, got {kind!r}")
        values: dict[str, float] = {}
        for key in set(raw) - {"kind"}:
            value = raw[key]
            if key not in allowed[kind]:
                raise ConfigError(f"{where}.{key}: unknown key for {kind}; allowed: {', '.join(sorted(allowed[kind]))}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{where}.{key}: must be a non-negative number, got {value!r}")
            values[key] = float(value)
        made = cls(kind, **values)
        if kind == "uniform" and made.min > made.max:
            raise ConfigError(f"{where}: min must be <= max")
        return made


def route_render_times(routes: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, list[RenderTime]]:
    """Provider → the render times the routing file's targets on it give (``render_time``, a
    planning figure), parsed; providers no target gives one for are left out."""
    found: dict[str, list[RenderTime]] = {}
    for model, targets in routes.items():
        for i, target in enumerate(targets):
            if "render_time" in target:
                render = RenderTime.parse(target["render_time"], f"routes.{model}[{i}].render_time")
                found.setdefault(str(target["provider"]), []).append(render)
    return found


@dataclass(frozen=True)
class Segment:
    """``rate`` arrivals per second for ``seconds``."""

    seconds: float
    rate: float


@dataclass(frozen=True)
class Service:
    """One provider as the plan sees it."""

    concurrency: int
    mean_seconds: float  # mean time a job holds a slot (render + the provider's queue delay)

    @property
    def rate(self) -> float:
        """Jobs completed per second with every slot busy."""
        return self.concurrency / self.mean_seconds


@dataclass(frozen=True)
class QueueResult:
    arrivals: float
    peak_rate: float  # arrivals per second, highest segment
    service_rate: float
    in_flight_needed: float  # Little's law at the peak: peak_rate * mean service time
    peak_queue: float
    drain_seconds: float  # 0 when no line ever forms
    wait_p50: float
    wait_p95: float
    wait_max: float
    curve: tuple[tuple[float, float], ...] = field(repr=False)  # (t, Q) at every breakpoint

    @property
    def utilisation(self) -> float:
        return self.peak_rate / self.service_rate if self.service_rate else math.inf


def queue(segments: Sequence[Segment], service: Service) -> QueueResult:
    """The fluid queue of ``service`` fed by ``segments``; after the last segment arrivals stop
    and the line drains."""
    if service.concurrency < 1 or not service.mean_seconds > 0:
        raise ValueError("a service needs concurrency >= 1 and a positive mean service time")
    mu = service.rate
    pieces = [s for s in segments if s.seconds > 0]
    t, q = 0.0, 0.0
    curve = [(0.0, 0.0)]
    grow_start = 0.0
    episodes: list[tuple[float, float]] = []  # (line starts growing, line empty again)
    # (weight, wait at start, wait at end) per stretch of arrivals, for the wait percentiles.
    stretches: list[tuple[float, float, float]] = []

    def advance(seconds: float, rate: float) -> None:
        nonlocal t, q, grow_start
        slope = rate - mu
        if q <= 0 and slope <= 0:  # no line: arrivals are served at once
            if rate > 0:
                stretches.append((rate * seconds, 0.0, 0.0))
            t += seconds
            curve.append((t, 0.0))
            return
        if q <= 0:  # a new overload begins
            grow_start = t
        if slope < 0 and q + slope * seconds <= 1e-9 * max(1.0, q):  # the line empties inside this piece
            empty_after = min(seconds, q / -slope)
            if rate > 0:
                stretches.append((rate * empty_after, q / mu, 0.0))
                stretches.append((rate * (seconds - empty_after), 0.0, 0.0))
            t += empty_after
            q = 0.0
            episodes.append((grow_start, t))
            curve.append((t, 0.0))
            t += seconds - empty_after
            curve.append((t, 0.0))
            return
        end_q = q + slope * seconds
        if rate > 0:
            stretches.append((rate * seconds, q / mu, end_q / mu))
        t += seconds
        q = end_q
        curve.append((t, q))

    for piece in pieces:
        advance(piece.seconds, piece.rate)
    if q > 0:
        advance(q / mu, 0.0)
    arrivals = sum(s.rate * s.seconds for s in pieces)
    peak_rate = max((s.rate for s in pieces), default=0.0)
    # The longest overload: from when its line starts growing until its last queued job is done.
    drain = max((end - start for start, end in episodes), default=None)
    return QueueResult(
        arrivals=arrivals, peak_rate=peak_rate, service_rate=mu,
        in_flight_needed=peak_rate * service.mean_seconds,
        peak_queue=max(v for _, v in curve),
        drain_seconds=0.0 if drain is None else drain + service.mean_seconds,
        wait_p50=_percentile(stretches, 0.50), wait_p95=_percentile(stretches, 0.95),
        wait_max=max((max(a, b) for w, a, b in stretches if w > 0), default=0.0),
        curve=tuple(curve))


def _percentile(stretches: Sequence[tuple[float, float, float]], p: float) -> float:
    """The ``p`` quantile of a wait spread linearly over each stretch's arrivals (each stretch's
    arrivals are evenly spaced in time, and the wait is linear in time over it)."""
    total = sum(w for w, _, _ in stretches)
    if total <= 0:
        return 0.0
    # Waits are uniform between the ends of each stretch: find w with P(wait <= w) = p by bisection.
    lo, hi = 0.0, max(max(a, b) for _, a, b in stretches)
    for _ in range(100):
        mid = (lo + hi) / 2
        if _share_at_most(stretches, mid) / total >= p:
            hi = mid
        else:
            lo = mid
    return hi


def _share_at_most(stretches: Iterable[tuple[float, float, float]], w: float) -> float:
    share = 0.0
    for weight, a, b in stretches:
        low, high = min(a, b), max(a, b)
        if high <= w:
            share += weight
        elif low < w:
            share += weight * (w - low) / (high - low)
    return share


def tier_for(segments: Sequence[Segment], mean_seconds: float, target_wait: float) -> int | None:
    """The smallest concurrency whose p95 wait is within ``target_wait`` (None past 100,000)."""
    def ok(c: int) -> bool:
        return queue(segments, Service(c, mean_seconds)).wait_p95 <= target_wait + 1e-9

    if not ok(_MAX_TIER):
        return None
    lo, hi = 1, _MAX_TIER
    while lo < hi:  # the wait falls as concurrency grows: bisect on it
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


# ---------------------------------------------------------------- traffic shapes
def spike(peak_per_second: float, seconds: float, baseline_per_second: float = 0.0,
          after_seconds: float = 0.0) -> list[Segment]:
    """``--peak R --for D``: the peak for ``seconds``, then the baseline for ``after_seconds``."""
    out = [Segment(seconds, peak_per_second)]
    if after_seconds > 0 and baseline_per_second > 0:
        out.append(Segment(after_seconds, baseline_per_second))
    return out


def binned(times: Iterable[float], bin_seconds: float = 1.0) -> list[Segment]:
    """Arrival times (seconds from the start) as one constant-rate segment per bin."""
    if bin_seconds <= 0:
        raise ValueError("bin_seconds must be positive")
    counts: dict[int, int] = {}
    for t in times:
        if t < 0 or not math.isfinite(t):
            raise ValueError(f"arrival time {t!r} must be a finite number of seconds >= 0")
        counts[int(t // bin_seconds)] = counts.get(int(t // bin_seconds), 0) + 1
    if not counts:
        return []
    return [Segment(bin_seconds, counts.get(i, 0) / bin_seconds) for i in range(max(counts) + 1)]


def scaled(segments: Sequence[Segment], share: float) -> list[Segment]:
    """The same shape carrying ``share`` of the arrivals (one model's part of the mix)."""
    return [Segment(s.seconds, s.rate * share) for s in segments]


def summed(shapes: Sequence[Sequence[Segment]]) -> list[Segment]:
    """Several shapes on one timeline: one segment per stretch where no shape changes rate."""
    cuts: set[float] = set()
    for shape in shapes:
        t = 0.0
        for s in shape:
            t += s.seconds
            cuts.add(t)
    out, start = [], 0.0
    for end in sorted(cuts):
        mid = (start + end) / 2
        out.append(Segment(end - start, sum(_rate_at(shape, mid) for shape in shapes)))
        start = end
    return out


def _rate_at(shape: Sequence[Segment], t: float) -> float:
    start = 0.0
    for s in shape:
        if start <= t < start + s.seconds:
            return s.rate
        start += s.seconds
    return 0.0


# ------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class ModelLoad:
    """One public model's traffic and where it lands."""

    model: str
    provider: str
    segments: tuple[Segment, ...]
    render: RenderTime
    queue_delay: float = 0.0
    price_per_second: float | None = None
    price_per_job: float | None = None

    @property
    def mean_seconds(self) -> float:
        return self.render.mean + self.queue_delay

    @property
    def jobs(self) -> float:
        return sum(s.rate * s.seconds for s in self.segments)

    @property
    def cost(self) -> float | None:
        """Price of the planned jobs: per job, or per second of render (the mean render)."""
        if self.price_per_job is not None:
            return self.jobs * self.price_per_job
        if self.price_per_second is not None:
            return self.jobs * self.render.mean * self.price_per_second
        return None


@dataclass(frozen=True)
class ProviderPlan:
    provider: str
    concurrency: int
    models: tuple[ModelLoad, ...]
    mean_seconds: float
    result: QueueResult
    tier: int | None  # concurrency for the target wait at p95
    cost: float | None


def plan(loads: Sequence[ModelLoad], limits: Mapping[str, int], target_wait: float) -> list[ProviderPlan]:
    """Per provider: the models it serves, their queue, the tier for ``target_wait`` and the cost.
    Models sharing a provider share its line; their mean service time is weighted by jobs."""
    out = []
    for provider in sorted({m.provider for m in loads}):
        mine = tuple(m for m in loads if m.provider == provider)
        jobs = sum(m.jobs for m in mine)
        mean = (sum(m.jobs * m.mean_seconds for m in mine) / jobs) if jobs else max(m.mean_seconds for m in mine)
        segments = summed([m.segments for m in mine])
        result = queue(segments, Service(limits[provider], mean))
        costs = [m.cost for m in mine]
        out.append(ProviderPlan(provider, limits[provider], mine, mean, result,
                                tier_for(segments, mean, target_wait),
                                None if all(c is None for c in costs) else sum(c or 0.0 for c in costs)))
    return out
