"""Job requests as both SDK clients prepare them: validated as the HTTP API validates them, then
encoded as the ``JobRequest`` record (``source="sdk"``) with its job id, key and headers. Pure
apart from the id secret and the clock."""
from __future__ import annotations

import secrets
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from floodgate import codec
from floodgate.errors import Problem, ValidationError
from floodgate.ids import job_id_for_key, new_job_id
from floodgate.push import PushTarget, notify_record
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from floodgate.validation import RequestLimits, keyed_headers, request_hash, validate_job_request

MAX_IDEMPOTENCY_KEY_CHARS = 255
DEFAULT_LIMITS = RequestLimits()  # the HTTP API's
SOURCE = "sdk"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job request for :meth:`FloodgateClient.submit_many`; fields as in ``submit``."""

    model: str
    prompt: str
    user_id: str
    image_url: str | None = None
    params: Mapping[str, str] | None = None
    webhook_url: str | None = None
    metadata: Mapping[str, str] | None = None
    idempotency_key: str | None = None
    push: PushTarget | None = None
    """A phone to tell when the job completes or fails (``notify.push`` of the HTTP API)."""


@dataclass(frozen=True, slots=True)
class Prepared:
    job_id: str
    key: bytes
    value: bytes
    headers: list[tuple[str, str | bytes | None]]  # the type confluent-kafka declares


class Preparer:
    """Validation and encoding shared by both clients: pure apart from the id secret and clock."""

    def __init__(self, tenant: str, topic_prefix: str, known_models: Collection[str] | None,
                 id_secret: bytes | None, limits: RequestLimits, allow_private_webhooks: bool) -> None:
        if not isinstance(tenant, str) or not tenant:
            raise ValidationError(Problem("tenant", "must be a non-empty string"))
        settings = Settings(topic_prefix=topic_prefix)
        settings.validate()  # ConfigError for a prefix Kafka would reject
        self.topic = TopicNames(settings).requests
        self.tenant = tenant
        self.known_models = frozenset(_dev_models() if known_models is None else known_models)
        self.id_secret = secrets.token_bytes(32) if id_secret is None else id_secret
        self.limits = limits
        self.allow_private_webhooks = allow_private_webhooks
        job_id_for_key(self.id_secret, tenant, "probe")  # ConfigError now, not at the first keyed submit

    def prepare(self, spec: JobSpec, now_ms: int) -> Prepared:
        """Validate and encode; raises ``ValidationError`` naming every field at fault."""
        problems = _key_problems(spec.idempotency_key)
        payload = {
            "model": spec.model,
            "user_id": spec.user_id,
            "input": {"prompt": spec.prompt, "image_url": spec.image_url, "params": spec.params},
            "webhook_url": spec.webhook_url,
            "metadata": spec.metadata,
            "notify": notify_record(spec.push),
        }
        try:
            # As the HTTP ingress does: a URL naming a private address is refused at the door.
            normalized = validate_job_request(payload, known_models=self.known_models, limits=self.limits,
                                              allow_private=self.allow_private_webhooks)
        except ValidationError as exc:
            raise ValidationError(exc.problems + problems) from None
        if problems:
            raise ValidationError(problems)
        if spec.idempotency_key is None:
            job_id = new_job_id(now_ms)
        else:
            job_id = job_id_for_key(self.id_secret, self.tenant, spec.idempotency_key)
        digest = request_hash(normalized, self.tenant)
        value, headers = codec.encode("JobRequest", {
            "job_id": job_id,
            "tenant": self.tenant,
            "user_id": normalized.user_id,
            "model": normalized.model,
            "input": {"prompt": normalized.prompt, "image_url": normalized.image_url, "params": normalized.params},
            "webhook_url": normalized.webhook_url,
            "metadata": normalized.metadata,
            "idempotency_key": spec.idempotency_key,
            "request_hash": digest,
            "accepted_at": now_ms,
            "source": SOURCE,
            "notify": notify_record(normalized.push),
        })
        keyed_headers(headers, spec.idempotency_key, digest)  # for API processes without a job view
        return Prepared(job_id, job_id.encode("ascii"), value, list(headers))

    def prepare_all(self, specs: Iterable[JobSpec]) -> list[Prepared]:
        """Every spec, or ``ValidationError`` with problems prefixed ``[index].`` for all bad ones."""
        now_ms = time_ms()
        out: list[Prepared] = []
        problems: list[Problem] = []
        for index, spec in enumerate(specs):
            try:
                out.append(self.prepare(spec, now_ms))
            except ValidationError as exc:
                problems.extend(Problem(f"[{index}].{p.field}", p.message) for p in exc.problems)
        if problems:
            raise ValidationError(problems)
        return out


def _dev_models() -> tuple[str, ...]:
    """The models of the dev routing table (wan-2.6, kling-2.1, sora-2): the SDK's default."""
    from floodgate.provider_config import dev_setup
    from floodgate.routing import known_models

    # The URL is never contacted: the dev table needs one to build, the SDK only reads its routes.
    return known_models(dev_setup("http://simulator.invalid").routing, datetime.now(UTC))


def _key_problems(key: object) -> list[Problem]:
    if key is None:
        return []
    if not isinstance(key, str) or not key:
        return [Problem("idempotency_key", "must be a non-empty string")]
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        return [Problem("idempotency_key", f"must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters")]
    if not key.isascii() or not key.isprintable():  # the HTTP API's Idempotency-Key rule
        return [Problem("idempotency_key", "must be printable ASCII")]
    return []


def time_ms() -> int:
    return time.time_ns() // 1_000_000


def job_spec(model: str, prompt: str, user_id: str, image_url: str | None, params: Mapping[str, str] | None,
             webhook_url: str | None, metadata: Mapping[str, str] | None, idempotency_key: str | None,
             push: PushTarget | None) -> JobSpec:
    return JobSpec(model, prompt, user_id, image_url, params, webhook_url, metadata, idempotency_key, push)

