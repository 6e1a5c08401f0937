"""What every HTTP connector shares: a request built purely, one way to send it, and the JSON
field readers that turn a provider's body into our records (raising ``SchemaError``).

``send`` is the only I/O: it never follows redirects (a provider's 3xx is an error, not a hop to
wherever it points), maps non-2xx answers onto the error tree (``error_for_response``) and wraps
transport failures as ``ProviderUnavailable``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from floodgate.errors import ProviderError, ProviderUnavailable, SchemaError

from .base import error_for_response


@dataclass(frozen=True)
class HttpRequest:
    """Everything needed to make one call; built by pure functions, sent by ``send``."""

    method: str
    url: str
    headers: Mapping[str, str] = field(repr=False)
    body: bytes | None = None


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: Mapping[str, str]
    body: bytes


def body_retry_after(body: bytes) -> float | None:
    """A ``retry_after`` number in a JSON error body (Replicate sends one on 429s), else None."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    seconds = value.get("retry_after") if isinstance(value, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < 86_400:
        return None
    return float(seconds)


async def send(session: aiohttp.ClientSession, request: HttpRequest, *, name: str, timeout: aiohttp.ClientTimeout,
               now: Callable[[], float], ok: Callable[[int], bool] = lambda status: 200 <= status <= 299,
               ) -> HttpAnswer:
    """Make one call. Raises a ``ProviderError`` unless ``ok(status)``."""
    try:
        async with session.request(request.method, request.url, headers=dict(request.headers), data=request.body,
                                   timeout=timeout, allow_redirects=False) as response:
            body = await response.read()
            answer = HttpAnswer(response.status, dict(response.headers), body)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ProviderUnavailable(f"{name}: {type(exc).__name__}: {exc}") from exc
    if not ok(answer.status):
        raise error_for_answer(answer, now())
    return answer


def error_for_answer(answer: HttpAnswer, now: float) -> ProviderError:
    """The error a non-2xx answer stands for (``error_for_response``), its Retry-After taken from
    the body when the header has none."""
    error = error_for_response(answer.status, answer.headers, answer.body.decode("utf-8", "replace"), now)
    if error.retriable and error.retry_after is None:
        error.retry_after = body_retry_after(answer.body)
    return error


def parsed(name: str, parse: Callable[[bytes], Any], body: bytes) -> Any:
    """``parse(body)``; a 2xx we cannot read leaves us unsure what happened, so it is retriable."""
    try:
        return parse(body)
    except SchemaError as exc:
        raise ProviderUnavailable(f"{name}: unreadable response: {exc}") from exc


def json_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SchemaError("body is not a JSON object")
    return value


def member(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise SchemaError(f"field {key!r} must be an object")
    return value


def text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise SchemaError(f"field {key!r} must be a non-empty string")
    return value


def optional_text(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise SchemaError(f"field {key!r} must be a string or null")
    return value or None


def number(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError(f"field {key!r} must be a number")
    return float(value)


def first_url(value: Any) -> str | None:
    """The first URL in a provider's output: a string, a list of strings, or an object with ``url``."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, list):
        for item in value:
            url = first_url(item)
            if url:
                return url
        return None
    if isinstance(value, dict):
        for key in ("url", "video_url"):
            if isinstance(value.get(key), str):
                return str(value[key])
        for key in ("video", "videos", "output", "outputs"):
            if key in value:
                return first_url(value[key])
    return None


def model_inputs(params: Mapping[str, str]) -> dict[str, Any]:
    """A job's params as a model's inputs. Floodgate's params are strings; a value that is a JSON
    number or boolean (``"10"``, ``"0.5"``, ``"true"``) is sent as one, since providers validate
    input types (``"007"`` or ``"9:16"`` stay strings)."""
    inputs: dict[str, Any] = {}
    for key, value in params.items():
        try:
            parsed_value = orjson.loads(value) if value and value[0] in "-0123456789tf" else value
        except orjson.JSONDecodeError:
            parsed_value = value
        keep = isinstance(parsed_value, (int, float, bool)) and orjson.dumps(parsed_value).decode() == value
        inputs[key] = parsed_value if keep else value
    return inputs


def fraction(value: float | None, scale: float = 1.0) -> float | None:
    """A progress reading as a fraction clamped to [0, 1]; ``scale`` 100 for percentages."""
    if value is None:
        return None
    return min(1.0, max(0.0, value / scale))


__all__ = ["HttpAnswer", "HttpRequest", "body_retry_after", "first_url", "fraction", "json_object", "member",
           "model_inputs", "number", "optional_text", "parsed", "send", "text"]
