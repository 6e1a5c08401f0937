"""Why the submitter never leaves a dispatch record unacknowledged while it reads on.

faust-streaming computes the offset to commit from the acknowledged offsets of a partition, and it
does not stop at an unacknowledged offset right at the head: with offset 31 committed (31 is next
to process) and only 32 acknowledged, it commits 33, and offset 31 is never delivered again. The
submitter used to keep orders waiting for a slot unacknowledged; on a graceful stop Faust
acknowledges the events it skips, and one waiting order was lost now and then. These tests pin
that behaviour of the installed Faust: if one fails, Faust changed, and ``streams.lane``'s
waiting table may no longer be needed (but stays correct)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

TP0 = TP("dispatch", 0)


def _next_commit(committed: int | None, acked: list[int]) -> int | None:
    state = SimpleNamespace(_acked={TP0: list(acked)}, _acked_index={TP0: set(acked)}, _gap={TP0: IntervalTree()},
                            _committed_offset={TP0: committed})
    # arg-type: the unbound method runs on a namespace holding only the attributes it reads
    return Consumer._new_offset(state, TP0)  # type: ignore[arg-type]


def test_faust_holds_back_a_commit_behind_two_or_more_unacknowledged_offsets() -> None:
    assert _next_commit(31, [33, 34]) is None


@pytest.mark.parametrize(("committed", "acked", "skips_to"), [
    (31, [32], 33),  # offset 31 was never acknowledged
    (0, [3], 4),  # nothing acknowledged before: no check at all
    (None, [5, 6], 7),
])
def test_faust_commits_past_unacknowledged_offsets_at_the_head(committed: int | None, acked: list[int],
                                                               skips_to: int) -> None:
    assert _next_commit(committed, acked) == skips_to
