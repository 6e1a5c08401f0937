"""The dispatch path's records: slots and waiting orders share the ``inflight-<provider>`` table and
are told apart by their first field, in today's encoding and in the one before fields had names."""
from __future__ import annotations

import pytest

from floodgate.dispatch import Order, Parked, Slot, is_parked, unsubmitted


@pytest.mark.parametrize("raw", [
    Parked(Order(job_id="j", tenant="t", model="m", provider="p", provider_model="pm", prompt="x", attempt=0,
                 queued_at=1), 5).encode(),
    b'{"o":{"job_id":"j"},"n":5}',  # written before the fields had names
])
def test_a_waiting_order_is_told_from_a_slot_by_its_first_field(raw: bytes) -> None:
    assert is_parked(raw)


@pytest.mark.parametrize("raw", [
    Slot(attempt=0, taken_at=1.0, order=Order(job_id="j", tenant="t", model="m", provider="p", provider_model="pm",
                                               prompt="x", attempt=0, queued_at=1)).encode(),
    b'{"a":0,"t":1.0,"o":{},"pj":null}',
])
def test_a_slot_is_not_a_waiting_order(raw: bytes) -> None:
    assert not is_parked(raw)


def test_a_slot_not_yet_accepted_by_its_provider_is_told_by_its_last_field() -> None:
    order = Order(job_id="j", tenant="t", model="m", provider="p", provider_model="pm", prompt="x", attempt=0,
                  queued_at=1)
    taken = Slot(attempt=0, taken_at=1.0, order=order)
    assert unsubmitted(taken.encode()) and unsubmitted(b'{"a":0,"t":1.0,"o":{},"pj":null}')
    assert not unsubmitted(taken.submitted("pj-1").encode())
    assert not unsubmitted(b'{"a":0,"t":1.0,"o":{},"pj":"pj-1"}')


def test_a_table_value_holds_no_more_memory_than_its_bytes() -> None:
    """Waiting orders live in memory by the tens of thousands: orjson's own bytes kept about 4 KB
    each whatever their length (the worker's RSS grew by 3.9 KB per queued job)."""
    import tracemalloc

    order = Order(job_id="j" * 32, tenant="t", model="m", provider="p", provider_model="pm", prompt="x" * 200,
                  attempt=0, queued_at=1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [Parked(order, i).encode() for i in range(200)]
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown / len(kept) < 2 * len(kept[0]) + 100, (grown / len(kept), len(kept[0]))
