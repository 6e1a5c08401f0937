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


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_records_passed_over_too_long_go_first_once_then_wait_again() -> None:
    """Urgent records that never run out (the re-reads after rebalance upon rebalance) would keep
    a request partition's fetched records waiting for good: past the bound they go first, once."""
    clock = Clock()
    order = ReadOrder.for_worker(topic, max_passed_over=1.0, clock=clock)
    requests, webhooks = TP("fg.requests", 3), TP("fg.webhooks", 3)
    waiting = object()  # one fetch's records of the request partition, never taken meanwhile
    firsts = []
    for step in range(25):
        clock.now = 100.0 + step * 0.1
        fetched = OrderedDict([(requests, waiting), (webhooks, object())])  # a new fetch of webhooks each time
        order.arrange(fetched)
        firsts.append(next(iter(fetched)))
    assert [i for i, tp in enumerate(firsts) if tp == requests] == [10, 20]


def test_a_new_fetch_starts_its_partitions_clock_again_and_gone_partitions_are_forgotten() -> None:
    clock = Clock()
    order = ReadOrder.for_worker(topic, max_passed_over=1.0, clock=clock)
    requests, events = TP("fg.requests", 0), TP("fg.events", 0)
    order.arrange(OrderedDict([(requests, object()), (events, object())]))
    clock.now += 5.0
    fetched = OrderedDict([(requests, object()), (events, object())])  # both taken and fetched anew
    order.arrange(fetched)
    assert list(fetched) == [events, requests]
    held = object()
    order.arrange(OrderedDict([(requests, held)]))
    order.arrange(OrderedDict([(events, object())]))  # requests taken: forgotten
    clock.now += 5.0
    fetched = OrderedDict([(requests, held), (events, object())])
    order.arrange(fetched)
    assert list(fetched) == [events, requests], "seen again counts from now, not from before"


def test_of_several_passed_over_the_longest_waiting_goes_first() -> None:
    clock = Clock()
    order = ReadOrder.for_worker(topic, max_passed_over=1.0, clock=clock)
    a, b, urgent = TP("fg.requests", 0), TP("fg.requests", 1), TP("fg.release.wan", 0)
    records = {a: object(), b: object()}
    order.arrange(OrderedDict([(b, records[b]), (urgent, object())]))
    clock.now += 0.5
    order.arrange(OrderedDict([(b, records[b]), (a, records[a]), (urgent, object())]))
    clock.now += 1.0
    fetched = OrderedDict([(b, records[b]), (a, records[a]), (urgent, object())])
    order.arrange(fetched)
    assert list(fetched) == [b, a, urgent]
