"""Telling librdkafka's fatal errors apart, as confluent-kafka reports them. Pure.

An idempotent producer that cannot keep its sequence numbers (an out-of-order sequence, a fenced
producer id) suffers a *fatal* error: that producer instance takes no more records, and whoever
owns it must make a new one. confluent-kafka does not say so in one place (seen with
confluent-kafka 2.16.1, librdkafka 2.16.0; ``tests/unit/test_sdk_fatal.py`` and
``tests/unit/test_api_sender_fatal.py`` raise a real one on librdkafka's mock cluster):

- ``poll()`` and ``flush()`` raise the fatal error itself (a ``KafkaException`` whose error has
  ``fatal()``), or, when a delivery report was served in the same call, a ``SystemError`` caused
  by it, or (seen under load, the same test) a ``SystemError`` with nothing in it at all ("returned
  NULL without setting an exception");
- ``produce()`` answers ``_FATAL`` from then on, an error whose ``fatal()`` is False;
- records still queued are reported ``_PURGE_QUEUE``.
"""
from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException


def is_fatal(err: KafkaError) -> bool:
    """Whether ``err`` says the producer instance takes no more records."""
    return bool(err.fatal()) or err.code() == KafkaError._FATAL


def fatal_in(exc: BaseException) -> KafkaError | None:
    """The fatal error that ``poll()``/``flush()``/``produce()`` raised (directly or as the cause
    of a ``SystemError``), or None for anything else. A ``SystemError`` that carries no Kafka error
    counts as fatal too: confluent-kafka's C code failed while serving the producer, which is what
    a fatal error does to it, and treating it so costs a new producer where keeping a broken one
    would cost every later record."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        if isinstance(candidate, KafkaException) and candidate.args and isinstance(candidate.args[0], KafkaError) \
                and is_fatal(candidate.args[0]):
            return candidate.args[0]
    if isinstance(exc, SystemError) and not isinstance(exc.__cause__ or exc.__context__, KafkaException):
        return KafkaError(KafkaError._FATAL, f"the producer failed inside confluent-kafka: {exc}", fatal=True)
    return None


__all__ = ["fatal_in", "is_fatal"]
