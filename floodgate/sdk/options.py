"""Producer options of both clients, from their keywords and ``send_timeout``: librdkafka's names
and ``message.timeout.ms`` for the sync client, aiokafka's ``request_timeout_ms`` and the async
client's patience, and how long past ``send_timeout`` a call waits by default. No I/O."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from floodgate.errors import ConfigError

# confluent-kafka's own (Python-level) options, spelled with underscores on purpose.
_PYTHON_OPTIONS = frozenset({"error_cb", "throttle_cb", "stats_cb", "oauth_cb", "on_delivery", "logger"})


def librdkafka_config(options: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword options → librdkafka names: ``linger_ms`` → ``linger.ms`` (keywords cannot hold dots)."""
    return {k if k in _PYTHON_OPTIONS else k.replace("_", "."): v for k, v in options.items()}


VERDICT_SLACK = 2.0
"""Seconds past ``send_timeout`` that a call waits by default: librdkafka looks for expired
records about once a second (measured: up to 1.0 s late), and the async client needs a moment
to fail what a stopped producer held."""


def _check_send_timeout(send_timeout: float) -> None:
    if not isinstance(send_timeout, int | float) or not 0 < send_timeout < math.inf:
        raise ConfigError(f"send_timeout must be a positive number of seconds, not {send_timeout!r}")


def librdkafka_timeout_ms(config: dict[str, Any], send_timeout: float) -> int:
    """librdkafka's ``message.timeout.ms`` for a client whose records must settle within
    ``send_timeout`` seconds: that bound, or a shorter one the caller configured (its alias
    ``delivery.timeout.ms`` too; both are taken out of ``config``). Without it librdkafka keeps
    an unacknowledged record queued for 300 s, long after its ``submit`` gave up."""
    _check_send_timeout(send_timeout)
    bound = math.ceil(send_timeout * 1000)
    given = [config.pop(name) for name in ("message.timeout.ms", "delivery.timeout.ms") if name in config]
    if not given:
        return bound
    try:
        chosen = int(given[-1])  # librdkafka applies the later of two aliases too
    except (TypeError, ValueError):
        raise ConfigError(f"message_timeout_ms must be milliseconds, not {given[-1]!r}") from None
    if not 0 < chosen <= bound:  # 0 is librdkafka's "never"
        raise ConfigError(f"message_timeout_ms={chosen} would let a record be written after its submit gave up: "
                          f"it must be 1..{bound} (send_timeout={send_timeout:g}s); raise send_timeout instead")
    return chosen


def aiokafka_timeouts(config: dict[str, Any], send_timeout: float) -> tuple[int, float]:
    """aiokafka's ``request_timeout_ms`` and the client's patience (seconds) for a client whose
    records must settle within ``send_timeout``: a request gets at most half of it (default: half),
    the patience what is left, so that patience + the wind-down of a stop fit in ``send_timeout``.
    aiokafka's default, 40 s, let a record go out long after its ``submit`` gave up."""
    _check_send_timeout(send_timeout)
    half = send_timeout * 1000 / 2
    given = config.pop("request_timeout_ms", None)
    if given is None:
        request_ms = max(1, math.floor(half))
    else:
        try:
            request_ms = int(given)
        except (TypeError, ValueError):
            raise ConfigError(f"request_timeout_ms must be milliseconds, not {given!r}") from None
        if not 0 < request_ms <= half:
            raise ConfigError(f"request_timeout_ms={request_ms} must be 1..{math.floor(half)} "
                              f"(half of send_timeout={send_timeout:g}s); raise send_timeout instead")
    patience = send_timeout - request_ms / 1000
    linger = config.get("linger_ms", 0)
    if not isinstance(linger, int | float) or not 0 <= linger < patience * 1000:
        raise ConfigError(f"linger_ms={linger!r} must be shorter than {patience * 1000:g} ms: a record lingering "
                          "that long would be abandoned before it is sent")
    return request_ms, patience

