"""``GET /openapi.json``: the API's contract, written by hand (not generated from handlers) so it
is reviewed like code. ``tests/unit/test_api_openapi.py`` checks it against the router both ways.
"""
from __future__ import annotations

from collections.abc import Set
from typing import Any

from floodgate.api.idempotency import MAX_KEY_CHARS
from floodgate.api.read import MAX_SUBSCRIPTIONS

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_JSON = "application/json"


def _problem(description: str, retry_after: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": _PROBLEM}
    if retry_after:
        out["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    return out


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_TOKEN_QUERY = {"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
                "description": "The job's token, for clients that cannot send an Authorization header."}
_IMAGES = {kind: {"schema": {"type": "string", "format": "binary"}}
           for kind in ("image/jpeg", "image/png", "image/webp")}
_JOB_AUTH: list[dict[str, list[str]]] = [{"jobToken": []}, {"jobTokenQuery": []}]

_OPERATIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # (role, method, path) → operation; role "any" is served by every app.
    "create_job": ("ingress", "post /v1/jobs", {
        "summary": "Submit a video generation job",
        "operationId": "createJob",
        "security": [{"apiKey": []}, {}],
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                        "schema": {"type": "string", "maxLength": MAX_KEY_CHARS},
                        "description": "Same key and body: the same 202 again, no second job. "
                                       "Same key, other body: 422."}],
        "requestBody": {"required": True, "content": {_JSON: {"schema": _ref("JobRequest")}}},
        "responses": {
            "202": {"description": "Accepted: the job is durably queued",
                    "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
                    "content": {_JSON: {"schema": _ref("JobAccepted")}}},
            "400": _problem("Invalid body; `errors` names every field at fault"),
            "401": _problem("X-API-Key missing (when keys are configured)"),
            "403": _problem("Unknown API key"),
            "413": _problem("Body too large"),
            "415": _problem("Not application/json"),
            "422": _problem("Idempotency-Key reused with a different body"),
            "503": _problem("Kafka unavailable; nothing was accepted", retry_after=True),
        },
    }),
    "get_job": ("read", "get /v1/jobs/{job_id}", {
        "summary": "Current state of a job",
        "operationId": "getJob",
        "security": _JOB_AUTH,
        "parameters": [_JOB_ID, _TOKEN_QUERY],
        "responses": {
            "200": {"description": "The job", "content": {_JSON: {"schema": _ref("Job")}}},
            "401": _problem("Token missing"),
            "404": _problem("Unknown job or wrong token"),
        },
    }),
    "cancel_job": ("read", "post /v1/jobs/{job_id}/cancel", {
        "summary": "Cancel a job",
        "description": "Records the cancel on Kafka and answers once it is acknowledged. The job then "
                       "ends `cancelled` unless it finishes first; a job already submitted is cancelled "
                       "at its provider too. Cancelling a cancelled job again is a 202 as well.",
        "operationId": "cancelJob",
        "security": _JOB_AUTH,
        "parameters": [_JOB_ID, _TOKEN_QUERY],
        "responses": {
            "202": {"description": "Cancel recorded; the body is the job's current state (poll it, or follow "
                                   "its events, to see `cancelled`)",
                    "content": {_JSON: {"schema": _ref("Job")}}},
            "401": _problem("Token missing"),
            "404": _problem("Unknown job or wrong token"),
            "409": _problem("The job already completed or failed; `detail` names its status"),
            "503": _problem("Kafka unavailable; nothing was recorded", retry_after=True),
        },
    }),
    "job_events": ("read", "get /v1/jobs/{job_id}/events", {
        "summary": "Server-Sent Events: the current state, then every change until a terminal state",
        "description": "Each event is `event: job`, `id: <version>`, `data: <Job JSON>`; "
                       "a `: keep-alive` comment is sent every 15 s. Honours Last-Event-ID.",
        "operationId": "jobEvents",
        "security": _JOB_AUTH,
        "parameters": [_JOB_ID, _TOKEN_QUERY,
                       {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "integer"}}],
        "responses": {
            "200": {"description": "An event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "401": _problem("Token missing"),
            "404": _problem("Unknown job or wrong token"),
        },
    }),
    "stream": ("read", "get /v1/stream", {
        "summary": "WebSocket: follow many jobs on one connection",
        "description": "Client → server: `{\"type\": \"subscribe\", \"job_id\", \"token\"}` or "
                       "`{\"type\": \"unsubscribe\", \"job_id\"}` (the first subscription may also be given "
                       "as `?job_id=&token=`). Server → client: `{\"type\": \"subscribed\", \"job_id\"}`, "
                       "`{\"type\": \"unsubscribed\", \"job_id\"}`, `{\"type\": \"error\", \"job_id\", \"detail\"}`, "
                       "`{\"type\": \"job\", \"job\": <Job>}` for the current state and every change. "
                       f"At most {MAX_SUBSCRIPTIONS} subscriptions per connection.",
        "operationId": "stream",
        "parameters": [{"name": "job_id", "in": "query", "required": False, "schema": {"type": "string"}},
                       _TOKEN_QUERY],
        "responses": {"101": {"description": "Switching to the WebSocket protocol"},
                      "400": _problem("Not a WebSocket upgrade request")},
    }),
    "webhook": ("bridge", "post /webhooks/{provider}", {
        "summary": "Provider webhook (Standard Webhooks signatures)",
        "operationId": "receiveWebhook",
        "security": [{"webhookSignature": []}],
        "parameters": [{"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"*/*": {"schema": {"type": "string", "format": "binary",
                                                                           "maxLength": 1048576}}}},
        "responses": {
            "200": {"description": "Stored", "content": {_JSON: {"schema": {
                "type": "object", "properties": {"received": {"const": True}}, "required": ["received"]}}}},
            "401": _problem("Signature or timestamp did not verify; nothing was stored"),
            "404": _problem("Unknown provider"),
            "413": _problem("Body larger than 1 MiB"),
            "503": _problem("Kafka unavailable; retry the delivery", retry_after=True),
        },
    }),
    "create_upload": ("ingress", "post /v1/uploads", {
        "summary": "Store an image (a selfie) for a job's input.image_url",
        "description": "The body is the image itself. Its kind is read from its first bytes and must match "
                       "the Content-Type. The answer's `url` is unguessable; pass it as `input.image_url`. "
                       "Images are deleted after FLOODGATE_UPLOAD_TTL seconds.",
        "operationId": "createUpload",
        "security": [{"apiKey": []}, {}],
        "requestBody": {"required": True, "content": _IMAGES},
        "responses": {
            "201": {"description": "Stored", "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
                    "content": {_JSON: {"schema": _ref("Upload")}}},
            "401": _problem("X-API-Key missing (when keys are configured)"),
            "403": _problem("Unknown API key"),
            "413": _problem("Image larger than FLOODGATE_UPLOAD_MAX_BYTES"),
            "415": _problem("Not a JPEG, PNG or WebP image, or not the kind the Content-Type says"),
        },
    }),
    "read_upload": ("ingress", "get /v1/uploads/{name}", {
        "summary": "A stored image, for the provider to fetch",
        "operationId": "readUpload",
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "The image", "content": _IMAGES},
            "404": _problem("No such image (or it expired)"),
        },
    }),
    "models": ("any", "get /v1/models", {
        "summary": "The models, their providers in order of preference, and which serves a job now",
        "operationId": "listModels",
        "responses": {"200": {"description": "The models", "content": {_JSON: {"schema": _ref("Models")}}}},
    }),
    "page": ("any", "get /", {
        "summary": "The generation page (HTML)",
        "operationId": "generationPage",
        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
    }),
    "dashboard_page": ("any", "get /dashboard", {
        "summary": "The operations dashboard (HTML; its figures come from /dashboard/data)",
        "operationId": "dashboardPage",
        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
    }),
    "static": ("any", "get /static/{name}", {
        "summary": "The pages' scripts and styles",
        "operationId": "staticFile",
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "The file", "content": {"*/*": {"schema": {"type": "string"}}}},
                      "404": _problem("No such file")},
    }),
    "dashboard_data": ("any", "get /dashboard/data", {
        "summary": "The dashboard's figures: every process's Prometheus metrics, summed, over the last minutes",
        "operationId": "dashboardData",
        "security": [{"operatorKey": []}, {}],
        "responses": {
            "200": {"description": "Series and totals", "content": {_JSON: {"schema": _ref("DashboardData")}}},
            "401": _problem("X-Operator-Key missing (when API keys are configured)"),
            "403": _problem("Unknown operator key, or none configured while API keys are"),
        },
    }),
    "dashboard_spike": ("any", "post /dashboard/spike", {
        "summary": "Dev mode only: send a spike of jobs to this API's own POST /v1/jobs",
        "operationId": "dashboardSpike",
        "security": [{"operatorKey": []}, {}],
        "requestBody": {"required": False, "content": {_JSON: {"schema": {"type": "object", "properties": {
            "jobs": {"type": "integer", "minimum": 1, "maximum": 5000, "default": 300},
            "rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 500, "default": 100}}}}}},
        "responses": {
            "202": {"description": "The spike started", "content": {_JSON: {"schema": {"type": "object"}}}},
            "400": _problem("Invalid jobs or rate; `errors` names them"),
            "401": _problem("X-Operator-Key missing (when API keys are configured)"),
            "403": _problem("Not in dev mode, or an unknown operator key"),
            "409": _problem("A spike is already running, or no model can take jobs"),
        },
    }),
    "healthz": ("any", "get /healthz", {
        "summary": "Liveness and readiness",
        "operationId": "healthz",
        "responses": {"200": {"description": "Ready", "content": {_JSON: {"schema": _ref("Health")}}},
                      "503": {"description": "Still rebuilding the job view",
                              "content": {_JSON: {"schema": _ref("Health")}}}},
    }),
    "metrics": ("any", "get /metrics", {
        "summary": "Prometheus metrics of this API process",
        "description": "Text exposition format (OpenMetrics when the Accept header asks for it). "
                       "Each API process reports its own counts; sum them across processes.",
        "operationId": "metrics",
        "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    }),
    "openapi": ("any", "get /openapi.json", {
        "summary": "This document",
        "operationId": "openapi",
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {_JSON: {"schema": {"type": "object"}}}}},
    }),
}

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_TIME = {"type": ["string", "null"], "format": "date-time"}

_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details",
        "properties": {
            "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
            "detail": {"type": "string"}, "instance": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "object", "required": ["field", "message"], "properties": {
                "field": {"type": "string"}, "message": {"type": "string"}}}},
        },
        "required": ["type", "title", "status"],
    },
    "JobRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "input", "user_id"],
        "properties": {
            "model": {"type": "string", "description": "A routed model, e.g. kling-2.1"},
            "user_id": {"type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9._:@-]+$"},
            "input": {"type": "object", "additionalProperties": False, "required": ["prompt"], "properties": {
                "prompt": {"type": "string", "minLength": 1, "maxLength": 4000},
                "image_url": {"type": ["string", "null"], "format": "uri"},
                "params": {**_STRING_MAP, "maxProperties": 32}}},
            "webhook_url": {"type": ["string", "null"], "format": "uri"},
            "metadata": {**_STRING_MAP, "maxProperties": 16},
        },
    },
    "JobAccepted": {
        "type": "object",
        "required": ["job_id", "status", "status_url", "events_url", "token"],
        "properties": {
            "job_id": {"type": "string"}, "status": {"const": "queued"},
            "status_url": {"type": "string", "format": "uri"}, "events_url": {"type": "string", "format": "uri"},
            "token": {"type": "string", "description": "Bearer token for reading this job"},
        },
    },
    "Job": {
        "type": "object",
        "required": ["job_id", "status", "model", "provider", "progress", "result", "error",
                     "created_at", "updated_at", "metadata"],
        "properties": {
            "job_id": {"type": "string"},
            "status": {"enum": ["queued", "submitted", "running", "completed", "failed", "cancelled"]},
            "model": {"type": ["string", "null"]}, "provider": {"type": ["string", "null"]},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "result": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["video_url"],
                                                    "properties": {"video_url": {"type": "string"}}}]},
            "error": {"type": ["string", "null"]},
            "created_at": _TIME, "updated_at": _TIME,
            "metadata": _STRING_MAP,
        },
    },
    "Upload": {"type": "object", "required": ["url", "content_type", "bytes", "expires_in"], "properties": {
        "url": {"type": "string", "format": "uri"}, "content_type": {"type": "string"},
        "bytes": {"type": "integer"}, "expires_in": {"type": "integer", "description": "seconds"}}},
    "Models": {"type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": {
        "type": "object", "required": ["model", "providers", "serving"], "properties": {
            "model": {"type": "string"}, "serving": {"type": ["string", "null"]},
            "providers": {"type": "array", "items": {"type": "object", "properties": {
                "provider": {"type": "string"}, "available": {"type": "boolean"},
                "why_unavailable": {"type": ["string", "null"]}}}}}}}}},
    "DashboardData": {"type": "object", "required": ["now", "dev_mode", "providers", "points", "totals", "breakers"],
                      "properties": {"now": {"type": "number"}, "dev_mode": {"type": "boolean"},
                                     "providers": {"type": "array", "items": {"type": "string"}},
                                     "points": {"type": "array", "items": {"type": "object"}},
                                     "totals": {"type": "object"}, "breakers": _STRING_MAP,
                                     "processes": {"type": "object"}, "spike": {"type": "object"}}},
    "Health": {"type": "object", "properties": {
        "status": {"enum": ["ok", "starting"]}, "roles": {"type": "array", "items": {"type": "string"}}}},
}

_SECURITY = {
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "Required when the server has API keys configured; names the tenant."},
    "jobToken": {"type": "http", "scheme": "bearer", "description": "The `token` returned with the 202."},
    "jobTokenQuery": {"type": "apiKey", "in": "query", "name": "token"},
    "operatorKey": {"type": "apiKey", "in": "header", "name": "X-Operator-Key",
                    "description": "FLOODGATE_OPERATOR_KEY; required when API keys are configured."},
    "webhookSignature": {"type": "apiKey", "in": "header", "name": "webhook-signature",
                         "description": "Standard Webhooks v1 HMAC signature with webhook-id and webhook-timestamp."},
}


def document(roles: Set[str], server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an app serving ``roles``."""
    paths: dict[str, dict[str, Any]] = {}
    for role, route, operation in _OPERATIONS.values():
        if role == "any" or role in roles:
            method, path = route.split(" ", 1)
            paths.setdefault(path, {})[method] = operation
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Floodgate", "version": "1",
                 "description": "Durable intake for generative-video jobs: a 202 means the job is in Kafka."},
        "paths": paths,
        "components": {"schemas": _SCHEMAS, "securitySchemes": _SECURITY},
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc


__all__ = ["document"]
