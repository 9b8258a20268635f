// Outpost console: a single page over the admin API. No framework, no build
// step. Every element is made with h() and filled with textContent, so data
// from the fleet never becomes markup; the CSP forbids inline script.
'use strict';

(function () {
  const TOKEN = 'outpost.token';
  const ROLE = 'outpost.role';
  const NAME = 'outpost.name';
  const ranks = { viewer: 1, operator: 2, admin: 3 };

  // ---- DOM helpers -------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'text') el.textContent = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  // put replaces el's children with the given ones, arrays flattened and
  // empty ones (null, false) left out.
  function put(el, ...children) {
    el.replaceChildren();
    return append(el, children);
  }

  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') el.textContent = v;
      else el.setAttribute(k, String(v));
    }
    for (const c of children.flat(Infinity)) if (c) el.append(c);
    return el;
  }

  // table makes a table of rows; a column given as null is left out.
  function table(cols, rows, opts) {
    opts = opts || {};
    cols = cols.filter(Boolean);
    const head = h('tr', {}, cols.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null, text: c.label })));
    const body = rows.map((r) => h('tr', {}, cols.map((c) => {
      const v = c.get(r);
      return h('td', { class: c.num ? 'num' : null, 'data-label': c.label }, v === undefined || v === null ? '' : v);
    })));
    return h('div', { class: 'table-wrap' },
      h('table', { class: 'collapse', 'aria-label': opts.label || null },
        h('thead', {}, head), h('tbody', {}, body)));
  }

  function badge(text, kind) { return h('span', { class: 'badge ' + (kind || '') }, text); }

  function kindOf(state) {
    switch (state) {
      case 'ok': case 'online': case 'completed': case 'committed': case 'active': case 'passed': case 'recovered':
        return 'ok';
      case 'degraded': case 'paused': case 'running': case 'drifting': case 'waiting': case 'in progress':
      case 'downloading': case 'validating': case 'probation': case 'baking':
        return 'warn';
      case 'failing': case 'failed': case 'halted': case 'aborted': case 'rolled_back': case 'rolled back':
      case 'offline': case 'broken':
        return 'bad';
    }
    return '';
  }

  function when(t) {
    if (!t) return '';
    const d = new Date(t);
    if (isNaN(d) || d.getFullYear() < 2000) return '';
    return d.toLocaleString();
  }

  function ago(t) {
    if (!t) return 'never';
    const sec = Math.round((Date.now() - new Date(t).getTime()) / 1000);
    if (sec < 60) return sec + ' s ago';
    if (sec < 3600) return Math.round(sec / 60) + ' min ago';
    if (sec < 86400) return Math.round(sec / 3600) + ' h ago';
    return Math.round(sec / 86400) + ' d ago';
  }

  function bytes(n) {
    if (!n) return '0 B';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + ' ' + u[i];
  }

  function num(v, digits) {
    if (v === undefined || v === null || isNaN(v)) return '–';
    return Number(v).toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 2 : digits });
  }

  function say(msg) {
    const st = document.getElementById('status');
    st.textContent = msg;
    clearTimeout(say.timer);
    say.timer = setTimeout(() => { st.textContent = ''; }, 4000);
  }

  // ---- API ---------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    const tok = sessionStorage.getItem(TOKEN);
    if (tok) headers.Authorization = 'Bearer ' + tok;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'the controller cannot be reached: ' + e.message);
    }
    let data = null;
    if ((res.headers.get('Content-Type') || '').includes('application/json')) {
      try { data = await res.json(); } catch (e) { data = null; }
    } else {
      await res.text();
    }
    if (res.status === 401 && sessionStorage.getItem(ROLE)) {
      logout('Your token was refused: log in again.');
      throw new ApiError(401, 'token refused');
    }
    if (!res.ok) throw new ApiError(res.status, (data && data.error) || res.status + ' ' + res.statusText);
    return data;
  }

  // optional fetches an endpoint that may not exist on this controller (or
  // have nothing yet): null on 404.
  async function optional(path) {
    try {
      return await api('GET', path);
    } catch (e) {
      if (e.status === 404) return null;
      throw e;
    }
  }

  function role() { return sessionStorage.getItem(ROLE) || ''; }
  function canOperate() { return (ranks[role()] || 0) >= ranks.operator; }

  // ---- views and routing -------------------------------------------------

  // view is the generation of the page shown; pollers stop when it moves.
  let view = 0;
  const main = () => document.getElementById('main');

  function show(title, ...children) {
    document.title = title + ' · Outpost console';
    const m = main();
    put(m, children);
    return m;
  }

  function failure(e) {
    if (!(e instanceof ApiError) || e.status === 0 || e.status >= 500) console.error('console:', e.message);
    return h('p', { class: 'error', role: 'alert' }, e.message);
  }

  async function poll(gen, every, fn) {
    while (gen === view) {
      try { await fn(); } catch (e) {
        if (gen !== view) return;
        if (e.status === 401) return;
        if (e.status === 404) return notFound(e);
        say(e.message);
      }
      await new Promise((r) => setTimeout(r, every));
    }
  }

  function route() {
    view++;
    const gen = view;
    const hash = location.hash.replace(/^#/, '') || '/';
    const [path, query] = hash.split('?');
    const params = new URLSearchParams(query || '');
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    if (!sessionStorage.getItem(ROLE)) {
      chrome(false);
      return loginPage();
    }
    chrome(true, parts[0] || 'overview');
    const pages = {
      overview: () => overviewPage(gen),
      devices: () => parts[1] ? devicePage(gen, parts[1]) : devicesPage(gen, params),
      rollouts: () => parts[1] ? rolloutPage(gen, parts[1]) : rolloutsPage(gen),
      models: () => parts[1] ? modelPage(gen, parts[1], params) : modelsPage(gen),
    };
    const page = pages[parts[0] || 'overview'];
    if (!page) return notFound(new ApiError(404, 'No page at ' + location.hash + '.'));
    page().catch((e) => {
      if (gen !== view) return;
      if (e.status === 404) notFound(e);
      else main().append(failure(e));
    });
  }

  function notFound(e) {
    show('Not found', h('h1', {}, 'Not found'), h('p', { class: 'error', role: 'alert' }, e.message),
      h('p', {}, h('a', { href: '#/' }, 'Back to the overview')));
    focusMain();
  }

  function chrome(loggedIn, section) {
    document.getElementById('nav').hidden = !loggedIn;
    document.getElementById('who').hidden = !loggedIn;
    if (!loggedIn) return;
    const name = sessionStorage.getItem(NAME);
    document.getElementById('who-name').textContent = (name ? name + ' · ' : '') + role();
    for (const a of document.querySelectorAll('[data-nav]')) {
      if (a.dataset.nav === section) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
  }

  function go(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  function focusMain() {
    const h1 = main().querySelector('h1');
    (h1 || main()).setAttribute('tabindex', '-1');
    (h1 || main()).focus({ preventScroll: false });
  }

  // ---- login -------------------------------------------------------------

  function loginPage(message) {
    const err = h('p', { class: 'error', role: 'alert', id: 'login-error', hidden: !message }, message || '');
    const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false',
      'aria-describedby': 'token-hint login-error' });
    const form = h('form', { class: 'panel', id: 'login-form', onsubmit: async (ev) => {
      ev.preventDefault();
      const tok = input.value.trim();
      sessionStorage.setItem(TOKEN, tok);
      sessionStorage.removeItem(ROLE);
      try {
        const me = await api('GET', '/v1/whoami');
        sessionStorage.setItem(ROLE, me.role);
        sessionStorage.setItem(NAME, tok ? me.name || me.id || '' : me.id + ' (bootstrap: no token exists)');
        go(location.hash && !location.hash.startsWith('#/login') ? location.hash : '#/');
      } catch (e) {
        sessionStorage.removeItem(TOKEN);
        err.hidden = false;
        err.textContent = e.status === 401 ? 'That token was refused.' : e.message;
        input.focus();
      }
    } },
    h('div', { class: 'field' },
      h('label', { for: 'token' }, 'Admin API token'),
      input,
      h('p', { class: 'hint', id: 'token-hint' }, 'A token from ', h('code', {}, 'outpost-fleet tokens create'),
        '. It is kept in this tab only and forgotten when the tab closes. ' +
        'Leave it empty on a controller that has no token yet (bootstrap mode, from this machine only).')),
    h('button', { type: 'submit', id: 'login' }, 'Log in'));
    show('Log in', h('div', { class: 'login' }, h('h1', {}, 'Log in to the fleet'), err, form));
    input.focus();
  }

  function logout(message) {
    sessionStorage.removeItem(TOKEN);
    sessionStorage.removeItem(ROLE);
    sessionStorage.removeItem(NAME);
    view++;
    chrome(false);
    loginPage(message);
  }

  // ---- overview ----------------------------------------------------------

  async function overviewPage(gen) {
    show('Overview', h('h1', {}, 'Fleet overview'), h('p', { class: 'muted' }, 'Loading…'));
    focusMain();
    await poll(gen, 5000, async () => {
      // Only the active rollouts: every report listed reads its assignments.
      const [sum, active] = await Promise.all([api('GET', '/v1/overview'), api('GET', '/v1/rollouts?state=running,paused')]);
      if (gen !== view) return;
      const health = sum.health || {};
      const focused = document.activeElement;
      const keep = focused && main().contains(focused) && focused.tagName === 'A' ? focused.getAttribute('href') : null;
      show('Overview',
        h('h1', {}, 'Fleet overview'),
        h('div', { class: 'cards' },
          h('section', { class: 'card', 'aria-labelledby': 'c-dev' }, h('h2', { id: 'c-dev' }, 'Devices online'),
            h('div', { class: 'big', id: 'online-count' }, num(sum.online, 0), h('span', { class: 'muted' }, ' / ' + num(sum.devices, 0)))),
          h('section', { class: 'card', 'aria-labelledby': 'c-ro' }, h('h2', { id: 'c-ro' }, 'Rollouts active'),
            h('div', { class: 'big' }, num(active.length, 0))),
          h('section', { class: 'card', 'aria-labelledby': 'c-h' }, h('h2', { id: 'c-h' }, 'Health'),
            h('div', { class: 'actions' }, ['ok', 'degraded', 'failing', 'unknown'].map((k) =>
              badge(k + ' ' + num(health[k] || 0, 0), kindOf(k)))))),
        h('h2', {}, 'Versions running'),
        sum.versions.length ? table([
          { label: 'Model', get: (v) => h('a', { href: '#/models/' + encodeURIComponent(v.model) }, v.model) },
          { label: 'Version', num: true, get: (v) => v.version },
          { label: 'Devices', num: true, get: (v) => num(v.devices, 0) },
        ], sum.versions, { label: 'Versions running' }) : h('p', { class: 'empty' }, 'No device reports a model yet.'),
        h('h2', {}, 'Active rollouts'),
        active.length ? rolloutTable(active) : h('p', { class: 'empty' }, 'No rollout is running or paused.'),
        Object.keys(sum.updates || {}).length ? [h('h2', {}, 'Devices by update state'),
          table([{ label: 'State', get: (k) => badge(k, kindOf(k)) }, { label: 'Devices', num: true, get: (k) => num(sum.updates[k], 0) }],
            Object.keys(sum.updates).sort(), { label: 'Devices by update state' })] : null);
      if (keep) { const a = main().querySelector('a[href="' + CSS.escape(keep) + '"]'); if (a) a.focus(); }
    });
  }

  function rolloutTable(ros) {
    return table([
      { label: 'Rollout', get: (r) => h('a', { href: '#/rollouts/' + encodeURIComponent(r.id) }, r.id) },
      { label: 'Model', get: (r) => r.model + ' v' + r.version },
      { label: 'State', get: (r) => badge(r.state, kindOf(r.state)) },
      { label: 'Wave', get: (r) => (r.waves && r.waves.length ? (Math.min(r.wave + 1, r.waves.length)) + ' of ' + r.waves.length : '') },
      { label: 'Committed', get: (r) => h('span', {}, num(r.committed, 0) + ' / ' + num(r.devices, 0)) },
      { label: 'Created', get: (r) => when(r.created) },
    ], ros, { label: 'Rollouts' });
  }

  // ---- devices -----------------------------------------------------------

  async function devicesPage(gen, params) {
    const q = params.get('q') || '';
    const cursors = ['']; // the cursor of each page seen, for Previous
    let page = 0;
    const input = h('input', { id: 'device-q', name: 'q', type: 'search', value: q, autocomplete: 'off',
      'aria-describedby': 'device-q-hint', 'aria-controls': 'device-results' });
    const results = h('div', { id: 'device-results', 'aria-live': 'polite' });
    let timer = null;
    let seq = 0;
    const load = async () => {
      const my = ++seq;
      const qs = new URLSearchParams({ limit: '50' });
      if (input.value.trim()) qs.set('q', input.value.trim());
      if (cursors[page]) qs.set('cursor', cursors[page]);
      let p;
      try {
        p = await api('GET', '/v1/devices?' + qs);
      } catch (e) {
        if (my === seq && gen === view) put(results, failure(e));
        return;
      }
      if (my !== seq || gen !== view) return;
      if (p.next_cursor) cursors[page + 1] = p.next_cursor;
      const from = page * 50;
      put(results,
        h('p', { id: 'device-count' }, p.total === 0 ? 'No device matches.' :
          'Devices ' + num(from + 1, 0) + '–' + num(from + p.devices.length, 0) + ' of ' + num(p.total, 0) +
          (input.value.trim() ? ' matching “' + input.value.trim() + '”' : '')),
        p.devices.length ? table([
          { label: 'Device', get: (d) => h('a', { href: '#/devices/' + encodeURIComponent(d.id), class: 'device-link' }, d.id) },
          { label: 'State', get: (d) => badge(d.online ? 'online' : 'offline', d.online ? 'ok' : 'bad') },
          { label: 'Models', get: (d) => (d.models || []).map((m) => m.name + ' v' + m.version).join(', ') },
          { label: 'Health', get: (d) => badge((d.health && d.health.status) || 'unknown', kindOf(d.health && d.health.status)) },
          { label: 'Labels', get: (d) => Object.entries(d.labels || {}).map(([k, v]) => k + '=' + v).join(' ') },
          { label: 'Last seen', get: (d) => ago(d.last_seen) },
        ], p.devices, { label: 'Devices' }) : null,
        h('div', { class: 'pager' },
          h('button', { type: 'button', class: 'secondary', id: 'prev', disabled: page === 0,
            onclick: () => { page--; load(); } }, '← Previous'),
          h('button', { type: 'button', class: 'secondary', id: 'next', disabled: !p.next_cursor,
            onclick: () => { page++; load(); } }, 'Next →')));
    };
    const restart = () => {
      page = 0;
      cursors.length = 1;
      const v = input.value.trim();
      history.replaceState(null, '', '#/devices' + (v ? '?q=' + encodeURIComponent(v) : ''));
      load();
    };
    input.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(restart, 250); });
    show('Devices',
      h('h1', {}, 'Devices'),
      h('form', { class: 'inline', role: 'search', onsubmit: (ev) => { ev.preventDefault(); clearTimeout(timer); restart(); } },
        h('div', { class: 'field' },
          h('label', { for: 'device-q' }, 'Search devices'),
          input,
          h('div', { class: 'hint', id: 'device-q-hint' }, 'Part of an id, a label or an agent version')),
        h('button', { type: 'submit' }, 'Search')),
      results);
    input.focus();
    await load();
  }

  async function devicePage(gen, id) {
    const enc = encodeURIComponent(id);
    const d = await api('GET', '/v1/devices/' + enc);
    if (gen !== view) return;
    const health = d.health || {};
    const upd = d.update;
    const sections = {
      history: h('section', { 'aria-labelledby': 'h-hist' }, h('h2', { id: 'h-hist' }, 'Update history'), h('p', { class: 'muted' }, 'Loading…')),
      health: h('section', { 'aria-labelledby': 'h-health' }, h('h2', { id: 'h-health' }, 'Health over 24 hours'), h('p', { class: 'muted' }, 'Loading…')),
      audit: h('section', { 'aria-labelledby': 'h-audit' }, h('h2', { id: 'h-audit' }, 'Audit trail'), h('p', { class: 'muted' }, 'Loading…')),
    };
    show(id,
      h('p', {}, h('a', { href: '#/devices' }, '← Devices')),
      h('h1', {}, id, ' ', badge(d.online ? 'online' : 'offline', d.online ? 'ok' : 'bad')),
      h('dl', { class: 'kv' },
        h('dt', {}, 'Last seen'), h('dd', {}, ago(d.last_seen) + (d.last_seen ? ' (' + when(d.last_seen) + ')' : '')),
        h('dt', {}, 'Agent'), h('dd', {}, d.agent_version || '–'),
        h('dt', {}, 'Labels'), h('dd', {}, Object.entries(d.labels || {}).map(([k, v]) => k + '=' + v).join(', ') || '–'),
        h('dt', {}, 'Health'), h('dd', {}, badge(health.status || 'unknown', kindOf(health.status)),
          health.uptime_seconds ? ' up ' + Math.round(health.uptime_seconds / 3600) + ' h' : '',
          health.requests ? ', ' + num(health.requests, 0) + ' requests, ' + num(health.errors || 0, 0) + ' errors' : ''),
        h('dt', {}, 'Telemetry'), h('dd', {}, num((d.telemetry || {}).records || 0, 0) + ' records, last ' + ago((d.telemetry || {}).last))),
      h('h2', {}, 'Models'),
      (d.models || []).length ? table([
        { label: 'Model', get: (m) => h('a', { href: '#/models/' + encodeURIComponent(m.name) }, m.name) },
        { label: 'Version', num: true, get: (m) => m.version },
        { label: 'Previous', num: true, get: (m) => m.previous || '' },
        { label: 'Digest', get: (m) => h('code', {}, (m.digest || '').slice(0, 19)) },
      ], d.models, { label: 'Models' }) : h('p', { class: 'empty' }, 'The device serves no model.'),
      upd ? [h('h2', {}, 'Current update'), h('dl', { class: 'kv' },
        h('dt', {}, 'Model'), h('dd', {}, upd.model + ' v' + upd.version),
        h('dt', {}, 'State'), h('dd', {}, badge(upd.state, kindOf(upd.state)), upd.error ? ' ' + upd.error : ''),
        h('dt', {}, 'Rollout'), h('dd', {}, upd.rollout_id ? h('a', { href: '#/rollouts/' + encodeURIComponent(upd.rollout_id) }, upd.rollout_id) : '–'),
        h('dt', {}, 'Downloaded'), h('dd', {}, upd.total_bytes ? bytes(upd.progress_bytes) + ' of ' + bytes(upd.total_bytes) : '–'))] : null,
      sections.history, sections.health, sections.audit);
    focusMain();
    const fill = (sec, ...content) => put(sec, sec.firstChild, content);
    const jobs = [
      optional('/v1/devices/' + enc + '/updates').then((u) => {
        const ups = (u && u.updates) || [];
        fill(sections.history, ups.length ? table([
          { label: 'Rollout', get: (a) => h('a', { href: '#/rollouts/' + encodeURIComponent(a.rollout) }, a.rollout) },
          { label: 'Wave', num: true, get: (a) => a.wave + 1 },
          { label: 'State', get: (a) => badge(a.state || 'pending', kindOf(a.state)) },
          { label: 'Sent', get: (a) => when(a.sent) },
          { label: 'Updated', get: (a) => when(a.updated) },
          { label: 'Error', get: (a) => a.error || '' },
        ], ups, { label: 'Update history' }) : h('p', { class: 'empty' }, 'No rollout included this device.'));
      }),
      optional('/v1/devices/' + enc + '/health?since=24h').then((hh) => {
        const pts = (hh && hh.points) || [];
        if (!pts.length) return fill(sections.health, h('p', { class: 'empty' }, 'No health history recorded for this device yet.'));
        const t = (p) => new Date(p.time).getTime();
        fill(sections.health, h('div', { class: 'charts' },
          lineChart('CPU and memory', '%', [
            { name: 'CPU %', points: pts.map((p) => [t(p), p.cpu_percent]) },
            { name: 'Memory %', points: pts.map((p) => [t(p), p.mem_total_bytes ? 100 * p.mem_used_bytes / p.mem_total_bytes : null]) },
            { name: 'Disk %', points: pts.map((p) => [t(p), p.disk_total_bytes ? 100 * p.disk_used_bytes / p.disk_total_bytes : null]) },
          ]),
          lineChart('Load and temperature', '', [
            { name: 'Load (1 min)', points: pts.map((p) => [t(p), p.load1]) },
            { name: 'Temperature °C', points: pts.map((p) => [t(p), p.temperature_c]) },
          ])));
      }),
      optional('/v1/devices/' + enc + '/audit?limit=50').then((a) => {
        const recs = (a && a.records) || [];
        fill(sections.audit, recs.length ? table([
          { label: 'Seq', num: true, get: (r) => r.seq },
          { label: 'Time', get: (r) => when(r.time) },
          { label: 'Model', get: (r) => r.model || '' },
          { label: 'Actor', get: (r) => r.actor },
          { label: 'Action', get: (r) => r.action },
          { label: 'Outcome', get: (r) => r.outcome },
          { label: 'Detail', get: (r) => r.detail || '' },
          { label: 'Chain', get: (r) => badge(r.chain, r.chain === 'ok' ? 'ok' : 'bad') },
        ], recs, { label: 'Audit trail' }) : h('p', { class: 'empty' }, 'No audit records from this device yet.'));
      }),
    ];
    for (const [j, sec] of [[jobs[0], sections.history], [jobs[1], sections.health], [jobs[2], sections.audit]]) {
      j.catch((e) => { if (gen === view) fill(sec, failure(e)); });
    }
    await Promise.allSettled(jobs);
  }

  // ---- rollouts ----------------------------------------------------------

  const ROLLOUTS_SHOWN = 50;

  async function rolloutsPage(gen) {
    show('Rollouts', h('h1', {}, 'Rollouts'), h('p', { class: 'muted' }, 'Loading…'));
    focusMain();
    let first = true;
    await poll(gen, 2000, async () => {
      const ros = await api('GET', '/v1/rollouts?limit=' + ROLLOUTS_SHOWN);
      if (gen !== view) return;
      ros.reverse(); // newest first
      const focused = document.activeElement && document.activeElement.getAttribute('href');
      show('Rollouts', h('h1', {}, 'Rollouts'),
        canOperate() ? h('p', {}, 'Start a rollout from a ', h('a', { href: '#/models' }, 'model'), '’s page.') : null,
        ros.length ? rolloutTable(ros) : h('p', { class: 'empty' }, 'No rollout yet.'),
        ros.length === ROLLOUTS_SHOWN ? h('p', { class: 'muted' }, 'The ' + ROLLOUTS_SHOWN + ' newest; outpost-fleet rollout status lists all.') : null);
      if (focused) { const a = main().querySelector('a[href="' + CSS.escape(focused) + '"]'); if (a) a.focus(); }
      if (first) { focusMain(); first = false; }
    });
  }

  // phasesText says which phases a rollout's waves go through ("shadow
  // 10% for 15m, canary 5% for 10m, analysis"); empty without any.
  function phasesText(r) {
    const parts = [];
    for (const [name, p] of [['shadow', r.shadow], ['canary', r.canary]]) {
      if (p) parts.push(name + ' ' + p.percent + '% for ' + duration(p.duration));
    }
    if (r.analysis) parts.push('analysis');
    return parts.join(', ');
  }

  // duration formats nanoseconds as the API sends them: "15m", "1h30m", "4s".
  function duration(ns) {
    let sec = Math.round(ns / 1e9);
    const out = [];
    for (const [unit, n] of [['h', 3600], ['m', 60]]) {
      if (sec >= n) { out.push(Math.floor(sec / n) + unit); sec %= n; }
    }
    if (sec || !out.length) out.push(sec + 's');
    return out.join('');
  }

  function decisionKind(action) {
    if (action === 'failed' || action === 'timeout-halt' || action.endsWith('-fail')) return 'bad';
    if (action.endsWith('-paused') || action.endsWith('-wait') || action.endsWith('-marginal')) return 'warn';
    return 'ok';
  }

  function verdictKind(v) {
    return { pass: 'ok', fail: 'bad', marginal: 'warn', wait: 'warn' }[v] || '';
  }

  // analysesSection shows a rollout's analyses, the newest first: one per
  // wave and phase, each with its metrics against the baseline.
  function analysesSection(reps) {
    if (!reps.length) return null;
    const val = (v, unit) => num(v, 4) + (unit ? ' ' + unit : '');
    return h('section', { id: 'analyses', 'aria-labelledby': 'h-analyses' }, h('h2', { id: 'h-analyses' }, 'Analyses'),
      reps.slice().reverse().map((a, i) => {
        const title = 'Wave ' + (a.wave + 1) + ' ' + a.phase;
        const id = 'h-analysis-' + i;
        return h('article', { class: 'analysis', 'data-phase': a.phase, 'data-verdict': a.verdict, 'aria-labelledby': id },
          h('h3', { id }, title, ' ', badge(a.verdict, verdictKind(a.verdict)), ' score ' + num(a.score, 0)),
          h('p', { class: 'muted' }, 'v' + a.candidate + ' against v' + a.baseline + ', ' + when(a.from) + ' – ' + when(a.to) +
            (a.reason ? '. ' + a.reason : '')),
          (a.metrics || []).length ? table([
            { label: 'Metric', get: (m) => m.name + (m.critical ? ' (critical)' : '') },
            { label: 'Baseline v' + a.baseline, num: true, get: (m) => val(m.baseline, m.unit) },
            { label: 'Candidate v' + a.candidate, num: true, get: (m) => val(m.candidate, m.unit) },
            { label: 'N', num: true, get: (m) => m.baseline_n + ' / ' + m.candidate_n },
            { label: 'p', num: true, get: (m) => m.p ? m.p.toPrecision(2) : '' },
            { label: 'Verdict', get: (m) => badge(m.verdict, verdictKind(m.verdict)) },
            { label: 'Why', get: (m) => m.reason || '' },
          ], a.metrics, { label: title + ' metrics' }) : null);
      }));
  }

  async function rolloutPage(gen, id) {
    const enc = encodeURIComponent(id);
    const head = h('div');
    const waves = h('section', { 'aria-labelledby': 'h-waves' });
    const actions = h('div', { class: 'actions', id: 'rollout-actions' });
    const devs = h('section', { 'aria-labelledby': 'h-devs' }, h('h2', { id: 'h-devs' }, 'Devices'));
    const msg = h('p', { class: 'error', role: 'alert', hidden: true });
    show(id, h('p', {}, h('a', { href: '#/rollouts' }, '← Rollouts')), h('h1', { id: 'rollout-title' }, 'Rollout ', id),
      head, msg, actions, waves, devs);
    focusMain();
    let lastState = '';
    let tick = 0;
    let abortOpen = false;
    let actionsFor = null; // the state the buttons were made for
    const act = async (action, body) => {
      msg.hidden = true;
      for (const b of actions.querySelectorAll('button')) b.disabled = true;
      try {
        const rep = await api('POST', '/v1/rollouts/' + enc + '/' + action, body);
        abortOpen = false;
        actionsFor = null;
        render(rep);
      } catch (e) {
        msg.hidden = false;
        msg.textContent = action + ': ' + e.message;
      }
      for (const b of actions.querySelectorAll('button')) b.disabled = false;
    };
    const render = (r) => {
      if (lastState && r.state !== lastState) say('Rollout ' + r.state + '.');
      lastState = r.state;
      const running = r.state === 'running';
      const paused = r.state === 'paused';
      put(head, h('dl', { class: 'kv' },
        h('dt', {}, 'State'), h('dd', {}, badge(r.state, kindOf(r.state), ), h('span', { id: 'rollout-state', class: 'sr-only' }, r.state),
          r.reason ? ' ' + r.reason : ''),
        h('dt', {}, 'Model'), h('dd', {}, h('a', { href: '#/models/' + encodeURIComponent(r.model) }, r.model), ' v' + r.version),
        h('dt', {}, 'Devices'), h('dd', {}, num(r.committed, 0) + ' of ' + num(r.devices, 0) + ' committed' +
          (r.verified ? ' (' + num(r.verified, 0) + ' verified)' : '')),
        h('dt', {}, 'Moved'), h('dd', {}, bytes(r.bytes_moved)),
        r.selector ? [h('dt', {}, 'Selector'), h('dd', {}, Object.entries(r.selector).map(([k, v]) => k + '=' + v).join(', '))] : null,
        phasesText(r) ? [h('dt', {}, 'Phases'), h('dd', {}, phasesText(r))] : null,
        r.phase && (running || paused) ? [h('dt', {}, 'Phase'), h('dd', { id: 'rollout-phase' }, 'wave ' + (r.wave + 1) + ' ' + r.phase +
          (r.phase_started ? ', since ' + when(r.phase_started) : ', waiting for its devices') +
          (r.phase_ends_at ? ', window until ' + when(r.phase_ends_at) : ''))] : null,
        r.waiting ? [h('dt', {}, 'Waiting'), h('dd', {}, r.waiting)] : null,
        h('dt', {}, 'Created'), h('dd', {}, when(r.created)),
        r.finished ? [h('dt', {}, 'Finished'), h('dd', {}, when(r.finished))] : null));
      if (canOperate() && (running || paused)) {
        if (actionsFor !== r.state) {
          const had = actions.contains(document.activeElement);
          actionsFor = r.state;
          const reason = h('input', { id: 'abort-reason', type: 'text', autocomplete: 'off' });
          put(actions,
            running ? h('button', { type: 'button', id: 'pause', class: 'secondary', onclick: () => act('pause') }, 'Pause') : null,
            paused ? h('button', { type: 'button', id: 'resume', onclick: () => act('resume') }, 'Resume') : null,
            h('button', { type: 'button', id: 'abort', class: 'danger', 'aria-expanded': String(abortOpen), 'aria-controls': 'abort-form',
              onclick: (ev) => {
                abortOpen = !abortOpen;
                ev.currentTarget.setAttribute('aria-expanded', String(abortOpen));
                document.getElementById('abort-form').hidden = !abortOpen;
                if (abortOpen) reason.focus();
              } }, 'Abort…'),
            h('form', { id: 'abort-form', class: 'inline panel', hidden: !abortOpen, onsubmit: (ev) => {
              ev.preventDefault();
              act('abort', reason.value.trim() ? { reason: reason.value.trim() } : undefined);
            } },
            h('div', { class: 'field' }, h('label', { for: 'abort-reason' }, 'Reason (optional)'), reason),
            h('button', { type: 'submit', id: 'abort-confirm', class: 'danger' }, 'Abort the rollout')));
          if (had) actions.querySelector('button').focus();
        }
      } else if (actionsFor !== r.state) {
        const had = actions.contains(document.activeElement);
        actionsFor = r.state;
        put(actions);
        if (had) focusMain();
      }
      put(waves, h('h2', { id: 'h-waves' }, 'Waves'), table([
        { label: 'Wave', get: (w) => (r.wave_progress.indexOf(w) + 1) + ' (' + w.percent + '%)' },
        { label: 'Gate', get: (w) => badge(w.gate, kindOf(w.gate)) },
        { label: 'Progress', get: (w) => {
          const done = (w.counts && w.counts.active) || 0;
          return h('span', { class: 'progress' }, h('progress', { max: Math.max(w.devices, 1), value: done,
            'aria-label': 'Wave ' + (r.wave_progress.indexOf(w) + 1) + ': ' + done + ' of ' + w.devices + ' devices active' }),
          ' ' + done + ' / ' + w.devices);
        } },
        r.phase ? { label: 'Phase', get: (w) => w.phase ? badge(w.phase, w.phase === 'done' ? 'ok' : '') : '' } : null,
        r.phase ? { label: 'Trial devices', num: true, get: (w) => w.trial_devices || 0 } : null,
        { label: 'Successes', get: (w) => w.successes + ' (needs ' + w.needed + ')' },
        { label: 'By state', get: (w) => Object.entries(w.counts || {}).filter(([, n]) => n).map(([k, n]) => k + ' ' + n).join(', ') },
        { label: 'Offline', num: true, get: (w) => w.offline || 0 },
      ], r.wave_progress || [], { label: 'Waves' }),
      (r.decisions || []).length ? [h('h2', {}, 'Gate decisions'), table([
        { label: 'Time', get: (x) => when(x.time) },
        { label: 'Wave', num: true, get: (x) => x.wave + 1 },
        { label: 'Decision', get: (x) => badge(x.action, decisionKind(x.action)) },
        { label: 'Evidence', get: (x) => x.verdict ? 'score ' + num(x.score, 0) + ', ' + x.devices + ' devices'
          : x.phase ? x.devices + ' devices' : x.successes + ' of ' + x.needed + ' needed, ' + x.devices + ' devices' },
        { label: 'Detail', get: (x) => x.detail || '' },
      ], r.decisions, { label: 'Gate decisions' })] : null,
      analysesSection(r.analyses || []));
      const fin = !(running || paused);
      return fin;
    };
    const loadDevices = async () => {
      const shown = await api('GET', '/v1/rollouts/' + enc + '/devices?limit=100');
      if (gen !== view) return;
      put(devs, devs.firstChild,
        total > shown.length ? h('p', { class: 'muted' }, 'The first ' + shown.length + ' of ' + num(total, 0) + ' devices, by id.') : null,
        shown.length ? table([
          { label: 'Device', get: (a) => h('a', { href: '#/devices/' + encodeURIComponent(a.device) }, a.device) },
          { label: 'Wave', num: true, get: (a) => a.wave + 1 },
          { label: 'State', get: (a) => badge(a.state || 'pending', kindOf(a.state)) },
          { label: 'Downloaded', get: (a) => a.total_bytes ? bytes(a.progress_bytes) + ' of ' + bytes(a.total_bytes) : '' },
          { label: 'Error', get: (a) => a.error || '' },
        ], shown, { label: 'Devices of the rollout' }) : h('p', { class: 'empty' }, 'No device is assigned yet.'));
    };
    let finished = false;
    let total = 0;
    await poll(gen, 1000, async () => {
      if (finished) { view === gen && (await new Promise((r) => setTimeout(r, 4000))); }
      const r = await api('GET', '/v1/rollouts/' + enc);
      if (gen !== view) return;
      total = r.devices;
      const fin = render(r);
      if (tick++ % 5 === 0 || fin !== finished) await loadDevices();
      finished = fin;
    });
  }

  // ---- models ------------------------------------------------------------

  async function modelsPage(gen) {
    const [ms, sum] = await Promise.all([api('GET', '/v1/models'), api('GET', '/v1/overview')]);
    if (gen !== view) return;
    const by = new Map();
    for (const m of ms) {
      const e = by.get(m.name) || { name: m.name, versions: 0, latest: 0, devices: 0 };
      e.versions++;
      e.latest = Math.max(e.latest, m.version);
      by.set(m.name, e);
    }
    for (const v of sum.versions) if (by.has(v.model)) by.get(v.model).devices += v.devices;
    const rows = [...by.values()].sort((a, b) => a.name.localeCompare(b.name));
    show('Models', h('h1', {}, 'Models'), rows.length ? table([
      { label: 'Model', get: (m) => h('a', { href: '#/models/' + encodeURIComponent(m.name) }, m.name) },
      { label: 'Versions', num: true, get: (m) => m.versions },
      { label: 'Latest', num: true, get: (m) => m.latest },
      { label: 'Devices serving it', num: true, get: (m) => num(m.devices, 0) },
    ], rows, { label: 'Models' }) : h('p', { class: 'empty' }, 'No model pushed yet: outpost-fleet models push.'));
    focusMain();
  }

  let keepFocus = null; // the id of the field to focus after a reload

  const ranges = [['1h', 'Last hour'], ['6h', 'Last 6 hours'], ['24h', 'Last 24 hours'], ['168h', 'Last 7 days']];

  async function modelPage(gen, name, params) {
    const enc = encodeURIComponent(name);
    const [all, sum] = await Promise.all([api('GET', '/v1/models'), api('GET', '/v1/overview')]);
    if (gen !== view) return;
    const versions = all.filter((m) => m.name === name).sort((a, b) => b.version - a.version);
    if (!versions.length) {
      show(name, h('h1', {}, name), h('p', { class: 'empty' }, 'No such model.'));
      return;
    }
    const serving = new Map(sum.versions.filter((v) => v.model === name).map((v) => [v.version, v.devices]));
    const since = params.get('since') || '24h';
    const version = params.get('version') || '';
    const metrics = h('section', { 'aria-labelledby': 'h-metrics' }, h('h2', { id: 'h-metrics' }, 'Metrics'), h('p', { class: 'muted' }, 'Loading…'));
    const drift = h('section', { 'aria-labelledby': 'h-drift' }, h('h2', { id: 'h-drift' }, 'Drift'), h('p', { class: 'muted' }, 'Loading…'));
    // A changed range or version reloads the page; the focus stays on the
    // field that changed it.
    const setParam = (k, v, from) => {
      const p = new URLSearchParams(params);
      if (v) p.set(k, v); else p.delete(k);
      keepFocus = from;
      go('#/models/' + enc + (p.toString() ? '?' + p : ''));
    };
    show(name,
      h('p', {}, h('a', { href: '#/models' }, '← Models')),
      h('h1', {}, name),
      h('h2', {}, 'Versions'),
      table([
        { label: 'Version', num: true, get: (m) => m.version },
        { label: 'Devices serving it', num: true, get: (m) => num(serving.get(m.version) || 0, 0) },
        { label: 'Size', num: true, get: (m) => bytes(m.length) },
        { label: 'SHA-256', get: (m) => h('code', { title: m.sha256 }, m.sha256.slice(0, 12)) },
        { label: 'Pushed', get: (m) => when(m.created) },
        { label: 'Expires', get: (m) => when(m.expires) },
      ], versions, { label: 'Versions' }),
      canOperate() ? startRolloutForm(name, versions) : null,
      h('form', { class: 'inline', onsubmit: (ev) => ev.preventDefault() },
        h('div', { class: 'field' }, h('label', { for: 'm-since' }, 'Range'),
          h('select', { id: 'm-since', onchange: (ev) => setParam('since', ev.target.value, 'm-since') },
            ranges.map(([v, l]) => h('option', { value: v, selected: v === since }, l)))),
        h('div', { class: 'field' }, h('label', { for: 'm-version' }, 'Version'),
          h('select', { id: 'm-version', onchange: (ev) => setParam('version', ev.target.value, 'm-version') },
            h('option', { value: '' }, 'All versions'),
            versions.map((m) => h('option', { value: String(m.version), selected: String(m.version) === version }, 'v' + m.version))))),
      metrics, drift);
    const keep = keepFocus && document.getElementById(keepFocus);
    keepFocus = null;
    if (keep) keep.focus(); else focusMain();
    const qs = new URLSearchParams({ since });
    if (version) qs.set('version', version);
    const fill = (sec, ...content) => put(sec, sec.firstChild, content);
    const jobs = [
      optional('/v1/models/' + enc + '/metrics?' + qs).then((m) => {
        if (gen !== view) return;
        if (!m || !(m.series || []).length) {
          return fill(metrics, h('p', { class: 'empty' }, m ? 'No traffic in this range.' : 'No metrics recorded for this model yet.'));
        }
        const t = m.totals || {};
        const x = (p) => new Date(p.start).getTime();
        fill(metrics,
          h('div', { class: 'cards' },
            card('Requests', num(t.requests, 0)),
            card('Errors', num(t.errors, 0) + (t.requests ? ' (' + num(100 * t.errors / t.requests, 2) + '%)' : '')),
            card('Latency p50 / p90 / p99', num(t.p50_ms, 1) + ' / ' + num(t.p90_ms, 1) + ' / ' + num(t.p99_ms, 1) + ' ms'),
            card('Throughput', num(t.throughput_rps, 2) + ' req/s')),
          (m.versions || []).length ? h('p', { class: 'muted' }, 'Versions with traffic: ' + m.versions.map((v) => 'v' + v).join(', ')) : null,
          h('div', { class: 'charts' },
            lineChart('Requests and errors per ' + stepName(m.step_seconds), '', [
              { name: 'Requests', points: m.series.map((p) => [x(p), p.requests]) },
              { name: 'Errors', points: m.series.map((p) => [x(p), p.errors]) },
            ]),
            lineChart('Latency', 'ms', [
              { name: 'p50', points: m.series.map((p) => [x(p), p.p50_ms]) },
              { name: 'p90', points: m.series.map((p) => [x(p), p.p90_ms]) },
              { name: 'p99', points: m.series.map((p) => [x(p), p.p99_ms]) },
            ])),
          Object.keys(t.errors_by_code || {}).length ? table([
            { label: 'Error code', get: (k) => k }, { label: 'Count', num: true, get: (k) => num(t.errors_by_code[k], 0) },
          ], Object.keys(t.errors_by_code).sort(), { label: 'Errors by code' }) : null);
      }),
      optional('/v1/models/' + enc + '/drift?' + qs).then((d) => {
        if (gen !== view) return;
        if (!d || !(d.features || []).length) {
          return fill(drift, h('p', { class: 'empty' }, d ? 'No feature has enough requests yet.' : 'No drift analysis for this model yet.'));
        }
        fill(drift,
          h('p', {}, 'State: ', badge(d.state, kindOf(d.state)), d.version ? ' for v' + d.version : ''),
          barChart('PSI by feature, fleet-wide', d.features.map((f) => ({ name: f.name, value: f.psi, bad: f.drifting })), (d.thresholds || {}).psi),
          table([
            { label: 'Feature', get: (f) => f.name },
            { label: 'PSI', num: true, get: (f) => num(f.psi, 3) },
            { label: 'Jensen–Shannon', num: true, get: (f) => num(f.js, 3) },
            { label: 'Requests', num: true, get: (f) => num(f.count, 0) },
            { label: 'Reference', num: true, get: (f) => num(f.reference_count, 0) },
            { label: 'Drifting', get: (f) => f.drifting ? badge('drifting', 'bad') : badge('no', 'ok') },
          ], d.features, { label: 'Drift by feature' }),
          (d.devices || []).length ? [h('h3', {}, 'Devices'), table([
            { label: 'Device', get: (x) => h('a', { href: '#/devices/' + encodeURIComponent(x.device) }, x.device) },
            { label: 'State', get: (x) => badge(x.state, kindOf(x.state)) },
            { label: 'Drifting features', get: (x) => (x.features || []).filter((f) => f.drifting).map((f) => f.name).join(', ') },
          ], d.devices, { label: 'Drift by device' })] : null);
      }),
    ];
    jobs[0].catch((e) => { if (gen === view) fill(metrics, failure(e)); });
    jobs[1].catch((e) => { if (gen === view) fill(drift, failure(e)); });
    await Promise.allSettled(jobs);
  }

  function stepName(sec) {
    if (!sec) return 'step';
    if (sec % 3600 === 0) return sec === 3600 ? 'hour' : sec / 3600 + ' hours';
    if (sec % 60 === 0) return sec === 60 ? 'minute' : sec / 60 + ' minutes';
    return sec + ' s';
  }

  function card(title, value) {
    return h('div', { class: 'card' }, h('h3', { class: 'muted' }, title), h('div', { class: 'big' }, value));
  }

  function startRolloutForm(name, versions) {
    const err = h('p', { class: 'error', role: 'alert', hidden: true });
    const field = (id, label, input, hint) => h('div', { class: 'field' },
      h('label', { for: id }, label), input, hint ? h('div', { class: 'hint', id: id + '-hint' }, hint) : null);
    const version = h('select', { id: 'ro-version', name: 'version' },
      versions.map((m) => h('option', { value: String(m.version) }, 'v' + m.version)));
    const waves = h('input', { id: 'ro-waves', name: 'waves', value: '10, 50, 100', inputmode: 'numeric', 'aria-describedby': 'ro-waves-hint' });
    const selector = h('input', { id: 'ro-selector', name: 'selector', placeholder: 'site=north', 'aria-describedby': 'ro-selector-hint' });
    const bake = h('input', { id: 'ro-bake', name: 'bake', placeholder: '0s', 'aria-describedby': 'ro-bake-hint' });
    const ratio = h('input', { id: 'ro-ratio', name: 'max_failure_ratio', type: 'number', min: '0', max: '1', step: '0.01', value: '0.1' });
    const submit = h('button', { type: 'submit', id: 'ro-start' }, 'Start rollout');
    const form = h('form', { id: 'start-rollout', onsubmit: async (ev) => {
      ev.preventDefault();
      err.hidden = true;
      const body = { model: name, version: Number(version.value) };
      const ws = waves.value.split(/[\s,]+/).filter(Boolean).map(Number);
      if (ws.length) body.waves = ws;
      const sel = {};
      for (const kv of selector.value.split(/[\s,]+/).filter(Boolean)) {
        const i = kv.indexOf('=');
        if (i < 1) { err.hidden = false; err.textContent = 'Selector: want key=value pairs, got “' + kv + '”.'; selector.focus(); return; }
        sel[kv.slice(0, i)] = kv.slice(i + 1);
      }
      if (Object.keys(sel).length) body.selector = sel;
      if (bake.value.trim()) body.bake = bake.value.trim();
      if (ratio.value !== '') body.max_failure_ratio = Number(ratio.value);
      submit.disabled = true;
      try {
        const rep = await api('POST', '/v1/rollouts', body);
        say('Rollout ' + rep.id + ' started.');
        go('#/rollouts/' + encodeURIComponent(rep.id));
      } catch (e) {
        err.hidden = false;
        err.textContent = 'The rollout was not started: ' + e.message;
        submit.disabled = false;
      }
    } },
    h('div', { class: 'cards' },
      field('ro-version', 'Version', version),
      field('ro-waves', 'Waves', waves, 'Cumulative percentages of the selected devices, the last 100'),
      field('ro-selector', 'Device labels', selector, 'Optional key=value pairs; every device when empty'),
      field('ro-bake', 'Bake', bake, 'Watch each finished wave this long, e.g. 5m'),
      field('ro-ratio', 'Max failure ratio', ratio)),
    err, submit);
    return h('details', { class: 'panel', id: 'start-rollout-panel' }, h('summary', {}, h('strong', {}, 'Start a rollout')), form);
  }

  // ---- charts ------------------------------------------------------------

  // lineChart draws series of [x (ms since epoch), y] points over a shared
  // time axis; null ys leave gaps.
  function lineChart(title, unit, series) {
    const W = 600, H = 220, L = 48, R = 12, T = 10, B = 28;
    const pts = series.flatMap((sr) => sr.points.filter((p) => p[1] !== null && p[1] !== undefined && !isNaN(p[1])));
    const fig = h('figure', {}, h('figcaption', {}, title + (unit ? ' (' + unit + ')' : '')));
    if (!pts.length) return append(fig, [h('p', { class: 'empty' }, 'No data.')]);
    let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
    let y1 = Math.max(...pts.map((p) => p[1]));
    const y0 = Math.min(0, ...pts.map((p) => p[1]));
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) y1 = y0 + 1;
    const X = (v) => L + (W - L - R) * (v - x0) / (x1 - x0);
    const Y = (v) => T + (H - T - B) * (1 - (v - y0) / (y1 - y0));
    const grid = [0, 0.5, 1].map((f) => {
      const v = y0 + f * (y1 - y0);
      return [s('line', { class: 'grid', x1: L, x2: W - R, y1: Y(v), y2: Y(v) }),
        s('text', { x: L - 4, y: Y(v) + 4, 'text-anchor': 'end', text: num(v, v < 10 ? 2 : 0) })];
    });
    const fmt = (ms) => {
      const d = new Date(ms);
      const days = new Date(x0).toDateString() !== new Date(x1).toDateString();
      return (days ? d.toLocaleDateString() + ' ' : '') + d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    };
    const lines = series.map((sr, i) => {
      const segs = [];
      let cur = [];
      for (const p of sr.points) {
        if (p[1] === null || p[1] === undefined || isNaN(p[1])) { if (cur.length) segs.push(cur); cur = []; continue; }
        cur.push(X(p[0]).toFixed(1) + ',' + Y(p[1]).toFixed(1));
      }
      if (cur.length) segs.push(cur);
      return segs.map((seg) => seg.length === 1
        ? s('circle', { class: 's' + (i % 4), cx: seg[0].split(',')[0], cy: seg[0].split(',')[1], r: 2 })
        : s('polyline', { class: 's' + (i % 4), points: seg.join(' ') }));
    });
    const last = series.map((sr) => {
      const ok = sr.points.filter((p) => p[1] !== null && p[1] !== undefined && !isNaN(p[1]));
      return sr.name + ' ' + (ok.length ? num(ok[ok.length - 1][1]) : 'none');
    }).join(', ');
    const svg = s('svg', { class: 'chart', viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': title + ': latest ' + last },
      s('title', { text: title }),
      grid,
      s('line', { class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B }),
      s('line', { class: 'axis', x1: L, x2: L, y1: T, y2: H - B }),
      s('text', { x: L, y: H - 8, text: fmt(x0) }),
      s('text', { x: W - R, y: H - 8, 'text-anchor': 'end', text: fmt(x1) }),
      lines);
    return append(fig, [svg, h('ul', { class: 'legend' }, series.map((sr, i) => h('li', { class: 's' + (i % 4) }, sr.name)))]);
  }

  // barChart draws one horizontal bar per item; bad ones in red.
  // threshold, when set, draws a dashed line at that value.
  function barChart(title, items, threshold) {
    const W = 600, rowH = 22, L = 150, R = 50;
    const H = items.length * rowH + 10;
    const max = Math.max(threshold || 0.25, ...items.map((i) => i.value || 0));
    const svg = s('svg', { class: 'chart', viewBox: '0 0 ' + W + ' ' + H, role: 'img',
      'aria-label': title + ': ' + items.map((i) => i.name + ' ' + num(i.value, 3)).join(', ') },
    s('title', { text: title }),
    items.map((it, k) => {
      const y = 5 + k * rowH;
      const w = Math.max(1, (W - L - R) * (it.value || 0) / max);
      return [s('text', { x: L - 6, y: y + 14, 'text-anchor': 'end', text: it.name.length > 22 ? it.name.slice(0, 21) + '…' : it.name }),
        s('rect', { class: it.bad ? 'bad' : 'b0', x: L, y: y + 3, width: w, height: rowH - 8 }),
        s('text', { x: L + w + 4, y: y + 14, text: num(it.value, 3) })];
    }),
    threshold ? s('line', { class: 'threshold', x1: L + (W - L - R) * threshold / max, x2: L + (W - L - R) * threshold / max, y1: 0, y2: H }) : null);
    return h('figure', {}, h('figcaption', {}, title, threshold ? h('span', { class: 'muted' }, ' (dashed: the threshold, PSI ' + num(threshold, 3) + ')') : null), svg);
  }

  // ---- start -------------------------------------------------------------

  function start() {
    document.getElementById('logout').addEventListener('click', () => { logout('Logged out.'); history.replaceState(null, '', '#/'); });
    document.getElementById('skip').addEventListener('click', (ev) => { ev.preventDefault(); focusMain(); });
    window.addEventListener('hashchange', route);
    route();
  }

  start();
}());
