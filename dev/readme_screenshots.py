"""Makes the README's two screenshots (docs/img/generate.png, docs/img/dashboard.png) from a real
run: the whole stack on the broker at FLOODGATE_KAFKA_BOOTSTRAP (or a local one), Debian's
chromium through Playwright, a video made on the page, then a spike fired from the dashboard and
photographed a minute into its drain.

    FLOODGATE_KAFKA_BOOTSTRAP=127.0.0.1:29092 .venv/bin/python dev/readme_screenshots.py
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from floodgate.devstack import Stack
from floodgate.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="floodgate-shots-"))
    renders = {"kling": (4.0, 8.0), "sora": (4.0, 8.0), "wan": (6.0, 12.0)}
    sim = home / "sim.json"
    sim.write_text(json.dumps({"providers": {
        name: {"concurrency_limit": 10, "render_time": {"kind": "uniform", "min": lo, "max": hi}, "queue_delay": 0.2}
        for name, (lo, hi) in renders.items()}, "seed": 3}))
    prefix = f"shots{int(time.time())}."  # topics and consumer groups of this run alone
    settings = Settings.from_env().with_overrides(topic_prefix=prefix, app_id=prefix + "app", dispatch_partitions=1)
    OUT.mkdir(parents=True, exist_ok=True)
    with Stack(settings, home, simulator_args=["--config", str(sim)]) as stack, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.set_default_timeout(60_000)
        page.goto(f"{stack.api_url}/")
        for model, prompt in (("sora-2", "a lighthouse in a storm at dusk"), ("wan-2.6", "dunes at sunrise, slow pan")):
            page.select_option("#model", model)
            page.fill("#prompt", prompt)
            page.click("#generate")
            page.wait_for_selector(f"li.job .job-prompt:text-is('{prompt}')")
        try:
            page.wait_for_function("() => { const v = document.querySelector('li.job:last-child video');"
                                   " return v !== null && v.readyState >= 2; }")
        except Exception:
            page.screenshot(path=str(home / "stuck.png"), full_page=True)
            print(f"the video did not play; see {home / 'stuck.png'} and {home / 'logs'}", file=sys.stderr)
            raise
        page.select_option("#model", "kling-2.1")
        page.wait_for_timeout(1000)  # the progress bar's last transition
        page.screenshot(path=str(OUT / "generate.png"), full_page=True)

        page.goto(f"{stack.api_url}/dashboard")
        page.wait_for_function("() => !document.getElementById('spike').disabled")
        page.click("#spike")
        page.wait_for_timeout(60_000)  # a minute of the drain, as an operator would watch it
        page.screenshot(path=str(OUT / "dashboard.png"), full_page=True)
        browser.close()
    for name in ("generate.png", "dashboard.png"):
        print(f"{OUT / name}: {(OUT / name).stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
