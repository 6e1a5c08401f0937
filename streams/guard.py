"""Handling one record so that neither a poison message nor a passing fault loses it.

A record that cannot be processed because of *itself* (bad bytes, invalid content) is parked in
the dead-letter topic at once. Anything else is presumed transient (broker metadata not yet
there, a rebalance, a timeout): it is retried with backoff, and only a record that keeps failing
is parked — with its original bytes, so it can be replayed — and the agent goes on.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from floodgate.errors import SchemaError, ValidationError
from floodgate.throttle import Backoff
from streams.emit import Emitter

log = logging.getLogger(__name__)

POISON = (SchemaError, ValidationError)
RETRIES = 3
BACKOFF = Backoff(base=0.2, factor=5.0, cap=3.0, jitter="none")  # 0.2 s, 1 s, 3 s


async def process(handle: Callable[[], Awaitable[None]], *, emit: Emitter, dlq: str, message: Any, stage: str,
                  on_dead_letter: Callable[[], None] = lambda: None) -> None:
    """Run ``handle()``; retry transient failures; dead-letter poison and persistent failures."""
    for attempt in range(RETRIES + 1):
        try:
            await handle()
            return
        except POISON as exc:
            on_dead_letter()
            await emit.dead_letter(dlq, message, f"{stage}: invalid record: {exc}", exc)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # anything else may pass; retry, then park
            if attempt == RETRIES:
                log.exception("%s failed on %s[%s]@%s after %d attempts", stage, message.topic,
                              message.partition, message.offset, attempt + 1)
                on_dead_letter()
                await emit.dead_letter(dlq, message, f"{stage} error after {attempt + 1} attempts: {exc}", exc)
                return
            delay = BACKOFF.delay(attempt)
            log.warning("%s failed on %s[%s]@%s (attempt %d): %s; retrying in %.1fs", stage, message.topic,
                        message.partition, message.offset, attempt + 1, exc, delay)
            await asyncio.sleep(delay)
