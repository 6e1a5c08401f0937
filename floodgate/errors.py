"""One error tree for Floodgate.

    FloodgateError
    ├── ConfigError                 bad or missing setting; never retriable
    ├── ValidationError             bad input (HTTP 400 / dead letter); carries problems
    ├── SchemaError                 bytes that do not decode against a contract
    ├── WebhookVerificationError    signature/timestamp check failed (HTTP 401)
    ├── BrokerError                 the local Kafka broker could not be started/stopped
    └── ProviderError               a provider call failed
        ├── RateLimited             429: retriable, honours retry_after
        ├── ProviderUnavailable     5xx / outage / connection error: retriable, may trigger fallback
        ├── ProviderRejected        4xx other than 429: the request itself is wrong; not retriable
        └── ProviderGone            410 / retired model: not retriable, reroute to the next provider

Code that retries, reroutes or dead-letters asks the error (``retriable``,
``retry_after``, ``reroute``) rather than matching on types.
"""
from __future__ import annotations

from dataclasses import dataclass, field


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


__all__ = [
    "BrokerError",
    "ConfigError",
    "FloodgateError",
    "Problem",
    "ProviderError",
    "ProviderGone",
    "ProviderRejected",
    "ProviderUnavailable",
    "RateLimited",
    "SchemaError",
    "ValidationError",
    "WebhookVerificationError",
]
