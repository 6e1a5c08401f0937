"""Workarounds for faust-streaming (0.15.3) behaviours that lose records, each with the evidence.

**Stream partitions resume before the seek to committed offsets.** When table recovery ends,
Faust's ``Recovery.on_recovery_completed`` (and ``_resume_streams``) first resumes the stream
partitions, then awaits ``consumer.perform_seek()``. The fetcher runs all along (it was reading
changelogs), so in between it hands the agents records prefetched from wherever aiokafka's
position happened to be; the seek then discards part of them and the next batch jumps ahead, and
Faust's drain loop records the jump as a gap that counts as acknowledged: the offsets inside it
are committed without ever being processed (the same class of bug as faust-streaming #216/#221).
Measured in paired runs of the start that ``tests/integration/test_start_after_recovery.py`` makes
(a worker with a 50,000-record changelog to recover and 2,534 records behind committed offsets):
stock Faust lost 1–12 of the 2,534 in 7 of 17 starts; with the fix, 0 of 17 (the worker's fetcher
has changed since, and that start now rarely shows the race: the test's docstring). First seen as
dispatch orders that no agent ever saw in the backlog stop test. ``hold_streams_until_seek`` makes
the order seek first: stream partitions resumed during a rebalance are held back and resumed once
the seek has run.

**A partition that stops being handed out: the fetcher drains partitions that are not active.**
Faust fetches with ``Consumer._wait_next_records``: if some partition is active it hands aiokafka's
``Fetcher.fetched_records`` its *live* ``_active_partitions`` set, and that call waits up to a
second for data (in the consumer thread). aiokafka reads ``partitions`` with
``if partitions and tp not in partitions: continue``: an *empty* set means "every partition". So
when the last active partition is paused while the fetch waits, aiokafka drains every partition
it has prefetched (it prefetches all assigned partitions: Faust never pauses them in aiokafka) and
moves their positions past those records; Faust's ``getmany`` then drops each record whose
partition is not active (or buffered). Nothing is lost for good only if a seek to committed
offsets follows. It happens at the end of every table recovery: recovery pauses the changelogs
(the last active partitions; the stream partitions are paused, or held by
``hold_streams_until_seek``) and then seeks the stream partitions while a fetch may still be
waiting. A stream partition sought before the drain loses the records up to its end: Faust sets
its read offset to the committed offset, aiokafka's position is at the end, and nothing more is
handed out until a new record arrives (a dispatch partition with a backlog and no new orders:
"the stalled partition", 3 times in 52 loaded runs of the backlog stop test), or the next record
arrives after a gap that Faust counts as acknowledged (a lost event or webhook). Seen in the
worker logs of loaded runs: a batch of ``dispatch.wan[0]`` 29..51 fetched during the seek, none
handed out, and the partition idle until the watchdog. ``fetch_only_active`` hands the fetcher a
view of the live set that is never empty (``LiveActive``), so a partition that is not active
keeps its records in aiokafka's buffer and they are handed out once it is resumed.
``tests/unit/test_faust_fixes.py`` reproduces the loss with Faust's and aiokafka's own code and
pins both behaviours (an upgrade that changes them fails there). Backlog test file runs, two at a
time on the shared 2-core machine (load 3-10): before, the watchdog fired in 1 of 8 runs (both
dispatch partitions) and 6 of 8 had fetched batches never handed out outside a rebalance; with
the fix, 0 firings and 0 such batches in 20 runs.

**A full waiting line is let go by Faust's own buffer.** The submitter pauses a dispatch partition
whose waiting line is full with Faust's ``on_buffer_full``, the same call Faust makes when a
stream's buffer is under pressure. When that buffer drains again Faust calls ``on_buffer_drop`` for
every partition it finds paused that way, ours included: the partition fetched again with its line
still full, each fetch parked another batch of orders, and the line (and the ``waiting-<provider>``
table behind it) grew with the backlog instead of the backlog waiting in Kafka. Seen as the worker's
resident set growing by ~4 KB per queued job in the memory bench (tracemalloc: the parked orders).
``hold_partitions`` gives the consumer a set of held partitions that ``on_buffer_drop`` leaves
paused; only the submitter, once its line has drained, lets them go.

The submitter's own pause (``on_buffer_full``/``on_buffer_drop`` on a dispatch partition whose
waiting line is full) is not a cause of the stalled partition: it moves the partition between ``_active_partitions`` and
``_buffered_partitions``, and ``getmany`` hands out records of both. ``watch_stalled_partitions``
stays as the safety net: a stream partition with records waiting past the last one handed out, and
no progress for ``stall_after`` seconds, is logged with what the consumer knows (``TRAIL``) and
sought back to its committed offset (records already processed come again; every agent is
idempotent); ``floodgate_stalled_partitions_total`` counts it and should stay 0.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import faust
from faust.types import TP

log = logging.getLogger(__name__)


def hold_streams_until_seek(app: faust.App, consumer: Any) -> None:
    """Patch ``consumer`` (an instance, not the class) so that during a rebalance a stream
    partition is resumed only after the next ``perform_seek`` (changelogs resume at once)."""
    resume, seek = consumer.resume_partitions, consumer.perform_seek
    held: set[TP] = set()

    def resume_partitions(tps: Iterable[TP]) -> None:
        tps = set(tps)
        if app.rebalancing:
            changelogs = app.tables.changelog_topics
            streams = {tp for tp in tps if tp.topic not in changelogs}
            held.update(streams)
            tps -= streams
        if tps:
            resume(tps)

    async def perform_seek() -> None:
        try:
            await seek()
        finally:
            if held:
                # Only what is still assigned: a rebalance may have come between.
                ready = held & set(consumer.assignment())
                held.clear()
                if ready:
                    resume(ready)

    consumer.resume_partitions = resume_partitions
    consumer.perform_seek = perform_seek


class LiveActive:
    """Faust's live set of active partitions as the fetcher sees it: membership follows the set,
    but it is never "empty" (aiokafka reads an empty set as "every partition")."""

    __slots__ = ("tps",)

    def __init__(self, tps: set[Any]) -> None:
        self.tps = tps

    def __contains__(self, tp: object) -> bool:
        return tp in self.tps

    def __bool__(self) -> bool:
        return True

    def __iter__(self) -> Any:
        return iter(list(self.tps))

    def __len__(self) -> int:
        return len(self.tps)


def fetch_only_active(consumer: Any) -> None:
    """Patch ``consumer`` (an instance) so that the fetcher never drains a partition that is not
    active (see the module docstring: this is the stalled partition)."""
    getmany = consumer._getmany

    async def _getmany(active_partitions: Any, timeout: float) -> Any:
        if isinstance(active_partitions, set):
            active_partitions = LiveActive(active_partitions)
        return await getmany(active_partitions, timeout)

    consumer._getmany = _getmany


def hold_partitions(consumer: Any) -> None:
    """Patch ``consumer`` (an instance) with ``held_partitions``: partitions paused by their owner
    (``on_buffer_full``) that Faust's stream-buffer relief (``on_buffer_drop``) must not resume.
    The owner discards a partition from the set before resuming it itself."""
    held: set[Any] = set()
    on_buffer_drop = consumer.on_buffer_drop

    def guarded_drop(tp: Any) -> None:
        if tp not in held:
            on_buffer_drop(tp)

    consumer.held_partitions = held
    consumer.on_buffer_drop = guarded_drop


class StallWatch:
    """Pure bookkeeping: which partitions have had records waiting with no progress for too long."""

    def __init__(self, stall_after: float) -> None:
        self.stall_after = stall_after
        self._since: dict[Any, tuple[int | None, float]] = {}

    def observe(self, tp: Any, read: int | None, end: int, now: float) -> bool:
        """``read``: the last offset handed out (None: none yet); ``end``: the partition's end
        offset. True when records have waited past ``read`` for ``stall_after`` seconds without
        ``read`` moving; the clock then starts again, so a stall is reported once per period."""
        waiting = end > (read + 1 if read is not None else 0)
        last = self._since.get(tp)
        if not waiting or last is None or last[0] != read:
            self._since[tp] = (read, now)
            return False
        if now - last[1] < self.stall_after:
            return False
        self._since[tp] = (read, now)
        return True

    def forget(self, keep: Iterable[Any]) -> None:
        """Drop partitions no longer assigned."""
        kept = set(keep)
        for tp in [tp for tp in self._since if tp not in kept]:
            del self._since[tp]


def watch_stalled_partitions(app: faust.App, *, interval: float = 5.0, stall_after: float = 30.0,
                             on_stall: Callable[[Any], None] | None = None) -> StallWatch:
    """Register the timer that re-seeks stalled stream partitions (see the module docstring);
    ``on_stall(tp)`` is called for each one it acts on (a metric)."""
    watch = StallWatch(stall_after)

    @app.timer(interval=interval, name="stall-watch")
    async def _check() -> None:
        if app.rebalancing or app.in_recovery:
            return
        await check_stalls(app, watch, time.monotonic(), on_stall=on_stall)

    return watch


async def check_stalls(app: faust.App, watch: StallWatch, now: float,
                       on_stall: Callable[[Any], None] | None = None) -> list[Any]:
    """One look at every active stream partition; returns the ones sought back."""
    consumer: Any = app.consumer
    changelogs = app.tables.changelog_topics
    # Partitions Faust paused (a full agent buffer, our own waiting lines) are idle on purpose.
    active = consumer._get_active_partitions()
    tps = [tp for tp in consumer.assignment() if tp.topic not in changelogs and tp in active]
    watch.forget(tps)
    if not tps:
        return []
    try:
        ends = await asyncio.wait_for(consumer.highwaters(*tps), 10.0)
    except Exception as exc:  # a broker that does not answer: look again next time
        log.info("stall watch: end offsets unknown: %s", exc)
        return []
    sought = []
    for tp in tps:
        read, committed = consumer._read_offset.get(tp), consumer._committed_offset.get(tp)
        end = ends.get(tp)
        if end is None or not watch.observe(tp, read, int(end), now):
            continue
        target = committed if committed is not None else (read + 1 if read is not None else 0)
        log.warning("%s[%d]: records up to offset %d wait, none handed out past %s for %.0f s (committed %s); "
                    "seeking to %d to read them again", tp.topic, tp.partition, int(end) - 1, read, watch.stall_after,
                    committed, target)
        log.warning("%s[%d]: what the consumer knew: %s", tp.topic, tp.partition, describe_partition(consumer, tp))
        if on_stall is not None:
            on_stall(tp)
        await consumer.seek(tp, target)
        sought.append(tp)
    return sought


# --- diagnostics -------------------------------------------------------------------------

TRAIL: deque[str] = deque(maxlen=400)
"""The last calls that changed which partitions Faust fetches, and fetched records that were not
handed out (see ``record_flow``); the stall watch logs a partition's share of it."""


def _name(tp: Any) -> str:
    return f"{tp.topic}[{tp.partition}]"


def record_flow(app: faust.App, consumer: Any) -> None:
    """Patch ``consumer`` (an instance) to keep ``TRAIL``: every pause, resume, buffer-full and
    buffer-drop call, and every fetched batch whose records were not all handed out (logged as a
    warning outside a rebalance, where no seek to committed offsets follows to read them again).
    Costs one dict per fetched batch, nothing per record."""

    def wrap(name: str) -> None:
        inner = getattr(consumer, name)

        def call(tps: Any) -> Any:
            shown = [tps] if isinstance(tps, tuple) else list(tps)  # a TP is a tuple
            TRAIL.append(f"{time.monotonic():.3f} {name} {' '.join(sorted(map(_name, shown)))} "
                         f"rebalancing={app.rebalancing} recovery={app.in_recovery}")
            return inner(tps)

        setattr(consumer, name, call)

    for name in ("on_buffer_full", "on_buffer_drop", "pause_partitions", "resume_partitions"):
        wrap(name)

    getmany = consumer._getmany
    last: dict[Any, tuple[int, int]] = {}

    async def _getmany(active_partitions: Any, timeout: float) -> Any:
        # Faust's fetch loop hands out one batch completely before it fetches the next, so by
        # now the read offset of every partition in the last batch should be at its end.
        for tp, (first, end) in last.items():
            read = consumer._read_offset.get(tp)
            if read is None or read < end:
                TRAIL.append(f"{time.monotonic():.3f} not handed out: {_name(tp)} {first}..{end}, read to {read}, "
                             f"active={tp in consumer._active_partitions} rebalancing={app.rebalancing}")
                if not app.rebalancing and consumer.flow_active:
                    log.warning("fetched records not handed out: %s", TRAIL[-1])
        last.clear()
        records = await getmany(active_partitions, timeout)
        for tp, batch in records.items():
            if batch:
                last[tp] = (batch[0].offset, batch[-1].offset)
        return records

    consumer._getmany = _getmany


def describe_partition(consumer: Any, tp: Any) -> str:
    """What Faust and aiokafka know of ``tp``, and its share of ``TRAIL`` (best effort: aiokafka's
    state is read across threads)."""
    parts = [f"{name}={tp in getattr(consumer, f'_{name}_partitions', ())}"
             for name in ("active", "buffered", "paused")]
    parts.append(f"flow={getattr(consumer, 'flow_active', None)}")
    try:
        inner = consumer._thread._consumer
        state = inner._subscription.subscription.assignment.state_value(tp)
        fetched = inner._fetcher._records.get(tp)
        parts += [f"aiokafka position={state._position} paused={state.paused}",
                  f"prefetched={type(fetched).__name__ if fetched is not None else None}"]
    except Exception as exc:  # diagnostics only
        parts.append(f"aiokafka state unknown: {exc!r}")
    mine = [line for line in TRAIL if _name(tp) in line]
    return "; ".join(parts) + "".join(f"\n  {line}" for line in mine[-40:])
