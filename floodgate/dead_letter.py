"""What a parked record looks like: the ``DeadLetter`` written to the ``dlq`` topic. Pure.

One builder for every stage that gives up on a record (the stream agents and the outgoing
webhooks), so a dead letter says the same things whoever wrote it: the reason, where the record
came from, and its key, bytes and headers as they were, ready to be replayed.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class SourceRecord(Protocol):
    """A consumed Kafka record; aiokafka's ``ConsumerRecord`` and Faust's ``Message`` both fit."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> Any: ...
    @property
    def value(self) -> Any: ...
    @property
    def headers(self) -> Any: ...


def dead_letter_record(source: SourceRecord, reason: str, exc: BaseException | None, *, at_ms: int) -> dict[str, Any]:
    """The ``DeadLetter`` record for ``source``, parked at ``at_ms`` (epoch milliseconds) because of ``exc``.

    Header values are decoded as UTF-8 with invalid bytes replaced; a valueless header becomes "".
    """
    raw = source.headers or ()
    items = raw.items() if isinstance(raw, Mapping) else raw
    headers = {str(name): _text(value) for name, value in items}
    key = source.key
    return {
        "reason": reason,
        "error_type": type(exc).__name__ if exc is not None else "",
        "source_topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "key": key if key is None or isinstance(key, bytes) else _bytes(key),
        "original": _bytes(source.value),
        "headers": headers,
        "at": at_ms,
    }


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode()


__all__ = ["SourceRecord", "dead_letter_record"]
