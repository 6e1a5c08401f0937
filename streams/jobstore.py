"""The jobs table's RocksDB store: Faust's, with index and filter blocks in the block cache.

Faust's store builds RocksDB's table options itself, with 4 KiB blocks and the index and bloom
filter blocks of every table file held outside the block cache. For the jobs table, which holds
every admitted job, that memory grows with the number of jobs: about 4.5 bytes per job in the
memory bench (RocksDB's ``estimate-table-readers-mem``), 4.5 MiB at a million. Here the blocks
are 16 KiB (a quarter of the index) and the index and filter blocks live in the block cache,
so they count against its bound; the first level's stay pinned there, because they are the
ones read most.
"""
from __future__ import annotations

from typing import Any

import rocksdict
from faust.stores.rocksdb import RocksDBOptions, Store

BLOCK_SIZE = 16 * 1024


class JobTableOptions(RocksDBOptions):
    @classmethod
    def like(cls, options: RocksDBOptions) -> JobTableOptions:
        """The settings Faust parsed into ``options`` (sizes, driver), with our table options."""
        ours = cls.__new__(cls)
        ours.__dict__.update(vars(options))
        return ours

    def as_options(self) -> Any:
        options = super().as_options()
        table = rocksdict.BlockBasedOptions()
        table.set_block_size(BLOCK_SIZE)
        table.set_bloom_filter(self.bloom_filter_size, True)
        table.set_block_cache(rocksdict.Cache(self.block_cache_size))
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options


class JobStore(Store):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rocksdb_options = JobTableOptions.like(self.rocksdb_options)
