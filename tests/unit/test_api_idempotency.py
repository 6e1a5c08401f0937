"""Idempotency bookkeeping: replay, conflict, in-flight coalescing, LRU bound."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from floodgate.api.idempotency import IdempotencyCache, Outcome, key_problem, matches_snapshot
from floodgate.api.view import untracked


@pytest.mark.parametrize(
    ("key", "ok"),
    [("abc", True), ("a" * 255, True), ("", False), ("a" * 256, False), ("naïve", False), ("tab\there", False)],
)
def test_key_rules(key: str, ok: bool) -> None:
    assert (key_problem(key) is None) is ok


async def test_replay_and_conflict_after_acceptance() -> None:
    cache = IdempotencyCache()
    assert cache.check("j", "h1") == (Outcome.NEW, None)
    cache.begin("j", "h1")
    cache.finish("j", accepted=True)
    assert cache.check("j", "h1") == (Outcome.REPLAY, None)
    assert cache.check("j", "h2") == (Outcome.CONFLICT, None)


async def test_failed_produce_is_forgotten() -> None:
    cache = IdempotencyCache()
    cache.begin("j", "h1")
    cache.finish("j", accepted=False)
    assert cache.check("j", "h1") == (Outcome.NEW, None)


async def test_concurrent_same_body_waits_for_the_first() -> None:
    cache = IdempotencyCache()
    cache.begin("j", "h1")
    outcome, flying = cache.check("j", "h1")
    assert outcome is Outcome.IN_FLIGHT and flying is not None
    assert cache.check("j", "h2") == (Outcome.CONFLICT, None)
    cache.finish("j", accepted=True)
    assert await asyncio.wait_for(flying, 1) is True
    assert cache.check("j", "h1")[0] is Outcome.REPLAY
    cache.begin("k", "h")
    with pytest.raises(RuntimeError):
        cache.begin("k", "h")


def test_lru_bound() -> None:
    cache = IdempotencyCache(max_entries=2)
    cache.remember("a", "h")
    cache.remember("b", "h")
    cache.check("a", "h")  # touch a: b is now the least recently used
    cache.remember("c", "h")
    assert len(cache) == 2
    assert cache.check("b", "h")[0] is Outcome.NEW
    assert cache.check("a", "h")[0] is Outcome.REPLAY


def test_matches_snapshot_compares_what_snapshots_carry() -> None:
    request = {"tenant": "t", "user_id": "u", "model": "m", "webhook_url": None, "metadata": {"k": "v"}}
    snapshot = {"tenant": "t", "user_id": "u", "model": "m", "webhook_url": None, "metadata": {"k": "v"}}
    assert matches_snapshot(request, snapshot)
    assert not matches_snapshot({**request, "model": "other"}, snapshot)
    assert not matches_snapshot({**request, "metadata": {}}, snapshot)
    # As the job view holds it (nested maps as pairs), and with a device to push to.
    push = {"platform": "fcm", "token": "device-1"}
    held = untracked({**snapshot, "push": push})
    assert matches_snapshot({**request, "notify": {"push": push}}, held)
    assert not matches_snapshot({**request, "notify": {"push": {**push, "token": "device-2"}}}, held)
    assert not matches_snapshot(request, held)  # no push asked for this time


def test_matches_snapshot_compares_request_hashes_when_the_snapshot_has_one() -> None:
    request: dict[str, Any] = {"tenant": "t", "user_id": "u", "model": "m", "webhook_url": None, "metadata": {},
               "request_hash": "a" * 64}
    # Same visible fields, another prompt (so another hash): a conflict, not a replay.
    snapshot: dict[str, Any] = {"tenant": "t", "user_id": "u", "model": "m", "webhook_url": None, "metadata": {},
                "request_hash": "b" * 64}
    assert not matches_snapshot(request, snapshot)
    assert matches_snapshot(request, {**snapshot, "request_hash": "a" * 64})
    # A job accepted before snapshots carried the hash: the visible fields decide.
    assert matches_snapshot(request, {**snapshot, "request_hash": None})
    assert not matches_snapshot(request, {**snapshot, "request_hash": None, "model": "other"})


def test_what_requests_holds_wins_over_what_this_process_remembers() -> None:
    cache = IdempotencyCache()
    # This process answered 202 for body B; another process's record of the key came first.
    cache.remember("j", "hB")
    cache.learn("j", "hA")
    assert cache.check("j", "hA")[0] is Outcome.REPLAY
    assert cache.check("j", "hB")[0] is Outcome.CONFLICT
    # The later record (this process's, dropped by admission as a duplicate) changes nothing,
    # and neither does this process remembering its own 202 again.
    cache.learn("j", "hB")
    cache.remember("j", "hB")
    assert cache.check("j", "hA")[0] is Outcome.REPLAY


def test_a_key_learned_from_requests_alone_is_checked() -> None:
    cache = IdempotencyCache(max_entries=2)
    cache.learn("j", "h1")
    assert cache.check("j", "h1") == (Outcome.REPLAY, None)
    assert cache.check("j", "h2") == (Outcome.CONFLICT, None)
    cache.learn("k", "h")
    cache.learn("l", "h")  # learned keys share the bound: the least recently used goes
    assert len(cache) == 2
    assert cache.check("j", "h1")[0] is Outcome.NEW
