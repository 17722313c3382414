// node --test: pure helpers of the viewer (R-D2 worklist query, R-D1 presets).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildStudyQuery, buildSeriesFilterQuery, uidChunks, sortStudies, pageInfo, value, formatName, wadorsImageIds, TAG } from '../src/dicomweb.js';
import { presetsFor, toVoiRange, fromVoiRange } from '../src/presets.js';

test('R-D2: worklist fields map to QIDO-RS study keys', () => {
  const p = buildStudyQuery({ patientName: 'wang', patientId: 'P1', accession: 'A7',
    modality: 'ct', dateFrom: '2024-01-01', dateTo: '2024-12-31', description: 'chest' },
    { limit: 10, offset: 20 });
  assert.equal(p.get('PatientName'), 'wang');
  assert.equal(p.get('fuzzymatching'), 'true');
  assert.equal(p.get('PatientID'), 'P1');
  assert.equal(p.get('AccessionNumber'), 'A7');
  assert.equal(p.get('ModalitiesInStudy'), 'CT');
  assert.equal(p.get('StudyDate'), '20240101-20241231');
  assert.equal(p.get('StudyDescription'), '*chest*');
  assert.equal(p.get('limit'), '10');
  assert.equal(p.get('offset'), '20');
});

test('R-D2: empty fields send no filter; open date ranges; one-day range', () => {
  const p = buildStudyQuery({ patientName: ' ', dateFrom: '2024-05-01' });
  assert.equal(p.has('PatientName'), false);
  assert.equal(p.has('fuzzymatching'), false);
  assert.equal(p.get('StudyDate'), '20240501-');
  assert.equal(buildStudyQuery({ dateTo: '2024-05-01' }).get('StudyDate'), '-20240501');
  assert.equal(buildStudyQuery({ dateFrom: '2024-05-01', dateTo: '2024-05-01' }).get('StudyDate'), '20240501');
  assert.throws(() => buildStudyQuery({ dateFrom: '2024-05-02', dateTo: '2024-05-01' }));
});

test('R-D2: sort by name, date, modality both ways', () => {
  const st = (name, date, mod) => ({ [TAG.PatientName]: { vr: 'PN', Value: [{ Alphabetic: name }] },
    [TAG.StudyDate]: { vr: 'DA', Value: [date] }, [TAG.ModalitiesInStudy]: { vr: 'CS', Value: [mod] } });
  const items = [st('Zhao^Li', '20240101', 'MR'), st('An^Bo', '20230101', 'CT'), st('Li^Na', '20250101', 'US')];
  assert.deepEqual(sortStudies(items, 'name', 'asc').map((s) => value(s, TAG.PatientName)), ['An^Bo', 'Li^Na', 'Zhao^Li']);
  assert.deepEqual(sortStudies(items, 'date', 'desc').map((s) => value(s, TAG.StudyDate)), ['20250101', '20240101', '20230101']);
  assert.deepEqual(sortStudies(items, 'modality', 'asc').map((s) => value(s, TAG.ModalitiesInStudy)), ['CT', 'MR', 'US']);
});

test('R-D2: paging from X-Total-Count', () => {
  assert.deepEqual(pageInfo(53, 25, 25, 25), { total: 53, page: 2, pages: 3, first: 26, last: 50, exact: true, totalText: '53', pagesText: '3', hasPrev: true, hasNext: true });
  assert.equal(pageInfo(0, 0, 0, 25).first, 0);
  assert.equal(pageInfo(3, 0, 3, 25).hasNext, false);
  // A bounded count (pacsd at scale): the total is a lower bound, shown as "N+".
  const bound = pageInfo(1026, 0, 25, 25, false);
  assert.equal(bound.totalText, '1026+');
  assert.equal(bound.pagesText, '42+');
  assert.equal(bound.hasNext, true);
  assert.equal(pageInfo(53, 25, 25, 25).totalText, '53');
});

test('R-D1: window presets per modality', () => {
  assert.equal(presetsFor('ct')[1].name, 'Lung');
  assert.deepEqual(presetsFor('XA'), []);
  assert.deepEqual(toVoiRange(400, 40), { lower: -160, upper: 240 });
  assert.deepEqual(fromVoiRange({ lower: -160, upper: 240 }), { ww: 400, wc: 40 });
  assert.throws(() => toVoiRange(0, 40));
});

test('R-D1: wadors image IDs, ordered by InstanceNumber, one per frame', () => {
  const inst = (sop, n, frames) => ({ [TAG.SOPInstanceUID]: { vr: 'UI', Value: [sop] },
    [TAG.InstanceNumber]: { vr: 'IS', Value: [n] }, ...(frames ? { [TAG.NumberOfFrames]: { vr: 'IS', Value: [frames] } } : {}) });
  const ids = wadorsImageIds('http://h/dicom-web', '1.2', '1.3', [inst('9.2', 2), inst('9.1', 1, 2)]).map((x) => x.imageId);
  assert.deepEqual(ids, [
    'wadors:http://h/dicom-web/studies/1.2/series/1.3/instances/9.1/frames/1',
    'wadors:http://h/dicom-web/studies/1.2/series/1.3/instances/9.1/frames/2',
    'wadors:http://h/dicom-web/studies/1.2/series/1.3/instances/9.2/frames/1']);
  assert.equal(formatName('Doe^John'), 'Doe, John');
});

test('R-D2: body part and institution become a series-level query', () => {
  assert.equal(buildSeriesFilterQuery({ patientName: 'x' }), null);
  const p = buildSeriesFilterQuery({ bodyPart: 'chest', institution: 'First Hospital' });
  assert.equal(p.get('BodyPartExamined'), 'CHEST');
  assert.equal(p.get('InstitutionName'), '*First Hospital*');
  assert.equal(p.get('includefield'), '0020000D');
  const uids = Array.from({ length: 40 }, (_, i) => `1.2.826.0.1.3680043.8.498.${String(i).padStart(30, '7')}`);
  const chunks = uidChunks(uids);
  assert.ok(chunks.every((c) => c.length <= 1024));
  assert.deepEqual(chunks.join(',').split(','), uids);
});

test('R-D2: pacsd worklist keys, study-level body part and server-side sort', () => {
  const p = buildStudyQuery({ visitNumber: 'ZY2025*', cardNumber: 'CARD-1', department: 'cardio',
    visitType: 'inpatient', bodyPart: 'knee' }, { limit: 10 }, { pacsd: true, sort: 'bodyPart:asc' });
  assert.equal(p.get('visitnumber'), 'ZY2025*');
  assert.equal(p.get('cardnumber'), 'CARD-1');
  assert.equal(p.get('department'), '*cardio*');
  assert.equal(p.get('visittype'), 'inpatient');
  assert.equal(p.get('BodyPartExamined'), 'KNEE');
  assert.equal(p.get('orderby'), 'BodyPartExamined');
  assert.ok(p.get('includefield').split(',').includes('visittype'));
  assert.equal(buildStudyQuery({}, {}, { pacsd: true, sort: 'date:desc' }).get('orderby'), '-StudyDate');
  assert.equal(buildSeriesFilterQuery({ bodyPart: 'knee' }, { pacsd: true }), null);
  assert.throws(() => buildStudyQuery({ visitType: 'daycare' }, {}, { pacsd: true }));
  // Another DICOMweb server: standard keys only.
  assert.throws(() => buildStudyQuery({ department: 'x' }), /needs pacsd/);
  const other = buildStudyQuery({ bodyPart: 'knee' }, {}, { sort: 'name:asc' });
  assert.equal(other.has('orderby'), false);
  assert.equal(other.has('BodyPartExamined'), false);
  assert.equal(other.get('includefield').includes('visittype'), false);
});

test('R-D2: client-side sort by body part and visit type (empty last)', () => {
  const st = (bp, vt) => ({ ...(bp ? { [TAG.BodyPartExamined]: { vr: 'CS', Value: [bp] } } : {}),
    ...(vt ? { [TAG.VisitType]: { vr: 'CS', Value: [vt] } } : {}) });
  const items = [st('KNEE', 'outpatient'), st(null, null), st('CHEST', 'emergency')];
  assert.deepEqual(sortStudies(items, 'bodyPart', 'asc').map((s) => value(s, TAG.BodyPartExamined)), ['CHEST', 'KNEE', undefined]);
  assert.deepEqual(sortStudies(items, 'visitType', 'asc').map((s) => value(s, TAG.VisitType)), ['emergency', 'outpatient', undefined]);
});
