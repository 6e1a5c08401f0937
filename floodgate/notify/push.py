"""Push to phones: tell a job's device (``notify.push`` of its request) that the job completed or failed.

The same service as the outgoing webhooks (:class:`~floodgate.notify.outgoing.OutgoingWebhooks`:
``results`` in a consumer group of its own, ``<app_id>-push``, commits only past finished
records, the one retry schedule, dead letters with the original bytes), with a notifier per
platform (``connectors.notifiers.fcm``, ``connectors.notifiers.apns``) behind
:class:`~connectors.notifiers.phones.PushNotifier`. Its own consumer group keeps the two channels
apart: a slow push service never holds up webhooks, and the other way round.

Within the channel each platform is a destination with its own lane, as each webhook receiver is:
with two of them, each may use half of the attempts at once and half of the pending records, so
an APNs outage (connections that hang until the timeout) leaves FCM's pushes half the slots and
the fetch going. Its breaker opens only after ``breaker_failures`` failures in a row: a platform
carries every app user's pushes, and a handful of 503s among thousands is no outage. Each holds
at most ``max_per_destination`` pushes (half of ``max_held``), so the other platform always has
the other half; a platform at its bound with its breaker open has its next pushes dead-lettered
at once, as the webhooks' receivers do.

Which states push: ``floodgate.push.PUSH_STATES`` (completed and failed). A token the service
says is gone (FCM ``UNREGISTERED``, APNs 410 ``Unregistered`` or 400 ``BadDeviceToken``) is
dead-lettered at once, without retries: the dead letter names the job, and the app's backend can
drop the token.
"""
from __future__ import annotations

from typing import Any

import httpx

from connectors.notifiers.base import Notification, Notifier
from floodgate.errors import ConfigError
from floodgate.metrics import ApiMetrics
from floodgate.notify.outgoing import OutgoingWebhooks
from floodgate.push import APNS, FCM, PUSH_STATES
from floodgate.settings import Settings


class PushDeliveries(OutgoingWebhooks):
    """The push delivery service; ``start()`` then ``stop()``. Keyword arguments as
    :class:`OutgoingWebhooks` (``notifier`` replaces the one built from the settings).

    Raises ``ConfigError`` at ``start`` when the settings configure no push platform.
    """

    channel = "push"
    noun = "push"
    shares = 2
    breaker_failures = 20
    breaker_open_for = 10.0

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._clients: list[httpx.AsyncClient] = []

    def wants(self, notification: Notification) -> bool:
        return notification.push is not None and notification.status in PUSH_STATES

    def destination(self, notification: Notification) -> str:
        """The push platform: one service behind one host, which fails or hangs for every token at
        once. Not the token: a phone that is off fails nothing (the platform takes its push), and
        a lane per token would bound nothing, as each holds one or two pushes."""
        return notification.push.platform if notification.push is not None else ""

    async def build_notifier(self) -> Notifier:
        from connectors.notifiers.apns import ApnsNotifier
        from connectors.notifiers.fcm import FcmNotifier
        from connectors.notifiers.phones import PushNotifier, http_client

        settings = self._settings
        by_platform: dict[str, Notifier] = {}
        try:
            if FCM in settings.push_platforms:
                client = http_client(settings, http2=True)
                self._clients.append(client)
                by_platform[FCM] = FcmNotifier.from_settings(settings, client)
            if APNS in settings.push_platforms:
                client = http_client(settings, http2=True)
                self._clients.append(client)
                by_platform[APNS] = ApnsNotifier.from_settings(settings, client)
        except BaseException:
            await self.close_notifier()
            raise
        if not by_platform:
            raise ConfigError("push deliveries need FLOODGATE_FCM_SERVICE_ACCOUNT or FLOODGATE_APNS_KEY")
        return PushNotifier(by_platform)

    async def close_notifier(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            await client.aclose()

    def count(self, outcome: str | None, retries: int = 0) -> None:
        metrics: ApiMetrics = self._metrics
        if outcome is not None:
            metrics.push.labels(outcome).inc()
        if retries:
            metrics.push_retries.inc(retries)


__all__ = ["PushDeliveries"]
