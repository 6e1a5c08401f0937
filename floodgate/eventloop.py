"""uvloop in every Floodgate process (API, worker, simulator).

``use_uvloop()`` installs uvloop's event loop policy; call it at a process's entry point, before
any loop exists: ``asyncio.run`` (the API, the simulator) and Faust's worker (mode asks asyncio's
policy for its loop) then run on uvloop. Measured on the accept path (``dev/accept_cpu.py``, same
load, asyncio's loop and uvloop in turns, median of 3, two runs on a loaded 2-core box): API CPU
per accepted request 0.89x and 0.95x, p99 11.8 vs 26.7 ms and 76.7 vs 82.1 ms.
``FLOODGATE_EVENT_LOOP=asyncio`` (``Settings.event_loop``) runs the standard loop instead (to
compare, or to debug with asyncio's own tooling).
"""
from __future__ import annotations

import asyncio


def use_uvloop(event_loop: str = "uvloop") -> bool:
    """Make new event loops uvloop loops unless ``event_loop`` is ``asyncio``; True if installed."""
    if event_loop == "asyncio":
        return False
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


__all__ = ["use_uvloop"]
