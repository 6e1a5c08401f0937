"""Telling the outside world about finished jobs (outgoing webhooks)."""
from __future__ import annotations

from .outgoing import OutgoingWebhooks, WebhookStats
from .retry import RetryPolicy

__all__ = ["OutgoingWebhooks", "RetryPolicy", "WebhookStats"]
