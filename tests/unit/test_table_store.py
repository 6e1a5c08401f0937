from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from faust.stores import rocksdb

from floodgate.settings import Settings
from streams.app import create_app, job_table_options
from streams.tables import RecordTable


@pytest.mark.parametrize(("store", "module"),
                         [("rocksdict", "faust.stores.rocksdb"), ("memory", "faust.stores.memory")])
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
        assert data.rocksdb_options.use_rocksdict
        assert data.rocksdb_options.block_cache_size <= 16 << 20, "a flat footprint, not RocksDB's 2 GB default"
        assert data.partition_path(3).is_relative_to(tmp_path / "w0")


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
