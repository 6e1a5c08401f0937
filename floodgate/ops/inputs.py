"""Reading what plan and audit need: the routing file's raw targets (render times, prices) and
the simulator's config (render times, queue delay, cold start, webhook retries per provider)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from floodgate.capacity import RenderTime
from floodgate.errors import ConfigError
from floodgate.provider_config import ProviderSetup, from_dict


@dataclass(frozen=True)
class SimulatedProvider:
    render: RenderTime
    queue_delay: float
    cold_start: float
    webhook_retry_window: float
    time_factor: float


@dataclass(frozen=True)
class Routing:
    setup: ProviderSetup
    raw_routes: dict[str, list[dict[str, Any]]]

    def primary(self, model: str, now: datetime | None = None) -> dict[str, Any]:
        """The raw target a request for ``model`` lands on: the first provider of its chain that
        is available (not disabled, not retired) at ``now``."""
        now = now or datetime.now(UTC)
        providers = self.setup.routing.providers
        for raw in self.raw_routes[model]:
            if providers[raw["provider"]].available(now):
                return raw
        raise ConfigError(f"routes.{model}: no available provider")


def load_routing(path: str | None, simulator_url: str = "http://127.0.0.1:0") -> Routing:
    """The routing file at ``path``, or the dev table when None."""
    if path:
        try:
            data = orjson.loads(Path(path).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read routing file {path}: {exc}") from exc
        setup = from_dict(data, environ={**_env_placeholders(data)})
        routes = {m: [dict(t) for t in targets] for m, targets in data.get("routes", {}).items()}
        return Routing(setup, routes)
    from floodgate.provider_config import DEV_ROUTES, dev_setup

    return Routing(dev_setup(simulator_url), {m: [dict(t) for t in ts] for m, ts in DEV_ROUTES.items()})


def _env_placeholders(data: Any) -> dict[str, str]:
    """``env:NAME`` secrets need not be set to plan or audit: they are read as placeholders."""
    out: dict[str, str] = {}
    for spec in (data.get("providers") or {}).values():
        for value in (spec.get("connection") or {}).values() if isinstance(spec, dict) else ():
            if isinstance(value, str) and value.startswith("env:"):
                out[value[4:]] = "(planning)"
    return out


def load_simulator(path: str | None, preset: str | None) -> dict[str, SimulatedProvider]:
    """Per simulated provider, what plan and audit use; empty without a config or preset."""
    if not path and not preset:
        return {}
    from connectors.simulator.config import dev_config, load_config, realistic_config

    config = load_config(path) if path else realistic_config() if preset == "realistic" else dev_config()
    out = {}
    for name, p in config.providers.items():
        r = p.render_time
        render = RenderTime(r.kind, seconds=r.seconds, min=r.min, max=r.max, median=r.median, sigma=r.sigma)
        # Tries after the first wait webhook_backoff, doubling (the simulator's schedule), each
        # up to webhook_timeout: wall seconds, not scaled.
        window = sum(p.webhook_backoff * 2 ** k + p.webhook_timeout for k in range(p.webhook_attempts - 1))
        out[name] = SimulatedProvider(render, p.queue_delay, p.cold_start, window, config.time_factor)
    return out
