"""Outgoing notifiers: one module per channel behind the ``Notifier`` protocol."""
from __future__ import annotations

from .base import EVENT_TYPES, Notification, NotificationError, Notifier
from .webhook import WebhookNotifier, classify, guarded_session, tenant_secret, webhook_body

__all__ = [
    "EVENT_TYPES",
    "Notification",
    "NotificationError",
    "Notifier",
    "WebhookNotifier",
    "classify",
    "guarded_session",
    "tenant_secret",
    "webhook_body",
]
