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

    from streams.jobstore import JobTableOptions

    rng = random.Random(5)

    def readers_memory(options: rocksdb.RocksDBOptions, path: Path) -> int:
        db = options.open(path)
        value = os.urandom(580)
        for _ in range(250_000):
            db[f"{rng.getrandbits(96):024x}".encode()] = value
        db.flush()
        used = int(db.property_int_value("rocksdb.estimate-table-readers-mem"))
        assert db.property_int_value("rocksdb.block-cache-usage") <= options.block_cache_size * 1.1
        db.close()
        return used

    def faust_options() -> rocksdb.RocksDBOptions:
        return rocksdb.RocksDBOptions(write_buffer_size=1 << 20, max_write_buffer_number=2,
                                      block_cache_size=1 << 20, use_rocksdict=True)

    theirs = readers_memory(faust_options(), tmp_path / "faust")
    mine = readers_memory(JobTableOptions.like(faust_options()), tmp_path / "jobs")
    assert theirs > 500_000 and mine < theirs / 8, (mine, theirs)


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
