"""How fast a provider's own queue moves, and how long its jobs run once out of it. Pure: clocks
are arguments.

Some providers queue what they accept: fal counts only running jobs against a customer's limit,
keeps the rest waiting for its runners, and says how many requests are ahead of each
(``queue_position``). A job Floodgate submitted may then wait there for minutes, its place
followed by status calls (``streams.poller``) and shown as ``provider_queue_position``. The
API's queue board (``floodgate.queueboard``) keeps a ``ProviderQueue`` for each such provider,
fed from the jobs' snapshots, so such a job is told when it should start and be ready, as a job
waiting in Floodgate's own line is:

* **How fast the queue moves** is measured in places a second, from each job's own places over
  time: a job seen at place 7, then at place 4 three seconds later, saw the queue move three
  places in three seconds; one seen at place 0, then running, moved one place. The requests
  ahead of ours are other customers' too, so our jobs' starts alone would say nothing of the
  queue's pace; the places do. The rate is the places over the seconds of the recent moves
  (``MOVES`` at most, none older than ``MAX_AGE``), every job's weighed by its time. A place that
  grew (fal puts a request over its limit back in line) counts as time without a move.
* **A job's first move does not count.** A job enters the queue at some moment of the move under
  way there, so its first move measures only what was left of that move: half a render on average
  where one runner serves the queue, and nothing at all when an idle runner picks up the job ahead
  (every job queued behind it then moves a place within milliseconds). Counted, those made the
  pace twice too fast (a CI run told a job 0.9 s for a start 2.7 s away). From its second place
  on, a job's moves run from one move of the queue to the next. Its first place still counts from
  its submission, not from the status call that first told it (which a busy worker may make late):
  that is how long it has waited there, for what is left of its move and for a stalled queue.
* **A stalled queue slows the estimate down.** Each move's seconds are how long a job sat at a
  place before it was seen to move (the status calls' period included); a job that has sat at its
  place longer than that, on average, adds the excess as seconds without a move, so the
  estimate follows a queue that stopped instead of promising its old pace.
* **A job's wait** is a move's time (``1 ÷ rate``) for each place ahead of it, and what is left of
  the move it is in: ``place ÷ rate + max(0, 1 ÷ rate − the time it has sat at its place)``. A job
  that has sat longer than a move takes waits the places ahead at the slowed pace, never less.
* **Run times** come from the jobs seen running and then completed: the median of the recent
  (``RUNS``), which leaves the time in the queue out (the board's render times count from the
  submission, queue included, as that is how long the job holds one of our slots).
* **The wait a job submitted now should meet there** (``entry_wait``), for a job still in
  Floodgate's line: the median of the places the recent jobs first had in the queue (a job first
  seen running had none: no wait), at the queue's pace. Only jobs seen arriving count (``arrive``:
  the board saw them leave Floodgate's line for this provider, also before it first saw the
  provider keep a job waiting: those still in flight then arrive when it does). A view catching up
  after a restart meets most jobs at their latest place, halfway up the queue, which is not where
  they entered it: counted, those made the entry wait too short until newer jobs replaced them.
"""
from __future__ import annotations

import heapq
import statistics
from collections import deque
from typing import TypeVar

MOVES = 256
"""Moves kept (the most recent) to measure the queue's pace."""
MIN_MOVES = 2
"""Fewer moves than this say nothing yet: the first one may be a jump after a long pause."""
MAX_AGE = 900.0
"""Seconds after which a move no longer counts: after a quiet spell the old pace says nothing."""
RUNS = 200
"""Run times kept (the most recent)."""
V = TypeVar("V")

MAX_TRACKED = 100_000
"""Jobs followed at most in the queue and running (bounds a view whose jobs' ends it never sees)."""


class ProviderQueue:
    """One provider's own queue, as the snapshots of our jobs in it show it."""

    def __init__(self) -> None:
        self.places: dict[str, tuple[int, float]] = {}
        """Job id → (its place, since when: the first word of that place), of our jobs waiting in
        the provider's queue."""
        self.moves: deque[tuple[float, int, float]] = deque()
        """(when seen, places moved, seconds it took) of the recent moves."""
        self.running: dict[str, float] = {}
        """Job id → when it was seen starting to run, of the jobs out of the queue not yet ended."""
        self.runs: deque[float] = deque(maxlen=RUNS)
        """Seconds of the recent runs, from the running word to the completion."""
        self.entries: deque[int] = deque(maxlen=RUNS)
        """The first place of each of the recent jobs seen arriving (-1: it ran at once, it
        waited for nothing): where a job submitted now should enter the queue."""
        self.entered: set[str] = set()
        """Jobs still at the first place they were seen at: their next move is only what was left of
        the move under way when they entered, not a move of the queue's (it does not count)."""
        self.submitted: dict[str, float] = {}
        """Job id → when it was submitted, of the jobs whose first place here is still to come:
        they have held that place since (see ``_placed``)."""
        self.arriving: dict[str, bool] = {}
        """Jobs seen leaving Floodgate's line for this provider whose first word here (a place,
        or running) is still to come: that word tells where they entered the queue."""
        self._entry_place: int | None = None
        self._run_median: float | None = None
        """The medians of ``entries`` and ``runs``, kept until the next entry or run (the board
        asks for them on every answer about a job for this provider)."""
        self._places_moved = 0
        self._seconds = 0.0
        self._sinces: list[tuple[float, str]] = []
        """A heap of (since, job id) for every place taken; an entry whose job moved on since is
        dropped when it reaches the top (the earliest ``since`` of ``places`` without a pass over
        them: the board asks on every message of a job in the queue)."""

    def observe(self, job_id: str, status: str, place: int | None, at: float) -> None:
        """A snapshot of ``job_id`` at this provider: its ``status``, its place in the provider's
        queue (``provider_queue_position``) and when it changed (epoch seconds)."""
        if status == "submitted":
            if place is not None:
                self._placed(job_id, place, at)
            elif job_id not in self.places and job_id not in self.submitted:
                _track(self.submitted, job_id, at)
        elif status == "running":
            self._ran(job_id, at)
        elif status == "completed":
            self._completed(job_id, at)
        else:  # failed, cancelled, expired, or back in Floodgate's line
            self.forget(job_id)

    def arrive(self, job_id: str) -> None:
        """``job_id`` left Floodgate's line for this provider: its first place here (or its
        running at once) is where it entered the queue."""
        if job_id in self.places or job_id in self.running:
            return
        _track(self.arriving, job_id, True)

    def _placed(self, job_id: str, place: int, at: float) -> None:
        held = self.places.get(job_id)
        if held is None:
            if len(self.places) >= MAX_TRACKED:
                self.forget(next(iter(self.places)))
            if self.arriving.pop(job_id, False):
                self._entered(place)
            # Its first place is told by the first status call after the submission, which may
            # come late on a busy worker. It has waited there since its submission (or at a place
            # behind): what is left of its move, and a stall, count from then.
            self._take_place(job_id, place, min(at, self.submitted.pop(job_id, at)))
            self.entered.add(job_id)
            return
        was, since = held
        if place == was or at <= since:
            return  # the same place told again, or older news: it keeps the time it got there
        if job_id in self.entered:
            self.entered.discard(job_id)  # the rest of a move, not one (see the module's note)
        else:
            self._moved(at, max(0, was - place), at - since)
        self._take_place(job_id, place, at)

    def _entered(self, place: int) -> None:
        self.entries.append(place)
        self._entry_place = None

    def _take_place(self, job_id: str, place: int, at: float) -> None:
        self.places[job_id] = (place, at)
        heapq.heappush(self._sinces, (at, job_id))
        if len(self._sinces) > 4 * len(self.places) + 64:  # (mostly stale entries: start afresh)
            self._sinces = [(since, job) for job, (_, since) in self.places.items()]
            heapq.heapify(self._sinces)

    def _ran(self, job_id: str, at: float) -> None:
        self.submitted.pop(job_id, None)
        held = self.places.pop(job_id, None)
        if held is not None:
            was, since = held
            if at > since and job_id not in self.entered:
                self._moved(at, was + 1, at - since)  # from its place to the front, and out
            self.entered.discard(job_id)
        elif self.arriving.pop(job_id, False):
            self._entered(-1)  # it ran without a wait in the queue
        if job_id not in self.running:
            _track(self.running, job_id, at)

    def _completed(self, job_id: str, at: float) -> None:
        self.places.pop(job_id, None)
        self.entered.discard(job_id)
        self.arriving.pop(job_id, None)
        self.submitted.pop(job_id, None)
        began = self.running.pop(job_id, None)
        if began is not None and at >= began:
            self.runs.append(at - began)
            self._run_median = None

    def forget(self, job_id: str) -> None:
        """``job_id`` left this provider without a completion to learn from."""
        self.places.pop(job_id, None)
        self.entered.discard(job_id)
        self.running.pop(job_id, None)
        self.arriving.pop(job_id, None)
        self.submitted.pop(job_id, None)

    def _earliest(self) -> float | None:
        """The earliest ``since`` among ``places`` (None: no job waits in the queue)."""
        sinces, places = self._sinces, self.places
        while sinces and places.get(sinces[0][1], (0, None))[1] != sinces[0][0]:
            heapq.heappop(sinces)  # (its job moved on, or left)
        return sinces[0][0] if sinces else None

    def _moved(self, at: float, places: int, seconds: float) -> None:
        self.moves.append((at, places, seconds))
        self._places_moved += places
        self._seconds += seconds
        if len(self.moves) > MOVES:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, places, seconds = self.moves.popleft()
        self._places_moved -= places
        self._seconds -= seconds

    def rate(self, now: float) -> float | None:
        """Places the queue moves a second; None while too little has been seen."""
        moves = self.moves
        while moves and moves[0][0] < now - MAX_AGE:
            self._drop_oldest()
        if len(moves) < MIN_MOVES or self._places_moved <= 0:
            return None
        seconds = max(self._seconds, 1e-3)
        if (earliest := self._earliest()) is not None:
            # The longest any job has sat at its place, beyond what a move took on average.
            seconds += max(0.0, now - earliest - seconds / len(moves))
        return self._places_moved / seconds

    def wait(self, job_id: str, place: int, now: float) -> float | None:
        """Seconds until the job at ``place`` should start to run; None while the pace is not known."""
        rate = self.rate(now)
        if rate is None:
            return None
        since = self.places.get(job_id, (place, now))[1]
        return place / rate + max(0.0, 1.0 / rate - (now - since))

    def entry_wait(self, now: float) -> float | None:
        """Seconds a job submitted now should wait in the queue before it runs; None while not
        known (no job seen entering it, or no pace while jobs had to wait)."""
        if not self.entries:
            return None
        place = self._entry_place
        if place is None:
            place = self._entry_place = statistics.median_low(self.entries)
        if place < 0:
            return 0.0
        rate = self.rate(now)
        return None if rate is None else (place + 1) / rate

    def run_time(self) -> float | None:
        """Median seconds a job runs once out of the queue; None before one was seen."""
        if self._run_median is None and self.runs:
            self._run_median = statistics.median(self.runs)
        return self._run_median

    def running_since(self, job_id: str) -> float | None:
        """When ``job_id`` was seen starting to run (None: not seen)."""
        return self.running.get(job_id)


def _track(jobs: dict[str, V], job_id: str, value: V) -> None:
    """``jobs[job_id] = value``, the oldest entry dropped first when ``MAX_TRACKED`` are held."""
    if len(jobs) >= MAX_TRACKED:
        jobs.pop(next(iter(jobs)))
    jobs[job_id] = value


__all__ = ["MAX_AGE", "MIN_MOVES", "MOVES", "RUNS", "ProviderQueue"]
