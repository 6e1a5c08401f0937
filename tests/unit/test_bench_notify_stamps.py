"""The notification scenario's stamps: with other jobs running beside the measured ones, only the
measured jobs' records are decoded and stamped."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson

from floodgate import codec
from floodgate.bench.notify import Stamps


def webhook(job_id: str, at_ms: int) -> Any:
    body = orjson.dumps({"type": "video.completed", "data": {"metadata": {"job_id": job_id}}})
    value, headers = codec.encode("WebhookEnvelope", {"webhook_id": f"w-{job_id}", "provider": "paced",
                                                      "received_at": at_ms, "headers": {}, "body": body})
    return SimpleNamespace(key=lambda: job_id.encode(), value=lambda: value, headers=lambda: headers,
                           timestamp=lambda: (0, at_ms + 2))


def test_only_wanted_jobs_are_stamped_and_every_job_without_a_wanted_set() -> None:
    wanted: set[str] = {"job_a"}
    own, every = Stamps(wanted), Stamps()
    for stamps in (own, every):
        stamps.on_webhook(webhook("job_a", 1_000))
        stamps.on_webhook(webhook("job_b", 1_000))
    assert set(own.received) == {("job_a", "completed")}
    assert set(every.received) == {("job_a", "completed"), ("job_b", "completed")}
    wanted.add("job_b")  # learned as its 202 arrives: later records of it count
    own.on_webhook(webhook("job_b", 2_000))
    assert own.received[("job_b", "completed")] == 2.0 and own.webhook[("job_b", "completed")] == 2.002


def test_every_jobs_webhook_records_are_counted_per_window_without_decoding() -> None:
    own = Stamps({"job_a"})
    for at_ms in (1_000, 1_010, 1_100, 1_260, 1_740):  # windows 4, 4, 4, 5, 6 (250 ms each)
        own.on_webhook(webhook("job_b", at_ms))  # not a measured job: counted, not stamped
    own.on_webhook(SimpleNamespace(key=lambda: b"job_c", value=lambda: b"not avro", headers=lambda: [],
                                   timestamp=lambda: (0, 1_500)))
    assert own.received == {}
    convoy = own.convoy()
    assert convoy["window_ms"] == 250 and convoy["most"] == 3
    assert convoy["per_s_mean"] == 6 / 0.75  # six records over three windows
    assert Stamps().convoy()["most"] == 0
