// node --test: the Share button's pure helpers (R-C5 share the image being viewed, R-D1).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { uidsOfImageId, shareBody, shareError, sameServer } from '../src/share.js';

test('R-C5: the active image ID names the study, series and SOP shared', () => {
  assert.deepEqual(uidsOfImageId('wadors:http://h/dicom-web/studies/1.2/series/1.2.3/instances/1.2.3.4/frames/1'),
    { studyUid: '1.2', seriesUid: '1.2.3', sopUid: '1.2.3.4' });
  assert.equal(uidsOfImageId(undefined), null);
  assert.equal(uidsOfImageId('dicomfile:0'), null);
});

test('R-C5: share body with birth date or phone digits as the second factor', () => {
  const img = { studyUid: 'S', seriesUid: 'E', sopUid: 'I' };
  assert.deepEqual(shareBody(img, { factor: 'birthdate', days: '7' }),
    { studies: ['S'], kind: 'exam', series: 'E', sop: 'I', factor: 'birthdate', days: 7 });
  assert.equal(shareBody(img, { factor: 'phone', phone: '138 0013-4321', days: 30 }).phone, '13800134321');
  assert.throws(() => shareBody(img, { factor: 'phone', phone: '12', days: 30 }), /phone/);
  assert.throws(() => shareBody(img, { factor: 'birthdate', days: 0 }), /days/);
  assert.throws(() => shareBody(img, { factor: 'birthdate', days: 4000 }), /days/);
});

test('R-C5, SEC-1: refusals and a missing plugin read as clear messages', () => {
  assert.match(shareError(404), /not installed/);
  assert.match(shareError(403), /not allowed/);
  assert.match(shareError(401), /Sign in/);
  assert.match(shareError(400, '{"reason": "no such study"}'), /400: no such study/);
  assert.ok(sameServer('http://a:1/dicom-web', 'http://a:1/api/v1'));
  assert.ok(!sameServer('http://orthanc:8042/dicom-web', 'http://a:1/api/v1'));
});
