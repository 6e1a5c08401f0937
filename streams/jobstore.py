"""The jobs table's RocksDB store: Faust's, with index and filter blocks in the block cache, and
one memory budget for all of a worker's partition databases.

Faust's store builds RocksDB's table options itself, with 4 KiB blocks and the index and bloom
filter blocks of every table file held outside the block cache. For the jobs table, which holds
every admitted job, that memory grows with the number of jobs: about 4.5 bytes per job in the
memory bench (RocksDB's ``estimate-table-readers-mem``), 4.5 MiB at a million. Here the blocks
are 16 KiB (a quarter of the index) and the index and filter blocks live in the block cache,
so they count against its bound; the first level's stay pinned there, because they are the
ones read most.

Faust also gives every partition database a cache and memtables of its own, so a worker's
RocksDB memory was a multiple of the partitions it holds (3 MiB each here: 12 MiB with 4, 36 MiB
with 12), and a database's share filled only as its partition's jobs reached disk: with a large
backlog the worker held all of it, with a small one part. Here every database of the process
shares one block cache (``CACHE_BYTES``) and one write buffer manager (``MEMTABLE_BYTES``, which
flushes the largest memtable once their sum nears it), as Kafka Streams' bounded-memory setup
does: the bound is the same whatever the partition count.
"""
from __future__ import annotations

import functools
from typing import Any

import rocksdict
from faust.stores.rocksdb import RocksDBOptions, Store

BLOCK_SIZE = 16 * 1024
CACHE_BYTES = 2 << 20
"""The block cache all partition databases of a worker share (data, index and filter blocks)."""
MEMTABLE_BYTES = 4 << 20
"""What their memtables may hold together before the write buffer manager flushes one."""


@functools.cache
def shared_budget() -> tuple[Any, Any]:
    """The process's one block cache and one write buffer manager (made on first use, kept for
    the process's life: a database opened later, after a rebalance, joins the same budget)."""
    return rocksdict.Cache(CACHE_BYTES), rocksdict.WriteBufferManager(MEMTABLE_BYTES, False)


class JobTableOptions(RocksDBOptions):
    @classmethod
    def like(cls, options: RocksDBOptions) -> JobTableOptions:
        """The settings Faust parsed into ``options`` (sizes, driver), with our table options."""
        ours = cls.__new__(cls)
        ours.__dict__.update(vars(options))
        return ours

    def as_options(self) -> Any:
        options = super().as_options()
        cache, write_buffers = shared_budget()
        options.set_write_buffer_manager(write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_block_size(BLOCK_SIZE)
        table.set_bloom_filter(self.bloom_filter_size, True)
        table.set_block_cache(cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options


class JobStore(Store):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rocksdb_options = JobTableOptions.like(self.rocksdb_options)
