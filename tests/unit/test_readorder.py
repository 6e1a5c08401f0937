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


class Fetched:
    """One fetch's records of a partition, taken a batch at a time (aiokafka's ``FetchResult``)."""

    def __init__(self, count: int) -> None:
        self.left = count


def take_batch(order: ReadOrder, fetched: OrderedDict[TP, Fetched], max_records: int) -> dict[TP, int]:
    """What aiokafka's ``Fetcher.fetched_records`` hands out after the worker's ``arrange``: up to
    ``max_records``, partition by partition in the dict's order; a partition whose records are all
    taken leaves the dict. Tells ``order`` what was taken, as the worker does."""
    order.arrange(fetched)
    drained: dict[TP, int] = {}
    for tp in list(fetched):
        if not max_records:
            break
        records = fetched[tp]
        n = min(records.left, max_records)
        records.left -= n
        max_records -= n
        drained[tp] = n
        if not records.left:
            del fetched[tp]
    order.taken(drained)
    return drained


def test_records_passed_over_too_long_go_first_until_taken_then_wait_again() -> None:
    """Urgent records that never run out (the re-reads after rebalance upon rebalance) would keep
    a request partition's fetched records waiting for good: past the bound they go first, until
    a batch takes some of them; what is left waits again."""
    clock = Clock()
    order = ReadOrder.for_worker(topic, max_passed_over=1.0, clock=clock)
    requests, webhooks = TP("fg.requests", 3), TP("fg.webhooks", 3)
    fetched: OrderedDict[TP, Fetched] = OrderedDict([(requests, Fetched(100))])
    served = []
    for step in range(25):
        clock.now = 100.0 + step * 0.1
        fetched[webhooks] = Fetched(10)  # a new fetch of webhooks each time, a batch's worth
        if take_batch(order, fetched, 10).get(requests):
            served.append(step)
    assert served == [10, 20]


def test_of_several_partitions_passed_over_at_once_each_is_served_in_turn() -> None:
    """A worker short of CPU: urgent records fill every batch, and four request partitions wait.
    Each is served at least once in every two seconds, none starved. (When the clock started again
    as records went first, taken or not, a batch served only the first of them, and the others
    went first together again a second later, the same one first: three of the four never had a
    record taken in 40 s.)"""
    clock = Clock()
    order = ReadOrder.for_worker(topic, max_passed_over=1.0, clock=clock)
    requests = [TP("fg.requests", p) for p in range(4)]
    urgent = [TP("fg.webhooks", 0), TP("fg.events", 0), TP("fg.release.wan", 0), TP("fg.dispatch.wan", 0)]
    fetched: OrderedDict[TP, Fetched] = OrderedDict((tp, Fetched(10_000)) for tp in requests)
    last_served = dict.fromkeys(requests, clock.now)
    longest = 0.0
    for step in range(1_000):  # 25 batches a second for 40 s
        clock.now = 100.0 + step * 0.04
        for tp in urgent:
            if tp not in fetched:
                fetched[tp] = Fetched(20)
        for tp in take_batch(order, fetched, 10):
            if tp in last_served:
                longest = max(longest, clock.now - last_served[tp])
                last_served[tp] = clock.now
    longest = max(longest, *(clock.now - t for t in last_served.values()))
    assert longest <= 2.0, f"a request partition waited {longest:.2f} s for a batch"


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
