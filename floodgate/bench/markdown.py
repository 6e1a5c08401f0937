"""``report.md``: one function per section, each skipped when its scenario has no numbers."""
from __future__ import annotations

from typing import Any

from floodgate.bench.limits import cores, num
from floodgate.bench.targets import g, per_key


def table(rows: list[list[str]], head: list[str]) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in esc]
    return "\n".join(lines)


def targets_table(targets: list[dict[str, Any]]) -> str:
    rows = [[t["target"], t["status"], t["measured"] + (f" ({t['note']})" if t.get("note") else "")]
            for t in targets]
    return table(rows, ["target", "status", "measured"])


def lat(d: dict[str, Any] | None, unit: str = "ms") -> str:
    if not d or not d.get("count"):
        return "–"
    return (f"p50 {num(d['p50'])} / p99 {num(d['p99'])} / p99.9 {num(d['p999'])} / max {num(d['max'])} {unit} "
            f"(n={d['count']:,})")


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "–"


def header(meta: dict[str, Any]) -> list[str]:
    m = meta["machine"]
    intro = (f"Mode **{meta['mode']}**; machine: {m['cpus']} × {m['cpu_model']}, {m['mem_total_gib']} GiB; "
             f"Python {m['python']}; commit {m['git_commit']}"
             f"{' (modified: ' + ', '.join(m['modified_files']) + ')' if m.get('modified_files') else ''}; "
             f"the run took {num(meta.get('seconds'), 0)} s. Figures "
             f"are quoted as ratios of baselines measured in this same run where one exists.")
    loads = ", ".join(f"{name} {v['loadavg_before'][0]:g}→{v['loadavg_after'][0]:g}"
                      for name, v in (meta.get("load") or {}).items()
                      if v.get("loadavg_before") and v.get("loadavg_after"))
    lines = [f"# Floodgate benchmark — {meta['started']}", "", intro, ""]
    if loads:
        note = f"1-minute load average before→after each scenario (2 cores, shared with other sessions): {loads}."
        lines += [note, ""]
    if (warm := warmup_line(meta.get("warmup"))) is not None:
        lines += [warm, ""]
    return lines


def warmup_line(w: dict[str, Any] | None) -> str | None:
    """What the broker's warm-up did before the scenarios (None: there was none)."""
    if w is None:
        return None
    if w.get("error"):
        return f"Broker warm-up failed ({w['error']}): the first scenarios ran on a broker still compiling."
    if w.get("skipped"):
        return f"Broker warm-up skipped: {w['skipped']}."
    c = w["config"]
    ended = (f"its JIT compilers used under {c['quiet_share']:.0%} of a core for {num(c['quiet_seconds'], 0)} s"
             if w["quiet"] else f"the compilers were still busy after {num(c['max_seconds'], 0)} s "
                                f"({num(w.get('compiler_share_at_end'), 2)} of a core at the end)")
    return (f"Broker warm-up: {w['jobs']:,} jobs through a throwaway stack over {num(w['seconds'], 0)} s, until "
            f"{ended}; the compilers used {num(w['compiler_cpu_seconds'], 1)} s of CPU meanwhile "
            f"(`floodgate bench --no-warmup` measures a cold broker).")


def _realtime(rt: dict[str, Any] | None) -> str:
    if not rt:
        return "not run"
    if rt.get("error"):
        return f"failed: {rt['error']}"
    return (f"{lat(rt['latency_ms'])} at {num(rt['offered_rate'], 0)} req/s for {num(rt['seconds'], 0)} s "
            f"(renders compressed as above), {rt['accepted']:,}/{rt['offered']:,} accepted; "
            f"{num(rt.get('api_cpu_ms_per_request'), 3)} ms of API CPU per 202")


def spike(s: dict[str, Any]) -> list[str]:
    plan, cfg = s["config"]["plan"], s["config"]
    intro = (f"{s['offered']:,} requests: 50/h for {plan['before_s']:g} s, 5,000/min for {plan['spike_s']:g} s, "
             f"50/h for {plan['after_s']:g} s (simulated), compressed {plan['compression']:g}× (time factor "
             f"{plan['time_factor']}: the spike arrives at {plan['spike_wall_rate_per_s']:,.0f} requests per wall "
             f"second). Providers: kling and wan, {cfg['limit']} slots each, renders {cfg['render'][0]:g}-"
             f"{cfg['render'][1]:g} s simulated (sora retired: sora-2 → kling).")
    depth = (f"{s['max_waiting']:,} jobs admitted and waiting (events); {s['max_queue_depth']:,} by dispatch lag "
             f"(Kafka offsets)")
    providers = "; ".join(f"{p}: {v['max_concurrency']}/{v['concurrency_limit']}, {v['rejected_429']} × 429"
                          for p, v in s["providers"].items())
    plateau = (f"{num(s.get('plateau_submissions_per_s'), 2)}/s from the spike's end to the last result; capacity "
               f"{num(s['capacity_per_s'], 2)}/s while both providers have work")
    busy = "; ".join(f"{p}: {v['mean_in_flight']:.1f} of {cfg['limit']} ({v['share_of_limit']:.0%})"
                     for p, v in (s.get("utilisation") or {}).items())
    rows = [
        ["accepted (202)", f"{s['accepted']:,} of {s['offered']:,}; errors {s['errors'] or 'none'}"],
        ["accept latency (wall)", lat(s["accept_ms"])],
        ["accept latency, the spike's arrivals in real time", _realtime(s.get("realtime"))],
        ["completed / failed / unfinished", f"{s['completed']:,} / {s['failed']:,} / {s['unfinished']:,}"],
        ["accept → terminal (simulated minutes)", lat(s["e2e_sim_min"], "min")],
        ["max queue depth", depth],
        ["drain (spike start → last result)", f"{num(s['drain_wall_s'])} s wall"],
        ["provider submissions plateau", plateau],
        ["slots busy while a backlog waited", busy or "–"],
        ["max concurrency / 429s at the providers", providers],
    ]
    return ["## Spike: the peak-shaving picture", "", "![spike](spike.png)", "", intro, "",
            table(rows, ["", "Floodgate"]), "", "![latency CDF](latency_cdf.png)", ""]


def _eta_cell(e: dict[str, Any] | None) -> str:
    """An ETA error block's p50 / p90 and median signed error, or a dash without readings."""
    if not e or not e.get("count"):
        return "–"
    return (f"{num(100 * (e.get('ape_p50') or 0), 0)}% / {num(100 * (e.get('ape_p90') or 0), 0)}% over "
            f"{e['count']:,} jobs; median signed {num(100 * (e.get('signed_p50') or 0), 0)}%")


def _eta_groups(e: dict[str, Any] | None, key: str) -> str:
    """An ETA error block's p50 / p90 and median signed error per group (``by_tenant``,
    ``by_model``), or a dash."""
    return "; ".join(f"{m}: {num(100 * (v.get('ape_p50') or 0), 0)}% / {num(100 * (v.get('ape_p90') or 0), 0)}%, "
                     f"{num(100 * (v.get('signed_p50') or 0), 0)}% over {v.get('count', 0):,}"
                     for m, v in ((e or {}).get(key) or {}).items()) or "–"


def _tenant_rows(label: str, tenants: dict[str, Any] | None, f: float) -> list[list[str]]:
    out = []
    for tenant, w in (tenants or {}).items():
        if not w.get("count"):
            out.append([f"{label}: {tenant}", "no job started"])
            continue
        out.append([f"{label}: {tenant}",
                    f"p50 {num(w['p50'], 2)} / p90 {num(w['p90'], 2)} / max {num(w['max'], 2)} s wall "
                    f"(p50 {num(w['p50'] / f / 60, 1)} / p90 {num(w['p90'] / f / 60, 1)} simulated min), "
                    f"{w['count']:,} jobs" + (f", {w['unstarted']} never started" if w.get("unstarted") else "")])
    return out


def waiting(s: dict[str, Any]) -> list[str]:
    """The waiting user and the fair queue: ETA error, per-tenant waits, fair share, spillover."""
    f = s["config"]["plan"]["time_factor"]
    rows: list[list[str]] = []
    e = s.get("eta")
    if e:
        probe = e.get("probe") or {}
        rows += [
            ["ETA absolute error (p50 / p90)", _eta_cell(e)],
            ["… per tenant (p50 / p90, median signed)", _eta_groups(e, "by_tenant")],
            ["… per model (asked → serving where another served it)", _eta_groups(e, "by_model")],
            ["… the first GET with an ETA, after the 202", lat(e.get("read_after_accept_ms"))],
            ["… sample", f"{probe.get('offered', 0):,} jobs (about one 202 in {probe.get('every', 1)}, "
                         f"by a hash of its index), "
                         f"{probe.get('reads', 0):,} GETs at ≤ {num(probe.get('max_rate_per_s'), 0)}/s; "
                         f"{probe.get('with_eta', 0):,} shown an ETA, {probe.get('left_before_eta', 0):,} "
                         f"started before any, {probe.get('gave_up', 0):,} never shown one; "
                         f"{e['shorter_than_min_wait']:,} waited under {num(e['min_wait_s'], 2)} s (left out)"],
        ]
    rows += _tenant_rows("spike wait", s.get("tenants"), f)
    fair = s.get("fair")
    if fair and not fair.get("error"):
        cfg = fair["config"]
        rows.append(["fair share", f"A bursts {cfg['burst']:,} jobs, B sends {cfg['late']:,} {cfg['delay_s']:g} s "
                                   f"after A's last: B's median wait is {num(100 * (fair.get('ratio') or 0), 1)}% "
                                   f"of A's"])
        rows += _tenant_rows("fair-share wait", fair["waits"], f)
    elif fair:
        rows.append(["fair share", f"failed: {fair['error']}"])
    sp = s.get("spillover")
    if sp and not sp.get("error"):
        metric = ", ".join(f"{k} {v:g}" for k, v in (sp.get("spilled_metric") or {}).items()) or "0"
        rows += [
            ["drain without / with spillover", f"{num(sp['without_drain_wall_s'])} s / {num(sp['drain_wall_s'])} s "
                                               f"wall: {num(100 * (sp.get('reduction') or 0), 1)}% shorter"],
            ["… with spillover: ETA absolute error (p50 / p90)", _eta_cell(sp.get("eta"))],
            ["… with spillover, per model (asked → serving where another served it)",
             _eta_groups(sp.get("eta"), "by_model")],
            ["jobs spilled", f"{sp['spilled_jobs']:,} served by wan-2.6 instead (floodgate_spilled_total: {metric}); "
                             f"max_wait_s {sp['max_wait_s']:g} simulated ({num(sp['max_wait_wall_s'], 2)} s wall)"],
            ["… with spillover: max concurrency / 429s",
             "; ".join(f"{p}: {v['max_concurrency']}/{v['concurrency_limit']}, {v['rejected_429']} × 429"
                       for p, v in sp["providers"].items())],
        ]
        rows += _tenant_rows("spike wait with spillover", sp.get("tenants"), f)
    elif sp:
        rows.append(["spillover run", f"failed: {sp['error']}"])
    intro = ("Waits are accept (the 202 at the client) → start (the job's `submitted` event). The ETA is the "
             "`eta_seconds` of a sampled job's first GET that carried one, against its actual start, both counted "
             "from that GET. Tenants: A sends the spike's first "
             f"{num(100 * s['config'].get('burst_share', 0), 0)}%, B the rest and the baseline (API keys, equal "
             "weights).")
    return ["## The waiting user and the fair queue", "", intro, "", table(rows, ["", ""]), ""]


def naive(b: dict[str, Any], s: dict[str, Any]) -> list[str]:
    n, rates, offered = b["offered"], b["rates"], s["offered"]
    failed_other = rates.get("502", 0) + rates.get("other", 0)
    timeouts = f"{rates.get('connection_error', 0):.1%} / {rates.get('client_timeout', 0):.1%}"
    rows = [
        ["requests", f"{n:,}", f"{offered:,}"],
        ["answered at once with a job handle (202)", "–", _share(s["accepted"], offered)],
        ["got the video", f"{rates.get('200', 0):.1%}", f"{_share(s['completed'], offered)} (completed)"],
        ["429 Too Many Requests", f"{rates.get('429', 0):.1%}", _share(s["errors"].get("429", 0), offered)],
        ["504 Gateway Timeout (nginx)", f"{rates.get('504', 0):.1%}", "0.0% (nothing waits behind a proxy)"],
        ["connection closed without an answer / client timeout", timeouts, "0.0% / 0.0%"],
        ["other (502 failed render, …)", f"{failed_other:.1%}", "–"],
        ["429s from the providers", str(sum(v["rejected_429"] for v in b["providers"].values())),
         str(sum(v["rejected_429"] for v in s["providers"].values()))],
        ["videos rendered", str(sum(v["jobs_created"] for v in b["providers"].values())),
         str(sum(v["jobs_created"] for v in s["providers"].values()))],
    ]
    closed = ("Connections closed without an answer: with Debian's default `worker_connections 768`, nginx "
              "runs out of connections when about a thousand clients arrive within a second (each proxied "
              "request holds two) and resets the newest; with 4096 it does not (checked while building this "
              "benchmark). Floodgate's API answers in milliseconds, so its connections are free again at once.")
    return ["## Naive baseline vs Floodgate, same spike", "", b["proxy"] + ".", "",
            table(rows, ["", "naive + nginx", "Floodgate"]), "", closed, ""]


def _pinned(p: dict[str, Any] | None) -> str:
    if not p:
        return "not run"
    if p.get("skipped") or p.get("error"):
        return str(p.get("skipped") or p.get("error"))
    nice = p.get("generator_nice")
    first = f", the load generator first there (niceness {nice})" if nice is not None else ""
    lag = g(p, "generator_lag_ms", "p99")
    lag_text = f"; load generator lag p99 {num(lag)} ms" if lag is not None else ""
    return f"{lat(p['latency_ms'])}; API on CPU {p['api_cpus']}, everything else on {p['other_cpus']}{first}{lag_text}"


def accept(a: dict[str, Any]) -> list[str]:
    fixed, burst, sdk = a["fixed"], a["burst"], a["sdk"]
    steps = "; ".join(f"{num(b['offered_rate'], 0)}/s → p99 {num(b['latency_ms']['p99'])} ms, "
                      f"{num(b['achieved_rate'], 0)}/s answered, errors {sum(b['errors'].values())}"
                      for b in a["steps"])
    top = " (the highest step tried)" if a.get("max_sustainable_limited_by_steps") else ""
    first = a["steps"][0] if a["steps"] else None
    sustainable = (f"{num(a['max_sustainable_rate'], 0)} req/s" if a["max_sustainable_rate"] or first is None else
                   f"below {num(first['offered_rate'], 0)} req/s, the lowest step "
                   f"(p99 {num(first['latency_ms']['p99'])} ms)")
    keep = f"{num(a.get('max_keep_up_rate'), 0)} req/s{top}"
    burst_line = (f"{burst['accepted']:,}/{burst['offered']:,} in {num(burst['seconds'])} s "
                  f"({num(burst['accepted_per_s'], 0)}/s), lost {burst['lost']}; {lat(burst['latency_ms'])}")
    rows = [
        [f"HTTP 202 at {num(fixed['offered_rate'], 0)} req/s (open loop)", lat(fixed["latency_ms"])],
        ["… service time (from the actual send)", lat(fixed["service_ms"])],
        ["… load generator lag p99", f"{num(fixed['generator_lag_ms']['p99'])} ms"],
        ["… same rate, API pinned to its own core", _pinned(a.get("pinned"))],
        ["… API CPU per 202 (unpinned / pinned)", f"{num(fixed.get('api_cpu_ms_per_request'), 3)} / "
                                                  f"{num(g(a, 'pinned', 'api_cpu_ms_per_request'), 3)} ms"],
        ["… same rate, to an ingress-only API process (`--roles ingress`) beside the stack's",
         lat(g(a, "ingress", "fixed", "latency_ms"))],
        ["… … pinned to its own core", _pinned(g(a, "ingress", "pinned"))],
        ["… … its CPU per 202 (unpinned / pinned)",
         f"{num(g(a, 'ingress', 'fixed', 'api_cpu_ms_per_request'), 3)} / "
         f"{num(g(a, 'ingress', 'pinned', 'api_cpu_ms_per_request'), 3)} ms"],
        ["… same rate, worker stopped", lat(g(a, "fixed_no_worker", "latency_ms"))],
        ["max sustainable rate (p99 ≤ target, no errors, ≥ 95% answered)", sustainable],
        ["max rate it keeps up with (p99 ≤ 1 s, no errors, ≥ 95% answered)", keep],
        ["steps", steps],
        ["SDK submit_many", f"{num(sdk['per_s'], 0)} requests/s ({sdk['records']:,} in batches of {sdk['batch']:,})"],
        ["HTTP burst", burst_line],
    ]
    return ["## Accept path", "", "![accept](accept.png)", "", table(rows, ["", ""]), ""]


def pipeline(p: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    jobs = (f"{p['jobs']:,} in {num(p['seconds'])} s = {num(p['jobs_per_s'], 0)} jobs/s (steady "
            f"{num(p['steady_jobs_per_s'], 0)}/s); missing results {p['results_missing']}")
    raw_line = (f"produce {num(g(raw, 'produce', 'per_s'), 0)}/s, consume {num(g(raw, 'consume', 'per_s'), 0)}/s "
                f"({num(g(raw, 'produce', 'record_bytes'), 0)}-byte records)")
    rows = [
        ["jobs end to end", jobs],
        ["records consumed per worker", f"{num(p['events_per_s_per_worker'], 0)}/s ({p['workers']} worker(s))"],
        ["records written", f"{num(p['records_written_per_s'], 0)}/s, {num(p['records_per_job'], 2)} per job"],
        ["… per job, by topic (changelogs included)", per_key(p.get("records_per_job_by_topic"))],
        ["consumer hops per job, by agent", f"{num(p.get('hops_per_job'), 2)}: "
                                            f"{per_key(p.get('hops_per_job_by_agent'))}"],
        ["raw Kafka, same run", raw_line],
        ["cores used", cores(p.get("cpu_cores"))],
        ["the worker's main thread", _main_thread(p)],
        ["webhooks: the bridge's answers; delivered again", _webhooks(p)],
        ["the worker alone on a core", _alone(p.get("pinned"))],
        ["scaling", _scaling(p.get("scaling"), p)],
    ]
    return ["## Pipeline (instant provider)", "", table(rows, ["", ""]), ""]


def _main_thread(run: dict[str, Any]) -> str:
    spent = g(run, "main_thread", "worker-0")
    if spent is None:
        return "not measured"
    return (f"on a CPU {num(100 * spent['running'], 0)}% of the run, runnable and waiting for one "
            f"{num(100 * spent['waiting'], 0)}%")


def _alone(pin: dict[str, Any] | None) -> str:
    if not pin:
        return "not run"
    if pin.get("skipped") or pin.get("error"):
        return f"not run: {pin.get('skipped') or pin.get('error')}"
    return (f"{num(pin['jobs_per_s'], 0)} jobs/s (steady {num(pin['steady_jobs_per_s'], 0)}/s), worker on CPU "
            f"{pin.get('worker_cpus')}, the rest on {pin.get('other_cpus')}; its main thread "
            f"{_main_thread(pin)}; missing results {pin['results_missing']}; cores used {cores(pin.get('cpu_cores'))}; "
            f"webhooks: {_webhooks(pin)}")


def _webhooks(run: dict[str, Any]) -> str:
    answer = run.get("webhook_answer")
    if not answer or not answer["answers"]:
        return "not measured" if not answer else "none answered"
    def bound(ms: float | None) -> str:  # None: past the last bucket
        return f"≤ {num(ms, 0)} ms" if ms is not None else f"over {num(answer.get('last_bucket_ms'), 0)} ms"

    return (f"{answer['answers']:,} answered, {answer['over_100ms']:,} of them after 100 ms, p99 "
            f"{bound(answer['p99_le_ms'])}, slowest {bound(answer['worst_le_ms'])}; "
            f"{run.get('webhooks_retried', 0):,} delivered again ({run.get('webhooks_timed_out', 0):,} "
            f"not answered in time)")


def _scaling(sc: dict[str, Any] | None, one: dict[str, Any]) -> str:
    if not sc:
        return "not run"
    if sc.get("error"):
        return f"failed: {sc['error']}"
    return (f"{num(sc['jobs_per_s'], 0)} jobs/s with {sc['workers']} workers (steady {num(sc['steady_jobs_per_s'], 0)}"
            f"/s) vs {num(one['jobs_per_s'], 0)} with {one['workers']}: {num(sc['ratio'], 2)}× "
            f"(steady {num(sc.get('steady_ratio'), 2)}×); {num(sc['records_per_job'], 2)} records and "
            f"{num(sc.get('hops_per_job'), 2)} hops per job; missing results {sc['results_missing']}; cores used "
            f"{cores(sc.get('cpu_cores'))}")


def handover(h: dict[str, Any]) -> list[str]:
    cfg = h["config"]
    rows = [
        ["completion webhook at the bridge → next submission", lat(h["handover_ms"])],
        ["jobs", f"{h['completed']:,} of {cfg['jobs']:,} submitted at once to one provider, limit {cfg['limit']}, "
                 f"renders {cfg['render'][0]:g}-{cfg['render'][1]:g} s; {h['pairs']:,} completions paired while "
                 f"the first {cfg['measured_share']:.0%} of the submissions were made"],
        ["drain", f"{num(h['seconds'])} s (ideal {num(h['ideal_seconds'])} s at the limit); slots busy "
                  f"{num(100 * h['utilisation'], 0)}% of the time; most in flight {h['max_concurrency']}, "
                  f"{h['rejected_429']} × 429"],
        ["records written per job, order waiting", f"{num(h['records_per_job'], 2)}: "
                                                   f"{per_key(h.get('records_per_job_by_topic'))}"],
        ["consumer hops per job, order waiting", f"{num(h.get('hops_per_job'), 2)}: "
                                                 f"{per_key(h.get('hops_per_job_by_agent'))}"],
        ["cores used", cores(h.get("cpu_cores"))],
    ]
    return ["## Slot handover", "", f"{h['clock']}.", "", table(rows, ["", ""]), ""]


def notify(n: dict[str, Any]) -> list[str]:
    rows = [
        ["all matched", lat(n["latency_ms"])],
        ["completed", lat(n["latency_ms_completed"])],
        ["running", lat(n["latency_ms_running"])],
        ["jobs", f"{n['accepted']:,} at {n['config']['rate']:g}/s; terminal seen on the socket {n['terminal_seen']:,}"],
        *[[f"hop: {hop}", lat(d)] for hop, d in (n.get("hops_ms") or {}).items()],
    ]
    return ["## Notification latency", "", f"{n['clock']}.", "",
            table(rows, ["webhook received → WebSocket message", ""]), ""]


def memory(m: dict[str, Any]) -> list[str]:
    cfg = m["config"]
    within = "yes" if m["within_tolerance"] else "no"
    def at(size: int, rss: int, fill: dict[str, Any], lines: dict[str, Any] | None) -> list[str]:
        read = ""
        if lines:  # measured once the dispatchers had stopped reading ahead
            read = f"; {lines['parked']:,} orders parked in the dispatchers' lines"
            if not lines.get("settled", True):
                read += " (still reading when measured)"
        return [f"{size:,} queued",
                f"{rss / 2**20:,.1f} MiB (admitted at {num(fill['admitted_per_s'], 0)} jobs/s{read})"]

    growth = (f"{m['growth']:+.1%} ({num(m['bytes_per_queued_job'], 0)} bytes per job); "
              f"within ±{cfg['tolerance']:.0%}: {within}")
    stalls = [(k, m[k]) for k in ("fill_small", "fill_large") if g(m, k, "stalled")]
    if stalls:
        lags = "; ".join(f"{k}: still behind {v.get('lag_at_end')}" for k, v in stalls)
        growth = f"not comparable — the worker stopped consuming (no progress for a minute): {lags}"
    rows = [
        ["idle", f"{m['rss_idle'] / 2**20:,.1f} MiB"],
        at(cfg["small"], m["rss_small"], m["fill_small"], m.get("lines_small")),
        at(cfg["large"], m["rss_large"], m["fill_large"], m.get("lines_large")),
        ["growth", growth],
        ["backlog in Kafka", f"{m['dispatch_lag_large']:,} dispatch records not yet consumed"],
    ]
    rate = max(g(m, "fill_small", "admitted_per_s", default=0.0), g(m, "fill_large", "admitted_per_s", default=0.0))
    note = (f"The large backlog here is {cfg['large']:,} jobs (default 100,000; `floodgate bench --memory-jobs "
            f"1000000` runs the target's size)")
    if cfg["large"] >= 1_000_000:
        note = f"The large backlog here is {cfg['large']:,} jobs, the target's size."
    elif rate > 0 and not stalls:
        note += (f": the worker admits about {num(rate, 0)} jobs/s on this machine, so 1,000,000 would take "
                 f"about {1_000_000 / rate / 60:,.0f} more minutes.")
    else:
        note += "."
    return ["## Memory", "", table(rows, ["worker RSS", ""]), "", note, ""]


def markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    parts = header(report["meta"]) + ["## Targets", "", targets_table(report["targets"]), ""]
    if "series" in r.get("spike", {}):
        parts += spike(r["spike"])
    if "series" in r.get("spike", {}):
        parts += waiting(r["spike"])
    if r.get("spike", {}).get("first_frame"):
        from floodgate.bench.firstframe import section as first_frame  # late: it draws with table() from here
        parts += first_frame(r["spike"]["first_frame"], r["spike"]["config"]["plan"]["time_factor"])
    if "outcomes" in r.get("baseline", {}) and "accepted" in r.get("spike", {}):
        parts += naive(r["baseline"], r["spike"])
    if "fixed" in r.get("accept", {}):
        parts += accept(r["accept"])
    if "jobs_per_s" in r.get("pipeline", {}):
        parts += pipeline(r["pipeline"], r.get("rawkafka", {}))
    if "latency_ms" in r.get("notify", {}):
        parts += notify(r["notify"])
    if "handover_ms" in r.get("handover", {}):
        parts += handover(r["handover"])
    if "rss_large" in r.get("memory", {}):
        parts += memory(r["memory"])
    if "systems" in r.get("peer", {}):
        from floodgate.bench.peerreport import section  # late: peerreport's table comes from here
        parts += section(r["peer"])
    parts += ["## What limits each number", ""] + [f"- **{name}**: {text}" for name, text in report["limits"]]
    for title, key in (("Scenarios that failed", "error"), ("Scenarios skipped", "skipped")):
        found = {k: v[key] for k, v in r.items() if isinstance(v, dict) and v.get(key)}
        if found:
            parts += ["", f"## {title}", ""] + [f"- **{k}**: {v}" for k, v in found.items()]
    if report.get("notes"):
        parts += ["", "## Notes", ""] + [f"- {x}" for x in report["notes"]]
    return "\n".join(parts) + "\n"
