"""The chaos scenarios: a real stack (``devstack.Stack``), a client load, one kind of fault, and
the checker's verdict on what happened.

Every scenario follows one script: start the stack, submit ``jobs`` jobs while the fault runs,
wait until every accepted job has a terminal result (or its deadline: the job timeout plus the
drain time the load needs), then read the final GETs, the topics and the simulator's record of
provider jobs, and hand the whole history to ``checker.check``.

Provider timings are compressed (renders of tens of milliseconds) so a scenario of thousands of
jobs takes minutes on a two-core machine. The simulator's own limit is set well above Floodgate's
(``SIM_LIMIT_FACTOR``): were they equal, the simulator's 429s would hide an overshoot instead of
the checker counting it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from floodgate.broker.cluster import LocalCluster
from floodgate.broker.local import LocalBroker
from floodgate.chaos import observe
from floodgate.chaos.checker import Fault, History, Verdict, check
from floodgate.devstack import Stack
from floodgate.errors import FloodgateError
from floodgate.procs import free_port, quiet_ports
from floodgate.provider_config import DEV_WEBHOOK_SECRET_REF
from floodgate.settings import Settings

SIM_LIMIT_FACTOR = 5
MODELS = ("wan-2.6", "kling-2.1")
"""The client alternates: wan-2.6 goes to wan (kling the fallback), kling-2.1 to kling alone."""
LIMITS = {"wan": 20, "kling": 10}
"""Floodgate's limits (the routing file): the checker's bar for over-limit moments."""


@dataclass
class Plan:
    """One scenario's size and knobs."""

    name: str
    title: str
    jobs: int
    rate: float
    """Requests per second the client sends."""
    workers: int = 3
    brokers: int = 1
    own_broker: bool = False
    """Start a broker for this scenario alone (one that will be restarted or killed)."""
    job_timeout: float = 60.0
    hang_rate: float = 0.0
    render: tuple[float, float] = (0.03, 0.09)
    fault_every: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """A scenario in progress: the stack, the client, the faults so far, the results seen."""

    plan: Plan
    stack: Stack
    client: observe.Client
    rng: random.Random
    executor: ThreadPoolExecutor
    """Where blocking stack operations run. It outlives the load: a child is tied to the thread
    that started it (PR_SET_PDEATHSIG fires when that thread ends), so a restarted worker or
    broker must not be started from a thread that ends before the scenario does."""
    faults: list[Fault] = field(default_factory=list)
    watch: observe.ResultWatch = field(default_factory=observe.ResultWatch)
    submitted: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    notes: list[str] = field(default_factory=list)

    def fault(self, name: str) -> None:
        self.faults.append(Fault(name, time.time()))

    async def blocking(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, partial(fn, *args, **kwargs))

    def workers(self) -> list[str]:
        return [n for n in list(self.stack.children) if n.startswith("worker-")]

    async def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the run drains first; True if it did."""
        if self.drained.is_set():
            return True
        try:
            await asyncio.wait_for(self.drained.wait(), max(0.0, seconds))
            return True
        except TimeoutError:
            return False


FaultLoop = Callable[[Run], Coroutine[Any, Any, None]]


# ------------------------------------------------------------------------------ faults
async def kill_random_worker(run: Run) -> None:
    """Every ``fault_every`` s on the clock, SIGKILL a worker chosen at random among those up (not
    one still starting after an earlier kill) and start it again in the background, whether or not
    the last victim is back. A tick that finds no worker up is noted and skipped."""
    kills, skipped = 0, 0
    starting: dict[str, asyncio.Task[Any]] = {}
    next_at = time.monotonic() + run.plan.fault_every
    try:
        while kills < run.plan.extra.get("kills", float("inf")) and not await run.pause(next_at - time.monotonic()):
            next_at += run.plan.fault_every
            for name, task in list(starting.items()):
                if task.done():
                    del starting[name]
                    task.result()  # a worker that could not start again fails the scenario
            up = [name for name in run.workers() if name not in starting]
            if not up:
                skipped += 1
                continue
            name = observe.pick(run.rng, up)
            await run.blocking(run.stack.kill, name)
            run.fault(f"SIGKILL {name}")
            kills += 1
            starting[name] = asyncio.ensure_future(
                run.blocking(run.stack.start_worker, int(name.rpartition("-")[2]), timeout=300))
    finally:
        if skipped:
            run.notes.append(f"{skipped} kill tick(s) found every worker still starting")
        for task in starting.values():  # the last victims are back before the run is judged
            await task


async def kill_api(run: Run) -> None:
    """SIGKILL the API (ingress and bridge) a third into the load and again at two thirds."""
    for _ in range(2):
        if await run.pause(run.plan.fault_every):
            return
        await run.blocking(run.stack.kill, "api")
        run.fault("SIGKILL api")
        await run.blocking(run.stack.start_api)


async def restart_broker(run: Run) -> None:
    """Stop the single broker under load, start it again on the same port 15 s later: longer than
    the API's send timeout, so batches pending at the stop expire."""
    if await run.pause(run.plan.fault_every):
        return
    broker = run.stack.broker
    assert isinstance(broker, LocalBroker)
    port = int(run.stack.bootstrap.rpartition(":")[2])
    await run.blocking(broker.stop)
    run.fault("broker stopped")
    await asyncio.sleep(15)
    await run.blocking(broker.start, port=port, detach=False)
    run.notes.append("broker back on its port after 15 s.")


async def wipe_table_dir(run: Run) -> None:
    """Kill a worker, delete its local table directory while it is down, start it again."""
    if await run.pause(run.plan.fault_every):
        return
    name = "worker-0"
    await run.blocking(run.stack.kill, name)
    run.fault(f"SIGKILL {name} + wipe its tables")
    directory = run.stack.home / "cache" / "faust" / run.stack.settings.app_id / name
    run.notes.append(f"wiped {directory} ({sum(1 for _ in directory.rglob('*'))} files)")
    await run.blocking(shutil.rmtree, directory, ignore_errors=True)
    await run.blocking(run.stack.start_worker, 0)


async def rebalance_storm(run: Run) -> None:
    """For a minute, every ``fault_every`` s, in turn a new worker joins or the oldest extra one
    that is up leaves (SIGTERM); neither waits for the other, so the group never settles. A leave
    tick that finds every extra worker still starting is noted and skipped: on a loaded machine a
    worker stopped 5 s after its start had not yet joined, or logged a line, and its leave tested
    nothing."""
    end = time.monotonic() + 60
    extras: dict[str, asyncio.Task[Any]] = {}  # extra workers, oldest first, and their starts
    pending: set[asyncio.Task[Any]] = set()
    index, join, skipped = run.plan.workers, True, 0

    async def start(name: str) -> None:
        # Stopped at the end before it was ready: a leave like any other.
        with contextlib.suppress(FloodgateError):
            await run.blocking(run.stack.start_worker, int(name.rpartition("-")[2]), timeout=300)

    next_at = time.monotonic() + run.plan.fault_every
    while time.monotonic() < end and not await run.pause(next_at - time.monotonic()):
        next_at += run.plan.fault_every
        joining, join = join or not extras, not join
        if joining:
            name = f"worker-{index}"
            index += 1
            extras[name] = task = asyncio.create_task(start(name))
            run.fault(f"{name} joined")
        elif up := [name for name, started in extras.items() if started.done()]:
            name = up[0]
            del extras[name]
            task = asyncio.create_task(run.blocking(run.stack.stop_child, name))
            run.fault(f"{name} left")
        else:
            skipped += 1
            continue
        pending.add(task)
        task.add_done_callback(pending.discard)
    if skipped:
        run.notes.append(f"{skipped} leave tick(s) found every extra worker still starting")
    await asyncio.gather(*pending)
    for name in extras:
        await run.blocking(run.stack.stop_child, name)


async def kill_cluster_nodes(run: Run) -> None:
    """SIGKILL one of three brokers, start it a minute later; then kill the leader of the first
    partition of ``requests`` and start it again."""
    cluster = run.stack.broker
    assert isinstance(cluster, LocalCluster)
    if await run.pause(run.plan.fault_every):
        return
    victim = run.rng.randint(1, cluster.size)
    await run.blocking(cluster.kill_node, victim)
    run.fault(f"SIGKILL broker {victim}")
    await asyncio.sleep(run.plan.extra.get("node_down", 60.0))
    await run.blocking(cluster.start_node, victim)
    run.notes.append(f"broker {victim} restarted")
    if await run.pause(run.plan.fault_every):
        run.notes.append("drained before the leader kill")
        return
    leader = await run.blocking(partition_leader, run.stack.bootstrap, run.stack.settings.topic("requests"))
    await run.blocking(cluster.kill_node, leader)
    run.fault(f"SIGKILL broker {leader} (leader of requests-0)")
    await asyncio.sleep(run.plan.extra.get("node_down", 60.0) / 2)
    await run.blocking(cluster.start_node, leader)


def partition_leader(bootstrap: str, topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return int(meta.topics[topic].partitions[0].leader)


async def no_fault(run: Run) -> None:
    """The hung provider is the fault: it is there from the start."""


# ---------------------------------------------------------------------------- the plans
def plans(jobs: int) -> dict[str, tuple[Plan, FaultLoop]]:
    """Every scenario, in the order ``make chaos`` runs them; ``jobs`` sizes the first one, the
    others a tenth of it (at least 200). A single fault strikes a third into the load."""
    small = max(200, jobs // 10)

    def once(plan: Plan) -> Plan:
        plan.fault_every = max(1.0, plan.jobs / plan.rate / 3)
        return plan

    return {
        "worker-kill": (Plan("worker-kill", "a random worker SIGKILLed every 10 s on the clock and restarted",
                             jobs, rate=150.0), kill_random_worker),
        "api-kill": (once(Plan("api-kill", "the API (ingress + bridge) SIGKILLed at a third and two thirds of "
                               "the load, restarted at once", small, rate=60.0)), kill_api),
        "broker-restart": (once(Plan("broker-restart", "the single dev broker stopped under load, back 15 s later",
                                     small, rate=60.0, own_broker=True)), restart_broker),
        "table-wipe": (once(Plan("table-wipe", "a worker's table directory wiped while it is down", small,
                                 rate=60.0)), wipe_table_dir),
        "hung-provider": (Plan("hung-provider", "wan accepts one job in twenty and never answers it; "
                               "kling, next to it, is fine", small, rate=60.0, hang_rate=0.05, job_timeout=20.0),
                          no_fault),
        "rebalance-storm": (Plan("rebalance-storm", "every 5 s for a minute, a worker joins or one of those leaves",
                                 max(small, 3000), rate=50.0, fault_every=5.0), rebalance_storm),
        "cluster-node-kill": (Plan("cluster-node-kill", "one of three brokers SIGKILLed, back after a minute; "
                                   "then the leader of requests-0", max(small, 4000), rate=40.0, brokers=3,
                                   own_broker=True), kill_cluster_nodes),
    }


def write_configs(home: Path, plan: Plan) -> tuple[Path, Path]:
    home.mkdir(parents=True, exist_ok=True)
    low, high = plan.render
    base = {"concurrency_limit": max(LIMITS.values()) * SIM_LIMIT_FACTOR,
            "render_time": {"kind": "uniform", "min": low, "max": high}, "queue_delay": 0.005}
    providers = {name: dict(base) for name in LIMITS}
    if plan.hang_rate:
        providers["wan"]["hang_rate"] = plan.hang_rate
    sim = home / "simulator.json"
    sim.write_text(json.dumps({"providers": providers, "seed": 13}))
    conn = {"base_url": "env:FLOODGATE_SIMULATOR_URL", "api_key": "k", "webhook_secret": DEV_WEBHOOK_SECRET_REF}
    routing = home / "routing.json"
    routing.write_text(json.dumps({
        "providers": {name: {"kind": "simulator", "concurrency_limit": limit, "connection": conn}
                      for name, limit in LIMITS.items()},
        "routes": {"wan-2.6": [{"provider": "wan"}, {"provider": "kling", "provider_model": "kling-2.1"}],
                   "kling-2.1": [{"provider": "kling"}]},
    }))
    return sim, routing


def make_stack(plan: Plan, home: Path, kafka_bootstrap: str, prefix: str) -> Stack:
    sim, routing = write_configs(home, plan)
    settings = Settings.from_env({}).with_overrides(
        kafka_bootstrap="" if plan.own_broker else kafka_bootstrap, topic_prefix=prefix, app_id=prefix + "app",
        partitions=6, dispatch_partitions=3, session_timeout=6.0, poll_after=5.0, job_timeout=plan.job_timeout,
        routing_file=str(routing),
        broker_port=quiet_ports(plan.brokers) if plan.own_broker else 0, broker_heap="512m")
    return Stack(settings, home, api_port=free_port(), workers=plan.workers, brokers=plan.brokers,
                 simulator_args=["--config", str(sim)])


async def drive(run: Run, faults: FaultLoop, drain_timeout: float) -> float:
    """Load and faults side by side; returns when every accepted job is terminal or at the deadline."""
    stack, plan = run.stack, run.plan

    async def load() -> None:
        await run.client.submit(plan.jobs, rate=plan.rate)
        run.submitted.set()

    async def watch() -> None:
        def expected() -> set[str]:
            if not run.submitted.is_set():
                return {"(still submitting)"}
            return {a.job_id for a in run.client.accepted}
        await asyncio.to_thread(run.watch.wait, stack.bootstrap, stack.settings.topic("results"), expected,
                                idle=plan.job_timeout + 60, timeout=drain_timeout)
        run.drained.set()

    watcher = asyncio.create_task(watch())
    fault_task = asyncio.create_task(faults(run))
    await load()
    await watcher
    run.drained.set()
    await fault_task
    return time.time()


STALL_MARK = "none handed out past"
"""What ``streams.faust_fixes.check_stalls`` logs each time it re-seeks a stalled partition."""


def worker_logs(stack: Stack) -> list[str]:
    """The text of every worker's log, restarted ones included (a restarted child appends to its
    predecessor's log)."""
    return [child.log.read_text(errors="replace")
            for name, child in stack.children.items() if name.startswith("worker-") and child.log.exists()]


def stall_firings(logs: list[str]) -> int:
    """The stall watchdog's firings in the workers' logs (``worker_logs``)."""
    return sum(text.count(STALL_MARK) for text in logs)


REPLAY_START, REPLAY_END = "Restoring state from changelog topics", "Recovery complete"
"""What Faust logs when a worker starts replaying its tables' changelogs, and when it is done."""


def table_replays(text: str) -> list[float]:
    """Seconds each table replay in a worker's log took, in order. A replay cut short (its worker
    killed first) has no end and is not counted."""
    out: list[float] = []
    began: datetime | None = None
    for line in text.splitlines():
        if REPLAY_START in line:
            began = _stamp(line)
        elif REPLAY_END in line and began is not None:
            ended = _stamp(line)
            if ended is not None:
                out.append((ended - began).total_seconds())
            began = None
    return out


def _stamp(line: str) -> datetime | None:
    """The time of a worker's log line, ``[2026-12-06 21:00:51,929] ...``; None if it has none."""
    try:
        return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
    except ValueError:
        return None


def replay_note(logs: list[str]) -> str:
    """How long the table replays in the workers' logs (``worker_logs``) took: a replay that
    outlasts the time between two rebalances keeps the group from ever settling."""
    took = sorted(d for text in logs for d in table_replays(text))
    if not took:
        return "No table replay in the workers' logs."
    return (f"{len(took)} table replays in the workers' logs: median {took[len(took) // 2]:.1f} s, "
            f"longest {took[-1]:.1f} s.")


def read_the_end(history: History, stack: Stack) -> None:
    """What the run left at the provider and on the topics, in that order. A webhook the simulator
    counts as delivered was answered 2xx, which the bridge does only once Kafka has it: the topic,
    read after, holds every one of them. Read the other way round, a run that ended with jobs
    still rendering (stuck ones) had their webhooks delivered in between and counted as unstored,
    which they were not."""
    history.provider_jobs = asyncio.run(observe.provider_jobs(stack.simulator_url, list(LIMITS)))
    topics = stack.settings
    history.requested = observe.request_ids(stack.bootstrap, topics.topic("requests"))
    history.webhook_ids = observe.webhook_ids(stack.bootstrap, topics.topic("webhooks"))


def run_scenario(plan: Plan, faults: FaultLoop, home: Path, kafka_bootstrap: str, prefix: str,
                 *, seed: int = 7) -> Verdict:
    stack = make_stack(plan, home, kafka_bootstrap, prefix)
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="chaos")
    stack.start(timeout=180)
    try:
        run = Run(plan, stack, observe.Client(stack.api_url, MODELS), random.Random(seed), executor)
        started = time.time()
        # A stall longer than the job timeout (plus a minute) ends the wait; the hard cap only
        # guards against a run that crawls forever.
        drain_timeout = plan.jobs / plan.rate * 10 + plan.job_timeout + 600
        ended = asyncio.run(drive(run, faults, drain_timeout))
        history = History(plan.name, accepted=list(run.client.accepted), faults=list(run.faults),
                          limits=dict(LIMITS), started_at=started, ended_at=ended)
        history.finals = asyncio.run(run.client.final_reads())
        history.results = run.watch.results
        read_the_end(history, stack)
        verdict = check(history)
        verdict.notes.extend(run.notes)
        logs = worker_logs(stack)
        verdict.notes.append(f"The stall watchdog fired {stall_firings(logs)} time(s) in the workers' logs.")
        verdict.notes.append(replay_note(logs))
        renewed = stack.children["api"].log.read_text(errors="replace").count("started a new producer")
        if renewed:
            verdict.notes.append(f"The API replaced its Kafka producer {renewed} time(s) (sequence refused).")
        verdict.notes.append(f"{run.client.refused} requests refused or unanswered (sent again as new jobs)")
        return verdict
    finally:
        stack.stop()
        executor.shutdown()
