"""The pages in a real browser: Debian's chromium, headless, driven by Playwright (never a browser
Playwright downloads), against the whole stack as real processes.

One stack serves the module: the dev routing table (sora-2 → retired sora → kling) on a simulator
whose kling renders in 3–4 s (a video arrives within a test) and whose wan renders for a
minute (a wan job stays cancellable, and a spike fills wan's slots).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, expect, sync_playwright

from floodgate.devstack import Stack
from tests.e2e.stack_util import make_stack

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "browser"
"""Where the tests leave their screenshots (ignored by git)."""

# A job's next state may wait behind a busy machine's other work: assertions wait up to 20 s for it.
expect.set_options(timeout=20_000)


def simulator_file(path: Path) -> Path:
    fast = {"concurrency_limit": 10, "render_time": {"kind": "uniform", "min": 3.0, "max": 4.0}, "queue_delay": 0.05}
    slow = {"concurrency_limit": 10, "render_time": 60.0, "queue_delay": 0.05}
    path.write_text(json.dumps({"providers": {"sora": fast, "kling": fast, "wan": slow}, "seed": 5}))
    return path


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    # Module scope, not session: sync Playwright keeps an event loop running in this thread while
    # it is open, and the asyncio tests of other modules cannot start theirs until it is closed.
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.fail("the browser tests need Debian's chromium: run `make test` (its bootstrap installs it) "
                    "or apt-get install chromium")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("pages")
    with make_stack(kafka_bootstrap, home, sim_config=simulator_file(home / "sim.json"),
                    dispatch_partitions=1) as s:
        yield s


@pytest.fixture(scope="session")
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS
