"""Floodgate's performance targets (one function each below, the target in its name: accept latency,
SDK rate, burst, pipeline rate, notification latency, memory with 1,000,000 jobs queued; and issue
9's: records and hops per job, 2 workers over 1, slot handover, accept latency with the API on its
own core, API CPU per request, accept latency under the spike in real time; and the waiting
user's: the ETA's error, per-tenant waits, the fair-share check, the drain with spillover), judged
from a run's results (pure): met / not met, with the number.

A scenario that failed or was scaled down (the smoke run) is never reported as met at a scale
it did not reach; the row says what was measured instead.
"""
from __future__ import annotations

import math
from typing import Any

from floodgate.bench import peerreport

MET, NOT_MET, NOT_MEASURED, REPORTED = "met", "not met", "not measured", "reported"


def g(data: Any, *keys: str | int, default: Any = None) -> Any:
    """``data[k1][k2]…`` or ``default`` when any step is missing."""
    for key in keys:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return default
    return default if data is None else data


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _row(target: str, status: str, measured: str, value: float | None = None, note: str = "") -> dict[str, Any]:
    return {"target": target, "status": status, "measured": measured, "value": value, "note": note}


def _failed(results: dict[str, Any], name: str) -> str | None:
    section = results.get(name)
    if section is None:
        return "not run"
    if not isinstance(section, dict):
        return None
    return section.get("error") or section.get("skipped")


def accept_p99(results: dict[str, Any], target_rate: float = 1000.0, slo: float = 25.0) -> dict[str, Any]:
    name = f"HTTP accept p99 ≤ {slo:g} ms at {target_rate:,.0f} req/s offered"
    if (why := _failed(results, "accept")):
        return _row(name, NOT_MEASURED, why)
    fixed = results["accept"]["fixed"]
    rate, p99 = _num(fixed["offered_rate"]), _num(g(fixed, "latency_ms", "p99"))
    errors = sum(fixed["errors"].values())
    measured = (f"p99 {p99:.1f} ms (p50 {_num(g(fixed, 'latency_ms', 'p50')):.1f}, "
                f"p99.9 {_num(g(fixed, 'latency_ms', 'p999')):.1f}) at {rate:,.0f} req/s, {errors} errors")
    idle = g(results, "accept", "fixed_no_worker", "latency_ms", "p99")
    if idle is not None:
        measured += f"; with the worker stopped p99 {_num(idle):.1f} ms"
    if (alone := g(results, "accept", "ingress", "fixed", "latency_ms", "p99")) is not None:
        measured += f"; sent to an ingress-only API process beside the stack's, p99 {_num(alone):.1f} ms"
    if rate < target_rate:
        return _row(name, NOT_MEASURED, measured, p99, f"scaled down: offered {rate:,.0f} req/s")
    return _row(name, MET if p99 <= slo and not errors else NOT_MET, measured, p99)


def sdk_rate(results: dict[str, Any], target: float = 20_000) -> dict[str, Any]:
    name = f"SDK path ≥ {target:,.0f} requests/s"
    if (why := _failed(results, "accept")):
        return _row(name, NOT_MEASURED, why)
    sdk = results["accept"]["sdk"]
    rate = _num(sdk["per_s"])
    raw = _num(g(results, "rawkafka", "produce", "per_s"))
    measured = f"{rate:,.0f} requests/s over {sdk['records']:,} records ({sdk['failures']} failed)"
    if not math.isnan(raw):
        measured += f"; {rate / raw:.2f}× raw confluent-kafka produce ({raw:,.0f}/s)"
    return _row(name, MET if rate >= target and not sdk["failures"] else NOT_MET, measured, rate)


def burst(results: dict[str, Any], target: int = 100_000) -> dict[str, Any]:
    name = f"{target:,}-request burst accepted with zero errors and zero loss"
    if (why := _failed(results, "accept")):
        return _row(name, NOT_MEASURED, why)
    b = results["accept"]["burst"]
    errors = sum(b["errors"].values())
    measured = (f"{b['accepted']:,}/{b['offered']:,} accepted over HTTP in {_num(b['seconds']):.1f} s "
                f"({_num(b['accepted_per_s']):,.0f}/s, {b['concurrency']} outstanding), {errors} errors, "
                f"{b['lost']} missing from Kafka; SDK {results['accept']['sdk']['records']:,} with "
                f"{b.get('sdk_lost', 0)} missing")
    ok = not errors and not b["lost"] and not b.get("sdk_lost")
    if b["offered"] < target:
        return _row(name, NOT_MEASURED, measured, b["offered"], f"scaled down: {b['offered']:,} requests")
    return _row(name, MET if ok else NOT_MET, measured, b["accepted"])


def pipeline(results: dict[str, Any], target: float = 300.0) -> dict[str, Any]:
    name = (f"≥ {target:,.0f} jobs/s end to end with an instant provider, 1 worker (1,000 kept on record); "
            f"ratio to raw Kafka")
    if (why := _failed(results, "pipeline")):
        return _row(name, NOT_MEASURED, why)
    p = results["pipeline"]
    rate = _num(p["jobs_per_s"])
    produce = _num(g(results, "rawkafka", "produce", "per_s"))
    consume = _num(g(results, "rawkafka", "consume", "per_s"))
    stalled = f", STALLED after {p['completed']:,} results" if p.get("stalled") else ""
    measured = (f"{rate:,.0f} jobs/s ({_num(p['steady_jobs_per_s']):,.0f}/s steady) over {p['jobs']:,} jobs"
                f"{stalled}, {p['results_missing']} without a result; "
                f"{_num(p['events_per_s_per_worker']):,.0f} records consumed/s per worker, "
                f"{_num(p['records_per_job']):.1f} records written per job")
    if not math.isnan(produce):
        measured += (f"; jobs/s = {rate / produce:.4f}× raw produce ({produce:,.0f}/s), "
                     f"records written/s = {_num(p['records_written_per_s']) / produce:.3f}× raw produce, "
                     f"records consumed/s = "
                     f"{_num(p['events_per_s_per_worker']) * p['workers'] / consume:.3f}× raw consume")
    measured += _main_thread(p)
    if (own := g(p, "pinned", "jobs_per_s")) is not None:
        # Beside the row, not its verdict: the row below judges the pinned run.
        measured += f"; with the worker alone on a core: {_num(own):,.0f} jobs/s"
    ok = rate >= target and not p["results_missing"] and not p.get("stalled")
    return _row(name, MET if ok else NOT_MET, measured, rate)


def _main_thread(run: dict[str, Any], worker: str = "worker-0") -> str:
    """How the worker's main thread spent a pipeline run: on a CPU, or runnable and waiting."""
    spent = g(run, "main_thread", worker)
    if spent is None:
        return ""
    return (f"; the worker's main thread ran {_num(spent['running']):.0%} of the run and waited for a CPU "
            f"{_num(spent['waiting']):.0%}")


def pipeline_pinned(results: dict[str, Any], target: float = 300.0) -> dict[str, Any]:
    name = (f"≥ {target:,.0f} jobs/s end to end with an instant provider, 1 worker alone on a core (the API, "
            f"broker, simulator and load generator on the other)")
    if (why := _failed(results, "pipeline")) or (why := _failed(results["pipeline"], "pinned")):
        return _row(name, NOT_MEASURED, why)
    p = results["pipeline"]["pinned"]
    rate = _num(p["jobs_per_s"])
    stalled = f", STALLED after {p['completed']:,} results" if p.get("stalled") else ""
    used = p.get("cpu_cores") or {}
    others = sum(v for k, v in used.items() if not k.startswith("worker-"))
    measured = (f"{rate:,.0f} jobs/s ({_num(p['steady_jobs_per_s']):,.0f}/s steady) over {p['jobs']:,} jobs"
                f"{stalled}, {p['results_missing']} without a result; worker on CPU {p.get('worker_cpus')} "
                f"({_num(used.get('worker-0')):.2f} cores), the rest on {p.get('other_cpus')} "
                f"({others:.2f} cores){_main_thread(p)}; sharing both cores: "
                f"{_num(results['pipeline']['jobs_per_s']):,.0f} jobs/s")
    ok = rate >= target and not p["results_missing"] and not p.get("stalled")
    return _row(name, MET if ok else NOT_MET, measured, rate)


def notification(results: dict[str, Any], target_ms: float = 40.0) -> dict[str, Any]:
    name = f"Notification p99 ≤ {target_ms:g} ms at 50 jobs/s (webhook received → WebSocket message)"
    if (why := _failed(results, "notify")):
        return _row(name, NOT_MEASURED, why)
    n = results["notify"]
    lat = n["latency_ms"]
    p99 = _num(lat["p99"])
    measured = (f"p50 {_num(lat['p50']):.1f} ms, p99 {p99:.1f} ms over {lat['count']:,} webhook→message pairs "
                f"at {n['config']['rate']:g} jobs/s")
    if not lat["count"]:
        return _row(name, NOT_MEASURED, measured)
    return _row(name, MET if p99 <= target_ms else NOT_MET, measured, p99)


def notification_at_max(results: dict[str, Any], target_ms: float = 100.0) -> dict[str, Any]:
    name = (f"Notification p99 ≤ {target_ms:g} ms at 50 jobs/s while the pipeline runs at its max "
            "(instant-provider jobs fed beside them)")
    if (why := _failed(results, "notify")):
        return _row(name, NOT_MEASURED, why)
    at_max = results["notify"].get("at_max")
    if not at_max:
        return _row(name, NOT_MEASURED, "not run")
    if "error" in at_max:
        return _row(name, NOT_MEASURED, at_max["error"])
    lat, beside = at_max["latency_ms"], at_max["pipeline"]
    p99, idle = _num(lat["p99"]), _num(results["notify"]["latency_ms"]["p99"])
    measured = (f"p50 {_num(lat['p50']):.1f} ms, p99 {p99:.1f} ms over {lat['count']:,} webhook→message pairs "
                f"at {at_max['config']['rate']:g} jobs/s, with {_num(beside['results_per_s_during']):,.0f} results/s "
                f"meanwhile ({beside['jobs']:,} pipeline jobs; idle p99 {idle:.1f} ms)")
    if not lat["count"] or beside["stalled"]:
        return _row(name, NOT_MEASURED, measured + (" — the pipeline stalled" if beside["stalled"] else ""))
    return _row(name, MET if p99 <= target_ms else NOT_MET, measured, p99)


def memory(results: dict[str, Any], target_large: int = 1_000_000) -> dict[str, Any]:
    name = "Worker RSS flat within ±10% with 10k and 1M jobs queued (backlog in Kafka)"
    if (why := _failed(results, "memory")):
        return _row(name, NOT_MEASURED, why)
    m = results["memory"]
    small, large = m["config"]["small"], m["config"]["large"]
    measured = (f"RSS {m['rss_small'] / 2**20:,.0f} MiB at {small:,} queued → {m['rss_large'] / 2**20:,.0f} MiB at "
                f"{large:,} ({m['growth']:+.1%}, {m['bytes_per_queued_job']:,.0f} bytes per queued job); "
                f"{m['dispatch_lag_large']:,} jobs waiting on dispatch topics")
    stalls = [k for k in ("fill_small", "fill_large") if g(m, k, "stalled")]
    if stalls:
        fill = m[stalls[0]]
        measured = (f"the worker STOPPED consuming while {fill['jobs']:,} jobs were being queued: it recorded "
                    f"{fill.get('recorded', 0):,}, then nothing for a minute (lag left {fill.get('lag_at_end')}); RSS "
                    f"then {m['rss_small'] / 2**20:,.0f} MiB, so flatness could not be measured")
    status = MET if m["within_tolerance"] and not stalls else NOT_MET
    note = "" if large >= target_large else f"large backlog {large:,} (--memory-jobs; the target is 1,000,000)"
    if status == MET and large < target_large:
        status = NOT_MEASURED
    return _row(name, status, measured, m["growth"], note)


def naive(results: dict[str, Any]) -> dict[str, Any]:
    name = "Naive baseline vs Floodgate under the spike, side by side"
    if (why := _failed(results, "baseline")) or (why := _failed(results, "spike")):
        return _row(name, NOT_MEASURED, why)
    rates, spike = results["baseline"]["rates"], results["spike"]
    measured = (f"naive: {rates.get('200', 0):.1%} got a video, {rates.get('429', 0):.1%} 429, "
                f"{rates.get('504', 0):.1%} 504, {rates.get('connection_error', 0):.1%} closed without an answer, "
                f"{rates.get('client_timeout', 0):.1%} timed out; Floodgate: "
                f"{spike['accepted'] / max(1, spike['offered']):.1%} accepted, "
                f"{spike['completed'] / max(1, spike['offered']):.1%} completed")
    return _row(name, REPORTED, measured)


def drain(results: dict[str, Any], bar: float = 0.97, jobs: int = 2000) -> dict[str, Any]:
    name = f"drain time vs ideal ≥ {bar:.0%} with 0 × 429 ({jobs:,} jobs at 200 req/s, limit 10)"
    if (why := _failed(results, "peer")):
        return _row(name, NOT_MEASURED, why)
    systems = results["peer"]["systems"]
    fg = systems.get("floodgate")
    measured = (f"Floodgate {peerreport.figure(fg)}; Celery + Redis {peerreport.figure(systems.get('celery'))}; "
                f"naive {peerreport.figure(systems.get('naive'))}")
    if peerreport.unavailable(fg):
        return _row(name, NOT_MEASURED, measured)
    share, n429 = _num(fg["drain"]["share_of_ideal"]), fg["provider"]["rejected_429"]
    if fg["offered"] < jobs:
        return _row(name, NOT_MEASURED, measured, share, f"scaled down: {fg['offered']:,} jobs")
    return _row(name, MET if share >= bar and not n429 and not fg["unfinished"] else NOT_MET, measured, share)


def per_key(by_key: dict[str, float] | None) -> str:
    """``{"notifications": 3.73, …}`` → "notifications 3.73, …", the largest first ("–" for none)."""
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted((by_key or {}).items(), key=lambda kv: -kv[1])) or "–"


def records_per_job(results: dict[str, Any], target: float = 12.0, waiting: float = 13.0) -> dict[str, Any]:
    name = f"Kafka records written per job ≤ {target:g} (≤ {waiting:g} with a waiting order)"
    if (why := _failed(results, "pipeline")):
        return _row(name, NOT_MEASURED, why)
    p = results["pipeline"]
    blended = _num(p.get("records_per_job"))
    per = _num(p.get("records_per_job_not_waiting", blended))
    waited_orders = _num(p.get("orders_waited", 0.0))
    measured = (f"{per:.2f} per job whose order found a free slot, over {p['completed']:,} jobs with an instant "
                f"provider, every topic and changelog of the stack: {blended:.2f} per job in all, less the "
                f"{waited_orders:,.0f} waiting entries of the orders that waited for a slot "
                f"({per_key(p.get('records_per_job_by_topic'))})")
    if (why := _failed(results, "handover")):
        measured += f"; with a waiting order: not measured ({why})"
        return _row(name, NOT_MET if per > target else NOT_MEASURED, measured, per, "waiting order not measured")
    h = results["handover"]
    waited = _num(h.get("records_per_job"))
    measured += (f"; {waited:.2f} when every order waits for a slot (handover scenario, {h['completed']:,} jobs: "
                 f"{per_key(h.get('records_per_job_by_topic'))})")
    return _row(name, MET if per <= target and waited <= waiting else NOT_MET, measured, per)


def hops_per_job(results: dict[str, Any], target: float = 5.0) -> dict[str, Any]:
    name = f"Consumer hops in the worker per job ≤ {target:g} (floodgate_events_processed_total / jobs)"
    if (why := _failed(results, "pipeline")):
        return _row(name, NOT_MEASURED, why)
    p = results["pipeline"]
    hops = _num(p.get("hops_per_job"))
    if not hops > 0:
        return _row(name, NOT_MEASURED, "no floodgate_events_processed_total from the worker(s)")
    measured = (f"{hops:.2f} per job on the happy path over {p['completed']:,} jobs "
                f"({per_key(p.get('hops_per_job_by_agent'))})")
    if not _failed(results, "handover"):
        measured += f"; {_num(results['handover'].get('hops_per_job')):.2f} when every order waits for a slot"
    return _row(name, MET if hops <= target else NOT_MET, measured, hops)


def scaling(results: dict[str, Any], target: float = 1.6, min_jobs: int = 2000) -> dict[str, Any]:
    name = f"Jobs/s with 2 workers ≥ {target:g}× jobs/s with 1 (instant provider)"
    if (why := _failed(results, "pipeline")) or (why := _failed(results["pipeline"], "scaling")):
        return _row(name, NOT_MEASURED, why)
    p, sc = results["pipeline"], results["pipeline"]["scaling"]
    ratio = _num(sc.get("ratio"))
    stalled = ", STALLED" if sc.get("stalled") or p.get("stalled") else ""
    measured = (f"{ratio:.2f}× ({_num(sc['jobs_per_s']):,.0f} jobs/s with {sc['workers']} workers, "
                f"{_num(p['jobs_per_s']):,.0f} with {p['workers']}; steady {_num(sc.get('steady_ratio')):.2f}×) "
                f"over {sc['jobs']:,} jobs each{stalled}, {sc['results_missing']} without a result")
    waits = ", ".join(f"{name} {_num(spent['waiting']):.0%}" for name, spent in (sc.get("main_thread") or {}).items())
    if waits:
        # What holds a second worker back on a machine whose cores the first one already shares.
        one = g(p, "main_thread", "worker-0", "waiting")
        measured += (f"; the workers' main threads waited for a CPU {waits} of the run"
                     + (f" (the one worker's {_num(one):.0%})" if one is not None else ""))
    if sc["jobs"] < min_jobs:
        return _row(name, NOT_MEASURED, measured, ratio, f"scaled down: {sc['jobs']:,} jobs")
    ok = ratio >= target and not sc["results_missing"] and not stalled
    return _row(name, MET if ok else NOT_MET, measured, ratio)


def handover(results: dict[str, Any], target_ms: float = 30.0) -> dict[str, Any]:
    name = (f"Slot handover p99 ≤ {target_ms:g} ms (completion webhook reaches the bridge → next submission to "
            f"that provider, under a backlog)")
    if (why := _failed(results, "handover")):
        return _row(name, NOT_MEASURED, why)
    h = results["handover"]
    lat = h["handover_ms"]
    p99 = _num(lat.get("p99"))
    measured = (f"p50 {_num(lat.get('p50')):.1f} ms, p99 {p99:.1f} ms over {lat['count']:,} handovers "
                f"({h['completed']:,} jobs on a limit of {h['config']['limit']}; slots busy "
                f"{_num(h.get('utilisation')):.0%} of the time, {h['rejected_429']} × 429)")
    if not lat["count"]:
        return _row(name, NOT_MEASURED, measured)
    if h.get("timed_out"):
        return _row(name, NOT_MET, measured + f"; timed out with {h['completed']:,} of {h['config']['jobs']:,} results",
                    p99)
    return _row(name, MET if p99 <= target_ms else NOT_MET, measured, p99)


def accept_pinned(results: dict[str, Any], target_rate: float = 1000.0, slo: float = 50.0) -> dict[str, Any]:
    name = f"HTTP accept p99 ≤ {slo:g} ms at {target_rate:,.0f} req/s with the API on its own core (unpinned beside)"
    if (why := _failed(results, "accept")) or (why := _failed(results["accept"], "pinned")):
        return _row(name, NOT_MEASURED, why)
    a = results["accept"]
    pin, fixed = a["pinned"], a["fixed"]
    rate, p99 = _num(pin["offered_rate"]), _num(g(pin, "latency_ms", "p99"))
    errors = sum(pin["errors"].values())
    measured = (f"pinned: p99 {p99:.1f} ms (p50 {_num(g(pin, 'latency_ms', 'p50')):.1f}) at {rate:,.0f} req/s, "
                f"{errors} errors, API on CPU {pin.get('api_cpus')}, the rest on {pin.get('other_cpus')}"
                f"{_generator(pin)}; unpinned: "
                f"p99 {_num(g(fixed, 'latency_ms', 'p99')):.1f} ms (p50 {_num(g(fixed, 'latency_ms', 'p50')):.1f})")
    if (nice := g(a, "yielding", "worker_nice")) is not None and "latency_ms" in a["yielding"]:
        # Beside the row, not its verdict: the bar is the default deployment, the worker at its own priority.
        measured += (f"; pinned with the worker at niceness {nice} (FLOODGATE_WORKER_NICE): "
                     f"p99 {_num(g(a, 'yielding', 'latency_ms', 'p99')):.1f} ms")
    if (alone := g(a, "ingress", "pinned", "latency_ms", "p99")) is not None:
        # Beside the row too: an API process with the ingress role alone, the stack's API beside it.
        measured += f"; an ingress-only API process pinned alike: p99 {_num(alone):.1f} ms"
    if rate < target_rate:
        return _row(name, NOT_MEASURED, measured, p99, f"scaled down: offered {rate:,.0f} req/s")
    return _row(name, MET if p99 <= slo and not errors else NOT_MET, measured, p99)


def _generator(block: dict[str, Any]) -> str:
    """The load generator in a pinned run: its own lag, and its niceness when it went first."""
    lag = g(block, "generator_lag_ms", "p99")
    if lag is None:
        return ""
    nice = block.get("generator_nice")
    first = f"at niceness {nice}" if nice is not None else "not put first (that needs root)"
    return f" (the load generator {first}; its lag p99 {_num(lag):.1f} ms)"


def api_cpu(results: dict[str, Any], target_ms: float = 0.4, target_rate: float = 1000.0) -> dict[str, Any]:
    name = f"API CPU per accepted request ≤ {target_ms:g} ms"
    if (why := _failed(results, "accept")):
        return _row(name, NOT_MEASURED, why)
    fixed = results["accept"]["fixed"]
    per, rate = _num(fixed.get("api_cpu_ms_per_request")), _num(fixed["offered_rate"])
    measured = (f"{per:.3f} ms ({_num(fixed.get('api_cpu_s')):.2f} s of the API process's CPU over "
                f"{fixed['accepted']:,} 202s at {rate:,.0f} req/s)")
    pinned = g(results, "accept", "pinned", "api_cpu_ms_per_request")
    if pinned is not None:
        measured += f"; pinned {_num(pinned):.3f} ms"
    realtime = g(results, "spike", "realtime", "api_cpu_ms_per_request")
    if realtime is not None:
        measured += f"; spike in real time {_num(realtime):.3f} ms"
    ingress = g(results, "accept", "ingress", "fixed", "api_cpu_ms_per_request")
    if ingress is not None:
        # Beside the row, not its verdict: the bar's process is the stack's API, every role in one.
        measured += (f"; an ingress-only API process (`--roles ingress`) at the same rate, the stack's API "
                     f"beside it: {_num(ingress):.3f} ms")
        if (ingress_pinned := g(results, "accept", "ingress", "pinned", "api_cpu_ms_per_request")) is not None:
            measured += f" (pinned {_num(ingress_pinned):.3f} ms)"
    if math.isnan(per):
        return _row(name, NOT_MEASURED, measured)
    if rate < target_rate:
        return _row(name, NOT_MEASURED, measured, per, f"scaled down: offered {rate:,.0f} req/s")
    return _row(name, MET if per <= target_ms else NOT_MET, measured, per)


def stalls(results: dict[str, Any]) -> dict[str, Any]:
    name = "Stall watchdog firings = 0 (floodgate_stalled_partitions_total, pipeline and handover runs)"
    runs = {k: results[k].get("stalled_partitions") for k in ("pipeline", "handover")
            if not _failed(results, k) and results[k].get("stalled_partitions") is not None}
    if not runs:
        return _row(name, NOT_MEASURED, "neither the pipeline nor the handover scenario ran")
    total = sum(_num(v) for v in runs.values())
    measured = ", ".join(f"{k} {_num(v):g}" for k, v in runs.items())
    return _row(name, MET if total == 0 else NOT_MET, measured, total)


def spike_realtime(results: dict[str, Any], slo: float = 50.0, minute: float = 60.0) -> dict[str, Any]:
    name = (f"HTTP accept p99 ≤ {slo:g} ms under the spike's arrivals in real time (renders compressed), "
            f"the compressed spike beside it")
    if (why := _failed(results, "spike")) or (why := _failed(results["spike"], "realtime")):
        return _row(name, NOT_MEASURED, why)
    s = results["spike"]
    rt = s["realtime"]
    p99 = _num(g(rt, "latency_ms", "p99"))
    errors = sum(rt["errors"].values())
    plan = s["config"]["plan"]
    measured = (f"real time: p99 {p99:.1f} ms (p50 {_num(g(rt, 'latency_ms', 'p50')):.1f}), {rt['accepted']:,}/"
                f"{rt['offered']:,} accepted at {_num(rt['offered_rate']):.0f} req/s for {_num(rt['seconds']):g} s, "
                f"{errors} errors; compressed {_num(plan.get('compression')):g}× "
                f"({_num(plan.get('spike_wall_rate_per_s')):,.0f} req/s): p99 {_num(g(s, 'accept_ms', 'p99')):.1f} ms")
    if _num(rt["seconds"]) < minute:
        return _row(name, NOT_MEASURED, measured, p99, f"scaled down: {_num(rt['seconds']):g} s of the spike's minute")
    return _row(name, MET if p99 <= slo and not errors else NOT_MET, measured, p99)


def _waits(w: dict[str, Any] | None) -> str:
    """A tenant's wait summary as "p50 … / p90 … s (n=…)"."""
    if not w or not w.get("count"):
        return "no job started"
    unstarted = f", {w['unstarted']} never started" if w.get("unstarted") else ""
    return f"p50 {_num(w.get('p50')):.2f} / p90 {_num(w.get('p90')):.2f} s (n={w['count']:,}{unstarted})"


def eta_error(results: dict[str, Any], bar: float = 0.25, min_count: int = 100) -> dict[str, Any]:
    name = f"ETA at acceptance (eta_seconds of a job's first GET) vs its actual start: p50 ≤ {bar:.0%} error"
    if (why := _failed(results, "spike")):
        return _row(name, NOT_MEASURED, why)
    e = results["spike"].get("eta")
    if not e:
        return _row(name, NOT_MEASURED, "no ETA readings in this run")
    p50, p90, signed = _num(e.get("ape_p50")), _num(e.get("ape_p90")), _num(e.get("signed_p50"))
    probe = e.get("probe") or {}
    delay = e.get("read_after_accept_ms") or {}
    measured = (f"absolute error p50 {p50:.0%}, p90 {p90:.0%} over {e['count']:,} jobs (median signed "
                f"{signed:+.0%}: + said longer than it took); {probe.get('offered', 0):,} sampled, "
                f"{probe.get('with_eta', 0):,} shown an ETA, the first GET with one p50 "
                f"{_num(delay.get('p50')):.0f} ms / p90 {_num(delay.get('p90')):.0f} ms after the 202; "
                f"{e['shorter_than_min_wait']:,} waited under "
                f"{_num(e['min_wait_s']):.2f} s (left out), {probe.get('left_before_eta', 0):,} started before any "
                f"ETA; reads paced at ≤ {_num(probe.get('max_rate_per_s')):.0f}/s beside the load")
    configured = g(results["spike"], "config", "render_time_configured") or {}
    if configured:
        measured += "; the routing file's render_time (the paces' prior until renders are seen): " + ", ".join(
            f"{p} {_num(r.get('min')):g}-{_num(r.get('max')):g} s" for p, r in sorted(configured.items()))
    tenants = "; ".join(f"{t} p50 {_num(v.get('ape_p50')):.0%} (signed {_num(v.get('signed_p50')):+.0%})"
                        for t, v in (e.get("by_tenant") or {}).items())
    if tenants:
        measured += f"; by tenant: {tenants}"
    after = e.get("after_admission")
    if after and after.get("count"):
        measured += (f"; read once the spike's requests were all answered (no longer admitting them at the "
                     f"compressed rate): p50 {_num(after.get('ape_p50')):.0%}, p90 {_num(after.get('ape_p90')):.0%} "
                     f"(signed {_num(after.get('signed_p50')):+.0%}) over {after['count']:,}")
    spilling = g(results["spike"], "spillover", "eta")
    if spilling and spilling.get("count"):
        measured += (f"; in the run with spillover (the lines pooled; reported, not judged): p50 "
                     f"{_num(spilling.get('ape_p50')):.0%}, p90 {_num(spilling.get('ape_p90')):.0%} (signed "
                     f"{_num(spilling.get('signed_p50')):+.0%}) over {spilling['count']:,}")
    if e["count"] < min_count:
        return _row(name, NOT_MEASURED, measured, p50, f"scaled down: {e['count']} jobs with an ETA")
    return _row(name, MET if p50 <= bar else NOT_MET, measured, p50)


def tenant_waits(results: dict[str, Any]) -> dict[str, Any]:
    name = "Per-tenant waits under the spike (accept → start): A sends the spike's first 80%, B the rest"
    if (why := _failed(results, "spike")):
        return _row(name, NOT_MEASURED, why)
    s = results["spike"]
    t = s.get("tenants") or {}
    share = _num(g(s, "config", "burst_share"))
    name = (f"Per-tenant waits under the spike (accept → start): A sends the spike's first {share:.0%}, "
            f"B the rest and the baseline")
    measured = "; ".join(f"{tenant}: {_waits(w)}" for tenant, w in t.items()) or "no tenants"
    spill = g(s, "spillover", "tenants")
    if spill:
        measured += "; with spillover: " + "; ".join(f"{tenant}: {_waits(w)}" for tenant, w in spill.items())
    return _row(name, REPORTED, measured + " (wall seconds)")


def fair_share(results: dict[str, Any], bar: float = 0.10, min_burst: int = 100) -> dict[str, Any]:
    name = f"Fair queue: tenant B's median wait < {bar:.0%} of tenant A's (A bursts, B a moment later, equal weights)"
    if (why := _failed(results, "spike")):
        return _row(name, NOT_MEASURED, why)
    f = results["spike"].get("fair")
    if not f:
        return _row(name, NOT_MEASURED, "not run")
    if f.get("error"):
        return _row(name, NOT_MEASURED, f"failed: {f['error']}")
    cfg, w = f["config"], f["waits"]
    ratio = _num(f.get("ratio"))
    measured = (f"B/A median {ratio:.1%}: A ({cfg['burst']:,} jobs at once) {_waits(w.get('tenant-a'))}; "
                f"B ({cfg['late']:,} jobs {cfg['delay_s']:g} s after A's last) {_waits(w.get('tenant-b'))}")
    unstarted = sum(v.get("unstarted", 0) for v in w.values())
    if cfg["burst"] < min_burst:
        return _row(name, NOT_MEASURED, measured, ratio, f"scaled down: a burst of {cfg['burst']}")
    return _row(name, MET if ratio < bar and not unstarted else NOT_MET, measured, ratio)


def _kling_busy(s: dict[str, Any], queued: float) -> str:
    """How busy kling's slots were over the drain without spillover (it carried the longest line)."""
    kling = s["providers"].get("kling") or {}
    if "render_seconds" not in kling:
        return ""
    work = _num(kling["render_seconds"]) + kling.get("jobs_created", 0) * queued
    return f", kling's without it {work / kling['concurrency_limit'] / _num(s['drain_wall_s']):.1%}"


def spillover(results: dict[str, Any], bar: float = 0.25, min_jobs: int = 1000) -> dict[str, Any]:
    name = (f"Spike drain with spillover (kling-2.1 and sora-2 → wan-2.6) ≥ {bar:.0%} shorter than without, "
            f"0 × 429, limits held in both")
    if (why := _failed(results, "spike")) or (why := _failed(results["spike"], "spillover")):
        return _row(name, NOT_MEASURED, why)
    s, sp = results["spike"], results["spike"]["spillover"]
    cut = _num(sp.get("reduction"))
    created = {p: v.get("jobs_created", 0) for p, v in s["providers"].items()}
    total = sum(created.values())
    ideal = 1 - 0.5 * total / created["kling"] if created.get("kling") else math.nan
    # The hard floor: the run's renders (and each job's time in the provider's own queue, which
    # holds its slot too) end to end on every slot at once, never a slot idle.
    cfg = s.get("config") or {}
    queued = _num(cfg.get("queue_delay", 0.0)) * _num((cfg.get("plan") or {}).get("time_factor", 1.0))
    work = sum(_num(v.get("render_seconds")) + v.get("jobs_created", 0) * queued for v in sp["providers"].values())
    slots = sum(v["concurrency_limit"] for v in sp["providers"].values())
    floor = work / slots if slots else math.nan
    ceiling = 1 - floor / _num(sp["without_drain_wall_s"])
    bound = (f"(an even split of the jobs could give {ideal:.0%} here)" if not math.isfinite(ceiling) else
             f"(the floor, every slot busy from start to end with this run's {work:,.0f} slot-seconds of renders "
             f"and provider queueing, is "
             f"{floor:.1f} s: {ceiling:.1%} shorter; the drain with spillover kept "
             f"{floor / _num(sp['drain_wall_s']):.1%} of the slots' time busy{_kling_busy(s, queued)})")

    def limits(providers: dict[str, Any]) -> str:
        return ", ".join(f"{p} {v['max_concurrency']}/{v['concurrency_limit']} {v['rejected_429']} × 429"
                         for p, v in providers.items())

    metric = ", ".join(f"{k} {v:g}" for k, v in (sp.get("spilled_metric") or {}).items()) or "0"
    measured = (f"drain {_num(sp['without_drain_wall_s']):.1f} s without, {_num(sp['drain_wall_s']):.1f} s with: "
                f"{cut:.1%} shorter {bound}; "
                f"{sp['spilled_jobs']:,} jobs served by wan-2.6 instead (floodgate_spilled_total {metric}); max_wait_s "
                f"{_num(sp['max_wait_s']):g} simulated = {_num(sp['max_wait_wall_s']):.2f} s wall; without: "
                f"{limits(s['providers'])}; with: {limits(sp['providers'])}; unfinished {s['unfinished']} / "
                f"{sp['unfinished']}")
    held = all(v["max_concurrency"] <= v["concurrency_limit"] and not v["rejected_429"]
               for v in [*s["providers"].values(), *sp["providers"].values()])
    if sp["offered"] < min_jobs:
        return _row(name, NOT_MEASURED, measured, cut, f"scaled down: {sp['offered']:,} jobs")
    ok = cut >= bar and held and not s["unfinished"] and not sp["unfinished"]
    return _row(name, MET if ok else NOT_MET, measured, cut)


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [accept_p99(results), sdk_rate(results), burst(results), pipeline(results), pipeline_pinned(results),
            notification(results), notification_at_max(results),
            memory(results), naive(results), drain(results),
            # the lean pipeline
            records_per_job(results), hops_per_job(results), scaling(results), handover(results),
            accept_pinned(results), api_cpu(results), spike_realtime(results), stalls(results),
            # the waiting user and the fair queue
            eta_error(results), tenant_waits(results), fair_share(results), spillover(results)]
