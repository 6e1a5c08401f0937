"""The records of the dispatch path, typed. Pure: encoding happens here, I/O elsewhere.

* ``Order``: a job routed to one provider (the ``DispatchOrder`` contract on ``dispatch.<provider>``).
* ``Slot``: one provider concurrency slot held by a job (the ``inflight-<provider>`` table), and
  ``timed_out_attempt``, the attempt its timeout fails.
* ``Parked``: an order waiting for a slot, with the dispatch offset it was read at. Slots and
  parked orders share the ``inflight-<provider>`` table (one entry per job: a start overwrites the
  job's waiting entry with its slot, one write instead of two); ``is_parked`` tells them apart.
* ``CancelMark``: a job cancelled before its order was taken (``cancelled-<provider>``), and
  ``mark_expired``, the rule for when no order can still need the mark.

Table values are JSON with full field names. Values written before these records had names
(``{"a", "t", "o", "pj"}`` slots, ``{"o", "n"}`` parked orders) still decode, so a worker upgraded
in place recovers its tables.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import orjson

ENDED = "ended"
"""The status of a release sent by the webhook bridge: the provider says this provider job ended,
so the slot held for it (and only for it: ``provider_job_id`` must match) is free."""

MARK_GRACE = 60.0
"""Seconds a cancel mark stays at least: orders written just after the cancel (an admission that
ran behind it, a fallback order on its way) still meet it."""

MARK_MAX_AGE = 6 * 3600.0
"""A cancel mark older than this goes even if its partition never caught up: a bound on memory."""


def table_value(doc: Mapping[str, Any]) -> bytes:
    """``doc`` as JSON bytes of their own size. The bytes ``orjson.dumps`` returns keep the buffer
    they were written into (about 4 KB for a few hundred bytes of JSON); a table value lives in
    memory as long as its entry, and a dispatcher holds up to its fair window of waiting orders
    (tens of thousands), so each is copied once to its size."""
    return bytes(memoryview(orjson.dumps(doc)))


_NOTHING: Mapping[str, str] = MappingProxyType({})
"""The params or metadata of an order that has none: one shared empty mapping, not one each."""


def _shared(text: str) -> str:
    """Tenant, model, provider and priority repeat across thousands of waiting orders: one copy each."""
    return sys.intern(text)


def _mapping(doc: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(doc) if doc else _NOTHING


@dataclass(frozen=True, slots=True)
class Order:
    """A dispatcher holds up to its fair window of these (tens of thousands) while they wait: slots,
    and the strings every order repeats kept once (``from_record``)."""

    job_id: str
    tenant: str
    model: str
    provider: str
    provider_model: str
    prompt: str
    attempt: int
    queued_at: int
    """Epoch milliseconds the job was accepted."""
    image_url: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    tried: tuple[str, ...] = ()
    """Providers already tried for this job, in order."""
    webhook_url: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    priority: str = "standard"
    deadline_at: int | None = None
    """Epoch milliseconds past which the order is never submitted (its job ends ``expired``)."""
    spilled_from: str | None = None
    """The model whose long line this order left for ``model`` (``floodgate.spillover``)."""
    lined_at: int | None = None
    """Epoch milliseconds the order joined this line, if not at its acceptance: a spilled order
    joins its equivalent's line at the back, behind the orders already waiting there, which were
    told their place and ETA before it came. (By its acceptance, an order moved from a line
    minutes long went ahead of them all: in the demo the last of wan's own jobs was told 41 s
    and waited 57.) A later fallback keeps it: the job waits in the pool it joined."""

    @property
    def line_key(self) -> int:
        """Where the order goes among its tenant's orders in the line: when it joined it (the
        API's job view counts places the same way)."""
        return self.queued_at if self.lined_at is None else self.lined_at

    def expired(self, now_ms: float) -> bool:
        return self.deadline_at is not None and now_ms >= self.deadline_at

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Order:
        spilled = rec.get("spilled_from")
        return cls(
            job_id=rec["job_id"], tenant=_shared(rec["tenant"]), model=_shared(rec["model"]),
            provider=_shared(rec["provider"]), provider_model=_shared(rec["provider_model"]), prompt=rec["prompt"],
            attempt=int(rec["attempt"]), queued_at=int(rec["queued_at"]), image_url=rec.get("image_url"),
            params=_mapping(rec.get("params")), tried=tuple(rec.get("tried") or ()),
            webhook_url=rec.get("webhook_url"), metadata=_mapping(rec.get("metadata")),
            priority=_shared(rec.get("priority") or "standard"), deadline_at=rec.get("deadline_at"),
            spilled_from=None if spilled is None else _shared(spilled), lined_at=rec.get("lined_at"))

    def to_record(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "tenant": self.tenant, "model": self.model, "provider": self.provider,
            "provider_model": self.provider_model, "prompt": self.prompt, "image_url": self.image_url,
            "params": dict(self.params), "attempt": self.attempt, "tried": list(self.tried),
            "queued_at": self.queued_at, "webhook_url": self.webhook_url, "metadata": dict(self.metadata),
            "priority": self.priority, "deadline_at": self.deadline_at, "spilled_from": self.spilled_from,
            "lined_at": self.lined_at}

    def moved_to(self, provider: str, provider_model: str) -> Order:
        """This order's next attempt, at ``provider``, with this provider counted as tried."""
        return replace(self, provider=provider, provider_model=provider_model, attempt=self.attempt + 1,
                       tried=(*self.tried, self.provider))

    def spilled_to(self, model: str, provider: str, provider_model: str, at_ms: int) -> Order:
        """This order's next attempt, for the equivalent ``model`` at ``provider``, joining its line
        at ``at_ms`` (epoch milliseconds). Fallbacks from there follow ``model``'s own chain;
        ``tried`` is for outages and stays as it was."""
        return replace(self, model=model, provider=provider, provider_model=provider_model,
                       attempt=self.attempt + 1, spilled_from=self.model, lined_at=at_ms)

    @property
    def idempotency_key(self) -> str:
        """What the provider sees as the identity of this attempt (a retry returns the first job)."""
        return f"{self.job_id}:{self.attempt}"


@dataclass(frozen=True)
class Slot:
    attempt: int
    taken_at: float
    order: Order
    provider_job_id: str | None = None
    """Set once the provider accepted the job."""

    def encode(self) -> bytes:
        return table_value({"attempt": self.attempt, "taken_at": self.taken_at, "order": self.order.to_record(),
                            "provider_job_id": self.provider_job_id})

    @classmethod
    def decode(cls, raw: bytes) -> Slot:
        doc = orjson.loads(raw)
        if "a" in doc:  # written before the fields had names
            return cls(attempt=doc["a"], taken_at=doc["t"], order=Order.from_record(doc["o"]),
                       provider_job_id=doc.get("pj"))
        return cls(attempt=doc["attempt"], taken_at=doc["taken_at"], order=Order.from_record(doc["order"]),
                   provider_job_id=doc.get("provider_job_id"))

    def submitted(self, provider_job_id: str, by: Order | None = None) -> Slot:
        """The slot once its provider accepted the job that ``by`` submitted (default: its own
        order; an earlier attempt's when a later attempt took the slot over meanwhile: ``adopted``)."""
        return replace(self, provider_job_id=provider_job_id, order=by or self.order)

    def taken_over(self, order: Order, now: float) -> Slot:
        """This slot, held for an earlier attempt of ``order``'s job, as the slot of ``order``'s
        attempt, a later one at the same provider (``Dispatcher.take_over``). A provider job it
        holds stays, with the order that made it (``adopted``) and the time it was taken (the
        job's render began then); without one, the slot is ``order``'s, as if taken for it ``now``."""
        if self.provider_job_id:
            return replace(self, attempt=order.attempt)
        return Slot(attempt=order.attempt, taken_at=now, order=order)

    @property
    def adopted(self) -> bool:
        """Whether its provider job was made by an earlier attempt's order than the attempt the slot
        serves (``taken_over``): a word of that job told before may name the earlier attempt."""
        return self.order.attempt < self.attempt


def timed_out_attempt(timed_out: Slot, now: Slot | None) -> int:
    """The attempt a slot's timeout fails once it has cancelled the slot's provider job: ``now``
    is the slot as it stands after the cancel. A later attempt that took the slot over meanwhile
    (``Slot.taken_over``) took the provider job too, and with it its timeout: the failure is that
    attempt's. Told as the earlier attempt's, the jobs table would take it as old news, and only
    the provider's word of the cancel would end the later attempt (``failed``, "cancelled at" the
    provider: ``floodgate.jobs.state``), not saying it ran out of time. (A status call that hears
    that word during the cancel does not tell it: ``Poller.timing_out``. A provider's webhook of it
    read before the failure still ends the job so, as for any timeout: the failure is told once the
    cancel has been answered, so that the provider has let the job go before the slot is freed.)
    Otherwise it is the timed out slot's own attempt (a slot freed meanwhile, or taken again for
    another provider job, is not the timeout's to speak for)."""
    if now is not None and now.attempt > timed_out.attempt and now.provider_job_id == timed_out.provider_job_id:
        return now.attempt
    return timed_out.attempt


@dataclass(frozen=True)
class Parked:
    order: Order
    offset: int
    """The dispatch offset the order was read at: lines are rebuilt oldest first."""

    def encode(self) -> bytes:
        return table_value({"order": self.order.to_record(), "offset": self.offset})

    @classmethod
    def decode(cls, raw: bytes) -> Parked:
        doc = orjson.loads(raw)
        if "o" in doc:
            return cls(order=Order.from_record(doc["o"]), offset=doc["n"])
        return cls(order=Order.from_record(doc["order"]), offset=doc["offset"])


@dataclass(frozen=True)
class CancelMark:
    made_at: float
    end: int | None
    """The dispatch partition's end offset when the mark was made (None if unknown)."""

    def encode(self) -> bytes:
        return table_value({"t": self.made_at, "end": self.end})

    @classmethod
    def decode(cls, raw: bytes) -> CancelMark:
        doc = orjson.loads(raw)
        return cls(made_at=doc["t"], end=doc.get("end"))


def mark_expired(mark: CancelMark, read_to: int | None, now: float, *, grace: float = MARK_GRACE,
                 max_age: float = MARK_MAX_AGE) -> bool:
    """Whether a cancel mark may go. ``read_to`` is the last offset of the mark's dispatch partition
    this worker has read since it got the partition: once that is past the mark's ``end``, every
    order written before the cancel has been seen, so after ``grace`` seconds no order can still
    need the mark."""
    age = now - mark.made_at
    if age >= max_age:
        return True
    end = mark.end
    return age >= grace and end is not None and (end == 0 or (read_to is not None and read_to >= end - 1))


def is_parked(raw: bytes) -> bool:
    """Whether a raw ``inflight-<provider>`` value is a waiting order (``Parked``), not a held slot,
    read from its first field alone (no decoding): a parked order's is ``order`` (``o`` before the
    fields had names), a slot's ``attempt`` (``a``). Both encoders write that field first."""
    return raw.startswith(b'{"o')


def unsubmitted(raw: bytes) -> bool:
    """Whether a raw slot value is of a slot whose provider has not yet accepted its job, read
    from its last field alone (``provider_job_id``, or ``pj`` before the fields had names, is
    written last): the API's job view skips those without decoding them."""
    return raw.endswith((b'"provider_job_id":null}', b'"pj":null}'))


def decode_entry(raw: bytes) -> Slot | Parked:
    """An ``inflight-<provider>`` value: a held slot or a waiting order."""
    return Parked.decode(raw) if is_parked(raw) else Slot.decode(raw)


def slot_key(partition: int, job_id: str) -> bytes:
    """Slots, parked orders and marks are keyed by dispatch partition and job: a partition's
    entries are found from the keys alone, and a release finds its job's slot without a scan."""
    return f"{partition}:{job_id}".encode()


def parse_slot_key(key: bytes) -> tuple[int, str]:
    partition, _, job_id = key.decode().partition(":")
    return int(partition), job_id
