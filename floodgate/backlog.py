"""The global backlog guard's rules. Pure: readings and clocks are arguments.

The ingress sheds new jobs (503 + Retry-After) once the whole backlog is past a configured depth
or estimated wait. Where the figures come from is a ``BacklogProbe``; the API's own is
``floodgate.api.backlog.KafkaBacklog`` (consumer lag plus the job view). The rules here:

* ``lag``: records a consumer group has yet to read on one partition.
* ``line_drain_rate``: jobs the providers' full lines start per second, from the dispatchers'
  line reports (each dispatch partition's pace, ``floodgate.pace``).
* ``line_waits``: per provider, how long a job joining its line now would wait; ``model_wait``:
  the line a new job of a model joins (its first provider's, or an equivalent's where the model
  spills over), so the wait bound sheds only the jobs that would wait past it: a request for a
  model whose provider has room is not refused because another provider's line is long.
* ``DrainRate``: jobs leaving the system per second, from a running count of finished jobs
  sampled over a sliding window: what the guard goes by while no line is full.
* ``BacklogGuard``: given depth and estimated wait, shed or not, and the Retry-After to say.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from floodgate.errors import ValidationError
from floodgate.problems import BACKLOG
from floodgate.quotas import Refusal
from floodgate.routing import RoutingTable, chain_for
from floodgate.spillover import FRESH_FOR, LineReport


class BacklogProbe(Protocol):
    """A source of the backlog's figures. The figures are read on the request path's behalf, so
    they must be cheap and never wait on I/O: ``refresh`` brings them up to date in the
    background (``floodgate.api.backlog.BacklogMonitor`` calls it every interval)."""

    async def refresh(self) -> None:
        """Re-read the sources; may raise (the figures are then unknown until the next success)."""

    def depth(self) -> int | None:
        """Jobs accepted and not yet taken by a provider, across providers; None if unknown."""

    def drain_rate(self) -> float | None:
        """Jobs leaving the system per second lately; None if none was observed."""

    def estimated_wait(self) -> float | None:
        """Seconds a job accepted now would wait for the backlog ahead of it to drain; None if
        no drain has been observed (unknown, not infinite)."""

    def line_waits(self) -> Mapping[str, LineWait]:
        """Per provider whose figures are known, the wait of a job joining its line now."""

    def close(self) -> None:
        """Release the probe's clients; the monitor calls it once it has stopped."""


def lag(end: int, committed: int | None, low: int, read_to: int = 0) -> int:
    """Records not yet consumed by the group on one partition: ``end`` minus the committed
    offset, or minus the log start ``low`` when nothing is committed (the group starts from the
    earliest record); or minus ``read_to`` where the group is known to have read further than it
    committed."""
    start = committed if committed is not None and committed >= 0 else low
    return max(0, end - max(start, low, read_to))


class DrainRate:
    """Completions per second over the last ``window`` seconds, from samples of a running total
    (e.g. records ever written to ``results``: one per job that ended). Unknown (None) until the
    samples span ``min_span`` seconds, and when nothing ended within the window: with renders of
    minutes, a backlog a minute old may have no completion yet, and that says nothing of its wait."""

    def __init__(self, window: float = 60.0, min_span: float = 5.0) -> None:
        if not (window > 0 and 0 < min_span <= window):
            raise ValueError("need window > 0 and 0 < min_span <= window")
        self.window = window
        self.min_span = min_span
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, total: int) -> None:
        if self._samples:
            last_at, last_total = self._samples[-1]
            if total < last_total:
                self._samples.clear()  # the count went back (topic recreated): start over
            elif now <= last_at:
                return  # a clock that did not move (or stepped back) adds nothing
        self._samples.append((now, total))
        # Keep the newest sample at least a window old as the start of the span.
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def per_second(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        if t1 - t0 < self.min_span or n1 == n0:
            return None
        return (n1 - n0) / (t1 - t0)


def line_drain_rate(reports: Iterable[LineReport], now: float) -> float | None:
    """Jobs per second the backlog drains at by the dispatchers' fresh reports: the start rates of
    the dispatch partitions with no free slot summed (a backlog waits only where slots are full;
    a partition with room starts what comes at once, and its pace is not the backlog's). None when
    no full partition reports a rate.

    Better than the count of finished jobs where it is known: in the first minutes of a spike
    after a quiet spell few jobs have finished, and those few were the shortest renders, so that
    rate was unknown, then too fast (the wait too short to shed by). A dispatcher's pace is known
    from the routing file's render time, else from its first ends, and weighs only settled ones."""
    rates = [r.start_rate for r in reports
             if now - r.at <= FRESH_FOR and r.free_slots <= 0 and r.start_rate is not None]
    return sum(rates) if rates else None


@dataclass(frozen=True, slots=True)
class LineWait:
    """A job joining ``provider``'s line now would wait about ``seconds``: ``waiting`` jobs ahead
    of it at ``rate`` starts per second (None with a free slot: it would start at once)."""

    provider: str
    seconds: float
    waiting: int
    rate: float | None


def line_waits(waiting: Mapping[str, int], reports: Iterable[LineReport], now: float) -> dict[str, LineWait]:
    """Per provider with fresh reports: its ``waiting`` jobs ÷ the start rates of its dispatch
    partitions with no free slot (0 s when every partition has one: a job starts at once). A
    provider whose full partitions report no rate yet, or that no fresh report speaks for, is left
    out: its wait is unknown, and unknown never sheds."""
    by_provider: dict[str, list[LineReport]] = {}
    for report in reports:
        if now - report.at <= FRESH_FOR:
            by_provider.setdefault(report.provider, []).append(report)
    out: dict[str, LineWait] = {}
    for provider, fresh in by_provider.items():
        ahead = waiting.get(provider, 0)
        full = [r for r in fresh if r.free_slots <= 0]
        if not full:
            out[provider] = LineWait(provider, 0.0, ahead, None)
            continue
        rates = [r.start_rate for r in full if r.start_rate is not None and r.start_rate > 0]
        if rates:
            rate = sum(rates)
            out[provider] = LineWait(provider, ahead / rate, ahead, rate)
    return out


def model_wait(routing: RoutingTable, model: str, waits: Mapping[str, LineWait], when: datetime) -> LineWait | None:
    """The line a new job of ``model`` would wait in: its first provider's; where the model names
    equivalents (spillover) and waits there past its ``max_wait_s``, the shortest of those
    equivalents' first providers, which its order would spill to. None when the first provider's
    wait is unknown (or the model has no provider now)."""
    try:
        here = waits.get(chain_for(routing, model, when)[0].provider)
    except ValidationError:
        return None
    rule = routing.spillover.get(model)
    if here is None or rule is None or here.seconds <= rule.max_wait_s:
        return here
    best = here
    for other in rule.equivalents:
        try:
            there = waits.get(chain_for(routing, other, when)[0].provider)
        except ValidationError:  # every provider of that model is retired or disabled
            continue
        if there is not None and there.seconds < best.seconds:
            best = there
    return best


def estimated_wait(depth: int, rate: float | None) -> float | None:
    """Seconds for ``depth`` jobs to drain at ``rate`` per second; None when the rate is unknown."""
    if rate is None or rate <= 0:
        return None
    return depth / rate


@dataclass(frozen=True, slots=True)
class BacklogGuard:
    """Shed past ``max_depth`` jobs or ``max_wait`` seconds of estimated wait (0: that bound is off)."""

    max_depth: int = 0
    max_wait: float = 0.0
    min_retry_after: float = 1.0
    max_retry_after: float = 300.0

    @property
    def enabled(self) -> bool:
        return self.max_depth > 0 or self.max_wait > 0

    def verdict(self, depth: int | None, wait: float | None, rate: float | None) -> Refusal | None:
        """The refusal to answer new jobs with now, or None to accept them. Unknown figures never
        shed: the guard fails open (the producer's own 503 covers a broker that does not answer).

        Retry-After is the time the backlog needs to drain back under its bound at the observed
        rate (clamped to [min_retry_after, max_retry_after]), else ``min_retry_after`` ×10."""
        if depth is None:
            return None
        over: list[float] = []  # seconds of drain that would bring each exceeded bound back
        reasons: list[str] = []
        if self.max_depth > 0 and depth >= self.max_depth:
            excess = depth - self.max_depth + 1
            over.append(excess / rate if rate else math.inf)
            reasons.append(f"{depth} jobs queued (the bound is {self.max_depth})")
        if self.max_wait > 0 and wait is not None and wait >= self.max_wait:
            over.append(wait - self.max_wait + (1 / rate if rate else 0.0))
            reasons.append(f"an estimated wait of {wait:.0f}s (the bound is {self.max_wait:.0f}s)")
        if not reasons:
            return None
        return self._refusal(max(over), "new jobs are not accepted for now: " + " and ".join(reasons))

    def line_verdict(self, model: str, line: LineWait | None) -> Refusal | None:
        """The refusal for new jobs of ``model``, whose jobs would wait in ``line`` (``model_wait``),
        or None. Retry-After: the time that line needs to come back under ``max_wait``."""
        if self.max_wait <= 0 or line is None or line.seconds < self.max_wait:
            return None
        need = line.seconds - self.max_wait + (1 / line.rate if line.rate else 0.0)
        return self._refusal(need, f"new jobs for {model} are not accepted for now: an estimated wait of "
                                   f"{line.seconds:.0f}s at {line.provider} (the bound is {self.max_wait:.0f}s)")

    def _refusal(self, need: float, detail: str) -> Refusal:
        retry = self.min_retry_after * 10 if not math.isfinite(need) else need
        retry = min(self.max_retry_after, max(self.min_retry_after, retry))
        return Refusal(503, "backlog", BACKLOG, "Backlog too deep", detail, retry)


__all__ = ["BacklogGuard", "BacklogProbe", "DrainRate", "LineWait", "estimated_wait", "lag", "line_drain_rate",
           "line_waits", "model_wait"]
