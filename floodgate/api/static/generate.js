// The generation page: submit a job, then follow it live (WebSocket, else SSE, else polling) until
// its video plays. The jobs (id + token) live in this browser's localStorage so a reload resumes
// them; the page shows only what the API answers for an (id, token) pair, never anything else.
'use strict';

(function () {
  const { problemText, call, el, whyOutOfService } = window.Floodgate;
  const STORE = 'floodgate.jobs.v1';
  const USER = 'floodgate.user.v1';
  const KEY = 'floodgate.apikey.v1';
  const MAX_KEPT = 20;
  const TERMINAL = new Set(['completed', 'failed', 'cancelled', 'expired']);
  // Whether nothing can follow: an end the worker has recorded (`final`), not one told early.
  const settled = (job) => TERMINAL.has(job.status) && job.final !== false;
  const RANK = { queued: 0, submitted: 1, running: 2, completed: 3, failed: 3, cancelled: 3, expired: 3 };
  const LABELS = {
    loading: 'Loading…', queued: 'In line', submitted: 'Sent to the provider', running: 'Rendering',
    completed: 'Ready', failed: 'Failed', cancelled: 'Cancelled', expired: 'Expired', error: 'Unavailable',
  };

  const $ = (id) => document.getElementById(id);
  const form = $('gen'), modelSel = $('model'), promptIn = $('prompt'), selfieIn = $('selfie');
  const list = $('jobs'), tpl = $('job-tpl');
  let models = {};            // model name -> {providers: [...], serving}
  const cards = new Map();    // job_id -> Card

  // ---------------------------------------------------------------- storage
  function loadEntries() {
    try {
      const raw = JSON.parse(localStorage.getItem(STORE) || '[]');
      return Array.isArray(raw) ? raw.filter((e) => e && typeof e.job_id === 'string' && typeof e.token === 'string') : [];
    } catch (_) {
      return [];
    }
  }
  function saveEntries() {
    const entries = [...cards.values()].map((c) => c.entry).slice(0, MAX_KEPT);
    localStorage.setItem(STORE, JSON.stringify(entries));
  }
  function userId() {
    let id = localStorage.getItem(USER);
    if (!id) {
      const bytes = new Uint8Array(9);
      crypto.getRandomValues(bytes);
      id = 'web-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
      localStorage.setItem(USER, id);
    }
    return id;
  }

  // ---------------------------------------------------------------- helpers
  function providerNote(model, provider) {
    // "sora is retired since 2026-09-24: served by kling" when the model's first choice is not the one serving.
    const info = models[model];
    if (!info || !provider || !info.providers.length) return '';
    const first = info.providers[0];
    if (first.provider === provider) return '';
    const why = first.why_unavailable ? whyOutOfService(first.why_unavailable) : 'not taking jobs';
    return `${first.provider} is ${why}: served by ${provider}`;
  }
  function safeVideoUrl(url) {
    try {
      const u = new URL(url, location.href);
      return (u.protocol === 'https:' || u.protocol === 'http:') ? u.href : null;
    } catch (_) {
      return null;
    }
  }
  function clock(iso) {
    const d = iso ? new Date(iso) : new Date();
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }
  function authHeaders(token) {
    return { Authorization: `Bearer ${token}` };
  }

  // ---------------------------------------------------------------- a job's card
  class Card {
    constructor(entry) {
      this.entry = entry;
      this.job = null;
      this.provider = null;
      this.node = tpl.content.firstElementChild.cloneNode(true);
      this.node.dataset.jobId = entry.job_id;
      this.q = (sel) => this.node.querySelector(sel);
      this.q('.job-model').textContent = entry.model || 'video';
      this.q('.job-id').textContent = entry.job_id.slice(-8);
      this.q('.job-id').title = entry.job_id;
      this.q('.job-prompt').textContent = entry.prompt || '';
      this.q('.cancel').addEventListener('click', () => this.cancel());
      this.q('.retry').addEventListener('click', () => this.retry());
      this.q('.remove').addEventListener('click', () => this.remove());
    }

    setStatus(status) {
      const badge = this.q('.status');
      badge.dataset.status = status;
      badge.textContent = LABELS[status] || status;
      this.node.dataset.status = status;
    }

    log(text, at) {
      const item = el('li');
      item.append(el('time', { datetime: at || new Date().toISOString() }, clock(at)), ' ', el('span', { class: 'what' }, text));
      this.q('.timeline').append(item);
    }

    /** A job resource from any channel (a GET, the WebSocket, SSE); older or equal news is ignored. */
    update(job) {
      if (!job || job.job_id !== this.entry.job_id) return;
      const prev = this.job;
      // Channels overlap (a GET answered after a push): never step back, except to the line of
      // another provider (a reroute puts the job back in line there). An end is final, except
      // one not recorded yet (`final: false`): a provider's word is shown before the worker
      // records it, and when a cancel overtook the provider's completion there, the recorded end
      // is another.
      if (prev && TERMINAL.has(prev.status) && !(prev.final === false && TERMINAL.has(job.status))) return;
      if (prev && RANK[job.status] < RANK[prev.status] && job.provider === prev.provider) return;
      this.job = job;
      if (!prev || prev.status !== job.status) this.log(LABELS[job.status] || job.status, job.updated_at);
      if (job.provider && this.provider && job.provider !== this.provider) {
        this.log(`moved from ${this.provider} to ${job.provider}`, job.updated_at);
      }
      if (job.provider) this.provider = job.provider;
      this.render();
    }

    render() {
      const job = this.job;
      this.setStatus(job.status);
      if (job.model) this.q('.job-model').textContent = job.model;
      // Place in line and ETA: shown only when the job view gives them.
      const where = [];
      if (typeof job.queue_position === 'number') where.push(`Place in line: ${job.queue_position}`);
      if (job.status === 'submitted' && typeof job.provider_queue_position === 'number') {
        const ahead = job.provider_queue_position;
        where.push(`In ${job.provider || 'the provider'}'s own queue: ${ahead === 0 ? 'next' : `${ahead} ahead`}`);
      }
      // Until the provider starts it: in Floodgate's line, or in the provider's own queue.
      if (typeof job.eta_seconds === 'number') where.push(`about ${Math.max(1, Math.round(job.eta_seconds))} s to go`);
      // The route note ("sora is retired since …: served by kling") names the provider serving
      // the job: the status line then does not name it a second time.
      const note = providerNote(job.model || this.entry.model, job.provider);
      if (!where.length) {
        const named = note ? null : job.provider;
        where.push({
          queued: 'Waiting in line for a free provider slot.',
          submitted: named ? `Accepted by ${named}; waiting for it to start.` : 'Accepted; waiting for the provider to start it.',
          running: named ? `${named} is rendering.` : 'Rendering.',
          completed: named ? `Rendered by ${named}.` : 'Rendered.',
          failed: '', cancelled: 'Cancelled: nothing more will happen.',
          expired: 'Expired: its deadline passed before a provider slot was free.',
        }[job.status] || '');
      }
      this.q('.job-where').textContent = where.join(' · ');
      const route = this.q('.job-route');
      route.textContent = note;
      route.hidden = !note;

      const pct = job.status === 'completed' ? 100 : Math.round(Math.max(0, Math.min(1, job.progress || 0)) * 100);
      const bar = this.q('.bar');
      // Rendering with no reported progress yet: an indeterminate bar rather than an invented number.
      const unknown = job.status === 'running' && pct === 0;
      bar.classList.toggle('indeterminate', unknown);
      if (unknown) bar.removeAttribute('aria-valuenow'); else bar.setAttribute('aria-valuenow', String(pct));
      bar.setAttribute('aria-valuetext', unknown ? 'rendering, progress not reported yet' : `${pct}%`);
      this.q('.bar-fill').style.width = unknown ? '' : `${pct}%`;
      bar.hidden = TERMINAL.has(job.status) && job.status !== 'completed';

      const stage = this.q('.stage');
      const text = this.q('.stage-text');
      if (job.status !== 'completed') {
        stage.querySelector('video')?.remove();  // (an early end, corrected by the recorded one)
        text.hidden = false;
      }
      if (job.status === 'completed') {
        const url = job.result && safeVideoUrl(job.result.video_url);
        if (url && !stage.querySelector('video')) {
          const video = el('video', { controls: '', playsinline: '', preload: 'auto', src: url });
          video.setAttribute('aria-label', `Video for: ${this.entry.prompt || job.model || 'your prompt'}`);
          // The job is complete a moment before its video is in Floodgate's store (the link answers
          // 503 until the copy is there): try again a few times before saying it failed.
          let tries = 0;
          video.addEventListener('error', () => {
            if (tries < 8) {
              tries += 1;
              text.hidden = false;
              text.textContent = 'Storing your video…';
              setTimeout(() => video.load(), Math.min(250 * 2 ** tries, 5000));
              return;
            }
            text.hidden = false;
            text.textContent = 'The video could not be loaded. ';
            text.append(el('a', { href: url, rel: 'noopener noreferrer' }, 'Open it directly'));
          });
          video.addEventListener('loadeddata', () => { text.hidden = true; });
          stage.append(video);
          text.hidden = true;
        } else if (!url) {
          text.textContent = 'Completed, but no video address came with it.';
        }
      } else if (TERMINAL.has(job.status)) {
        text.textContent = {failed: 'No video: the job failed.', expired: 'No video: the job expired in line.'}[job.status]
          || 'No video: the job was cancelled.';
      } else {
        text.textContent = job.status === 'queued' ? 'Your video will play here.' : 'Rendering… your video will play here.';
      }

      const error = this.q('.job-error');
      error.hidden = job.status !== 'failed';
      if (job.status === 'failed') error.textContent = `The job failed: ${job.error || 'the provider gave no reason'}.`;
      this.q('.cancel').hidden = TERMINAL.has(job.status);
      this.q('.retry').hidden = job.status !== 'failed';
      this.q('.remove').hidden = !TERMINAL.has(job.status);
    }

    /** The job cannot be shown (wrong token, unknown id): say so, show nothing of any job. */
    fail(detail) {
      this.job = null;
      this.setStatus('error');
      this.q('.job-where').textContent = '';
      this.q('.job-route').hidden = true;
      this.q('.bar').hidden = true;
      this.q('.stage-text').textContent = 'Nothing to show.';
      const error = this.q('.job-error');
      error.hidden = false;
      error.textContent = `This job cannot be shown: ${detail}. Its link or token may be wrong or from another browser.`;
      this.q('.cancel').hidden = true;
      this.q('.retry').hidden = true;
      this.q('.remove').hidden = false;
      live.unwatch(this.entry.job_id);
    }

    async cancel() {
      const button = this.q('.cancel');
      button.disabled = true;
      button.textContent = 'Cancelling…';
      try {
        const r = await call(`/v1/jobs/${encodeURIComponent(this.entry.job_id)}/cancel`,
          { method: 'POST', headers: authHeaders(this.entry.token) });
        if (r.status === 202) {
          this.log('cancel asked');
          this.update(r.body);
        } else {
          this.showError(`Could not cancel: ${problemText(r.body, r.status)}`);
        }
      } catch (_) {
        this.showError('Could not cancel: the server is unreachable. Try again.');
      } finally {
        button.disabled = false;
        button.textContent = 'Cancel';
      }
    }

    showError(text) {
      const error = this.q('.job-error');
      error.hidden = false;
      error.textContent = text;
    }

    retry() {
      submit({ model: this.entry.model, prompt: this.entry.prompt, image_url: this.entry.image_url || null }, this);
    }

    remove() {
      live.unwatch(this.entry.job_id);
      cards.delete(this.entry.job_id);
      this.node.remove();
      saveEntries();
      refreshEmpty();
      $('jobs-h').focus();
    }
  }

  function refreshEmpty() {
    $('empty').hidden = cards.size > 0;
  }

  function addCard(entry, atTop) {
    const card = new Card(entry);
    cards.set(entry.job_id, card);
    if (atTop) list.prepend(card.node); else list.append(card.node);
    refreshEmpty();
    return card;
  }

  // ---------------------------------------------------------------- live updates
  // WebSocket first (one connection for every job); if it cannot be opened, Server-Sent Events per
  // job; if those fail too, a GET every few seconds. Every channel delivers the same job resource.
  class Live {
    constructor() {
      this.mode = null;
      this.ws = null;
      this.wsOpened = false;
      this.wsFailures = 0;
      this.sources = new Map();
      this.timer = null;
      this.watched = new Set();
    }

    say(text) {
      $('live').textContent = text;
      document.body.dataset.live = this.mode || '';
    }

    start() {
      if ('WebSocket' in window) this.openSocket(); else this.useSse();
    }

    openSocket() {
      this.mode = 'websocket';
      const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
      let ws;
      try {
        ws = new WebSocket(`${scheme}://${location.host}/v1/stream`);
      } catch (_) {
        this.useSse();
        return;
      }
      this.ws = ws;
      ws.addEventListener('open', () => {
        this.wsOpened = true;
        this.wsFailures = 0;
        this.say('Live updates: connected.');
        for (const id of this.watched) this.subscribe(id);
      });
      ws.addEventListener('message', (event) => {
        let msg;
        try { msg = JSON.parse(event.data); } catch (_) { return; }
        if (msg.type === 'job') cards.get(msg.job.job_id)?.update(msg.job);
        // Past the socket's limit of unfinished jobs the job is fine, only not followed here:
        // follow it over its own event stream instead.
        else if (msg.type === 'error' && msg.code === 'too_many_subscriptions' && cards.has(msg.job_id)) this.openSource(msg.job_id);
        else if (msg.type === 'error' && msg.job_id && cards.has(msg.job_id)) cards.get(msg.job_id).fail(msg.detail);
      });
      ws.addEventListener('close', () => {
        if (this.ws !== ws) return;
        this.ws = null;
        this.wsFailures += 1;
        if (!this.wsOpened || this.wsFailures > 3) {
          this.useSse();
          return;
        }
        this.say('Live updates: reconnecting…');
        setTimeout(() => this.openSocket(), 1000 * this.wsFailures);
      });
    }

    subscribe(id) {
      const card = cards.get(id);
      if (!card) return;
      if (this.mode === 'websocket' && this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify({ type: 'subscribe', job_id: id, token: card.entry.token }));
      } else if (this.mode === 'sse') {
        this.openSource(id);
      }
    }

    useSse() {
      if (!('EventSource' in window)) {
        this.usePolling();
        return;
      }
      this.mode = 'sse';
      this.say('Live updates: streaming each job.');
      for (const id of this.watched) this.openSource(id);
    }

    openSource(id) {
      const card = cards.get(id);
      if (!card || this.sources.has(id)) return;
      const source = new EventSource(`/v1/jobs/${encodeURIComponent(id)}/events?token=${encodeURIComponent(card.entry.token)}`);
      this.sources.set(id, source);
      let failures = 0;
      let heard = false;
      source.addEventListener('job', (event) => {
        failures = 0;
        heard = true;
        try { card.update(JSON.parse(event.data)); } catch (_) { /* a malformed event changes nothing */ }
        // Not closed at an end: the server ends the stream after the job's recorded end, which
        // may correct an end told early (see update).
      });
      source.addEventListener('error', () => {
        if (card.job && settled(card.job)) {
          this.closeSource(id);  // the server ended the stream after the job's end: no reconnecting
          return;
        }
        failures += 1;
        if (!heard || failures > 3) {
          // A stream that never delivered (blocked on the way, refused) or keeps dropping: poll.
          this.closeSource(id);
          this.usePolling();
        } else if (source.readyState === EventSource.CLOSED) {
          this.closeSource(id);
          fetchOnce(card);
        }
      });
    }

    closeSource(id) {
      const source = this.sources.get(id);
      if (source) source.close();
      this.sources.delete(id);
    }

    usePolling() {
      if (this.mode === 'polling') return;
      this.mode = 'polling';
      for (const id of [...this.sources.keys()]) this.closeSource(id);
      this.say('Live updates unavailable: checking every few seconds.');
      const tick = async () => {
        for (const id of this.watched) {
          const card = cards.get(id);
          if (card) await fetchOnce(card);
        }
      };
      this.timer = setInterval(tick, 3000);
      tick();
    }

    watch(id) {
      this.watched.add(id);
      this.subscribe(id);
    }

    unwatch(id) {
      this.watched.delete(id);
      this.closeSource(id);
      if (this.mode === 'websocket' && this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify({ type: 'unsubscribe', job_id: id }));
      }
    }
  }
  const live = new Live();

  async function fetchOnce(card) {
    try {
      const r = await call(`/v1/jobs/${encodeURIComponent(card.entry.job_id)}`, { headers: authHeaders(card.entry.token) });
      if (r.ok) {
        card.update(r.body);
        // An end not recorded yet may still change (see update): keep polling until it is.
        if (settled(r.body)) live.unwatch(card.entry.job_id);
      } else if (r.status === 404 || r.status === 401) {
        card.fail(problemText(r.body, r.status));
      } else {
        card.showError(`Could not read the job: ${problemText(r.body, r.status)}`);
      }
    } catch (_) {
      card.showError('The server is unreachable; the page keeps trying.');
    }
  }

  // ---------------------------------------------------------------- submitting
  function fieldError(id, text) {
    const node = $(id);
    node.hidden = !text;
    node.textContent = text || '';
  }

  async function uploadSelfie(file, headers) {
    const r = await call('/v1/uploads', { method: 'POST', headers: Object.assign({ 'Content-Type': file.type }, headers), body: file });
    if (r.status === 201) return { url: r.body.url };
    return { problem: r };
  }

  function apiHeaders() {
    const key = localStorage.getItem(KEY) || '';
    return key ? { 'X-API-Key': key } : {};
  }

  function askForKey(r) {
    $('key-row').hidden = false;
    $('apikey').focus();
    return `An API key is needed (${problemText(r.body, r.status)}).`;
  }

  /** Submit a job; ``replacing`` is the failed card a retry takes the place of. */
  async function submit(spec, replacing) {
    const button = $('generate');
    const status = $('form-status');
    const formError = $('form-error');
    formError.hidden = true;
    fieldError('prompt-error', '');
    fieldError('selfie-error', '');
    button.disabled = true;
    try {
      const headers = apiHeaders();
      let imageUrl = spec.image_url || null;
      if (spec.file) {
        status.textContent = 'Uploading your selfie…';
        const up = await uploadSelfie(spec.file, headers);
        if (!up.url) {
          const r = up.problem;
          if (r.status === 401 || r.status === 403) throw new Error(askForKey(r));
          fieldError('selfie-error', problemText(r.body, r.status));
          selfieIn.focus();
          return;
        }
        imageUrl = up.url;
      }
      status.textContent = 'Sending…';
      const body = { model: spec.model, user_id: userId(), input: { prompt: spec.prompt } };
      if (imageUrl) body.input.image_url = imageUrl;
      const r = await call('/v1/jobs', {
        method: 'POST', headers: Object.assign({ 'Content-Type': 'application/json' }, headers), body: JSON.stringify(body),
      });
      if (r.status !== 202) {
        if (r.status === 401 || r.status === 403) throw new Error(askForKey(r));
        const errors = (r.body && r.body.errors) || [];
        const promptProblem = errors.find((e) => e.field === 'input.prompt');
        if (promptProblem) {
          fieldError('prompt-error', promptProblem.message);
          promptIn.focus();
        }
        throw new Error(`The video was not started: ${problemText(r.body, r.status)}`);
      }
      const entry = { job_id: r.body.job_id, token: r.body.token, model: spec.model, prompt: spec.prompt,
        image_url: imageUrl, created: new Date().toISOString() };
      if (replacing) replacing.remove();
      const card = addCard(entry, true);
      card.update({ job_id: entry.job_id, status: 'queued', model: spec.model, provider: null, progress: 0,
        result: null, error: null, created_at: entry.created, updated_at: entry.created });
      saveEntries();
      live.watch(entry.job_id);
      status.textContent = 'Started: it is at the top of your list.';
      if (!replacing) {
        promptIn.value = '';
        selfieIn.value = '';
        $('selfie-preview').hidden = true;
      }
    } catch (err) {
      formError.hidden = false;
      formError.textContent = err instanceof TypeError ? 'The server is unreachable. Try again in a moment.' : err.message;
      status.textContent = '';
    } finally {
      button.disabled = false;
    }
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const prompt = promptIn.value.trim();
    if (!modelSel.value) {
      $('form-error').hidden = false;
      $('form-error').textContent = 'Choose a model first.';
      modelSel.focus();
      return;
    }
    if (!prompt) {
      fieldError('prompt-error', 'Type what the video should show.');
      promptIn.focus();
      return;
    }
    const file = selfieIn.files && selfieIn.files[0];
    submit({ model: modelSel.value, prompt, file: file || null });
  });

  selfieIn.addEventListener('change', () => {
    const file = selfieIn.files && selfieIn.files[0];
    const preview = $('selfie-preview');
    fieldError('selfie-error', '');
    if (!file) {
      preview.hidden = true;
      return;
    }
    if (!['image/jpeg', 'image/png', 'image/webp'].includes(file.type)) {
      fieldError('selfie-error', 'Choose a JPEG, PNG or WebP image.');
      selfieIn.value = '';
      preview.hidden = true;
      return;
    }
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
  });

  $('apikey').addEventListener('change', (event) => {
    localStorage.setItem(KEY, event.target.value.trim());
  });

  modelSel.addEventListener('change', showModelNote);

  function showModelNote() {
    const info = models[modelSel.value];
    const note = $('model-note');
    if (!info) {
      note.textContent = '';
      return;
    }
    if (!info.serving) note.textContent = 'No provider takes this model now.';
    else note.textContent = providerNote(modelSel.value, info.serving) || `Served by ${info.serving}.`;
  }

  async function loadModels() {
    try {
      const r = await call('/v1/models');
      if (!r.ok) throw new Error(problemText(r.body, r.status));
      models = {};
      modelSel.textContent = '';
      modelSel.append(el('option', { value: '' }, 'Choose a model'));
      for (const m of r.body.models) {
        models[m.model] = m;
        const option = el('option', { value: m.model }, m.serving ? m.model : `${m.model} (unavailable)`);
        if (!m.serving) option.disabled = true;
        modelSel.append(option);
      }
      const first = r.body.models.find((m) => m.serving);
      if (first) modelSel.value = first.model;
      showModelNote();
      for (const card of cards.values()) if (card.job) card.render();
    } catch (err) {
      modelSel.textContent = '';
      modelSel.append(el('option', { value: '' }, 'Models could not be loaded'));
      $('model-note').textContent = `Reload the page to try again (${err.message || 'the server is unreachable'}).`;
    }
  }

  // ---------------------------------------------------------------- start
  for (const entry of loadEntries()) if (!cards.has(entry.job_id)) addCard(entry, false);
  refreshEmpty();
  loadModels();
  live.start();
  for (const card of cards.values()) {
    fetchOnce(card).then(() => {
      if (card.job && !settled(card.job)) live.watch(card.entry.job_id);
    });
  }
})();
