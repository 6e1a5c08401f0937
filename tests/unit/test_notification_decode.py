"""Reading a ``notifications`` record: the job view's direct reading of a jobs-table value gives
exactly the snapshot the job state would, and anything it cannot vouch for takes the long way."""
from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floodgate.errors import SchemaError
from floodgate.jobs.record import JobRecord, decode_notification, read_notification, snapshot
from floodgate.jobs.state import JobState, JobStatus

_text = st.text(max_size=12)
_maybe = st.none() | _text
_time = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)

states = st.builds(
    JobState, job_id=st.text(min_size=1, max_size=24), tenant=_maybe, user_id=_maybe, model=_maybe,
    provider=_maybe, provider_job_id=_maybe, status=st.sampled_from(list(JobStatus)),
    progress=st.floats(min_value=0, max_value=1), video_url=_maybe, error=_maybe,
    attempt=st.integers(0, 5), created_at=_time, updated_at=_time, webhook_url=_maybe,
    metadata=st.dictionaries(_text, _text, max_size=3), push_platform=_maybe, push_token=_maybe,
    priority=st.none() | st.sampled_from(["high", "standard", "low"]), deadline_at=st.none() | _time,
    request_hash=_maybe, serving_model=_maybe, route_note=_maybe, lined_at=st.none() | _time,
    recent_events=st.lists(_text, max_size=3).map(tuple), version=st.integers(0, 1000))


@settings(max_examples=300, deadline=None)
@given(state=states, event=_maybe, src=st.none() | st.tuples(st.integers(0, 8), st.integers(0, 10**9)))
def test_the_direct_reading_gives_the_states_snapshot(state: JobState, event: str | None,
                                                      src: tuple[int, int] | None) -> None:
    raw = JobRecord(state, event, src).encode()
    assert decode_notification(raw) == snapshot(state)
    assert read_notification(raw) == (snapshot(state), src)


def _raw(**changes: Any) -> bytes:
    doc = orjson.loads(JobRecord(JobState(job_id="j1", tenant="t", version=3)).encode())
    doc["s"].update(changes)
    return orjson.dumps({k: v for k, v in doc.items()})


@pytest.mark.parametrize("changes", [
    {"status": "lost"}, {"job_id": ""}, {"version": -1}, {"attempt": True}, {"progress": 2.0},
    {"created_at": "yesterday"}, {"metadata": {"k": 1}}, {"tenant": 7}, {"recent_events": "x"},
    {"deadline_at": "soon"},
])
def test_a_state_the_job_state_refuses_is_refused_the_same_way(changes: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        decode_notification(_raw(**changes))


def test_bytes_that_are_not_a_record_are_a_schema_error() -> None:
    for raw in (b"{not json", b"[1, 2]", b'{"v": 1}', b'{"v": 1, "s": 3}'):
        with pytest.raises(SchemaError):
            decode_notification(raw)
