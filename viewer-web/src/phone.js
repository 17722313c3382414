// The patient's phone image view (R-C4, issue 7 item 6; R-D1 touch, issue 8 item 4): one
// series of a shared exam on the same viewer core as the doctors' viewer (core.js,
// Cornerstone3D). Route: phone.html#/study/<StudyUID>/series/<SeriesUID>.
// Touch: one finger = the chosen mode (swipe through the images, window, or pan), two-finger
// pinch = zoom (and move), double tap = reset. Mouse: drag = mode, wheel = scroll.
// Data comes from the share plugin's scoped DICOMweb root (/plugins/share/dicom-web): the
// share-link cookie authorises it, and only the link's studies are found (others: 404).
// Without WebGL the page goes to the server-rendered picture view instead.
import './phone.css';
import { RenderingEngine, Enums } from '@cornerstonejs/core';
import {
  addTool, ToolGroupManager, Enums as ToolEnums, WindowLevelTool, PanTool, ZoomTool,
  StackScrollTool, utilities as toolUtils,
} from '@cornerstonejs/tools';
import { startCore, registerSeries, hasWebGL } from './core.js';
import { TAG, value } from './dicomweb.js';
import { presetsFor, toVoiRange, fromVoiRange } from './presets.js';
import { SHARE, ROOT, parseRoute, simpleUrl } from './phoneroute.js';
const ENGINE = 'pacsd-phone';
const GROUP = 'pacsd-phone-tools';
const VP = 'phone-vp';
const { MouseBindings } = ToolEnums;
const MODES = { scroll: StackScrollTool, window: WindowLevelTool, pan: PanTool };

const state = { ready: false, engine: null, group: null, mode: 'scroll', cine: false,
  modality: '', count: 0, error: '' };

function message(html) {
  const el = document.getElementById('msg');
  el.innerHTML = html;
  el.hidden = false;
}

async function metadata(study, series) {
  const r = await fetch(`${ROOT}/studies/${study}/series/${series}/metadata`, {
    headers: { Accept: 'application/dicom+json' }, credentials: 'same-origin' });
  if (r.status === 401) throw Object.assign(new Error('session'), { status: 401 });
  if (!r.ok) throw Object.assign(new Error(`HTTP ${r.status}`), { status: r.status });
  return r.json();
}

function viewport() { return state.engine?.getViewport(VP); }

function setMode(mode) {
  const g = state.group;
  for (const [name, T] of Object.entries(MODES)) {
    if (name === mode) continue;
    // Drop every binding (a passive tool keeps its touch binding otherwise), then give
    // the wheel back to scrolling.
    g.setToolPassive(T.toolName, { removeAllBindings: true });
    if (T === StackScrollTool) g.setToolActive(T.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
  }
  const extra = mode === 'scroll' ? [{ mouseButton: MouseBindings.Wheel }] : [];
  g.setToolActive(MODES[mode].toolName, { bindings: [{ mouseButton: MouseBindings.Primary }, { numTouchPoints: 1 }, ...extra] });
  state.mode = mode;
  document.querySelectorAll('[data-mode]').forEach((b) => b.classList.toggle('on', b.dataset.mode === mode));
}

function updateInfo() {
  const vp = viewport();
  const el = document.getElementById('info');
  if (!vp || !el || !state.count) return;
  const props = vp.getProperties();
  const voi = props.voiRange ? fromVoiRange(props.voiRange) : null;
  const i = vp.getCurrentImageIdIndex();
  el.dataset.image = String(i + 1);
  el.textContent = [`第 ${i + 1} / ${state.count} 张  Image ${i + 1}/${state.count}`,
    voi ? `窗宽 W ${voi.ww.toFixed(0)}  窗位 L ${voi.wc.toFixed(0)}` : ''].filter(Boolean).join('\n');
}

function fillPresets() {
  const sel = document.getElementById('preset');
  sel.innerHTML = '<option value="">窗 W/L</option><option value="default">默认 Default</option>' +
    presetsFor(state.modality).map((p, n) => `<option value="${n}">${p.name} (${p.ww}/${p.wc})</option>`).join('');
}

export function applyPreset(v) {
  const vp = viewport();
  if (!vp || v === '') return;
  if (v === 'default') { vp.resetProperties(); vp.render(); return; }
  const p = presetsFor(state.modality)[Number(v)];
  if (p) { vp.setProperties({ voiRange: toVoiRange(p.ww, p.wc) }); vp.render(); }
}

export function toggleCine(fps = 8) {
  const vp = viewport();
  if (!vp) return false;
  if (state.cine) toolUtils.cine.stopClip(vp.element);
  else toolUtils.cine.playClip(vp.element, { framesPerSecond: fps, loop: true });
  state.cine = !state.cine;
  const b = document.getElementById('cine');
  b.classList.toggle('on', state.cine);
  b.innerHTML = state.cine ? '❚❚<span class="en">Pause</span>' : '▶<span class="en">Play</span>';
  return state.cine;
}

function reset() {
  const vp = viewport();
  if (!vp) return;
  vp.resetCamera();
  vp.resetProperties();
  vp.render();
}

function bindUi() {
  document.querySelectorAll('[data-mode]').forEach((b) => { b.onclick = () => setMode(b.dataset.mode); });
  document.getElementById('preset').onchange = (e) => { applyPreset(e.target.value); e.target.value = ''; };
  document.getElementById('cine').onclick = () => toggleCine();
  document.getElementById('reset').onclick = reset;
  // Double tap on the image: back to the whole image (zoom and position reset).
  let last = 0;
  document.getElementById('vp').addEventListener('touchend', (e) => {
    if (e.touches.length) return;
    const now = Date.now();
    if (now - last < 300) { const vp = viewport(); vp?.resetCamera(); vp?.render(); last = 0; } else last = now;
  });
  let pending = 0;
  new ResizeObserver(() => {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(() => state.engine?.resize(true, true));
  }).observe(document.getElementById('stage'));
}

async function open(route) {
  await startCore();
  for (const T of [...Object.values(MODES), ZoomTool]) addTool(T);
  const g = ToolGroupManager.createToolGroup(GROUP);
  for (const T of [...Object.values(MODES), ZoomTool]) g.addTool(T.toolName);
  g.setToolConfiguration(ZoomTool.toolName, { pinchToZoom: true, pan: true });
  g.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }, { numTouchPoints: 2 }] });
  state.group = g;
  state.engine = new RenderingEngine(ENGINE);
  const element = document.getElementById('vp');
  element.oncontextmenu = (e) => e.preventDefault();
  state.engine.setViewports([{ viewportId: VP, type: Enums.ViewportType.STACK, element,
    defaultOptions: { background: [0, 0, 0] } }]);
  g.addViewport(VP, ENGINE);
  setMode('scroll');
  element.addEventListener(Enums.Events.IMAGE_RENDERED, updateInfo);
  const items = await metadata(route.study, route.series);
  const ids = registerSeries(new URL(ROOT, location.href).href, route.study, route.series, items);
  if (!ids.length) throw Object.assign(new Error('no images'), { status: 404 });
  state.count = ids.length;
  state.modality = value(items[0], TAG.Modality) || '';
  fillPresets();
  const vp = viewport();
  await vp.setStack(ids, 0);
  vp.render();
  state.ready = true;
  document.body.dataset.ready = '1';
}

/** Test hook (browser tests): read-only views of the phone view. */
export const hook = {
  get ready() { return state.ready; },
  get error() { return state.error; },
  imageIndex: () => viewport().getCurrentImageIdIndex(),
  count: () => state.count,
  properties: () => viewport().getProperties(),
  zoom: () => viewport().getZoom(),
  cinePlaying: () => state.cine,
  rendered: () => Boolean(viewport()?.getImageData() && viewport().getProperties().voiRange),
  mode: () => state.mode,
};

async function main() {
  window.pacsdPhone = hook;
  const route = parseRoute(location.hash);
  const simple = simpleUrl(route);
  document.getElementById('simple').href = simple;
  if (route) document.getElementById('back').href = `${SHARE}/exams/${route.study}`;
  if (!route) { message('找不到图像 · No such images'); return; }
  if (!hasWebGL()) { location.replace(simple); return; } // the picture view needs no WebGL
  bindUi();
  try {
    await open(route);
  } catch (e) {
    state.error = String(e.status || e.message);
    document.body.dataset.error = state.error;
    if (e.status === 401) {
      message(`会话已结束，请重新打开您收到的链接。<br>Your session ended: open the link you were given again.`);
    } else {
      message(`无法显示图像 · Cannot show the images. <a href="${simple}">图片 Simple view</a>`);
    }
    console.error(e);
  }
}

if (typeof document !== 'undefined' && document.getElementById('vp')) main();
