"""The chaos suite's edges: the client that records its history, and the readers of the topics
and of the simulator's record of provider jobs. Everything here feeds ``checker.History``."""
from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from confluent_kafka import Consumer, TopicPartition

from floodgate import codec
from floodgate.chaos.checker import TERMINAL, Accepted, FinalRead, ProviderJob, ResultRecord


@dataclass
class Client:
    """Submits jobs like an impatient user: a refused or failed request is sent again (a new
    request, so a new job) until one is answered 202; only 202s count as accepted."""

    api_url: str
    models: tuple[str, ...]
    """Job ``i`` asks for ``models[i % len(models)]``."""
    accepted: list[Accepted] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    refused: int = 0
    """Requests answered with something else than 202, or not answered at all."""

    async def submit(self, n: int, *, rate: float, concurrency: int = 48) -> None:
        """``n`` accepted jobs at about ``rate`` requests per second."""
        sem = asyncio.Semaphore(concurrency)
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def one(i: int) -> None:
                async with sem:
                    while not await self._post(session, i):
                        await asyncio.sleep(0.2)

            start = time.monotonic()
            tasks = []
            for i in range(n):
                tasks.append(asyncio.create_task(one(i)))
                lag = start + (i + 1) / rate - time.monotonic()
                if lag > 0:
                    await asyncio.sleep(lag)
            await asyncio.gather(*tasks)

    async def _post(self, session: aiohttp.ClientSession, i: int) -> bool:
        body = {"model": self.models[i % len(self.models)], "user_id": f"u{i % 50}",
                "input": {"prompt": f"chaos shot {i}"}}
        try:
            async with session.post(f"{self.api_url}/v1/jobs", json=body) as resp:
                if resp.status != 202:
                    self.refused += 1
                    return False
                data = await resp.json()
        except (aiohttp.ClientError, TimeoutError):
            self.refused += 1
            return False
        self.accepted.append(Accepted(data["job_id"], time.time()))
        self.tokens[data["job_id"]] = data["token"]
        return True

    async def final_reads(self, *, concurrency: int = 32) -> list[FinalRead]:
        """Every accepted job's GET, retried while the API is not answering."""
        sem = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            async def one(job_id: str) -> FinalRead:
                async with sem:
                    for _ in range(20):
                        try:
                            async with session.get(f"{self.api_url}/v1/jobs/{job_id}", headers={
                                    "Authorization": f"Bearer {self.tokens[job_id]}"}) as resp:
                                if resp.status == 404:
                                    return FinalRead(job_id, None)
                                if resp.status == 200:
                                    return FinalRead(job_id, (await resp.json())["status"])
                        except (aiohttp.ClientError, TimeoutError):
                            pass
                        await asyncio.sleep(0.5)
                    return FinalRead(job_id, None)
            return list(await asyncio.gather(*(one(a.job_id) for a in self.accepted)))


def _consumer(bootstrap: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-{uuid.uuid4().hex}",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})


def read_topic(bootstrap: str, topic: str, *, until: Callable[[], bool] | None = None, timeout: float = 60.0,
               on_record: Callable[[bytes | None, bytes, object, float], None]) -> None:
    """Read ``topic`` from the start up to its end as it is now (or, with ``until``, until that
    holds or the deadline passes), calling ``on_record(key, value, headers, timestamp_s)``."""
    consumer = _consumer(bootstrap)
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p, 0) for p in meta.partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        consumer.assign(parts)
        position = {p: 0 for p in ends}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if until is None and all(position[p] >= ends[p] for p in ends):
                return
            if until is not None and until():
                return
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            partition, offset, value = msg.partition(), msg.offset(), msg.value()
            if partition is None or offset is None or value is None:
                continue
            position[partition] = offset + 1
            on_record(msg.key(), value, msg.headers(), msg.timestamp()[1] / 1000)
        if until is None:
            # A partial read would report stored records as missing: better no verdict.
            raise TimeoutError(f"{topic}: not read to its end ({ends}) within {timeout:.0f}s: at {position}")
    finally:
        consumer.close()


@dataclass
class ResultWatch:
    """The results topic, read until every accepted job has a terminal record or the deadline."""

    results: list[ResultRecord] = field(default_factory=list)
    terminal: set[str] = field(default_factory=set)
    last_progress: float = field(default_factory=time.monotonic)

    def record(self, key: bytes | None, value: bytes, headers: object, at: float) -> None:
        snapshot = codec.decode("JobSnapshot", value, headers)  # type: ignore[arg-type]
        job_id = snapshot["job_id"]
        self.results.append(ResultRecord(job_id, snapshot["status"], at))
        if snapshot["status"] in TERMINAL:
            self.terminal.add(job_id)
            self.last_progress = time.monotonic()

    def wait(self, bootstrap: str, topic: str, expected: Callable[[], set[str]], *, idle: float,
             timeout: float) -> None:
        """Until every expected job is terminal, or no job has become terminal for ``idle``
        seconds (the rest are stuck), or ``timeout`` in all."""
        self.last_progress = time.monotonic()

        def done() -> bool:
            return expected() <= self.terminal or time.monotonic() - self.last_progress > idle

        read_topic(bootstrap, topic, until=done, timeout=timeout, on_record=self.record)


def request_ids(bootstrap: str, topic: str) -> set[str]:
    out: set[str] = set()
    read_topic(bootstrap, topic, on_record=lambda k, v, h, t: out.add(k.decode()) if k else None)
    return out


def webhook_ids(bootstrap: str, topic: str) -> set[str]:
    out: set[str] = set()

    def record(key: bytes | None, value: bytes, headers: object, at: float) -> None:
        out.add(codec.decode("WebhookEnvelope", value, headers)["webhook_id"])  # type: ignore[arg-type]

    read_topic(bootstrap, topic, on_record=record)
    return out


async def provider_jobs(simulator_url: str, providers: list[str]) -> list[ProviderJob]:
    out = []
    async with aiohttp.ClientSession() as session:
        for name in providers:
            async with session.get(f"{simulator_url}/_admin/{name}/jobs") as resp:
                resp.raise_for_status()
                for job in (await resp.json())["jobs"]:
                    out.append(ProviderJob(name, job["id"], job.get("job_id"), job.get("idempotency_key"),
                                           job["created_at"], job.get("completed_at"),
                                           tuple(job.get("webhooks_delivered") or ())))
    return out


def pick(rng: random.Random, names: list[str]) -> str:
    return rng.choice(sorted(names))
