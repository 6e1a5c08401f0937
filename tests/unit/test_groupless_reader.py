"""A reader that places itself: a group of its own every time (two API processes never share
one), nothing committed, its own settings on top."""
from __future__ import annotations

from floodgate.kafka_admin import groupless_reader


def test_each_reader_gets_a_group_of_its_own_and_commits_nothing() -> None:
    first = groupless_reader("b:9092", "floodgate-api-keys", **{"fetch.min.bytes": 65536})
    second = groupless_reader("b:9092", "floodgate-api-keys")
    assert first["group.id"] != second["group.id"]
    assert first["group.id"].startswith("floodgate-api-keys-")
    assert (first["enable.auto.commit"], first["enable.auto.offset.store"]) == (False, False)
    assert first["fetch.min.bytes"] == 65536 and "fetch.min.bytes" not in second
    assert groupless_reader("b:9092", "c", **{"enable.auto.commit": True})["enable.auto.commit"] is True
