"""The video copier in memory: a source and a consumer stand in for the provider and Kafka, a local
store behind a gate that can refuse our credentials as S3 does. What is committed, and what is
recorded, while the store or the source fails."""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from obstore.exceptions import PermissionDeniedError

from connectors.storage import LocalVideoStore, VideoRecord
from connectors.storage.fetch import VideoFetcher
from connectors.storage.s3 import wrap
from floodgate import codec
from floodgate.errors import StorageError
from floodgate.ids import new_job_id
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from floodgate.videos import copier as copier_module
from floodgate.videos.copier import CopyPolicy, VideoCopier

SETTINGS = Settings(kafka_bootstrap="127.0.0.1:9")
TOPIC = TopicNames(SETTINGS).results
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4
DEADLINE = 10.0
# Retries in milliseconds, and budgets no test outlasts unless it means to.
QUICK = CopyPolicy(max_attempts=100_000, base_delay=0.001, max_delay=0.005)


class Download:
    """A source's answer, read as the fetcher's is: size and hash cover what was read so far."""

    content_type = "video/mp4"

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.size = 0
        self._sha256 = hashlib.sha256()

    @property
    def hexdigest(self) -> str:
        return self._sha256.hexdigest()

    async def chunks(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self._body), 300):
            chunk = self._body[i:i + 300]
            self.size += len(chunk)
            self._sha256.update(chunk)
            yield chunk


class Source:
    """The provider: each fetch answers the next of ``answers`` (a body, or an error to raise),
    then ``VIDEO``; a URL named in ``per_url`` answers from its own list instead (copies run at
    once, so the order of fetches of different jobs is not known)."""

    def __init__(self, *answers: bytes | StorageError,
                 per_url: dict[str, list[bytes | StorageError]] | None = None) -> None:
        self.answers = list(answers)
        self.per_url = per_url or {}
        self.fetched = 0

    @asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[Download]:
        self.fetched += 1
        answers = self.per_url.get(url, self.answers)
        answer = answers.pop(0) if answers else VIDEO
        if isinstance(answer, StorageError):
            raise answer
        yield Download(answer)


class Gated(LocalVideoStore):
    """A local store behind credentials: while ``refusing`` says so, calls are refused as the S3
    store refuses them when its key is revoked (AccessDenied, through the S3 store's own mapping).
    ``written``: the records it kept. Every refusal and write sets ``changed``."""

    def __init__(self, root: Path, changed: asyncio.Event) -> None:
        super().__init__(root)
        self.refusing: set[str] = set()
        self.refusals = 0
        self.written: list[VideoRecord] = []
        self.changed = changed

    def _gate(self, call: str, job_id: str) -> None:
        if call in self.refusing:
            self.refusals += 1
            self.changed.set()
            raise wrap(call, job_id, PermissionDeniedError("AccessDenied: the operation lacked the privileges"))

    async def record(self, job_id: str) -> VideoRecord | None:
        self._gate("record", job_id)
        return await super().record(job_id)

    async def put_video(self, job_id: str, chunks: Any, content_type: str,
                        record: Callable[[], VideoRecord] | None = None) -> None:
        self._gate("put_video", job_id)
        assert record is not None
        made: list[VideoRecord] = []

        def kept() -> VideoRecord:
            made.append(record())
            return made[-1]

        await super().put_video(job_id, chunks, content_type, kept)
        self.written.extend(made)
        self.changed.set()

    async def put_record(self, record: VideoRecord) -> None:
        self._gate("put_record", record.job_id)
        await super().put_record(record)
        self.written.append(record)
        self.changed.set()


class Consumer:
    """What the copier asks of its Kafka consumer: one partition of ``TOPIC``, ``records`` on it,
    and the offsets committed (each commit sets ``changed``)."""

    def __init__(self, records: Iterable[ConsumerRecord[Any, Any]], changed: asyncio.Event) -> None:
        self.tp = TopicPartition(TOPIC, 0)
        self.records = list(records)
        self.commits: list[int] = []
        self.changed = changed

    def subscribe(self, topics: list[str], listener: Any) -> None:
        assert topics == [TOPIC]

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def pause(self, *partitions: TopicPartition) -> None:
        return None

    def resume(self, *partitions: TopicPartition) -> None:
        return None

    def paused(self) -> set[TopicPartition]:
        return set()

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, Any]:
        if self.records:
            batch, self.records = self.records, []
            return {self.tp: batch}
        await asyncio.sleep(timeout_ms / 1000)  # the broker's wait for more; there is no more
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets[self.tp])
        self.changed.set()


def completed(job_id: str, offset: int) -> ConsumerRecord[Any, Any]:
    snapshot = {"job_id": job_id, "tenant": "default", "user_id": "u1", "model": "kling-2.1", "provider": "kling",
                "provider_job_id": "video_1", "status": "completed", "progress": 1.0,
                "video_url": f"https://cdn.example/{job_id}.mp4", "error": None, "attempt": 0,
                "created_at": 1_700_000_000_000, "updated_at": 1_700_000_000_001, "webhook_url": None,
                "metadata": {}, "version": 3}
    value, headers = codec.encode("JobSnapshot", snapshot)
    return ConsumerRecord(topic=TOPIC, partition=0, offset=offset, timestamp=0, timestamp_type=0,
                          key=job_id.encode(), value=value, checksum=None, serialized_key_size=len(job_id),
                          serialized_value_size=len(value), headers=tuple(headers))


async def until(condition: Callable[[], bool], changed: asyncio.Event) -> None:
    async with asyncio.timeout(DEADLINE):
        while not condition():
            changed.clear()
            await changed.wait()


@pytest.fixture
def changed() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
def store(tmp_path: Path, changed: asyncio.Event) -> Gated:
    return Gated(tmp_path / "videos", changed)


def running_copier(monkeypatch: pytest.MonkeyPatch, store: Gated, source: Source, consumer: Consumer,
                   policy: CopyPolicy = QUICK) -> VideoCopier:
    monkeypatch.setattr(copier_module, "results_consumer", lambda *_: consumer)
    return VideoCopier(SETTINGS, store, fetcher=cast(VideoFetcher, source), policy=policy, commit_interval=0.005,
                       rand=lambda: 0.0)


async def stored_bytes(store: LocalVideoStore, job_id: str) -> bytes:
    return b"".join([chunk async for chunk in store.open(job_id)])


@pytest.mark.parametrize("refused", [{"put_video", "put_record"}, {"record", "put_video", "put_record"}],
                         ids=["writes", "everything"])
async def test_a_store_refusing_our_credentials_holds_the_copy_uncommitted_until_they_work(
        monkeypatch: pytest.MonkeyPatch, store: Gated, changed: asyncio.Event, refused: set[str]) -> None:
    """A key rotated or revoked for a while: the copy waits for the store, its offset with it, and
    no refusal of the video is recorded."""
    job_id, source = new_job_id(), Source()
    consumer = Consumer([completed(job_id, 5)], changed)
    copier = running_copier(monkeypatch, store, source, consumer)
    store.refusing = refused
    await copier.start()
    try:
        await until(lambda: store.refusals >= 3 and bool(consumer.commits), changed)
        assert max(consumer.commits) == 5  # not past the copy
        assert store.written == []
        assert await LocalVideoStore(store.root).record(job_id) is None
        store.refusing = set()  # the new key is in place
        await until(lambda: 6 in consumer.commits, changed)
    finally:
        await copier.stop()
    (record,) = store.written
    assert (record.status, record.size, record.sha256) == ("stored", len(VIDEO), hashlib.sha256(VIDEO).hexdigest())
    assert await store.record(job_id) == record
    assert await stored_bytes(store, job_id) == VIDEO


async def test_a_store_refusing_our_credentials_past_the_budget_is_given_up_on_not_refused(
        store: Gated, changed: asyncio.Event) -> None:
    """Given up on, the copy is started again when its video is asked for: the store's outage is
    not the video's fault, so no record says the video was refused."""
    copier = VideoCopier(SETTINGS, store, fetcher=cast(VideoFetcher, Source()),
                         policy=CopyPolicy(max_attempts=3, base_delay=0.001, max_delay=0.005), rand=lambda: 0.0)
    job_id = new_job_id()
    store.refusing = {"put_video", "put_record"}
    copy = asyncio.create_task(copier.copy(job_id, "https://cdn.example/v.mp4"))
    await until(lambda: store.refusals >= 5, changed)  # three copies, then the record, twice
    assert not copy.done()
    store.refusing = set()
    async with asyncio.timeout(DEADLINE):
        record = await copy
    assert record.status == "failed" and record.gave_up and "AccessDenied" in record.reason
    assert store.written == [record]


async def test_a_failure_whose_record_the_store_refuses_for_good_stays_uncommitted(
        monkeypatch: pytest.MonkeyPatch, store: Gated, changed: asyncio.Event) -> None:
    """Committed, the refusal would be lost with it (the link would wait for a copy nobody makes):
    the partition's next owner tries again, and this partition's commits stop short of it."""
    refused, fine = new_job_id(), new_job_id()
    source = Source(per_url={f"https://cdn.example/{refused}.mp4": [
        StorageError("not a video: Content-Type 'text/html'", retriable=False)]})
    consumer = Consumer([completed(refused, 5), completed(fine, 6)], changed)
    copier = running_copier(monkeypatch, store, source, consumer)

    async def no_records(record: VideoRecord) -> None:
        store.refusals += 1
        store.changed.set()
        raise StorageError("this store keeps no records of failures", retriable=False)

    monkeypatch.setattr(store, "put_record", no_records)
    await copier.start()
    try:
        await until(lambda: store.refusals == 1 and [r.job_id for r in store.written] == [fine], changed)
    finally:
        await copier.stop()  # commits what it can, last
    assert consumer.commits and max(consumer.commits) == 5


async def test_an_empty_body_is_no_video_and_is_fetched_again(store: Gated) -> None:
    source = Source(b"")
    copier = VideoCopier(SETTINGS, store, fetcher=cast(VideoFetcher, source), policy=QUICK, rand=lambda: 0.0)
    job_id = new_job_id()
    record = await copier.copy(job_id, "https://cdn.example/v.mp4")
    assert (record.status, record.size, source.fetched) == ("stored", len(VIDEO), 2)
    assert store.written == [record] and await stored_bytes(store, job_id) == VIDEO


async def test_a_source_that_only_answers_empty_is_given_up_on_and_nothing_is_kept(store: Gated) -> None:
    source = Source(b"", b"", b"")
    copier = VideoCopier(SETTINGS, store, fetcher=cast(VideoFetcher, source),
                         policy=CopyPolicy(max_attempts=3, base_delay=0.001, max_delay=0.005), rand=lambda: 0.0)
    job_id = new_job_id()
    record = await copier.copy(job_id, "https://cdn.example/v.mp4")
    assert (record.status, record.gave_up, source.fetched) == ("failed", True, 3)
    assert "empty" in record.reason and store.written == [record]
    assert [p.name for p in store.root.iterdir()] == [f"{job_id}.json"]  # a record of the failure, no video
