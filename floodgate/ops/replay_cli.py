"""``floodgate replay``: send job requests to ``requests`` again, from the dead-letter topic (once
what parked them is fixed), from a file (JSON lines or an Avro container), or from a time range
of a topic. What is sent and what is skipped is decided by the pure rules of
``floodgate/replay.py``; here are the reads (Kafka, files), the paced, acknowledged sends and the
progress bar.
"""
from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from floodgate import codec
from floodgate.errors import ConfigError, FloodgateError, KafkaUnavailable, RecordTooLarge, SchemaError
from floodgate.replay import (
    AdmittedJobs,
    Candidate,
    DeadLetterFilter,
    Ledger,
    Outgoing,
    Skip,
    Skipped,
    Summary,
    container_candidate,
    dead_letter_candidate,
    parse_instant,
    prepare,
)
from floodgate.settings import Settings
from floodgate.throttle import TokenBucket
from floodgate.topics import TopicNames

AVRO_MAGIC = b"Obj\x01"
IN_FLIGHT = 256  # sends awaiting their acknowledgement at once (without --rate)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Send job requests to the requests topic again. Sources: --topic dlq (dead letters that came "
        "from requests, after a fix; filters --reason, --since, --until), --file (JSON lines or an Avro "
        "container file of job requests), --topic requests --from ISO --to ISO (a time range of a topic). "
        "Idempotent: a job id the jobs table already admitted is skipped (and would be dropped by the "
        "worker anyway); a JSON line without a job_id gets one derived from its bytes and FLOODGATE_SECRET, "
        "the same on every replay. Ends with a summary: read, sent, skipped as duplicate, invalid or "
        "filtered, with reasons. Exit 1 if a record could not be sent or a damaged --file could not be read "
        "to its end (the records before the damage are replayed).")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--topic", help="dlq, requests (names from FLOODGATE_TOPIC_PREFIX) or a full topic name")
    source.add_argument("--file", type=Path, help="a JSON-lines file or an Avro container file of job requests")
    p.add_argument("--reason", help="dlq: only dead letters whose reason contains this text (case-insensitive)")
    p.add_argument("--since", help="dlq: only records parked at or after this instant (ISO 8601 or epoch ms)")
    p.add_argument("--until", help="dlq: only records parked before this instant")
    p.add_argument("--from", dest="start", help="topic range: records written at or after this instant")
    p.add_argument("--to", dest="end", help="topic range: records written before this instant")
    p.add_argument("--dry-run", action="store_true", help="print what would be sent; send nothing")
    p.add_argument("--rate", type=float, default=None, help="at most this many records per second")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (none is drawn off a terminal)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker on each read or send")


@dataclass(frozen=True)
class Plan:
    """What one run reads and where it sends."""

    settings: Settings
    names: TopicNames
    secret: bytes | None
    dead_letters: DeadLetterFilter | None
    topic: str | None
    start_ms: int | None
    end_ms: int | None


def plan_from(args: argparse.Namespace, settings: Settings, secret: bytes | None) -> Plan:
    names = TopicNames(settings)
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("--rate must be a positive number of records per second")
    topic = None
    if args.topic is not None:
        logical = {"dlq": names.dlq, "requests": names.requests}
        topic = logical.get(args.topic, args.topic)
    is_dlq = topic == names.dlq
    if not is_dlq and any(v is not None for v in (args.reason, args.since, args.until)):
        raise ConfigError("--reason, --since and --until filter dead letters: use them with --topic dlq")
    if args.file is not None and (args.start or args.end):
        raise ConfigError("--from and --to pick a time range of a topic: use them with --topic")
    if is_dlq and (args.start or args.end):
        raise ConfigError("for dead letters, --since and --until say when they were parked")
    dead_letters = None
    if is_dlq:
        dead_letters = DeadLetterFilter(
            source_topic=names.requests, reason=args.reason,
            since_ms=parse_instant(args.since) if args.since else None,
            until_ms=parse_instant(args.until) if args.until else None)
    return Plan(settings, names, secret, dead_letters, topic,
                parse_instant(args.start) if args.start else None, parse_instant(args.end) if args.end else None)


def deployment_secret() -> tuple[Settings, bytes | None]:
    """The settings, and the deployment's secret if one is configured: without
    ``FLOODGATE_SECRET`` every load draws a random one, and an id derived from it would differ on
    the next replay (so none is derived)."""
    settings = Settings.from_env()
    again = Settings.from_env()
    configured = settings.secret.reveal() == again.secret.reveal()
    return settings, settings.secret.reveal().encode("utf-8") if configured else None


def run(args: argparse.Namespace) -> int:
    settings, secret = deployment_secret()
    plan = plan_from(args, settings, secret)
    return asyncio.run(Replay(plan, args).run())


class Replay:
    def __init__(self, plan: Plan, args: argparse.Namespace) -> None:
        self.plan = plan
        self.args = args
        self.summary = Summary()
        self.bootstrap = plan.settings.kafka_bootstrap

    async def run(self) -> int:
        outgoing: list[Outgoing] = []
        now_ms = int(time.time() * 1000)
        unreadable: Unreadable | None = None
        for item in self.candidates():
            if isinstance(item, Unreadable):
                unreadable = item  # the reader's last word: what came before is replayed as usual
                continue
            self.summary.read += 1
            if isinstance(item, Skipped):
                self.summary.skip(item)
                continue
            prepared = self.prepare(item, now_ms)
            if isinstance(prepared, Skipped):
                self.summary.skip(prepared)
            else:
                outgoing.append(prepared)
        admitted = await asyncio.to_thread(self.admitted, {o.job_id for o in outgoing}) if outgoing else set()
        ledger = Ledger(admitted)
        to_send = []
        for out in outgoing:
            skipped = ledger.check(out)
            if skipped is not None:
                self.summary.skip(skipped)
            else:
                to_send.append(out)
        if self.args.dry_run:
            for out in to_send:
                derived = "  (job id derived from its bytes)" if out.derived_id else ""
                print(f"would send  {out.job_id}  {out.model}  {out.origin}{derived}")
            self.summary.sent = len(to_send)
        else:
            await self.send(to_send)
        report = self.summary.render(dry_run=self.args.dry_run)
        if unreadable is not None:
            report += f"\n{'unreadable':<22}{unreadable.describe()}"
        print(report)
        return 1 if self.summary.failed or unreadable is not None else 0

    def prepare(self, candidate: Candidate, now_ms: int) -> Outgoing | Skipped:
        # Without a configured secret, a line with no job id cannot get a stable one: prepare
        # with a throwaway secret only to tell such lines apart, and refuse them.
        secret = self.plan.secret or b"\0" * 32
        prepared = prepare(candidate, secret=secret, now_ms=now_ms)
        if isinstance(prepared, Outgoing) and prepared.derived_id and self.plan.secret is None:
            return Skipped(candidate.origin, Skip.INVALID,
                           "no job_id, and FLOODGATE_SECRET is not set: an id derived now would differ "
                           "on the next replay")
        return prepared

    # -- sources -----------------------------------------------------------------------------

    def candidates(self) -> Iterator[Candidate | Skipped | Unreadable]:
        plan = self.plan
        if self.args.file is not None:
            yield from read_file(self.args.file)
        elif plan.dead_letters is not None:
            for msg in read_topic(self.bootstrap, plan.names.dlq, None, None, self.args.timeout):
                origin = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
                try:
                    letter = codec.decode("DeadLetter", msg.value() or b"", msg.headers())
                except SchemaError as exc:
                    yield Skipped(origin, Skip.INVALID, f"not a dead letter: {exc}")
                    continue
                why = plan.dead_letters.why_not(letter)
                if why is not None:
                    yield Skipped(origin, Skip.FILTERED, why)
                else:
                    yield dead_letter_candidate(letter, origin)
        else:
            assert plan.topic is not None
            for msg in read_topic(self.bootstrap, plan.topic, plan.start_ms, plan.end_ms, self.args.timeout):
                yield Candidate(origin=f"{msg.topic()}[{msg.partition()}]@{msg.offset()}", value=msg.value() or b"",
                                headers=tuple((k, v or b"") for k, v in (msg.headers() or [])), key=msg.key())

    def admitted(self, wanted: set[str]) -> set[str]:
        """The wanted job ids the jobs table has admitted, from its changelog (``notifications``)."""
        fold = AdmittedJobs(wanted)
        for msg in read_topic(self.bootstrap, self.plan.names.notifications, None, None, self.args.timeout):
            fold.add(msg.key(), msg.value(), msg.headers())
        return fold.admitted

    # -- sending -----------------------------------------------------------------------------

    async def send(self, records: list[Outgoing]) -> None:
        from floodgate.api.kafka_io import KafkaSender  # the API's producer: acks=all, idempotent

        sender = KafkaSender(self.bootstrap, client_id="floodgate-replay", linger_ms=5,
                             send_timeout=self.args.timeout)
        bucket = TokenBucket(self.args.rate) if self.args.rate else None
        window = asyncio.Semaphore(1 if bucket is not None else IN_FLIGHT)
        topic = self.plan.names.requests
        with progress_bar(len(records), disabled=self.args.no_progress) as advance:

            async def one(out: Outgoing) -> None:
                try:
                    await sender.send_and_wait(topic, out.job_id, out.value, list(out.headers))
                    self.summary.sent += 1
                except RecordTooLarge:
                    self.summary.fail("too large for the topic")
                except KafkaUnavailable as exc:
                    self.summary.fail(f"not acknowledged: {exc}")
                finally:
                    window.release()
                    advance()

            try:
                await sender.start()
            except KafkaUnavailable as exc:
                raise FloodgateError(f"cannot send: {exc}") from exc
            loop = asyncio.get_running_loop()
            tasks = []
            try:
                for out in records:
                    if bucket is not None:
                        wait = bucket.take(loop.time())
                        if wait > 0:
                            await asyncio.sleep(wait)  # pacing the sends, not waiting for a condition
                    await window.acquire()
                    tasks.append(asyncio.create_task(one(out)))
                await asyncio.gather(*tasks)
            finally:
                await sender.stop()


class progress_bar:
    """A rich progress bar on stderr, or nothing (``--no-progress``, or stderr is no terminal)."""

    def __init__(self, total: int, *, disabled: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        self.progress = Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 console=console, disable=disabled or not console.is_terminal)
        self.total = total

    def __enter__(self) -> Any:
        self.progress.start()
        task = self.progress.add_task("replay", total=self.total)
        return lambda: self.progress.advance(task)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


# -- reading -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unreadable:
    """A file that could not be read to its end: the last item ``read_file`` yields for it."""

    origin: str
    """The file's name."""
    records_read: int
    """Records read (and yielded) before the damage."""
    error: str

    def describe(self) -> str:
        return f"{self.origin} after {self.records_read} record(s): {self.error}"


def read_file(path: Path) -> Iterator[Candidate | Skipped | Unreadable]:
    """Candidates from a JSON-lines file (blank lines skipped) or an Avro container file.

    A container that is damaged (truncated, bytes changed) yields its records up to the damage,
    then one :class:`Unreadable`."""
    try:
        with path.open("rb") as fh:
            if fh.read(4) == AVRO_MAGIC:
                fh.seek(0)
                yield from _container(fh, path)
                return
            fh.seek(0)
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    yield Candidate(origin=f"{path.name}:{number}", value=line.strip())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _container(fh: Any, path: Path) -> Iterator[Candidate | Skipped | Unreadable]:
    import fastavro

    number = 0
    records: Iterator[Any] | None = None
    while True:
        try:
            if records is None:
                records = iter(fastavro.reader(fh))
            record = next(records)
        except StopIteration:
            return
        except Exception as exc:
            # Damaged bytes make fastavro raise whatever its decoder runs into (ValueError,
            # EOFError, zlib.error, IndexError, KeyError('avro.schema'), ...), from the header on
            # or mid-block: none of the rest of the file can be trusted.
            yield Unreadable(path.name, number, f"{type(exc).__name__}: {exc}")
            return
        number += 1
        origin = f"{path.name}#{number}"
        if isinstance(record, dict):
            yield container_candidate(record, origin)
        else:
            yield Skipped(origin, Skip.INVALID, "not a record")


def read_topic(bootstrap: str, topic: str, start_ms: int | None, end_ms: int | None,
               timeout: float) -> Iterator[Any]:
    """Every record of ``topic`` written in [start_ms, end_ms) (the whole topic without bounds),
    up to the end offsets it had when the read began; no consumer group, nothing committed."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "floodgate-replay",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
            if metadata.error is not None:
                raise ConfigError(f"topic {topic}: {metadata.error.str()}")
            parts = sorted(metadata.partitions)
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout) for p in parts}
            starts = {p: low for p, (low, _) in ends.items()}
            limits = {p: high for p, (_, high) in ends.items()}
            if start_ms is not None:
                for tp in consumer.offsets_for_times([TopicPartition(topic, p, start_ms) for p in parts], timeout):
                    starts[tp.partition] = tp.offset if tp.offset >= 0 else limits[tp.partition]
            if end_ms is not None:
                for tp in consumer.offsets_for_times([TopicPartition(topic, p, end_ms) for p in parts], timeout):
                    if tp.offset >= 0:
                        limits[tp.partition] = min(limits[tp.partition], tp.offset)
        except KafkaException as exc:
            raise FloodgateError(f"cannot read {topic}: {exc}") from exc
        todo = {p: limits[p] for p in parts if starts[p] < limits[p]}
        if not todo:
            return
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        deadline = time.monotonic() + timeout
        while todo:
            batch = consumer.consume(500, 1.0)
            if not batch:
                # The last offsets of a compacted topic may be gone: what is fetched past counts.
                for tp in consumer.position([TopicPartition(topic, p) for p in todo]):
                    if tp.offset >= todo[tp.partition]:
                        del todo[tp.partition]
            if not batch and todo and time.monotonic() > deadline:
                raise FloodgateError(f"reading {topic}: no record for {timeout:g}s with "
                                     f"{len(todo)} partition(s) short of their end")
            for msg in batch:
                if msg.error() is not None:
                    continue
                part, offset = msg.partition(), msg.offset()
                if part not in todo or offset is None or offset >= todo[part]:
                    continue
                deadline = time.monotonic() + timeout
                yield msg
                if offset + 1 >= todo[part]:
                    del todo[part]
    finally:
        consumer.close()


__all__ = ["Unreadable", "add_arguments", "read_file", "read_topic", "run"]
