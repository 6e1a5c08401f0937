"""Telling the outside world about finished jobs (outgoing webhooks, pushes to phones)."""
from __future__ import annotations

from .outgoing import OutgoingWebhooks, WebhookStats
from .push import PushDeliveries
from .retry import RetryPolicy

__all__ = ["OutgoingWebhooks", "PushDeliveries", "RetryPolicy", "WebhookStats"]
