"""Pinning processes to CPUs for one measurement, as ``taskset -a -p`` would: every thread of each
process (``sched_setaffinity`` on a pid moves its main thread only; a thread started later inherits
the mask of the thread that starts it), restored to the process's own mask afterwards. Likewise
``renice``, as ``renice -n`` on every thread would (Linux keeps a niceness per thread), either way:
``reniced`` makes a process yield, ``hastened`` makes one go first (root only).

``split`` and ``apart`` are pure: which CPUs the process measured gets (one of its own), which
everything else shares, and where each process goes.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator, Mapping

from floodgate.procs import raise_niceness


def split(cpus: Collection[int]) -> tuple[set[int], set[int]] | None:
    """(the API's CPU, everyone else's) from the CPUs this process may use: the second CPU for the
    API (``taskset -c 1``), the rest for the others; None with fewer than two CPUs."""
    ordered = sorted(cpus)
    if len(ordered) < 2:
        return None
    return {ordered[1]}, set(ordered) - {ordered[1]}


def apart(pids: Mapping[str, int], alone: Collection[str],
          cpus: Collection[int]) -> tuple[dict[int, set[int]], set[int], set[int]] | None:
    """A plan for ``pinned``: the processes of ``pids`` named in ``alone`` on a CPU of their own
    (``split``), every other one on the rest; then those two sets of CPUs. None with one CPU."""
    halves = split(cpus)
    if halves is None:
        return None
    own, rest = halves
    return {pid: (own if name in alone else rest) for name, pid in pids.items()}, own, rest


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def pin(pid: int, cpus: Collection[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (threads that end meanwhile are skipped)."""
    for tid in _threads(pid):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def reniced(pid: int, nice: int) -> Iterator[dict[str, bool]]:
    """Every thread of ``pid`` at niceness ``nice`` (at least: a higher one is kept) for the block;
    then back to what each had. Lowering a niceness needs root (``CAP_SYS_NICE``): the dict it
    yields says afterwards whether every thread got its old niceness back."""
    before: dict[int, int] = {}
    for tid in _threads(pid):
        with contextlib.suppress(ProcessLookupError):
            if (old := raise_niceness(tid, nice)) is not None:
                before[tid] = old
    state = {"restored": True}
    try:
        yield state
    finally:
        for tid, old in before.items():
            try:
                os.setpriority(os.PRIO_PROCESS, tid, old)
            except ProcessLookupError:
                pass
            except PermissionError:
                state["restored"] = False


@contextlib.contextmanager
def hastened(pid: int, nice: int) -> Iterator[dict[str, bool]]:
    """Every thread of ``pid`` at niceness ``nice`` (at most: a lower one is kept) for the block;
    then back to what each had; a thread started meanwhile inherited the niceness of the one that
    started it, and gets the main thread's back. Lowering a niceness needs root (``CAP_SYS_NICE``):
    the dict it yields says whether every thread got it (``applied``); without it the block runs
    as it was."""
    before: dict[int, int] = {}
    state = {"applied": True}
    threads = _threads(pid)
    for tid in threads:
        try:
            old = os.getpriority(os.PRIO_PROCESS, tid)
            if old > nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                before[tid] = old
        except ProcessLookupError:
            pass
        except PermissionError:
            state["applied"] = False
    try:
        yield state
    finally:
        if pid in before:
            before.update(dict.fromkeys(set(_threads(pid)) - set(threads), before[pid]))
        for tid, old in before.items():
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, tid, old)  # raising a niceness needs no privilege


@contextlib.contextmanager
def pinned(plan: Mapping[int, Collection[int]]) -> Iterator[None]:
    """Each pid of ``plan`` (all its threads) on its CPUs for the block; then back to the mask its
    main thread had before."""
    before: dict[int, set[int]] = {}
    for pid in plan:
        with contextlib.suppress(ProcessLookupError):
            before[pid] = os.sched_getaffinity(pid)
    try:
        for pid, cpus in plan.items():
            pin(pid, cpus)
        yield
    finally:
        for pid, cpus in before.items():
            pin(pid, cpus)
