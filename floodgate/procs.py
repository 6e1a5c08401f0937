"""Local processes and the ports they listen on: the helpers the broker, the API, the simulator,
the dev stack and the bench share. Standard library only.
"""
from __future__ import annotations

import ctypes
import gc
import os
import random
import signal
import socket
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 if ``host`` has a colon; port 0 picks a free one),
    not yet listening. Binding before serving lets the caller learn the port it got. Raises ``OSError``."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie child of ours is reaped and counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        # Someone else's zombie (a detached broker whose reaper has not run yet) is gone too.
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True  # no /proc here: trust kill(0)
        return stat.rpartition(")")[2].split()[:1] != ["Z"]


def die_with_parent() -> None:
    """``preexec_fn`` for a child process that must not outlive us: it gets SIGTERM when we die.

    Runs in the child between fork and exec (Linux only)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)




def lower_priority(nice: int) -> int:
    """Run this process at niceness ``nice`` at least (a higher one is kept); returns the niceness
    it runs at. Linux keeps a niceness per thread and a new thread inherits its creator's, so call
    it at the entry point, before the process starts threads."""
    raise_niceness(0, nice)
    return os.getpriority(os.PRIO_PROCESS, 0)


def raise_niceness(tid: int, nice: int) -> int | None:
    """Thread ``tid`` (0: the calling one) at niceness ``nice`` if it runs at a lower one (nobody
    is made more urgent here: that needs root); the niceness it had if it was changed, else None."""
    old = os.getpriority(os.PRIO_PROCESS, tid)
    if old >= nice:
        return None
    os.setpriority(os.PRIO_PROCESS, tid, nice)
    return old


def freeze_heap() -> None:
    """Collect once, then exempt everything alive from later collections: a serving process's
    step once it is ready (the API once its view has caught up, the worker once its tables are
    recovered), not a library's.

    A full (gen2) collection walks every tracked object; with 100k snapshots in the view that
    walk took 180-480 ms on the 2-core dev box while it was loaded (``dev/gc_pause.py``), a
    stall every in-flight 202 would wait out; after the freeze, 0.0 ms. Frozen objects are
    still freed by reference counting when the view drops them; only a reference cycle among
    them would outlive its use, and snapshots hold none. Snapshots that arrive later are not
    frozen: as the view turns over, full collections grow back (rarely: none in 50k accepts).
    """
    gc.collect()
    gc.freeze()


def quiet_ports(count: int) -> int:
    """The first of ``count`` free consecutive ports below Linux's ephemeral range (32768 up): a
    broker restarted a minute after its kill must find its port free, and in the ephemeral range
    any outgoing connection may have taken it meanwhile (seen: "Address already in use")."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20000, 32000 - count)
        if not any(port_in_use(first + i) for i in range(count)):
            return first
    raise OSError(f"no {count} free consecutive ports found below the ephemeral range")


__all__ = ["bind_socket", "die_with_parent", "free_port", "freeze_heap", "lower_priority", "pid_alive", "port_in_use",
           "quiet_ports", "raise_niceness"]
