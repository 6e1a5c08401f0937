"""CPU of the job view's feed per change it follows, A/B:
``python dev/feed_cpu.py --variant base=. --variant small=.:fetch.min.bytes=16384``.
A variant is ``NAME=TREE[:KEY=VALUE,...]``: lower-case keys are librdkafka settings laid over the
feed's own, upper-case ones the feed module's constants (``LINGER_SECONDS=0.02``).

Every API process with the ``read`` role follows every job's every change (``notifications`` and
the providers' slot logs) into its job view, so what a change costs there is CPU the 202s do not
get. This script starts, for each variant, a process that runs only that feed (``NotificationFeed``
into a ``JobView``, from the variant's source tree, with the variant's librdkafka settings on top
of the feed's own), writes job changes to its ``notifications`` topic at a steady ``--rate`` per
second the way a worker does (JSON job records keyed by job id, a 5 ms linger), and reads the feed
process's user+system CPU from /proc around ``--seconds`` of it. It also reports how old a change
was when the view applied it (p50 and p99 over the measured seconds), since a cheaper feed that
hands changes over later moves the notification bar the other way. The variants
take turns ``--rounds`` times on one broker; compare them as ratios. Needs
``FLOODGATE_KAFKA_BOOTSTRAP`` (e.g. from ``floodgate broker start``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from accept_cpu import variants_from
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from floodgate.bench.probes import cpu_seconds
from floodgate.jobs.record import JobRecord
from floodgate.jobs.state import JobState

CHILD = r'''
import asyncio, json, os, sys, time
import floodgate.api.feed as feed_module
from floodgate.api.view import JobView

extra = json.loads(os.environ["FEED_CPU_SETTINGS"])
for name in [k for k in extra if k.isupper()]:  # the feed module's own constants (LINGER_SECONDS=0.01)
    setattr(feed_module, name, type(getattr(feed_module, name))(extra.pop(name)))
reader = feed_module.groupless_reader
feed_module.groupless_reader = lambda *a, **kw: {**reader(*a, **kw), **extra}
ages = []
apply = JobView.apply_batch

async def timed(self, snapshots):
    now = time.time()
    ages.extend(now - s["updated_at"] / 1000 for s in snapshots if s.get("updated_at"))
    return await apply(self, snapshots)

JobView.apply_batch = timed

async def main():
    view = JobView()
    feed = feed_module.NotificationFeed(os.environ["FLOODGATE_KAFKA_BOOTSTRAP"], sys.argv[1], int(sys.argv[2]), view)
    await feed.start()
    await view.ready.wait()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the parent's warm-up is over: count from here
    ages.clear()
    await asyncio.to_thread(sys.stdin.readline)  # the parent says when to report
    got = sorted(ages)
    print(json.dumps({"changes": len(got), "p50_ms": got[len(got) // 2] * 1000 if got else 0.0,
                      "p99_ms": got[int(len(got) * 0.99)] * 1000 if got else 0.0}), flush=True)
    await feed.stop()

asyncio.run(main())
'''


def write(producer: Producer, topic: str, rate: float, seconds: float) -> int:
    """Job changes at ``rate`` a second for ``seconds``: a queued job record per change, keyed by
    a new job id each time, stamped with the time it was written (``updated_at``)."""
    sent, start = 0, time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) + 1
        while sent < due:
            job_id = uuid.uuid4().hex
            state = JobState(job_id=job_id, tenant="t", model="kling-2.1", version=1, updated_at=time.time())
            # (as a worker's: the state names the requests record that admitted the job)
            record = JobRecord(state, admitted_by=(sent % 4, sent))
            producer.produce(topic, key=job_id.encode(), value=record.encode())
            sent += 1
        producer.poll(0)
        time.sleep(0.001)
    producer.flush(30)
    return sent


def run_one(tree: Path, extra: dict[str, str], bootstrap: str, topic: str, partitions: int, rate: float,
            seconds: float) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "FEED_CPU_SETTINGS": json.dumps(extra)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, topic, str(partitions)], env=env, cwd=tree,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        if child.stdout.readline().strip() != "ready":
            raise SystemExit(f"the feed from {tree} did not start")
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                             "enable.idempotence": True})
        write(producer, topic, rate, 2.0)  # warm-up
        child.stdin.write("go\n")
        child.stdin.flush()
        cpu0 = cpu_seconds(child.pid)
        sent = write(producer, topic, rate, seconds)
        time.sleep(0.5)  # the last changes reach the view (not a synchronisation: CPU is read after)
        cpu = cpu_seconds(child.pid) - cpu0
        child.stdin.write("report\n")
        child.stdin.flush()
        ages = json.loads(child.stdout.readline())
        return {"us_per_change": cpu * 1e6 / sent, **ages}
    finally:
        child.terminate()
        child.wait(30)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", action="append", required=True, help="NAME=TREE[:KEY=VALUE,...]")
    p.add_argument("--rate", type=float, default=2000.0, help="job changes a second (a job is about two)")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--partitions", type=int, default=4)
    args = p.parse_args()
    bootstrap = os.environ["FLOODGATE_KAFKA_BOOTSTRAP"]
    variants = variants_from(args.variant)  # NAME=TREE[:KEY=VALUE,...], as the other A/B scripts take them
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for r in range(args.rounds):
        for name, tree, extra in variants:
            topic = f"feedcpu{uuid.uuid4().hex[:8]}.notifications"
            for future in admin.create_topics([NewTopic(topic, args.partitions, 1)]).values():
                future.result()
            out = run_one(tree, extra, bootstrap, topic, args.partitions, args.rate, args.seconds)
            results[name].append(out)
            print(f"round {r} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in out.items()), flush=True)
    base = None
    for name, runs in results.items():
        cost = statistics.median(x["us_per_change"] for x in runs)
        base = base or cost
        print(f"{name}: median {cost:.1f} µs of CPU per change (ratio to first {cost / base:.2f}), "
              f"age at the view p50 {statistics.median(x['p50_ms'] for x in runs):.1f} ms, "
              f"p99 {statistics.median(x['p99_ms'] for x in runs):.1f} ms")


if __name__ == "__main__":
    main()
