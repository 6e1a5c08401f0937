"""The stacks the scenarios run against: one Kafka broker for the whole run, and per scenario a
full ``Stack`` (simulator, API, worker processes) with its own topics, consumer group, simulator
config and routing table, so no scenario sees another's backlog."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.simulator.config import DEV_WEBHOOK_SECRET
from floodgate.broker.local import LocalBroker
from floodgate.devstack import Stack
from floodgate.procs import free_port
from floodgate.provider_config import DEV_ROUTES, SORA_RETIRED_AT
from floodgate.settings import Settings

API_KEY = "floodgate-bench"
ROUTES = DEV_ROUTES  # the dev table's: sora is retired, so sora-2 lands on kling


# A model served only by the "paced" provider of the pipeline stack (notification latency runs there).
PACED_MODEL = "paced-1"


@dataclass(frozen=True)
class SimProvider:
    """One simulated provider account; durations in simulated seconds."""

    limit: int
    render: tuple[float, float] = (0.0, 0.0)  # uniform min, max
    queue_delay: float = 0.0
    retired: bool = False
    cold_start: float = 0.0  # added before the first frame when a model was idle (see the simulator)

    def simulator(self) -> dict[str, Any]:
        low, high = self.render
        return {"concurrency_limit": self.limit, "queue_delay": self.queue_delay, "cold_start": self.cold_start,
                "render_time": {"kind": "uniform", "min": low, "max": high}}


def providers(limit: int, render: tuple[float, float], queue_delay: float = 0.0,
              cold_start: float = 0.0) -> dict[str, SimProvider]:
    """sora (retired), kling and wan alike, as in the dev table."""
    same = SimProvider(limit, render, queue_delay, cold_start=cold_start)
    return {"sora": SimProvider(limit, render, queue_delay, retired=True), "kling": same, "wan": same}


def simulator_config(plan: Mapping[str, SimProvider], time_factor: float, seed: int = 7) -> dict[str, Any]:
    return {"providers": {n: p.simulator() for n, p in plan.items()}, "time_factor": time_factor, "seed": seed}


def routing_table(plan: Mapping[str, SimProvider], simulator_url: str,
                  routes: Mapping[str, list[dict[str, str]]] | None = None,
                  spillover: Mapping[str, Mapping[str, Any]] | None = None,
                  render_times: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A routing file for Floodgate whose limits match the simulator's (with a ``spillover``
    section when given: model → {"equivalents": [...], "max_wait_s": ...}; with ``render_times``,
    provider → a ``render_time`` that each route's target on that provider carries)."""
    out: dict[str, Any] = {}
    for name, p in plan.items():
        spec: dict[str, Any] = {"kind": "simulator", "concurrency_limit": p.limit,
                                "connection": {"base_url": simulator_url, "api_key": API_KEY,
                                               "webhook_secret": DEV_WEBHOOK_SECRET}}
        if p.retired:
            spec["retired_at"] = SORA_RETIRED_AT
        out[name] = spec
    times = render_times or {}
    table: dict[str, Any] = {"providers": out, "routes": {
        model: [{**target, "render_time": times[target["provider"]]} if target["provider"] in times else dict(target)
                for target in targets]
        for model, targets in (routes or ROUTES).items()}}
    if spillover:
        table["spillover"] = {model: dict(rule) for model, rule in spillover.items()}
    return table


def write_simulator_config(path: Path, plan: Mapping[str, SimProvider], time_factor: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(simulator_config(plan, time_factor)))
    return path


@contextlib.contextmanager
def broker(settings: Settings, home: Path) -> Iterator[str]:
    """The run's broker: ``settings.kafka_bootstrap`` if set, else a local one for the run."""
    if settings.kafka_bootstrap:
        yield settings.kafka_bootstrap
        return
    local = LocalBroker(home / "broker", version=settings.kafka_version, cache_dir=settings.cache_dir,
                        heap=settings.broker_heap)
    info = local.start(port=settings.broker_port, detach=False, timeout=120)
    try:
        yield info.bootstrap
    finally:
        local.stop()


def discard(stack: Stack) -> None:
    """Stop a bench stack: SIGKILL its workers, then stop the rest.

    A worker whose submitter waits for a provider slot does not finish a graceful stop until
    Faust gives up on it (30 s); a bench stack is thrown away, so its workers are killed.
    """
    for name in [n for n in stack.children if n.startswith("worker")]:
        stack.kill(name)
    stack.stop()



def bench_stack(base: Settings, bootstrap: str, home: Path, name: str, plan: Mapping[str, SimProvider],
                time_factor: float = 1.0, *, workers: int = 1,
                routes: Mapping[str, list[dict[str, str]]] | None = None,
                spillover: Mapping[str, Mapping[str, Any]] | None = None,
                render_times: Mapping[str, Any] | None = None, **overrides: Any) -> Stack:
    """A Stack (not started) for scenario ``name`` with the simulated providers of ``plan``, the
    dev table's ``routes`` (unless given), ``spillover`` rules and the routes' ``render_times``
    (none unless given)."""
    home = home / name
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    sim_config = write_simulator_config(home / "simulator.json", plan, time_factor)
    routing = home / "routing.json"
    routing.write_text(json.dumps(routing_table(plan, sim_url, routes, spillover, render_times)))
    prefix = f"bench.{home.parent.name}.{name}."
    settings = base.with_overrides(kafka_bootstrap=bootstrap, topic_prefix=prefix, app_id=prefix + "app",
                                   cache_dir=home / "cache", routing_file=str(routing), **overrides)
    return Stack(settings, home, simulator_port=sim_port, workers=workers,
                 simulator_args=["--config", str(sim_config)])
