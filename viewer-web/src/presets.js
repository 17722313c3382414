// Window / level presets per modality (R-D1, R-3.2.7). Values are window width / centre
// in modality units (HU for CT). The first entry of a modality is its default.

export const PRESETS = {
  CT: [
    { name: 'Soft tissue', ww: 400, wc: 40 },
    { name: 'Lung', ww: 1500, wc: -600 },
    { name: 'Bone', ww: 2000, wc: 300 },
    { name: 'Brain', ww: 80, wc: 40 },
    { name: 'Mediastinum', ww: 350, wc: 50 },
    { name: 'Liver', ww: 150, wc: 60 },
    { name: 'Abdomen', ww: 400, wc: 50 },
  ],
  MR: [{ name: 'T1 brain', ww: 600, wc: 300 }, { name: 'T2 brain', ww: 1200, wc: 600 }],
  CR: [{ name: 'Chest', ww: 3000, wc: 1500 }, { name: 'Bone', ww: 2000, wc: 1200 }],
  DX: [{ name: 'Chest', ww: 3000, wc: 1500 }, { name: 'Bone', ww: 2000, wc: 1200 }],
  MG: [{ name: 'Breast', ww: 1000, wc: 2000 }],
  PT: [{ name: 'SUV 0-5', ww: 5, wc: 2.5 }],
};

/** Presets for a modality ([] when it has none: the image's own window is used). */
export function presetsFor(modality) {
  return PRESETS[String(modality || '').toUpperCase()] || [];
}

/** Window width / centre -> Cornerstone voiRange { lower, upper } (linear VOI LUT). */
export function toVoiRange(ww, wc) {
  if (!(ww > 0)) throw new Error('window width must be positive');
  return { lower: wc - ww / 2, upper: wc + ww / 2 };
}

/** voiRange -> { ww, wc }. */
export function fromVoiRange({ lower, upper }) {
  return { ww: upper - lower, wc: (upper + lower) / 2 };
}
