"""Simulator configuration: frozen dataclasses, loadable from a dict or a JSON file.

Time model: durations that describe the *provider* (render time, queue delay, cold start,
idle window, scheduled outages) are in simulated seconds and get multiplied by
``time_factor``, so a "realistic" 30-180 s render runs in a fraction of a second in tests.
Durations that describe the *transport* (webhook backoff and timeout, ``Retry-After``,
outages started through the admin endpoint) are wall-clock seconds and are not scaled.
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from floodgate.errors import ConfigError
from floodgate.signing import secret_key

# A fixed, obviously-local secret so `floodgate dev` and the simulator agree without setup.
DEV_WEBHOOK_SECRET = "whsec_Zmxvb2RnYXRlLWRldi1zaW11bGF0b3Itd2ViaG9vaw=="
DEV_JWT_SECRET = "floodgate-dev-kling-secret-key-of-the-simulator"
RESERVED_NAMES = frozenset({"_admin", "stats"})
DIALECTS = frozenset({"openai", "fal", "replicate", "wavespeed", "kling", "runpod", "runway"})


@dataclass(frozen=True)
class Distribution:
    """A duration in simulated seconds: ``fixed`` (``seconds``), ``uniform`` (``min``..``max``),
    ``lognormal`` (``median``, ``sigma``)."""

    kind: str = "fixed"
    seconds: float = 0.0
    min: float = 0.0
    max: float = 0.0
    median: float = 0.0
    sigma: float = 0.0

    def __post_init__(self) -> None:
        values = (self.seconds, self.min, self.max, self.median, self.sigma)
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ConfigError("durations must be finite and non-negative")
        if self.kind == "uniform" and self.min > self.max:
            raise ConfigError("uniform: min must be <= max")
        if self.kind == "lognormal" and self.median <= 0:
            raise ConfigError("lognormal: median must be > 0")
        if self.kind not in ("fixed", "uniform", "lognormal"):
            raise ConfigError(f"unknown distribution kind {self.kind!r}")

    def sample(self, rng: random.Random) -> float:
        if self.kind == "uniform":
            return rng.uniform(self.min, self.max)
        if self.kind == "lognormal":
            return rng.lognormvariate(math.log(self.median), self.sigma)
        return self.seconds

    @classmethod
    def parse(cls, raw: Any) -> Distribution:
        if isinstance(raw, Distribution):
            return raw
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return cls(kind="fixed", seconds=float(raw))
        if isinstance(raw, Mapping):
            return _build(cls, raw, "render_time")
        raise ConfigError("a duration must be a number or an object with 'kind'")


@dataclass(frozen=True)
class ProviderConfig:
    """One simulated provider. Rates are probabilities in [0, 1] drawn from the seeded RNG."""

    api_keys: tuple[str, ...] = ()  # empty: any bearer key is accepted
    concurrency_limit: int = 10  # non-terminal jobs per API key
    render_time: Distribution = field(default_factory=lambda: Distribution("uniform", min=0.2, max=1.0))
    queue_delay: float = 0.05
    cold_start: float = 0.0
    idle_after: float = 300.0
    failure_rate: float = 0.0
    hang_rate: float = 0.0  # accepted, then never rendered, answered or announced by webhook
    outages: tuple[tuple[float, float], ...] = ()  # [start, end) since server start
    webhook_secret: str = field(default=DEV_WEBHOOK_SECRET, repr=False)
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    drop_rate: float = 0.0
    webhook_attempts: int = 3  # total tries per delivery, first one included
    webhook_backoff: float = 0.1  # wall seconds before the 2nd try; doubles after
    webhook_timeout: float = 5.0
    dialect: str = "openai"  # whose API this provider speaks (connectors/simulator/dialects)
    queue_over_limit: int = 0  # jobs held queued past the concurrency limit before 429s (fal, Runway queue)
    status_rate_per_second: float = 0.0  # status calls a wall second per key (bursts of as many); past it 429; 0: none
    jwt_secret: str = field(default=DEV_JWT_SECRET, repr=False)  # Kling: the secret key its JWTs are signed with

    def __post_init__(self) -> None:
        for name in ("failure_rate", "hang_rate", "duplicate_rate", "reorder_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        for name in ("queue_delay", "cold_start", "idle_after", "webhook_backoff", "webhook_timeout"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be finite and non-negative, got {value}")
        if self.dialect not in DIALECTS:
            raise ConfigError(f"unknown dialect {self.dialect!r} (known: {', '.join(sorted(DIALECTS))})")
        reads = self.status_rate_per_second
        if not (math.isfinite(reads) and reads >= 0):
            raise ConfigError(f"status_rate_per_second must be finite and non-negative, got {reads}")
        if self.queue_over_limit < 0:
            raise ConfigError("queue_over_limit must be >= 0")
        if self.concurrency_limit < 1:
            raise ConfigError("concurrency_limit must be >= 1")
        if not 1 <= self.webhook_attempts <= 20:
            raise ConfigError("webhook_attempts must be between 1 and 20")
        for start, end in self.outages:
            if not 0 <= start < end:
                raise ConfigError(f"outage [{start}, {end}] must satisfy 0 <= start < end")
        secret_key(self.webhook_secret)  # fail at load time, not at the first webhook


@dataclass(frozen=True)
class SimulatorConfig:
    providers: Mapping[str, ProviderConfig]
    time_factor: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.providers:
            raise ConfigError("at least one provider is required")
        for name in self.providers:
            if not name or "/" in name or name in RESERVED_NAMES:
                raise ConfigError(f"bad provider name {name!r}")
        if not (math.isfinite(self.time_factor) and self.time_factor > 0):
            raise ConfigError("time_factor must be > 0")

    def scaled(self, simulated_seconds: float) -> float:
        return simulated_seconds * self.time_factor


def _build(cls: type, raw: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def provider_from_dict(raw: Mapping[str, Any], where: str = "provider") -> ProviderConfig:
    values = dict(raw)
    if "render_time" in values:
        values["render_time"] = Distribution.parse(values["render_time"])
    if "api_keys" in values:
        values["api_keys"] = tuple(values["api_keys"])
    if "outages" in values:
        try:
            values["outages"] = tuple((float(s), float(e)) for s, e in values["outages"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: outages must be a list of [start, end] pairs") from exc
    result: ProviderConfig = _build(ProviderConfig, values, where)
    return result


def config_from_dict(raw: Mapping[str, Any]) -> SimulatorConfig:
    """Build a config from plain data (the JSON file's shape). Raises ``ConfigError``."""
    values = dict(raw)
    providers = values.pop("providers", None)
    if not isinstance(providers, Mapping):
        raise ConfigError("'providers' must be an object of name -> settings")
    parsed = {name: provider_from_dict(p, f"providers.{name}") for name, p in providers.items()}
    result: SimulatorConfig = _build(SimulatorConfig, {**values, "providers": parsed}, "simulator")
    return result


def load_config(path: str | Path) -> SimulatorConfig:
    try:
        raw = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read simulator config {path}: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: top level must be an object")
    return config_from_dict(raw)


def dev_config(*, seed: int | None = None, time_factor: float = 1.0) -> SimulatorConfig:
    """Three well-behaved providers for local development: limit 10, renders 0.2-1.0 s, no chaos."""
    provider = ProviderConfig(concurrency_limit=10, render_time=Distribution("uniform", min=0.2, max=1.0))
    return SimulatorConfig(
        providers={name: provider for name in ("sora", "kling", "wan")},
        time_factor=time_factor,
        seed=seed,
    )


def realistic_config(time_factor: float = 0.01, *, seed: int | None = None) -> SimulatorConfig:
    """Provider-like timings (30-180 s renders, cold starts, a little webhook chaos), scaled."""

    def provider(limit: int, low: float, high: float, failure: float) -> ProviderConfig:
        return ProviderConfig(
            concurrency_limit=limit,
            render_time=Distribution("uniform", min=low, max=high),
            queue_delay=2.0,
            cold_start=20.0,
            idle_after=120.0,
            failure_rate=failure,
            duplicate_rate=0.02,
            reorder_rate=0.01,
            drop_rate=0.01,
        )

    return SimulatorConfig(
        providers={
            "sora": provider(10, 60.0, 180.0, 0.03),
            "kling": provider(5, 30.0, 120.0, 0.05),
            "wan": provider(10, 30.0, 90.0, 0.02),
        },
        time_factor=time_factor,
        seed=seed,
    )


__all__ = [
    "DEV_JWT_SECRET",
    "DEV_WEBHOOK_SECRET",
    "DIALECTS",
    "Distribution",
    "ProviderConfig",
    "SimulatorConfig",
    "config_from_dict",
    "dev_config",
    "load_config",
    "provider_from_dict",
    "realistic_config",
]
