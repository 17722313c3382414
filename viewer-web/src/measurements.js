// Measurement values and their texts (R-D1: distance, angle, areas with HU statistics,
// point CT value, cardiothoracic ratio). Pure: takes Cornerstone annotations as plain
// objects, so node:test checks it (test/measurements.test.js).

function stats(a) {
  const cs = a.data?.cachedStats || {};
  return Object.values(cs)[0] || {};
}

/** Cornerstone annotations -> [{ uid, tool, ctr, ...values }]. A Length drawn in CTR
 * mode carries `pacsdCtr`. */
export function fromAnnotations(annotations) {
  return annotations.map((a) => {
    const s = stats(a);
    const tool = a.metadata.toolName;
    const m = { uid: a.annotationUID, tool, ctr: Boolean(a.pacsdCtr) };
    if (tool === 'Length') return Object.assign(m, { length: s.length, unit: s.unit });
    if (tool === 'Angle') return Object.assign(m, { angle: s.angle });
    if (tool === 'Probe') return Object.assign(m, { value: s.value, unit: s.modalityUnit, index: s.index });
    return Object.assign(m, { area: s.area, areaUnit: s.areaUnit, mean: s.mean, min: s.min,
      max: s.max, stdDev: s.stdDev, unit: s.modalityUnit });
  });
}

/** Cardiothoracic ratio from the last two CTR diameters: the smaller (cardiac) over the
 * larger (thoracic); null until both are drawn. */
export function ctrRatio(list) {
  const d = list.filter((m) => m.ctr && m.length > 0).slice(-2).map((m) => m.length);
  return d.length === 2 ? Math.min(...d) / Math.max(...d) : null;
}

const fmt = (v, n = 2) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(n) : '–');

/** [{ tool, text }] for the measurements panel, the CTR last when there is one. */
export function describe(list) {
  const rows = list.map((m) => {
    let text;
    if (m.tool === 'Length') text = `${m.ctr ? 'CTR diameter' : 'Length'}: ${fmt(m.length)} ${m.unit || ''}`;
    else if (m.tool === 'Angle') text = `Angle: ${fmt(m.angle, 1)}°`;
    else if (m.tool === 'Probe') text = `Point: ${fmt(m.value, 1)} ${m.unit || ''}`;
    else {
      text = `${m.tool === 'EllipticalROI' ? 'Ellipse' : 'Freehand'}: area ${fmt(m.area)} ${m.areaUnit || ''}, `
        + `mean ${fmt(m.mean, 1)}, min ${fmt(m.min, 1)}, max ${fmt(m.max, 1)} ${m.unit || ''}`;
    }
    return { tool: m.tool, text: text.trim() };
  });
  const r = ctrRatio(list);
  if (r !== null) rows.push({ tool: 'CTR', text: `Cardiothoracic ratio: ${r.toFixed(2)}` });
  return rows;
}
