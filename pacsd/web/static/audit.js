// The auditor's page (R-E3, R-E4, MLPS 6, 9-11): reads /api/v1/audit with the session's
// Bearer token (pacsd login, TOTP code for administrators). The token lives in
// sessionStorage only; nothing here is cached or written elsewhere.
'use strict';

const TOKEN_KEY = 'pacsd.audit.token';
const PAGE = 50;
const $ = (sel) => document.querySelector(sel);

const state = { before: null, stack: [], rows: [], total: null, seq: 0 };

function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }
function setToken(t) { t ? sessionStorage.setItem(TOKEN_KEY, t) : sessionStorage.removeItem(TOKEN_KEY); }

class HttpError extends Error {
  constructor(status, text) { super(text || `HTTP ${status}`); this.status = status; }
}

async function api(path) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const r = await fetch(path, { headers, cache: 'no-store' });
  if (!r.ok) throw new HttpError(r.status, (await r.text()).trim());
  return r;
}

function showLogin(message) {
  setToken('');
  $('#app').hidden = true;
  $('#who').hidden = true;
  $('#login .error').textContent = message || '';
  if (!$('#login').open) $('#login').showModal();
  $('#login [name=username]').focus();
}

async function login(ev) {
  ev.preventDefault();
  const f = new FormData($('#login-form'));
  const body = { username: f.get('username'), password: f.get('password') };
  if (f.get('otp')) body.otp = String(f.get('otp')).trim();
  const r = await fetch('/api/v1/auth/login', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  if (!r.ok) {
    $('#login .error').textContent = r.status === 429
      ? 'Too many attempts: wait a few minutes.'
      : 'Sign-in failed: check the user name, password and one-time code.';
    return;
  }
  const s = await r.json();
  if (s.password_change_required) {
    $('#login .error').textContent = 'Your password must be changed first (pacsd user passwd or the account page).';
    return;
  }
  setToken(s.token);
  $('#login-form').reset();
  $('#login').close();
  $('#who-name').textContent = `${s.user} (${s.roles.join(', ')})`;
  await start();
}

async function logout() {
  try { await fetch('/api/v1/auth/logout', { method: 'POST', headers: { Authorization: `Bearer ${token()}` } }); }
  catch (e) { /* signed out locally either way */ }
  showLogin('Signed out.');
}

function handle(err) {
  if (err.status === 401) {
    showLogin(token() ? 'Your session has ended: sign in again.' : '');
    return;
  }
  if (err.status === 403) {
    $('#denied').hidden = false;
    $('#filters').hidden = true;
    $('#events').hidden = true;
    $('.pager').hidden = true;
    $('#chain').hidden = true;
    document.body.dataset.denied = 'true';
    return;
  }
  $('#error').textContent = err.message;
}

// --- filters ---------------------------------------------------------------------------
function toIso(local) {
  // datetime-local is the browser's local time; the API wants ISO 8601 with an offset.
  return local ? new Date(local).toISOString() : '';
}

function filterParams() {
  const f = new FormData($('#filters'));
  const p = new URLSearchParams();
  for (const [k, v] of f.entries()) {
    const value = String(v).trim();
    if (!value) continue;
    p.set(k, k === 'since' || k === 'until' ? toIso(value) : value);
  }
  return p;
}

// --- the chain status line -----------------------------------------------------------
async function checkChain() {
  const line = $('#chain');
  try {
    const v = await (await api('/api/v1/audit/verify')).json();
    line.hidden = false;
    if (v.ok) {
      line.dataset.state = 'ok';
      let text = `✔ Hash chain intact: ${v.rows} events, head seq ${v.head_seq}, hash ${v.head_hash.slice(0, 16)}…`;
      if (v.pruned_rows) text += ` · ${v.pruned_rows} events older than ${v.pruned_before} pruned (retention), chain anchored at seq ${v.anchor_seq}`;
      line.textContent = `${text} · checked ${v.checked_at}`;
    } else {
      line.dataset.state = 'bad';
      line.textContent = `✘ AUDIT TRAIL TAMPERED: ${v.problem} (seq ${v.bad_seq}) · checked ${v.checked_at}`;
    }
  } catch (err) { handle(err); throw err; }
}

// --- the table -----------------------------------------------------------------------
function td(tr, text, cls) {
  const c = document.createElement('td');
  if (cls) c.className = cls;
  c.textContent = text == null ? '' : String(text);
  tr.appendChild(c);
  return c;
}

function localTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleString();
}

function render(rows) {
  const body = $('#events tbody');
  body.replaceChildren();
  for (const e of rows) {
    const tr = document.createElement('tr');
    tr.className = e.outcome;
    tr.dataset.seq = e.seq;
    td(tr, e.seq, 'mono');
    const t = td(tr, e.event_time.replace('T', ' ').replace(/\.\d+Z$/, 'Z'), 'mono');
    const loc = document.createElement('span');
    loc.className = 'local';
    loc.textContent = localTime(e.event_time);
    t.appendChild(loc);
    td(tr, e.event_type);
    td(tr, e.outcome, 'outcome');
    td(tr, e.actor_name ? `${e.actor_name} (${e.actor})` : e.actor);
    td(tr, e.source_ip, 'mono');
    td(tr, e.device, 'device');
    td(tr, e.study_uid, 'mono study');
    td(tr, e.object_count);
    const d = { ...e.detail };
    if (e.location) d.location = e.location;
    const cell = td(tr, '', 'detail');
    for (const [k, v] of Object.entries(d)) {
      const line = document.createElement('div');
      const key = document.createElement('b');
      key.textContent = `${k}: `;
      line.append(key, typeof v === 'string' ? v : JSON.stringify(v));
      cell.appendChild(line);
    }
    body.appendChild(tr);
  }
  const from = state.stack.length * PAGE;
  $('#page-info').textContent = rows.length
    ? `${from + 1}–${from + rows.length}${state.total != null ? ` of ${state.total}` : ''}`
    : 'no events match';
  $('#newer').disabled = state.stack.length === 0;
  $('#older').disabled = rows.length < PAGE;
  document.body.dataset.loaded = String(rows.length);
}

async function load() {
  // Only the newest request may render: an older answer that arrives late (a reset
  // followed at once by a search) must not replace the newer one.
  const mine = ++state.seq;
  $('#error').textContent = '';
  const p = filterParams();
  p.set('order', 'desc');
  p.set('limit', String(PAGE));
  if (state.before != null) p.set('before', String(state.before));
  if (state.stack.length === 0) p.set('count', 'true');
  try {
    const body = await (await api(`/api/v1/audit?${p}`)).json();
    if (mine !== state.seq) return;
    if (body.total != null) state.total = body.total;
    state.rows = body.events;
    render(body.events);
  } catch (err) { handle(err); }
}

function search(ev) {
  if (ev) ev.preventDefault();
  state.before = null;
  state.stack = [];
  state.total = null;
  load();
}

function older() {
  if (!state.rows.length) return;
  state.stack.push(state.before);
  state.before = state.rows[state.rows.length - 1].seq;
  load();
}

function newer() {
  if (!state.stack.length) return;
  state.before = state.stack.pop();
  load();
}

// --- exports -------------------------------------------------------------------------
async function exportAs(fmt) {
  $('#error').textContent = '';
  try {
    const r = await api(`/api/v1/audit/events.${fmt}?${filterParams()}`);
    const blob = await r.blob();
    const name = (r.headers.get('Content-Disposition') || '').match(/filename="([^"]+)"/);
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = name ? name[1] : `pacsd-audit.${fmt}`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    document.body.dataset.exported = fmt;
  } catch (err) { handle(err); }
}

async function loadTypes() {
  try {
    const types = await (await api('/api/v1/audit/event-types')).json();
    const list = $('#event-types');
    list.replaceChildren(...types.map((t) => { const o = document.createElement('option'); o.value = t; return o; }));
  } catch (err) { /* the filter still takes free text */ }
}

async function start() {
  $('#app').hidden = false;
  $('#who').hidden = !token();
  if (token() && !$('#who-name').textContent) {
    try {
      const me = await (await api('/api/v1/auth/me')).json();
      $('#who-name').textContent = `${me.user} (${me.roles.join(', ')})`;
    } catch (err) { handle(err); return; }
  }
  try { await checkChain(); } catch (err) { return; }
  await loadTypes();
  search();
}

document.addEventListener('DOMContentLoaded', () => {
  $('#login-form').addEventListener('submit', login);
  $('#logout').addEventListener('click', logout);
  $('#filters').addEventListener('submit', search);
  $('#filters').addEventListener('reset', () => setTimeout(search, 0));
  $('#older').addEventListener('click', older);
  $('#newer').addEventListener('click', newer);
  $('#export-csv').addEventListener('click', () => exportAs('csv'));
  $('#export-xlsx').addEventListener('click', () => exportAs('xlsx'));
  start();
});
