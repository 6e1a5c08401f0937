"""The commit tracker never lets a committed offset pass an offset still in flight."""
from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from floodgate.commit_tracker import CommitTracker, Ticket


def test_nothing_started_means_nothing_to_commit() -> None:
    assert CommitTracker[int]().committable() == {}


def test_out_of_order_finish_holds_the_commit_at_the_lowest_unfinished() -> None:
    tracker: CommitTracker[int] = CommitTracker()
    tickets = [tracker.start(0, offset) for offset in (10, 11, 12)]
    assert tracker.committable() == {0: 10}
    tracker.finish(tickets[2])
    tracker.finish(tickets[1])
    assert tracker.committable() == {0: 10}
    tracker.finish(tickets[0])
    assert tracker.committable() == {0: 13}
    assert tracker.in_flight(0) == 0


def test_gaps_in_offsets_are_allowed_and_commit_past_the_last_started() -> None:
    tracker: CommitTracker[int] = CommitTracker()
    first, second = tracker.start(3, 5), tracker.start(3, 9)
    tracker.finish(first)
    assert tracker.committable() == {3: 9}
    tracker.finish(second)
    assert tracker.committable() == {3: 10}


def test_committable_reports_only_progress_since_mark_committed() -> None:
    tracker: CommitTracker[int] = CommitTracker()
    tracker.finish(tracker.start(1, 0))
    tracker.mark_committed(tracker.committable())
    assert tracker.committable() == {}
    tracker.start(1, 1)
    assert tracker.committable() == {}  # still 1: the broker already has it
    assert tracker.committable([1, 2]) == {}


def test_partitions_are_independent() -> None:
    tracker: CommitTracker[int] = CommitTracker()
    tracker.start(0, 0)
    tracker.finish(tracker.start(1, 0))
    assert tracker.committable() == {0: 0, 1: 1}
    assert tracker.committable([1]) == {1: 1}


def test_offsets_must_increase() -> None:
    tracker: CommitTracker[int] = CommitTracker()
    tracker.start(0, 5)
    with pytest.raises(ValueError, match="offset 5"):
        tracker.start(0, 5)


def test_tickets_from_before_forget_are_ignored() -> None:
    tracker: CommitTracker[int] = CommitTracker()
    old = tracker.start(0, 7)
    tracker.forget([0])
    new = tracker.start(0, 7)  # reassigned, same record fetched again
    tracker.finish(old)
    assert tracker.committable() == {0: 7}
    tracker.finish(new)
    assert tracker.committable() == {0: 8}


def test_finishing_twice_or_a_stranger_ticket_is_harmless() -> None:
    tracker: CommitTracker[int] = CommitTracker()
    ticket = tracker.start(0, 1)
    tracker.finish(ticket)
    tracker.finish(ticket)
    tracker.finish(Ticket(9, 1, 1))
    tracker.finish(Ticket(0, 50, ticket.generation))
    assert tracker.committable() == {0: 2}


class TrackerModel(RuleBasedStateMachine):
    """Random interleavings of start / finish / commit / forget against a plain-set model."""

    @initialize()
    def setup(self) -> None:
        self.tracker: CommitTracker[int] = CommitTracker()
        self.next: dict[int, int] = {}
        self.open: dict[int, dict[int, Ticket[int]]] = {}  # partition → offset → ticket, unfinished
        self.committed: dict[int, int] = {}
        self.stale: list[Ticket[int]] = []

    @rule(partition=st.integers(0, 2), gap=st.integers(0, 3))
    def start(self, partition: int, gap: int) -> None:
        offset = self.next.get(partition, 0) + gap
        self.open.setdefault(partition, {})[offset] = self.tracker.start(partition, offset)
        self.next[partition] = offset + 1

    @precondition(lambda self: any(self.open.values()))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        partition = data.draw(st.sampled_from(sorted(p for p, o in self.open.items() if o)))
        offset = data.draw(st.sampled_from(sorted(self.open[partition])))
        self.tracker.finish(self.open[partition].pop(offset))

    @rule()
    def commit(self) -> None:
        offsets = self.tracker.committable()
        for partition, offset in offsets.items():
            assert offset > self.committed.get(partition, -1), "a commit must only move forward"
        self.tracker.mark_committed(offsets)
        self.committed.update(offsets)

    @rule(partition=st.integers(0, 2))
    def forget(self, partition: int) -> None:
        self.tracker.forget([partition])
        self.stale.extend(self.open.pop(partition, {}).values())
        self.committed.pop(partition, None)
        self.next.pop(partition, None)  # a new owner may fetch from an older committed offset

    @precondition(lambda self: bool(self.stale))
    @rule()
    def late_finish_from_old_owner(self) -> None:
        self.tracker.finish(self.stale.pop())

    @invariant()
    def commit_point_is_the_lowest_unfinished_offset(self) -> None:
        if not hasattr(self, "tracker"):
            return
        reported = self.tracker.committable()
        for partition, started_next in self.next.items():
            unfinished = self.open.get(partition, {})
            expected = min(unfinished) if unfinished else started_next
            point = reported.get(partition, self.committed.get(partition))
            assert point == expected
            assert all(point <= offset for offset in unfinished), "committed past an unfinished offset"
            assert self.tracker.in_flight(partition) == len(unfinished)


TestTrackerModel = TrackerModel.TestCase
TestTrackerModel.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
