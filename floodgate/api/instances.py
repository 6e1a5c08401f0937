"""The heartbeats of the API processes that take requests: how many share each tenant's rate quota.

``InstanceBeacon`` runs in every API process with the ingress role when rate quotas are set and
``FLOODGATE_QUOTA_SCOPE`` is ``cluster``. It writes this process's ``Heartbeat`` to the
``instances`` topic every ``FLOODGATE_INSTANCE_HEARTBEAT`` seconds (and a last one saying it is
gone when it stops), and reads everyone's into a ``Roster`` (``floodgate.instances``), whose count
the admission divides each tenant's rate quota by. One small record per process every two seconds,
whatever the traffic: no request pays for it, and the accept path reads one integer.

The reader is a plain consumer (no group: every process reads every heartbeat) that starts a
little over a time to live back, so a process that starts counts the others at once rather than
one interval later; it starts before the first request is served. A broker that cannot be read
leaves the last count in place: the processes heard of stop counting only once their time to
live passes without a beat, so a process that loses the broker falls back to the whole limit on
its own (as ``FLOODGATE_QUOTA_SCOPE=process``), never to refusing everyone.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from floodgate.api.kafka_io import Sender
from floodgate.errors import FloodgateError
from floodgate.instances import TTL_BEATS, Heartbeat, Roster
from floodgate.metrics import ApiMetrics, api_metrics
from floodgate.tasks import cancel_and_wait

log = logging.getLogger(__name__)

READ_WAIT_MS = 500
"""Longest the broker holds a fetch of heartbeats: how late one may be read when few arrive."""


def instance_id() -> str:
    """This process: host, pid and a random part (a pid is reused, a restarted process is new)."""
    return f"{socket.gethostname()[:64]}-{os.getpid()}-{secrets.token_hex(4)}"


class InstanceBeacon:
    """``start()`` (reads the recent heartbeats, writes the first), then ``stop()``."""

    def __init__(self, bootstrap: str, topic: str, sender: Sender, interval: float, *,
                 roster: Roster | None = None, clock: Callable[[], float] = time.monotonic,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 metrics: ApiMetrics | None = None) -> None:
        self.topic = topic
        self.interval = interval
        self.roster = roster or Roster(instance_id())
        self._sender = sender
        self._clock = clock
        self._wall_ms = wall_ms
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                          client_id="floodgate-api-instances", fetch_max_wait_ms=READ_WAIT_MS)
        self._tasks: list[asyncio.Task[None]] = []
        self._gauge = (metrics or api_metrics()).quota_instances

    async def start(self) -> None:
        await self._consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            self._consumer.assign([tp])
            since = self._wall_ms() - int((TTL_BEATS + 1) * self.interval * 1000)
            found = (await self._consumer.offsets_for_times({tp: since}))[tp]
            if found is None:  # nothing that recent: read what comes from now on
                await self._consumer.seek_to_end(tp)
            else:
                self._consumer.seek(tp, found.offset)
            end = (await self._consumer.end_offsets([tp]))[tp]
            await self._read_until(tp, end)
            await self._beat()
        except BaseException:
            await self._consumer.stop()
            raise
        self._tasks = [asyncio.create_task(self._beating(), name="instance-heartbeats"),
                       asyncio.create_task(self._reading(), name="instance-roster")]

    async def stop(self) -> None:
        """Stop beating and reading; say this process is gone, so the others count it out at once."""
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        try:
            await self._send(gone=True)
        except (FloodgateError, KafkaError) as exc:  # the others count it out a time to live later
            log.warning("instances: could not say this process is gone: %s", exc)
        await self._consumer.stop()

    async def _send(self, *, gone: bool = False) -> None:
        me = self.roster.me
        beat = Heartbeat(me, self._wall_ms(), self.interval, gone)
        await self._sender.send_and_wait(self.topic, me, beat.encode(), [])

    async def _beat(self) -> None:
        await self._send()
        self._gauge.set(self.roster.refresh(self._clock()))

    async def _beating(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._beat()
            except (FloodgateError, KafkaError) as exc:
                log.warning("instances: heartbeat not written: %s", exc)

    async def _read_until(self, tp: TopicPartition, end: int) -> None:
        while await self._consumer.position(tp) < end:
            self._take(await self._consumer.getmany(tp, timeout_ms=1000))

    async def _reading(self) -> None:
        while True:
            try:
                self._take(await self._consumer.getmany(timeout_ms=1000))
            except KafkaError as exc:
                log.warning("instances: heartbeats not read: %s; reading again in a second", exc)
                await asyncio.sleep(1.0)

    def _take(self, batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        now, wall = self._clock(), self._wall_ms()
        for records in batches.values():
            for msg in records:
                if msg.value is None:
                    continue
                try:
                    self.roster.heard(Heartbeat.decode(msg.value), now, wall)
                except ValueError as exc:
                    log.warning("instances: skipping a malformed heartbeat at offset %s: %s", msg.offset, exc)
        self.roster.refresh(now)
        self._gauge.set(self.roster.live)


__all__ = ["InstanceBeacon", "instance_id"]
