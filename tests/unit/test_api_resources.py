"""The public job shape and time formatting."""
from __future__ import annotations

from floodgate.api.heard import HEARD
from floodgate.api.resources import iso_ms, job_resource, presumed_queued
from floodgate.ids import job_id_for_key, new_job_id
from floodgate.queueboard import Standing


def test_iso_ms() -> None:
    assert iso_ms(0) is None and iso_ms(None) is None
    assert iso_ms(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert iso_ms(1_700_000_000_000) == "2023-11-14T22:13:20.000Z"


def test_job_resource_shape() -> None:
    snapshot = {"job_id": "j", "tenant": "t", "user_id": "u", "model": "m", "provider": "p",
                "provider_job_id": "x", "status": "completed", "progress": 1.0, "video_url": "https://v/1.mp4",
                "error": None, "attempt": 1, "created_at": 1_700_000_000_000, "updated_at": 1_700_000_001_000,
                "webhook_url": "https://hook", "metadata": {"a": "b"}, "version": 4}
    assert job_resource(snapshot) == {
        "job_id": "j", "status": "completed", "model": "m", "provider": "p", "progress": 1.0,
        "result": {"video_url": "https://v/1.mp4"}, "error": None,
        "created_at": "2023-11-14T22:13:20.000Z", "updated_at": "2023-11-14T22:13:21.000Z", "metadata": {"a": "b"},
        "priority": "standard", "serving_model": "m", "route_note": None,
        "queue_position": None, "provider_queue_position": None, "eta_seconds": None, "eta_ready_seconds": None,
        "final": True,
    }
    assert job_resource({**snapshot, "video_url": None})["result"] is None
    at_provider = job_resource({**snapshot, "status": "submitted", "provider_queue_position": 3})
    assert (at_provider["queue_position"], at_provider["provider_queue_position"]) == (None, 3)
    waiting = job_resource({**snapshot, "status": "queued", "priority": "low"}, standing=Standing(12, 30.5, 90.0))
    assert (waiting["priority"], waiting["queue_position"], waiting["eta_seconds"], waiting["eta_ready_seconds"]) == (
        "low", 12, 30.5, 90.0)


def test_presumed_queued_dates_come_from_the_id() -> None:
    job_id = new_job_id(now_ms=1_700_000_000_000)
    assert job_resource(presumed_queued(job_id))["created_at"] == "2023-11-14T22:13:20.000Z"
    keyed = job_id_for_key(b"s" * 32, "t", "k")
    assert job_resource(presumed_queued(keyed))["created_at"] is None
    assert job_resource(presumed_queued(keyed))["status"] == "queued"


def test_only_a_recorded_end_is_final() -> None:
    job = {"job_id": "j", "status": "completed", "video_url": "https://v/1.mp4", "version": 4}
    assert job_resource(job)["final"] is True
    # The provider's word, shown before the worker records it: a cancel may still overtake it.
    assert job_resource({**job, HEARD: True})["final"] is False
    for status in ("queued", "submitted", "running"):
        assert job_resource({**job, "status": status})["final"] is False
