"""The peer comparison's pure parts (``floodgate.bench.peer`` runs it): the ideal drain, each
system's figures from its run, and the side-by-side section of ``report.md``.

Drain, for every system alike: from the first arrival (the load's start) to the moment the system
knew the last job was done (Floodgate: the job's record on ``results``; Celery: the task saw the
render end; naive: the 200 reached the client).

Ideal drain: the first submission's time (first arrival → the simulator created the first job)
plus the provider work done (the simulator's sum of the render times it drew, plus its queue
delay per job) divided by the limit. No scheduler that keeps at most ``limit`` jobs in flight can
finish sooner once it has made its first submission: it is the work spread over every slot with no
slot ever idle. It is ``jobs × mean render / limit`` with the mean of the renders actually drawn
rather than the configured one: the simulator is seeded alike for every system, but its draws
interleave with each system's own timing, so the sums differ by a percent or so and each system is
judged against the work it was given.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

SYSTEMS = ("floodgate", "celery", "naive")
LABELS = {"floodgate": "Floodgate", "celery": "Celery + Redis", "naive": "naive + nginx"}


def ideal_drain_s(first_submission_s: float, work_s: float, limit: int) -> float:
    """The shortest possible drain: first submission, then ``work_s`` spread over ``limit`` slots."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if work_s < 0:
        raise ValueError("work must be non-negative")
    return first_submission_s + work_s / limit


def drain(start_wall: float, done_walls: Sequence[float], sim: Mapping[str, Any], limit: int,
          queue_delay_s: float = 0.0) -> dict[str, float]:
    """Drain vs ideal from the load's start, the moments each job was known done (wall clock) and
    the simulator's ``/stats`` for the provider (``render_seconds``, ``jobs_created``,
    ``first_created_at``); ``queue_delay_s`` is the simulator's queue delay in wall seconds."""
    jobs = int(sim.get("jobs_created") or 0)
    work = float(sim.get("render_seconds") or 0.0) + jobs * queue_delay_s
    first = float(sim["first_created_at"]) - start_wall if sim.get("first_created_at") else math.nan
    ideal = ideal_drain_s(first, work, limit)
    took = max(done_walls) - start_wall if done_walls else math.nan
    return {"drain_s": took, "ideal_s": ideal, "first_submission_s": first, "work_s": work,
            "mean_render_s": work / jobs if jobs else math.nan,
            "share_of_ideal": ideal / took if took and took > 0 else math.nan}


def provider(sim: Mapping[str, Any], offered: int) -> dict[str, Any]:
    """The simulator's view of one system's run: limit, max concurrency, 429s (total, per job offered)."""
    limit, peak = int(sim.get("concurrency_limit") or 0), int(sim.get("max_concurrency") or 0)
    n429 = int(sim.get("rejected_429") or 0)
    return {"concurrency_limit": limit, "max_concurrency": peak, "over_limit": max(0, peak - limit),
            "rejected_429": n429, "rejected_429_per_job": n429 / offered if offered else math.nan,
            "jobs_created": int(sim.get("jobs_created") or 0)}


def _pct(x: Any) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def _s(x: Any) -> str:
    return f"{x:,.2f} s" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def _ms(d: Mapping[str, Any] | None) -> str:
    if not d or not d.get("count"):
        return "–"
    return f"p50 {d['p50']:,.1f} / p99 {d['p99']:,.1f} ms"


def unavailable(system: Mapping[str, Any] | None) -> str | None:
    """Why a system has no figures (not run, skipped, failed), or None."""
    if not system:
        return "not run"
    return system.get("error") or system.get("skipped")


def figure(system: Mapping[str, Any] | None) -> str:
    """One system's headline, for the targets table: share of ideal and 429s."""
    if (why := unavailable(system)):
        return f"– ({why})"
    assert system is not None
    p = system["provider"]
    out = (f"{_pct(system['drain']['share_of_ideal'])} of ideal, {p['rejected_429']:,} × 429 "
           f"({p['rejected_429_per_job']:.2f} per job)")
    if system["delivered"] < system["offered"]:
        out += f", {system['delivered']:,} of {system['offered']:,} videos delivered"
    return out


def rows(systems: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """The side-by-side table's rows, one column per system in ``SYSTEMS`` order."""
    names = [n for n in SYSTEMS if n in systems]

    def each(fn: Any) -> list[str]:
        return ["–" if unavailable(systems[n]) else fn(systems[n]) for n in names]

    def ideal(x: Mapping[str, Any]) -> str:
        d = x["drain"]
        return (f"{_s(d['ideal_s'])} (first submission {_s(d['first_submission_s'])} + "
                f"{d['work_s']:,.1f} s of renders ÷ {x['provider']['concurrency_limit']})")

    def limit(x: Mapping[str, Any]) -> str:
        p = x["provider"]
        return f"{p['max_concurrency']} / {p['concurrency_limit']}" + (
            f" ({p['over_limit']} over)" if p["over_limit"] else ", never over (the provider refuses with 429)")

    return [
        ["answer to the client", *each(lambda x: x["answer"])],
        ["accepted / videos delivered", *each(lambda x: f"{x['accepted']:,} / {x['delivered']:,} of {x['offered']:,}")],
        ["drain (first arrival → last job known done)", *each(lambda x: _s(x["drain"]["drain_s"]))],
        ["ideal drain", *each(ideal)],
        ["**drain vs ideal**", *each(lambda x: f"**{_pct(x['drain']['share_of_ideal'])}**")],
        ["provider 429s (per job offered)", *each(lambda x: f"{x['provider']['rejected_429']:,} "
                                                             f"({x['provider']['rejected_429_per_job']:.2f})")],
        ["max in flight at the provider / limit", *each(limit)],
        ["accept latency (wall)", *each(lambda x: _ms(x["accept_ms"]))],
        ["unfinished at the drain timeout", *each(lambda x: f"{x['unfinished']:,}")],
    ]


def section(p: Mapping[str, Any]) -> list[str]:
    """``report.md``'s section: the three systems side by side under the same drain."""
    from floodgate.bench.markdown import table  # markdown imports this module's users: import late

    cfg, systems = p["config"], p["systems"]
    names = [n for n in SYSTEMS if n in systems]
    intro = (f"The same drain for each system, one after the other on this machine: {cfg['jobs']:,} jobs at "
             f"{cfg['rate']:g} req/s open loop (the bench's load driver), one model on one provider with a "
             f"limit of {cfg['limit']}, renders uniform {cfg['render'][0]:g}–{cfg['render'][1]:g} s (the "
             f"simulator's config, fresh and seeded alike for each). Celery: Redis broker (Debian's "
             f"redis-server), threads pool of {cfg['celery_concurrency']}, the task submits, retries a 429 "
             f"after its Retry-After and polls the render every {cfg['poll']:g} s; naive: nginx in front of "
             f"the synchronous endpoint (polling alike), the provider's 429 passed to the client.")
    definition = ("Drain: first arrival → the moment the system knew the last job was done (Floodgate: its "
                  "`results` record; Celery: the task saw the render end; naive: the 200 reached the client). "
                  "Ideal: the first submission (first arrival → the provider created the first job) + the "
                  "renders the provider actually ran ÷ the limit — every slot busy from the first submission "
                  "on. The naive endpoint renders only the jobs that found a free slot; its ideal is for those.")
    missing = [f"{LABELS[n]}: {unavailable(systems[n])}" for n in names if unavailable(systems[n])]
    return ["## Drain vs ideal: Floodgate, Celery + Redis, naive", "", intro, "",
            table(rows(systems), ["", *(LABELS[n] for n in names)]), "", definition, "",
            *([f"Not measured — {'; '.join(missing)}.", ""] if missing else [])]
