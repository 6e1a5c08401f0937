"""What the worker sets for its own process before Faust starts."""
from __future__ import annotations

import pytest


def test_the_worker_lets_its_consumer_thread_take_the_gil_within_half_a_millisecond() -> None:
    import sys

    from streams.worker import GIL_SWITCH_INTERVAL, share_gil

    before = sys.getswitchinterval()
    try:
        share_gil()
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL) == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)
