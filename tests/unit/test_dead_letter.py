"""The one DeadLetter builder, fed the two kinds of consumed record that get parked."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRecord

from floodgate import codec
from floodgate.dead_letter import dead_letter_record


@dataclass
class FaustLikeMessage:  # the attributes of faust.types.tuples.Message that matter here
    topic: str
    partition: int
    offset: int
    key: Any
    value: Any
    headers: Any


def test_an_aiokafka_record_is_kept_byte_for_byte_and_round_trips() -> None:
    record = ConsumerRecord(topic="t.results", partition=3, offset=41, timestamp=0, timestamp_type=0,
                            key=b"job_1", value=b"\x00\xffraw", checksum=None, serialized_key_size=5,
                            serialized_value_size=5, headers=(("fg-schema", b"JobSnapshot/1"), ("bin", b"\xff"),
                                                              ("empty", None)))
    letter = dead_letter_record(record, "webhook delivery failed", ValueError("boom"), at_ms=1234)
    assert letter == {
        "reason": "webhook delivery failed", "error_type": "ValueError", "source_topic": "t.results",
        "partition": 3, "offset": 41, "key": b"job_1", "original": b"\x00\xffraw",
        "headers": {"fg-schema": "JobSnapshot/1", "bin": "\ufffd", "empty": ""}, "at": 1234,
    }
    value, headers = codec.encode("DeadLetter", letter)
    assert codec.decode("DeadLetter", value, headers) == letter


def test_a_faust_message_with_odd_key_value_and_headers_still_parks() -> None:
    message = FaustLikeMessage("t.requests", 0, 7, key="text-key", value=bytearray(b"{"), headers={"h": "v"})
    letter = dead_letter_record(message, "invalid request", None, at_ms=5)
    assert (letter["key"], letter["original"], letter["headers"], letter["error_type"]) == (
        b"text-key", b"{", {"h": "v"}, "")
    none = dead_letter_record(FaustLikeMessage("t", 0, 0, None, None, None), "r", None, at_ms=0)
    assert (none["key"], none["original"], none["headers"]) == (None, b"", {})
