// The phone image view's routes (R-C4).
import test from 'node:test';
import assert from 'node:assert/strict';
import { parseRoute, simpleUrl, ROOT } from '../src/phoneroute.js';

test('parseRoute reads study and series UIDs, nothing else', () => {
  assert.deepEqual(parseRoute('#/study/1.2.3/series/4.5'), { study: '1.2.3', series: '4.5' });
  assert.equal(parseRoute('#/study/1.2.3'), null);
  assert.equal(parseRoute('#/study/1.2.3/series/4.5/../x'), null);
  assert.equal(parseRoute('#/study/<script>/series/1'), null);
});

test('simpleUrl is the share plugin picture view; ROOT its scoped DICOMweb', () => {
  assert.equal(simpleUrl({ study: '1.2', series: '3.4' }), '/plugins/share/exams/1.2/series/3.4');
  assert.equal(simpleUrl(null), '/plugins/share/exams');
  assert.equal(ROOT, '/plugins/share/dicom-web');
});
