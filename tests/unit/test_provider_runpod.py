"""The RunPod connector's pure parts: the run request, the documented status object, its states."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from connectors.providers import SubmitOrder, callback, create
from connectors.providers.base import CALLBACK_HEADER
from connectors.providers.runpod import RunPodJob, RunPodProvider, parse_event, status_from, submit_request
from floodgate.errors import SchemaError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "providers"
CALLBACK_SECRET = "callback-secret-for-runpod-tests"


def test_run_request_carries_input_params_webhook_and_policy() -> None:
    p = create("runpod", name="rp", api_key="rp-key", callback_secret=CALLBACK_SECRET, base_url="https://rp.test")
    assert isinstance(p, RunPodProvider)
    order = SubmitOrder(job_id="job_01", model="ep123", prompt="dunes", image_url=None,
                        webhook_url="https://fg.test/webhooks/rp", idempotency_key="k",
                        params={"steps": "30", "seed": "007"})
    request = submit_request(p.base_url, "rp-key", order, p.callback_for(order, order.model), {"ttl": 600000})
    assert request.url == "https://rp.test/v2/ep123/run" and request.headers["Authorization"] == "Bearer rp-key"
    body = orjson.loads(request.body or b"")
    assert body["input"] == {"steps": 30, "seed": "007", "prompt": "dunes"} and body["policy"] == {"ttl": 600000}
    assert body["webhook"] == callback.callback_url("https://fg.test/webhooks/rp", CALLBACK_SECRET, "rp", "job_01",
                                                    "ep123")


def test_the_documented_status_object_parses_as_a_confirmed_delivery() -> None:
    body = (FIXTURES / "runpod_status_completed.json").read_bytes()
    path = f"job_01/{callback.mac(CALLBACK_SECRET, 'rp', 'job_01', 'ep123')}/ep123"
    event = parse_event({CALLBACK_HEADER: path}, body)
    assert (event.job_id, event.state) == ("job_01", "completed")
    assert event.provider_job_id == "ep123/c80ffee4-f315-4e25-a146-0f3d98cf024b-u1"
    assert event.video_url == "https://storage.example.test/runpod/c80ffee4/output.mp4"


@pytest.mark.parametrize(("status", "state", "error"), [
    ("IN_QUEUE", "queued", None), ("IN_PROGRESS", "running", None), ("RUNNING", "running", None),
    ("FAILED", "failed", "failed"), ("TIMED_OUT", "failed", "timed out"), ("CANCELLED", "cancelled", None)])
def test_states_map(status: str, state: str, error: str | None) -> None:
    got = status_from("ep", {"id": "j", "status": status})
    assert (got.state, got.error, got.provider_job_id) == (state, error, "ep/j")


def test_job_ids_round_trip_and_junk_is_refused() -> None:
    assert str(RunPodJob.parse("ep/j-1")) == "ep/j-1"
    for bad in ("j-1", "ep/", "/j", "ep/j/x"):
        with pytest.raises(SchemaError):
            RunPodJob.parse(bad)
    with pytest.raises(SchemaError):
        status_from("ep", {"id": "j", "status": "PAUSED"})
