// Routes of the patient's phone image view (phone.js, R-C4): pure, unit-tested
// (test/phoneroute.test.js).

/** The share plugin's pages, and its DICOMweb root scoped to the share link. */
export const SHARE = '/plugins/share';
export const ROOT = `${SHARE}/dicom-web`;

/** '#/study/<uid>/series/<uid>' -> { study, series } or null. */
export function parseRoute(hash) {
  const m = String(hash).match(/^#\/study\/([0-9.]+)\/series\/([0-9.]+)$/);
  return m ? { study: m[1], series: m[2] } : null;
}

/** The server-rendered picture view of the same series (the fallback without WebGL). */
export function simpleUrl(r) {
  return r ? `${SHARE}/exams/${r.study}/series/${r.series}` : `${SHARE}/exams`;
}
