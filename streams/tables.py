"""Faust tables whose values are records of ours, stored as the bytes the record encodes to.

Faust rebuilds table values on recovery through ``value_type.from_data``, which our records lack;
storing raw bytes (``value_type=bytes``) uses the raw codec both ways and keeps decoding at this
edge, where a typed record comes out.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar, cast

import faust

from streams.slotwriter import SlotWrite, SlotWriter

T = TypeVar("T")

RESEND_AFTER = 1.0
"""Seconds before a changelog record Kafka refused is sent again (``put_in``, ``remove_in``)."""

log = logging.getLogger(__name__)


class Owed:
    """The changelog writes a commit must not pass: every write in flight, and every record Kafka
    refused that ``RecordTable`` is sending again, until it lands or a later write of its key that
    has landed supersedes it.

    Faust flushes its producer before it commits offsets (and the worker flushes the slot writer
    with it, ``streams/app.py``), but a flush returns once every record is acknowledged *or
    refused*, and a refused record is sent again a second later: a commit in that second, then a
    crash, would leave the changelog without it for good (a freed slot back after recovery, or a
    slot taken for a job missing from it). The worker's flush waits for these too (``settled``).

    Each entry has a sequence number: a write's is its own, a debt's (a refused record sent again)
    that of the write it stands for, or of the earlier write whose debt it took over. ``settled``
    waits for every entry numbered up to the last one made before the call, including debts opened
    meanwhile for such writes (a refusal is known only once the write's future is done, and its
    debt is opened by a callback of that future that runs before the future leaves this set)."""

    def __init__(self) -> None:
        self._open: dict[asyncio.Future[Any], int] = {}
        self._made = 0

    def __len__(self) -> int:
        return len(self._open)

    def track(self, future: asyncio.Future[Any], since: int | None = None) -> int:
        """Hold ``future`` until it is done; ``since``: an earlier sequence number it stands for
        too. Returns its sequence number. Register callbacks that must run before it leaves (a
        refusal's debt) before this."""
        if future.done():
            return self._made
        known = self._open.get(future)
        if known is None:
            self._made += 1
            known = self._made
            future.add_done_callback(self._close)
        self._open[future] = known if since is None else min(known, since)
        return self._open[future]

    def seq_of(self, future: asyncio.Future[Any]) -> int | None:
        return self._open.get(future)

    def open(self, since: int | None) -> asyncio.Future[None]:
        """A debt for a refused write numbered ``since``, settled (``set_result``) by whoever sends
        the record again or hands the debt on."""
        debt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.track(debt, since)
        return debt

    def _close(self, future: asyncio.Future[Any]) -> None:
        self._open.pop(future, None)

    async def settled(self) -> None:
        """Return once every write made before the call has landed, and every record refused
        among them, or before, has been sent again until it landed (later writes are a later
        commit's business, as the producer's flush does with them)."""
        mark = self._made
        while pending := [future for future, seq in self._open.items() if seq <= mark]:
            await asyncio.wait(pending)


def owed_of(app: faust.App) -> Owed:
    """The app's ``Owed`` records, shared by all its tables (made on first use)."""
    owed: Owed | None = getattr(app, "owed_records", None)
    if owed is None:
        owed = Owed()
        app.owed_records = owed  # type: ignore[attr-defined]  # (FloodgateApp declares it)
    return owed


class RecordTable(Generic[T]):
    def __init__(self, app: faust.App, name: str, *, partitions: int, encode: Callable[[T], bytes],
                 decode: Callable[[bytes], T], writer: SlotWriter | None = None, **options: Any) -> None:
        """``options``: more ``app.Table`` arguments (a ``store``: default the app's, memory). Only a
        memory-backed table may be written outside an agent's event (``put_in``/``remove_in``).
        ``writer``: every changelog record of this table goes through it instead of Faust's
        producer (``streams/slotwriter.py``); all or none, so a key's records keep their order."""
        self.table = app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes, **options)
        self._encode = encode
        self.decode = decode
        self.writer = writer.enlist() if writer is not None else None
        self.owed = owed_of(app)
        self._latest: dict[bytes, asyncio.Future[Any]] = {}
        """Per key, its latest write while in flight (``_hand_on``)."""

    def _send(self, partition: int, key: bytes, raw: bytes | None) -> Awaitable[Any]:
        if self.writer is not None:
            return self.writer.send(SlotWrite(self.table.changelog_topic.get_topic_name(), partition, key, raw))
        if raw is None:
            return self.table.send_changelog(partition, key, None, value_serializer="raw")
        return self.table.send_changelog(partition, key, raw)

    @property
    def data(self) -> Any:
        """The local store (a dict for memory tables): read and prune without changelog records."""
        return self.table.data

    def get(self, key: bytes) -> T | None:
        raw = self.table.get(key)
        return None if raw is None else self.decode(raw)

    def put_in(self, partition: int, key: bytes, value: T) -> Awaitable[Any]:
        """Set ``key`` from outside an agent's event (a background task), naming the changelog
        partition that Faust would otherwise take from the event being processed. The returned
        future resolves once Kafka acknowledged the changelog record (or failed: the record is
        then sent again, see ``_kept``)."""
        raw = self._encode(value)
        self.table.data[key] = raw
        return self._kept(partition, key, raw, self._send(partition, key, raw))

    def _kept(self, partition: int, key: bytes, raw: bytes | None, sent: Awaitable[Any],
              debt: asyncio.Future[None] | None = None) -> Awaitable[Any]:
        """``sent``, sent again ``RESEND_AFTER`` seconds after each time Kafka refuses it, for as
        long as the local table still holds what it says (a later write or delete of the key
        supersedes it). Without that, a refused record (a broker restart) would leave the
        changelog behind the table in memory, and the next recovery (any rebalance) would bring
        back a slot freed here, or a waiting order taken out of its line, and submit it. A
        callback, not a task: the resend costs nothing until Kafka refuses a record. From the
        first refusal until the record lands, or a later write of the key takes the debt over,
        the record is ``owed``: no commit passes it (``Owed``)."""
        if not isinstance(sent, asyncio.Future):  # (Faust's FutureMessage, or the slot writer's future)
            if debt is not None and not debt.done():
                debt.set_result(None)
            return sent

        def landed(future: Any) -> None:
            nonlocal debt
            since = self.owed.seq_of(future)  # (still held: this runs before it leaves)
            if future.cancelled() or future.exception() is None or self.table.data.get(key) != raw:
                if debt is not None:
                    self._hand_on(key, debt)
                return
            log.warning("changelog write of %r to %s failed (%s); sending it again", key, self.table.name,
                        future.exception())
            if debt is None:
                debt = self.owed.open(since)
            asyncio.get_running_loop().call_later(RESEND_AFTER, again)

        def again() -> None:
            assert debt is not None
            if self.table.data.get(key) == raw:
                self._kept(partition, key, raw, self._send(partition, key, raw), debt)
            else:
                self._hand_on(key, debt)

        sent.add_done_callback(landed)
        self._latest_of(key, sent)
        return sent

    def _latest_of(self, key: bytes, sent: asyncio.Future[Any]) -> None:
        """``sent`` is the latest write of ``key``: the owed writes until it is done."""
        self.owed.track(sent)
        self._latest[key] = sent

        def gone(future: asyncio.Future[Any]) -> None:
            if self._latest.get(key) is future:
                del self._latest[key]

        sent.add_done_callback(gone)

    def _hand_on(self, key: bytes, debt: asyncio.Future[None]) -> None:
        """Settle ``debt``: its record landed, or a later write of its key superseded it. That
        later write, if still in flight, stands for the debt from now on (it is owed as early as
        the debt was, and a refusal of it opens its debt as early), so a commit that waited for the
        refused record waits for the write that replaced it."""
        if debt.done():
            return
        later = self._latest.get(key)
        if later is not None and not later.done():
            self.owed.track(later, self.owed.seq_of(debt))
        debt.set_result(None)

    async def put_durably_in(self, partition: int, key: bytes, value: T) -> None:
        """``put_in``, returning once the changelog record is acknowledged by Kafka."""
        await self.put_in(partition, key, value)

    def put_reliably_in(self, partition: int, key: bytes, value: T, *, retry_delay: float = 1.0) -> asyncio.Task[None]:
        """``put_in``, sent again until Kafka acknowledges it; the task ends then, or as soon as
        the key has been written again or deleted (a newer write supersedes this one). Callers
        that must not act before the value is durable await the task."""
        raw = self._encode(value)
        self.table.data[key] = raw
        first = self._send(partition, key, raw)
        since = self._track(key, first)

        async def land() -> None:
            durable = first
            while True:
                try:
                    await durable
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Kafka refused it: the caller is still waiting on it
                    log.warning("changelog write of %r to %s failed (%s); sending it again", key,
                                self.table.name, exc)
                await asyncio.sleep(retry_delay)
                if self.table.data.get(key) != raw:
                    later = self._latest.get(key)
                    if later is not None and not later.done():
                        self.owed.track(later, since)  # (as ``_hand_on``)
                    return
                durable = self._send(partition, key, raw)
                self._track(key, durable)

        task = asyncio.ensure_future(land())
        self.owed.track(task, since)  # owed until it lands or is superseded, as ``put_in``'s
        return task

    def _track(self, key: bytes, sent: Awaitable[Any]) -> int | None:
        if not isinstance(sent, asyncio.Future):
            return None
        self._latest_of(key, sent)
        return self.owed.seq_of(sent)

    def remove_in(self, partition: int, key: bytes) -> None:
        """Delete ``key`` from outside an agent's event (see ``put_in``; the tombstone is sent
        again if Kafka refuses it)."""
        if key in self.table.data:
            del self.table.data[key]
            self._kept(partition, key, None, self._send(partition, key, None))

    def __contains__(self, key: bytes) -> bool:
        return key in self.table

    def __len__(self) -> int:
        return len(self.table.data)

    def __iter__(self) -> Iterator[bytes]:
        """The keys held locally, copied first: safe to write the table while iterating."""
        return iter(list(self.table.data.keys()))

    def items(self) -> Iterator[tuple[bytes, T]]:
        for key, raw in list(self.table.items()):
            yield key, self.decode(raw)


class EntriesOf(Generic[T]):
    """The entries of one kind in a ``RecordTable`` that holds two kinds under the same keys (a
    job's waiting order, then its slot): reads see only this kind, and a write of either kind
    replaces the key's entry, whichever it was. ``is_mine(raw)`` tells this kind's values from
    the other's without decoding them."""

    def __init__(self, records: RecordTable[Any], is_mine: Callable[[bytes], bool]) -> None:
        self.records = records
        self.table = records.table
        self._is_mine = is_mine

    def _mine(self, raw: bytes | None) -> bool:
        return raw is not None and self._is_mine(raw)

    def get(self, key: bytes) -> T | None:
        raw = self.table.get(key)
        return cast(T, self.records.decode(raw)) if raw is not None and self._is_mine(raw) else None

    def put_in(self, partition: int, key: bytes, value: T) -> Awaitable[Any]:
        return self.records.put_in(partition, key, value)

    def put_reliably_in(self, partition: int, key: bytes, value: T, *, retry_delay: float = 1.0) -> asyncio.Task[None]:
        return self.records.put_reliably_in(partition, key, value, retry_delay=retry_delay)

    def remove_in(self, partition: int, key: bytes) -> None:
        """Delete ``key`` if it holds an entry of this kind (one of the other kind stays)."""
        if self._mine(self.table.data.get(key)):
            self.records.remove_in(partition, key)

    def __contains__(self, key: bytes) -> bool:
        return self._mine(self.table.data.get(key))

    def __len__(self) -> int:
        """O(entries of both kinds): for tests and rare looks, not for hot paths."""
        return sum(1 for raw in list(self.table.data.values()) if self._is_mine(raw))

    def __iter__(self) -> Iterator[bytes]:
        return iter([key for key, raw in list(self.table.data.items()) if self._is_mine(raw)])

    def items(self) -> Iterator[tuple[bytes, T]]:
        for key, raw in list(self.table.data.items()):
            if self._is_mine(raw):
                yield key, cast(T, self.records.decode(raw))
