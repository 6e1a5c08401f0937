"""Process and port helpers (floodgate/procs.py)."""
from __future__ import annotations

from floodgate.procs import port_in_use, quiet_ports


def test_quiet_ports_are_free_and_below_the_ephemeral_range() -> None:
    first = quiet_ports(6)
    assert first >= 20000 and first + 6 <= 32768
    assert not any(port_in_use(first + i) for i in range(6))
