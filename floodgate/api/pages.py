"""The two pages people look at, served by the API itself: ``/`` (make a video and watch it come)
and ``/dashboard`` (the spike being shaved), their assets under ``/static/``, and
``GET /v1/models``, which the generation page offers to choose from.

Everything a page loads ships in this package (``floodgate/api/static/``): no CDN, no build step.
The pages talk to the same public API as any client (``POST /v1/jobs``, the job's token,
WebSocket, SSE, cancel); the dashboard reads ``/dashboard/data`` (``floodgate.api.dashboard``).
"""
from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from floodgate.api.common import Deps, json_response
from floodgate.problems import NOT_FOUND, problem_response
from floodgate.routing import RoutingTable

STATIC = Path(str(resources.files("floodgate.api") / "static"))
TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# Scripts and styles only from here; videos from wherever the provider (or our store) keeps them;
# the selfie preview is a blob: URL; live updates over this origin's WebSocket.
POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
          "media-src * blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; "
          "form-action 'self'")
HEADERS = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def models(table: RoutingTable, now: datetime) -> list[dict[str, Any]]:
    """Each model with its providers in order of preference, which of them take work now and why
    not, and the one that would serve a job submitted now (None: the model is unavailable)."""
    out = []
    for name in sorted(table.routes):
        targets = []
        for target in table.routes[name].targets:
            spec = table.providers[target.provider]
            targets.append({"provider": spec.name, "available": spec.available(now),
                            "why_unavailable": spec.why_unavailable(now)})
        serving = next((t["provider"] for t in targets if t["available"]), None)
        out.append({"model": name, "providers": targets, "serving": serving})
    return out


class Pages:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        # The files are fixed at build time: serve only names that exist now, never a path built
        # from the request.
        self.files = {p.name: p for p in STATIC.iterdir() if p.is_file() and p.suffix in TYPES}

    def _file(self, name: str, cache: str) -> web.StreamResponse:
        path = self.files.get(name)
        if path is None:
            return problem_response(404, "Not Found", type_=NOT_FOUND, detail="no such file")
        return web.FileResponse(path, headers={**HEADERS, "Content-Type": TYPES[path.suffix], "Cache-Control": cache})

    async def generate(self, _: web.Request) -> web.StreamResponse:
        return self._file("index.html", "no-cache")

    async def dashboard(self, _: web.Request) -> web.StreamResponse:
        return self._file("dashboard.html", "no-cache")

    async def static(self, request: web.Request) -> web.StreamResponse:
        return self._file(request.match_info["name"], "no-cache")

    async def list_models(self, _: web.Request) -> web.Response:
        return json_response({"models": models(self.deps.setup.routing, datetime.now(UTC))},
                             headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application, deps: Deps) -> Pages:
    pages = Pages(deps)
    app.router.add_get("/", pages.generate, allow_head=False)
    app.router.add_get("/dashboard", pages.dashboard, allow_head=False)
    app.router.add_get("/static/{name}", pages.static, allow_head=False)
    app.router.add_get("/v1/models", pages.list_models, allow_head=False)
    return pages


__all__ = ["Pages", "add_routes", "models"]
