"""``POST /v1/jobs/{job_id}/cancel``: write a ``cancelled`` event for the job to ``events`` and
answer 202 only once Kafka acknowledged it. Authorised exactly like ``GET /v1/jobs/{job_id}``.

The event goes straight to the job-state agent, which applies it through the state machine like
any other fact: a job not yet terminal becomes ``cancelled``, and its terminal outputs (snapshot,
result, the release that frees its slot and cancels it at the provider) follow. Whether the cancel
wins a race with the provider's own result is decided there, not here: the 202 means "asked",
and the job resource in the body is its state as this instance knows it now.

A job this instance already knows to be completed or failed is a 409; an already cancelled job
answers 202 again without a second event, so retrying a cancel is harmless.
"""
from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from floodgate import codec
from floodgate.api.common import Deps, json_response
from floodgate.api.kafka_io import KafkaUnavailable
from floodgate.api.read import authorize, current
from floodgate.api.resources import job_resource
from floodgate.api.view import is_terminal
from floodgate.problems import JOB_FINISHED, problem_response

CANCEL_REASON = "cancelled at the owner's request"


def cancel_event(job_id: str, now_ms: int) -> dict[str, Any]:
    """The ``JobEvent`` record of a user's cancel. Its id is fresh, so a second request is a second
    event (which the state machine ignores once the job is terminal). No provider and attempt 0:
    the job-state agent applies it to whatever attempt the job is on."""
    return {"event_id": f"{job_id}:cancel:{uuid.uuid4().hex}", "job_id": job_id, "kind": "cancelled",
            "at": now_ms, "attempt": 0, "error": CANCEL_REASON}


class Canceller:
    def __init__(self, deps: Deps) -> None:
        assert deps.producer is not None and deps.view is not None  # build_app guarantees both
        self.deps = deps

    async def cancel_job(self, request: web.Request) -> web.Response:
        deps = self.deps
        assert deps.producer is not None and deps.view is not None
        job_id, refused = authorize(deps.secret, request)
        if refused is not None:
            return refused
        snapshot = await current(deps.view, job_id, deps.wait_for_job)
        if is_terminal(snapshot):
            if snapshot["status"] == "cancelled":
                return self._accepted(snapshot)
            return problem_response(409, "Job already finished", type_=JOB_FINISHED,
                                    detail=f"the job is already {snapshot['status']}; it cannot be cancelled")
        value, headers = codec.encode("JobEvent", cancel_event(job_id, int(deps.clock() * 1000)))
        try:
            await deps.producer.send_and_wait(deps.topics.events, job_id, value, headers)
        except KafkaUnavailable as exc:
            retry = str(int(exc.retry_after or 1))
            return problem_response(503, "Service Unavailable", detail="the cancel could not be recorded; retry later",
                                    headers={"Retry-After": retry})
        return self._accepted(deps.view.get(job_id) or snapshot)

    @staticmethod
    def _accepted(snapshot: dict[str, Any]) -> web.Response:
        return json_response(job_resource(snapshot), status=202, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application, deps: Deps) -> None:
    app.router.add_post("/v1/jobs/{job_id}/cancel", Canceller(deps).cancel_job)


__all__ = ["CANCEL_REASON", "Canceller", "add_routes", "cancel_event"]
