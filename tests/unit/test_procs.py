"""Process and port helpers (floodgate/procs.py)."""
from __future__ import annotations

import os
import subprocess
import sys

from floodgate.procs import port_in_use, quiet_ports


def test_quiet_ports_are_free_and_below_the_ephemeral_range() -> None:
    first = quiet_ports(6)
    assert first >= 20000 and first + 6 <= 32768
    assert not any(port_in_use(first + i) for i in range(6))


def _niceness_after(start: int, wanted: int) -> tuple[int, int, int]:
    """In a fresh interpreter started at niceness ``start``: what ``lower_priority(wanted)``
    returns, the process's niceness, and that of a thread started afterwards."""
    code = (
        "import os, threading\n"
        "from floodgate.procs import lower_priority\n"
        f"got = lower_priority({wanted})\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))\n"
        "t.start(); t.join()\n"
        "print(got, os.getpriority(os.PRIO_PROCESS, 0), seen[0])\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         preexec_fn=lambda: os.nice(start) and None)
    got, process, thread = (int(v) for v in out.stdout.split())
    return got, process, thread


def test_lower_priority_raises_niceness_for_the_process_and_the_threads_it_starts() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    wanted = min(19, base + 7)
    assert _niceness_after(0, wanted) == (wanted, wanted, wanted)


def test_lower_priority_keeps_a_higher_niceness() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    start = min(19, base + 12) - base
    assert _niceness_after(start, base + 3) == (base + start,) * 3
