// What both pages share: reading RFC 9457 problems, a small fetch wrapper, and how a provider
// out of service is named.
'use strict';

window.Floodgate = (function () {
  /** The human sentence of a problem+json body (its detail and each field's message). */
  function problemText(body, status) {
    if (body && typeof body === 'object') {
      const parts = [];
      if (Array.isArray(body.errors) && body.errors.length) {
        for (const e of body.errors) parts.push(`${e.field}: ${e.message}`);
      } else if (body.detail) {
        parts.push(body.detail);
      } else if (body.title) {
        parts.push(body.title);
      }
      if (parts.length) return parts.join('; ');
    }
    return `the server answered ${status}`;
  }

  /** fetch + JSON; never throws for HTTP errors: {ok, status, body}. Throws only when offline. */
  async function call(url, options) {
    const resp = await fetch(url, Object.assign({ cache: 'no-store' }, options || {}));
    let body = null;
    const type = resp.headers.get('content-type') || '';
    if (type.includes('json')) {
      try { body = await resp.json(); } catch (_) { body = null; }
    }
    return { ok: resp.ok, status: resp.status, body };
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** Why a provider takes no new jobs, as the API gives it (`retired <ISO instant>`, `disabled`),
   * said to people: "retired since 2026-09-24", "disabled". */
  function whyOutOfService(why) {
    return why.replace(/^retired (\d{4}-\d{2}-\d{2}).*$/, 'retired since $1');
  }

  return { problemText, call, el, whyOutOfService };
})();
