"""Publish job requests straight to Kafka from an application backend.

The SDK applies the same validation as the HTTP API (:func:`floodgate.validation.validate_job_request`)
and writes the same ``JobRequest`` record (``source="sdk"``) to ``<topic_prefix>requests``, keyed
by job id. A call returns only once the broker acknowledged the record (``acks=all``, idempotent
producer), so a returned job id is durable::

    from floodgate.sdk import FloodgateClient

    with FloodgateClient("localhost:9092", tenant="acme") as client:
        job_id = client.submit("kling-2.1", "a paper boat in the rain", user_id="u-1")

Idempotency: with ``idempotency_key`` the job id is derived with HMAC from ``(tenant, key)``
under the client's ``id_secret``, so resubmitting gives the same id and the pipeline drops the
duplicate. The default secret is random *per client instance*: it makes retries within one
client idempotent, but another process (or a restarted one) derives different ids. For
idempotency across processes, pass the same ``id_secret`` (at least 16 bytes) everywhere.

Failures: a :class:`DeliveryError` names its record's job id (``job_id``; a
:class:`BatchDeliveryError` lists them all in ``job_ids``). Each client bounds how long after its
hand-over a record can still be written (``send_timeout``, 8 s by default), and a call that
waits its default ``timeout`` reports a record unacknowledged only once that bound has passed:
"not sent" means it was not written, "outcome unknown" that it may have been written but will
not be later. Either way resubmit with the same ``idempotency_key``: the pipeline's jobs agent
drops a request whose job id it admitted already, so a retry cannot make a second job (an unkeyed
retry gets a new job id and can). After a fatal error of the idempotent producer, a client fails
what that producer held and uses a new one for the next call.

Modules:

- ``prepare``: :class:`JobSpec` and what both clients do before sending: validate a request as
  the HTTP API does and encode its ``JobRequest`` record, job id and headers.
- ``options``: producer options and deadlines derived from ``send_timeout`` for both clients
  (librdkafka's ``message.timeout.ms``, aiokafka's ``request_timeout_ms``).
- ``failures``: a librdkafka delivery report as a :class:`DeliveryError`, and the error a call
  raises for its failed records, with their job ids.
- ``sync_client``: :class:`FloodgateClient` (confluent-kafka) and its producer renewal.
- ``async_client``: :class:`AsyncFloodgateClient` (aiokafka) and the per-record deadline it
  enforces by stopping its producer: the only code that reaches into aiokafka's internals.
"""
from __future__ import annotations

from floodgate.errors import BatchDeliveryError, DeliveryError, Problem, ValidationError
from floodgate.errors import ConfigError as ConfigError
from floodgate.push import PushTarget
from floodgate.sdk.async_client import AsyncFloodgateClient
from floodgate.sdk.options import VERDICT_SLACK as VERDICT_SLACK
from floodgate.sdk.prepare import DEFAULT_LIMITS as DEFAULT_LIMITS
from floodgate.sdk.prepare import MAX_IDEMPOTENCY_KEY_CHARS as MAX_IDEMPOTENCY_KEY_CHARS
from floodgate.sdk.prepare import SOURCE as SOURCE
from floodgate.sdk.prepare import JobSpec
from floodgate.sdk.sync_client import FloodgateClient
from floodgate.validation import RequestLimits as RequestLimits

__all__ = [
    "AsyncFloodgateClient",
    "BatchDeliveryError",
    "DeliveryError",
    "FloodgateClient",
    "JobSpec",
    "Problem",
    "PushTarget",
    "ValidationError",
]
