"""What ``floodgate replay`` sends again, and why it skips the rest. Pure: no Kafka, no files, no
clock (times are arguments).

A replay reads candidate records (dead letters, lines of a file, a time range of a topic), turns
each into the ``requests`` record to send, and skips what must not be sent:

* **filtered**: a dead letter that did not come from ``requests``, or outside ``--reason``,
  ``--since``/``--until``;
* **invalid**: bytes that are not a job request even now (the reason says which field);
* **duplicate**: a job id the jobs table already admitted (seen on ``notifications``), or one
  this run already sent.

Idempotency rests on the job id, the key the jobs agent dedupes on: a job id already in its table
is a duplicate unless it is the same ``requests`` record again, and a replayed record is always a
new record. So a replayed request keeps its job id byte for byte, and a JSON line that names none
(a kcat line the agent dead-lettered for it) gets the id an Idempotency-Key would give it,
:func:`floodgate.ids.job_id_for_key` over the deployment's secret, with the key
``replay:sha256:<hex digest of the original bytes>``: the same bytes replayed twice get the same
id, so the second is a duplicate whoever sends it. Skipping duplicates here only saves the agent
the work and makes the summary exact; the agent would drop them anyway.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

from floodgate import codec
from floodgate.codec import SCHEMA_HEADER
from floodgate.errors import ConfigError, SchemaError, ValidationError
from floodgate.ids import job_id_for_key
from floodgate.jobs.record import JobRecord, is_avro
from floodgate.validation import keyed_headers

DERIVED_KEY_PREFIX = "replay:sha256:"

Header = tuple[str, bytes]


class Skip(StrEnum):
    FILTERED = "filtered"
    INVALID = "invalid"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One record read from a source, as it was."""

    origin: str
    """Where it was read: ``dlq[0]@12``, ``jobs.jsonl:3``, ``floodgate.requests[1]@40``."""
    value: bytes
    headers: tuple[Header, ...] = ()
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A ``requests`` record to send, keyed by its job id."""

    origin: str
    job_id: str
    model: str
    value: bytes
    headers: tuple[Header, ...]
    derived_id: bool = False
    """True when the job id was derived from the bytes (the original named none)."""


@dataclass(frozen=True, slots=True)
class Skipped:
    origin: str
    kind: Skip
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters to replay. ``reason``: a case-insensitive substring of the dead
    letter's reason; ``since_ms``/``until_ms``: bounds on when it was parked (inclusive,
    exclusive); ``source_topic``: the topic the parked record came from (the requests topic)."""

    source_topic: str
    reason: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def why_not(self, letter: Mapping[str, Any]) -> str | None:
        """Why ``letter`` (a decoded ``DeadLetter``) is left out, or None to replay it."""
        if letter["source_topic"] != self.source_topic:
            return f"came from {letter['source_topic']}, not {self.source_topic}"
        if self.reason is not None and self.reason.lower() not in str(letter["reason"]).lower():
            return "reason does not match --reason"
        if self.since_ms is not None and letter["at"] < self.since_ms:
            return "parked before --since"
        if self.until_ms is not None and letter["at"] >= self.until_ms:
            return "parked at or after --until"
        return None


def dead_letter_candidate(letter: Mapping[str, Any], origin: str) -> Candidate:
    """The parked record of a decoded ``DeadLetter``: its original bytes, key and headers."""
    headers = tuple((str(k), str(v).encode("utf-8")) for k, v in (letter.get("headers") or {}).items())
    return Candidate(origin=origin, value=bytes(letter["original"]), headers=headers, key=letter.get("key"))


def container_candidate(record: Mapping[str, Any], origin: str) -> Candidate:
    """A record of an Avro container file of job requests, as the JSON line it stands for.

    Going through JSON lets one path check records of any writer schema (the file's own, which
    may be older or partial) against the current contract, with its defaults and field names.
    """
    options = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME  # datetimes through _json_default
    return Candidate(origin=origin, value=orjson.dumps(record, default=_json_default, option=options))


def derived_job_id(secret: bytes, tenant: str, original: bytes) -> tuple[str, str]:
    """The job id (and the key it is derived from) for a request that names none."""
    key = DERIVED_KEY_PREFIX + hashlib.sha256(original).hexdigest()
    return job_id_for_key(secret, tenant, key), key


def prepare(candidate: Candidate, *, secret: bytes, now_ms: int) -> Outgoing | Skipped:
    """The record to send for ``candidate``, or why it is invalid.

    The bytes are checked as the jobs agent decodes them (Avro with its header, or a JSON line).
    A JSON line without a ``job_id`` gets :func:`derived_job_id` written into it (and, when it
    has none, that key as its ``idempotency_key``); every other record is sent byte for byte.
    Validation against the routing (known model, URLs) is left to the jobs agent, which applies
    it to the deployment as it is when the record arrives.
    """
    headers = candidate.headers
    value = candidate.value
    derived = False
    try:
        try:
            record = codec.decode_request(value, headers, now_ms=now_ms)
        except ValidationError as exc:
            if not _only_job_id_missing(exc) or not _is_json(value, headers):
                raise
            value = _with_derived_id(value, secret)
            derived = True
            record = codec.decode_request(value, headers, now_ms=now_ms)
    except (SchemaError, ValidationError) as exc:
        return Skipped(candidate.origin, Skip.INVALID, f"not a job request: {exc}")
    # As the ingress and the SDK do: an ingress-only API learns the key's body from this header
    # (floodgate.api.keyed), so a later POST with the key and another body is 422 there too.
    headers = tuple(keyed_headers(list(headers), record["idempotency_key"], record["request_hash"]))
    return Outgoing(origin=candidate.origin, job_id=record["job_id"], model=record["model"], value=value,
                    headers=headers, derived_id=derived)


def _only_job_id_missing(exc: ValidationError) -> bool:
    return bool(exc.problems) and all(p.field == "job_id" for p in exc.problems)


def _is_json(value: bytes, headers: Iterable[Header]) -> bool:
    return not any(name == SCHEMA_HEADER for name, _ in headers) and value.lstrip()[:1] == b"{"


def _with_derived_id(value: bytes, secret: bytes) -> bytes:
    doc = orjson.loads(value)  # decode_request parsed it already: a JSON object
    tenant = doc.get("tenant") if isinstance(doc.get("tenant"), str) and doc.get("tenant") else "default"
    job_id, key = derived_job_id(secret, tenant, value)
    doc["job_id"] = job_id
    doc.setdefault("idempotency_key", key)
    return orjson.dumps(doc)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):  # a container written with timestamp-millis logical types
        return int(value.timestamp() * 1000)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON")


class Ledger:
    """Which job ids are duplicates: admitted by the jobs table, or sent earlier in this run."""

    def __init__(self, admitted: Iterable[str] = ()) -> None:
        self.admitted = set(admitted)
        self.sent: set[str] = set()

    def check(self, out: Outgoing) -> Skipped | None:
        """None if ``out`` should be sent (and remember it as sent), else why not."""
        if out.job_id in self.admitted:
            return Skipped(out.origin, Skip.DUPLICATE, f"{out.job_id} is already a job")
        if out.job_id in self.sent:
            return Skipped(out.origin, Skip.DUPLICATE, f"{out.job_id} is sent earlier in this replay")
        self.sent.add(out.job_id)
        return None


class AdmittedJobs:
    """Folds ``notifications`` records (the jobs table's changelog) into the set of job ids whose
    request the table admitted. Only ``wanted`` ids are kept, so memory follows the replay, not
    the table. A job a cancel created before its request arrived is not admitted yet: its request
    would still be taken, so it is no duplicate."""

    def __init__(self, wanted: Iterable[str]) -> None:
        self.wanted = frozenset(wanted)
        self._state: dict[str, bool] = {}

    def add(self, key: bytes | None, value: bytes | None, headers: Any = None) -> None:
        if key is None:
            return
        job_id = key.decode("utf-8", "replace")
        if job_id not in self.wanted:
            return
        if value is None:  # a tombstone: the job is gone from the table
            self._state.pop(job_id, None)
            return
        if is_avro(headers):  # a snapshot from before the topic was the table's changelog
            self._state[job_id] = True
            return
        try:
            self._state[job_id] = JobRecord.decode(value).admitted_by is not None
        except SchemaError:
            return

    @property
    def admitted(self) -> set[str]:
        return {job_id for job_id, admitted in self._state.items() if admitted}


@dataclass
class Summary:
    read: int = 0
    sent: int = 0
    failed: int = 0
    skipped: Counter[Skip] = field(default_factory=Counter)
    reasons: dict[Skip, Counter[str]] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)

    def skip(self, skipped: Skipped) -> None:
        self.skipped[skipped.kind] += 1
        self.reasons.setdefault(skipped.kind, Counter())[_reason_class(skipped)] += 1

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.failures[reason] += 1

    def render(self, *, dry_run: bool) -> str:
        """The end-of-run summary, one figure a line, reasons under their figure (most common first)."""
        verb = "would send" if dry_run else "sent"
        lines = [f"read                  {self.read}", f"{verb:<22}{self.sent}"]
        labels = {Skip.DUPLICATE: "skipped as duplicate", Skip.INVALID: "skipped invalid",
                  Skip.FILTERED: "skipped by filters"}
        for kind in (Skip.DUPLICATE, Skip.INVALID, Skip.FILTERED):
            lines.append(f"{labels[kind]:<22}{self.skipped[kind]}")
            reasons = self.reasons.get(kind, Counter())
            lines.extend(f"    {count:>6}  {reason}" for reason, count in reasons.most_common())
        if self.failed or not dry_run:
            lines.append(f"{'failed to send':<22}{self.failed}")
            lines.extend(f"    {count:>6}  {reason}" for reason, count in self.failures.most_common())
        return "\n".join(lines)


def _reason_class(skipped: Skipped) -> str:
    """A reason without the job id, so that the summary groups alike skips."""
    if skipped.kind is Skip.DUPLICATE:
        return "already a job" if "already a job" in skipped.reason else "twice in this replay"
    return skipped.reason


def parse_instant(text: str) -> int:
    """ISO 8601 (``2026-12-01T06:00:00Z``; no zone means UTC) or epoch milliseconds → epoch ms.

    Raises ``ConfigError`` for anything else.
    """
    raw = text.strip()
    if raw.isdigit():
        return int(raw)
    try:
        stamp = datetime.fromisoformat(raw)
    except ValueError:
        raise ConfigError(f"{text!r} is not an ISO 8601 instant (e.g. 2026-12-01T06:00:00Z) "
                          "or epoch milliseconds") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


__all__ = ["DERIVED_KEY_PREFIX", "AdmittedJobs", "Candidate", "DeadLetterFilter", "Ledger", "Outgoing", "Skip",
           "Skipped", "Summary", "container_candidate", "dead_letter_candidate", "derived_job_id", "parse_instant",
           "prepare"]
