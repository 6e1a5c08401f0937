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


def test_orders_read_back_share_what_they_repeat() -> None:
    """A line holds tens of thousands of decoded orders: no ``__dict__`` each, one copy of the
    strings every order repeats, one empty mapping for the params or metadata an order lacks."""
    def read(i: int) -> Order:
        raw = Parked(Order(job_id=f"job-{i}", tenant="".join(["ten", "ant"]), model="kling-2.1", provider="kling",
                           provider_model="kling-v2", prompt=f"p{i}", attempt=0, queued_at=i,
                           metadata={"user": str(i)}), i).encode()
        return Parked.decode(raw).order

    a, b = read(1), read(2)
    assert not hasattr(a, "__dict__")
    assert a.tenant is b.tenant and a.model is b.model and a.provider_model is b.provider_model
    assert a.priority is b.priority and a.params is b.params and not a.params
    assert a.metadata == {"user": "1"} and b.metadata == {"user": "2"}
    assert a.to_record()["params"] == {} and Order.from_record(a.to_record()) == a
