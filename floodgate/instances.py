"""How many API processes take job requests right now: the divisor of each tenant's rate quota. Pure.

Every process with the ingress role says it is alive every few seconds (a ``Heartbeat`` on the
``instances`` topic, keyed by its instance id) and reads everyone's (``floodgate.api.instances``).
``Roster`` keeps, per instance, when this process last heard of it, by its own monotonic clock
(hosts' wall clocks need not agree), and counts those heard within the time to live, itself
always included.

Why divide rather than count together: a shared counter would put a round trip to some store on
every 202, the one answer users wait for. Each process instead enforces ``limit ÷ instances`` of
a tenant's quota on its own, so the tenant's total stays within the limit, and reaches it when
the load balancer spreads requests over the processes (round robin, least connections). A
balancer that sends one tenant to one process (sticky by key) gives that tenant ``1 ÷
instances`` of its quota: there, set ``FLOODGATE_QUOTA_SCOPE=process``.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from floodgate.errors import ConfigError

TTL_BEATS = 3
"""An instance not heard of for this many heartbeat intervals is gone: one lost or late beat
does not change the divisor, a crashed process stops counting within seconds."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What an instance says: it is alive (``gone`` False) or stopping (True), at ``at_ms`` by its
    own wall clock, and how often it says so (``interval``, seconds)."""

    instance: str
    at_ms: int
    interval: float
    gone: bool = False

    def encode(self) -> bytes:
        return orjson.dumps({"instance": self.instance, "at_ms": self.at_ms, "interval": self.interval,
                             "gone": self.gone})

    @classmethod
    def decode(cls, raw: bytes) -> Heartbeat:
        """Raises ``ValueError`` for anything but a heartbeat this module wrote."""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        instance, at_ms, interval, gone = doc.get("instance"), doc.get("at_ms"), doc.get("interval"), doc.get("gone")
        if not isinstance(instance, str) or not instance or len(instance) > 200:
            raise ValueError("instance: a non-empty string of at most 200 characters")
        if isinstance(at_ms, bool) or not isinstance(at_ms, int):
            raise ValueError("at_ms: an integer")
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval <= 3600:
            raise ValueError("interval: seconds in (0, 3600]")
        if not isinstance(gone, bool):
            raise ValueError("gone: a boolean")
        return cls(instance, at_ms, float(interval), gone)


class Roster:
    """The instances heard of lately, this one (``me``) always among them."""

    def __init__(self, me: str) -> None:
        if not me:
            raise ConfigError("an instance needs an id")
        self.me = me
        self._expires: dict[str, float] = {}
        """Other instance → the monotonic instant after which it no longer counts."""
        self.live = 1
        """The count as of the last ``heard`` or ``refresh``: what the accept path reads."""
        self.rank = 0
        """This instance's place among the live ones, their ids in order (0 first): which of them
        takes the remainder when a limit does not divide evenly (``floodgate.quotas.part_of``)."""

    def heard(self, beat: Heartbeat, now: float, wall_ms: int) -> None:
        """Take in ``beat``, read at ``now`` (monotonic) and ``wall_ms`` (this host's wall clock).
        A beat already older than its time to live when read (read back after a restart, or from
        a host whose clock runs far behind) says nothing about now and is ignored. Expiry is
        ``refresh``'s: a batch of beats is taken in, then refreshed once."""
        if beat.instance == self.me:
            return
        ttl = TTL_BEATS * beat.interval
        if beat.gone:
            self._expires.pop(beat.instance, None)
        elif wall_ms - beat.at_ms <= ttl * 1000:
            self._expires[beat.instance] = now + ttl
        self._recount()

    def refresh(self, now: float) -> int:
        """Forget the instances whose time to live has passed; the count of the rest, with this one."""
        expired = [instance for instance, until in self._expires.items() if until < now]
        for instance in expired:
            del self._expires[instance]
        self._recount()
        return self.live

    def _recount(self) -> None:
        self.live = 1 + len(self._expires)
        self.rank = sum(1 for other in self._expires if other < self.me)

    def others(self) -> list[str]:
        return sorted(self._expires)


__all__ = ["TTL_BEATS", "Heartbeat", "Roster"]
