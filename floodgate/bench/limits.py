"""What limits each number, in words built from the run's own measurements (CPU per process,
per-hop timings, profiles); pure."""
from __future__ import annotations

import math
from typing import Any

from floodgate.bench.targets import g, per_key


def pct(x: Any) -> str:
    return f"{x:.0%}" if isinstance(x, (int, float)) else "?"


def num(x: Any, digits: int = 1) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return f"{x:,.{digits}f}"
    return "–"


def cores(used: dict[str, float] | None) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in used.items()) if used else "?"


def profile_line(profile: dict[str, Any] | None) -> str:
    if not profile:
        return "Not profiled."
    if not profile.get("samples"):
        return f"Profile unavailable ({profile.get('note')})."
    layers = ", ".join(f"{x['where']} {pct(x['share'])}" for x in profile["layers"][:5])
    hot = ", ".join(f"{x['where']} {pct(x['share'])}" for x in profile["self"][:4])
    own = ", ".join(f"{x['where']} {pct(x['share'])}" for x in profile.get("floodgate_inclusive", [])[:4])
    line = (f"py-spy, {profile['samples']} samples of {profile['process']} ({profile['load']}): by layer {layers}; "
            f"hottest leaf functions {hot}")
    return line + (f"; Floodgate code on the stack: {own}." if own else ".")


def _pinned(a: dict[str, Any]) -> str:
    pin = a.get("pinned") or {}
    if "latency_ms" not in pin:
        return ""
    busy = g(pin, "cpu_cores", "api")
    return (f"With the API alone on CPU {pin['api_cpus']} (every other process on {pin['other_cpus']}) p99 is "
            f"{num(g(pin, 'latency_ms', 'p99'))} ms{_loop(pin)} against {num(g(a, 'fixed', 'latency_ms', 'p99'))} "
            f"ms unpinned; "
            f"the API then used {num(busy, 2)} of its core and "
            f"{num(pin.get('api_cpu_ms_per_request'), 3)} ms of CPU per 202 "
            f"({num(g(a, 'fixed', 'api_cpu_ms_per_request'), 3)} ms unpinned). {_yielding(a)}")


def _loop(block: dict[str, Any] | None, process: str = "api") -> str:
    """What a process's event loop lag probe saw over a run (``<process>_loop_lag``, and its full
    collections ``<process>_full_gc``), as a parenthesis; ``process``: ``api`` or ``worker``."""
    lag = (block or {}).get(f"{process}_loop_lag") or {}
    if not lag.get("probes"):
        return ""
    def bound(ms: float | None) -> str:
        return f"≤ {ms:,.0f} ms" if ms is not None else f"over {num(lag.get('last_bucket_ms'))} ms"

    full = (block or {}).get(f"{process}_full_gc") or {}
    collections = (f"; full collections: {full['probes']}, the longest {bound(full['worst_le_ms'])}"
                   if full.get("probes") else "")
    return (f" (the {'API' if process == 'api' else process}'s event loop: {lag['over_100ms']} of {lag['probes']} "
            f"probes woke over 100 ms late, p99 {bound(lag['p99_le_ms'])}, worst {bound(lag['worst_le_ms'])}"
            f"{collections})")


def _worker_cores(cores_used: dict[str, float] | None) -> float:
    """The cores the busiest worker process used (0.0 if none was measured)."""
    return max((v for k, v in (cores_used or {}).items() if k.startswith("worker")), default=0.0)


def _yielding(a: dict[str, Any]) -> str:
    y = a.get("yielding") or {}
    if "latency_ms" not in y:
        return ""
    cores_used = y.get("cpu_cores") or {}
    worker = _worker_cores(cores_used)
    undone = "" if y.get("worker_nice_restored", True) else " (its niceness could not be put back: not root)"
    return (f"Pinned again with every thread of the worker at niceness {y['worker_nice']}{undone}: p99 "
            f"{num(g(y, 'latency_ms', 'p99'))} ms{_loop(y)}, the worker using {num(worker, 2)} cores and the broker "
            f"{num(cores_used.get('broker'), 2)} — what waits behind the worker is the broker's share of "
            f"the other core, on which every 202 waits. ")


def _ingress(a: dict[str, Any]) -> str:
    """The runs sent to an API process with the ingress role alone: what the stack's API spends on
    its other roles, per 202, is the difference."""
    fixed, pin = g(a, "ingress", "fixed") or {}, g(a, "ingress", "pinned") or {}
    if "latency_ms" not in fixed:
        return ""
    whole, alone = a["fixed"].get("api_cpu_ms_per_request"), fixed.get("api_cpu_ms_per_request")
    other = (f"; the stack's API spends the other {whole - alone:.3f} ms per 202 of its "
             f"{whole:.3f} on its other roles: the bridge's webhooks and the job view's updates of the jobs "
             f"the worker moves meanwhile" if whole is not None and alone is not None and whole > alone else "")
    pinned = (f"; pinned alone on CPU {pin['api_cpus']}: p99 {num(g(pin, 'latency_ms', 'p99'))} ms{_loop(pin)}, "
              f"{num(pin.get('api_cpu_ms_per_request'), 3)} ms of CPU per 202" if "latency_ms" in pin else "")
    return (f"Sent to an API process with the ingress role alone (`floodgate api --roles ingress`, the stack's "
            f"API beside it): p99 {num(g(fixed, 'latency_ms', 'p99'))} ms{_loop(fixed)}, "
            f"{num(alone, 3)} ms of its CPU per 202{other}{pinned}. ")


def _accept(a: dict[str, Any], cpus: int | None) -> list[tuple[str, str]]:
    idle = g(a, "fixed_no_worker", "cpu_cores", "api")
    rate = g(a, "fixed_no_worker", "offered_rate")
    per_request = (f" — {idle / rate * 1000:.2f} ms of API CPU per request, so one API process tops out near "
                   f"{rate / idle:,.0f} req/s" if idle and rate else "")
    text = (f"CPU: {cpus} cores shared by every process. Cores used during the fixed-rate run: "
            f"{cores(a['fixed'].get('cpu_cores'))} (the load generator's own lag p99 "
            f"{num(g(a, 'fixed', 'generator_lag_ms', 'p99'))} ms shows the contention){_loop(a['fixed'])}. "
            f"With the worker stopped: {cores(g(a, 'fixed_no_worker', 'cpu_cores'))}{per_request}, and p99 "
            f"{num(g(a, 'fixed_no_worker', 'latency_ms', 'p99'))} ms{_loop(a.get('fixed_no_worker'))}. "
            f"The API is one Python process (one event loop, "
            f"at most one core); each 202 also waits for an acks=all round trip to the broker on the same cores. "
            f"{_pinned(a)}{_ingress(a)}{profile_line(a.get('profile'))}")
    sdk = ("Per-record Python work in one thread (validation, request hash, Avro encoding, a delivery callback "
           "per record) on top of librdkafka's produce; the raw produce loop measures librdkafka and the broker "
           "alone.")
    return [("HTTP accept latency / max rate", text), ("SDK requests/s", sdk)]


HELD_BACK = 0.15
"""The share of a run the worker's main thread may spend runnable but without a CPU before the
machine, not the worker, is named its limit (0.24-0.28 sharing 2 cores with the stack, 0.10 with
a core of its own, in the runs of 2026-12-04)."""


def _waited(p: dict[str, Any]) -> float:
    waiting = g(p, "main_thread", "worker-0", "waiting")
    return float(waiting) if isinstance(waiting, (int, float)) else 0.0


def _pipeline(p: dict[str, Any], cpus: int | None = None) -> tuple[str, str]:
    per = ", ".join(f"{k} {v:,}" for k, v in (p.get("submitted_per_provider") or {}).items())
    peak = ", ".join(f"{k} {v:,}" for k, v in (p.get("max_in_flight") or {}).items())
    used = p.get("cpu_cores") or {}
    worker, everyone = _worker_cores(used), sum(used.values())
    if worker >= 0.85:
        bound = "CPU: the worker used a whole core (one Python process, one event loop, cannot use more)"
    elif (cpus and everyone >= 0.9 * cpus) or _waited(p) >= HELD_BACK:
        # The worker below its core's worth because the others hold the rest: seen from the cores in
        # use, or from the kernel's run queue (which also counts processes outside the stack).
        rate, store = p.get("jobs_per_s") or 0.0, p.get("video_store")
        copies = ("" if store == "off" else " and copying each job's video into the store" +
                  (" (the local store: a download, then the file written with its record as an extended "
                   "attribute, flushed and renamed in one trip to a thread)" if store == "local" else ""))
        api = (f"; the API's share, {used['api'] / rate * 1000:.1f} ms per job, includes the two webhooks through "
               f"the bridge{copies}" if used.get("api") and rate else "")
        bound = (f"The machine's CPU: every process together used {everyone:.2f} of its {cpus} cores, the worker "
                 f"{worker:.2f}{api}{_held_back(p)}")
    elif worker >= 0.6:
        bound = f"Mostly the worker's CPU: {worker:.2f} of the one core a Python process can use"
    else:
        bound = f"Not CPU: the worker used {worker:.2f} cores"
    stalled = " The run stalled: results stopped coming." if p.get("stalled") else ""
    lags = p.get("stage_lag") or {}
    slowest = max(lags, key=lambda k: lags[k]["mean"], default=None)
    if slowest:
        by_stage = ", ".join(f"{k} {v['mean']:,.0f}" for k, v in sorted(lags.items(), key=lambda kv: -kv[1]["mean"]))
        stalled += (f" Mean consumer lag per stage (records waiting): {by_stage} — the {slowest} agent is the "
                    f"slowest stage.")
    by_topic = per_key(p.get("records_per_job_by_topic"))
    by_agent = per_key(p.get("hops_per_job_by_agent"))
    text = (f"{bound}; cores used {cores(p.get('cpu_cores'))}. Each job is {num(p['records_per_job'], 2)} records "
            f"written ({by_topic}) and {num(p.get('hops_per_job'), 2)} records consumed by the worker ({by_agent}): "
            f"the request and the bridge's two webhooks through the jobs agent, the dispatch order and the "
            f"bridge's release through the provider's submitter, the jobs table's writes as `notifications` for "
            f"the API's view; plus a provider call, every consumed record through one Python worker. Jobs per "
            f"provider: {per or '?'}; most "
            f"in flight at once: {peak or '?'} (limit {p['config']['limit']:,}).{stalled} "
            f"{profile_line(p.get('profile'))}{_api_profile(p.get('profile'))}")
    return "Pipeline jobs/s", text


def _api_profile(profile: dict[str, Any] | None) -> str:
    """The API's profile over the same seconds as the worker's, when it was taken."""
    api = (profile or {}).get("api")
    return f" Beside it, {profile_line(api)}" if api else ""


def _held_back(p: dict[str, Any]) -> str:
    """What the worker's main thread did in the run, and what the worker carried alone on a core."""
    spent = g(p, "main_thread", "worker-0")
    if spent is None:
        return ""
    text = (f". The worker's main thread, where a Python worker does its work, ran {spent['running']:.0%} of "
            f"the run and was runnable but waiting for a CPU {spent['waiting']:.0%}: held back by the "
            f"processes sharing its cores more than by its own work")
    if (own := g(p, "pinned", "jobs_per_s")) is not None:
        alone = g(p, "pinned", "main_thread", "worker-0", "running")
        text += (f"; alone on a core it carried {own:,.0f} jobs/s"
                 + (f" (its main thread on a CPU {alone:.0%} of the run)" if alone is not None else ""))
    return text


def _hops(n: dict[str, Any]) -> str:
    """A notification run's hops, each with its p50 and p99."""
    return "; ".join(f"{hop} p50 {num(g(d, 'p50'))} / p99 {num(g(d, 'p99'))} ms"
                     for hop, d in (n.get("hops_ms") or {}).items())


def _notify(n: dict[str, Any]) -> tuple[str, str]:
    hops = _hops(n)
    on_path = {hop: d for hop, d in (n.get("hops_ms") or {}).items() if "beside" not in hop}
    slowest = max(on_path.items(), key=lambda kv: g(kv[1], "p50", default=0.0), default=None)
    dominant = f" The slowest hop on the watcher's path by p50 is {slowest[0]}." if slowest else ""
    text = (f"Per hop, from the records' own timestamps: {hops}. The API process that receives a webhook tells "
            f"its own watchers of the job once Kafka has the webhook record (`floodgate/api/heard.py`); beside "
            f"that path, the worker's jobs agent reads the record and writes the job's new state to its table, "
            f"whose changelog (`notifications`) the job view of every API process reads: the table's copy, which "
            f"has the last say, and the path for watchers on other API processes."
            f"{dominant} The jobs agent's hop is a consumer fetch plus the agent's turn in a worker that runs every "
            f"agent on one event loop{_loop(n, 'worker')} (cores during the run: {cores(n.get('cpu_cores'))}); "
            f"the bridge, the API's view and sockets share the API's loop{_loop(n)}.")
    return "Notification latency", text


def _notify_at_max(n: dict[str, Any]) -> tuple[str, str]:
    hops = _hops(n)
    beside, loop = n.get("pipeline") or {}, _loop(n, "worker")
    text = (f"The same hops with {num(g(beside, 'results_per_s_during'), 0)} results/s of the pipeline's jobs "
            f"beside the measured ones: {hops}.{f' Meanwhile{loop}.' if loop else ''} Cores during the run: "
            f"{cores(n.get('cpu_cores'))}. The pipeline at its max is every core at its max on a machine the "
            f"stack shares: each hop waits for a CPU. The worker hands the records it fetched to its agents one "
            f"at a time on one main thread, the measured jobs' webhooks in the same line as the pipeline's "
            f"slot releases, webhooks and events.")
    convoy = n.get("webhook_convoy") or {}
    if convoy.get("most"):
        window = convoy["window_ms"]
        text += (f" Those records come unevenly: the bridge wrote up to {convoy['most']:,} webhook records in "
                 f"{window} ms ({num(convoy['most'] * 1000 / window, 0)}/s), against "
                 f"{num(convoy.get('per_s_mean'), 0)}/s on average over the run. A worker at its max has no spare "
                 f"pace to absorb such a burst: the records written during it wait in line in its consumer, to be "
                 f"fetched and handed out.")
    return "Notification latency, the pipeline at its max", text


def _memory(m: dict[str, Any]) -> tuple[str, str]:
    stalls = [k for k in ("fill_small", "fill_large") if g(m, k, "stalled")]
    if stalls:
        lag = g(m, stalls[0], "lag_at_end")
        return "Worker RSS", (f"Not measurable in this run: while the backlog was being queued the worker stopped "
                              f"consuming every topic (lag left: {lag}). That was the symptom of a submitter "
                              f"blocking Faust's shared delivery loop while it waited for slots, fixed by waiting "
                              f"orders in a bounded line instead (tests/e2e/test_backlog.py): look for a regression.")
    entries = m.get("table_entry_bytes") or {}
    sizes = " + ".join(f"{k} {num(v, 0)}" for k, v in entries.items())
    head = (f"{num(m['bytes_per_queued_job'], 0)} bytes of RSS per queued job. The dispatch backlog stays in "
            f"Kafka ({m['dispatch_lag_large']:,} records not consumed); the `jobs` table (each job's state, which "
            f"admission also dedupes against) holds an entry for every admitted job, queued or not: serialized, "
            f"{sizes or '?'} bytes per job (changelog records). ")
    if m.get("table_store", "memory") == "memory":
        text = head + ("With store=memory:// they live in the worker's heap, so RSS grows linearly with the "
                       "backlog (Python objects and the allocator multiply the serialized size); "
                       "FLOODGATE_TABLE_STORE=rocksdict moves them to disk.")
    else:
        text = head + ("They live on disk (RocksDB through rocksdict); what grows is RocksDB's memory: memtables "
                       "(bounded per partition database by write_buffer_size × max_write_buffer_number) and the "
                       "block cache (bounded by block_cache_size; it holds the index and filter blocks too, "
                       "streams/jobstore.py), so RSS levels off once those are full. The C heap is kept from "
                       "holding on to freed memory (floodgate/malloc.py: two malloc arenas, large blocks "
                       "mmap'd), and a paused partition keeps at most FLOODGATE_FETCH_PARTITION_BYTES fetched.")
    small, large = m["config"]["small"], m["config"]["large"]
    lines = ""
    if "dispatch_lag_small" in m:
        read_small, read_large = small - m["dispatch_lag_small"], large - m["dispatch_lag_large"]
        lines = (f" The dispatchers had read {read_small:,} orders with {small:,} queued and {read_large:,} with "
                 f"{large:,}: their fair lines hold up to FLOODGATE_FAIR_WINDOW orders in all (the worker's "
                 f"read-ahead window) in memory (decoded, with their waiting entries: about 1 KB each), so "
                 f"{read_large - read_small:,} more orders held account for about "
                 f"{(read_large - read_small) * 1024 / 2**20:,.0f} MiB of the growth; the rest of the backlog waits "
                 f"in Kafka.")
    return "Worker RSS", text + lines


def _spike(s: dict[str, Any]) -> tuple[str, str]:
    use = "; ".join(f"{p} {v['mean_in_flight']:.1f} of {s['config']['limit']} slots busy on average "
                    f"({pct(v['share_of_limit'])}) over {num(v['backlogged_s'], 0)} s"
                    for p, v in (s.get("utilisation") or {}).items())
    rejected = sum(v["rejected_429"] for v in s["providers"].values())
    text = (f"The providers, by design: {s['config']['limit']} slots each on kling and wan, renders "
            f"{s['config']['render'][0]:g}-{s['config']['render'][1]:g} s simulated → about "
            f"{num(s['capacity_per_s'])} completions per wall second while both have work (kling carries "
            f"sora-2 as well, so it drains last). While a provider had a backlog: {use or '?'}. A slot stays idle "
            f"from the provider's completion until its release has reached the provider's submitter (webhook → "
            f"the bridge, which writes it to `webhooks` and a release to `release.<provider>` → the submitter frees "
            f"the slot, writes the next waiting order's slot → the next submit call; the slot handover scenario "
            f"times it), a fixed wall-clock cost that weighs more the more time is compressed. Limits were never "
            f"exceeded: {rejected} × 429.")
    sp = s.get("spillover") or {}
    if "drain_wall_s" in sp:
        split = ", ".join(f"{p} {v.get('jobs_created', 0):,}" for p, v in sp["providers"].items())
        text += (f" With spillover ({sp['spilled_jobs']:,} jobs moved; jobs per provider: {split}) a job of kling's "
                 f"line goes to wan when it would wait past max_wait_s at kling and would start within it at "
                 f"wan, so wan keeps a short line of kling's jobs instead of idling between two line reports "
                 f"(every {max(0.1, s['config']['plan']['time_factor']):g} s wall here, compressed like the "
                 f"renders). What "
                 f"keeps the drain above the floor (every slot busy from start to end) is the same slot handover "
                 f"per job as without spillover, and the tail: the last renders end at different times, and kling "
                 f"keeps up to max_wait_s of its line that never spills.")
    return "Spike drain time", text


def _handover(h: dict[str, Any]) -> tuple[str, str]:
    text = (f"A freed slot is handed on one consumer hop after the completion: the bridge writes the webhook to "
            f"`webhooks` and a release naming the provider job to `release.handover` (acks=all, both before its "
            f"200) → the provider's submitter reads the release, frees the slot and gives it to the next waiting "
            f"order, whose slot entry is on Kafka (acknowledged) before → the submit call. Two acknowledged writes "
            f"at the bridge, then one consumer fetch and one acknowledged write in the worker's event loop (cores: "
            f"{cores(h.get('cpu_cores'))}); the provider's slots were busy {pct(h.get('utilisation'))} of the "
            f"drain.")
    return "Slot handover", text


def limits(r: dict[str, Any], cpus: int | None) -> list[tuple[str, str]]:
    """(number, what limits it) for every scenario that produced numbers."""
    out: list[tuple[str, str]] = []
    if "fixed" in r.get("accept", {}):
        out += _accept(r["accept"], cpus)
    if "jobs_per_s" in r.get("pipeline", {}):
        out.append(_pipeline(r["pipeline"], cpus))
    if "latency_ms" in r.get("notify", {}):
        out.append(_notify(r["notify"]))
        if "latency_ms" in (r["notify"].get("at_max") or {}):
            out.append(_notify_at_max(r["notify"]["at_max"]))
    if "handover_ms" in r.get("handover", {}):
        out.append(_handover(r["handover"]))
    if "rss_large" in r.get("memory", {}):
        out.append(_memory(r["memory"]))
    if "capacity_per_s" in r.get("spike", {}):
        out.append(_spike(r["spike"]))
    if "produce" in r.get("rawkafka", {}):
        out.append(("Raw Kafka", ("One broker (a JVM) on the same cores as the Python client that produces or "
                                  "consumes in a plain loop; acks=all and idempotence as in the SDK.")))
    return out
