"""What the push notifiers share: the words on the lock screen, credentials, the HTTP client, and
the one notifier that picks FCM or APNs by the job's ``notify.push.platform``.

The alert is the same on both platforms (:func:`alert_text`), and so is the data the app gets with
it (:func:`push_data`): the job id, its status and, for a completed job, the video's URL, so the
app can open the video without asking the API first.

A push is keyed by the job (FCM's ``collapse_key``, APNs's ``apns-collapse-id``): a delivery
repeated after a crash or a rebalance replaces the notification on the phone instead of adding a
second one.
"""
from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import httpx

from floodgate.errors import ConfigError
from floodgate.settings import Secret, Settings

from .base import Notification, NotificationError, Notifier

DEFAULT_TIMEOUT = 10.0
MAX_ERROR_CHARS = 200
"""A failed job's error is cut to this in the push: both services cap a payload at 4 KB."""

ALERTS: Mapping[str, tuple[str, str]] = {
    "completed": ("Your video is ready", "Tap to watch it."),
    "failed": ("Your video could not be made", "Open the app to try again."),
}
"""Status → (title, body) of the alert."""


def alert_text(n: Notification) -> tuple[str, str]:
    """(title, body) for ``n``'s status; ``KeyError`` for a status that is not pushed."""
    return ALERTS[n.status]


def push_data(n: Notification) -> dict[str, str]:
    """The key/value data that goes with the alert (strings only, as FCM requires)."""
    data = {"job_id": n.job_id, "status": n.status, "type": n.event_type}
    if n.video_url:
        data["video_url"] = n.video_url
    if n.error:
        data["error"] = n.error[:MAX_ERROR_CHARS]
    return data


def read_secret(secret: Secret, what: str) -> str:
    """A key given as a file path or as the text itself (``env:NAME`` was resolved by the settings).

    Raises ``ConfigError`` when a path cannot be read; never puts the secret in the message.
    """
    text = secret.reveal().strip()
    if text.startswith(("{", "-----BEGIN")):
        return text
    try:
        return Path(text).expanduser().read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what}: not a key and not a readable file ({type(exc).__name__})") from None


def http_client(settings: Settings, *, http2: bool, timeout: float = DEFAULT_TIMEOUT) -> httpx.AsyncClient:
    """A client for the push services: the system's CAs plus ``push_ca_file``, no environment
    proxies (the credentials go to these hosts and no others), redirects not followed."""
    # httpx logs every request's URL at INFO, and an APNs URL ends in the device token: Floodgate's
    # processes log at INFO, so httpx's own lines are kept to warnings and worse.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    context = ssl.create_default_context()
    if settings.push_ca_file:
        try:
            context.load_verify_locations(cafile=settings.push_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"FLOODGATE_PUSH_CA_FILE: {exc}") from exc
    return httpx.AsyncClient(http2=http2, verify=context, trust_env=False, follow_redirects=False,
                             timeout=httpx.Timeout(timeout))


def transport_error(service: str, exc: Exception) -> NotificationError:
    """A connection-level failure: the push may not have been sent, so it is tried again."""
    return NotificationError(f"{service}: {type(exc).__name__}", retriable=True)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Held(Generic[T]):
    value: T
    refresh_at: float


class Renewing(Generic[T]):
    """A credential kept until ``refresh_at`` and then made again. Pure apart from what the caller
    stores: ``get(now)`` answers what is held, ``put`` stores a new one, ``drop`` forgets it (the
    service refused it)."""

    def __init__(self) -> None:
        self._held: _Held[T] | None = None

    def get(self, now: float) -> T | None:
        held = self._held
        return held.value if held is not None and now < held.refresh_at else None

    def put(self, value: T, refresh_at: float) -> None:
        self._held = _Held(value, refresh_at)

    def drop(self, value: T) -> None:
        if self._held is not None and self._held.value == value:
            self._held = None


class PushNotifier:
    """Sends a notification to its ``push`` device through the notifier for its platform."""

    def __init__(self, by_platform: Mapping[str, Notifier]) -> None:
        self._by_platform = dict(by_platform)

    @property
    def platforms(self) -> frozenset[str]:
        return frozenset(self._by_platform)

    async def send(self, notification: Notification) -> None:
        target = notification.push
        if target is None:
            raise NotificationError("notification has no push target", retriable=False)
        notifier = self._by_platform.get(target.platform)
        if notifier is None:
            raise NotificationError(f"push to {target.platform} is not configured", retriable=False)
        await notifier.send(notification)


__all__ = ["ALERTS", "DEFAULT_TIMEOUT", "PushNotifier", "Renewing", "alert_text", "http_client", "push_data",
           "read_secret", "transport_error"]
