"""RFC 9457 problem details for every HTTP error Floodgate returns.

Field-level errors go in an ``errors`` extension member, a list of
``{"field", "message"}`` objects, present only when there are any.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web

from floodgate.errors import Problem, ValidationError

CONTENT_TYPE = "application/problem+json"

# Problem types Floodgate defines; "about:blank" means "see the HTTP status".
VALIDATION = "urn:floodgate:problem:validation"
RATE_LIMITED = "urn:floodgate:problem:rate-limited"
RATE_QUOTA = "urn:floodgate:problem:rate-quota"
QUEUED_QUOTA = "urn:floodgate:problem:queued-quota"
BACKLOG = "urn:floodgate:problem:backlog"
IDEMPOTENCY_CONFLICT = "urn:floodgate:problem:idempotency-conflict"
NOT_FOUND = "urn:floodgate:problem:not-found"
UNAUTHORIZED = "urn:floodgate:problem:unauthorized"
JOB_FINISHED = "urn:floodgate:problem:job-finished"
FORBIDDEN_ORIGIN = "urn:floodgate:problem:forbidden-origin"


def problem(
    status: int,
    title: str,
    *,
    detail: str | None = None,
    type_: str = "about:blank",
    instance: str | None = None,
    errors: Iterable[Problem] = (),
) -> dict[str, Any]:
    """A problem details object; ``None`` members are left out.

    Raises ``ValueError`` for a status outside 400-599: problems describe errors.
    """
    if not 400 <= status <= 599:
        raise ValueError(f"problem status must be 4xx or 5xx, not {status}")
    doc: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail is not None:
        doc["detail"] = detail
    if instance is not None:
        doc["instance"] = instance
    listed = [{"field": p.field, "message": p.message} for p in errors]
    if listed:
        doc["errors"] = listed
    return doc


def problem_response(
    status: int,
    title: str,
    *,
    detail: str | None = None,
    type_: str = "about:blank",
    instance: str | None = None,
    errors: Iterable[Problem] = (),
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """:func:`problem` as an ``application/problem+json`` response (``headers`` e.g. ``Retry-After``)."""
    doc = problem(status, title, detail=detail, type_=type_, instance=instance, errors=errors)
    return web.Response(status=status, body=orjson.dumps(doc), content_type=CONTENT_TYPE, headers=headers)


def validation_response(exc: ValidationError, *, instance: str | None = None) -> web.Response:
    """The 400 response for a :class:`ValidationError`, listing every field at fault."""
    return problem_response(
        400,
        "Invalid request",
        detail=f"{len(exc.problems)} field(s) failed validation",
        type_=VALIDATION,
        instance=instance,
        errors=exc.problems,
    )


__all__ = [
    "BACKLOG",
    "CONTENT_TYPE",
    "FORBIDDEN_ORIGIN",
    "IDEMPOTENCY_CONFLICT",
    "JOB_FINISHED",
    "NOT_FOUND",
    "QUEUED_QUOTA",
    "RATE_LIMITED",
    "RATE_QUOTA",
    "UNAUTHORIZED",
    "VALIDATION",
    "problem",
    "problem_response",
    "validation_response",
]
