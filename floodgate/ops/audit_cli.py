"""``floodgate audit``: the chain's timeouts gathered from the settings, the routing file, the
simulator's config and the code's own defaults, then judged by ``floodgate.audit``."""
from __future__ import annotations

import argparse
import dataclasses
import inspect

from floodgate import audit
from floodgate.capacity import route_render_times
from floodgate.following import read_budget
from floodgate.ops.inputs import load_routing, load_simulator
from floodgate.settings import Settings

DEFAULT_PROVIDER_TIMEOUT = 30.0  # a connector's timeout when its connection names none (the simulator's)
STOCK_BROKER_MIN_SESSION = 6.0  # Kafka's group.min.session.timeout.ms default


def build_chain(settings: Settings, args: argparse.Namespace) -> audit.Chain:
    import faust

    from connectors.notifiers.webhook import DEFAULT_TIMEOUT as OUTGOING_TIMEOUT
    from connectors.providers.simulator import SimulatorProvider
    from floodgate.api.common import Deps
    from floodgate.notify.outgoing import OutgoingWebhooks
    from floodgate.signing import DEFAULT_TOLERANCE
    from streams.guard import BACKOFF, RETRIES

    routing = load_routing(args.routing or settings.routing_file or None)
    simulated = load_simulator(args.simulator_config, args.preset)
    sim_timeout = inspect.signature(SimulatorProvider).parameters["timeout"].default
    links = []
    renders = route_render_times(routing.raw_routes)
    import connectors.providers  # noqa: F401 - registers the built-in kinds
    from connectors.providers.registry import kind_class

    for name, spec in routing.setup.routing.providers.items():
        connection = routing.setup.connections.get(name, {})
        connector = kind_class(spec.kind)
        default = sim_timeout if spec.kind == "simulator" else DEFAULT_PROVIDER_TIMEOUT
        facts = audit.KNOWN_KINDS.get(spec.kind)
        sim = simulated.get(name) if spec.kind == "simulator" else None
        slowest = max((r.slowest for r in renders.get(name, ())), default=None)
        if sim is not None:
            from_sim = (sim.render.slowest + sim.queue_delay + sim.cold_start) * sim.time_factor
            slowest = max(slowest or 0.0, from_sim)
        if spec.kind == "simulator":  # answers every call at once; signs each webhook try afresh
            facts = audit.KindFacts(0.0, sim.webhook_retry_window if sim else None, True)
        links.append(audit.ProviderLink(
            name=name, kind=spec.kind, http_timeout=float(connection.get("timeout", default)),
            sync_wait=facts.sync_wait if facts else None, slowest_job=slowest,
            webhook_retry_window=facts.webhook_retry_window if facts else None,
            resigns_retries=facts.resigns_retries if facts else None, concurrency_limit=spec.concurrency_limit,
            callbacks=getattr(connector, "callbacks", "all"),
            status_rate=read_budget(spec.status_rate_per_second, connector)))
    keepalive = next(f.default for f in dataclasses.fields(Deps) if f.name == "keepalive")
    assert isinstance(keepalive, float)
    drain = inspect.signature(OutgoingWebhooks).parameters["drain_timeout"].default
    return audit.Chain(
        lb_idle=args.lb_idle, sse_keepalive=float(keepalive), ws_ping=float(keepalive),  # one setting drives both
        providers=tuple(links), job_timeout=settings.job_timeout, poll_after=settings.poll_after,
        webhooks_enabled=bool(settings.webhook_base_url) or args.webhooks,
        replay_tolerance=DEFAULT_TOLERANCE, session_timeout=settings.session_timeout,
        # As streams/app.py configures the worker's consumer.
        heartbeat_interval=max(1.0, settings.session_timeout / 3),
        broker_min_session=args.broker_min_session,
        max_poll_interval=float(faust.Settings.broker_max_poll_interval.default),  # type: ignore[attr-defined]
        guard_attempts=RETRIES + 1, guard_backoff_total=sum(BACKOFF.delay(i) for i in range(RETRIES)),
        outgoing_timeout=OUTGOING_TIMEOUT, outgoing_drain=float(drain),
        provider_status_poll=settings.provider_status_poll)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    findings = audit.audit(build_chain(settings, args))
    print(audit.render(findings))
    return 1 if audit.failed(findings) else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--routing", default="", help="routing file (default: FLOODGATE_ROUTING_FILE, else the dev table)")
    p.add_argument("--lb-idle", type=float, default=60.0, help="the load balancer's idle timeout, seconds")
    p.add_argument("--simulator-config", default=None, help="simulator config: render times and webhook retries")
    p.add_argument("--preset", choices=("dev", "realistic"), default=None, help="a simulator preset instead")
    p.add_argument("--broker-min-session", type=float, default=STOCK_BROKER_MIN_SESSION,
                   help="the broker's group.min.session.timeout, seconds (6 on a stock Kafka)")
    p.add_argument("--webhooks", action="store_true",
                   help="audit provider webhooks even though FLOODGATE_WEBHOOK_BASE_URL is not set here")


