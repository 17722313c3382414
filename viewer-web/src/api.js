// Where the data comes from and how requests are authorised. The DICOMweb root comes
// from ?dicomweb=<url> (any DICOMweb server, persisted for the session), else
// config.json beside the page (pacsd generates it from [dicomweb] root), else
// /dicom-web. A Bearer token (pacsd login) is kept in sessionStorage only.

export const config = { dicomwebRoot: '/dicom-web', apiRoot: '/api/v1' };

function absolute(url) {
  return new URL(url, location.href).href.replace(/\/+$/, '');
}

export async function loadConfig() {
  try {
    const r = await fetch('config.json', { cache: 'no-cache' });
    if (r.ok) Object.assign(config, await r.json());
  } catch { /* no config.json: defaults */ }
  const q = new URLSearchParams(location.search);
  const override = q.get('dicomweb') || sessionStorage.getItem('pacsd.dicomweb');
  if (override) {
    config.dicomwebRoot = override;
    sessionStorage.setItem('pacsd.dicomweb', override);
  }
  config.dicomwebRoot = absolute(config.dicomwebRoot);
  config.apiRoot = absolute(config.apiRoot);
  return config;
}

export function token() { return sessionStorage.getItem('pacsd.token') || ''; }
export function setToken(t) { t ? sessionStorage.setItem('pacsd.token', t) : sessionStorage.removeItem('pacsd.token'); }
export function authHeaders() { const t = token(); return t ? { Authorization: `Bearer ${t}` } : {}; }

export class HttpError extends Error {
  constructor(status, text) { super(`${status} ${text}`); this.status = status; }
}

let onUnauthorized = null;
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }
/** Ask for a new sign-in (e.g. an image frame answered 401); resolves once signed in. */
export function reauthorize() { return onUnauthorized ? onUnauthorized() : Promise.resolve(); }

export async function request(url, { accept = 'application/dicom+json', ...opts } = {}) {
  const r = await fetch(url, { ...opts, headers: { Accept: accept, ...authHeaders(), ...(opts.headers || {}) } });
  if (r.status === 401 && onUnauthorized) {
    await onUnauthorized();
    return request(url, { accept, ...opts });
  }
  if (!r.ok) throw new HttpError(r.status, (await r.text()).trim().slice(0, 200));
  return r;
}

export async function dicomJson(path, params) {
  const url = `${config.dicomwebRoot}${path}${params ? `?${params}` : ''}`;
  const r = await request(url);
  const total = r.headers.get('X-Total-Count');
  // pacsd counts at most a bound past the page (large archives): then the total is a
  // lower bound and its Warning says "There are more than N additional results".
  const exact = !/There are more than/.test(r.headers.get('Warning') ?? '');
  const body = r.status === 204 ? [] : await r.json();
  return { items: body, total: total === null ? null : Number(total), exact };
}

const thumbCache = new Map();
/** An object URL of a WADO-RS thumbnail (fetched with the Bearer token, which an
 * <img src> cannot carry), or null when the server has none. */
export async function thumbnailUrl(path) {
  if (thumbCache.has(path)) return thumbCache.get(path);
  const p = request(`${config.dicomwebRoot}${path}/thumbnail`, { accept: 'image/jpeg, image/png' })
    .then((r) => r.blob()).then((b) => URL.createObjectURL(b)).catch(() => null);
  thumbCache.set(path, p);
  return p;
}

/** Sign out: the server revokes the session; after a hospital (OIDC) sign-in the answer
 * also names the provider's logout page, which is returned (else null). */
export async function logout() {
  const viaOidc = sessionStorage.getItem('pacsd.via') === 'oidc' && config.oidcLogin;
  let next = null;
  if (token()) {
    try {
      const r = await fetch(`${config.apiRoot}/auth/${viaOidc ? 'oidc/' : ''}logout`,
        { method: 'POST', headers: authHeaders() });
      if (r.ok && viaOidc) next = (await r.json()).end_session_url || null;
    } catch { /* the token is forgotten all the same */ }
  }
  setToken('');
  sessionStorage.removeItem('pacsd.via');
  return next;
}

export async function login(username, password) {
  const r = await fetch(`${config.apiRoot}/auth/login`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username, password }) });
  if (!r.ok) throw new HttpError(r.status, (await r.text()).trim());
  const body = await r.json();
  setToken(body.token);
  sessionStorage.removeItem('pacsd.via');
  return body;
}
