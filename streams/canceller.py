"""A ``cancelled`` release → the provider job cancelled, or the order kept from the provider,
wherever the job is; its slot given back. One ``SlotCanceller`` per ``Dispatcher``
(``streams.dispatcher``), which reads the release and owns it.

**Cancelled jobs.** A user cancel is a ``cancelled`` event; the jobs agent makes the job terminal
and sends the release (status ``cancelled``) to its provider's release topic, i.e. to the
partition that holds the job's slot or order. Where the job is at that moment decides:

* *submitted* (its slot has a provider job id): a background task cancels the provider job,
  then frees the slot, in that order, so the provider never sees more than the limit. A failed
  cancel is only logged and the slot is freed all the same (the provider may then answer 429
  for a while, which submissions retry);
* *being submitted* (``key in lane.submitting``): the job is marked cancelled and the slot is
  kept; the submission looks for the mark before every provider call and once the call returns,
  so it either never reaches the provider or cancels the job it just created, then frees the slot;
* *waiting for a slot*: its order is taken out of the line and the waiting table;
* *still in Kafka* (not yet read, or written after the cancel: a fallback running behind it): the
  job is marked, and intake drops (acknowledges) the order when it comes and deletes the mark.
  Marks never read expire (``mark_expired``) once the partition has been read past the end offset
  it had when the mark was made, so a mark outlives every order written before the cancel, and
  at most ``MARK_MAX_AGE`` otherwise.

A cancelled job cannot slip through unseen either: if its order was submitted anyway (a mark lost
with a crash before its changelog write, a duplicate order), the provider's first webhook (or the
poller's status, when webhooks are lost) reaches a terminal job, and the jobs agent answers every
provider event of the job's attempt on a terminal job with a release, whose status ``cancelled``
cancels the provider job here. A word of an attempt the job left (a provider job it left, a slot of
an earlier attempt) is answered only when it tells an end (``floodgate.jobs.events.stray_end``):
that frees the slot, and cancels nothing.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from faust.types import TP

from floodgate.errors import FloodgateError

if TYPE_CHECKING:
    from streams.dispatcher import Dispatcher

log = logging.getLogger(__name__)


class SlotCanceller:
    """The cancels of one provider's dispatcher: a cancelled job's slot, waiting order or mark,
    and the provider calls that cancel a job (also the timeout's and a submission's)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        # The dispatcher itself: its connector and consumer are read, its slots freed and its lines
        # shrunk, through it.
        self.dispatcher = dispatcher
        self.pipe, self.name, self.lane = dispatcher.pipe, dispatcher.name, dispatcher.lane

    async def cancel_at_provider(self, job_id: str, provider_job_id: str) -> None:
        try:
            await self.dispatcher.connector.cancel(self.pipe.session(), provider_job_id)
        except FloodgateError as exc:
            log.warning("cancel of %s (%s) at %s failed: %s", job_id, provider_job_id, self.name, exc)
        except Exception:  # a background chore must not die silently
            log.exception("cancel of %s (%s) at %s failed", job_id, provider_job_id, self.name)
        else:
            log.info("cancelled %s (%s) at %s", job_id, provider_job_id, self.name)

    async def cancel_then_free(self, partition: int, key: bytes, job_id: str, provider_job_id: str) -> None:
        try:
            await self.cancel_at_provider(job_id, provider_job_id)
        finally:
            self.lane.cancelling.discard(key)
        # (Not in `finally`: a worker shutting down leaves the slot to the next owner's poller.)
        slot = self.lane.slots.get(key)
        if slot is not None and slot.provider_job_id == provider_job_id:
            await self.dispatcher.free(partition, key, job_id)

    async def cancel(self, partition: int, key: bytes, job_id: str) -> None:
        """The job was cancelled: see the module docstring for each place its order may be."""
        d, lane = self.dispatcher, self.lane
        slot, end = lane.slots.get(key), None
        if not (slot is not None and slot.provider_job_id):
            # Asked first, so that nothing can change between looking at the job and marking it.
            end = await self.end_offset(partition)
            slot = lane.slots.get(key)
        if slot is not None and slot.provider_job_id:
            if key not in lane.cancelling:  # else a cancel of it is already under way
                lane.cancelling.add(key)
                lane.spawn(self.cancel_then_free(partition, key, job_id, slot.provider_job_id),
                           f"cancel:{key.decode()}")
            return
        line = lane.lines[partition]
        dropped = line.take(job_id) is not None
        lane.unpark(partition, key)  # if it was waiting here, it never gets a slot
        if not dropped or key in lane.submitting:
            lane.mark(partition, key, end, time.time())
            if key not in lane.submitting and slot is not None:
                # A slot whose submission is not running: it is being started (the submission
                # will find the mark) or was left by a crash (the poller's re-dispatch will).
                await d.free(partition, key, job_id)
        if dropped:
            d.shrank(partition)

    async def end_offset(self, partition: int) -> int | None:
        """The dispatch partition's end offset now, from the broker (None if it does not answer)."""
        d = self.dispatcher
        tp = TP(d.orders_topic, partition)
        try:
            return int((await asyncio.wait_for(d.app.consumer.highwaters(tp), 5.0))[tp])
        except Exception as exc:  # any failure only makes the mark last MARK_MAX_AGE
            log.info("end offset of %s[%d] unknown: %s", tp.topic, partition, exc)
            return None
