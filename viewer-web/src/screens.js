// Extra screens (R-D1 "1, 2 or 3 screens"): "+ Screen" opens the study in another browser
// window (drag it to the second or third monitor). Windows of one browser talk over a
// BroadcastChannel: scrolling a series in one window scrolls the same series in the
// others, and the extra windows follow when the first one opens another study.
import { onImageChange, jumpTo } from './viewer.js';

const channel = typeof BroadcastChannel !== 'undefined' ? new BroadcastChannel('pacsd-viewer') : null;

/** This window's screen number: 1 for the main window, 2.. for the extra ones. */
export function screenNumber() {
  const q = new URLSearchParams(location.hash.split('?')[1] || '');
  return Number(q.get('screen')) || 1;
}

let next = 2;
export function openScreen(studyUid) {
  const n = next++;
  return window.open(`${location.pathname}${location.search}#/study/${studyUid}?screen=${n}`,
    `pacsd-screen-${n}`, 'popup,width=1200,height=900');
}

/** Tell the extra windows that the main one now shows this study. */
export function announceStudy(studyUid) {
  if (channel && screenNumber() === 1) channel.postMessage({ type: 'study', studyUid });
}

export function initScreens() {
  if (!channel) return;
  // jumpTo() moves only viewports not already at that image, so the echo of a received
  // change stops at the first window it reaches.
  onImageChange((e) => channel.postMessage({ type: 'image', ...e }));
  channel.onmessage = ({ data }) => {
    if (data.type === 'image') jumpTo(data.seriesUid, data.index);
    else if (data.type === 'study' && screenNumber() > 1 && !location.hash.includes(data.studyUid)) {
      location.hash = `#/study/${data.studyUid}?screen=${screenNumber()}`;
    }
  };
}
