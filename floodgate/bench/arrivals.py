"""Arrival schedules for open-loop load, as offsets in wall seconds from the start; pure.

The spike is described in *simulated* time (50 requests/hour, then 5,000/minute) and compressed
into wall time by ``time_factor`` — the simulator's convention: one simulated second lasts
``time_factor`` wall seconds, so 0.02 runs 50× faster than life, renders included.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


def constant(rate: float, seconds: float) -> list[float]:
    """Evenly spaced arrivals at ``rate`` per second for ``seconds``."""
    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    return [i / rate for i in range(int(rate * seconds))]


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float  # simulated
    per_second: float  # simulated arrivals per simulated second


def schedule(phases: list[Phase], time_factor: float = 1.0) -> list[float]:
    """Deterministic arrivals following piecewise-constant rates, in wall seconds.

    Arrival k happens when the expected count reaches k + 0.5, so a phase expecting 4.2 arrivals
    gets 4 and the fractions carry over into the next phase instead of being lost.
    """
    if time_factor <= 0:
        raise ValueError("time_factor must be positive")
    out: list[float] = []
    start, expected, k = 0.0, 0.0, 0
    for phase in phases:
        if phase.seconds < 0 or phase.per_second < 0:
            raise ValueError("phases need non-negative lengths and rates")
        end_expected = expected + phase.per_second * phase.seconds
        while phase.per_second > 0 and k + 0.5 <= end_expected:
            out.append((start + (k + 0.5 - expected) / phase.per_second) * time_factor)
            k += 1
        start += phase.seconds
        expected = end_expected
    return out


@dataclass(frozen=True)
class SpikePlan:
    """The launch day Floodgate is built for (README, first paragraph): a quiet baseline, a viral
    spike, the baseline again."""

    time_factor: float = 0.02
    baseline_per_hour: float = 50.0
    spike_per_minute: float = 5000.0
    before_s: float = 300.0  # simulated seconds of baseline before the spike
    spike_s: float = 15.0  # simulated seconds of spike
    after_s: float = 600.0  # simulated seconds of baseline after it

    def phases(self) -> list[Phase]:
        base = self.baseline_per_hour / 3600.0
        return [Phase("baseline", self.before_s, base),
                Phase("spike", self.spike_s, self.spike_per_minute / 60.0),
                Phase("baseline", self.after_s, base)]

    def schedule(self) -> list[float]:
        return schedule(self.phases(), self.time_factor)

    def spike_window(self) -> tuple[float, float]:
        """Start and end of the spike in wall seconds."""
        return self.before_s * self.time_factor, (self.before_s + self.spike_s) * self.time_factor

    def describe(self) -> dict[str, Any]:
        f = self.time_factor
        return {**asdict(self),
                "compression": round(1 / f, 3),
                "spike_wall_rate_per_s": round(self.spike_per_minute / 60.0 / f, 1),
                "baseline_wall_rate_per_s": round(self.baseline_per_hour / 3600.0 / f, 4),
                "wall_seconds": round((self.before_s + self.spike_s + self.after_s) * f, 2)}
