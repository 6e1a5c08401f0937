"""Helpers for end-to-end tests: a full stack (simulator, API, worker as real processes) on the
session's broker, HTTP helpers, and waits with deadlines."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from floodgate.devstack import Stack
from floodgate.provider_config import DEV_WEBHOOK_SECRET_REF
from floodgate.settings import Settings
from tests.kafka_util import unique_name

TERMINAL = {"completed", "failed", "cancelled", "expired"}


def simulator_config(path: Path, *, only: dict[str, dict[str, Any]] | None = None,
                     **provider_overrides: Any) -> Path:
    """Fast renders (tens of ms) so thousands of jobs fit in a test; limits as in the dev preset.
    ``provider_overrides`` apply to every provider, ``only`` to the one it names."""
    base = {"concurrency_limit": 10, "render_time": {"kind": "uniform", "min": 0.02, "max": 0.08},
            "queue_delay": 0.005, **provider_overrides}
    only = only or {}
    path.write_text(json.dumps({"providers": {n: {**base, **only.get(n, {})} for n in ("sora", "kling", "wan")},
                                "seed": 11}))
    return path


def routing_file(path: Path, limits: dict[str, int], rates: dict[str, float] | None = None,
                 spillover: dict[str, Any] | None = None, status_rates: dict[str, float] | None = None) -> Path:
    """A routing table on the simulator whose address comes from the environment at load time;
    ``rates`` gives providers a ``rate_per_second``, ``status_rates`` a ``status_rate_per_second``;
    ``spillover`` is the table's section of that name."""
    conn = {"base_url": "env:FLOODGATE_SIMULATOR_URL", "api_key": "k", "webhook_secret": DEV_WEBHOOK_SECRET_REF}
    rates, status_rates = rates or {}, status_rates or {}
    path.write_text(json.dumps({
        "providers": {name: {"kind": "simulator", "concurrency_limit": limit, "connection": conn,
                             **({"rate_per_second": rates[name]} if name in rates else {}),
                             **({"status_rate_per_second": status_rates[name]} if name in status_rates else {})}
                      for name, limit in limits.items()},
        "routes": {"wan-2.6": [{"provider": "wan"}, {"provider": "kling", "provider_model": "kling-2.1"}],
                   "kling-2.1": [{"provider": "kling"}]},
        **({"spillover": spillover} if spillover else {}),
    }))
    return path


def make_stack(kafka_bootstrap: str, home: Path, *, sim_config: Path | None = None, workers: int = 1,
               **overrides: Any) -> Stack:
    prefix = unique_name("e2e") + "."
    options: dict[str, Any] = {"partitions": 2, "dispatch_partitions": 2, "session_timeout": 6.0, "poll_after": 5.0,
                               "cache_dir": home / "cache", **overrides}  # tests may override any of these
    settings = Settings.from_env({}).with_overrides(
        kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix, app_id=prefix + "app", **options)
    sim_args = ["--config", str(sim_config)] if sim_config else ["--preset", "dev"]
    return Stack(settings, home, simulator_args=sim_args, workers=workers)


async def submit(session: aiohttp.ClientSession, api: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    async with session.post(f"{api}/v1/jobs", json=body, headers=headers) as resp:
        data = await resp.json(content_type=None)
        assert resp.status == 202, (resp.status, data)
        return data


async def get_job(session: aiohttp.ClientSession, api: str, job_id: str, token: str) -> dict[str, Any]:
    async with session.get(f"{api}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        return await resp.json()


async def until(check: Callable[[], Awaitable[Any]], *, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")

