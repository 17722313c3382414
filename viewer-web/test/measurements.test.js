// node --test: measurement values and texts (R-D1 distance, HU, cardiothoracic ratio).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fromAnnotations, ctrRatio, describe } from '../src/measurements.js';

const ann = (tool, stats, extra = {}) => ({ annotationUID: `${tool}-${Math.random()}`,
  metadata: { toolName: tool }, data: { cachedStats: { 'imageId:x': stats } }, ...extra });

test('R-D1: values from Cornerstone annotations', () => {
  const [len, probe, ell] = fromAnnotations([
    ann('Length', { length: 40, unit: 'mm' }),
    ann('Probe', { value: 400, modalityUnit: 'HU', index: [100, 20, 0] }),
    ann('EllipticalROI', { area: 12.3, areaUnit: 'mm²', mean: 1000, min: 1000, max: 1000, modalityUnit: 'HU' })]);
  assert.deepEqual([len.length, len.unit, len.ctr], [40, 'mm', false]);
  assert.deepEqual([probe.value, probe.unit], [400, 'HU']);
  assert.deepEqual([ell.mean, ell.min, ell.max, ell.unit], [1000, 1000, 1000, 'HU']);
});

test('R-D1: cardiothoracic ratio from the last two CTR diameters', () => {
  const list = fromAnnotations([
    ann('Length', { length: 99, unit: 'mm' }),
    ann('Length', { length: 150, unit: 'mm' }, { pacsdCtr: true }),
    ann('Length', { length: 75, unit: 'mm' }, { pacsdCtr: true })]);
  assert.equal(ctrRatio(list), 0.5);
  assert.equal(ctrRatio(list.slice(0, 2)), null);
  const rows = describe(list);
  assert.deepEqual(rows.map((r) => r.text), ['Length: 99.00 mm', 'CTR diameter: 150.00 mm',
    'CTR diameter: 75.00 mm', 'Cardiothoracic ratio: 0.50']);
});

test('R-D1: texts for angle, point, areas; missing values shown as a dash', () => {
  const rows = describe(fromAnnotations([ann('Angle', { angle: 90 }), ann('Probe', { value: -1000, modalityUnit: 'HU' }),
    ann('PlanarFreehandROI', { area: 2, areaUnit: 'mm²', modalityUnit: 'HU' })]));
  assert.deepEqual(rows.map((r) => r.text), ['Angle: 90.0°', 'Point: -1000.0 HU',
    'Freehand: area 2.00 mm², mean –, min –, max – HU']);
});
