// The operations dashboard: polls /dashboard/data once a second (the API sums every process's
// Prometheus figures) and draws plain SVG line charts of the last two minutes.
'use strict';

(function () {
  const { problemText, call, el, whyOutOfService } = window.Floodgate;
  const KEY = 'floodgate.operator.v1';
  const WINDOW = 120;   // seconds of history drawn, at most
  const MIN_WINDOW = 30; // a fresh dashboard draws its first half minute wide, not squeezed at the right
  const BIG = { w: 600, h: 200 }, SMALL = { w: 320, h: 170 };
  const PAD = { l: 44, r: 10, t: 10, b: 22 };
  const COLORS = ['#1d4ed8', '#b45309', '#047857', '#7c3aed', '#be123c', '#0e7490'];
  const $ = (id) => document.getElementById(id);
  const SVG = 'http://www.w3.org/2000/svg';
  let timer = null;
  let latest = null;

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** The top of a scale at or above ``value`` whose four equal steps are round numbers. */
  function niceMax(value) {
    if (!(value > 0)) return 1;
    const quarter = value / 4;
    const exp = Math.pow(10, Math.floor(Math.log10(quarter)));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * exp >= quarter) return 4 * step * exp;
    return 40 * exp;
  }

  function fmt(value) {
    if (value === null || value === undefined) return '–';
    if (value >= 100) return Math.round(value).toLocaleString();
    if (value >= 10) return value.toFixed(0);
    return value.toFixed(value >= 1 ? 1 : 2);
  }

  /**
   * One line chart in ``container``. ``series``: [{name, cls, color, dash, values: [[t, v|null]]}].
   * ``floor`` is the least y maximum (so a flat zero line still has a scale).
   */
  function lineChart(container, label, series, span, floor, emptyText, size) {
    // On a phone the big charts draw in the small box, so their labels stay readable.
    const { w: W, h: H } = size || (container.clientWidth < 520 ? SMALL : BIG);
    const [t0, now] = span;
    const width = now - t0;
    let svg = container.querySelector('svg');
    if (!svg) {
      svg = svgEl('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img' });
      container.append(svg);
      container.append(el('ul', { class: 'legend' }));
    }
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svg.setAttribute('aria-label', label);
    svg.textContent = '';
    const values = series.flatMap((s) => s.values.map((p) => p[1]).filter((v) => v !== null));
    const yMax = niceMax(Math.max(floor || 1, ...values) * 1.1);
    const x = (t) => PAD.l + ((t - t0) / width) * (W - PAD.l - PAD.r);
    const y = (v) => PAD.t + (1 - v / yMax) * (H - PAD.t - PAD.b);
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      svg.append(svgEl('line', { class: 'grid', x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v) }));
      svg.append(svgEl('text', { x: PAD.l - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmt(v)));
    }
    svg.append(svgEl('line', { class: 'axis', x1: PAD.l, x2: PAD.l, y1: PAD.t, y2: H - PAD.b }));
    svg.append(svgEl('text', { x: PAD.l, y: H - 6 }, width >= 120 ? '−2 min' : `−${Math.round(width)} s`));
    svg.append(svgEl('text', { x: W - PAD.r, y: H - 6, 'text-anchor': 'end' }, 'now'));
    for (const s of series) {
      let segment = [];
      const flush = () => {
        if (segment.length) {
          const attrs = { class: s.cls, stroke: s.color, points: segment.join(' '), 'data-series': s.name };
          if (s.dash) attrs['stroke-dasharray'] = '6 4';
          svg.append(svgEl('polyline', attrs));
        }
        segment = [];
      };
      for (const [t, v] of s.values) {
        if (t < t0) continue;
        if (v === null) flush(); else segment.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
      }
      flush();
    }
    if (!values.length || !series.some((s) => s.values.length)) {
      svg.append(svgEl('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, emptyText));
    }
    const legend = container.querySelector('.legend');
    legend.textContent = '';
    for (const s of series) {
      const last = s.values.length ? s.values[s.values.length - 1][1] : null;
      const item = el('li');
      const swatch = el('span', { class: 'swatch' });
      swatch.style.background = s.color;
      item.append(swatch, `${s.name}: ${fmt(last)}`);
      legend.append(item);
    }
  }

  /** Provider → "retired since 2026-09-24" or "disabled", for those that take no new jobs. */
  function outOfService(data) {
    const out = {};
    for (const [name, why] of Object.entries(data.unavailable || {})) {
      out[name] = whyOutOfService(why);
    }
    return out;
  }

  function pointsOf(data, pick) {
    return data.points.map((p) => [p.at, pick(p)]);
  }

  function render(data) {
    const now = data.points.length ? data.points[data.points.length - 1].at : data.now;
    const first = data.points.length ? data.points[0].at : now;
    const span = [now - Math.min(WINDOW, Math.max(MIN_WINDOW, now - first)), now];
    const providers = data.providers;
    const outs = outOfService(data);
    const chart = (name) => document.querySelector(`[data-chart="${name}"]`);
    const collecting = 'Collecting: rates need two readings';

    lineChart(chart('flow'), 'Arrivals and provider submissions per second', [
      { name: 'arrivals/s', cls: 'line-arrivals', color: '#b45309', values: pointsOf(data, (p) => p.arrivals) },
      { name: 'submissions/s', cls: 'line-submissions', color: '#1d4ed8', values: pointsOf(data, (p) => p.submissions) },
    ], span, 1, collecting);
    lineChart(chart('queue'), 'Queue depth per provider', providers.map((name, i) => ({
      name, cls: 'line-queue', color: COLORS[i % COLORS.length], values: pointsOf(data, (p) => p.queue_depth[name] ?? 0),
    })), span, 1, providers.length ? collecting : 'No worker reports yet');
    lineChart(chart('faults'), '429s, retries, reroutes and dead letters per second', [
      { name: '429s/s', cls: 'line-429', color: '#be123c', values: pointsOf(data, (p) => p.rate_limited) },
      { name: 'retries/s', cls: 'line-retries', color: '#b45309', values: pointsOf(data, (p) => p.retries) },
      { name: 'reroutes/s', cls: 'line-reroutes', color: '#7c3aed', values: pointsOf(data, (p) => p.reroutes) },
      { name: 'dead letters/s', cls: 'line-dlq', color: '#1a1a1a', values: pointsOf(data, (p) => p.dead_letters) },
    ], span, 1, collecting);
    lineChart(chart('accept'), 'Accept latency p50 and p99 over the last 10 s, milliseconds', [
      { name: 'p50', cls: 'line-p50', color: '#047857', values: pointsOf(data, (p) => p.accept_p50_ms) },
      { name: 'p99', cls: 'line-p99', color: '#be123c', values: pointsOf(data, (p) => p.accept_p99_ms) },
    ], span, 5, 'No requests in the last 10 s');
    lineChart(chart('e2e'), 'End-to-end latency p50 and p99 over the last 10 s, seconds', [
      { name: 'p50', cls: 'line-p50', color: '#047857', values: pointsOf(data, (p) => p.e2e_p50_s) },
      { name: 'p99', cls: 'line-p99', color: '#be123c', values: pointsOf(data, (p) => p.e2e_p99_s) },
    ], span, 1, 'No job completed in the last 10 s');

    const box = $('inflight');
    if (!providers.length) box.textContent = 'No worker reports yet.';
    for (const name of providers) {
      let card = box.querySelector(`[data-chart="inflight-${CSS.escape(name)}"]`);
      if (!card) {
        if (box.firstChild && box.firstChild.nodeType === Node.TEXT_NODE) box.textContent = '';
        card = el('section', { class: 'card chart', 'data-chart': `inflight-${name}`, 'data-provider': name });
        card.append(el('h3', {}, name));
        box.append(card);
      }
      const out = outs[name];
      card.querySelector('h3').textContent = out ? `${name} (${out})` : name;
      const limitMax = Math.max(1, ...data.points.map((p) => p.limit[name] ?? 0));
      lineChart(card, `${name}: jobs in flight against its concurrency limit`, [
        // The limit first, so the in-flight line is drawn over it where they meet.
        { name: 'limit', cls: 'line-limit', color: '#a61b1b', dash: true, values: pointsOf(data, (p) => p.limit[name] ?? 0) },
        { name: 'in flight', cls: 'line-inflight', color: '#047857', values: pointsOf(data, (p) => p.inflight[name] ?? 0) },
      ], span, limitMax, collecting, SMALL);
    }

    const totals = $('totals');
    totals.textContent = '';
    const t = data.totals;
    for (const [label, value] of [['accepted', t.accepted], ['submitted', t.submissions], ['429s', t.rate_limited],
      ['retries', t.retries], ['reroutes', t.reroutes], ['dead letters', t.dead_letters]]) {
      const item = el('div');
      item.append(el('dt', {}, label), el('dd', {}, Math.round(value).toLocaleString()));
      totals.append(item);
    }

    const breakers = $('breakers');
    breakers.textContent = '';
    if (!providers.length) breakers.append(el('li', { class: 'note' }, 'No provider yet.'));
    for (const name of providers) {
      // A retired or disabled provider takes no jobs whatever its breaker says: say that instead.
      const out = outs[name];
      const state = out ? 'out' : (data.breakers[name] || 'closed');
      const text = out ? `${out}, takes no new jobs` : (state === 'open' ? 'open (jobs move on)' : 'closed');
      breakers.append(el('li', { 'data-state': state, 'data-provider': name }, `${name}: ${text}`));
    }

    // Each provider's pace as its dispatchers measure it (what spillover and the backlog guard go by).
    const paces = $('paces');
    paces.textContent = '';
    if (!providers.length) paces.append(el('li', { class: 'note' }, 'No provider yet.'));
    for (const name of providers) {
      const pace = (data.paces || {})[name] || {};
      const out = outs[name];
      const text = pace.start_rate == null
        ? (out ? `${name}: ${out}, no line` : `${name}: pace not known yet`)
        : `${name}: starts ${pace.start_rate.toFixed(2)} jobs/s; ${Math.round(pace.queued)} queued, ` +
          `about ${Math.round(pace.wait_s)} s to start them all`;
      const attrs = { 'data-provider': name };
      if (out && pace.start_rate == null) attrs['data-state'] = 'out';
      paces.append(el('li', attrs, text));
    }

    const down = data.processes.down;
    $('state').textContent = `Updated ${new Date(data.now * 1000).toLocaleTimeString()} from ${data.processes.scraped} ` +
      `process${data.processes.scraped === 1 ? '' : 'es'}` + (down.length ? `; not answering: ${down.join(', ')}` : '.');

    const button = $('spike');
    const note = $('spike-note');
    const spike = data.spike;
    button.disabled = !data.dev_mode || spike.running;
    if (!data.dev_mode) note.textContent = 'The spike button works in dev mode only (floodgate dev, make demo).';
    else if (spike.running) note.textContent = `Spike running: ${spike.sent} of ${spike.jobs} sent, ${spike.accepted} accepted.`;
    else if (spike.jobs) note.textContent = `Last spike: ${spike.accepted} of ${spike.jobs} accepted.`;
    else note.textContent = 'Sends 300 jobs at 100/s to this API, as a viral moment would.';
  }

  function headers() {
    const key = sessionStorage.getItem(KEY);
    return key ? { 'X-Operator-Key': key } : {};
  }

  async function tick() {
    try {
      const r = await call('/dashboard/data', { headers: headers() });
      if (r.status === 401 || r.status === 403) {
        stop();
        $('key-form').hidden = false;
        $('key-why').textContent = problemText(r.body, r.status);
        $('state').textContent = 'The dashboard needs the operator key.';
        $('opkey').focus();
        return;
      }
      if (!r.ok) throw new Error(problemText(r.body, r.status));
      $('error').hidden = true;
      latest = r.body;
      render(r.body);
      document.body.dataset.readings = String(r.body.points.length);
    } catch (err) {
      $('error').hidden = false;
      $('error').textContent = `The figures could not be read (${err.message || 'the server is unreachable'}); retrying.`;
    }
  }

  function start() {
    if (timer === null) {
      tick();
      timer = setInterval(tick, 1000);
    }
  }
  function stop() {
    if (timer !== null) clearInterval(timer);
    timer = null;
  }

  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $('opkey').value.trim());
    $('key-form').hidden = true;
    start();
  });

  $('spike').addEventListener('click', async () => {
    const button = $('spike');
    button.disabled = true;
    $('spike-note').textContent = 'Starting the spike…';
    try {
      const r = await call('/dashboard/spike', {
        method: 'POST', headers: Object.assign({ 'Content-Type': 'application/json' }, headers()),
        body: JSON.stringify({ jobs: 300, rate: 100 }),
      });
      if (r.status !== 202) $('spike-note').textContent = `No spike: ${problemText(r.body, r.status)}`;
    } catch (_) {
      $('spike-note').textContent = 'No spike: the server is unreachable.';
      button.disabled = false;
    }
  });

  window.floodgateDashboard = { latest: () => latest };
  start();
})();
