"""uvloop in every Floodgate process (API, worker, simulator).

``use_uvloop()`` installs uvloop's event loop policy; call it at a process's entry point, before
any loop exists: ``asyncio.run`` (the API, the simulator) and Faust's worker (mode asks asyncio's
policy for its loop) then run on uvloop. Measured on the accept path (``dev/accept_cpu.py``, same
load, asyncio's loop and uvloop in turns, median of 3, two runs on a loaded 2-core box): API CPU
per accepted request 0.89x and 0.95x, p99 11.8 vs 26.7 ms and 76.7 vs 82.1 ms.
``FLOODGATE_EVENT_LOOP=asyncio`` runs the standard loop instead (to compare, or to debug with
asyncio's own tooling).
"""
from __future__ import annotations

import asyncio
import os


def use_uvloop() -> bool:
    """Make new event loops uvloop loops, unless ``FLOODGATE_EVENT_LOOP=asyncio``; True if installed."""
    if os.environ.get("FLOODGATE_EVENT_LOOP", "uvloop").strip().lower() == "asyncio":
        return False
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


__all__ = ["use_uvloop"]
