"""The ``floodgate`` command. Subcommands are registered in ``COMMANDS``; each imports lazily so
``floodgate broker status`` does not pay for Faust's import time."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from floodgate.errors import FloodgateError


def _broker(args: argparse.Namespace) -> int:
    from pathlib import Path

    from floodgate.broker.local import LocalBroker
    from floodgate.settings import Settings

    settings = Settings.from_env()
    home = Path(args.dir) if args.dir else settings.cache_dir / "broker"
    from floodgate.broker.cluster import LocalCluster, run_cli

    if args.nodes > 1 or LocalCluster.exists(home):
        return run_cli(args.action, home, nodes=args.nodes, version=settings.kafka_version,
                       cache_dir=settings.cache_dir, port=args.port or settings.broker_port, timeout=args.timeout)
    broker = LocalBroker(home, version=settings.kafka_version,
                         cache_dir=settings.cache_dir, heap=settings.broker_heap)
    if args.action == "start":
        info = broker.start(port=args.port or settings.broker_port, detach=True, timeout=args.timeout)
        print(f"broker={info.bootstrap}")
        print(f"pid={info.pid} log={broker.log_file}", file=sys.stderr)
        return 0
    if args.action == "stop":
        stopped = broker.stop()
        print("stopped" if stopped else "no broker running")
        return 0
    running = broker.info()
    if running is None:
        print("no broker running")
        return 3
    print(f"broker={running.bootstrap} pid={running.pid} version={running.version}")
    return 0


def _add_broker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("broker", help="start/stop/status of the local Kafka broker (or --nodes 3: a cluster)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--nodes", type=int, default=1,
                   help="start a KRaft cluster of this many nodes (stop/status find it by itself)")
    p.add_argument("--port", type=int, default=0, help="listener port (default: FLOODGATE_BROKER_PORT or a free one)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the broker to answer")
    p.add_argument("--dir", default="", help="state directory (data, log, pid); default ~/.cache/floodgate/broker")
    p.set_defaults(func=_broker)


def _demo(args: argparse.Namespace) -> int:
    from floodgate.demo import main as demo

    return demo(jobs=args.jobs, rate=args.rate, deadline=args.deadline)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="the stack on the embedded default, a spike of jobs, live progress, a summary")
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--rate", type=float, default=200.0, help="arrivals per second (open loop)")
    p.add_argument("--deadline", type=float, default=600.0, help="give up waiting after this many seconds")
    p.set_defaults(func=_demo)


def _worker(args: argparse.Namespace) -> int:
    from floodgate.settings import Settings
    from streams.worker import run

    run(Settings.from_env())
    return 0


def _add_worker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("worker", help="run a pipeline worker (all Faust agents); start more to scale out")
    p.set_defaults(func=_worker)


def _leave(args: argparse.Namespace) -> int:
    import asyncio

    from floodgate.settings import Settings
    from streams.static_member import leave

    settings = Settings.from_env()
    left = asyncio.run(leave(settings.kafka_bootstrap, settings.app_id, args.worker_id))
    if left.error is None:
        print(f"{args.worker_id} left group {settings.app_id}: its partitions move now")
    elif left.gone:
        print(f"{args.worker_id} was not a member of group {settings.app_id}")
    else:
        print(f"floodgate: {args.worker_id} did not leave group {settings.app_id}: {left.error}", file=sys.stderr)
        return 1
    return 0


def _add_leave(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("leave", help="take a stopped worker out of the consumer group now "
                                     "(one stopped with FLOODGATE_LEAVE_ON_STOP off, for good)")
    p.add_argument("worker_id", help="the worker's FLOODGATE_WORKER_ID (its host name if it had none)")
    p.set_defaults(func=_leave)


def _api(args: argparse.Namespace) -> int:
    from floodgate.api.server import run
    from floodgate.settings import Settings

    settings = Settings.from_env()
    roles = set(args.roles.split(",")) if args.roles else None
    run(settings, host=args.host or settings.api_host, port=args.port if args.port is not None else settings.api_port,
        roles=roles, outgoing_webhooks=False if args.no_outgoing_webhooks else None)
    return 0


def _add_api(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("api", help="HTTP ingress, job reads (GET/SSE/WebSocket), webhook bridge and fan-out")
    p.add_argument("--host", default="")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--roles", default="", help="comma-separated subset of ingress,read,bridge (default: all); "
                   "ingress alone runs no job view (with queued-jobs quotas it reads only the keys of results)")
    p.add_argument("--no-outgoing-webhooks", action="store_true",
                   help="do not deliver signed result webhooks from this process "
                        "(an ingress-only process never does)")
    p.set_defaults(func=_api)


def _simulator(args: argparse.Namespace) -> int:
    from connectors.simulator.__main__ import main as simulator_main

    argv = ["--host", args.host, "--port", str(args.port), "--preset", args.preset]
    for flag, value in (("--config", args.config), ("--time-factor", args.time_factor), ("--seed", args.seed)):
        if value is not None:
            argv += [flag, str(value)]
    return simulator_main(argv)


def _add_simulator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("simulator", help="the provider simulator (python -m connectors.simulator)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--preset", choices=("dev", "realistic"), default="dev")
    p.add_argument("--config", default=None)
    p.add_argument("--time-factor", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=_simulator)


def _dev(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from floodgate.devstack import Stack, run_foreground
    from floodgate.settings import Settings

    settings = Settings.from_env()
    if args.bootstrap:
        settings = settings.with_overrides(kafka_bootstrap=args.bootstrap)
    if args.broker_port:
        settings = settings.with_overrides(broker_port=args.broker_port)
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="floodgate-dev-"))
    sim_args = ["--preset", args.preset, "--time-factor", str(args.time_factor)]
    stack = Stack(settings, home, api_port=args.api_port, simulator_port=args.simulator_port,
                  workers=args.workers, brokers=args.brokers, simulator_args=sim_args)
    return run_foreground(stack)


def _add_dev(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dev", help="the whole stack in the foreground: broker, simulator, API, worker")
    p.add_argument("--api-port", type=int, default=8000)
    p.add_argument("--simulator-port", type=int, default=0)
    p.add_argument("--broker-port", type=int, default=0)
    p.add_argument("--bootstrap", default="", help="use this Kafka cluster instead of starting the local broker")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--brokers", type=int, default=1,
                   help="nodes of the local broker; 3 runs a KRaft cluster and replicates every topic 3 times "
                        "(min.insync.replicas 2)")
    p.add_argument("--preset", choices=["dev", "realistic"], default="dev")
    p.add_argument("--time-factor", type=float, default=1.0)
    p.add_argument("--home", default="", help="directory for logs and broker data (default: a new temp dir)")
    p.set_defaults(func=_dev)


BENCH_EXTRA_MISSING = ("floodgate bench: the benchmark draws its plots with matplotlib, which is not installed; "
                       "install the bench extra: pip install -e '.[bench]' (or run `make bench`)")


def _bench(args: argparse.Namespace) -> int:
    import dataclasses
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("matplotlib") is None:  # say so now, not after a 20-minute run
        print(BENCH_EXTRA_MISSING, file=sys.stderr)
        return 2
    from floodgate.bench import runner
    from floodgate.settings import Settings

    settings = Settings.from_env()
    if args.bootstrap:
        settings = settings.with_overrides(kafka_bootstrap=args.bootstrap)
    scenarios = tuple(args.only.split(",")) if args.only else runner.SCENARIOS
    unknown = set(scenarios) - set(runner.SCENARIOS)
    if unknown:
        print(f"floodgate bench: unknown scenario(s) {', '.join(sorted(unknown))}; "
              f"choose from {', '.join(runner.SCENARIOS)}", file=sys.stderr)
        return 2
    if args.smoke:
        cfg = runner.smoke()
    else:
        cfg = runner.full(time_factor=args.time_factor, spike_seconds=args.spike_seconds, memory_jobs=args.memory_jobs,
                          pipeline_jobs=args.pipeline_jobs, workers=args.workers, profile=not args.no_profile,
                          peer_jobs=args.peer_jobs, realtime_seconds=args.realtime_seconds)
    cfg = dataclasses.replace(cfg, scenarios=scenarios, profile=not args.no_profile)
    if args.no_warmup:
        cfg = dataclasses.replace(cfg, warmup=None)
    out_dir = Path(args.out) if args.out else runner.default_out_dir()
    report = runner.run(cfg, out_dir, settings, keep_work=args.keep_work)
    return 1 if any(isinstance(v, dict) and v.get("error") for v in report["results"].values()) else 0


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="benchmarks on the full stack: report.json, report.md and plots in bench/results/")
    p.add_argument("--smoke", action="store_true", help="a tiny run (seconds per scenario), as the test suite runs it")
    p.add_argument("--out", default="", help="output directory (default: bench/results/<timestamp>)")
    p.add_argument("--only", default="",
                   help="comma-separated scenarios "
                        "(rawkafka,accept,pipeline,notify,handover,memory,spike,baseline,peer)")
    p.add_argument("--time-factor", type=float, default=0.02,
                   help="wall seconds per simulated second for the spike, its renders and nginx's timeout (0.02 = 50x)")
    p.add_argument("--spike-seconds", type=float, default=15.0, help="simulated seconds of the 5,000/minute spike")
    p.add_argument("--realtime-seconds", type=float, default=60.0,
                   help="wall seconds of the spike's arrivals in real time, 83/s, renders still compressed (0: skip)")
    p.add_argument("--memory-jobs", type=int, default=100_000,
                   help="the large backlog of the memory scenario (the target's size, 1000000, adds about an hour)")
    p.add_argument("--pipeline-jobs", type=int, default=10_000, help="jobs through the instant-provider pipeline")
    p.add_argument("--workers", type=int, default=1, help="pipeline workers")
    p.add_argument("--peer-jobs", type=int, default=2000,
                   help="jobs in the peer drain (Floodgate, Celery + Redis, naive; 200 req/s, limit 10)")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    p.add_argument("--no-warmup", action="store_true",
                   help="measure on a cold broker (no warm-up round until its JIT compilers are quiet)")
    p.add_argument("--keep-work", action="store_true", help="keep the stacks' logs and configs even on success")
    p.add_argument("--bootstrap", default="", help="use this Kafka cluster instead of starting the local broker")
    p.set_defaults(func=_bench)


def _audit(args: argparse.Namespace) -> int:
    from floodgate.ops.audit_cli import run

    return run(args)


def _add_audit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from floodgate.ops.audit_cli import add_arguments

    p = sub.add_parser("audit", help="the timeout audit: pass/warn/fail per link of the chain, exit 1 on a fail")
    add_arguments(p)
    p.set_defaults(func=_audit)


def _plan(args: argparse.Namespace) -> int:
    from floodgate.ops.plan_cli import run

    return run(args)


def _add_plan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from floodgate.ops.plan_cli import add_arguments

    p = sub.add_parser("plan", help="the capacity calculation: queue, drain, waits, tier and cost per provider")
    add_arguments(p)
    p.set_defaults(func=_plan)


def _replay(args: argparse.Namespace) -> int:
    from floodgate.ops.replay_cli import run

    return run(args)


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from floodgate.ops.replay_cli import add_arguments

    p = sub.add_parser("replay", help="send job requests again: from the dlq, a file or a topic's time range")
    add_arguments(p)
    p.set_defaults(func=_replay)


COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_broker, _add_worker, _add_leave, _add_api, _add_simulator, _add_dev, _add_demo, _add_bench, _add_plan,
    _add_audit, _add_replay]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="floodgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FloodgateError as exc:
        print(f"floodgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
