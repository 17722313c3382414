// The study viewer (R-D1): Cornerstone3D stack viewports over WADO-RS (wadors: image IDs,
// metadata from /series/{uid}/metadata), series thumbnails, tools, layouts, cine,
// measurements, the patient's history with side-by-side comparison and synced scrolling.
import {
  RenderingEngine, Enums, eventTarget, metaData, utilities as csUtils,
} from '@cornerstonejs/core';
import {
  addTool, ToolGroupManager, Enums as ToolEnums, WindowLevelTool, PanTool,
  ZoomTool, StackScrollTool, LengthTool, AngleTool, EllipticalROITool, PlanarFreehandROITool,
  ProbeTool, ReferenceLinesTool, annotation, utilities as toolUtils, synchronizers, SynchronizerManager,
} from '@cornerstonejs/tools';
import { startCore, registerSeries } from './core.js';
import { config, dicomJson, thumbnailUrl, authHeaders, reauthorize } from './api.js';
import { TAG, value, values, formatName, formatDicomDate, buildStudyQuery } from './dicomweb.js';
import { presetsFor, toVoiRange, fromVoiRange } from './presets.js';
import { fromAnnotations, ctrRatio, describe } from './measurements.js';
import { uidsOfImageId } from './share.js';

const ENGINE = 'pacsd-engine';
const GROUP = 'pacsd-tools';
const SYNC = 'pacsd-slice-sync';
const { MouseBindings } = ToolEnums;
export const TOOLS = {
  WindowLevel: WindowLevelTool, Pan: PanTool, Zoom: ZoomTool, StackScroll: StackScrollTool,
  Length: LengthTool, Angle: AngleTool, EllipticalROI: EllipticalROITool,
  PlanarFreehandROI: PlanarFreehandROITool, Probe: ProbeTool,
};
const LAYOUTS = { '1x1': [1, 1], '1x2': [1, 2], '2x1': [2, 1], '2x2': [2, 2], '3x3': [3, 3], '4x4': [4, 4] };

const state = {
  started: false, engine: null, group: null, layout: '1x1', active: 0,
  panes: [],                 // per viewport: { studyUid, seriesUid, modality } or null
  seriesCache: new Map(),    // `${study}/${series}` -> image id list
  studies: new Map(),        // studyUid -> study DICOM JSON
  primaryTool: 'WindowLevel', ctrMode: false, refLines: false, cine: new Set(), completed: 0,
};

async function start() {
  if (state.started) return;
  await startCore({ beforeSend: () => authHeaders(), errorInterceptor: (err) => onFrameError(err) });
  for (const T of [...Object.values(TOOLS), ReferenceLinesTool]) addTool(T);
  const g = ToolGroupManager.createToolGroup(GROUP);
  for (const name of Object.keys(TOOLS)) g.addTool(TOOLS[name].toolName);
  g.addTool(ReferenceLinesTool.toolName);
  // Mouse: primary = chosen tool; middle = pan; right = zoom; wheel = scroll.
  // Touch: one finger = chosen tool (choose "Scroll" to swipe through images), two-finger
  // pinch = zoom, three fingers = pan (R-D1 touch / phone support).
  g.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }, { numTouchPoints: 3 }] });
  g.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }, { numTouchPoints: 2 }] });
  g.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
  for (const name of ['Length', 'Angle', 'EllipticalROI', 'PlanarFreehandROI', 'Probe']) {
    g.setToolPassive(TOOLS[name].toolName);
  }
  state.group = g;
  state.engine = new RenderingEngine(ENGINE);
  state.started = true;
  for (const ev of [ToolEnums.Events.ANNOTATION_COMPLETED, ToolEnums.Events.ANNOTATION_MODIFIED,
    ToolEnums.Events.ANNOTATION_REMOVED]) {
    eventTarget.addEventListener(ev, onAnnotation);
  }
  setPrimaryTool('WindowLevel');
}

/** A frame answered 401 (the session ended while reading): sign in again, then reload
 * what each viewport was showing, at the image it was on. */
let relogin = null;
function onFrameError(err) {
  if (err?.status !== 401 || relogin) return;
  relogin = reauthorize().then(async () => {
    relogin = null;
    const vps = state.engine.getViewports();
    await Promise.all(vps.map((vp, i) => {
      const p = state.panes[i];
      const index = vp.getCurrentImageIdIndex();
      return p ? vp.setStack(vp.getImageIds(), index).then(() => vp.render()) : null;
    }));
  });
}

export function setPrimaryTool(name) {
  const g = state.group;
  const tool = TOOLS[name];
  if (!tool) throw new Error(`unknown tool ${name}`);
  const prev = TOOLS[state.primaryTool];
  if (prev && prev !== tool) {
    // Keep wheel scrolling; other tools go back to passive (annotations stay editable).
    if (state.primaryTool === 'StackScroll') {
      g.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
    } else if (['Pan', 'Zoom'].includes(state.primaryTool)) {
      const b = state.primaryTool === 'Pan' ? [{ mouseButton: MouseBindings.Auxiliary }, { numTouchPoints: 3 }]
        : [{ mouseButton: MouseBindings.Secondary }, { numTouchPoints: 2 }];
      g.setToolActive(prev.toolName, { bindings: b });
    } else {
      g.setToolPassive(prev.toolName);
    }
  }
  const extra = name === 'StackScroll' ? [{ mouseButton: MouseBindings.Wheel }]
    : name === 'Pan' ? [{ mouseButton: MouseBindings.Auxiliary }, { numTouchPoints: 3 }]
      : name === 'Zoom' ? [{ mouseButton: MouseBindings.Secondary }, { numTouchPoints: 2 }] : [];
  g.setToolActive(tool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }, { numTouchPoints: 1 }, ...extra] });
  state.primaryTool = name;
  document.querySelectorAll('[data-tool]').forEach((b) => b.classList.toggle('on', b.dataset.tool === name && !(state.ctrMode && name === 'Length')));
  document.querySelector('[data-action="ctr"]')?.classList.toggle('on', state.ctrMode && name === 'Length');
}

function viewportId(i) { return `vp-${i}`; }
function viewport(i = state.active) { return state.engine?.getViewport(viewportId(i)); }

/** Build the viewport grid for a layout, keeping what each pane showed. */
export async function setLayout(layout) {
  const [rows, cols] = LAYOUTS[layout] || LAYOUTS['1x1'];
  const grid = document.getElementById('grid');
  for (const vp of state.engine.getViewports()) {
    stopCine(vp.id);
    state.group.removeViewports(ENGINE, vp.id);
    state.engine.disableElement(vp.id);
  }
  grid.innerHTML = '';
  grid.style.gridTemplate = `repeat(${rows}, 1fr) / repeat(${cols}, 1fr)`;
  state.layout = layout;
  const n = rows * cols;
  state.panes.length = Math.max(state.panes.length, n);
  const inputs = [];
  for (let i = 0; i < n; i++) {
    const pane = document.createElement('div');
    pane.className = 'pane';
    pane.dataset.index = i;
    const el = document.createElement('div');
    el.className = 'vp';
    el.oncontextmenu = (e) => e.preventDefault();
    const overlay = document.createElement('div');
    overlay.className = 'overlay';
    pane.append(el, overlay);
    pane.addEventListener('pointerdown', () => activate(i), true);
    grid.append(pane);
    inputs.push({ viewportId: viewportId(i), type: Enums.ViewportType.STACK, element: el,
      defaultOptions: { background: [0, 0, 0] } });
    el.addEventListener(Enums.Events.IMAGE_RENDERED, () => updateOverlay(i));
    el.addEventListener(Enums.Events.STACK_NEW_IMAGE, () => notifyImage(i));
  }
  state.engine.setViewports(inputs);
  for (const inp of inputs) state.group.addViewport(inp.viewportId, ENGINE);
  if (state.active >= n) state.active = 0;
  activate(state.active);
  await Promise.all(Array.from({ length: n }, (_, i) => state.panes[i] ? showSeries(state.panes[i].studyUid, state.panes[i].seriesUid, i) : null));
  applySync();
  document.getElementById('layout').value = layout;
}

/** Reference lines (R-D1): the active viewport's image plane drawn as a line in the
 * other viewports that show an intersecting (e.g. orthogonal) series. */
export function setReferenceLines(on) {
  const g = state.group;
  state.refLines = on;
  if (!on) { g.setToolDisabled(ReferenceLinesTool.toolName); state.engine.render(); return; }
  g.setToolConfiguration(ReferenceLinesTool.toolName, { sourceViewportId: viewportId(state.active) });
  g.setToolEnabled(ReferenceLinesTool.toolName);
  state.engine.render();
}

const imageListeners = [];
/** Call fn({ studyUid, seriesUid, index }) whenever a viewport shows another image. */
export function onImageChange(fn) { imageListeners.push(fn); }

function notifyImage(i) {
  const p = state.panes[i];
  const vp = viewport(i);
  if (!p || !vp) return;
  const e = { studyUid: p.studyUid, seriesUid: p.seriesUid, index: vp.getCurrentImageIdIndex() };
  for (const fn of imageListeners) fn(e);
}

/** Show image `index` in every viewport showing this series (other screens' scrolling). */
export function jumpTo(seriesUid, index) {
  state.panes.forEach((p, i) => {
    const vp = viewport(i);
    if (p && vp && p.seriesUid === seriesUid && vp.getCurrentImageIdIndex() !== index) {
      vp.setImageIdIndex(index);
    }
  });
}

function activate(i) {
  state.active = i;
  if (state.refLines) setReferenceLines(true);
  document.querySelectorAll('#grid .pane').forEach((p) => p.classList.toggle('active', Number(p.dataset.index) === i));
  refreshPresets();
}

async function seriesImageIds(studyUid, seriesUid) {
  const key = `${studyUid}/${seriesUid}`;
  if (!state.seriesCache.has(key)) {
    const { items } = await dicomJson(`/studies/${studyUid}/series/${seriesUid}/metadata`);
    const ids = registerSeries(config.dicomwebRoot, studyUid, seriesUid, items);
    state.seriesCache.set(key, { ids, first: items[0] });
  }
  return state.seriesCache.get(key);
}

/** Load a series into viewport i (default: the active one). */
export async function showSeries(studyUid, seriesUid, i = state.active) {
  const preview = showPreview(studyUid, seriesUid, i);
  const { ids, first } = await seriesImageIds(studyUid, seriesUid);
  const vp = viewport(i);
  if (!vp || !ids.length) { preview.remove(); return; }
  state.panes[i] = { studyUid, seriesUid, modality: value(first, TAG.Modality) || '',
    description: value(first, TAG.SeriesDescription) || '' };
  await vp.setStack(ids, 0);
  vp.render();
  if (i === state.active) refreshPresets();
  if (document.getElementById('sync')?.checked) applySync();
  document.querySelectorAll('.series-thumb').forEach((t) => t.classList.toggle('shown',
    state.panes.some((p) => p && p.seriesUid === t.dataset.series)));
}

/** Progressive loading (R-3.1.11): the series' small rendered thumbnail fills the pane
 * at once, and gives way to the full-fidelity frame when it has rendered. */
function showPreview(studyUid, seriesUid, i) {
  const pane = document.querySelector(`#grid .pane[data-index="${i}"]`);
  pane?.querySelector('img.preview')?.remove();
  const img = document.createElement('img');
  img.className = 'preview';
  img.alt = '';
  if (!pane) return img;
  pane.append(img);
  thumbnailUrl(`/studies/${studyUid}/series/${seriesUid}`).then((u) => {
    if (u && img.isConnected) img.src = u;
  });
  const done = () => img.remove();
  pane.querySelector('.vp').addEventListener(Enums.Events.IMAGE_RENDERED, done, { once: true });
  return img;
}

function updateOverlay(i) {
  const vp = viewport(i);
  const pane = state.panes[i];
  const el = document.querySelector(`#grid .pane[data-index="${i}"] .overlay`);
  if (!vp || !el || !pane) return;
  const study = state.studies.get(pane.studyUid);
  const props = vp.getProperties();
  const voi = props.voiRange ? fromVoiRange(props.voiRange) : null;
  const idx = vp.getCurrentImageIdIndex();
  el.dataset.image = String(idx + 1);
  el.dataset.ww = voi ? voi.ww.toFixed(0) : '';
  el.dataset.wc = voi ? voi.wc.toFixed(0) : '';
  el.textContent = [
    study ? `${formatName(value(study, TAG.PatientName))}  ${formatDicomDate(value(study, TAG.StudyDate))}` : '',
    `${pane.modality} ${pane.description}`.trim(),
    `Im ${idx + 1}/${vp.getImageIds().length}`,
    voi ? `W ${voi.ww.toFixed(0)} L ${voi.wc.toFixed(0)}` : '',
    props.invert ? 'inverted' : '',
  ].filter(Boolean).join('\n');
}

function refreshPresets() {
  const sel = document.getElementById('preset');
  if (!sel) return;
  const modality = state.panes[state.active]?.modality;
  sel.innerHTML = '<option value="">Window…</option><option value="default">Image default</option>' +
    presetsFor(modality).map((p, n) => `<option value="${n}">${p.name} (${p.ww}/${p.wc})</option>`).join('');
}

export function applyWindow(ww, wc, i = state.active) {
  const vp = viewport(i);
  vp.setProperties({ voiRange: toVoiRange(ww, wc) });
  vp.render();
}

function applyPreset(v) {
  const vp = viewport();
  if (!vp || v === '') return;
  if (v === 'default') { vp.resetProperties(); vp.render(); return; }
  const p = presetsFor(state.panes[state.active]?.modality)[Number(v)];
  if (p) applyWindow(p.ww, p.wc);
}

function transform(action) {
  const vp = viewport();
  if (!vp) return;
  const pres = vp.getViewPresentation();
  switch (action) {
    case 'rotl': vp.setViewPresentation({ rotation: ((pres.rotation || 0) + 270) % 360 }); break;
    case 'rotr': vp.setViewPresentation({ rotation: ((pres.rotation || 0) + 90) % 360 }); break;
    case 'fliph': vp.setViewPresentation({ flipHorizontal: !pres.flipHorizontal }); break;
    case 'flipv': vp.setViewPresentation({ flipVertical: !pres.flipVertical }); break;
    case 'invert': vp.setProperties({ invert: !vp.getProperties().invert }); break;
    case 'sharpen': vp.setProperties({ sharpening: vp.getProperties().sharpening ? 0 : 1, smoothing: 0 }); break;
    case 'smooth': vp.setProperties({ smoothing: vp.getProperties().smoothing ? 0 : 1, sharpening: 0 }); break;
    case 'reset': vp.resetCamera(); vp.resetProperties(); break;
    default: return;
  }
  vp.render();
  updateOverlay(state.active);
}

function stopCine(id) {
  const el = state.engine.getViewport(id)?.element;
  if (el && state.cine.has(id)) { toolUtils.cine.stopClip(el); state.cine.delete(id); }
}

export function toggleCine(fps) {
  const vp = viewport();
  if (!vp) return false;
  if (state.cine.has(vp.id)) { stopCine(vp.id); return false; }
  toolUtils.cine.playClip(vp.element, { framesPerSecond: fps, loop: true });
  state.cine.add(vp.id);
  return true;
}

function applySync() {
  const on = document.getElementById('sync')?.checked;
  let sync = SynchronizerManager.getSynchronizer(SYNC);
  if (sync) SynchronizerManager.destroySynchronizer(SYNC);
  if (!on) return;
  sync = synchronizers.createImageSliceSynchronizer(SYNC);
  const vps = state.engine.getViewports().filter((vp) => vp.getCurrentImageId?.());
  for (const vp of vps) sync.add({ renderingEngineId: ENGINE, viewportId: vp.id });
  registerPairs(vps);
}

/** Spatial registration for synced scrolling: same frame of reference -> positions match
 * as they are; different ones (a prior exam) -> aligned on the slices shown when Sync is
 * switched on, so the doctor lines up two exams first, then scrolls them together.
 * (Done here: Cornerstone's own calculateViewportsSpatialRegistration looks up the
 * slice index instead of the image ID in 5.x and never registers.) */
function registerPairs(vps) {
  const ipp = (vp) => metaData.get('imagePlaneModule', vp.getCurrentImageId())?.imagePositionPatient;
  for (const t of vps) {
    for (const s of vps) {
      if (t === s) continue;
      const [pt, ps] = [ipp(t), ipp(s)];
      const same = t.getFrameOfReferenceUID() === s.getFrameOfReferenceUID();
      const d = !same && pt && ps ? [pt[0] - ps[0], pt[1] - ps[1], pt[2] - ps[2]] : [0, 0, 0];
      // Column-major 4x4 translation (gl-matrix layout): maps source -> target position.
      const m = new Float32Array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, d[0], d[1], d[2], 1]);
      csUtils.spatialRegistrationMetadataProvider.add([t.id, s.id], m);
    }
  }
}

// --- measurements (values and texts: measurements.js) ----------------------------------

/** Measurements on screen, as plain values (also the test hook's answer). */
export function measurements() {
  return fromAnnotations(annotation.state.getAllAnnotations());
}

function onAnnotation(ev) {
  const a = ev.detail?.annotation;
  if (ev.type === ToolEnums.Events.ANNOTATION_COMPLETED) state.completed += 1;
  if (a && ev.type === ToolEnums.Events.ANNOTATION_COMPLETED && state.ctrMode && a.metadata.toolName === 'Length') {
    a.pacsdCtr = true;
  }
  renderMeasurements();
}

function renderMeasurements() {
  const ul = document.getElementById('measurements');
  if (!ul) return;
  const rows = describe(measurements()).map(({ tool, text }) =>
    `<li data-tool="${tool}"${tool === 'CTR' ? ' class="ctr"' : ''}>${text}</li>`);
  ul.innerHTML = rows.join('') || '<li class="empty">No measurements</li>';
}

function clearMeasurements() {
  annotation.state.removeAllAnnotations();
  state.engine.render();
  renderMeasurements();
}

// --- panels -------------------------------------------------------------------------

async function seriesPanel(studyUid, { append = false } = {}) {
  const panel = document.getElementById('series');
  const { items } = await dicomJson(`/studies/${studyUid}/series`, 'includefield=0008103E,00201209,00180015');
  if (!append) panel.innerHTML = '';
  const study = state.studies.get(studyUid);
  const block = document.createElement('div');
  block.className = 'series-block';
  block.innerHTML = `<h3>${formatDicomDate(value(study, TAG.StudyDate))} ${value(study, TAG.StudyDescription) || ''}</h3>`;
  for (const s of items) {
    const se = value(s, TAG.SeriesInstanceUID);
    const b = document.createElement('button');
    b.className = 'series-thumb';
    b.dataset.series = se;
    b.dataset.study = studyUid;
    b.title = `Series ${value(s, TAG.SeriesNumber) ?? ''} ${value(s, TAG.SeriesDescription) || ''}`;
    b.innerHTML = `<img alt=""><span>${value(s, TAG.Modality) || ''} #${value(s, TAG.SeriesNumber) ?? ''} ${value(s, TAG.SeriesDescription) || ''}<br>${value(s, TAG.NumberOfSeriesRelatedInstances) ?? ''} img</span>`;
    b.onclick = () => showSeries(studyUid, se);
    block.append(b);
    thumbnailUrl(`/studies/${studyUid}/series/${se}`).then((u) => { if (u) b.querySelector('img').src = u; });
  }
  panel.append(block);
  return items;
}

async function historyPanel(study) {
  const ul = document.getElementById('history');
  const pid = value(study, TAG.PatientID);
  if (!pid) { ul.innerHTML = '<li>No patient ID</li>'; return; }
  const { items } = await dicomJson('/studies', buildStudyQuery({ patientId: pid }, { limit: 100 }));
  ul.innerHTML = '';
  for (const s of items) {
    const uid = value(s, TAG.StudyInstanceUID);
    state.studies.set(uid, s);
    const li = document.createElement('li');
    li.dataset.study = uid;
    const current = state.panes.some((p) => p && p.studyUid === uid);
    li.innerHTML = `<span>${formatDicomDate(value(s, TAG.StudyDate))} ${values(s, TAG.ModalitiesInStudy).join('/')} ${value(s, TAG.StudyDescription) || ''}</span>`;
    const b = document.createElement('button');
    b.textContent = current ? 'Shown' : 'Compare';
    b.className = 'compare';
    b.disabled = current;
    b.onclick = () => { b.textContent = 'Shown'; b.disabled = true; return compareStudy(uid); };
    li.append(b);
    ul.append(li);
  }
}

/** Side-by-side comparison (R-D1): put the other study's first series next to the one shown. */
export async function compareStudy(studyUid) {
  const n = state.engine.getViewports().length;
  if (n < 2) await setLayout('1x2');
  const target = state.panes.findIndex((p, i) => i < state.engine.getViewports().length && !p);
  const items = await seriesPanel(studyUid, { append: true });
  const first = items.find((s) => value(s, TAG.Modality) !== 'SR') || items[0];
  if (first) {
    const i = target >= 0 ? target : 1;
    activate(i);
    await showSeries(studyUid, value(first, TAG.SeriesInstanceUID), i);
  }
}

export async function openStudy(studyUid) {
  await start();
  const { items } = await dicomJson('/studies', buildStudyQuery({ studyUid }, { limit: 1 }));
  if (!items.length) throw new Error('study not found');
  const study = items[0];
  state.studies.set(studyUid, study);
  state.panes = [];
  document.getElementById('patient').textContent =
    `${formatName(value(study, TAG.PatientName))} · ${value(study, TAG.PatientID) || ''} · ${formatDicomDate(value(study, TAG.PatientBirthDate))} ${value(study, TAG.PatientSex) || ''}`;
  annotation.state.removeAllAnnotations();
  renderMeasurements();
  await setLayout(state.layout);
  const series = await seriesPanel(studyUid);
  const first = series.find((s) => value(s, TAG.Modality) !== 'SR') || series[0];
  if (first) await showSeries(studyUid, value(first, TAG.SeriesInstanceUID), 0);
  historyPanel(study).catch((e) => console.warn('history', e));
}

/** The image shown in the active viewport (what the Share button shares, R-C5):
 * {studyUid, seriesUid, sopUid, label}, or null when the viewport is empty. */
export function currentImage() {
  const vp = viewport();
  const uids = uidsOfImageId(vp?.getCurrentImageId?.());
  if (!uids) return null;
  const p = state.panes[state.active];
  const label = `${p?.modality || ''} ${p?.description || ''} · ${vp.getCurrentImageIdIndex() + 1}/${vp.getImageIds().length}`.trim();
  return { ...uids, label };
}

export function closeViewer() {
  if (!state.started) return;
  for (const vp of state.engine.getViewports()) stopCine(vp.id);
}

/** Wire the toolbar once. */
export function bindToolbar() {
  document.querySelectorAll('[data-tool]').forEach((b) => {
    b.onclick = () => { state.ctrMode = false; setPrimaryTool(b.dataset.tool); };
  });
  document.querySelectorAll('[data-action]').forEach((b) => {
    const a = b.dataset.action;
    b.onclick = () => {
      if (a === 'cine') {
        const playing = toggleCine(Number(document.getElementById('fps').value) || 10);
        b.classList.toggle('on', playing);
      } else if (a === 'ctr') { state.ctrMode = true; setPrimaryTool('Length'); }
      else if (a === 'clear') clearMeasurements();
      else transform(a);
    };
  });
  document.getElementById('fps').oninput = (e) => {
    document.getElementById('fps-label').textContent = `${e.target.value} fps`;
    const vp = viewport();
    if (vp && state.cine.has(vp.id)) { stopCine(vp.id); toggleCine(Number(e.target.value)); }
  };
  document.getElementById('preset').onchange = (e) => { applyPreset(e.target.value); e.target.value = ''; };
  document.getElementById('layout').onchange = (e) => setLayout(e.target.value);
  document.getElementById('sync').onchange = applySync;
  document.getElementById('reflines').onchange = (e) => setReferenceLines(e.target.checked);
  // Any change of the grid's size (window, toolbar wrapping, phone rotation) re-fits.
  let pending = 0;
  new ResizeObserver(() => {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(() => state.engine?.resize(true, true));
  }).observe(document.getElementById('grid'));
}

/** Test and automation hook (browser tests, R-D1): read-only views of the viewer state. */
export const hook = {
  get ready() { return state.started; },
  /** Annotations completed so far (a drawing finishes with its mouse-up). */
  get completed() { return state.completed; },
  measurements, ctrRatio: () => ctrRatio(measurements()), applyWindow, setPrimaryTool, compareStudy, setLayout, showSeries,
  panes: () => state.panes.slice(0, state.engine?.getViewports().length || 0),
  /** Page (CSS pixel) coordinates of image pixel (column x, row y) in viewport i. */
  imageToPage(i, x, y) {
    const vp = viewport(i);
    const data = vp?.getImageData();
    if (!data) return null;
    const world = data.imageData.indexToWorld([x, y, 0]);
    const [cx, cy] = vp.worldToCanvas(world);
    const r = vp.element.getBoundingClientRect();
    return [r.left + cx, r.top + cy];
  },
  imageIndex: (i) => viewport(i).getCurrentImageIdIndex(),
  properties: (i) => viewport(i).getProperties(),
  presentation: (i) => viewport(i).getViewPresentation(),
  setImageIndex: (i, n) => viewport(i).setImageIdIndex(n),
  rendered: (i) => Boolean(viewport(i)?.getImageData() && viewport(i).getProperties().voiRange),
  cinePlaying: (i) => state.cine.has(viewportId(i)),
  currentImage,
};
