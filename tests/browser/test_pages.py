"""A person at the generation page and an operator at the dashboard, in headless chromium against
the running stack: a video is made and plays, a wrong token shows nothing of anyone's job, a
reload resumes, cancel works, and the dashboard draws a spike without in-flight passing the limit.
"""
from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, FilePayload, Page, Route, ViewportSize, WebSocketRoute, expect

from floodgate.devstack import Stack

pytestmark = pytest.mark.kafka

PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 900}


class Console:
    """Errors the page logged or threw."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._message)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _message(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


def generate(page: Page, model: str, prompt: str) -> str:
    """Fill the form, press Generate with the keyboard, and return the new job's id."""
    page.select_option("#model", model)
    page.fill("#prompt", prompt)
    page.focus("#generate")
    page.keyboard.press("Enter")
    card = page.locator("li.job").first
    expect(card).to_have_attribute("data-job-id", re.compile(r".+"))
    expect(card.locator(".job-prompt")).to_have_text(prompt)
    return card.get_attribute("data-job-id") or ""


def test_a_video_is_made_and_plays_and_a_reload_resumes(page: Page, stack: Stack, shots: Path) -> None:
    console = Console(page)
    page.goto(f"{stack.api_url}/")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#model-note")).to_contain_text(re.compile("served by", re.IGNORECASE))
    job_id = generate(page, "sora-2", "a lighthouse in a storm")
    card = page.locator(f'li.job[data-job-id="{job_id}"]')
    # At once: the job, in line (or already past it), with the reroute said plainly.
    expect(card.locator(".status")).to_have_text(re.compile("In line|Sent to the provider|Rendering|Ready"))
    expect(card.locator(".job-route")).to_have_text("sora is retired since 2026-09-24: served by kling")
    stage_box = card.locator(".stage").bounding_box()
    # Then the render, live over the WebSocket: the progress bar shows it.
    expect(card).to_have_attribute("data-status", "running")
    expect(card.locator(".bar")).to_be_visible()
    assert page.evaluate("document.body.dataset.live") == "websocket"
    # Then the video, whose source plays.
    expect(card).to_have_attribute("data-status", "completed")
    video = card.locator("video")
    # Our copy of the provider's video, behind a signed link.
    expect(video).to_have_attribute("src", re.compile(rf"^http://127\.0\.0\.1:\d+/v1/videos/{job_id}\?expires=\d+&sig="))
    plays(card.locator("video"))
    assert card.locator(".stage").bounding_box() == stage_box, "the video took the box kept for it: no jump"
    expect(card.locator(".bar")).to_have_attribute("aria-valuenow", "100")
    # The route note names kling; the status line does not say it a second time.
    expect(card.locator(".job-where")).to_have_text("Rendered.")
    expect(card.locator(".job-route")).to_have_text("sora is retired since 2026-09-24: served by kling")
    seen = card.locator(".timeline .what").all_text_contents()
    assert seen[0] == "In line" and seen[-2:] == ["Rendering", "Ready"], seen
    page.screenshot(path=str(shots / "generate-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(shots / "generate-phone.png"), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width}px)"

    # A reload resumes the same job from this browser's storage, video and all.
    page.reload()
    card = page.locator(f'li.job[data-job-id="{job_id}"]')
    expect(card).to_have_attribute("data-status", "completed")
    plays(card.locator("video"))
    assert page.locator("li.job").count() == 1
    assert console.errors == []


def test_a_forged_or_foreign_token_shows_an_error_and_no_job(browser: Browser, page: Page, stack: Stack) -> None:
    # Someone's job, made in their own browser.
    page.goto(f"{stack.api_url}/")
    theirs = generate(page, "kling-2.1", "a private birthday video")
    their_token = page.evaluate("JSON.parse(localStorage.getItem('floodgate.jobs.v1'))[0].token")
    mine = generate(page, "kling-2.1", "my own video")
    stored = page.evaluate("JSON.parse(localStorage.getItem('floodgate.jobs.v1'))")
    my_token = next(e["token"] for e in stored if e["job_id"] == mine)
    assert their_token != my_token

    # Another browser holds their id with a forged token, and with the token of its own job.
    other = browser.new_context(viewport=DESKTOP)
    try:
        intruder = other.new_page()
        console = Console(intruder)
        intruder.goto(f"{stack.api_url}/")
        for token in ("forged-" + "x" * 40, my_token):  # made up; a real token, of another job
            entry = [{"job_id": theirs, "token": token, "model": "", "prompt": ""}]
            intruder.evaluate("e => localStorage.setItem('floodgate.jobs.v1', JSON.stringify(e))", entry)
            intruder.reload()
            card = intruder.locator("li.job")
            expect(card).to_have_count(1)
            expect(card).to_have_attribute("data-status", "error")
            expect(card.locator(".job-error")).to_contain_text("cannot be shown")
            shown = card.inner_text()
            assert "birthday" not in intruder.locator("body").inner_text(), "nothing of their job may show"
            assert "kling" not in shown and "Ready" not in shown and "Rendering" not in shown
            assert intruder.locator("video").count() == 0
        # The refusals are the only errors: the 404s of the job reads.
        assert console.errors and all("404" in e for e in console.errors), console.errors
    finally:
        other.close()


def test_without_websockets_the_page_streams_and_without_streams_it_polls(browser: Browser, stack: Stack) -> None:
    """A proxy that drops WebSockets (and one that drops event streams too) still gets the video."""
    pages = {}
    for mode in ("sse", "polling"):
        context = browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.route_web_socket(re.compile(r".*/v1/stream$"), lambda ws: ws.close())
        if mode == "polling":
            page.route(re.compile(r".*/events\?token=.*"), lambda route: route.abort())
        page.goto(f"{stack.api_url}/")
        generate(page, "kling-2.1", f"a fox in the snow, over {mode}")
        pages[mode] = page
    try:
        for mode, page in pages.items():
            expect(page.locator("li.job").first).to_have_attribute("data-status", "completed")
            plays(page.locator("li.job video").first)
            assert page.evaluate("document.body.dataset.live") == mode
    finally:
        for page in pages.values():
            page.context.close()


def polls_with(page: Page, rewrite: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Neither WebSocket nor event stream for ``page``, so it polls; each GET's job comes to the
    page through ``rewrite``."""
    page.route_web_socket(re.compile(r".*/v1/stream$"), lambda ws: ws.close())
    page.route(re.compile(r".*/events\?token=.*"), lambda route: route.abort())

    def jobs(route: Route) -> None:
        if route.request.method != "GET":
            route.continue_()
            return
        answer = route.fetch()
        route.fulfill(response=answer, json=rewrite(answer.json()))

    page.route(re.compile(r".*/v1/jobs/[^/?]+(\?.*)?$"), jobs)


def test_a_job_held_in_the_providers_own_queue_shows_its_place(browser: Browser, stack: Stack) -> None:
    """The page shows the place a provider with a queue of its own gives (fal), and the ETA to its
    start there, as the API says them.
    This stack's providers keep no queue, so the API's answers are rewritten on their way to the
    page (a fal stand-in shows the field for real: tests/e2e/test_real_providers.py)."""
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    page.set_default_timeout(20_000)

    def held_at_fal(job: dict[str, Any]) -> dict[str, Any]:
        if job.get("status") in ("queued", "submitted", "running"):
            job.update(status="submitted", provider="fal", queue_position=None, eta_seconds=41.6,
                       provider_queue_position=2)
        return job

    polls_with(page, held_at_fal)
    try:
        page.goto(f"{stack.api_url}/")
        job_id = generate(page, "wan-2.6", "lanterns on the river, waiting at fal")
        card = page.locator(f'li.job[data-job-id="{job_id}"]')
        expect(card.locator(".job-where")).to_have_text("In fal's own queue: 2 ahead · about 42 s to go")
        card.locator(".cancel").click()  # (wan renders for a minute here: its slot is given back)
        expect(card).to_have_attribute("data-status", "cancelled")
    finally:
        context.close()


def told_early(job: dict[str, Any]) -> dict[str, Any]:
    """The job's completion as the API shows a provider's word before the worker records it."""
    return {**job, "final": False}


def recorded_cancel(job: dict[str, Any]) -> dict[str, Any]:
    """The job's recorded end when a cancel overtook the provider's completion at the worker."""
    return {**job, "status": "cancelled", "result": None, "error": "cancelled by the user", "final": True}


def cancelled_over_websocket(page: Page) -> None:
    """The real socket's messages, and after its completion the recorded end."""
    def stream(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            msg = json.loads(message)
            if msg.get("type") != "job" or msg["job"]["status"] != "completed":
                ws.send(message)
                return
            ws.send(json.dumps({**msg, "job": told_early(msg["job"])}))
            ws.send(json.dumps({"type": "job", "job": recorded_cancel(msg["job"])}))

        server.on_message(from_server)

    page.route_web_socket(re.compile(r".*/v1/stream$"), stream)


def cancelled_over_sse(page: Page) -> None:
    """No WebSocket; the real event stream (whole, once the server ended it after the job's end),
    and after its completion the recorded end."""
    page.route_web_socket(re.compile(r".*/v1/stream$"), lambda ws: ws.close())

    def events(route: Route) -> None:
        answer = route.fetch()
        body = answer.text()
        last = [block for block in body.split("\n\n") if block.startswith("event: job")][-1]
        fields = dict(line.split(": ", 1) for line in last.splitlines())
        job = json.loads(fields["data"])
        if job["status"] == "completed":
            body = body.replace(last, f"event: job\nid: {fields['id']}\ndata: {json.dumps(told_early(job))}")
            body += f"event: job\nid: {fields['id']}\ndata: {json.dumps(recorded_cancel(job))}\n\n"
        route.fulfill(response=answer, body=body)

    page.route(re.compile(r".*/events\?token=.*"), events)


def cancelled_over_polling(page: Page) -> list[str]:
    """The page polls. The first GET that finds the job completed shows that end as told early,
    the next ones the recorded end. Returns the ends the GETs answered, in order."""
    ends: list[str] = []

    def racing(job: dict[str, Any]) -> dict[str, Any]:
        if job.get("status") == "completed":
            job = recorded_cancel(job) if ends else told_early(job)
            ends.append(job["status"])
        return job

    polls_with(page, racing)
    return ends


@pytest.mark.parametrize("mode", ["websocket", "sse", "polling"])
def test_an_end_told_early_is_corrected_by_the_recorded_one(browser: Browser, stack: Stack, mode: str) -> None:
    """A provider's completion is shown before the worker records it (``final: false``); when a
    cancel overtook it there, the recorded end (cancelled) comes next, and the page shows that,
    video gone. The race is made here by rewriting the real stream's messages (or the real GETs'
    answers, for a page that polls)."""
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    page.set_default_timeout(60_000)
    ends: list[str] = []
    if mode == "polling":
        ends = cancelled_over_polling(page)
    else:
        (cancelled_over_websocket if mode == "websocket" else cancelled_over_sse)(page)
    try:
        page.goto(f"{stack.api_url}/")
        job_id = generate(page, "sora-2", f"a kite over the dunes, cancelled at the last moment, over {mode}")
        card = page.locator(f'li.job[data-job-id="{job_id}"]')
        expect(card).to_have_attribute("data-status", "cancelled")
        expect(card.locator("video")).to_have_count(0)
        expect(card.locator(".job-where")).to_have_text("Cancelled: nothing more will happen.")
        assert page.evaluate("document.body.dataset.live") == mode
        if mode == "polling":  # the page polled on past the end told early
            assert ends[:2] == ["completed", "cancelled"]
    finally:
        context.close()


def tiny_png() -> bytes:
    """A real 2x2 PNG, so the page's preview shows it (and nothing logs a broken image)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = b"".join(b"\x00" + b"\xd0\x40\x20" * 2 for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b""))


def test_a_selfie_goes_with_the_job_and_cancel_works_from_the_page(page: Page, stack: Stack) -> None:
    console = Console(page)
    page.goto(f"{stack.api_url}/")
    selfie = tiny_png()
    upload: FilePayload = {"name": "me.png", "mimeType": "image/png", "buffer": selfie}
    page.set_input_files("#selfie", files=[upload])
    expect(page.locator("#selfie-preview")).to_be_visible()
    job_id = generate(page, "wan-2.6", "a slow sunrise over the dunes")  # wan renders for a minute here
    # The selfie was stored by the API and handed to the job as a URL anyone holding it can fetch.
    stored = page.evaluate("JSON.parse(localStorage.getItem('floodgate.jobs.v1'))")
    image_url = next(e["image_url"] for e in stored if e["job_id"] == job_id)
    assert image_url.startswith(f"{stack.api_url}/v1/uploads/img_")
    fetched = page.request.get(image_url)
    assert fetched.status == 200 and fetched.body() == selfie and fetched.headers["content-type"] == "image/png"
    card = page.locator(f'li.job[data-job-id="{job_id}"]')
    expect(card.locator(".cancel")).to_be_visible()
    card.locator(".cancel").focus()
    page.keyboard.press("Enter")
    expect(card).to_have_attribute("data-status", "cancelled")
    expect(card.locator(".cancel")).to_be_hidden()
    expect(card.locator(".stage-text")).to_have_text("No video: the job was cancelled.")
    assert card.locator("video").count() == 0
    assert console.errors == []


def polyline(points: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (p.split(",") for p in points.split())]


def test_the_dashboard_draws_a_spike_and_in_flight_never_passes_the_limit(page: Page, stack: Stack,
                                                                          shots: Path) -> None:
    console = Console(page)
    page.goto(f"{stack.api_url}/dashboard")
    spike = page.locator("#spike")
    expect(spike).to_be_enabled()  # dev mode: floodgate dev's stack
    spike.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#spike-note")).to_contain_text(re.compile("Spike running|Last spike"))

    # Every chart shows the spike: arrivals, submissions, a queue, slots in use.
    def peak(expr: str) -> float:
        return float(page.evaluate(f"Math.max(0, ...window.floodgateDashboard.latest().points.map(p => {expr}))"))

    page.wait_for_function("""() => {
        const d = window.floodgateDashboard.latest();
        if (!d || d.points.length < 5) return false;
        const top = (f) => Math.max(0, ...d.points.map(f));
        return top(p => p.arrivals) > 0 && top(p => p.submissions) > 0 && top(p => p.inflight.wan || 0) >= 10
            && top(p => p.queue_depth.wan || 0) > 0;
    }""", timeout=45_000)
    assert peak("p.arrivals") > 0 and peak("p.submissions") > 0
    for chart in ("flow", "queue"):
        assert page.locator(f'[data-chart="{chart}"] polyline').count() >= 2

    # In flight against the limit, as drawn: the in-flight line is never above the limit line.
    for provider in ("kling", "wan"):
        box = page.locator(f'[data-chart="inflight-{provider}"]')
        inflight = polyline(box.locator("polyline.line-inflight").get_attribute("points") or "")
        limit = polyline(box.locator("polyline.line-limit").get_attribute("points") or "")
        assert len(inflight) == len(limit) >= 2
        for (x1, y_in), (x2, y_limit) in zip(inflight, limit, strict=True):
            assert x1 == x2 and y_in >= y_limit, f"{provider}: in flight drawn above the limit at x={x1}"
    assert peak("p.inflight.wan || 0") == peak("p.limit.wan || 0") == 10  # the limit reached, never passed
    # Each provider's pace, as its dispatchers measure it: kling's known once its first 3-4 s renders
    # ended; wan's (60 s renders) says so while it is not.
    expect(page.locator('#paces li[data-provider="kling"]')).to_contain_text(re.compile(r"starts \d+\.\d\d jobs/s"),
                                                                           timeout=30_000)
    expect(page.locator('#paces li[data-provider="wan"]')).to_contain_text("wan: ")
    # sora is retired in the dev table: not a closed breaker nor an unknown pace, but out of service.
    expect(page.locator('#breakers li[data-provider="sora"]')).to_have_text(
        "sora: retired since 2026-09-24, takes no new jobs")
    expect(page.locator('#breakers li[data-provider="kling"]')).to_have_text("kling: closed")
    expect(page.locator('#paces li[data-provider="sora"]')).to_have_text("sora: retired since 2026-09-24, no line")
    expect(page.locator('[data-chart="inflight-sora"] h3')).to_have_text("sora (retired since 2026-09-24)")

    page.screenshot(path=str(shots / "dashboard-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(shots / "dashboard-phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert console.errors == []

def plays(video: Any) -> None:
    """Wait until ``video`` has data to play (``readyState`` >= 2), on its own ``loadeddata`` event:
    the page retries a link whose copy is not stored yet, so the first load may fail."""
    assert video.evaluate("""v => v.readyState >= 2 || new Promise((ok, fail) => {
        v.addEventListener('loadeddata', () => ok(true), {once: true});
        setTimeout(() => fail(new Error('no video data in 20 s')), 20000);
    })""")
