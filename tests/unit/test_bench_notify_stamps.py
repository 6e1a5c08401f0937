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
