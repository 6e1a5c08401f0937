"""Floodgate's HTTP API: job ingress, job reads (GET, SSE, WebSocket) and the provider webhook
bridge, each a role one process may serve alone or together (``serve(..., roles=...)``)."""
from __future__ import annotations

from floodgate.api.app import build_app
from floodgate.api.server import ApiServer, run, serve

__all__ = ["ApiServer", "build_app", "run", "serve"]
