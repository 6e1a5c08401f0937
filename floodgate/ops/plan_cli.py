"""``floodgate plan``: a traffic shape and the routing file in, per provider and model the queue,
drain time, waits, tier and cost out (a table on stdout, a PNG of the queue over time)."""
from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

from floodgate import capacity
from floodgate.errors import ConfigError
from floodgate.ops.inputs import Routing, SimulatedProvider, load_routing, load_simulator
from floodgate.settings import Settings

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0, "d": 86400.0}


def parse_rate(text: str) -> float:
    """``5000/min``, ``83/s``, ``50/h`` → arrivals per second."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*/\s*([a-z]+)\s*", text)
    if not match or match.group(2) not in _UNITS:
        raise ConfigError(f"rate {text!r}: expected a number per s, min or h, e.g. 5000/min")
    return float(match.group(1)) / _UNITS[match.group(2)]


def parse_duration(text: str) -> float:
    """``10m``, ``90s``, ``1.5h``, ``45`` (seconds) → seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", text)
    if not match or (match.group(2) and match.group(2) not in _UNITS):
        raise ConfigError(f"duration {text!r}: expected e.g. 10m, 90s, 1h")
    return float(match.group(1)) * _UNITS.get(match.group(2) or "s", 1.0)


def read_arrivals(path: str, models: list[str], bin_seconds: float) -> dict[str, list[capacity.Segment]]:
    """A CSV of arrivals, one per row: ``seconds`` (from the start) and optionally ``model``; a
    header row is skipped. Rows without a model are spread over ``models`` in turn."""
    times: dict[str, list[float]] = {m: [] for m in models}
    try:
        _read_rows(path, models, times)
        return {m: capacity.binned(ts, bin_seconds) for m, ts in times.items() if ts}
    except OSError as exc:
        raise ConfigError(f"cannot read arrivals file {path}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _read_rows(path: str, models: list[str], times: dict[str, list[float]]) -> None:
    with open(path, newline="") as fh:
        for i, row in enumerate(csv.reader(fh)):
            if not row or not row[0].strip():
                continue
            try:
                t = float(row[0])
            except ValueError:
                if i == 0:
                    continue  # a header
                raise ConfigError(f"{path}:{i + 1}: {row[0]!r} is not a number of seconds") from None
            model = row[1].strip() if len(row) > 1 and row[1].strip() else models[i % len(models)]
            if model not in times:
                raise ConfigError(f"{path}:{i + 1}: model {model!r} is not planned (known: {', '.join(models)})")
            times[model].append(t)


def model_loads(routing: Routing, shapes: dict[str, list[capacity.Segment]],
                simulated: dict[str, SimulatedProvider]) -> list[capacity.ModelLoad]:
    out = []
    for model, segments in shapes.items():
        target = routing.primary(model)
        provider = str(target["provider"])
        sim = simulated.get(provider)
        if "render_time" in target:
            render = capacity.RenderTime.parse(target["render_time"], f"routes.{model}.render_time")
            delay = 0.0
        elif sim is not None:
            render, delay = sim.render, sim.queue_delay
        else:
            raise ConfigError(f"no render time for {model} on {provider}: add render_time to its target in the "
                              "routing file, or pass --preset/--simulator-config")
        out.append(capacity.ModelLoad(model, provider, tuple(segments), render, delay,
                                      _price(target, "price_per_second"), _price(target, "price_per_job")))
    return out


def _price(target: dict[str, object], key: str) -> float | None:
    value = target.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def shapes_from(args: argparse.Namespace, models: list[str]) -> dict[str, list[capacity.Segment]]:
    if args.arrivals:
        return read_arrivals(args.arrivals, models, args.bin)
    if not args.peak or not args.duration:
        raise ConfigError("give a traffic shape: --peak RATE --for DURATION, or --arrivals FILE.csv")
    total = capacity.spike(parse_rate(args.peak), parse_duration(args.duration),
                           parse_rate(args.baseline) if args.baseline else 0.0,
                           parse_duration(args.after) if args.after else 0.0)
    weights = mix(args.mix, models)
    return {m: capacity.scaled(total, w) for m, w in weights.items() if w > 0}


def mix(text: str, models: list[str]) -> dict[str, float]:
    """``sora-2=2,kling-2.1=1`` → shares summing to 1; empty: every model alike."""
    if not text:
        return {m: 1 / len(models) for m in models}
    raw: dict[str, float] = {}
    for item in text.split(","):
        model, _, weight = item.partition("=")
        if model.strip() not in models:
            raise ConfigError(f"--mix: unknown model {model.strip()!r} (known: {', '.join(models)})")
        raw[model.strip()] = float(weight or 1)
    total = sum(raw.values())
    return {m: w / total for m, w in raw.items()}


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(plans: list[capacity.ProviderPlan], target_wait: float) -> str:
    head = ["provider", "limit", "jobs", "peak in/min", "service/min", "load", "in flight (Little)",
            "peak queue", "drain", "wait p50", "wait p95", f"tier (p95<={fmt_s(target_wait)})", "cost"]
    rows = [head]
    for p in plans:
        r = p.result
        rows.append([p.provider, str(p.concurrency), f"{r.arrivals:.0f}", f"{r.peak_rate * 60:.1f}",
                     f"{r.service_rate * 60:.1f}", f"{r.utilisation:.2f}", f"{r.in_flight_needed:.1f}",
                     f"{r.peak_queue:.0f}", fmt_s(r.drain_seconds), fmt_s(r.wait_p50), fmt_s(r.wait_p95),
                     str(p.tier) if p.tier is not None else ">100000", _money(p.cost)])
    models = [["model", "provider", "jobs", "mean job", "cost"]]
    for p in plans:
        for m in p.models:
            models.append([m.model, m.provider, f"{m.jobs:.0f}", fmt_s(m.mean_seconds), _money(m.cost)])
    return table(rows) + "\n\n" + table(models)


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def plot(plans: list[capacity.ProviderPlan], path: Path) -> bool:
    """The waiting line of each provider over time, as PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(9, 4.5))
    horizon = max((p.result.curve[-1][0] for p in plans), default=0.0)
    unit, per = ("hours", 3600.0) if horizon > 3 * 3600 else ("minutes", 60.0)
    for p in plans:
        ts, qs = zip(*p.result.curve, strict=True)
        ax.plot([t / per for t in ts], qs, label=f"{p.provider} (limit {p.concurrency})")
    ax.set_xlabel(f"{unit} from the start of the traffic")
    ax.set_ylabel("jobs waiting for a slot")
    ax.set_title("floodgate plan: queue over time (fluid model)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    routing = load_routing(args.routing or settings.routing_file or None)
    simulated = load_simulator(args.simulator_config, args.preset)
    models = sorted(routing.raw_routes)
    loads = model_loads(routing, shapes_from(args, models), simulated)
    limits = {n: s.concurrency_limit for n, s in routing.setup.routing.providers.items()}
    target = parse_duration(args.target_wait)
    plans = capacity.plan(loads, limits, target)
    print(render(plans, target))
    if args.png:
        if plot(plans, Path(args.png)):
            print(f"\nqueue over time: {args.png}")
        else:
            print("\nno PNG: matplotlib is not installed (pip install -e '.[bench]'); the table above is complete",
                  file=sys.stderr)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--routing", default="", help="routing file (default: FLOODGATE_ROUTING_FILE, else the dev table)")
    p.add_argument("--peak", default="", help="arrival rate of the peak, e.g. 5000/min")
    p.add_argument("--for", dest="duration", default="", help="how long the peak lasts, e.g. 10m")
    p.add_argument("--baseline", default="", help="arrival rate after the peak, e.g. 50/h")
    p.add_argument("--after", default="", help="how long the baseline lasts after the peak, e.g. 1h")
    p.add_argument("--arrivals", default="", help="CSV of arrivals instead: seconds[,model] per row")
    p.add_argument("--bin", type=float, default=1.0, help="seconds per rate step when reading --arrivals")
    p.add_argument("--mix", default="", help="share of each model, e.g. sora-2=2,wan-2.6=1 (default: alike)")
    p.add_argument("--target-wait", default="5m", help="the wait (p95) the tier column keeps to, e.g. 5m")
    p.add_argument("--simulator-config", default=None, help="render times from a simulator config")
    p.add_argument("--preset", choices=("dev", "realistic"), default=None, help="render times from a simulator preset")
    p.add_argument("--png", default="plan.png", help="where to draw the queue over time ('' for none)")
