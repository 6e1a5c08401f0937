"""Which provider serves a model, and where to fall back.

A model maps to an ordered chain of targets (provider + the provider's own
model name). Providers drop out of every chain when disabled or once their
``retired_at`` has passed, so a retirement date can be configured ahead of
time and takes effect by itself at ``now``.

Config shape accepted by ``RoutingTable.from_dict``::

    {"providers": {"sora": {"kind": "openai", "concurrency_limit": 8,
                            "rate_per_second": 2.0, "status_rate_per_second": 5.0,
                            "retired_at": "2026-09-24", "enabled": true}},
     "routes": {"sora-2": [{"provider": "sora", "provider_model": "sora-2"},
                           {"provider": "kling"}]}}

``rate_per_second`` bounds submissions, ``status_rate_per_second`` the status calls that follow
jobs (a provider's read limit is its own: Replicate's is 3,000 a minute beside creation's 600);
without it, a connector's documented read limit applies, if it has one (``streams.poller``).

``provider_model`` defaults to the route's model name. A target may also carry ``render_time``
(seconds, or ``{"kind": "uniform", "min": 30, "max": 180}``, as the simulator's config) and
``price_per_second`` or ``price_per_job``: routing ignores them, ``floodgate plan`` and
``floodgate audit`` read them, and the render time is the prior of the paces that ETAs and
spillover work from (``floodgate.pace``: it weighs as ten renders seen). ``spillover``
(optional) names, per model, equivalent models that take its waiting jobs when its own line is
long::

    "spillover": {"kling-2.1": {"equivalents": ["wan-2.6"], "max_wait_s": 60}}

``retired_at`` may be an
ISO 8601 string, a date or a datetime; one without an offset (including a bare
date, read as midnight) is taken as UTC. Unknown keys are errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from types import MappingProxyType
from typing import Any

from floodgate.errors import ConfigError, Problem, ValidationError


@dataclass(frozen=True)
class ProviderSpec:
    """One provider account. Raises ``ConfigError`` for a non-positive limit or a naive ``retired_at``."""

    name: str
    kind: str
    concurrency_limit: int
    rate_per_second: float | None = None
    retired_at: datetime | None = None
    enabled: bool = True
    status_rate_per_second: float | None = None
    """Status calls per second at most (None: the connector's own read limit, or none)."""

    def __post_init__(self) -> None:
        where = f"provider {self.name!r}"
        if not self.name or not self.kind:
            raise ConfigError(f"{where}: name and kind must not be empty")
        if isinstance(self.concurrency_limit, bool) or not isinstance(self.concurrency_limit, int):
            raise ConfigError(f"{where}: concurrency_limit must be an integer")
        if self.concurrency_limit < 1:
            raise ConfigError(f"{where}: concurrency_limit must be positive, got {self.concurrency_limit}")
        if self.rate_per_second is not None and not self.rate_per_second > 0:
            raise ConfigError(f"{where}: rate_per_second must be positive, got {self.rate_per_second}")
        if self.status_rate_per_second is not None and not self.status_rate_per_second > 0:
            raise ConfigError(f"{where}: status_rate_per_second must be positive, got {self.status_rate_per_second}")
        if self.retired_at is not None and self.retired_at.utcoffset() is None:
            # Comparing naive and aware datetimes raises at routing time; refuse it at load time instead.
            raise ConfigError(f"{where}: retired_at must be timezone-aware")

    def available(self, now: datetime) -> bool:
        """True if the provider may take new jobs at ``now``."""
        return self.enabled and (self.retired_at is None or now < self.retired_at)

    def why_unavailable(self, now: datetime) -> str | None:
        if not self.enabled:
            return "disabled"
        if self.retired_at is not None and now >= self.retired_at:
            return f"retired {self.retired_at.isoformat()}"
        return None


@dataclass(frozen=True)
class Target:
    provider: str
    provider_model: str


@dataclass(frozen=True)
class ModelRoute:
    """A public model name and its targets, most preferred first."""

    model: str
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class Spillover:
    """Where a model's waiting jobs may go when its own line is long: ``equivalents`` (other
    models, in order of preference) take a job that would wait more than ``max_wait_s`` at its
    provider, if one of them has spare capacity."""

    equivalents: tuple[str, ...]
    max_wait_s: float


@dataclass(frozen=True)
class RoutingTable:
    """Providers and routes. Raises ``ConfigError`` if a route is empty, repeats a provider or names an unknown one."""

    providers: Mapping[str, ProviderSpec]
    routes: Mapping[str, ModelRoute]
    spillover: Mapping[str, Spillover] = field(default_factory=dict)
    """Model → its equivalents, for models that have any."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "providers", MappingProxyType(dict(self.providers)))
        object.__setattr__(self, "routes", MappingProxyType(dict(self.routes)))
        object.__setattr__(self, "spillover", MappingProxyType(dict(self.spillover)))
        for model, spill in self.spillover.items():
            if model not in self.routes:
                raise ConfigError(f"spillover.{model}: not a routed model")
            for i, other in enumerate(spill.equivalents):
                if other not in self.routes or other == model:
                    raise ConfigError(f"spillover.{model}.equivalents[{i}]: {other!r} must be another routed model")
        for key, spec in self.providers.items():
            if key != spec.name:
                raise ConfigError(f"providers.{key}: spec is named {spec.name!r}")
        known = ", ".join(sorted(self.providers)) or "(none)"
        for model, route in self.routes.items():
            if model != route.model:
                raise ConfigError(f"routes.{model}: route is for {route.model!r}")
            if not route.targets:
                raise ConfigError(f"routes.{model}: needs at least one target")
            seen: set[str] = set()
            for i, target in enumerate(route.targets):
                if target.provider not in self.providers:
                    raise ConfigError(
                        f"routes.{model}[{i}].provider: unknown provider {target.provider!r}; known: {known}"
                    )
                if target.provider in seen:
                    raise ConfigError(f"routes.{model}[{i}].provider: {target.provider!r} appears twice")
                seen.add(target.provider)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoutingTable:
        """Build and validate a table from plain config data.

        Raises ``ConfigError`` whose message starts with the path at fault, e.g.
        ``providers.sora.concurrency_limit`` or ``routes.sora-2[1].provider``.
        """
        _only_keys(data, "", {"providers", "routes", "spillover"})
        providers = {name: _provider(name, spec) for name, spec in _mapping(data.get("providers"), "providers").items()}
        routes: dict[str, ModelRoute] = {}
        for model, targets in _mapping(data.get("routes"), "routes").items():
            if not isinstance(targets, (list, tuple)):
                raise ConfigError(f"routes.{model}: must be a list of targets")
            routes[model] = ModelRoute(model, tuple(_target(model, i, t) for i, t in enumerate(targets)))
        spillover = {model: _spillover(model, raw) for model, raw in _mapping(data.get("spillover", {}),
                                                                                "spillover").items()}
        return cls(providers, routes, spillover)


def chain_for(table: RoutingTable, model: str, now: datetime) -> tuple[Target, ...]:
    """The targets for ``model`` that can take work at ``now``, most preferred first.

    Raises ``ValidationError`` (field ``model``) if the model is unknown or every
    provider for it is disabled or retired; ``ValueError`` if ``now`` is naive.
    """
    _require_aware(now)
    route = table.routes.get(model)
    if route is None:
        known = ", ".join(known_models(table, now)) or "(none)"
        raise ValidationError(Problem("model", f"unknown model {model!r}; known: {known}"))
    chain = tuple(t for t in route.targets if table.providers[t.provider].available(now))
    if not chain:
        why = ", ".join(f"{t.provider} ({table.providers[t.provider].why_unavailable(now)})" for t in route.targets)
        raise ValidationError(
            Problem("model", f"model {model!r} is unavailable: every provider for it is retired or disabled: {why}")
        )
    return chain


def first_provider(table: RoutingTable, model: str, now: datetime) -> str | None:
    """The provider a job for ``model`` is queued for at ``now`` (None: unknown or unroutable)."""
    try:
        return chain_for(table, model, now)[0].provider
    except ValidationError:
        return None


def next_target(table: RoutingTable, model: str, tried: Sequence[str], now: datetime) -> Target | None:
    """The first target in the chain whose provider is not in ``tried``; None when the chain is exhausted.

    Raises as ``chain_for``.
    """
    return next((t for t in chain_for(table, model, now) if t.provider not in tried), None)


def known_models(table: RoutingTable, now: datetime) -> tuple[str, ...]:
    """Models with at least one available provider at ``now``, sorted. Raises ``ValueError`` if ``now`` is naive."""
    _require_aware(now)
    return tuple(
        sorted(m for m, r in table.routes.items() if any(table.providers[t.provider].available(now) for t in r.targets))
    )


def _require_aware(now: datetime) -> None:
    if now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: must be a mapping")
    for key in value:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{path}: keys must be non-empty strings, got {key!r}")
    return value


def _only_keys(data: Any, path: str, allowed: AbstractSet[str], required: AbstractSet[str] = frozenset()) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'routing'}: must be a mapping")
    prefix = f"{path}." if path else ""
    unknown = sorted(str(k) for k in set(data) - allowed)
    if unknown:
        # A typo such as "concurency_limit" would otherwise silently fall back to a default.
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{prefix}{missing[0]}: missing")


def _provider(name: str, raw: Any) -> ProviderSpec:
    path = f"providers.{name}"
    _only_keys(
        raw,
        path,
        {"kind", "concurrency_limit", "rate_per_second", "status_rate_per_second", "retired_at", "enabled"},
        {"kind", "concurrency_limit"},
    )
    kind = raw["kind"]
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{path}.kind: must be a non-empty string")
    limit = raw["concurrency_limit"]
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"{path}.concurrency_limit: must be a positive integer, got {limit!r}")
    rate, status_rate = (_rate(raw.get(key), f"{path}.{key}") for key in ("rate_per_second", "status_rate_per_second"))
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{path}.enabled: must be true or false, got {enabled!r}")
    retired = _when(raw.get("retired_at"), f"{path}.retired_at")
    return ProviderSpec(name, kind, limit, rate, retired, enabled, status_rate)


def _rate(value: Any, path: str) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not (value > 0 and math.isfinite(value))):
        raise ConfigError(f"{path}: must be a positive number or null, got {value!r}")
    return None if value is None else float(value)


def _when(value: Any, path: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        # YAML and TOML loaders turn a bare 2026-09-24 into a date, not a string.
        parsed = datetime.combine(value, time())
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"{path}: not an ISO 8601 date or datetime: {value!r}") from None
    else:
        raise ConfigError(f"{path}: must be an ISO 8601 string, got {value!r}")
    return parsed if parsed.utcoffset() is not None else parsed.replace(tzinfo=UTC)


def _spillover(model: str, raw: Any) -> Spillover:
    path = f"spillover.{model}"
    _only_keys(raw, path, {"equivalents", "max_wait_s"}, {"equivalents", "max_wait_s"})
    equivalents, wait = raw["equivalents"], raw["max_wait_s"]
    if not isinstance(equivalents, (list, tuple)) or not equivalents or not all(
            isinstance(e, str) and e for e in equivalents):
        raise ConfigError(f"{path}.equivalents: must be a non-empty list of model names")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait > 0:
        raise ConfigError(f"{path}.max_wait_s: must be a positive number of seconds, got {wait!r}")
    return Spillover(tuple(equivalents), float(wait))


PLANNING_KEYS = frozenset({"render_time", "price_per_second", "price_per_job"})


def _target(model: str, i: int, raw: Any) -> Target:
    path = f"routes.{model}[{i}]"
    # render_time and the prices are for planning (``floodgate plan``, ``floodgate audit``, read by
    # ``floodgate.capacity``); routing itself does not use them.
    _only_keys(raw, path, {"provider", "provider_model", *PLANNING_KEYS}, {"provider"})
    for key in PLANNING_KEYS & set(raw):
        value = raw[key]
        if key != "render_time" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"{path}.{key}: must be a non-negative number, got {value!r}")
        if key == "render_time" and not isinstance(value, (int, float, Mapping)):
            raise ConfigError(f"{path}.render_time: must be seconds or an object with 'kind', got {value!r}")
    provider, provider_model = raw["provider"], raw.get("provider_model", model)
    for key, value in (("provider", provider), ("provider_model", provider_model)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}.{key}: must be a non-empty string")
    return Target(provider, provider_model)


__all__ = [
    "first_provider",
    "ModelRoute",
    "ProviderSpec",
    "RoutingTable",
    "Spillover",
    "Target",
    "chain_for",
    "known_models",
    "next_target",
]
