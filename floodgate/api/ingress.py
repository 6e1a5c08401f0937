"""``POST /v1/jobs``: check, validate, write a ``JobRequest`` to ``requests`` and answer 202 only
once Kafka acknowledged it. Nothing else happens here: admission, routing and submission are
the workers' business, so the HTTP path stays one broker round trip long.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from floodgate import codec
from floodgate.api.admission import Admission, Refused
from floodgate.api.backlog import BacklogMonitor
from floodgate.api.common import (
    API_KEY_CHALLENGE,
    BodyTooLarge,
    Deps,
    base_url,
    json_response,
    read_bounded,
    too_large,
)
from floodgate.api.idempotency import Outcome, key_problem, matches_snapshot
from floodgate.api.kafka_io import KafkaUnavailable, RecordTooLarge, Sender
from floodgate.api.resources import queued_snapshot
from floodgate.errors import Problem, ValidationError
from floodgate.ids import job_id_for_key, job_token, new_job_id
from floodgate.instances import Roster
from floodgate.problems import IDEMPOTENCY_CONFLICT, UNAUTHORIZED, problem_response, validation_response
from floodgate.push import notify_record
from floodgate.quotas import JobsByTenant
from floodgate.routing import known_models
from floodgate.validation import NormalizedRequest, keyed_headers, request_hash, validate_job_request

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
# Refusals by status, as floodgate_requests_rejected_total{reason} counts them.
REJECT_REASONS = {400: "validation", 415: "validation", 401: "auth", 403: "auth", 413: "too_large",
                  422: "idempotency_conflict", 503: "kafka_unavailable"}


def tenant_for(api_key: str | None, key_map: dict[str, str]) -> str | None:
    """The tenant an API key belongs to, comparing every key in constant time; None if unknown."""
    if api_key is None:
        return None
    found = None
    given = api_key.encode("utf-8", "replace")
    for key, tenant in key_map.items():
        if hmac.compare_digest(key.encode("utf-8"), given):
            found = tenant
    return found


def validate(payload: Any, models: tuple[str, ...], allow_private: bool,
             push_platforms: Collection[str] | None = None) -> NormalizedRequest:
    """``validate_job_request``, URL targets included, plus, when ``push_platforms`` is given, that
    a ``notify.push`` names a platform this deployment can send to; every field at once."""
    problems: list[Problem] = []
    normalized = None
    try:
        normalized = validate_job_request(payload, known_models=models, allow_private=allow_private)
    except ValidationError as exc:
        problems.extend(exc.problems)
    push = normalized.push if normalized is not None else None
    if push is not None and push_platforms is not None and push.platform not in push_platforms:
        problems.append(Problem("notify.push.platform", f"push to {push.platform} is not configured on this server"))
    if problems or normalized is None:
        raise ValidationError(problems)
    return normalized


def job_request(job_id: str, tenant: str, req: NormalizedRequest, key: str | None, now_ms: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "tenant": tenant,
        "user_id": req.user_id,
        "model": req.model,
        "input": {"prompt": req.prompt, "image_url": req.image_url, "params": dict(req.params)},
        "webhook_url": req.webhook_url,
        "metadata": dict(req.metadata),
        "idempotency_key": key,
        "request_hash": request_hash(req, tenant),
        "accepted_at": now_ms,
        "source": "http",
        "notify": notify_record(req.push),
        "priority": req.priority,
        "deadline_s": req.deadline_s,
    }


class Ingress:
    def __init__(self, deps: Deps, backlog: BacklogMonitor | None = None, roster: Roster | None = None,
                 own_jobs: JobsByTenant | None = None) -> None:
        self.deps = deps
        self.admission = Admission(deps.settings.quota_table, deps.view.open_jobs if deps.view is not None else None,
                                   backlog, roster=roster, own_jobs=own_jobs)
        # Worked out once, not per request: settings are frozen.
        self.api_keys = deps.settings.api_key_map
        self.secret = deps.secret
        self.requests_topic = deps.topics.requests
        sender = deps.intake if deps.intake is not None else deps.producer
        assert sender is not None  # build_app guarantees it
        self.sender: Sender = sender
        self.priority_grants = deps.settings.priority_grant_set
        self._accepted_total = deps.metrics.accepted.labels("http")
        self._models: tuple[str, ...] = ()
        self._models_until = 0.0

    def known_models(self) -> tuple[str, ...]:
        """The models routable now; recomputed at most once a second (they change when a
        provider is retired, at a configured instant)."""
        now = time.monotonic()
        if now >= self._models_until:
            self._models = known_models(self.deps.setup.routing, datetime.now(UTC))
            self._models_until = now + 1.0
        return self._models

    async def create_job(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        response = await self._create_job(request)
        if response.status == 202:
            self._accepted_total.inc()
            self.deps.metrics.accept_latency.observe(time.perf_counter() - started)
        elif isinstance(response, Refused):
            self.deps.metrics.reject(response.refusal.reason)
        elif response.status in REJECT_REASONS:
            self.deps.metrics.reject(REJECT_REASONS[response.status])
        return response

    async def _create_job(self, request: web.Request) -> web.Response:
        keys = self.api_keys
        tenant = DEFAULT_TENANT
        if keys:
            api_key = request.headers.get("X-API-Key")
            if not api_key:
                return problem_response(401, "Unauthorized", type_=UNAUTHORIZED, detail="X-API-Key header required",
                                        headers=API_KEY_CHALLENGE)
            found = tenant_for(api_key, keys)
            if found is None:
                return problem_response(403, "Forbidden", type_=UNAUTHORIZED, detail="unknown API key")
            tenant = found
        # Before the body is read: a refused request costs no parsing and never reaches Kafka.
        refusal = self.admission.check(tenant)
        if refusal is not None:
            return Refused(refusal)
        try:
            return await self._admitted(request, tenant)
        finally:
            self.admission.settle(tenant)  # after the 202's put_local: the job counts as open by then

    async def _admitted(self, request: web.Request, tenant: str) -> web.Response:
        deps, settings = self.deps, self.deps.settings
        if request.content_type != "application/json":
            return problem_response(415, "Unsupported Media Type", detail="send the job as application/json",
                                    errors=[Problem("Content-Type", "must be application/json")])
        try:
            body = await read_bounded(request, settings.max_body_bytes)
        except BodyTooLarge as exc:
            return too_large(exc.limit)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return validation_response(ValidationError(Problem("body", f"not valid JSON: {exc}")))
        idem_key = request.headers.get("Idempotency-Key")
        try:
            if idem_key is not None and (why := key_problem(idem_key)):
                raise ValidationError(Problem("Idempotency-Key", why))
            normalized = validate(payload, self.known_models(), settings.allow_private_webhooks,
                                  settings.push_platforms)
            if normalized.priority == "high" and tenant not in self.priority_grants:
                # Anyone may step aside (low); going ahead of everyone is the operator's grant.
                raise ValidationError(Problem("priority", "high is not granted to this API key"))
        except ValidationError as exc:
            return validation_response(exc)
        if (refusal := self.admission.check_model(normalized.model)) is not None:
            return Refused(refusal)  # the line this job would join is past the wait bound
        job_id = job_id_for_key(self.secret, tenant, idem_key) if idem_key is not None else new_job_id()
        record = job_request(job_id, tenant, normalized, idem_key, int(deps.clock() * 1000))
        if idem_key is None:
            return await self._produce(request, record)
        return await self._produce_once(request, record)

    async def _produce_once(self, request: web.Request, record: dict[str, Any]) -> web.Response:
        cache, job_id, digest = self.deps.idempotency, record["job_id"], record["request_hash"]
        while True:
            outcome, flying = cache.check(job_id, digest)
            if flying is not None:  # IN_FLIGHT
                await asyncio.shield(flying)  # the first request's outcome decides; then look again
                continue
            if outcome is not Outcome.NEW or self.deps.view is None:
                break
            seen = await self.deps.view.lookup(job_id)
            # Once the view has spilled, that read yields (to a thread): another request with
            # this key may have begun or finished meanwhile, and then its outcome decides.
            if cache.check(job_id, digest)[0] is not Outcome.NEW:
                continue
            if seen is not None:
                # Accepted before, by another instance, before a restart or long enough ago to
                # be on disk only: its snapshot is the only memory of the body we have here.
                if not matches_snapshot(record, seen):
                    return self._conflict()
                cache.remember(job_id, digest)
                outcome = Outcome.REPLAY
            break
        if outcome is Outcome.CONFLICT:
            return self._conflict()
        if outcome is Outcome.REPLAY:
            return self._accepted(request, job_id)
        cache.begin(job_id, digest)
        accepted = False
        try:
            response = await self._produce(request, record)
            accepted = response.status == 202
            return response
        finally:
            cache.finish(job_id, accepted)

    async def _produce(self, request: web.Request, record: dict[str, Any]) -> web.Response:
        deps = self.deps
        value, headers = codec.encode("JobRequest", record)
        keyed_headers(headers, record["idempotency_key"], record["request_hash"])  # for readers without a view
        try:
            await self.sender.send_and_wait(self.requests_topic, record["job_id"], value, headers)
        except KafkaUnavailable as exc:
            # The client retries; with an Idempotency-Key the retry maps to the same job id, so
            # a record that lands late anyway is dropped by admission as a duplicate.
            retry = str(int(exc.retry_after or 1))
            return problem_response(503, "Service Unavailable", detail="the job could not be queued; retry later",
                                    headers={"Retry-After": retry})
        except RecordTooLarge:
            return too_large(deps.settings.max_body_bytes)
        if deps.view is not None:  # read-your-writes when this process also serves reads
            deps.view.put_local(queued_snapshot(record), new_id=record.get("idempotency_key") is None)
        else:  # no view counts this job as open: the admission does, until its result is read
            self.admission.accepted(record["job_id"], record["tenant"])
        return self._accepted(request, record["job_id"])

    def _accepted(self, request: web.Request, job_id: str) -> web.Response:
        base = base_url(request, self.deps.settings)
        status_url = f"{base}/v1/jobs/{quote(job_id, safe='')}"
        body = {
            "job_id": job_id,
            "status": "queued",
            "status_url": status_url,
            "events_url": f"{status_url}/events",
            "token": job_token(self.secret, job_id),
        }
        return json_response(body, status=202, headers={"Location": status_url})

    @staticmethod
    def _conflict() -> web.Response:
        return problem_response(
            422, "Idempotency-Key reused", type_=IDEMPOTENCY_CONFLICT,
            detail="this Idempotency-Key was already used with a different request body",
            errors=[Problem("Idempotency-Key", "already used with a different request body")])


def add_routes(app: web.Application, deps: Deps, backlog: BacklogMonitor | None = None,
               roster: Roster | None = None, own_jobs: JobsByTenant | None = None) -> None:
    app.router.add_post("/v1/jobs", Ingress(deps, backlog, roster, own_jobs).create_job)


__all__ = ["Ingress", "add_routes", "job_request", "tenant_for", "validate"]
