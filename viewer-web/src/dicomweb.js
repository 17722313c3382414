// Pure DICOMweb helpers (no DOM, no Cornerstone): QIDO-RS query building, DICOM JSON
// value access, client-side sorting. Unit-tested with node:test (test/dicomweb.test.js).
// R-D2: the worklist's search fields map onto QIDO-RS study-level matching keys.

export const TAG = {
  PatientName: '00100010', PatientID: '00100020', PatientBirthDate: '00100030',
  PatientSex: '00100040', StudyInstanceUID: '0020000D', StudyDate: '00080020',
  StudyTime: '00080030', AccessionNumber: '00080050', ModalitiesInStudy: '00080061',
  ReferringPhysicianName: '00080090', StudyDescription: '00081030',
  NumberOfStudyRelatedSeries: '00201206', NumberOfStudyRelatedInstances: '00201208',
  SeriesInstanceUID: '0020000E', SeriesNumber: '00200011', SeriesDescription: '0008103E',
  Modality: '00080060', BodyPartExamined: '00180015', InstitutionName: '00080080',
  NumberOfSeriesRelatedInstances: '00201209', SOPInstanceUID: '00080018',
  InstanceNumber: '00200013', NumberOfFrames: '00280008', ImagePositionPatient: '00200032',
  ImageOrientationPatient: '00200037',
  // pacsd's worklist visit attributes (private block "PACSD WORKLIST", docs/conformance.md)
  VisitNumber: '00771001', CardNumber: '00771002', Department: '00771003', VisitType: '00771004',
};

/** Visit types pacsd derives (R-D2; [worklist] settings). */
export const VISIT_TYPES = ['outpatient', 'inpatient', 'emergency', 'physical-exam'];

/** Worklist sort choice -> pacsd's study-level `orderby` (R-D2: time, name, type, body part). */
export const ORDERBY = {
  'date:desc': '-StudyDate', 'date:asc': 'StudyDate', 'name:asc': 'PatientName',
  'name:desc': '-PatientName', 'modality:asc': 'ModalitiesInStudy',
  'description:asc': 'StudyDescription', 'bodyPart:asc': 'BodyPartExamined',
  'visitType:asc': 'visittype',
};

/** First value of a DICOM JSON attribute; PN as its Alphabetic (or Ideographic) text. */
export function value(obj, tag) {
  const el = obj && obj[tag];
  if (!el || !Array.isArray(el.Value) || el.Value.length === 0) return undefined;
  const v = el.Value[0];
  if (el.vr === 'PN' && v && typeof v === 'object') {
    return v.Alphabetic ?? v.Ideographic ?? v.Phonetic ?? '';
  }
  return v;
}

/** All values of a DICOM JSON attribute ([] when absent). */
export function values(obj, tag) {
  const el = obj && obj[tag];
  return el && Array.isArray(el.Value) ? el.Value : [];
}

/** 'YYYY-MM-DD' (an <input type=date>) or 'YYYYMMDD' -> 'YYYYMMDD'; '' when empty. */
export function toDicomDate(s) {
  if (!s) return '';
  const d = String(s).replace(/-/g, '');
  if (!/^\d{8}$/.test(d)) throw new Error(`not a date: ${s}`);
  return d;
}

/** 'YYYYMMDD' -> 'YYYY-MM-DD' for display. */
export function formatDicomDate(d) {
  return d && /^\d{8}$/.test(d) ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : (d || '');
}

/** DICOM PN 'Family^Given' -> 'Family, Given'. */
export function formatName(pn) {
  if (!pn) return '';
  const [family, given] = String(pn).split('^');
  return given ? `${family}, ${given}` : family;
}

function wrapWildcard(text) {
  const t = text.trim();
  return /[*?]/.test(t) ? t : `*${t}*`;
}

export const STUDY_INCLUDEFIELDS = [
  TAG.StudyDescription, TAG.ModalitiesInStudy, TAG.NumberOfStudyRelatedSeries,
  TAG.NumberOfStudyRelatedInstances, TAG.ReferringPhysicianName, TAG.PatientBirthDate,
  TAG.PatientSex,
];

/**
 * Worklist form -> QIDO-RS /studies query parameters (R-D2).
 * filters: { patientName, patientId, accession, modality, dateFrom, dateTo, description,
 *            referring, visitNumber, cardNumber, department, visitType, bodyPart },
 * page: { limit, offset }, opts: { pacsd, sort }.
 * Patient name uses fuzzy matching (each word a prefix of a name part); accession and
 * patient ID match exactly unless they carry * or ?; description and department match
 * anywhere. With opts.pacsd (the DICOMweb server is this pacsd) the visit keys, the
 * study-level body part and the server-side sort (`orderby`) are pacsd extensions;
 * another server gets standard keys only (visit fields are refused).
 */
export function buildStudyQuery(filters = {}, page = {}, opts = {}) {
  const p = new URLSearchParams();
  const f = Object.fromEntries(Object.entries(filters).map(([k, v]) => [k, (v ?? '').toString().trim()]));
  if (f.patientName) { p.set('PatientName', f.patientName); p.set('fuzzymatching', 'true'); }
  if (f.patientId) p.set('PatientID', f.patientId);
  if (f.accession) p.set('AccessionNumber', f.accession);
  if (f.modality) p.set('ModalitiesInStudy', f.modality.toUpperCase());
  const from = toDicomDate(f.dateFrom), to = toDicomDate(f.dateTo);
  if (from && to && from > to) throw new Error('the start date is after the end date');
  if (from || to) p.set('StudyDate', from === to ? from : `${from}-${to}`);
  if (f.description) p.set('StudyDescription', wrapWildcard(f.description));
  if (f.referring) p.set('ReferringPhysicianName', f.referring);
  if (f.studyUid) p.set('StudyInstanceUID', f.studyUid);
  const visit = { visitNumber: 'visitnumber', cardNumber: 'cardnumber', department: 'department',
    visitType: 'visittype' };
  const include = [...STUDY_INCLUDEFIELDS];
  if (opts.pacsd) {
    if (f.visitNumber) p.set('visitnumber', f.visitNumber);
    if (f.cardNumber) p.set('cardnumber', f.cardNumber);
    if (f.department) p.set('department', wrapWildcard(f.department));
    if (f.visitType) {
      if (!VISIT_TYPES.includes(f.visitType)) throw new Error(`unknown visit type ${f.visitType}`);
      p.set('visittype', f.visitType);
    }
    if (f.bodyPart) p.set('BodyPartExamined', f.bodyPart.toUpperCase());
    if (opts.sort && ORDERBY[opts.sort]) p.set('orderby', ORDERBY[opts.sort]);
    include.push(TAG.BodyPartExamined, 'visittype', 'visitnumber', 'department');
  } else if (Object.keys(visit).some((k) => f[k])) {
    throw new Error('visit and department search needs pacsd');
  }
  p.set('includefield', include.join(','));
  const limit = Number.isInteger(page.limit) && page.limit > 0 ? page.limit : 25;
  const offset = Number.isInteger(page.offset) && page.offset > 0 ? page.offset : 0;
  p.set('limit', String(limit));
  p.set('offset', String(offset));
  return p;
}

/** Series-level worklist filters (R-D2 body part, institution): pacsd, like the
 * standard's study-level QIDO, matches them on /series only. Returns the /series query,
 * or null when none is given. */
export function buildSeriesFilterQuery(filters = {}, opts = {}) {
  // pacsd matches the body part at the study level (buildStudyQuery).
  const body = opts.pacsd ? '' : (filters.bodyPart ?? '').toString().trim().toUpperCase();
  const inst = (filters.institution ?? '').toString().trim();
  if (!body && !inst) return null;
  const p = new URLSearchParams();
  if (body) p.set('BodyPartExamined', body);
  if (inst) p.set('InstitutionName', wrapWildcard(inst));
  p.set('includefield', TAG.StudyInstanceUID);
  p.set('limit', '1000');
  return p;
}

/** Split UIDs into comma-separated lists whose length stays within a QIDO-RS value
 * limit (pacsd: 1024 characters). */
export function uidChunks(uids, maxLen = 1024) {
  const out = [];
  let cur = [];
  let len = 0;
  for (const u of uids) {
    if (cur.length && len + 1 + u.length > maxLen) { out.push(cur.join(',')); cur = []; len = 0; }
    len += (cur.length ? 1 : 0) + u.length;
    cur.push(u);
  }
  if (cur.length) out.push(cur.join(','));
  return out;
}

/** Sort keys of the worklist (R-D2: time, name, type). Returns a new array. */
export const SORT_KEYS = {
  date: (s) => `${value(s, TAG.StudyDate) || ''}${value(s, TAG.StudyTime) || ''}`,
  name: (s) => String(value(s, TAG.PatientName) || '').toLowerCase(),
  modality: (s) => values(s, TAG.ModalitiesInStudy).join('/'),
  description: (s) => String(value(s, TAG.StudyDescription) || '').toLowerCase(),
  patientId: (s) => String(value(s, TAG.PatientID) || ''),
  bodyPart: (s) => values(s, TAG.BodyPartExamined).join('/') || '\uffff',
  visitType: (s) => String(value(s, TAG.VisitType) || '\uffff'),
};

export function sortStudies(items, key = 'date', dir = 'desc') {
  const get = SORT_KEYS[key];
  if (!get) throw new Error(`unknown sort key ${key}`);
  const sign = dir === 'asc' ? 1 : -1;
  return [...items].sort((a, b) => {
    const x = get(a), y = get(b);
    return x < y ? -sign : x > y ? sign : 0;
  });
}

/** Paging text and state from X-Total-Count (R-D2); ``exact`` false when the server
 * counted only up to a bound (the total is then at least ``total``: shown as "N+"). */
export function pageInfo(total, offset, count, limit, exact = true) {
  const pages = Math.max(1, Math.ceil(total / limit));
  const page = Math.floor(offset / limit) + 1;
  const first = count ? offset + 1 : 0;
  const more = exact ? '' : '+';
  return { total, page, pages, first, last: offset + count, exact,
           totalText: `${total}${more}`, pagesText: `${pages}${more}`,
           hasPrev: offset > 0, hasNext: offset + count < total };
}

/** Instances of a series metadata response, in display order (InstanceNumber, then
 * position along the slice normal), with one image entry per frame. */
export function orderInstances(metadata) {
  const withKeys = metadata.map((m, i) => ({ m, i, n: Number(value(m, TAG.InstanceNumber) ?? 0),
    z: values(m, TAG.ImagePositionPatient).map(Number)[2] ?? 0 }));
  withKeys.sort((a, b) => (a.n - b.n) || (a.z - b.z) || (a.i - b.i));
  return withKeys.map((x) => x.m);
}

/** wadors: image IDs for a series' ordered instances (one per frame). */
export function wadorsImageIds(root, studyUid, seriesUid, metadata) {
  const out = [];
  for (const m of orderInstances(metadata)) {
    const sop = value(m, TAG.SOPInstanceUID);
    const frames = Number(value(m, TAG.NumberOfFrames) || 1);
    for (let f = 1; f <= frames; f++) {
      out.push({ imageId: `wadors:${root}/studies/${studyUid}/series/${seriesUid}/instances/${sop}/frames/${f}`,
                 metadata: m });
    }
  }
  return out;
}
