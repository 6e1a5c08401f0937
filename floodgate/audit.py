"""The timeout audit behind ``floodgate audit``: pure rules over one ``Chain`` of timeouts.

A request crosses a chain of timers, and a timer shorter than the wait it guards fails quietly:
a load balancer cuts an SSE stream that sent nothing for longer than its idle timeout; an HTTP
client gives up on a provider that holds the call open by design (``Prefer: wait``) and submits
again; a job is failed while its render is still running; a provider's retried webhook arrives
with a timestamp the bridge no longer accepts; a worker whose handler outlasts Kafka's poll
interval is thrown out of its group; a provider's read budget too small for the jobs it holds
asks about each of them less often than the poll says. Each rule compares two links and says
pass, warn or fail, with the fix. The CLI (``floodgate/cli.py``) gathers the values from the
settings, the routing file and the code's own defaults; nothing here reads them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from floodgate.following import followed_every


class Verdict(Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    link: str
    verdict: Verdict
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class KindFacts:
    """What a provider kind does that the audit needs (None: not known)."""

    sync_wait: float | None  # seconds the provider may hold a call open by design
    webhook_retry_window: float | None  # seconds over which it retries a failed webhook
    resigns_retries: bool | None  # whether each retry carries a fresh signed timestamp


# From each provider's own documentation (Replicate's `Prefer: wait` holds a call up to 60 s and
# retries the final webhook for about a minute; RunPod's /runsync waits 90 s by default and
# retries a callback twice 10 s apart, unsigned; fal retries 10 times over 2 hours; OpenAI's
# Standard Webhooks retries for up to 72 h, each attempt signed with its own timestamp).
KNOWN_KINDS: dict[str, KindFacts] = {
    "replicate": KindFacts(60.0, 60.0, True),
    "runpod": KindFacts(90.0, 20.0, None),
    "fal": KindFacts(0.0, 7200.0, None),
    "openai": KindFacts(0.0, 72 * 3600.0, True),
}


@dataclass(frozen=True)
class ProviderLink:
    name: str
    kind: str
    http_timeout: float  # the connector's whole-call timeout
    sync_wait: float | None
    slowest_job: float | None  # slowest render plus the provider's queue delay and cold start
    webhook_retry_window: float | None
    resigns_retries: bool | None
    concurrency_limit: int = 1
    callbacks: str = "all"  # what its webhooks tell (the connector's ``callbacks``)
    status_rate: float | None = None  # status calls a second at most (None: no budget)


@dataclass(frozen=True)
class Chain:
    lb_idle: float
    sse_keepalive: float
    ws_ping: float
    providers: tuple[ProviderLink, ...]
    job_timeout: float
    poll_after: float
    webhooks_enabled: bool  # providers call the bridge (FLOODGATE_WEBHOOK_BASE_URL set)
    replay_tolerance: float  # the bridge's accepted clock difference on a webhook timestamp
    session_timeout: float
    heartbeat_interval: float
    broker_min_session: float  # group.min.session.timeout on the broker (6 s on a stock Kafka)
    max_poll_interval: float
    guard_attempts: int
    guard_backoff_total: float
    outgoing_timeout: float
    outgoing_drain: float  # how long a stopping API lets outgoing deliveries finish
    provider_status_poll: float = 5.0  # FLOODGATE_PROVIDER_STATUS_POLL


def audit(chain: Chain) -> list[Finding]:
    """Every rule's finding, in the order a request meets the links."""
    out = [keepalive("load balancer vs SSE keep-alive", chain.sse_keepalive, chain.lb_idle),
           keepalive("load balancer vs WebSocket ping", chain.ws_ping, chain.lb_idle)]
    for p in chain.providers:
        out.append(provider_http(p))
        out.append(job_timeout(p, chain.job_timeout))
    out.append(poll_before_timeout(chain.poll_after, chain.job_timeout))
    for p in chain.providers:
        out.append(webhook_replay(p, chain))
    for p in chain.providers:
        out.append(status_budget(p, chain))
    out.append(kafka_session(chain))
    out.append(kafka_poll(chain))
    out.append(outgoing_webhooks(chain))
    return out


def keepalive(link: str, interval: float, lb_idle: float) -> Finding:
    detail = f"keep-alive every {interval:.4g}s, load balancer idle timeout {lb_idle:.4g}s"
    fix = f"send keep-alives at most every {lb_idle / 2:.4g}s, or raise the load balancer's idle timeout"
    if interval >= lb_idle:
        return Finding(link, Verdict.FAIL, detail + ": idle streams are cut", fix)
    if interval > lb_idle / 2:
        return Finding(link, Verdict.WARN, detail + ": one late keep-alive and the stream is cut", fix)
    return Finding(link, Verdict.PASS, detail)


def provider_http(p: ProviderLink) -> Finding:
    link = f"{p.name}: HTTP timeout vs held calls"
    if p.sync_wait is None:
        return Finding(link, Verdict.WARN, f"timeout {p.http_timeout:.4g}s; how long a {p.kind!r} provider may hold "
                       "a call is not known", "check the provider's documentation for Prefer: wait or sync modes")
    detail = f"timeout {p.http_timeout:.4g}s, provider may hold a call {p.sync_wait:.4g}s"
    fix = f"set providers.{p.name}.connection.timeout above {p.sync_wait + 10:.4g}s"
    if p.http_timeout <= p.sync_wait:
        return Finding(link, Verdict.FAIL, detail + ": held calls time out and are submitted again", fix)
    if p.http_timeout < p.sync_wait + 10:
        return Finding(link, Verdict.WARN, detail + ": less than 10 s of margin", fix)
    return Finding(link, Verdict.PASS, detail)


def job_timeout(p: ProviderLink, timeout: float) -> Finding:
    link = f"{p.name}: job timeout vs slowest render"
    if p.slowest_job is None:
        return Finding(link, Verdict.WARN, f"FLOODGATE_JOB_TIMEOUT={timeout:.4g}s; no render time configured",
                       f"add render_time to the routes on {p.name} (or pass --simulator-config)")
    detail = f"FLOODGATE_JOB_TIMEOUT={timeout:.4g}s, slowest job {p.slowest_job:.4g}s"
    fix = f"set FLOODGATE_JOB_TIMEOUT to at least {1.5 * p.slowest_job:.4g}"
    if timeout <= p.slowest_job:
        return Finding(link, Verdict.FAIL, detail + ": slow renders are failed while still running", fix)
    if timeout < 1.5 * p.slowest_job:
        return Finding(link, Verdict.WARN, detail + ": less than 50% headroom", fix)
    return Finding(link, Verdict.PASS, detail)


def poll_before_timeout(poll_after: float, timeout: float) -> Finding:
    link = "status polling vs job timeout"
    detail = f"FLOODGATE_POLL_AFTER={poll_after:.4g}s, FLOODGATE_JOB_TIMEOUT={timeout:.4g}s"
    if poll_after >= timeout:
        return Finding(link, Verdict.FAIL, detail + ": a job whose webhook was lost is failed before it is polled",
                       f"set FLOODGATE_POLL_AFTER below {timeout / 2:.4g}")
    return Finding(link, Verdict.PASS, detail)


def webhook_replay(p: ProviderLink, chain: Chain) -> Finding:
    link = f"{p.name}: webhook retries vs bridge replay window"
    if not chain.webhooks_enabled:
        if chain.provider_status_poll > 0:
            return Finding(link, Verdict.PASS, "webhooks off (no FLOODGATE_WEBHOOK_BASE_URL): every job is followed "
                           f"with a status call every {chain.provider_status_poll:.4g}s")
        return Finding(link, Verdict.PASS, f"webhooks off (no FLOODGATE_WEBHOOK_BASE_URL): jobs are polled after "
                       f"{chain.poll_after:.4g}s")
    if p.resigns_retries:
        window = "" if p.webhook_retry_window is None else f" over {p.webhook_retry_window:.4g}s"
        return Finding(link, Verdict.PASS, f"each retry{window} is signed afresh; the bridge accepts "
                       f"±{chain.replay_tolerance:.4g}s")
    if p.webhook_retry_window is None:
        return Finding(link, Verdict.WARN, f"how {p.kind!r} retries webhooks is not known; the bridge accepts "
                       f"±{chain.replay_tolerance:.4g}s", "a refused retry is covered by polling; check the docs")
    detail = (f"retries for {p.webhook_retry_window:.4g}s with the first timestamp (as far as known), "
              f"the bridge accepts ±{chain.replay_tolerance:.4g}s")
    if p.webhook_retry_window > chain.replay_tolerance:
        return Finding(link, Verdict.WARN, detail + ": late retries are refused",
                       f"nothing lost (jobs are polled after {chain.poll_after:.4g}s), "
                       "but keep FLOODGATE_POLL_AFTER low")
    return Finding(link, Verdict.PASS, detail)


def status_budget(p: ProviderLink, chain: Chain) -> Finding:
    link = f"{p.name}: status calls vs read budget"
    every = followed_every(p.callbacks, chain.provider_status_poll, chain.webhooks_enabled, chain.poll_after)
    if every is None:
        return Finding(link, Verdict.PASS, "its webhooks tell every change: only a quiet job is asked, "
                       "less and less often")
    needed = p.concurrency_limit / every
    detail = f"{p.concurrency_limit} jobs in flight, each asked every {every:.4g}s: up to {needed:.4g} calls/s"
    if p.status_rate is None:
        return Finding(link, Verdict.PASS, detail + ", no read budget set")
    if needed <= p.status_rate:
        return Finding(link, Verdict.PASS, detail + f", within the budget of {p.status_rate:.4g}/s")
    return Finding(link, Verdict.WARN, detail + f", over the budget of {p.status_rate:.4g}/s: each job is asked "
                   f"every {p.concurrency_limit / p.status_rate:.4g}s, and its news waits that long",
                   "raise status_rate_per_second if the provider allows more reads")


def kafka_session(chain: Chain) -> Finding:
    link = "Kafka session vs heartbeats and broker"
    detail = (f"session {chain.session_timeout:.4g}s, heartbeat {chain.heartbeat_interval:.4g}s, broker minimum "
              f"{chain.broker_min_session:.4g}s")
    if chain.session_timeout < chain.broker_min_session:
        return Finding(link, Verdict.FAIL, detail + ": the broker refuses the worker's join",
                       f"set FLOODGATE_SESSION_TIMEOUT to at least {chain.broker_min_session:.4g}")
    if chain.heartbeat_interval * 3 > chain.session_timeout:
        return Finding(link, Verdict.WARN, detail + ": fewer than 3 heartbeats per session",
                       "lower the heartbeat interval to a third of the session")
    if chain.session_timeout > 60:
        return Finding(link, Verdict.WARN, detail + ": a dead worker's jobs wait that long to move",
                       "set FLOODGATE_SESSION_TIMEOUT to 10-30 s")
    return Finding(link, Verdict.PASS, detail)


def kafka_poll(chain: Chain) -> Finding:
    link = "Kafka poll interval vs longest handler"
    slowest_call = max((p.http_timeout for p in chain.providers), default=0.0)
    handler = chain.guard_attempts * slowest_call + chain.guard_backoff_total
    detail = (f"max poll interval {chain.max_poll_interval:.4g}s, longest handler {handler:.4g}s "
              f"({chain.guard_attempts} attempts of a {slowest_call:.4g}s provider call "
              f"+ {chain.guard_backoff_total:.4g}s backoff)")
    room = (chain.max_poll_interval / 2 - chain.guard_backoff_total) / max(1, chain.guard_attempts)
    fix = f"lower the provider timeouts below {room:.4g}s"
    if handler >= chain.max_poll_interval:
        return Finding(link, Verdict.FAIL, detail + ": the worker is thrown out of its group mid-record", fix)
    if handler > chain.max_poll_interval / 2:
        return Finding(link, Verdict.WARN, detail + ": less than 2x margin", fix)
    return Finding(link, Verdict.PASS, detail)


def outgoing_webhooks(chain: Chain) -> Finding:
    link = "outgoing webhooks vs receivers"
    detail = (f"timeout {chain.outgoing_timeout:.4g}s per attempt, shutdown drain {chain.outgoing_drain:.4g}s, "
              f"receivers' load balancers assumed {chain.lb_idle:.4g}s idle")
    if chain.outgoing_timeout >= chain.lb_idle:
        return Finding(link, Verdict.FAIL, detail + ": a receiver's load balancer answers 504 first, every slow "
                       "delivery is retried",
                       f"keep the timeout below {chain.lb_idle:.4g}s (Standard Webhooks: 15-30 s)")
    if chain.outgoing_timeout < 5:
        return Finding(link, Verdict.WARN, detail + ": a receiver waking from a cold start is retried needlessly",
                       "raise the timeout to 5-30 s")
    if chain.outgoing_timeout > chain.outgoing_drain:
        return Finding(link, Verdict.WARN, detail + ": a stopping API cuts attempts (they are retried after restart)",
                       "keep the timeout within the drain")
    return Finding(link, Verdict.PASS, detail)


def failed(findings: Sequence[Finding]) -> bool:
    return any(f.verdict is Verdict.FAIL for f in findings)


def render(findings: Sequence[Finding]) -> str:
    """One line per link (``PASS``/``WARN``/``FAIL``, link, detail), the fix indented below."""
    width = max((len(f.link) for f in findings), default=0)
    lines = []
    for f in findings:
        lines.append(f"{f.verdict.value.upper():4}  {f.link:<{width}}  {f.detail}")
        if f.fix and f.verdict is not Verdict.PASS:
            lines.append(f"{'':4}  {'':<{width}}  fix: {f.fix}")
    counts = {v: sum(f.verdict is v for f in findings) for v in Verdict}
    lines.append(f"{counts[Verdict.PASS]} pass, {counts[Verdict.WARN]} warn, {counts[Verdict.FAIL]} fail")
    return "\n".join(lines)
