// The viewer core shared by the doctors' viewer (viewer.js, R-D1) and the patient's phone
// view (phone.js, R-C4): Cornerstone3D start-up, WADO-RS image IDs with their metadata.
import { init as coreInit } from '@cornerstonejs/core';
import { init as toolsInit } from '@cornerstonejs/tools';
import { init as loaderInit, wadors } from '@cornerstonejs/dicom-image-loader';
import { wadorsImageIds } from './dicomweb.js';

let starting = null;

/** Start Cornerstone (core, tools, DICOM image loader) once. `beforeSend` gives each
 * frame request's extra headers; `errorInterceptor` sees failed frame requests. */
export function startCore({ beforeSend = () => ({}), errorInterceptor = () => {} } = {}) {
  if (!starting) {
    starting = (async () => {
      await coreInit();
      await toolsInit();
      loaderInit({
        maxWebWorkers: Math.max(1, Math.min(2, navigator.hardwareConcurrency || 1)),
        beforeSend, errorInterceptor,
      });
    })();
  }
  return starting;
}

/** Register a series' WADO-RS metadata with the loader; its image IDs in display order. */
export function registerSeries(root, studyUid, seriesUid, metadata) {
  const entries = wadorsImageIds(root, studyUid, seriesUid, metadata);
  for (const e of entries) wadors.metaDataManager.add(e.imageId, e.metadata);
  return entries.map((e) => e.imageId);
}

/** Whether this browser can render with WebGL (Cornerstone needs it). */
export function hasWebGL() {
  try {
    const c = document.createElement('canvas');
    return Boolean(c.getContext('webgl2') || c.getContext('webgl'));
  } catch { return false; }
}
