"""One error tree for Floodgate.

    FloodgateError
    ├── ConfigError                 bad or missing setting; never retriable
    ├── ValidationError             bad input (HTTP 400 / dead letter); carries problems
    ├── SchemaError                 bytes that do not decode against a contract
    ├── WebhookVerificationError    signature/timestamp check failed (HTTP 401)
    ├── BrokerError                 the local Kafka broker could not be started/stopped
    ├── ProviderError               a provider call failed
    │   ├── RateLimited             429: retriable, honours retry_after
    │   ├── ProviderUnavailable     5xx / outage / connection error: retriable, may trigger fallback
    │   ├── ProviderRejected        4xx other than 429: the request itself is wrong; not retriable
    │   └── ProviderGone            410 / retired model: not retriable, reroute to the next provider
    ├── DeliveryError               Kafka did not acknowledge a record (retriable says if a retry may help)
    │   ├── KafkaUnavailable        broker down, timeout, unknown topic: retriable after ~1 s
    │   ├── RecordTooLarge          refused for its size: not retriable
    │   └── BatchDeliveryError      some records of an SDK batch failed (per-record errors inside)
    ├── NotificationError           one outgoing-webhook delivery attempt failed
    └── StorageError                copying a provider's video into our store failed (see retriable)

Code that retries, reroutes or dead-letters asks the error (``retriable``,
``retry_after``, ``reroute``) rather than matching on types.
"""
from __future__ import annotations

from dataclasses import dataclass


class FloodgateError(Exception):
    """Base of every error Floodgate raises on purpose."""

    retriable: bool = False
    reroute: bool = False
    retry_after: float | None = None


class ConfigError(FloodgateError):
    """A setting is missing or malformed."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input. ``field`` is a JSON pointer-ish dotted path, e.g. ``input.prompt``."""

    field: str
    message: str


class ValidationError(FloodgateError):
    """Input failed validation. ``problems`` names every field at fault."""

    def __init__(self, problems: list[Problem] | Problem, message: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        text = message or "; ".join(f"{p.field}: {p.message}" for p in self.problems)
        super().__init__(text)


class SchemaError(FloodgateError):
    """Bytes that do not decode (or a record that does not encode) against its Avro contract."""


class WebhookVerificationError(FloodgateError):
    """A webhook's signature, id or timestamp did not verify."""


class BrokerError(FloodgateError):
    """The local Kafka broker could not be prepared, started or stopped."""


class ProviderError(FloodgateError):
    """A call to a video provider failed."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class RateLimited(ProviderError):
    retriable = True


class ProviderUnavailable(ProviderError):
    retriable = True
    reroute = True


class ProviderRejected(ProviderError):
    pass


class ProviderGone(ProviderError):
    reroute = True


class DeliveryError(FloodgateError):
    """The broker did not acknowledge a record in time or refused it.

    ``retriable`` is true for timeouts and transient broker errors: the same call may succeed
    later (use an idempotency key so a late first copy and the retry share one job id).
    ``job_id``: the job the record was for, when the SDK knows it (it made the id).
    """

    job_id: str | None = None

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class KafkaUnavailable(DeliveryError):
    """Not acknowledged (broker down, timeout, unknown topic...); retry later."""

    retriable = True
    retry_after = 1.0


class RecordTooLarge(DeliveryError):
    """The broker or producer refused the record for its size; retrying will not help."""


class BatchDeliveryError(DeliveryError):
    """Some records of an SDK ``submit_many`` batch were not acknowledged.

    ``job_ids`` lists every job id of the batch in input order; ``failures`` maps the index of
    each failed record to its error. Records not listed in ``failures`` were acknowledged.
    """

    def __init__(self, job_ids: list[str], failures: dict[int, DeliveryError]) -> None:
        first = min(failures)
        super().__init__(
            f"{len(failures)} of {len(job_ids)} records failed; first [{first}]: {failures[first]}",
            retriable=all(e.retriable for e in failures.values()),
        )
        self.job_ids = job_ids
        self.failures = failures


class NotificationError(FloodgateError):
    """One outgoing notification attempt failed.

    ``retriable``: a later attempt may succeed (timeouts, connection errors, 5xx, 408, 429).
    ``retry_after``: seconds the receiver asked us to wait, when it said so.
    ``status``: the HTTP status, when there was a response.
    """

    def __init__(self, message: str, *, retriable: bool, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.retry_after = retry_after
        self.status = status


class StorageError(FloodgateError):
    """Copying a provider's video into Floodgate's store failed.

    ``retriable``: a later attempt may work (timeouts, 5xx, 429, the store unreachable); not
    for a refusal that will not change (too large, not a video, a forbidden destination, 4xx).
    """

    def __init__(self, message: str, *, retriable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.retry_after = retry_after


__all__ = [
    "BatchDeliveryError",
    "BrokerError",
    "DeliveryError",
    "KafkaUnavailable",
    "NotificationError",
    "RecordTooLarge",
    "ConfigError",
    "FloodgateError",
    "Problem",
    "ProviderError",
    "ProviderGone",
    "ProviderRejected",
    "ProviderUnavailable",
    "RateLimited",
    "SchemaError",
    "StorageError",
    "ValidationError",
    "WebhookVerificationError",
]

