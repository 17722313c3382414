// The worklist / search page (R-D2, R-3.3.18, R-3.3.20, R-3.3.21): QIDO-RS study search,
// sort, paging with the server's X-Total-Count, series thumbnails via WADO-RS.
import { config, dicomJson, thumbnailUrl } from './api.js';
import {
  TAG, value, values, buildStudyQuery, buildSeriesFilterQuery, uidChunks, sortStudies, pageInfo,
  formatName, formatDicomDate,
} from './dicomweb.js';

const state = { offset: 0, filters: {}, items: [], total: 0, exact: true, serverSorted: false };

/** pacsd's own DICOMweb (same origin): its worklist extensions (visit keys, orderby) may
 * be used; another DICOMweb server (?dicomweb=) gets standard QIDO-RS only. */
function isPacsd() {
  try { return new URL(config.dicomwebRoot).origin === location.origin; } catch { return false; }
}
function sortChoice() { return document.getElementById('sort').value; }

function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function formFilters() {
  const f = document.getElementById('search');
  return Object.fromEntries(['patientName', 'patientId', 'accession', 'modality', 'dateFrom',
    'dateTo', 'description', 'referring', 'bodyPart', 'institution', 'visitNumber', 'cardNumber',
    'department', 'visitType'].map((k) => [k, f.elements[k].value]));
}

function limit() { return Number(document.getElementById('pagesize').value) || 25; }

let searches = 0;

export async function search(offset = 0) {
  const status = document.getElementById('status');
  const mine = ++searches;  // a slower, older answer must not replace a newer one
  let params;
  try {
    state.filters = formFilters();
    params = buildStudyQuery(state.filters, { limit: limit(), offset },
      { pacsd: isPacsd(), sort: sortChoice() });
  } catch (e) {
    status.textContent = e.message;
    return;
  }
  status.textContent = 'Searching…';
  try {
    const seriesQuery = buildSeriesFilterQuery(state.filters, { pacsd: isPacsd() });
    const { items, total, exact } = seriesQuery
      ? await searchBySeries(seriesQuery, offset)
      : await dicomJson('/studies', params);
    if (mine !== searches) return;
    state.items = items;
    state.serverSorted = isPacsd() && !seriesQuery;  // pacsd sorted every match (orderby)
    state.offset = offset;
    state.total = total ?? items.length + offset;
    state.exact = exact ?? true;
    render();
    status.dataset.search = String(mine);  // this answer is shown (tests wait on it)
  } catch (e) {
    if (mine === searches) status.textContent = `Search failed: ${e.message}`;
  }
}

/** Body part / institution (series-level keys): the studies holding a matching series,
 * then the study filters on those, paged here (the total is exact). */
async function searchBySeries(seriesQuery, offset) {
  const { items: series } = await dicomJson('/series', seriesQuery);
  const uids = [...new Set(series.map((s) => value(s, TAG.StudyInstanceUID)).filter(Boolean))];
  const all = [];
  for (const chunk of uidChunks(uids)) {
    const p = buildStudyQuery({ ...state.filters, studyUid: chunk }, { limit: 1000 },
      { pacsd: isPacsd() });
    all.push(...(await dicomJson('/studies', p)).items);
  }
  const [key, dir] = sortChoice().split(':');
  const sorted = sortStudies(all, key, dir);
  return { items: sorted.slice(offset, offset + limit()), total: sorted.length };
}

function render() {
  const [key, dir] = sortChoice().split(':');
  // pacsd sorted all matches before paging; otherwise the page shown is sorted here.
  const items = state.serverSorted ? state.items : sortStudies(state.items, key, dir);
  const info = pageInfo(state.total, state.offset, items.length, limit(), state.exact);
  document.getElementById('status').textContent = info.total
    ? `${info.first}–${info.last} of ${info.totalText} studies` : 'No studies found';
  document.getElementById('status').dataset.total = String(info.total);
  document.getElementById('prev').disabled = !info.hasPrev;
  document.getElementById('next').disabled = !info.hasNext;
  document.getElementById('pageno').textContent = `page ${info.page} / ${info.pagesText}`;
  const tbody = document.querySelector('#studies tbody');
  tbody.innerHTML = '';
  for (const s of items) {
    const uid = value(s, TAG.StudyInstanceUID);
    const tr = document.createElement('tr');
    tr.dataset.study = uid;
    tr.innerHTML = `<td class="thumbs"></td>
      <td class="name">${esc(formatName(value(s, TAG.PatientName)))}</td>
      <td>${esc(value(s, TAG.PatientID))}</td>
      <td>${esc(formatDicomDate(value(s, TAG.PatientBirthDate)))} ${esc(value(s, TAG.PatientSex))}</td>
      <td class="date">${esc(formatDicomDate(value(s, TAG.StudyDate)))}</td>
      <td>${esc(value(s, TAG.AccessionNumber))}</td>
      <td class="modality">${esc(values(s, TAG.ModalitiesInStudy).join('/'))}</td>
      <td class="bodypart">${esc(values(s, TAG.BodyPartExamined).join('/'))}</td>
      <td class="visit"><span class="vtype">${esc(value(s, TAG.VisitType))}</span> <span class="vno">${esc(value(s, TAG.VisitNumber))}</span></td>
      <td class="dept">${esc(value(s, TAG.Department))}</td>
      <td>${esc(value(s, TAG.StudyDescription))}</td>
      <td>${esc(value(s, TAG.NumberOfStudyRelatedSeries))} / ${esc(value(s, TAG.NumberOfStudyRelatedInstances))}</td>`;
    tr.onclick = () => { location.hash = `#/study/${uid}`; };
    tbody.append(tr);
    thumbs(uid, tr.querySelector('.thumbs'));
  }
}

async function thumbs(studyUid, td) {
  try {
    const { items } = await dicomJson(`/studies/${studyUid}/series`, 'limit=4');
    for (const se of items) {
      const img = document.createElement('img');
      img.alt = value(se, TAG.Modality) || '';
      img.className = 'thumb';
      td.append(img);
      thumbnailUrl(`/studies/${studyUid}/series/${value(se, TAG.SeriesInstanceUID)}`)
        .then((u) => { if (u) img.src = u; else img.remove(); });
    }
  } catch { /* thumbnails are a nicety */ }
}

export function bindWorklist() {
  document.getElementById('search').onsubmit = (e) => { e.preventDefault(); search(0); };
  document.getElementById('search').onreset = () => setTimeout(() => search(0));
  document.getElementById('prev').onclick = () => search(Math.max(0, state.offset - limit()));
  document.getElementById('next').onclick = () => search(state.offset + limit());
  // pacsd sorts server-side (every match, then the page); others: the page shown.
  document.getElementById('sort').onchange = () => {
    state.serverSorted = false;
    render();  // the page shown at once, then (pacsd) every match sorted by the server
    if (isPacsd()) search(0);
  };
  document.getElementById('pagesize').onchange = () => search(0);
}
