"""Idempotency-Key bookkeeping for the ingress: a bounded LRU of job id → request hash, plus
the requests still in flight so two concurrent retries with one key produce one record.

The job id itself is derived from (tenant, key), so the cache only has to answer "was that job
accepted, and with which body?". It is per process and bounded: a retry that reaches another
instance (or comes back after eviction or a restart) is checked against the job view instead,
memory or spill (:func:`matches_snapshot`), and if the view does not know the job either, the
record is produced again and admission drops it as a duplicate job id.

Snapshots carry the accepted request's hash (``JobSnapshot.request_hash``), so that check is
exact: another prompt or params under the same key is a 422 on whichever instance with a job view
answers, restarted or not, once the job's first snapshot has reached its view.

An ingress-only process (``floodgate api --roles ingress``) has no job view: it consumes no
notifications, so that a burst of job updates cannot starve its accept path. It learns the keyed
requests every process accepted from ``requests`` itself instead (:mod:`floodgate.api.keyed`): the
ingress and the SDK write a keyed request's hash in a header
(``floodgate.validation.REQUEST_HASH_HEADER``), and the reader puts each into this cache without
decoding a value. What the log says wins over what this process remembers of its own 202s:
admission keeps a job id's first record in its partition, so the first record read for an id is
the job's body, and a later one (the same key, sent at the same moment to two processes) never
replaces it. What still holds everywhere: one key is one job id, so a retry never makes a second
job (admission drops the repeated record, whatever its body).
"""
from __future__ import annotations

import asyncio
import enum
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

MAX_KEY_CHARS = 255
DEFAULT_MAX_ENTRIES = 100_000


class Outcome(enum.Enum):
    NEW = "new"  # not seen: go ahead and produce
    REPLAY = "replay"  # accepted before with the same body: answer the same 202
    CONFLICT = "conflict"  # the key was used with another body: 422
    IN_FLIGHT = "in_flight"  # the same body is being produced right now: wait, then check again


def key_problem(key: str) -> str | None:
    """Why an Idempotency-Key header value is unusable, or None if it is fine."""
    if not key:
        return "must not be empty"
    if len(key) > MAX_KEY_CHARS:
        return f"must be at most {MAX_KEY_CHARS} characters"
    if not key.isascii() or not key.isprintable():
        return "must be printable ASCII"
    return None


class IdempotencyCache:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        # job id → (request hash, read from ``requests``): a hash the log gave is the job's own.
        self._accepted: OrderedDict[str, tuple[str, bool]] = OrderedDict()
        self._in_flight: dict[str, tuple[str, asyncio.Future[bool]]] = {}

    def __len__(self) -> int:
        return len(self._accepted)

    def check(self, job_id: str, request_hash: str) -> tuple[Outcome, asyncio.Future[bool] | None]:
        """What to do with a request for ``job_id``; a future to await comes with ``IN_FLIGHT``."""
        known = self._accepted.get(job_id)
        if known is not None:
            self._accepted.move_to_end(job_id)
            return (Outcome.REPLAY if known[0] == request_hash else Outcome.CONFLICT), None
        flying = self._in_flight.get(job_id)
        if flying is not None:
            if flying[0] != request_hash:
                return Outcome.CONFLICT, None
            return Outcome.IN_FLIGHT, flying[1]
        return Outcome.NEW, None

    def begin(self, job_id: str, request_hash: str) -> None:
        """Mark ``job_id`` as being produced; always pair with :meth:`finish`."""
        if job_id in self._in_flight:
            raise RuntimeError(f"{job_id} is already in flight")
        self._in_flight[job_id] = (request_hash, asyncio.get_running_loop().create_future())

    def finish(self, job_id: str, accepted: bool) -> None:
        """End the in-flight produce; remember the job if the broker acknowledged it."""
        request_hash, done = self._in_flight.pop(job_id)
        if accepted:
            self.remember(job_id, request_hash)
        if not done.done():
            done.set_result(accepted)

    def remember(self, job_id: str, request_hash: str) -> None:
        """This process accepted (or found in its view) ``job_id`` with ``request_hash``; a hash
        already read from ``requests`` for it stays (the first record is the job's)."""
        self._note(job_id, request_hash, from_log=False)

    def learn(self, job_id: str, request_hash: str) -> None:
        """``requests`` holds a record of ``job_id`` with ``request_hash`` (records are read in
        their partition's order, so the first one read for an id is the one admission keeps): it
        replaces what this process remembered itself, and no later record replaces it."""
        self._note(job_id, request_hash, from_log=True)

    def _note(self, job_id: str, request_hash: str, *, from_log: bool) -> None:
        known = self._accepted.get(job_id)
        self._accepted[job_id] = known if known is not None and known[1] else (request_hash, from_log)
        self._accepted.move_to_end(job_id)
        while len(self._accepted) > self.max_entries:
            self._accepted.popitem(last=False)


def matches_snapshot(request: Mapping[str, Any], snapshot: Mapping[str, Any]) -> bool:
    """Whether a job's snapshot could have come from ``request`` (a ``JobRequest`` record).

    A snapshot carries the accepted request's ``request_hash`` (which covers the tenant, the
    prompt, the params and every other field of the body), so a key reused with another body is
    told apart exactly, on any instance and after any restart. A job accepted before snapshots
    carried the hash has none: for it, what the snapshot does carry is compared (the prompt and
    params are not among it).
    """
    known = snapshot.get("request_hash")
    if known:
        return bool(known == request["request_hash"])
    return (
        snapshot.get("tenant") == request["tenant"]
        and snapshot.get("user_id") == request["user_id"]
        and snapshot.get("model") == request["model"]
        and snapshot.get("webhook_url") == request["webhook_url"]
        and dict(snapshot.get("metadata") or {}) == dict(request["metadata"])
        and dict(snapshot.get("push") or {}) == dict((request.get("notify") or {}).get("push") or {})
    )


__all__ = ["DEFAULT_MAX_ENTRIES", "MAX_KEY_CHARS", "IdempotencyCache", "Outcome", "key_problem", "matches_snapshot"]
