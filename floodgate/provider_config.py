"""Which providers exist, how to reach them, and which models they serve.

One JSON document (``FLOODGATE_ROUTING_FILE``) or, by default, the dev setup played by the
simulator. Its shape is ``floodgate.routing``'s plus a ``connection`` object per provider, which
is handed to that provider kind's connector (``connectors.providers.registry``)::

    {"providers": {"kling": {"kind": "simulator", "concurrency_limit": 10,
                             "connection": {"base_url": "http://127.0.0.1:9000", "api_key": "k",
                                            "webhook_secret": "whsec_..."}}},
     "routes": {"kling-2.1": [{"provider": "kling"}]}}

A string value ``"env:NAME"`` inside ``connection`` is read from the environment variable NAME,
so secrets stay out of the file; ``"env:NAME/rest"`` appends ``/rest`` to it (a provider's path
under a base URL that comes from the environment). ``"kind"`` picks the connector: ``simulator``,
``fal``, ``replicate``, ``wavespeed``, ``kling``, ``runpod``, ``runway`` (README has an example
of each). To rotate a simulator provider's webhook secret, put the new
one in ``webhook_secret`` and the old one in ``previous_webhook_secret`` with
``previous_webhook_secret_until`` (an ISO 8601 instant such as ``"2026-12-08T00:00:00Z"``): the
bridge accepts both until then, and only the new one after.
"""
from __future__ import annotations

import os
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from floodgate.capacity import route_render_times
from floodgate.errors import ConfigError
from floodgate.routing import RoutingTable

# OpenAI retired the Sora 2 API on 2026-09-24; the dev table keeps the route so that requests for
# sora-2 show the fallback at work (they land on kling).
SORA_RETIRED_AT = "2026-09-24"
# Routing files can name the simulator's well-known dev secret instead of copying it.
DEV_WEBHOOK_SECRET_REF = "dev:simulator-webhook-secret"


@dataclass(frozen=True)
class ProviderSetup:
    routing: RoutingTable
    connections: Mapping[str, Mapping[str, Any]]
    render_times: Mapping[str, float] = field(default_factory=dict)
    """Provider → the mean render seconds its routes' ``render_time`` give (the mean of them, when
    several routes give one): the job view's ETAs start from it until renders have been seen."""

    def connector_kwargs(self, provider: str) -> dict[str, Any]:
        return {"name": provider, **dict(self.connections.get(provider, {}))}

    def build_connectors(self) -> dict[str, Any]:
        """name → VideoProvider for every provider in the table."""
        import connectors.providers  # noqa: F401 - registers the built-in kinds
        from connectors.providers.registry import create

        return {name: create(spec.kind, **self.connector_kwargs(name)) for name, spec in self.routing.providers.items()}


def from_dict(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> ProviderSetup:
    env = os.environ if environ is None else environ
    if not isinstance(data, Mapping):
        raise ConfigError("routing: the top level must be an object")
    providers = data.get("providers")
    if not isinstance(providers, Mapping):
        raise ConfigError("providers: must be an object")
    stripped: dict[str, Any] = {}
    connections: dict[str, dict[str, Any]] = {}
    for name, raw in providers.items():
        if not isinstance(raw, Mapping):
            raise ConfigError(f"providers.{name}: must be an object")
        raw = dict(raw)
        conn = raw.pop("connection", {})
        if not isinstance(conn, Mapping):
            raise ConfigError(f"providers.{name}.connection: must be an object")
        connections[name] = {k: _resolve(v, f"providers.{name}.connection.{k}", env) for k, v in conn.items()}
        stripped[name] = raw
    routing = RoutingTable.from_dict({"providers": stripped, "routes": data.get("routes", {}),
                                      "spillover": data.get("spillover", {})})
    # (The routing table has checked the routes' shape already.)
    render_times = {provider: statistics.fmean(r.mean for r in renders)
                    for provider, renders in route_render_times(data.get("routes", {})).items()}
    return ProviderSetup(routing, connections, render_times)


def _resolve(value: Any, path: str, env: Mapping[str, str]) -> Any:
    if value == DEV_WEBHOOK_SECRET_REF:
        from connectors.simulator.config import DEV_WEBHOOK_SECRET

        return DEV_WEBHOOK_SECRET
    if isinstance(value, str) and value.startswith("env:"):
        # Variable names never hold "/", so anything from the first "/" on is a suffix.
        var, sep, rest = value[4:].partition("/")
        if var not in env:
            raise ConfigError(f"{path}: environment variable {var} is not set")
        return env[var] + (f"/{rest}" if sep else "")
    return value


def load_file(path: str) -> ProviderSetup:
    try:
        with open(path, "rb") as fh:
            data = orjson.loads(fh.read())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read routing file {path}: {exc}") from exc
    return from_dict(data)


DEV_ROUTES: dict[str, list[dict[str, str]]] = {
    "sora-2": [{"provider": "sora", "provider_model": "sora-2"},
               {"provider": "kling", "provider_model": "kling-2.1"}],
    "kling-2.1": [{"provider": "kling", "provider_model": "kling-2.1"},
                  {"provider": "wan", "provider_model": "wan-2.6"}],
    "wan-2.6": [{"provider": "wan", "provider_model": "wan-2.6"},
                {"provider": "kling", "provider_model": "kling-2.1"}],
}
"""The dev table's routes: sora is retired, so sora-2 lands on kling."""


def dev_table(simulator_url: str, *, limits: Mapping[str, int] | None = None,
              webhook_secret: str | None = None, api_key: str = "floodgate-dev",
              spillover: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The dev table as a routing file holds it: wan-2.6, kling-2.1 and sora-2 served by simulated
    providers, with ``spillover`` rules (model → {"equivalents", "max_wait_s"}) when given.

    ``limits`` must match the simulator's per-key concurrency limits (10 in its dev preset).
    """
    from connectors.simulator.config import DEV_WEBHOOK_SECRET

    if not simulator_url:
        raise ConfigError("FLOODGATE_SIMULATOR_URL is required for the dev routing table (floodgate dev sets it)")
    limits = dict(limits or {})
    secret = webhook_secret or DEV_WEBHOOK_SECRET

    def provider(name: str, **extra: Any) -> dict[str, Any]:
        return {"kind": "simulator", "concurrency_limit": limits.get(name, 10), **extra,
                "connection": {"base_url": simulator_url, "api_key": api_key, "webhook_secret": secret}}

    table: dict[str, Any] = {
        "providers": {
            "sora": provider("sora", retired_at=SORA_RETIRED_AT),
            "kling": provider("kling"),
            "wan": provider("wan"),
        },
        "routes": DEV_ROUTES,
    }
    if spillover:
        table["spillover"] = {model: dict(rule) for model, rule in spillover.items()}
    return table


def dev_setup(simulator_url: str, *, limits: Mapping[str, int] | None = None,
              webhook_secret: str | None = None, api_key: str = "floodgate-dev") -> ProviderSetup:
    """The dev table (``dev_table``), read as a routing file would be."""
    return from_dict(dev_table(simulator_url, limits=limits, webhook_secret=webhook_secret, api_key=api_key))


def load(settings: Any) -> ProviderSetup:
    """The setup ``settings`` names: its routing file, else the dev table on the simulator."""
    if settings.routing_file:
        return load_file(settings.routing_file)
    return dev_setup(settings.simulator_url)
