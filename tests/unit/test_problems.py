from __future__ import annotations

import orjson
import pytest

from floodgate.errors import Problem, ValidationError
from floodgate.problems import VALIDATION, problem, problem_response, validation_response


def test_minimal_problem_has_only_required_members() -> None:
    assert problem(404, "Not Found") == {"type": "about:blank", "title": "Not Found", "status": 404}


def test_full_problem() -> None:
    doc = problem(
        400,
        "Invalid request",
        detail="2 fields failed",
        type_=VALIDATION,
        instance="/v1/jobs",
        errors=[Problem("input.prompt", "required"), Problem("metadata.foo", "must be a string")],
    )
    assert doc == {
        "type": "urn:floodgate:problem:validation",
        "title": "Invalid request",
        "status": 400,
        "detail": "2 fields failed",
        "instance": "/v1/jobs",
        "errors": [
            {"field": "input.prompt", "message": "required"},
            {"field": "metadata.foo", "message": "must be a string"},
        ],
    }


def test_errors_accepts_any_iterable() -> None:
    assert problem(400, "x", errors=iter([Problem("a", "b")]))["errors"] == [{"field": "a", "message": "b"}]


@pytest.mark.parametrize("status", [200, 302, 399, 600])
def test_status_must_be_an_error(status: int) -> None:
    with pytest.raises(ValueError):
        problem(status, "x")


def test_problem_response() -> None:
    resp = problem_response(429, "Too Many Requests", detail="slow down", headers={"Retry-After": "3"})
    assert resp.status == 429
    assert resp.content_type == "application/problem+json"
    assert resp.headers["Retry-After"] == "3"
    assert isinstance(resp.body, bytes)
    assert orjson.loads(resp.body) == problem(429, "Too Many Requests", detail="slow down")


def test_validation_response_lists_every_problem() -> None:
    exc = ValidationError([Problem("model", "required"), Problem("user_id", "must be a string")])
    resp = validation_response(exc, instance="/v1/jobs")
    assert isinstance(resp.body, bytes)
    body = orjson.loads(resp.body)
    assert resp.status == 400
    assert body["type"] == VALIDATION
    assert body["instance"] == "/v1/jobs"
    assert body["errors"] == [
        {"field": "model", "message": "required"},
        {"field": "user_id", "message": "must be a string"},
    ]
