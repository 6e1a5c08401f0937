"""The worker hands out urgent topics' fetched records first (floodgate.readorder)."""
from __future__ import annotations

from collections import OrderedDict

import pytest
from faust.types import TP

from floodgate.readorder import ReadOrder


def topic(name: str) -> str:
    return f"fg.{name}"


def test_a_worker_ranks_progress_then_releases_then_orders_and_nothing_else() -> None:
    order = ReadOrder.for_worker(topic)
    assert order.rank("fg.webhooks") == order.rank("fg.events") == 0
    assert order.rank("fg.release.kling") == 1
    assert order.rank("fg.dispatch.wan") == 2
    for other in ("fg.requests", "fg.results", "fg.releases", "release.kling", "fg.webhooks2",
                  "floodgate-inflight-kling-changelog"):
        assert order.rank(other) is None, other


def test_arrange_puts_ranked_partitions_first_and_keeps_each_ranks_fetched_order() -> None:
    fetched = OrderedDict((tp, f"records of {tp}") for tp in [
        TP("fg.requests", 0), TP("fg.dispatch.kling", 0), TP("fg.webhooks", 1), TP("fg.release.kling", 0),
        TP("fg.requests", 1), TP("fg.events", 1), TP("fg.webhooks", 0), TP("fg.release.wan", 0)])
    ReadOrder.for_worker(topic).arrange(fetched)
    assert list(fetched) == [
        TP("fg.webhooks", 1), TP("fg.events", 1), TP("fg.webhooks", 0),
        TP("fg.release.kling", 0), TP("fg.release.wan", 0),
        TP("fg.dispatch.kling", 0),
        TP("fg.requests", 0), TP("fg.requests", 1)]
    assert fetched[TP("fg.webhooks", 0)] == f"records of {TP('fg.webhooks', 0)}"  # values travel with keys


def test_arrange_leaves_unranked_partitions_alone() -> None:
    tps = [TP("fg.requests", 2), TP("fg.results", 0), TP("fg.requests", 0)]
    fetched = OrderedDict((tp, None) for tp in tps)
    ReadOrder.for_worker(topic).arrange(fetched)
    assert list(fetched) == tps


def test_the_first_matching_rule_gives_the_rank() -> None:
    order = ReadOrder(["a.", "a.b"], [5, 1])
    assert order.rank("a.b") == 5
    assert order.rank("a.c") == 5
    assert ReadOrder(["x", "y"]).rank("y") == 1  # ranks default to the rules' order


def test_ranks_must_match_rules() -> None:
    with pytest.raises(ValueError, match="one rank per rule"):
        ReadOrder(["a", "b"], [0])
