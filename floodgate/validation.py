"""Validation of a job request body, reporting every field at fault at once.

Pure: no I/O. HTTP ingress and the SDK path call :func:`validate_job_request`
on the parsed JSON body; the result is what gets hashed and written to the
``requests`` topic. The jobs agent applies it again to records written by
anyone else (kcat, replays), so a URL refused at the HTTP edge is also refused
at Kafka admission.

Every user-given URL (``webhook_url``, which Floodgate will POST to, and
``input.image_url``, which a provider will fetch, possibly from inside the
user's own network) passes :func:`floodgate.netguard.check_url_target`: a host
that names a private, loopback or link-local address in any spelling is refused
here; names are checked again on the addresses connected to.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from floodgate.errors import Problem, ValidationError
from floodgate.netguard import check_url_target
from floodgate.push import PushTarget, parse_notify

_TOP_LEVEL = frozenset({"model", "input", "user_id", "webhook_url", "metadata", "notify", "priority", "deadline_s"})
PRIORITIES = ("high", "standard", "low")
"""Priority classes, first served first: a waiting job is never passed by one of a lower class."""
DEFAULT_PRIORITY = "standard"
MAX_DEADLINE_S = 7 * 24 * 3600
_INPUT = frozenset({"prompt", "image_url", "params"})
_MAX_MODELS_LISTED = 20
_MAX_PATH_KEY = 64  # longer names are cut in error paths so one huge key cannot bloat the response
# Bumped whenever the canonical form below changes, so old and new hashes never collide.
_HASH_FORMAT = 1


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Size limits for a job request; the defaults are the public API contract."""

    max_prompt_chars: int = 4000
    max_user_id_chars: int = 128
    max_metadata_entries: int = 16
    max_metadata_key_chars: int = 64
    max_metadata_value_chars: int = 512
    max_params_entries: int = 32
    max_params_key_chars: int = 64
    max_params_value_chars: int = 1024


@dataclass(frozen=True, slots=True)
class NormalizedRequest:
    """A valid request with optional parts filled in (``params``/``metadata`` → ``{}``).

    Frozen against reassignment; treat the dicts as read-only too.
    """

    model: str
    prompt: str
    image_url: str | None
    params: dict[str, str]
    user_id: str
    webhook_url: str | None
    metadata: dict[str, str]
    push: PushTarget | None = None
    """The device to tell about the job's end (``notify.push``), if any."""
    priority: str = DEFAULT_PRIORITY
    deadline_s: int | None = None
    """Seconds after acceptance past which the job, if still waiting, ends ``expired`` unsubmitted."""


def validate_job_request(
    payload: Any,
    *,
    known_models: Collection[str],
    limits: RequestLimits = RequestLimits(),
    allow_private: bool = False,
) -> NormalizedRequest:
    """Check a parsed JSON body; raise :class:`ValidationError` naming every bad field.

    Fields are dotted paths (``input.prompt``, ``metadata.foo``); unknown
    top-level and ``input`` fields are reported by name. ``null`` counts as
    absent for optional fields. ``allow_private`` lets URLs point at private
    and loopback addresses (dev and tests only).
    """
    if not isinstance(payload, Mapping):
        raise ValidationError(Problem("body", "must be a JSON object"))
    problems = [Problem(str(k)[:_MAX_PATH_KEY], "unknown field") for k in payload if k not in _TOP_LEVEL]

    model = _model(payload.get("model"), known_models, problems)
    user_id = _user_id(payload.get("user_id"), limits, problems)
    webhook_url = _optional_url(payload.get("webhook_url"), "webhook_url", allow_private, problems)
    metadata = _string_map(
        payload.get("metadata"),
        "metadata",
        limits.max_metadata_entries,
        limits.max_metadata_key_chars,
        limits.max_metadata_value_chars,
        problems,
    )
    prompt, image_url, params = _input(payload.get("input"), limits, allow_private, problems)
    push = parse_notify(payload.get("notify"), problems)
    priority = _priority(payload.get("priority"), problems)
    deadline_s = _deadline(payload.get("deadline_s"), problems)

    if problems:
        raise ValidationError(problems)
    return NormalizedRequest(
        model=model,
        prompt=prompt,
        image_url=image_url,
        params=params,
        user_id=user_id,
        webhook_url=webhook_url,
        metadata=metadata,
        push=push,
        priority=priority,
        deadline_s=deadline_s,
    )


REQUEST_HASH_HEADER = "fg-request-hash"
"""On a keyed request's record in ``requests`` (from the HTTP ingress, the SDK or ``floodgate replay``): its
``request_hash``, so that a reader (an ingress-only API, ``floodgate.api.keyed``) learns which body
a key was first used with without decoding the record."""


def keyed_headers(headers: list[tuple[str, bytes]], key: str | None, digest: str) -> list[tuple[str, bytes]]:
    """``headers`` with the request hash header added when the request has an Idempotency-Key and
    a hash, and carries no such header yet (a record sent again keeps the one it was written with).
    An empty hash teaches nothing: it would make every true retry a 422."""
    if key is not None and digest and all(name != REQUEST_HASH_HEADER for name, _ in headers):
        headers.append((REQUEST_HASH_HEADER, digest.encode("utf-8")))
    return headers


def request_hash(normalized: NormalizedRequest, tenant: str) -> str:
    """Hex SHA-256 of the canonical JSON (sorted keys, compact, UTF-8) of ``normalized`` and ``tenant``.

    Equal requests from the same tenant hash equal regardless of key order in
    the original body; used to detect an Idempotency-Key reused with a different body. A request
    without ``notify`` hashes as it did before ``notify`` existed.
    """
    doc: dict[str, Any] = {
        "format": _HASH_FORMAT,
        "tenant": tenant,
        "model": normalized.model,
        "prompt": normalized.prompt,
        "image_url": normalized.image_url,
        "params": dict(normalized.params),
        "user_id": normalized.user_id,
        "webhook_url": normalized.webhook_url,
        "metadata": dict(normalized.metadata),
    }
    if normalized.push is not None:
        doc["push"] = normalized.push.to_record()
    # Only when set: a request without them hashes as it did before they existed.
    if normalized.priority != DEFAULT_PRIORITY:
        doc["priority"] = normalized.priority
    if normalized.deadline_s is not None:
        doc["deadline_s"] = normalized.deadline_s
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _model(value: Any, known_models: Collection[str], problems: list[Problem]) -> str:
    if value is None:
        problems.append(Problem("model", "required"))
    elif not isinstance(value, str):
        problems.append(Problem("model", "must be a string"))
    elif value not in known_models:
        names = sorted(known_models)
        listed = ", ".join(names[:_MAX_MODELS_LISTED]) + (", ..." if len(names) > _MAX_MODELS_LISTED else "")
        problems.append(Problem("model", f"unknown model; expected one of: {listed}"))
    else:
        return value
    return ""


def _priority(value: Any, problems: list[Problem]) -> str:
    if value is None:
        return DEFAULT_PRIORITY
    if value not in PRIORITIES:
        problems.append(Problem("priority", f"must be one of: {', '.join(PRIORITIES)}"))
        return DEFAULT_PRIORITY
    return str(value)


def _deadline(value: Any, problems: list[Problem]) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 90.0 is the integer 90
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DEADLINE_S:
        problems.append(Problem("deadline_s", f"must be an integer from 1 to {MAX_DEADLINE_S} (seconds)"))
        return None
    return value


_USER_ID = re.compile(r"[A-Za-z0-9._:@-]+")


def _user_id(value: Any, limits: RequestLimits, problems: list[Problem]) -> str:
    if value is None:
        problems.append(Problem("user_id", "required"))
    elif not isinstance(value, str):
        problems.append(Problem("user_id", "must be a string"))
    elif len(value) > limits.max_user_id_chars:
        problems.append(Problem("user_id", f"must be at most {limits.max_user_id_chars} characters"))
    elif not _USER_ID.fullmatch(value):
        problems.append(Problem("user_id", "must be non-empty and use only A-Z a-z 0-9 . _ : @ -"))
    else:
        return value
    return ""


def _input(
    value: Any, limits: RequestLimits, allow_private: bool, problems: list[Problem]
) -> tuple[str, str | None, dict[str, str]]:
    if value is None:
        problems.append(Problem("input", "required"))
        return "", None, {}
    if not isinstance(value, Mapping):
        problems.append(Problem("input", "must be an object"))
        return "", None, {}
    problems.extend(Problem(f"input.{str(k)[:_MAX_PATH_KEY]}", "unknown field") for k in value if k not in _INPUT)
    prompt = value.get("prompt")
    if prompt is None:
        problems.append(Problem("input.prompt", "required"))
    elif not isinstance(prompt, str):
        problems.append(Problem("input.prompt", "must be a string"))
    elif not prompt.strip():
        problems.append(Problem("input.prompt", "must not be empty"))
    elif len(prompt) > limits.max_prompt_chars:
        problems.append(Problem("input.prompt", f"must be at most {limits.max_prompt_chars} characters"))
    image_url = _optional_url(value.get("image_url"), "input.image_url", allow_private, problems)
    params = _string_map(
        value.get("params"),
        "input.params",
        limits.max_params_entries,
        limits.max_params_key_chars,
        limits.max_params_value_chars,
        problems,
    )
    return prompt if isinstance(prompt, str) else "", image_url, params


def _optional_url(value: Any, field: str, allow_private: bool, problems: list[Problem]) -> str | None:
    if value is None:
        return None
    try:
        check_url_target(value, allow_private=allow_private, field=field)
    except ValidationError as exc:
        problems.extend(exc.problems)
        return None
    return str(value)


def _string_map(
    value: Any, field: str, max_entries: int, max_key: int, max_value: int, problems: list[Problem]
) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(Problem(field, "must be an object"))
        return {}
    if len(value) > max_entries:
        problems.append(Problem(field, f"must have at most {max_entries} entries"))
    out: dict[str, str] = {}
    for key, item in value.items():
        # Cap the key in the path so one huge key cannot blow up the error response.
        path = f"{field}.{str(key)[:max_key]}"
        if not isinstance(key, str) or not key:
            problems.append(Problem(path, "key must be a non-empty string"))
        elif len(key) > max_key:
            problems.append(Problem(path, f"key must be at most {max_key} characters"))
        elif not isinstance(item, str):
            problems.append(Problem(path, "must be a string"))
        elif len(item) > max_value:
            problems.append(Problem(path, f"must be at most {max_value} characters"))
        else:
            out[key] = item
    return out


__all__ = ["DEFAULT_PRIORITY", "PRIORITIES", "REQUEST_HASH_HEADER", "NormalizedRequest", "RequestLimits",
           "keyed_headers", "request_hash",
           "validate_job_request"]
