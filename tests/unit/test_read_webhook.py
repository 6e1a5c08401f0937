"""What a ``webhooks`` record tells: one reading for the jobs agent and the API's feed."""
from __future__ import annotations

from typing import Any

import pytest

from connectors.providers.base import ProviderEvent, read_webhook
from floodgate import codec
from floodgate.api.bridge import envelope
from floodgate.errors import FloodgateError


class Connector:
    """Parses a body that is the job id (empty: a webhook that names no job)."""

    def parse_webhook(self, headers: dict[str, str], body: bytes) -> ProviderEvent:
        return ProviderEvent(webhook_id=headers["webhook-id"], provider_job_id="p1", job_id=body.decode() or None,
                             state="completed", progress=1.0, video_url=None, error=None, occurred_at=1.0)


def record(provider: str, body: bytes) -> tuple[bytes, Any]:
    return codec.encode("WebhookEnvelope", envelope(provider, {"webhook-id": "w1"}, body, None, 1))


def test_a_webhook_record_reads_as_its_provider_and_event() -> None:
    value, headers = record("sim", b"job-1")
    provider, job_id, event = read_webhook(value, headers, {"sim": Connector()})
    assert (provider, job_id, event.job_id, event.webhook_id, event.state) == ("sim", "job-1", "job-1", "w1",
                                                                               "completed")


@pytest.mark.parametrize(("provider", "body", "why"), [("other", b"job-1", "unknown provider 'other'"),
                                                        ("sim", b"", "names no job")])
def test_an_unknown_provider_or_a_webhook_without_a_job_is_refused(provider: str, body: bytes, why: str) -> None:
    value, headers = record(provider, body)
    with pytest.raises(FloodgateError, match=why):
        read_webhook(value, headers, {"sim": Connector()})


def test_bytes_that_are_not_an_envelope_are_refused() -> None:
    with pytest.raises(Exception):  # noqa: B017 - the codec's own error: the callers take any
        read_webhook(b"\x00not avro", [], {"sim": Connector()})
