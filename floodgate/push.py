"""A phone to tell about a job: the ``notify.push`` part of a job request. Pure.

A request may name one device (``{"notify": {"push": {"platform": "fcm" | "apns", "token": ...}}}``);
the token is the one the app got from Firebase Cloud Messaging or from Apple's push service. It
travels with the job (request, jobs table, ``results``) to the push deliveries
(``floodgate.notify.push``), which send it the job's final state.

Tokens are checked for shape and size here, at the door, because they end up in places where a
bad one does harm: an APNs token is a path segment of the request to Apple (hex only, so nothing
can be smuggled into the path), and every token is stored with the job.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from floodgate.errors import Problem

FCM = "fcm"
APNS = "apns"
PLATFORMS = (FCM, APNS)

PUSH_STATES = frozenset({"completed", "failed"})
"""The job states a phone is told about. A cancel is the user's (or the app's) own doing, and the
states before the end come and go too fast to be worth a notification on a lock screen."""

MAX_FCM_TOKEN_CHARS = 1024
"""FCM registration tokens are about 160 characters today; the bound leaves room for growth."""
MIN_APNS_TOKEN_CHARS = 64
MAX_APNS_TOKEN_CHARS = 200
"""APNs device tokens are 32 bytes (64 hex digits) today; Apple allows them to grow to 100 bytes."""

_FCM_TOKEN = re.compile(r"[A-Za-z0-9_:.\-]+")
_APNS_TOKEN = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_FIELDS = frozenset({"push"})
_PUSH_FIELDS = frozenset({"platform", "token"})


@dataclass(frozen=True, slots=True)
class PushTarget:
    """One device: ``platform`` is ``fcm`` or ``apns``."""

    platform: str
    token: str

    def __repr__(self) -> str:
        # A device token lets anyone holding the app's credentials reach that phone: keep it out of logs.
        return f"PushTarget(platform={self.platform!r}, token=<{len(self.token)} chars>)"

    def to_record(self) -> dict[str, str]:
        """The Avro ``PushTarget`` record (in ``JobRequest.notify.push`` and ``JobSnapshot.push``)."""
        return {"platform": self.platform, "token": self.token}

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> PushTarget | None:
        """From a decoded ``PushTarget`` record; None for None."""
        if not record:
            return None
        return cls(platform=str(record["platform"]), token=str(record["token"]))


def token_problem(platform: str, token: str) -> str | None:
    """Why ``token`` cannot be a device token of ``platform``, or None if it can."""
    if platform == APNS:
        if not MIN_APNS_TOKEN_CHARS <= len(token) <= MAX_APNS_TOKEN_CHARS or not _APNS_TOKEN.fullmatch(token):
            return (f"an APNs device token is {MIN_APNS_TOKEN_CHARS} to {MAX_APNS_TOKEN_CHARS} hexadecimal digits "
                    "(an even number)")
        return None
    if not 1 <= len(token) <= MAX_FCM_TOKEN_CHARS:
        return f"must be 1 to {MAX_FCM_TOKEN_CHARS} characters"
    if not _FCM_TOKEN.fullmatch(token):
        return "an FCM registration token uses only A-Z a-z 0-9 _ : . -"
    return None


def parse_notify(value: Any, problems: list[Problem], field: str = "notify") -> PushTarget | None:
    """The push target of a request's ``notify`` value (None when absent); appends every problem."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.append(Problem(field, "must be an object"))
        return None
    problems.extend(Problem(f"{field}.{str(k)[:64]}", "unknown field") for k in value if k not in _FIELDS)
    push = value.get("push")
    if push is None:
        return None
    where = f"{field}.push"
    if not isinstance(push, Mapping):
        problems.append(Problem(where, "must be an object"))
        return None
    problems.extend(Problem(f"{where}.{str(k)[:64]}", "unknown field") for k in push if k not in _PUSH_FIELDS)
    platform, token = push.get("platform"), push.get("token")
    found = len(problems)
    if platform is None:
        problems.append(Problem(f"{where}.platform", "required"))
    elif platform not in PLATFORMS:
        problems.append(Problem(f"{where}.platform", f"must be one of: {', '.join(PLATFORMS)}"))
    if token is None:
        problems.append(Problem(f"{where}.token", "required"))
    elif not isinstance(token, str):
        problems.append(Problem(f"{where}.token", "must be a string"))
    elif platform in PLATFORMS and (why := token_problem(platform, token)):
        problems.append(Problem(f"{where}.token", why))
    if len(problems) > found or not isinstance(platform, str) or not isinstance(token, str):
        return None
    return PushTarget(platform, token)


def notify_record(target: PushTarget | None) -> dict[str, Any] | None:
    """The ``JobRequest.notify`` value for ``target``."""
    return None if target is None else {"push": target.to_record()}


def target_of_request(request: Mapping[str, Any]) -> PushTarget | None:
    """The push target of a decoded ``JobRequest`` record."""
    notify = request.get("notify")
    return PushTarget.from_record(notify.get("push")) if isinstance(notify, Mapping) else None


__all__ = [
    "APNS", "FCM", "MAX_APNS_TOKEN_CHARS", "MAX_FCM_TOKEN_CHARS", "MIN_APNS_TOKEN_CHARS", "PLATFORMS", "PUSH_STATES",
    "PushTarget", "notify_record", "parse_notify", "target_of_request", "token_problem",
]
