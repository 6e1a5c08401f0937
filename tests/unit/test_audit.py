"""The timeout audit's rules: a good chain passes every link; each misconfiguration fails (or
warns) at its own link with a fix."""
from __future__ import annotations

import dataclasses

import pytest

from floodgate.audit import Chain, ProviderLink, Verdict, audit, failed, render

GOOD_PROVIDER = ProviderLink(name="kling", kind="simulator", http_timeout=30.0, sync_wait=0.0, slowest_job=180.0,
                             webhook_retry_window=10.0, resigns_retries=True)
GOOD = Chain(lb_idle=60.0, sse_keepalive=15.0, ws_ping=15.0, providers=(GOOD_PROVIDER,), job_timeout=900.0,
             poll_after=30.0, webhooks_enabled=True, replay_tolerance=300.0, session_timeout=10.0,
             heartbeat_interval=10 / 3, broker_min_session=6.0, max_poll_interval=1000.0, guard_attempts=4,
             guard_backoff_total=4.2, outgoing_timeout=10.0, outgoing_drain=10.0)


def verdicts(chain: Chain) -> dict[str, Verdict]:
    return {f.link: f.verdict for f in audit(chain)}


def test_a_good_chain_passes_every_link() -> None:
    findings = audit(GOOD)
    assert len(findings) == 10
    assert {f.verdict for f in findings} == {Verdict.PASS}
    assert not failed(findings)
    assert render(findings).endswith("10 pass, 0 warn, 0 fail")


@pytest.mark.parametrize(("lb_idle", "verdict"), [(10.0, Verdict.FAIL), (25.0, Verdict.WARN), (30.0, Verdict.PASS)])
def test_the_load_balancer_idle_timeout_against_keepalives(lb_idle: float, verdict: Verdict) -> None:
    found = verdicts(dataclasses.replace(GOOD, lb_idle=lb_idle))
    assert found["load balancer vs SSE keep-alive"] is verdict
    assert found["load balancer vs WebSocket ping"] is verdict
    # A receiver's load balancer as short as ours cuts a 10 s delivery too.
    assert found["outgoing webhooks vs receivers"] is (Verdict.FAIL if lb_idle <= 10 else Verdict.PASS)


@pytest.mark.parametrize(("change", "link", "verdict"), [
    ({"job_timeout": 120.0}, "kling: job timeout vs slowest render", Verdict.FAIL),
    ({"job_timeout": 200.0}, "kling: job timeout vs slowest render", Verdict.WARN),
    ({"poll_after": 900.0}, "status polling vs job timeout", Verdict.FAIL),
    ({"session_timeout": 3.0, "heartbeat_interval": 1.0}, "Kafka session vs heartbeats and broker", Verdict.FAIL),
    ({"heartbeat_interval": 5.0}, "Kafka session vs heartbeats and broker", Verdict.WARN),
    ({"session_timeout": 120.0, "heartbeat_interval": 40.0}, "Kafka session vs heartbeats and broker", Verdict.WARN),
    ({"max_poll_interval": 100.0}, "Kafka poll interval vs longest handler", Verdict.FAIL),
    ({"outgoing_timeout": 60.0, "outgoing_drain": 60.0}, "outgoing webhooks vs receivers", Verdict.FAIL),
    ({"outgoing_timeout": 2.0}, "outgoing webhooks vs receivers", Verdict.WARN),
    ({"outgoing_timeout": 20.0}, "outgoing webhooks vs receivers", Verdict.WARN),
])
def test_each_misconfigured_link_is_caught(change: dict[str, object], link: str, verdict: Verdict) -> None:
    found = verdicts(dataclasses.replace(GOOD, **change))  # type: ignore[arg-type]
    assert found[link] is verdict
    assert [k for k, v in found.items() if v is not Verdict.PASS] == [link]


@pytest.mark.parametrize(("provider", "link", "verdict"), [
    ({"kind": "replicate", "sync_wait": 60.0}, "kling: HTTP timeout vs held calls", Verdict.FAIL),
    ({"kind": "replicate", "sync_wait": 60.0, "http_timeout": 65.0}, "kling: HTTP timeout vs held calls",
     Verdict.WARN),
    ({"kind": "mystery", "sync_wait": None}, "kling: HTTP timeout vs held calls", Verdict.WARN),
    ({"slowest_job": None}, "kling: job timeout vs slowest render", Verdict.WARN),
    ({"resigns_retries": None, "webhook_retry_window": 7200.0}, "kling: webhook retries vs bridge replay window",
     Verdict.WARN),
    ({"resigns_retries": None, "webhook_retry_window": None}, "kling: webhook retries vs bridge replay window",
     Verdict.WARN),
    # Followed every 5 s (webhooks only at the end): 100 jobs need 20 calls/s.
    ({"callbacks": "end", "concurrency_limit": 100, "status_rate": 10.0}, "kling: status calls vs read budget",
     Verdict.WARN),
])
def test_provider_links(provider: dict[str, object], link: str, verdict: Verdict) -> None:
    chain = dataclasses.replace(GOOD, providers=(dataclasses.replace(GOOD_PROVIDER, **provider),))  # type: ignore[arg-type]
    found = verdicts(chain)
    assert found[link] is verdict
    assert [k for k, v in found.items() if v is not Verdict.PASS] == [link]


def test_every_fail_and_warn_says_how_to_fix_it() -> None:
    bad = dataclasses.replace(GOOD, lb_idle=10.0, job_timeout=100.0, max_poll_interval=50.0)
    findings = audit(bad)
    assert failed(findings)
    for f in findings:
        if f.verdict is not Verdict.PASS:
            assert f.fix, f.link
    text = render(findings)
    assert "FAIL  load balancer vs SSE keep-alive" in text and "fix: send keep-alives at most every 5s" in text


@pytest.mark.parametrize(("provider", "chain", "verdict", "says"), [
    ({"callbacks": "end", "concurrency_limit": 100, "status_rate": 20.0}, {}, Verdict.PASS, "up to 20 calls/s"),
    ({"callbacks": "end", "concurrency_limit": 100, "status_rate": 10.0}, {}, Verdict.WARN, "asked every 10s"),
    ({"callbacks": "none", "concurrency_limit": 100, "status_rate": None}, {}, Verdict.PASS, "no read budget set"),
    ({"concurrency_limit": 5000, "status_rate": 50.0}, {}, Verdict.PASS, "only a quiet job is asked"),
    # No webhooks reach us: every job is asked each late-poll round (30 s / 3).
    ({"concurrency_limit": 5000, "status_rate": 50.0}, {"webhooks_enabled": False}, Verdict.WARN, "every 100s"),
    ({"callbacks": "end", "concurrency_limit": 100, "status_rate": 10.0}, {"provider_status_poll": 0.0},
     Verdict.PASS, "only a quiet job"),
])
def test_the_read_budget_against_the_jobs_it_asks_about(provider: dict[str, object], chain: dict[str, object],
                                                        verdict: Verdict, says: str) -> None:
    """A budget too small for the jobs in flight asks about each less often than the poll says."""
    findings = audit(dataclasses.replace(GOOD, providers=(dataclasses.replace(GOOD_PROVIDER, **provider),),  # type: ignore[arg-type]
                                         **chain))  # type: ignore[arg-type]
    found = next(f for f in findings if f.link == "kling: status calls vs read budget")
    assert found.verdict is verdict and says in found.detail, found
    assert bool(found.fix) is (verdict is not Verdict.PASS)
