"""``GET /openapi.json``: the API's contract, written by hand (not generated from handlers) so it
is reviewed like code, but for the 405 every path answers the methods it does not serve, which
``document`` adds from the methods the path documents. ``tests/unit/test_api_openapi.py`` checks
it against the router both ways.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence, Set
from typing import Any

from floodgate.api.idempotency import MAX_KEY_CHARS
from floodgate.api.read import MAX_SUBSCRIPTIONS, TOO_MANY_SUBSCRIPTIONS
from floodgate.netguard import MAX_URL_CHARS

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_JSON = "application/json"


# The challenge each 401 carries (RFC 9110, 15.5.2), exactly as the handlers send it
# (floodgate/api/common.py, read.py, dashboard.py, bridge.py); tests/unit/test_api_openapi.py holds
# every documented 401 to what the running app answers.
_API_KEY_CHALLENGE = 'ApiKey realm="floodgate", header="X-API-Key"'
_OPERATOR_CHALLENGE = 'ApiKey realm="floodgate", header="X-Operator-Key"'
_TOKEN_CHALLENGE = 'Bearer realm="floodgate"'
_WEBHOOK_CHALLENGE = 'Signature realm="floodgate-webhooks"'
_CHALLENGE_TEXT = {
    _API_KEY_CHALLENGE: "An API key is no registered scheme: the challenge names the header that carries it.",
    _OPERATOR_CHALLENGE: "An operator key is no registered scheme: the challenge names the header that carries it.",
    _TOKEN_CHALLENGE: "The job's token, as `Authorization: Bearer <token>` (or `?token=`).",
    _WEBHOOK_CHALLENGE: "A delivery proves itself by its provider's signature (or its callback path's MAC), which "
                        "no registered scheme describes; its realm is not the API's: a provider's webhook secret "
                        "opens nothing else.",
}


def _problem(description: str, retry_after: bool = False, challenge: str | None = None) -> dict[str, Any]:
    """A problem+json response; ``challenge``: the ``WWW-Authenticate`` value a 401 carries."""
    out: dict[str, Any] = {"description": description, "content": _PROBLEM}
    headers: dict[str, Any] = {}
    if retry_after:
        headers["Retry-After"] = {"description": "seconds to wait", "schema": {"type": "integer"}}
    if challenge is not None:
        headers["WWW-Authenticate"] = {"description": _CHALLENGE_TEXT[challenge], "required": True,
                                       "schema": {"type": "string", "const": challenge}}
    if headers:
        out["headers"] = headers
    return out


# Every path answers the methods it does not serve with 405 (aiohttp's router, through the app's
# problem middleware), so its 405 is written once, here, from the methods documented on the path
# (and HEAD where the GET answers it: _HEAD_TOO), never by hand per route;
# tests/unit/test_api_openapi.py holds it to the router's answers.
_HEAD_TOO = frozenset({"/v1/videos/{job_id}"})
"""Paths whose GET answers HEAD too (``allow_head=True`` in their ``add_routes``)."""
_EVERY_METHOD = frozenset({"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"})
"""The methods an OpenAPI path item may document: a path serving them all answers no 405."""


def _method_not_allowed(served: Set[str]) -> dict[str, Any]:
    """The 405 of a path serving ``served`` (upper case), with ``Allow`` as aiohttp writes it."""
    listed = " and ".join(sorted(served))
    return {**_problem(f"A method other than {listed}: answered by the router, before anything else (a "
                       "credential, a link, the body) is looked at; `detail` names the method and the ones "
                       "served"),
            "headers": {"Allow": {"description": "The methods this path serves", "required": True,
                                  "schema": {"type": "string", "const": ",".join(sorted(served))}}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_TOKEN_QUERY = {"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
                "description": "The job's token, for clients that cannot send an Authorization header."}
# maxLength: the default FLOODGATE_UPLOAD_MAX_BYTES (a deployment may set it lower: a 413).
_IMAGES = {kind: {"schema": {"type": "string", "format": "binary", "maxLength": 5_242_880}}
           for kind in ("image/jpeg", "image/png", "image/webp")}
_JOB_AUTH: list[dict[str, list[str]]] = [{"jobToken": []}, {"jobTokenQuery": []}]

# The stored video's conditional and range requests (floodgate/api/videos.py answers them; aiohttp's
# FileResponse the date conditions and the range itself, on the local store).
_VIDEO_ETAG = {"description": "The SHA-256 recorded when the video was copied, quoted", "schema": {"type": "string"}}
_VIDEO_CONDITIONS: list[dict[str, Any]] = [
    {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "One byte range (`bytes=first-last`, `bytes=first-`, `bytes=-suffix`): 206 with that part, "
                    "416 when it cannot be satisfied. Several ranges, a malformed one or another unit are "
                    "ignored (200, the whole video), as is any Range on HEAD or with the S3 store."},
    {"name": "If-Range", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "The Range is answered only when this is the ETag; anything else (another or a weak tag, "
                    "a date): the whole video, 200."},
    {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Entity tags or `*`, compared strongly with the ETag: 412 when none matches."},
    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Entity tags or `*`, compared weakly with the ETag: 304 when one matches."},
    {"name": "If-Unmodified-Since", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Local store only, and only without If-Match: 412 when the copy was stored after this date."},
    {"name": "If-Modified-Since", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Local store only, and only without If-None-Match: 304 unless the copy was stored after "
                    "this date."},
]

# One Server-Sent Event of the job stream (the schema applies per event, as SSE tools read it).
_SSE_EVENT = {"type": "object", "required": ["event", "data"], "properties": {
    "event": {"const": "job"}, "id": {"type": "string", "pattern": "^[0-9]+$"},
    "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _ref("Job")}}}

def _callback_operation(*, extra: bool) -> dict[str, Any]:
    """The per-job callback route: ``/webhooks/{provider}/{job_id}/{mac}``, with a tail for providers
    whose bodies lack something the bridge needs (fal's app, which may hold slashes; a RunPod
    endpoint; Kling's task kind)."""
    segment = {"type": "string", "pattern": "^[A-Za-z0-9._-]+$", "maxLength": 256}
    names = ["provider", "job_id", "mac", *(["extra"] if extra else [])]
    return {
        "summary": "Provider webhook on a per-job callback path"
                   + (" (with a provider-specific segment)" if extra else ""),
        "description": "The path Floodgate gave the provider for that job (`mac` binds it to the job). "
                       "Signed providers are verified as on the bare route; a provider that does not sign is "
                       "believed only after a status call to the provider confirms what it says.",
        "operationId": "receiveJobWebhookExtra" if extra else "receiveJobWebhook",
        "parameters": [{"name": name, "in": "path", "required": True, "schema": segment} for name in names],
        "requestBody": {"required": True, "content": {"*/*": {"schema": {"type": "string", "format": "binary",
                                                                           "maxLength": 1048576}}}},
        "responses": {
            "200": {"description": "Stored", "content": {_JSON: {"schema": {
                "type": "object", "properties": {"received": {"const": True}}, "required": ["received"]}}}},
            "401": _problem("Wrong callback path, bad signature, or the provider does not confirm it",
                            challenge=_WEBHOOK_CHALLENGE),
            "404": _problem("Unknown provider"),
            "413": _problem("Body larger than 1 MiB; `errors` names `body`"),
            "503": _problem("Kafka unavailable, or the provider did not answer the confirming status call; "
                            "retry the delivery", retry_after=True),
        },
    }


_OPERATIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # (role, method, path) → operation; role "any" is served by every app.
    "create_job": ("ingress", "post /v1/jobs", {
        "summary": "Submit a video generation job",
        "operationId": "createJob",
        "security": [{"apiKey": []}, {}],
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS,
                                   "pattern": "^[ -~]+$"},
                        "description": "Same key and body: the same 202 again, no second job. "
                                       "Same key, other body: 422."}],
        "requestBody": {"required": True, "content": {_JSON: {"schema": _ref("JobRequest")}}},
        "responses": {
            "202": {"description": "Accepted: the job is durably queued",
                    "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
                    "content": {_JSON: {"schema": _ref("JobAccepted")}}},
            "400": _problem("Invalid body; `errors` names every field at fault"),
            "401": _problem("X-API-Key missing (when keys are configured)", challenge=_API_KEY_CHALLENGE),
            "403": _problem("Unknown API key"),
            "413": _problem("Body too large; `errors` names `body`"),
            "415": _problem("Not application/json; `errors` names `Content-Type`"),
            "422": _problem("Idempotency-Key reused with a different body"),
            "429": _problem("Over the tenant's quota (type `urn:floodgate:problem:rate-quota`: requests per "
                            "minute; `urn:floodgate:problem:queued-quota`: jobs not yet finished); `limit` is the "
                            "quota's limit. Nothing was accepted", retry_after=True),
            "503": _problem("Kafka unavailable, or the backlog is past its bound: the whole queue's depth, "
                            "or the estimated wait of the line this model's job would join (type "
                            "`urn:floodgate:problem:backlog`); nothing was accepted", retry_after=True),
        },
    }),
    "get_job": ("read", "get /v1/jobs/{job_id}", {
        "summary": "Current state of a job",
        "operationId": "getJob",
        "security": _JOB_AUTH,
        "parameters": [_JOB_ID, _TOKEN_QUERY],
        "responses": {
            "200": {"description": "The job", "content": {_JSON: {"schema": _ref("Job")}}},
            "401": _problem("Token missing", challenge=_TOKEN_CHALLENGE),
            "404": _problem("Unknown job or wrong token"),
        },
    }),
    "get_video": ("videos", "get /v1/videos/{job_id}", {
        "summary": "A completed job's stored video (the link in result.video_url)",
        "description": "The signed link is the only credential: `expires` (Unix seconds) and `sig` "
                       "(base64url HMAC-SHA256) come from the job's `result.video_url`. HEAD answers the headers "
                       "alone. The ETag, the SHA-256 recorded when the video was copied, is the one validator: "
                       "If-Match and If-None-Match are checked against it on either store. Range (with If-Range), "
                       "If-Modified-Since and If-Unmodified-Since are answered only where the videos are kept on "
                       "the API's disk (FLOODGATE_VIDEO_STORE local); with S3 they are ignored.",
        "operationId": "getVideo",
        "parameters": [_JOB_ID,
                       {"name": "expires", "in": "query", "required": True, "schema": {"type": "string"}},
                       {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}},
                       *_VIDEO_CONDITIONS],
        "responses": {
            "200": {"description": "The video; Repr-Digest carries the SHA-256 recorded when it was copied. Also the "
                                   "answer to a Range that is ignored: several ranges, a malformed one, another "
                                   "unit, one on HEAD, or one whose If-Range is not the ETag",
                    "headers": {"ETag": _VIDEO_ETAG},
                    "content": {"video/*": {"schema": {"type": "string", "format": "binary"}}}},
            "206": {"description": "The one byte range asked for (local store only)",
                    "headers": {"ETag": _VIDEO_ETAG,
                                "Content-Range": {"description": "`bytes first-last/size`",
                                                  "schema": {"type": "string"}}},
                    "content": {"video/*": {"schema": {"type": "string", "format": "binary"}}}},
            "304": {"description": "If-None-Match names the ETag (or `*`); on the local store, without If-None-Match, "
                                   "If-Modified-Since is not before the copy was stored. No body",
                    "headers": {"ETag": _VIDEO_ETAG}},
            "403": _problem("Malformed, forged or expired link"),
            "412": {"description": "If-Match names neither the ETag (compared strongly) nor `*`; on the local store, "
                                   "without If-Match, If-Unmodified-Since is before the copy was stored. No body",
                    "headers": {"ETag": _VIDEO_ETAG}},
            "416": {"description": "The one range cannot be satisfied: `bytes=-0`, or a first byte at or past the "
                                   "end (local store only). No body",
                    "headers": {"ETag": _VIDEO_ETAG,
                                "Content-Range": {"description": "`bytes */size`", "schema": {"type": "string"}}}},
            "502": _problem("The provider's video was refused (too large, not a video, a private address), or "
                            "its copy was given up and the provider's URL is not known here"),
            "307": {"description": "Not copied yet, or its copy given up after the copier's retries: the "
                                   "provider's own copy (a copy given up on is then started again, at most "
                                   "once a minute per video)",
                    "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}}},
            "503": _problem("Not copied yet and the provider's URL not known here (or the store is unreachable)",
                            retry_after=True),
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
            "401": _problem("Token missing", challenge=_TOKEN_CHALLENGE),
            "404": _problem("Unknown job or wrong token"),
            "409": _problem("The job already completed or failed; `detail` names its status"),
            "503": _problem("Kafka unavailable; nothing was recorded", retry_after=True),
        },
    }),
    "job_events": ("read", "get /v1/jobs/{job_id}/events", {
        "summary": "Server-Sent Events: the current state, then every change until a terminal state",
        "description": "Each event is `event: job`, `id: <version>`, `data: <Job JSON>`; "
                       "a `: keep-alive` comment is sent every 15 s. Honours Last-Event-ID: a client "
                       "that has seen a finished job's last event gets 204, which stops an EventSource "
                       "reconnecting.",
        "operationId": "jobEvents",
        "security": _JOB_AUTH,
        "parameters": [_JOB_ID, _TOKEN_QUERY,
                       {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "integer"}}],
        "responses": {
            "200": {"description": "An event stream", "content": {"text/event-stream": {"schema": _SSE_EVENT}}},
            "204": {"description": "The job has finished and Last-Event-ID is at or past its final event: "
                                   "nothing more will be sent (an EventSource stops reconnecting)"},
            "401": _problem("Token missing", challenge=_TOKEN_CHALLENGE),
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
                       f"At most {MAX_SUBSCRIPTIONS} live subscriptions per connection: one more is answered "
                       f"`{{\"type\": \"error\", \"job_id\", \"code\": \"{TOO_MANY_SUBSCRIPTIONS}\", "
                       f"\"limit\": {MAX_SUBSCRIPTIONS}, \"detail\"}}` and not subscribed. A subscription ends by "
                       "itself at its job's terminal state (after the `job` message that says so) or on "
                       "`unsubscribe`, which frees its place: any number of jobs over a connection's life, at "
                       f"most {MAX_SUBSCRIPTIONS} unfinished at once. SSE (`/v1/jobs/{{job_id}}/events`) follows "
                       "one job per stream.",
        "operationId": "stream",
        "parameters": [
            {"name": "job_id", "in": "query", "required": False, "schema": {"type": "string"}},
            _TOKEN_QUERY,
            # The handshake headers of RFC 6455: documented so that a request the schema calls
            # valid really is an upgrade (a plain GET is the 400 below).
            {"name": "Connection", "in": "header", "required": True, "schema": {"enum": ["Upgrade"]}},
            {"name": "Upgrade", "in": "header", "required": True, "schema": {"enum": ["websocket"]}},
            {"name": "Sec-WebSocket-Version", "in": "header", "required": True, "schema": {"enum": ["13"]}},
            {"name": "Sec-WebSocket-Key", "in": "header", "required": True,
             "schema": {"type": "string", "pattern": "^[A-Za-z0-9+/]{21}[AQgw]==$"},
             "description": "16 random bytes, base64"},
            {"name": "Origin", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "Browsers send it; an origin not allowed by FLOODGATE_WS_ALLOWED_ORIGINS is a 403."},
        ],
        "responses": {"101": {"description": "Switching to the WebSocket protocol"},
                      "400": _problem("Not a WebSocket upgrade request"),
                      "403": _problem("Origin not allowed"),
                      "426": {**_problem("A WebSocket version other than 13 (RFC 6455 §4.4)"), "headers": {
                          "Sec-WebSocket-Version": {"description": "the version spoken here",
                                                    "schema": {"enum": ["13"]}}}}},
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
            "401": _problem("Signature or timestamp did not verify; nothing was stored",
                            challenge=_WEBHOOK_CHALLENGE),
            "404": _problem("Unknown provider"),
            "413": _problem("Body larger than 1 MiB; `errors` names `body`"),
            "503": _problem("Kafka unavailable; retry the delivery", retry_after=True),
        },
    }),
    "webhook_callback": ("bridge", "post /webhooks/{provider}/{job_id}/{mac}", _callback_operation(extra=False)),
    "webhook_callback_extra": ("bridge", "post /webhooks/{provider}/{job_id}/{mac}/{extra}",
                               _callback_operation(extra=True)),
    "create_upload": ("ingress", "post /v1/uploads", {
        "summary": "Store an image (a selfie) for a job's input.image_url",
        "description": "The body is the image itself. Its kind is read from its first bytes and must match "
                       "the Content-Type. The answer's `url` is unguessable; pass it as `input.image_url`. "
                       "Images are deleted after FLOODGATE_UPLOAD_TTL seconds. Every API process serves every "
                       "upload when FLOODGATE_VIDEO_STORE=s3 (they share the video bucket).",
        "operationId": "createUpload",
        "security": [{"apiKey": []}, {}],
        "requestBody": {"required": True, "content": _IMAGES},
        "responses": {
            "201": {"description": "Stored", "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
                    "content": {_JSON: {"schema": _ref("Upload")}}},
            "401": _problem("X-API-Key missing (when keys are configured)", challenge=_API_KEY_CHALLENGE),
            "403": _problem("Unknown API key"),
            "413": _problem("Image larger than FLOODGATE_UPLOAD_MAX_BYTES; `errors` names `body`"),
            "415": _problem("Not a JPEG, PNG or WebP image, or not the kind the Content-Type says; `errors` names "
                            "`Content-Type` when it is no image type, else `body`"),
            "503": _problem("The store is full (FLOODGATE_UPLOAD_MAX_TOTAL_BYTES) or cannot be reached",
                            retry_after=True),
        },
    }),
    "read_upload": ("ingress", "get /v1/uploads/{name}", {
        "summary": "A stored image, for the provider to fetch",
        "operationId": "readUpload",
        # floodgate.images names every upload so: anything else is a 404 without a disk lookup.
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": "^img_[A-Za-z0-9_-]{32}[.](jpg|png|webp)$"}}],
        "responses": {
            "200": {"description": "The image", "content": _IMAGES},
            "404": _problem("No such image (or it expired)"),
            "503": _problem("The store cannot be reached", retry_after=True),
        },
    }),
    "models": ("pages", "get /v1/models", {
        "summary": "The models, their providers in order of preference, and which serves a job now",
        "operationId": "listModels",
        "responses": {"200": {"description": "The models", "content": {_JSON: {"schema": _ref("Models")}}}},
    }),
    "page": ("pages", "get /", {
        "summary": "The generation page (HTML)",
        "operationId": "generationPage",
        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
    }),
    "dashboard_page": ("pages", "get /dashboard", {
        "summary": "The operations dashboard (HTML; its figures come from /dashboard/data)",
        "operationId": "dashboardPage",
        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
    }),
    "static": ("pages", "get /static/{name}", {
        "summary": "The pages' scripts and styles",
        "operationId": "staticFile",
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+[.](js|css|svg|png|ico)$"}}],
        "responses": {"200": {"description": "The file", "content": {"*/*": {"schema": {"type": "string"}}}},
                      "404": _problem("No such file")},
    }),
    "dashboard_data": ("pages", "get /dashboard/data", {
        "summary": "The dashboard's figures: every process's Prometheus metrics, summed, over the last minutes",
        "operationId": "dashboardData",
        "security": [{"operatorKey": []}, {}],
        "responses": {
            "200": {"description": "Series and totals", "content": {_JSON: {"schema": _ref("DashboardData")}}},
            "401": _problem("X-Operator-Key missing (when API keys are configured)", challenge=_OPERATOR_CHALLENGE),
            "403": _problem("Unknown operator key, or none configured while API keys are"),
        },
    }),
    "dashboard_spike": ("pages", "post /dashboard/spike", {
        "summary": "Dev mode only: send a spike of jobs to this API's own POST /v1/jobs",
        "operationId": "dashboardSpike",
        "security": [{"operatorKey": []}, {}],
        "requestBody": {"required": False, "content": {_JSON: {"schema": {"type": "object", "properties": {
            "jobs": {"type": "integer", "minimum": 1, "maximum": 5000, "default": 300},
            "rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 500, "default": 100}}}}}},
        "responses": {
            "202": {"description": "The spike started", "content": {_JSON: {"schema": {"type": "object"}}}},
            "400": _problem("Invalid jobs or rate; `errors` names them"),
            "413": _problem("Body larger than the API takes at all (FLOODGATE_MAX_BODY_BYTES or 1 MiB, whichever "
                            "is larger); `errors` names `body`"),
            "401": _problem("X-Operator-Key missing (when API keys are configured)", challenge=_OPERATOR_CHALLENGE),
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


def _string_map(entries: int, key_chars: int, value_chars: int) -> dict[str, Any]:
    return {"type": ["object", "null"], "maxProperties": entries,
            "propertyNames": {"minLength": 1, "maxLength": key_chars},
            "additionalProperties": {"type": "string", "maxLength": value_chars}}


# What netguard.check_url_syntax accepts, as a pattern: http(s), a host name whose last label is not
# numeric (a numeric one would be read as an IPv4 address), a port 1-65535, no credentials, no
# whitespace or control characters. IP-literal hosts are accepted by the server too but left out here.
_LABEL = "[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_PORT = "([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_URL_TEXT = "An http(s) URL with a host name."
_URL: dict[str, Any] = {"type": ["string", "null"], "maxLength": MAX_URL_CHARS,
        "pattern": f"^[Hh][Tt][Tt][Pp][Ss]?://({_LABEL}\\.)*[A-Za-z]([A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?"
                   f"(:{_PORT})?([/?#][!-~]*)?$",
        "description": _URL_TEXT}
_TIME = {"type": ["string", "null"], "format": "date-time"}

_PUSH_TARGETS: dict[str, Any] = {
    "fcm": {"type": "object", "additionalProperties": False, "required": ["platform", "token"], "properties": {
        "platform": {"const": "fcm"},
        "token": {"type": "string", "pattern": "^[A-Za-z0-9_:.-]{1,1024}$", "description": "FCM registration token"}}},
    "apns": {"type": "object", "additionalProperties": False, "required": ["platform", "token"], "properties": {
        "platform": {"const": "apns"},
        "token": {"type": "string", "pattern": "^(?:[0-9A-Fa-f]{2}){32,100}$",
                  "description": "APNs device token: 64-200 hex digits"}}},
}

_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details",
        "properties": {
            "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
            "detail": {"type": "string"}, "instance": {"type": "string"},
            "retry_after": {"type": "integer", "minimum": 1,
                            "description": "Seconds to wait before trying again (as the Retry-After header)"},
            "limit": {"type": "integer", "minimum": 1, "description": "The limit of the quota that refused"},
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
            # The document served by an API lists its routed models here as an enum (see ``document``).
            "model": {"type": "string", "description": "A routed model, e.g. kling-2.1; any other is a 400"},
            "user_id": {"type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9._:@-]+$"},
            "input": {"type": "object", "additionalProperties": False, "required": ["prompt"], "properties": {
                "prompt": {"type": "string", "minLength": 1, "maxLength": 4000, "pattern": r"[^\s\x1c-\x1f\x85]",
                           "description": "Not only whitespace"},
                "image_url": _URL,
                "params": _string_map(32, 64, 1024)}},
            "webhook_url": {**_URL, "description": _URL_TEXT + " On submission and again at delivery, "
                            "an address that is private, loopback or link-local is refused (400 at submission)."},
            "metadata": _string_map(16, 64, 512),
            "notify": {"type": ["object", "null"], "additionalProperties": False, "properties": {
                # The document served by an API keeps only the platforms it has credentials for
                # (see ``document``): a push to any other is a 400.
                "push": {"description": "A phone to tell when the job completes or fails (FCM or APNs).",
                         "oneOf": [{"type": "null"}, *_PUSH_TARGETS.values()]}}},
            "priority": {"enum": ["high", "standard", "low", None], "default": "standard",
                         "description": "A waiting job is never passed by one of a lower class. high is open "
                                        "only to API keys the operator granted it (FLOODGATE_PRIORITY_GRANTS): "
                                        "400 otherwise."},
            "deadline_s": {"type": ["integer", "null"], "minimum": 1, "maximum": 604800,
                           "description": "Seconds after acceptance: a job still waiting then ends expired, never "
                                          "submitted. Default: the server's FLOODGATE_DEFAULT_DEADLINE_S (0: none)."},
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
            "status": {"enum": ["queued", "submitted", "running", "completed", "failed", "cancelled", "expired"]},
            "model": {"type": ["string", "null"]}, "provider": {"type": ["string", "null"]},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "result": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["video_url"],
                                                    "properties": {"video_url": {"type": "string"}}}]},
            "error": {"type": ["string", "null"]},
            "created_at": _TIME, "updated_at": _TIME,
            "metadata": _STRING_MAP,
            "priority": {"enum": ["high", "standard", "low"]},
            "serving_model": {"type": ["string", "null"],
                              "description": "The model serving the job: the one asked for, or an equivalent it "
                                             "spilled to when that one's line was long (see route_note)."},
            "route_note": {"type": ["string", "null"],
                           "description": "Why the job is where it is: a fallback's or a spill's reason."},
            "queue_position": {"type": ["integer", "null"], "minimum": 0,
                               "description": "Waiting jobs the provider serves before this one (0: next); null "
                                              "once the job has left the line. An estimate by the line's own "
                                              "rule: priority, then each tenant's fair share."},
            "provider_queue_position": {"type": ["integer", "null"], "minimum": 0,
                                        "description": "Jobs ahead of this one in the provider's own queue, "
                                                       "once submitted and while the provider keeps it waiting "
                                                       "(providers that report it: fal); null otherwise and once "
                                                       "it runs. Checked every FLOODGATE_PROVIDER_STATUS_POLL "
                                                       "seconds."},
            "eta_seconds": {"type": ["number", "null"], "minimum": 0,
                            "description": "Estimated seconds until the provider starts the job: queued jobs, "
                                           "and submitted ones waiting in the provider's own queue "
                                           "(provider_queue_position), from how fast that queue was seen to "
                                           "move (a queued job for such a provider counts the wait there "
                                           "too); null when not known yet."},
            "eta_ready_seconds": {"type": ["number", "null"], "minimum": 0,
                                  "description": "Estimated seconds until the video is ready (queued and running "
                                                 "jobs; null when not known yet)."},
            "final": {"type": "boolean",
                      "description": "True once the job's end is recorded: nothing follows it. An end a "
                                     "provider's webhook told is shown before the worker records it, with "
                                     "final false; the recorded end follows (seldom another one: a cancel "
                                     "that overtook the provider's completion ends the job cancelled)."},
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
                                     "processes": {"type": "object"}, "spike": {"type": "object"},
                                     "unavailable": {**_STRING_MAP, "description": (
                                         "Providers that take no new jobs, and why: `retired <ISO instant>` "
                                         "or `disabled` (from the routing table)")}}},
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


def document(roles: Set[str], server_url: str | None = None, models: Sequence[str] | None = None,
             push_platforms: Set[str] | None = None, *, videos: bool = False,
             high_granted: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an app serving ``roles``; ``models`` (the routable models)
    become the enum of ``JobRequest.model``, so a client sees which ones it may ask for, and
    ``push_platforms`` (those with credentials) the kinds of ``notify.push`` it may send;
    ``videos``: and stored videos, which the read role serves when there is a video store;
    ``high_granted``: whether any API key may ask for priority high (else it is left out)."""
    schemas = _SCHEMAS
    if models is not None or push_platforms is not None or not high_granted:
        request = copy.deepcopy(_SCHEMAS["JobRequest"])
        if models is not None:
            request["properties"]["model"]["enum"] = list(models)
        if push_platforms is not None:
            push = request["properties"]["notify"]["properties"]["push"]
            push["oneOf"] = [{"type": "null"}, *(v for k, v in _PUSH_TARGETS.items() if k in push_platforms)]
        if not high_granted:
            request["properties"]["priority"]["enum"] = ["standard", "low", None]
        schemas = {**_SCHEMAS, "JobRequest": request}
    paths: dict[str, dict[str, Any]] = {}
    served = set(roles) | ({"videos"} if videos and "read" in roles else set())
    if {"ingress", "read"} & set(roles):  # the pages and the dashboard: not on a bridge alone
        served.add("pages")
    for role, route, operation in _OPERATIONS.values():
        if role == "any" or role in served:
            method, path = route.split(" ", 1)
            paths.setdefault(path, {})[method] = operation
    for path, operations in paths.items():
        served = {m.upper() for m in operations} | ({"HEAD"} if path in _HEAD_TOO else set())
        if served >= _EVERY_METHOD:
            continue
        answer = _method_not_allowed(served)
        for method, operation in operations.items():  # copies: _OPERATIONS is shared by every document
            operations[method] = {**operation, "responses": {**operation["responses"], "405": answer}}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Floodgate", "version": "1",
                 "description": "Durable intake for generative-video jobs: a 202 means the job is in Kafka."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": _SECURITY},
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc


__all__ = ["document"]
