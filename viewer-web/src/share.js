// Share the image being viewed (R-C5, R-D1; issue 8 item 3) through pacsd's share-link
// plugin (plugins/pacsd-share): POST {apiRoot}/plugins/share/links with the active
// viewport's study, series and SOP Instance UID and the patient's second factor; the
// answer's QR code, link and expiry are shown. The plugin's API is pacsd's own, so the
// button stays hidden against other DICOMweb servers and when the plugin is missing.
import { config, authHeaders, reauthorize } from './api.js';

/** {studyUid, seriesUid, sopUid} of a wadors: image ID (null when it is not one). */
export function uidsOfImageId(imageId) {
  const m = /\/studies\/([^/]+)\/series\/([^/]+)\/instances\/([^/]+)\/frames\//.exec(imageId || '');
  return m ? { studyUid: m[1], seriesUid: m[2], sopUid: m[3] } : null;
}

/** The JSON body of a share of one image; throws an Error with a message for the doctor. */
export function shareBody({ studyUid, seriesUid, sopUid }, { factor, phone, days }) {
  const d = Number(days);
  if (!Number.isFinite(d) || d <= 0 || d > 3660) throw new Error('Validity: 1 to 3660 days.');
  const body = { studies: [studyUid], kind: 'exam', series: seriesUid, sop: sopUid, factor, days: d };
  if (factor === 'phone') {
    const digits = String(phone || '').replace(/\D/g, '');
    if (digits.length < 4) throw new Error('Enter the patient\'s phone number (at least 4 digits).');
    body.phone = digits;
  } else if (factor !== 'birthdate') {
    throw new Error('Choose birth date or phone.');
  }
  return body;
}

/** What to tell the doctor when the share API answers `status` (not 201). */
export function shareError(status, text = '') {
  if (status === 404 || status === 405) return 'Sharing is not available: the pacsd-share plugin is not installed on this server.';
  if (status === 401) return 'Sign in to share images.';
  if (status === 403) return 'You are not allowed to share this study.';
  if (status === 0) return 'Sharing is not available: the server cannot be reached.';
  let reason = text;
  try { reason = JSON.parse(text).reason || JSON.parse(text).error || text; } catch { /* text */ }
  return `The link could not be made (${status}${reason ? `: ${String(reason).slice(0, 160)}` : ''}).`;
}

/** Whether a DICOMweb root is this pacsd's own (the share API only knows its studies). */
export function sameServer(dicomwebRoot, apiRoot) {
  try { return new URL(dicomwebRoot).origin === new URL(apiRoot).origin; } catch { return false; }
}

const linksUrl = () => `${config.apiRoot}/plugins/share/links`;

// 'unknown' until probed; then 'available' | 'absent'.
let availability = 'unknown';

/** Probe the share API once (GET the study's links): 404 / no answer = no plugin. A 401 /
 * 403 keeps the button: pressing it explains. Hidden against other DICOMweb servers. */
export async function probeShare(studyUid) {
  const btn = document.getElementById('share');
  if (!btn) return availability;
  if (!sameServer(config.dicomwebRoot, config.apiRoot)) availability = 'absent';
  if (availability === 'unknown') {
    try {
      const r = await fetch(`${linksUrl()}?study=${encodeURIComponent(studyUid)}`,
        { headers: { Accept: 'application/json', ...authHeaders() } });
      availability = r.status === 404 || r.status === 405 ? 'absent' : 'available';
    } catch {
      availability = 'absent';
    }
  }
  btn.hidden = availability !== 'available';
  btn.dataset.state = availability;
  return availability;
}

async function post(body) {
  const send = () => fetch(linksUrl(), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json', ...authHeaders() },
    body: JSON.stringify(body) });
  let r = await send();
  if (r.status === 401) { await reauthorize(); r = await send(); }
  return r;
}

function formatExpiry(epochSeconds) {
  const d = new Date(Number(epochSeconds) * 1000);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** Wire the Share button: `current()` answers the active viewport's image UIDs. */
export function bindShare(current) {
  const btn = document.getElementById('share');
  const dlg = document.getElementById('share-dialog');
  if (!btn || !dlg) return;
  const form = dlg.querySelector('form');
  const err = dlg.querySelector('.error');
  const ask = dlg.querySelector('.ask');
  const result = dlg.querySelector('.result');
  const create = dlg.querySelector('.create');
  let image = null;
  const syncPhone = () => {
    const phone = form.factor.value === 'phone';
    form.phone.disabled = !phone;
    form.phone.required = phone;
  };
  form.querySelectorAll('input[name="factor"]').forEach((r) => { r.onchange = syncPhone; });
  form.oninput = () => { if (dlg.dataset.state !== 'shared') err.textContent = ''; };
  dlg.querySelector('.close').onclick = () => dlg.close();
  dlg.querySelector('.copy').onclick = async () => {
    const url = dlg.querySelector('input.url');
    try { await navigator.clipboard.writeText(url.value); } catch { url.select(); document.execCommand('copy'); }
    dlg.querySelector('.copy').textContent = 'Copied';
  };
  btn.onclick = () => {
    image = current();
    err.textContent = '';
    ask.hidden = false;
    result.hidden = true;
    create.hidden = false;
    create.disabled = false;
    dlg.querySelector('.copy').textContent = 'Copy';
    dlg.dataset.state = 'ask';
    dlg.querySelector('.what').textContent = image
      ? `Image ${image.label || ''} — the link opens on this image after the patient confirms.`
      : '';
    if (!image) err.textContent = 'No image is shown in the active viewport.';
    syncPhone();
    dlg.showModal();
  };
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    if (!image) return;
    err.textContent = '';
    let body;
    try {
      body = shareBody(image, { factor: form.factor.value, phone: form.phone.value, days: form.days.value });
    } catch (e) { err.textContent = e.message; return; }
    create.disabled = true;
    let r;
    try { r = await post(body); } catch { r = { status: 0, text: async () => '' }; }
    create.disabled = false;
    if (r.status !== 201) {
      err.textContent = shareError(r.status, await r.text());
      dlg.dataset.state = 'error';
      return;
    }
    const link = await r.json();
    dlg.querySelector('img.qr').src = `data:image/png;base64,${link.qr_png_base64}`;
    dlg.querySelector('input.url').value = link.url;
    dlg.querySelector('.expires').textContent = `Expires ${formatExpiry(link.expires_at)} · link #${link.id}`;
    dlg.dataset.expires = String(link.expires_at);
    dlg.dataset.link = String(link.id);
    ask.hidden = true;
    result.hidden = false;
    create.hidden = true;
    dlg.dataset.state = 'shared';
  };
}
