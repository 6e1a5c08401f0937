"""The Faust app factory. Every Faust option Floodgate depends on is set here, from Settings."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import faust
from faust.tables import TableManager

from floodgate.readorder import ReadOrder
from floodgate.settings import Settings
from streams import localstate
from streams.faust_fixes import fetch_only_active, hold_partitions, hold_streams_until_seek, record_flow
from streams.slotwriter import SlotWriter
from streams.tables import Owed, owed_of


class FloodgateApp(faust.App):
    """``faust.App`` with the workarounds of ``streams.faust_fixes`` installed, and the consumer's
    fetcher tuned (``tune_fetcher``)."""

    fetch_max_wait_ms: int = 1500
    read_order: ReadOrder | None = None
    slot_writer: SlotWriter | None = None
    owed_records: Owed | None = None

    def _new_producer(self) -> Any:
        producer = super()._new_producer()
        bind_producer(producer, self.slot_writer, owed_of(self))
        return producer

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        hold_streams_until_seek(self, consumer)
        fetch_only_active(consumer)
        hold_partitions(consumer)
        record_flow(self, consumer)
        tune_fetcher(consumer, self.fetch_max_wait_ms, self.read_order)
        return consumer


class PromptTables(TableManager):
    """Faust's table manager without the second it waits at start before it takes up the tables.

    Faust waits that second for tables an app might still define while it starts. Every
    Floodgate table is made by ``streams.worker.build`` before the app starts (a table added later
    would raise: Faust finalizes the set here), so the wait only delays the worker's join. It
    matters most for a worker that was killed: as a static member it gets its partitions back
    without a rebalance only if it is back within the session timeout (``streams.static_member``)."""

    @property
    def label(self) -> str:
        return "TableManager"  # its name in the logs, as Faust's

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


SENTINEL_TURNS = 3
"""Turns of the loop ``PromptExit`` gives the last callbacks of a stop."""


class PromptExit(faust.Worker):
    """Faust's worker without the second it waits at the end of an orderly stop.

    With every service stopped and every task gathered, the worker's loop runs once more, for a
    sentinel that sleeps a second so that the callbacks those stops scheduled (a transport's
    close) can run. A few turns of the loop run them; the second only delays the process's exit,
    and with it the static member's leave (``streams.static_member.leave_on_exit``), which moves
    its partitions to the other workers."""

    @property
    def label(self) -> str:
        return "Worker"  # its name in the logs, as Faust's

    async def _sentinel_task(self) -> None:
        for _ in range(SENTINEL_TURNS):
            await asyncio.sleep(0)


def bind_producer(producer: Any, writer: SlotWriter | None, owed: Owed) -> None:
    """Tie ``writer`` (``streams/slotwriter.py``) to Faust's ``producer``: started after it (when a
    table writes through it), flushed with it, and stopped before it; and make the flush wait for
    the changelog records the tables are sending again (``owed``, ``streams/tables.py``).

    The flush is what the tables' durability rests on: Faust flushes its producer before it
    commits offsets, so with this a commit also waits for every slot write made before it, as it
    would if they had gone through Faust's producer, and for every record refused before it until
    it lands."""
    on_start, flush, on_stop = producer.on_start, producer.flush, producer.on_stop

    async def start_both() -> None:
        await on_start()
        if writer is not None and writer.enlisted:
            await writer.start()

    async def flush_all() -> None:
        await flush()
        if writer is not None:
            await writer.flush()
        # The tables' writes made before this, and the refused ones among them until they land
        # (``Owed``: it waits on each record's own future, so a refusal's debt is open before its
        # wait wakes, which the producer's flush, woken by the batch, does not ensure).
        await owed.settled()

    async def stop_both() -> None:
        if writer is not None:
            await writer.stop()
        await on_stop()

    producer.on_start, producer.flush, producer.on_stop = start_both, flush_all, stop_both


PREFETCH_BACKOFF = 0.0
"""Seconds aiokafka holds back every fetch to a broker while any partition there still has
fetched records the agents have not taken (its ``prefetch_backoff``, 0.1 by default): see
``tune_fetcher``."""


def tune_fetcher(consumer: Any, wait_ms: int, read_order: ReadOrder | None = None) -> None:
    """Make the worker's aiokafka consumer long-poll for ``wait_ms`` instead of Faust's fixed
    1,500, fetch the other partitions while one's records wait to be taken, and hand out the
    records of urgent topics first (``read_order``).

    aiokafka sends one fetch at a time to a broker, for the partitions that have nothing buffered
    when it is sent. A partition whose buffered records are consumed while that fetch long-polls
    (nothing new on the others) is fetched only when it returns: up to the wait, per hop. Every
    Floodgate hop (a request, a webhook, a release) is a record on another topic of the same
    consumer, so the wait adds straight to notification latency and to the slot handover. A short
    wait costs a few empty fetches per second when idle. Faust passes ``fetch_max_wait_ms=1500``
    to the consumer it creates and has no setting for it; the value is set on the consumer
    before it starts, when aiokafka hands it to its fetcher.

    By default aiokafka also sends no fetch at all to a broker while any partition there holds
    fetched records younger than its ``prefetch_backoff`` (0.1 s) that the consumer has not taken.
    In the worker those records are taken by Faust's drain loop on the main thread, a round trip
    from the consumer's own thread, so after every fetch that brought something the worker stopped
    fetching until that round trip was done: in the notification bench (50 jobs/s) no fetch was in
    flight 37% of the time, and 87% of the webhook records had been written before the fetch that
    brought them was sent (a median 7.5 ms before, p99 60 ms). With ``PREFETCH_BACKOFF`` (0) the
    next fetch goes out at once for every partition that has nothing waiting; a partition's own
    records are still fetched only once its previous ones are taken, so order and the bound on
    what is buffered (one fetch per partition) stay as they were. The backoff is a fetcher
    argument that the consumer does not pass on, so it is set on the fetcher once the consumer
    has started (and built it).

    aiokafka hands out fetched records partition by partition, in the order the partitions' fetches
    returned, up to the consumer's ``max_poll_records`` (``FLOODGATE_POLL_RECORDS``) per batch.
    ``read_order`` rearranges the partitions before every batch (``floodgate.readorder``), so a
    release fetched behind a thousand requests is in the next batch rather than the last."""
    thread = consumer._thread
    create = thread._create_consumer

    def create_consumer(loop: Any) -> Any:
        created = create(loop)
        created._fetch_max_wait_ms = wait_ms
        start = created.start

        async def start_then_prefetch() -> None:
            await start()
            fetcher = created._fetcher
            fetcher._prefetch_backoff = PREFETCH_BACKOFF
            if read_order is not None:
                fetched_records = fetcher.fetched_records

                async def urgent_first(partitions: Any, timeout: float = 0, max_records: int | None = None) -> Any:
                    read_order.arrange(fetcher._records)
                    drained = await fetched_records(partitions, timeout=timeout, max_records=max_records)
                    read_order.taken(drained)
                    return drained

                fetcher.fetched_records = urgent_first

        created.start = start_then_prefetch
        return created

    thread._create_consumer = create_consumer


def create_app(settings: Settings, *, app_id: str | None = None, datadir: Path | None = None,
               web_port: int | None = None) -> FloodgateApp:
    """A Faust app bound to ``settings``' broker. Values and keys travel as raw bytes: our own
    Avro codec (``floodgate.codec``) encodes them, so Faust's serializer registry is bypassed."""
    if not settings.kafka_bootstrap:
        raise ValueError("settings.kafka_bootstrap must be resolved before creating the Faust app")
    brokers = ";".join(f"kafka://{b.strip()}" for b in settings.kafka_bootstrap.split(","))
    ident = app_id or settings.app_id
    datadir = datadir or settings.cache_dir / "faust" / ident
    datadir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = FloodgateApp(
        ident,
        broker=brokers,
        key_serializer="raw",
        value_serializer="raw",
        # Tables that grow with the number of jobs ask for settings.table_store themselves
        # (``job_table_options``); the rest (slots: bounded by provider limits) stay in memory.
        store="memory://",
        datadir=str(datadir),
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,
        # Faust's default is 60 s: a dead worker's partitions (and their jobs) would wait that
        # long to move. 10 s with 3 s heartbeats fits the "seconds, not minutes" promise.
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=max(1.0, settings.session_timeout / 3),
        broker_rebalance_timeout=max(settings.session_timeout * 2, 20.0),
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=settings.stream_buffer,
        consumer_max_fetch_size=settings.fetch_partition_bytes,
        broker_max_poll_records=settings.poll_records,
        producer_acks=-1,
        producer_linger=settings.producer_linger_ms / 1000,
        # Standbys would double table changelog reads on a 2-core box; recovery replays instead.
        table_standby_replicas=0,
        web_enabled=web_port is not None,
        web_port=web_port or 6066,
        web_host="127.0.0.1",
        logging_config=None,
        consumer_group_instance_id=localstate.worker_name(settings) if settings.static_membership else None,
        TableManager=PromptTables,
        Worker=PromptExit,
    )
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    app.read_order = ReadOrder.for_worker(settings.topic)
    if settings.slot_producer_limit > 0:
        app.slot_writer = SlotWriter(settings.kafka_bootstrap, client_id=f"{ident}-slots")
    return app


def job_table_options(settings: Settings, name: str) -> dict[str, Any]:
    """``app.Table`` arguments for the table ``name``, which grows with the number of jobs."""
    if settings.table_store == "memory":
        return {"store": "memory://"}
    # "floodgate-rocksdb" is Faust's RocksDB store (on rocksdict) with the jobs table's own table
    # options (streams/jobstore.py; registered under Faust's "faust.stores" entry points).
    # Small memtables per partition database, and one cache and one memtable budget that all of
    # them share (streams/jobstore.py; its block cache replaces the block_cache_size below): the
    # point of the disk store is a flat footprint, and RocksDB's defaults (64 MB memtables, a
    # 2 GB cache each) are not that.
    # The URL names the table's files under the worker's table directory: a bare scheme is
    # a falsy URL that Faust would silently replace by the app's store (memory).
    return {"store": f"floodgate-rocksdb:{name}", "options": {
        "driver": "rocksdict", "write_buffer_size": 1 << 20, "max_write_buffer_number": 2,
        "target_file_size_base": 8 << 20, "block_cache_size": 1 << 20}}
