"""Avro contracts on the wire: schemaless binary plus an ``fg-schema`` header.

Every record Floodgate writes carries the header ``fg-schema: <Name>/<version>``
naming its *writer* schema. Readers decode with that writer schema and the
current schema as reader, so old records keep decoding (with defaults filled)
after a schema gains fields. Versions live in ``schemas/<name>.avsc`` (current,
declaring ``"fg_version": N``) and ``schemas/history/<name>.v<N>.avsc`` (older
writers, added only when a released schema changes).

Timestamps (``timestamp-millis``) are plain ``int`` epoch milliseconds in
Python: the logical type documents the contract for other consumers, but
converting to ``datetime`` on every decode costs ~50% more and the pipeline's
clocks are already integer milliseconds.

The ``requests`` topic also accepts JSON lines (``kcat -P``), see
:func:`decode_request`.
"""
from __future__ import annotations

import copy
import functools
import io
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import orjson
from fastavro.types import Schema

from floodgate.errors import Problem, SchemaError, ValidationError
from floodgate.push import target_of_request
from floodgate.validation import NormalizedRequest, request_hash
from schemas import SCHEMA_DIR

SCHEMA_HEADER = "fg-schema"
REQUEST_SOURCES = frozenset({"http", "sdk", "replay"})

Headers = Mapping[str, bytes | str | None] | Iterable[tuple[str, bytes | str | None]] | None

_HISTORY_FILE = re.compile(r"^(?P<stem>[a-z0-9_]+)\.v(?P<version>\d+)\.avsc$")


@dataclass(frozen=True, slots=True)
class _Contract:
    name: str
    version: int
    source: dict[str, Any]  # the JSON schema (logical types stripped), used by the JSON path
    parsed: Schema  # fastavro-parsed
    header: bytes


class Codec:
    """Every contract in one schema directory, parsed once.

    Raises :class:`SchemaError` at construction if a schema file is malformed,
    lacks ``fg_version``, or a history file disagrees with its current schema's name.
    """

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self._current: dict[str, _Contract] = {}
        self._versions: dict[tuple[str, int], _Contract] = {}
        stems: dict[str, str] = {}
        for path in sorted(schema_dir.glob("*.avsc")):
            contract = _load(path, version=None)
            if contract.name in self._current:
                raise SchemaError(f"{path}: schema {contract.name} is defined twice")
            self._current[contract.name] = contract
            self._versions[(contract.name, contract.version)] = contract
            stems[path.stem] = contract.name
        history = schema_dir / "history"
        for path in sorted(history.glob("*.avsc")) if history.is_dir() else ():
            match = _HISTORY_FILE.match(path.name)
            if match is None or match["stem"] not in stems:
                raise SchemaError(f"{path}: expected <current schema stem>.v<N>.avsc")
            contract = _load(path, version=int(match["version"]))
            expected = stems[match["stem"]]
            if contract.name != expected:
                raise SchemaError(f"{path}: names {contract.name}, expected {expected}")
            if contract.version >= self._current[expected].version:
                raise SchemaError(f"{path}: history version must be older than the current one")
            self._versions[(contract.name, contract.version)] = contract

    def names(self) -> list[str]:
        return sorted(self._current)

    def version(self, name: str) -> int:
        """The current (writer) version of schema ``name``."""
        return self._contract(name).version

    def encode(self, name: str, record: Mapping[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
        """Encode ``record`` with the current ``name`` schema; returns (value, headers).

        Unknown fields and missing fields without a default raise :class:`SchemaError`.
        """
        contract = self._contract(name)
        out = io.BytesIO()
        try:
            fastavro.schemaless_writer(out, contract.parsed, record, strict_allow_default=True)
        except Exception as exc:  # fastavro raises ValueError/TypeError/KeyError/AttributeError...
            raise SchemaError(f"cannot encode {name}/{contract.version}: {exc}") from exc
        return out.getvalue(), [(SCHEMA_HEADER, contract.header)]

    def decode(self, name: str, value: bytes, headers: Headers = None) -> dict[str, Any]:
        """Decode ``value`` written with the schema version named in ``headers``.

        A missing ``fg-schema`` header means the current version. Raises
        :class:`SchemaError` for a header naming another schema or an unknown
        version, and for bytes that do not decode exactly (including trailing bytes).
        """
        reader = self._contract(name)
        writer = reader
        header = _header(headers, SCHEMA_HEADER)
        if header is not None:
            writer = self._writer(name, header)
        data = io.BytesIO(value)
        try:
            if writer is reader:
                record = fastavro.schemaless_reader(data, writer.parsed, None)
            else:
                record = fastavro.schemaless_reader(data, writer.parsed, reader.parsed)
        except Exception as exc:  # corrupt input surfaces as EOFError, IndexError, UnicodeDecodeError...
            raise SchemaError(f"cannot decode {name}/{writer.version}: {type(exc).__name__}: {exc}") from exc
        if data.tell() != len(value):
            raise SchemaError(f"cannot decode {name}/{writer.version}: {len(value) - data.tell()} trailing bytes")
        if not isinstance(record, dict):
            raise SchemaError(f"cannot decode {name}/{writer.version}: not a record")
        return record

    def decode_request(self, value: bytes, headers: Headers = None, *, now_ms: int | None = None) -> dict[str, Any]:
        """Decode a ``requests`` record: Avro, or a JSON object line from ``kcat -P``.

        JSON is chosen only when there is no ``fg-schema`` header and the value
        starts with ``{`` after whitespace. A JSON line may omit server fields:
        ``tenant`` → ``"default"``, ``source`` → ``"replay"``, ``accepted_at`` →
        ``now_ms`` (default: the wall clock), ``request_hash`` → computed. It
        must carry ``job_id``. Only the contract's shape is checked here; the
        consumer should still apply :func:`floodgate.validation.validate_job_request`
        rules (known model, lengths, URLs) to ``source == "replay"`` records.

        Raises :class:`SchemaError` for undecodable bytes or JSON, and
        :class:`ValidationError` (every field at fault) for a JSON object that
        does not fit ``JobRequest``.
        """
        if _header(headers, SCHEMA_HEADER) is None and value.lstrip()[:1] == b"{":
            return self._request_from_json(value, now_ms)
        return self.decode("JobRequest", value, headers)

    def _request_from_json(self, value: bytes, now_ms: int | None) -> dict[str, Any]:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"cannot decode JobRequest JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ValidationError(Problem("body", "must be a JSON object"))
        doc.setdefault("tenant", "default")
        doc.setdefault("source", "replay")
        doc.setdefault("accepted_at", int(time.time() * 1000) if now_ms is None else now_ms)
        compute_hash = "request_hash" not in doc
        if compute_hash:
            doc["request_hash"] = ""
        problems: list[Problem] = []
        record: dict[str, Any] = _conform(self._contract("JobRequest").source, doc, "", problems)
        if not problems:
            for key in ("job_id", "tenant", "user_id", "model"):
                if record[key] == "":
                    problems.append(Problem(key, "must not be empty"))
            if record["source"] not in REQUEST_SOURCES:
                problems.append(Problem("source", f"must be one of {', '.join(sorted(REQUEST_SOURCES))}"))
        if problems:
            raise ValidationError(problems)
        if compute_hash:
            record["request_hash"] = request_hash(_normalized(record), record["tenant"])
        return record

    def _contract(self, name: str) -> _Contract:
        try:
            return self._current[name]
        except KeyError:
            raise SchemaError(f"unknown schema {name!r}; known: {', '.join(self.names())}") from None

    def _writer(self, name: str, header: bytes) -> _Contract:
        header_name, _, version = header.partition(b"/")
        if header_name.decode("ascii", "replace") != name:
            raise SchemaError(f"{SCHEMA_HEADER} header {header!r} does not name schema {name}")
        try:
            return self._versions[(name, int(version))]
        except (KeyError, ValueError):
            raise SchemaError(f"{SCHEMA_HEADER} header {header!r}: unknown version of {name}") from None


def _load(path: Path, version: int | None) -> _Contract:
    try:
        raw = _strip_timestamps(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("type") != "record" or not isinstance(raw.get("name"), str):
        raise SchemaError(f"{path}: a contract must be a named record schema")
    source: dict[str, Any] = raw
    declared = source.get("fg_version")
    if version is None:
        if not isinstance(declared, int) or isinstance(declared, bool):
            raise SchemaError(f"{path}: a current schema must declare an integer fg_version")
        version = declared
    elif declared is not None and declared != version:
        raise SchemaError(f"{path}: fg_version {declared} disagrees with the file name")
    try:
        # Each file gets its own named-schema space: history files redefine the same names.
        parsed = fastavro.parse_schema(copy.deepcopy(source), named_schemas={})
    except Exception as exc:  # fastavro raises SchemaParseException, UnknownType, ValueError...
        raise SchemaError(f"{path}: {exc}") from exc
    name = source["name"].rpartition(".")[2]
    return _Contract(name, version, source, parsed, f"{name}/{version}".encode("ascii"))


def _strip_timestamps(schema: Any) -> Any:
    """Drop ``timestamp-millis`` so fastavro reads ints (same bytes on the wire)."""
    if isinstance(schema, dict):
        stripped = {k: _strip_timestamps(v) for k, v in schema.items()}
        if stripped.get("logicalType") == "timestamp-millis":
            del stripped["logicalType"]
        return stripped
    if isinstance(schema, list):
        return [_strip_timestamps(item) for item in schema]
    return schema


def _header(headers: Headers, key: str) -> bytes | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if name == key:
            if value is None:  # Kafka allows valueless headers
                return b""
            return value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return None


_SCALARS: dict[str, tuple[type[Any], ...]] = {
    "null": (type(None),),
    "string": (str,),
    "boolean": (bool,),
    "int": (int,),
    "long": (int,),
    "float": (int, float),
    "double": (int, float),
}

_INT_BITS = {"int": 31, "long": 63}


def _conform(schema: Any, value: Any, path: str, problems: list[Problem]) -> Any:
    """Check a JSON value against an Avro schema, filling record defaults; append every problem."""
    if isinstance(schema, list):
        for branch in sorted(schema, key=lambda b: b != "null" if value is None else b == "null"):
            attempt: list[Problem] = []
            result = _conform(branch, value, path, attempt)
            if not attempt:
                return result
        problems.append(Problem(path or "body", f"must be {' or '.join(_describe(b) for b in schema)}"))
        return value
    if isinstance(schema, dict) and schema["type"] == "record":
        if not isinstance(value, dict):
            problems.append(Problem(path or "body", "must be an object"))
            return value
        out: dict[str, Any] = {}
        names = set()
        for field in schema["fields"]:
            names.add(field["name"])
            sub = f"{path}.{field['name']}" if path else field["name"]
            if field["name"] in value:
                out[field["name"]] = _conform(field["type"], value[field["name"]], sub, problems)
            elif "default" in field:
                out[field["name"]] = copy.deepcopy(field["default"])
            else:
                problems.append(Problem(sub, "required"))
        for extra in sorted(set(value) - names):
            problems.append(Problem(f"{path}.{extra}" if path else extra, "unknown field"))
        return out
    if isinstance(schema, dict) and schema["type"] == "map":
        if not isinstance(value, dict):
            problems.append(Problem(path, "must be an object"))
            return value
        return {k: _conform(schema["values"], v, f"{path}.{k}", problems) for k, v in value.items()}
    if isinstance(schema, dict) and schema["type"] == "array":
        if not isinstance(value, list):
            problems.append(Problem(path, "must be an array"))
            return value
        return [_conform(schema["items"], v, f"{path}.{i}", problems) for i, v in enumerate(value)]
    if isinstance(schema, dict):
        return _conform(schema["type"], value, path, problems)
    accepted = _SCALARS.get(schema)
    if accepted is None or not isinstance(value, accepted) or (isinstance(value, bool) and schema != "boolean"):
        problems.append(Problem(path, f"must be {_describe(schema)}"))
        return value
    if schema in _INT_BITS and not -(2 ** _INT_BITS[schema]) <= value < 2 ** _INT_BITS[schema]:
        problems.append(Problem(path, f"out of range for a {schema}"))
        return value
    return float(value) if schema in ("float", "double") else value


def _describe(schema: Any) -> str:
    if isinstance(schema, dict):
        return {"record": "an object", "map": "an object", "array": "an array"}.get(schema["type"], str(schema["type"]))
    return {"null": "null", "string": "a string", "int": "an integer", "long": "an integer"}.get(schema, str(schema))


def _normalized(record: Mapping[str, Any]) -> NormalizedRequest:
    source_input = record["input"]
    return NormalizedRequest(
        model=record["model"],
        prompt=source_input["prompt"],
        image_url=source_input["image_url"],
        params=source_input["params"],
        user_id=record["user_id"],
        webhook_url=record["webhook_url"],
        metadata=record["metadata"],
        push=target_of_request(record),
        priority=record.get("priority") or "standard",
        deadline_s=record.get("deadline_s"),
    )


@functools.cache
def default_codec() -> Codec:
    """The codec for the packaged ``schemas/`` directory, parsed on first use."""
    return Codec(SCHEMA_DIR)


def encode(name: str, record: Mapping[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
    """See :meth:`Codec.encode`."""
    return default_codec().encode(name, record)


def decode(name: str, value: bytes, headers: Headers = None) -> dict[str, Any]:
    """See :meth:`Codec.decode`."""
    return default_codec().decode(name, value, headers)


def decode_request(value: bytes, headers: Headers = None, *, now_ms: int | None = None) -> dict[str, Any]:
    """See :meth:`Codec.decode_request`."""
    return default_codec().decode_request(value, headers, now_ms=now_ms)


__all__ = ["SCHEMA_HEADER", "Codec", "Headers", "decode", "decode_request", "default_codec", "encode"]
