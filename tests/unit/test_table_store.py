from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from faust.stores import rocksdb

from floodgate.settings import Settings
from streams.app import create_app, job_table_options
from streams.tables import RecordTable


@pytest.mark.parametrize(("store", "module"),
                         [("rocksdict", "streams.jobstore"), ("memory", "faust.stores.memory")])
def test_job_tables_use_the_configured_store(tmp_path: Path, store: str, module: str) -> None:
    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path,
                                                    table_store=store)
    app = create_app(settings, datadir=tmp_path / "w0")
    jobs = RecordTable(app, "jobs", partitions=4, encode=bytes, decode=bytes, **job_table_options(settings, "jobs"))
    slots = RecordTable(app, "inflight-x", partitions=2, encode=bytes, decode=bytes)
    assert type(jobs.table.data).__module__ == module
    assert type(slots.table.data).__module__ == "faust.stores.memory", "slot tables are written outside events"
    if store == "rocksdict":
        data = jobs.table.data
        assert isinstance(data, rocksdb.Store)
        from streams.jobstore import JobTableOptions
        assert isinstance(data.rocksdb_options, JobTableOptions)
        assert data.rocksdb_options.use_rocksdict
        assert data.rocksdb_options.block_cache_size <= 16 << 20, "a flat footprint, not RocksDB's 2 GB default"
        assert data.partition_path(3).is_relative_to(tmp_path / "w0")


def test_the_job_store_keeps_index_and_filter_blocks_in_its_bounded_cache(tmp_path: Path) -> None:
    """Faust's own table options keep every table file's index and filter blocks outside the
    block cache, so they grow with the jobs (about 4.5 bytes each); the job store's count
    against the cache. A quarter of a million jobs in one partition database, as with a million
    over four: its table readers' memory outside the cache stays a small fraction of Faust's."""
    import os
    import random

    from streams.jobstore import CACHE_BYTES, JobTableOptions

    rng = random.Random(5)

    def readers_memory(options: rocksdb.RocksDBOptions, path: Path, cache_bound: int) -> int:
        db = options.open(path)
        value = os.urandom(580)
        for _ in range(250_000):
            db[f"{rng.getrandbits(96):024x}".encode()] = value
        db.flush()
        used = int(db.property_int_value("rocksdb.estimate-table-readers-mem"))
        assert db.property_int_value("rocksdb.block-cache-usage") <= cache_bound * 1.1
        db.close()
        return used

    def faust_options() -> rocksdb.RocksDBOptions:
        return rocksdb.RocksDBOptions(write_buffer_size=1 << 20, max_write_buffer_number=2,
                                      block_cache_size=1 << 20, use_rocksdict=True)

    theirs = readers_memory(faust_options(), tmp_path / "faust", 1 << 20)
    mine = readers_memory(JobTableOptions.like(faust_options()), tmp_path / "jobs", CACHE_BYTES)
    assert theirs > 500_000 and mine < theirs / 8, (mine, theirs)


def test_every_partition_database_of_the_job_store_shares_one_cache_and_one_memtable_budget(tmp_path: Path) -> None:
    """Faust gives each partition database a cache and memtables of its own, so a worker's
    RocksDB memory grew with its partitions; the job store's databases draw on one budget."""
    import os

    from streams import jobstore

    jobstore.shared_budget.cache_clear()  # a budget of this test's own, whatever ran before
    try:
        cache, write_buffers = jobstore.shared_budget()
        options = jobstore.JobTableOptions.like(rocksdb.RocksDBOptions(
            write_buffer_size=1 << 20, max_write_buffer_number=2, block_cache_size=1 << 20, use_rocksdict=True))
        dbs = [options.open(tmp_path / f"p{partition}") for partition in range(3)]
        value = os.urandom(500)
        for partition, db in enumerate(dbs):  # half a MiB each: below one memtable, no flush
            for i in range(1000):
                db[f"{partition}-{i:06d}".encode()] = value
        # The one write buffer manager counts all three databases' memtables.
        assert write_buffers.get_usage() >= 3 * 1000 * 500
        assert write_buffers.get_buffer_size() == jobstore.MEMTABLE_BYTES
        dbs[0].flush()
        assert dbs[0][b"0-000007"] == value  # read from its table file, through the cache
        used = cache.get_usage()
        assert used > 0
        # What the first database read sits in the cache the others report too: it is one cache.
        assert all(db.property_int_value("rocksdb.block-cache-usage") == used for db in dbs)
        assert used <= jobstore.CACHE_BYTES
        for db in dbs:
            db.close()
    finally:
        jobstore.shared_budget.cache_clear()


async def test_the_worker_consumer_long_polls_for_the_configured_wait(tmp_path: Path) -> None:
    """Faust hard-codes fetch_max_wait_ms=1500; the app's consumer must get ours instead (this
    fails if a Faust upgrade changes how its consumer is created)."""
    import asyncio

    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path,
                                                    fetch_max_wait_ms=37)
    app = create_app(settings, datadir=tmp_path / "w0")
    consumer: Any = app.consumer
    created = consumer._thread._create_consumer(asyncio.get_running_loop())
    assert created._fetch_max_wait_ms == 37
